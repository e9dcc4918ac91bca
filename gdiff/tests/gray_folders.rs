//! Issue 22: a folder of grayscale PNGs trains with `--in_channels 1` in every training
//! command, and the checkpoints sample, guide, upsample and score on the same folder; an RGB
//! folder with `--in_channels 1` is converted (PIL's convert("L")) and says so.
use std::path::Path;
use std::process::Command;

fn gdiff(args: &[String]) -> (String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_gdiff"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("gdiff runs");
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "gdiff {args:?} failed:\n{err}");
    (out, err)
}

fn args(s: &str, extra: &[&Path]) -> Vec<String> {
    let mut v: Vec<String> = s.split_whitespace().map(String::from).collect();
    let mut it = extra.iter();
    for a in v.iter_mut() {
        if a == "{}" {
            *a = it.next().expect("enough paths").display().to_string();
        }
    }
    v
}

fn folder(dir: &Path, rgb: bool) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, name) in ["a_0.png", "a_1.png", "b_0.png", "b_1.png"].iter().enumerate() {
        let p = dir.join(name);
        if rgb {
            let px: Vec<u8> = (0..16 * 16 * 3).map(|j| ((j * 5 + i * 40) % 256) as u8).collect();
            image::save_buffer(&p, &px, 16, 16, image::ColorType::Rgb8).unwrap();
        } else {
            let px: Vec<u8> = (0..16 * 16).map(|j| ((j * 3 + i * 60) % 256) as u8).collect();
            image::save_buffer(&p, &px, 16, 16, image::ColorType::L8).unwrap();
        }
    }
}

const NET: &str = "--image_size 16 --in_channels 1 --num_channels 32 --num_res_blocks 1 \
    --channel_mult 1,2 --attention_resolutions 8 --num_head_channels 16 --diffusion_steps 50";
const TRAIN: &str = "--batch_size 2 --max_steps 2 --save_interval 1000 --log_interval 1 \
    --data_workers 1";

fn npz_shape(path: &Path) -> Vec<usize> {
    let a = candle_core::Tensor::read_npz(path).unwrap();
    a.iter().find(|(n, _)| n == "arr_0").unwrap().1.dims().to_vec()
}

fn every_command_on(data: &Path, work: &Path, expect_note: bool) {
    let (d, w) = (data, work);
    // train: 2 steps, a checkpoint, then samples from it.
    let (_, err) = gdiff(&args(
        &format!("train --data_dir {{}} {NET} {TRAIN} --log_dir {{}}"),
        &[d, &w.join("m")],
    ));
    assert_eq!(err.contains("converted to gray"), expect_note, "{err}");
    let model = w.join("m/model000002.safetensors");
    assert!(model.exists());
    gdiff(&args(
        "sample --model_path {} --num_samples 2 --batch_size 2 --timestep_respacing 2 --output {} --no_grid --quiet",
        &[&model, &w.join("s.npz")],
    ));
    assert_eq!(npz_shape(&w.join("s.npz")), [2, 16, 16, 1]);
    // train-classifier: 2 steps, then guides the model's samples.
    gdiff(&args(
        &format!(
            "train-classifier --data_dir {{}} --image_size 16 --in_channels 1 --classifier_width 32 \
             --classifier_depth 1 --channel_mult 1,2 --classifier_attention_resolutions 8 \
             --diffusion_steps 50 --iterations 2 {TRAIN} --log_dir {{}}"
        ),
        &[d, &w.join("c")],
    ));
    let clf = w.join("c/model000002.safetensors");
    gdiff(&args(
        "sample --model_path {} --classifier_path {} --classifier_scale 1 --num_samples 2 \
         --batch_size 2 --timestep_respacing 2 --output {} --no_grid --quiet",
        &[&model, &clf, &w.join("g.npz")],
    ));
    assert_eq!(npz_shape(&w.join("g.npz")), [2, 16, 16, 1]);
    // train-super-res: 8 -> 16, then upsamples the model's samples (made 8x8 here).
    gdiff(&args(
        &format!(
            "train-super-res --data_dir {{}} --large_size 16 --small_size 8 --in_channels 1 \
             --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 8 \
             --num_head_channels 16 --diffusion_steps 50 {TRAIN} --log_dir {{}}"
        ),
        &[d, &w.join("sr")],
    ));
    let small =
        candle_core::Tensor::zeros((2, 8, 8, 1), candle_core::DType::U8, &candle_core::Device::Cpu)
            .unwrap();
    candle_core::Tensor::write_npz(&[("arr_0", &small)], w.join("base.npz")).unwrap();
    gdiff(&args(
        "super-res --model_path {} --base_samples {} --large_size 16 --small_size 8 \
         --num_samples 2 --batch_size 2 --timestep_respacing 2 --output {} --no_grid --quiet",
        &[&w.join("sr/model000002.safetensors"), &w.join("base.npz"), &w.join("u.npz")],
    ));
    assert_eq!(npz_shape(&w.join("u.npz")), [2, 16, 16, 1]);
    // nll on the same folder.
    let (out, _) = gdiff(&args(
        "nll --data_dir {} --model_path {} --num_samples 2 --batch_size 2 --timestep_respacing 2 \
         --quiet --log_dir {}",
        &[d, &model, &w.join("n")],
    ));
    assert!(out.contains("bpd="), "{out}");
}

#[test]
fn gray_folder_trains_samples_and_scores_with_one_channel() {
    let tmp = tempfile::tempdir().unwrap();
    folder(&tmp.path().join("gray"), false);
    every_command_on(&tmp.path().join("gray"), tmp.path(), false);
}

#[test]
fn rgb_folder_with_in_channels_1_is_converted_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    folder(&tmp.path().join("rgb"), true);
    every_command_on(&tmp.path().join("rgb"), tmp.path(), true);
}
