//! The built-in Fashion-MNIST models end to end, on real data: `gdiff sample` with no model
//! flags (the README's first command, fewer samples) and a small `gdiff guidance-sweep`, judged
//! by the independent clean classifier that ships with them. Needs Debian's
//! `dataset-fashion-mnist` (the sweep's reference set); CI installs it.
mod support;

use std::path::PathBuf;

use candle_core::Device;
use guided_diffusion::eval::Judge;
use guided_diffusion::models::Net;
use support::{gdiff, tmpdir};

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/fashion-mnist")
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "gdiff failed: {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn builtin_guided_sampling_draws_the_asked_classes() {
    let dir = tmpdir("sample");
    let out = dir.join("s.npz");
    let o = gdiff(&[
        "sample",
        "--classes",
        "0,1,2,3,4,5,6,7,8,9",
        "--classifier_scale",
        "2",
        "--timestep_respacing",
        "ddim25",
        "--use_ddim",
        "True",
        "--num_samples",
        "20",
        "--batch_size",
        "20",
        "--seed",
        "0",
        "--output",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    ok(&o);
    assert!(dir.join("s.png").exists(), "the grid is written beside the npz");
    let npz = candle_core::npy::NpzTensors::new(&out).unwrap();
    let images = npz.get("arr_0").unwrap().unwrap();
    let labels: Vec<i64> = npz.get("arr_1").unwrap().unwrap().to_vec1().unwrap();
    assert_eq!(images.dims(), [20, 32, 32, 1]);
    let judge = Judge::new(
        Net::load_embedded(models().join("judge.safetensors"), &Device::Cpu).unwrap(),
        Device::Cpu,
    )
    .unwrap();
    let v = judge.judge(&images, 20).unwrap();
    let asked: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    let acc = v.accuracy(&asked).unwrap();
    // The guidance is limited to t <= 400, the built-in default: with the default sampler that
    // scores close to real images, 86-90% (models/fashion-mnist/README.md; chance 10%); 20
    // samples and DDIM leave room for chance.
    assert!(
        acc >= 0.5,
        "the judge recognises only {:.0}% of the guided samples as the asked class",
        100.0 * acc
    );
}

/// Guidance on the built-in model is limited to t <= 400 unless --guidance_interval says
/// otherwise, and the run says so.
#[test]
fn builtin_guidance_defaults_to_its_interval() {
    let dir = tmpdir("interval");
    let run = |tag: &str, extra: &[&str]| {
        let out = dir.join(format!("{tag}.npz"));
        let mut args = vec![
            "sample",
            "--classes",
            "0,1,2,3",
            "--cfg_scale",
            "3",
            "--steps",
            "6",
            "--num_samples",
            "4",
            "--seed",
            "5",
            "--no_grid",
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = gdiff(&args);
        ok(&o);
        let npz = candle_core::npy::NpzTensors::new(&out).unwrap();
        let images = npz.get("arr_0").unwrap().unwrap().flatten_all().unwrap();
        (images.to_vec1::<u8>().unwrap(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (default, note) = run("default", &[]);
    assert!(note.contains("guiding at timesteps t in [0, 400] only"), "{note}");
    let (explicit, note) = run("explicit", &["--guidance_interval", "0,400"]);
    assert!(!note.contains("guiding at timesteps"), "an explicit interval needs no note: {note}");
    assert_eq!(default, explicit, "the default is the interval [0, 400]");
    let (every, _) = run("every", &["--guidance_interval", "0,1000"]);
    assert_ne!(default, every, "--guidance_interval 0,1000 guides at every step");
}

#[test]
fn builtin_sampling_in_bf16_stays_close_to_f32() {
    let dir = tmpdir("bf16");
    // `off`: both bf16 units turned off (as on a CPU with neither).
    let run_with = |precision: &str, off: bool| {
        let out = dir.join(format!("{precision}{}.npz", if off { "-off" } else { "" }));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gdiff"));
        if off {
            cmd.env("GD_AMX", "0").env("GD_AVX512_BF16", "0");
        }
        let o = cmd
            .args([
                "sample",
                "--classes",
                "0,1,2,3,4,5,6,7,8,9",
                "--classifier_scale",
                "2",
                "--timestep_respacing",
                "ddim10",
                "--use_ddim",
                "True",
                "--num_samples",
                "10",
                "--batch_size",
                "10",
                "--seed",
                "1",
                "--output",
                out.to_str().unwrap(),
                "--no_grid",
                "--precision",
                precision,
            ])
            .output()
            .expect("gdiff runs");
        ok(&o);
        let note = String::from_utf8_lossy(&o.stderr).contains("running in f32");
        assert_eq!(note, off && precision == "bf16", "the f32 fallback note");
        let npz = candle_core::npy::NpzTensors::new(&out).unwrap();
        let images = npz.get("arr_0").unwrap().unwrap();
        assert_eq!(images.dims(), [10, 32, 32, 1]);
        images.flatten_all().unwrap().to_vec1::<u8>().unwrap()
    };
    let (a, b) = (run_with("f32", false), run_with("bf16", false));
    // With neither AMX nor AVX512_BF16, bf16 runs f32 (and says so): the same samples.
    assert_eq!(run_with("bf16", true), a, "without bf16 units --precision bf16 must run f32");
    let policy = guided_diffusion::kernels::KernelPolicy::from_vars(|k| std::env::var(k).ok());
    if policy.bf16_unit() == guided_diffusion::kernels::Bf16Unit::Rounding {
        assert_eq!(a, b, "without bf16 hardware --precision bf16 must run f32");
        return;
    }
    let diffs: Vec<i32> = a.iter().zip(&b).map(|(&x, &y)| (x as i32 - y as i32).abs()).collect();
    let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
    let max = *diffs.iter().max().unwrap();
    // Same noise, same model: bf16 rounding moves pixels by a fraction of a level on average
    // (0.24 of 255 measured with ddim25), never to another image.
    assert!(a != b, "--precision bf16 changed nothing");
    assert!(
        mean < 1.5 && max < 64,
        "bf16 samples differ from f32 by {mean:.2} levels on average, {max} at most"
    );
}

#[test]
fn guidance_sweep_writes_tables_grids_and_plot() {
    let dir = tmpdir("sweep");
    let cond = models().join("model.safetensors");
    let o = gdiff(&[
        "guidance-sweep",
        "--model",
        &format!("conditional={}", cond.display()),
        "--scales",
        "0,4",
        "--samplers",
        "ddim10",
        "--guidance_interval",
        "0,500;0,700",
        "--num_samples",
        "20",
        "--batch_size",
        "20",
        "--reference_images",
        "2000",
        "--out_dir",
        dir.to_str().unwrap(),
        "--quiet",
    ]);
    ok(&o);
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "model,sampler,guidance,scale,accuracy,fd,precision,recall,nfe,model_evals,classifier_evals,sample_seconds,seconds"
    );
    assert_eq!(rows.len(), 8, "{csv}");
    assert!(rows[1].starts_with("real test images,-,-,-,"), "{csv}");
    assert!(
        rows[2].starts_with("conditional,ddim10,classifier,0,")
            && rows[3].starts_with("conditional,ddim10,classifier,4,"),
        "{csv}"
    );
    // Every interval of the list is a setting of its own; its label holds a comma, so the CSV
    // quotes it.
    for (i, iv) in ["[0,500]", "[0,700]"].iter().enumerate() {
        assert!(
            rows[4 + 2 * i].starts_with(&format!("conditional,ddim10,\"classifier {iv}\",0,"))
                && rows[5 + 2 * i]
                    .starts_with(&format!("conditional,ddim10,\"classifier {iv}\",4,")),
            "{csv}"
        );
    }
    // The last nine fields are numbers: accuracy to seconds.
    let numbers = |r: &str| -> Vec<f64> {
        let mut v: Vec<f64> = r.rsplit(',').take(9).map(|x| x.parse().unwrap()).collect();
        v.reverse();
        v
    };
    // DDIM-10: 10 network evaluations per sample; the classifier only when guiding.
    let cost = |r: &str| -> Vec<f64> { numbers(r)[4..7].to_vec() };
    assert_eq!(cost(rows[2]), vec![10.0, 10.0, 0.0], "{csv}");
    assert_eq!(cost(rows[3]), vec![10.0, 10.0, 10.0], "{csv}");
    for r in &rows[1..] {
        let f = numbers(r);
        assert!(f[0] >= 0.0 && f[0] <= 1.0 && f[1] >= 0.0 && f[1].is_finite(), "{r}");
        assert!((0.0..=1.0).contains(&f[2]) && (0.0..=1.0).contains(&f[3]), "{r}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert!(json["judge_accuracy_on_reference"].as_f64().unwrap() > 0.8, "{json}");
    let png = std::fs::read(dir.join("tradeoff.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let plot = image::load_from_memory(&png).unwrap();
    assert_eq!((plot.width(), plot.height()), (1120, 800));
    assert!(dir.join("cost.png").exists() && dir.join("steps.png").exists());
    assert!(dir.join("conditional_ddim10_classifier_scale4.png").exists());
    assert!(std::fs::read_to_string(dir.join("results.md"))
        .unwrap()
        .contains("| conditional | ddim10 | classifier | 4 |"));
}

#[test]
fn guidance_sweep_rejects_bad_input() {
    let dir = tmpdir("sweep-bad");
    let d = dir.to_str().unwrap();
    let clf = models().join("classifier.safetensors");
    let clf = clf.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--samplers", "plms10"], "--samplers"),
        (&["--guidance_interval", "0,500;700"], "--guidance_interval \"700\""),
        (&["--judge_path", clf, "--classifier_path", clf], "independent"),
        (&["--model", "nameless"], "NAME=PATH"),
        (&["--model", "x=/no/such.safetensors"], "/no/such.safetensors"),
    ];
    for (extra, expect) in cases {
        let mut args = vec!["guidance-sweep", "--out_dir", d, "--num_samples", "10"];
        args.extend_from_slice(extra);
        let o = gdiff(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(expect), "{extra:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    }
}
