//! End-to-end runs of `gdiff sample` on the golden dev models with the reference's x_T, compared
//! with the golden DDIM cases (uint8 within one level), and the error messages of bad input.
mod support;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use support::{gdiff, golden, tmpdir};

fn case(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(golden(&format!("case_{name}.safetensors")), &Device::Cpu)
        .unwrap()
}

/// Runs the golden DDIM case through the command line and compares the npz.
fn sample_case(name: &str, guided: bool) {
    let c = case(name);
    let dir = tmpdir(name);
    let noise = dir.join("x_T.npy");
    c["in.x_T"].write_npy(&noise).unwrap();
    let out = dir.join("out.npz");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let mut args: Vec<String> = [
        "sample",
        "--model_path",
        &s(&golden("model_unet_a.safetensors")),
        "--model_config",
        &s(&golden("model_unet_a.json")),
        "--diffusion_steps",
        "1000",
        "--noise_schedule",
        "cosine",
        "--timestep_respacing",
        "ddim10",
        "--use_ddim",
        "True",
        "--clip_denoised",
        "True",
        "--classes",
        "3,7",
        "--num_samples",
        "2",
        "--batch_size",
        "2",
        "--init_noise",
        &s(&noise),
        "--output",
        &s(&out),
        "--quiet",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    if guided {
        for a in [
            "--classifier_path",
            &s(&golden("model_clf_attn.pt")),
            "--classifier_config",
            &s(&golden("model_clf_attn.json")),
            "--classifier_scale",
            "3.0",
        ] {
            args.push(a.to_string());
        }
    }
    let o = gdiff(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "gdiff failed: {}", String::from_utf8_lossy(&o.stderr));
    let arrays = Tensor::read_npz(&out).unwrap();
    let get =
        |k: &str| arrays.iter().find(|(n, _)| n == k).unwrap_or_else(|| panic!("no {k}")).1.clone();
    let img = get("arr_0");
    assert_eq!(img.dtype(), DType::U8);
    let want = &c["out.sample_uint8_nhwc"];
    assert_eq!(img.dims(), want.dims());
    let a: Vec<u8> = img.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<u8> = want.flatten_all().unwrap().to_vec1().unwrap();
    let max = a.iter().zip(&b).map(|(x, y)| (*x as i32 - *y as i32).abs()).max().unwrap();
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    println!("{name}: max level diff {max}, {differ}/{} pixels differ", a.len());
    assert!(max <= 1, "{name}: uint8 differs by {max} levels");
    let labels: Vec<i64> = get("arr_1").to_vec1().unwrap();
    assert_eq!(labels, vec![3, 7]);
    assert!(out.with_extension("png").exists(), "grid written beside the npz");
}

#[test]
fn cli_sample_ddim_unguided_matches_reference() {
    sample_case("ddim_unguided", false);
}

#[test]
fn cli_sample_ddim_guided_matches_reference() {
    sample_case("ddim_guided", true);
}

fn err_of(args: &[&str]) -> String {
    let o = gdiff(args);
    assert!(!o.status.success(), "expected failure for {args:?}");
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!e.contains("panicked"), "panic for {args:?}: {e}");
    assert_eq!(e.trim().lines().count(), 1, "one line expected: {e}");
    e
}

fn unet_a_args(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "sample",
        "--model_path",
        golden("model_unet_a.pt").to_str().unwrap(),
        "--model_config",
        golden("model_unet_a.json").to_str().unwrap(),
        "--num_samples",
        "1",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn cli_errors_are_one_clear_line() {
    let e = err_of(&["sample", "--model_path", "/nonexistent/model.pt"]);
    assert!(e.contains("--model_path /nonexistent/model.pt: no such file"), "{e}");

    let v = unet_a_args(&["--classes", "3,12"]);
    let e = err_of(&v.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains("class 12 is out of range, the model has 10 classes"), "{e}");

    let v = unet_a_args(&["--timestep_respacing", "ddim999"]);
    let e = err_of(&v.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains("--timestep_respacing") && e.contains("999"), "{e}");

    // A flag that does not match the checkpoint: names the keys and the flag.
    let e = err_of(&[
        "sample",
        "--model_path",
        golden("model_unet_b.pt").to_str().unwrap(),
        "--image_size",
        "32",
        "--num_channels",
        "64",
        "--num_res_blocks",
        "1",
        "--channel_mult",
        "1,1",
        "--attention_resolutions",
        "16",
        "--num_heads",
        "2",
        "--use_scale_shift_norm",
        "False",
        "--num_samples",
        "1",
        "--quiet",
    ]);
    assert!(e.contains("time_embed.0.weight") && e.contains("--num_channels"), "{e}");

    let e = err_of(&["sample", "--class_cond", "maybe"]);
    assert!(e.contains("maybe") && e.contains("class_cond"), "{e}");

    let dir = tmpdir("badnpz");
    let bad = dir.join("bad.npz");
    std::fs::write(&bad, b"not a zip").unwrap();
    let e = err_of(&[
        "super-res",
        "--model_path",
        golden("model_sr.pt").to_str().unwrap(),
        "--model_config",
        golden("model_sr.json").to_str().unwrap(),
        "--base_samples",
        bad.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(e.contains("bad.npz") && e.contains("npz"), "{e}");
}

#[test]
fn cli_sample_help_lists_every_reference_flag() {
    let o = gdiff(&["sample", "--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in [
        // image_sample.py / classifier_sample.py
        "clip_denoised",
        "num_samples",
        "batch_size",
        "use_ddim",
        "model_path",
        "classifier_path",
        "classifier_scale",
        // model_and_diffusion_defaults()
        "image_size",
        "num_channels",
        "num_res_blocks",
        "num_heads",
        "num_heads_upsample",
        "num_head_channels",
        "attention_resolutions",
        "channel_mult",
        "dropout",
        "class_cond",
        "use_checkpoint",
        "use_scale_shift_norm",
        "resblock_updown",
        "use_fp16",
        "use_new_attention_order",
        "learn_sigma",
        "diffusion_steps",
        "noise_schedule",
        "timestep_respacing",
        "use_kl",
        "predict_xstart",
        "rescale_timesteps",
        "rescale_learned_sigmas",
        // classifier_defaults()
        "classifier_use_fp16",
        "classifier_width",
        "classifier_depth",
        "classifier_attention_resolutions",
        "classifier_use_scale_shift_norm",
        "classifier_resblock_updown",
        "classifier_pool",
        // additions
        "model_config",
        "classifier_config",
        "num_classes",
        "classes",
        "seed",
        "init_noise",
        "eta",
        "output",
        "grid",
        "quiet",
        "preset",
    ] {
        assert!(
            help.contains(&format!("--{flag} ")) || help.contains(&format!("--{flag}\n")),
            "--{flag} missing from sample --help"
        );
    }
}
