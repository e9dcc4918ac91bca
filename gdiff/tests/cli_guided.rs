//! The command line of the fast samplers and of classifier-free guidance: every new flag's
//! errors (one line, naming the flag, nothing written), `--output_float` against the npz,
//! DPM-Solver through `gdiff sample` against the golden case, and a classifier-free run end to
//! end: `gdiff train --class_dropout_prob` writes a checkpoint that `gdiff sample --cfg_scale`
//! uses with no other flag.
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};

mod support;
use support::golden;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gdiff-guided-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gdiff(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gdiff")).args(args).output().expect("gdiff runs")
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// `gdiff sample` of golden model `model` (unet_a: class-conditional, unet_b: not) with `extra`.
fn sample_args(model: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "sample",
        "--model_path",
        &s(&golden(&format!("model_{model}.safetensors"))),
        "--model_config",
        &s(&golden(&format!("model_{model}.json"))),
        "--noise_schedule",
        "cosine",
        "--num_samples",
        "2",
        "--batch_size",
        "2",
        "--seed",
        "1",
        "--output",
        &s(out),
        "--quiet",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    v.extend(extra.iter().map(|x| x.to_string()));
    v
}

fn run(args: &[String]) -> std::process::Output {
    gdiff(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The error of a failing run: exit code 1 or 2, one line, no panic, nothing written.
fn one_line_error(args: &[String], out: &Path) -> String {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let code = o.status.code();
    assert!(matches!(code, Some(1) | Some(2)), "{args:?}: exit {code:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert!(!out.exists(), "{args:?}: an output was left behind");
    err
}

#[test]
fn sampler_and_guidance_flags_that_do_not_apply_are_errors() {
    let dir = tmpdir("flags");
    let out = dir.join("out.npz");
    let clf = [
        "--classifier_path",
        &s(&golden("model_clf_attn.safetensors")),
        "--classifier_config",
        &s(&golden("model_clf_attn.json")),
    ]
    .map(String::from);
    let with_clf = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|x| x.to_string()).collect();
        v.extend(clf.iter().cloned());
        v
    };
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "unet_a",
            vec!["--use_ddim".into(), "True".into(), "--order".into(), "2".into()],
            "--order does not apply to --sampler ddim",
        ),
        (
            "unet_a",
            vec![
                "--sampler".into(),
                "dpm-solver++".into(),
                "--timestep_respacing".into(),
                "250".into(),
            ],
            "--timestep_respacing does not apply",
        ),
        (
            "unet_a",
            vec![
                "--sampler".into(),
                "dpm-solver++".into(),
                "--clip_denoised".into(),
                "True".into(),
                "--thresholding".into(),
                "True".into(),
            ],
            "two corrections of x_0",
        ),
        ("unet_a", vec!["--eta".into(), "0.5".into()], "--eta does not apply to --sampler ddpm"),
        ("unet_a", vec!["--use_ddim".into(), "True".into(), "--eta".into(), "-1".into()], "eta=-1"),
        (
            "unet_a",
            vec!["--use_ddim".into(), "True".into(), "--eta".into(), "nan".into()],
            "eta=NaN",
        ),
        (
            "unet_a",
            vec!["--use_ddim".into(), "True".into(), "--sampler".into(), "dpm-solver++".into()],
            "--use_ddim True conflicts",
        ),
        ("unet_a", vec!["--sampler".into(), "plms".into()], "unknown sampler"),
        (
            "unet_a",
            vec!["--sampler".into(), "dpm-solver++".into(), "--steps".into(), "0".into()],
            "steps=0",
        ),
        (
            "unet_a",
            vec!["--sampler".into(), "dpm-solver++".into(), "--method".into(), "euler".into()],
            "method=euler",
        ),
        (
            "unet_a",
            vec!["--sampler".into(), "dpm-solver++".into(), "--atol".into(), "0.1".into()],
            "atol does not apply",
        ),
        (
            "unet_a",
            vec!["--sampler".into(), "dpm-solver++ order=3".into(), "--order".into(), "2".into()],
            "--order is given twice",
        ),
        (
            "unet_a",
            vec!["--sampler".into(), "ddim".into(), "--steps".into(), "2000".into()],
            "--steps 2000",
        ),
        (
            "unet_a",
            vec!["--classifier_scale".into(), "2".into()],
            "--classifier_scale needs --classifier_path",
        ),
        ("unet_a", with_clf(&["--classifier_scale", "nan"]), "--classifier_scale NaN"),
        ("unet_a", with_clf(&["--classifier_scale", "inf"]), "--classifier_scale inf"),
        (
            "unet_b",
            vec!["--cfg_scale".into(), "3".into()],
            "--cfg_scale needs a class-conditional model",
        ),
        ("unet_a", vec!["--cfg_scale".into(), "3".into()], "--null_class K"),
        (
            "unet_a",
            vec!["--cfg_scale".into(), "nan".into(), "--null_class".into(), "9".into()],
            "--cfg_scale NaN",
        ),
        (
            "unet_a",
            vec!["--null_class".into(), "10".into()],
            "--null_class 10: the model has 10 label rows",
        ),
        (
            "unet_a",
            vec![
                "--cfg_scale".into(),
                "2".into(),
                "--null_class".into(),
                "9".into(),
                "--guidance_interval".into(),
                "700,100".into(),
            ],
            "--guidance_interval \"700,100\"",
        ),
        (
            "unet_a",
            vec![
                "--cfg_scale".into(),
                "2".into(),
                "--null_class".into(),
                "9".into(),
                "--guidance_interval".into(),
                "1".into(),
            ],
            "--guidance_interval \"1\"",
        ),
        ("unet_a", vec!["--guidance_interval".into(), "0,500".into()], "needs guidance to limit"),
        (
            "unet_a",
            vec!["--null_class".into(), "9".into(), "--classes".into(), "9".into()],
            "null class",
        ),
        (
            "unet_a",
            vec!["--output_float".into(), "/no/such/dir/x.npy".into()],
            "--output_float /no/such/dir/x.npy",
        ),
    ];
    for (model, extra, expect) in cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let err = one_line_error(&sample_args(model, &out, &extra), &out);
        assert!(err.contains(expect), "{extra:?}: expected {expect:?} in: {err}");
    }
}

/// The reference's uint8 conversion of float NCHW samples, as NHWC.
fn to_uint8_nhwc(x: &Tensor) -> Tensor {
    let y = ((x + 1.0).unwrap() * 127.5).unwrap().clamp(0f32, 255f32).unwrap();
    y.floor().unwrap().to_dtype(DType::U8).unwrap().permute((0, 2, 3, 1)).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// DPM-Solver++(2M) with classifier guidance through the command line: the golden case's
/// sample, the float output equal to the npz before quantisation, and the NFE reported.
#[test]
fn dpm_solver_through_the_cli_matches_the_golden_case_and_writes_float() {
    let c = candle_core::safetensors::load(
        golden("samplers/case_dpmpp_2m_guided.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let dir = tmpdir("dpm");
    let noise = dir.join("x_T.npy");
    c["in.x_T"].write_npy(&noise).unwrap();
    let out = dir.join("out.npz");
    let float = dir.join("out.npy");
    let mut args = sample_args(
        "unet_a",
        &out,
        &[
            "--sampler",
            "dpm-solver++",
            "--steps",
            "10",
            "--classes",
            "3,7",
            "--init_noise",
            &s(&noise),
            "--output_float",
            &s(&float),
            "--classifier_path",
            &s(&golden("model_clf_attn.safetensors")),
            "--classifier_config",
            &s(&golden("model_clf_attn.json")),
            "--classifier_scale",
            "3",
        ],
    );
    args.retain(|a| a != "--quiet");
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("dpm-solver++10") && err.contains("10 network evaluations"), "{err}");
    let x0 = Tensor::read_npy(&float).unwrap();
    assert_eq!(x0.dtype(), DType::F32);
    let want = &c["out.sample"];
    let bound =
        1e-4 + 1e-4 * want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let d = max_abs_diff(&x0, want);
    assert!(d <= bound, "float sample off by {d} (bound {bound})");
    let npz = Tensor::read_npz(&out).unwrap();
    let images = &npz.iter().find(|(k, _)| k == "arr_0").unwrap().1;
    assert_eq!(max_abs_diff(&to_uint8_nhwc(&x0), images), 0.0, "npz = uint8 of the float output");
}

/// The adaptive solver through the command line reports how many evaluations it took.
#[test]
fn adaptive_solver_reports_its_evaluations_on_the_command_line() {
    let dir = tmpdir("adaptive");
    let out = dir.join("out.npz");
    let mut args = sample_args(
        "unet_b",
        &out,
        &[
            "--diffusion_steps",
            "1000",
            "--sampler",
            "dpm-solver++",
            "--method",
            "adaptive",
            "--atol",
            "0.05",
            "--rtol",
            "0.2",
        ],
    );
    args.retain(|a| a != "--quiet");
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("method=adaptive") && err.contains("network evaluations per sample"),
        "{err}"
    );
}

/// Train two steps with label dropout, then sample with `--cfg_scale 3` and nothing else; the
/// null class is in the checkpoint (and `gdiff inspect` shows it).
#[test]
fn trained_with_label_dropout_samples_with_cfg_scale_alone() {
    let dir = tmpdir("cfg-train");
    let log = dir.join("run");
    let o = gdiff(&[
        "train",
        "--data_dir",
        "fashion-mnist",
        "--image_size",
        "16",
        "--in_channels",
        "1",
        "--num_channels",
        "32",
        "--num_res_blocks",
        "1",
        "--channel_mult",
        "1,1",
        "--attention_resolutions",
        "8",
        "--num_head_channels",
        "32",
        "--class_cond",
        "True",
        "--class_dropout_prob",
        "0.1",
        "--learn_sigma",
        "True",
        "--diffusion_steps",
        "40",
        "--noise_schedule",
        "cosine",
        "--batch_size",
        "4",
        "--max_steps",
        "2",
        "--save_interval",
        "2",
        "--random_flip",
        "False",
        "--log_dir",
        &s(&log),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ckpt = log.join("model000002.safetensors");
    let o = gdiff(&["inspect", &s(&ckpt), "--no_keys"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("\"num_classes\": 11"), "{text}");
    assert!(text.contains("null class 10") && text.contains("label dropout 0.1"), "{text}");
    let out = dir.join("cfg.npz");
    let o = gdiff(&[
        "sample",
        "--model_path",
        &s(&ckpt),
        "--cfg_scale",
        "3",
        "--num_samples",
        "3",
        "--output",
        &s(&out),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let arrays = Tensor::read_npz(&out).unwrap();
    let labels = &arrays.iter().find(|(k, _)| k == "arr_1").unwrap().1;
    let labels = labels.to_vec1::<i64>().unwrap();
    assert!(
        labels.iter().all(|&l| (0..10).contains(&l)),
        "the null class is never asked: {labels:?}"
    );
    // Both guidance kinds and an interval, through DPM-Solver++.
    let o = gdiff(&[
        "sample",
        "--model_path",
        &s(&ckpt),
        "--cfg_scale",
        "2",
        "--guidance_interval",
        "5,30",
        "--sampler",
        "dpm-solver++",
        "--steps",
        "5",
        "--num_samples",
        "2",
        "--output",
        &s(&out),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
