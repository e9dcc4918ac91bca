//! End-to-end runs of the other subcommands on the golden dev models: convert (.pt ->
//! safetensors with the config -> .pt), inspect, nll, super-res, and a tiny train + sample.
mod support;

use candle_core::Tensor;
use support::{gdiff, golden_arg as golden, UNET_B_FLAGS};

/// (success, stdout, stderr) of `gdiff args`.
fn run(args: &[&str]) -> (bool, String, String) {
    let o = gdiff(args);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

fn ok(args: &[&str]) -> String {
    let (s, out, err) = run(args);
    assert!(s, "gdiff {args:?} failed: {err}");
    out
}

#[test]
fn cli_convert_inspect_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("unet_b.safetensors");
    let src = golden("model_unet_b.pt");
    let mut args = vec!["convert", &src[..], st.to_str().unwrap()];
    args.extend_from_slice(UNET_B_FLAGS);
    args.extend_from_slice(&["--noise_schedule", "linear"]);
    let out = ok(&args);
    assert!(out.contains("285667 parameters"), "{out}");

    let info = ok(&["inspect", st.to_str().unwrap(), "--no_keys"]);
    assert!(info.contains("config (embedded)") && info.contains("\"num_heads\": 2"), "{info}");
    assert!(info.contains("diffusion (embedded)"), "{info}");

    // The converted file samples with no model flags at all.
    let npz = dir.path().join("s.npz");
    ok(&[
        "sample",
        "--model_path",
        st.to_str().unwrap(),
        "--num_samples",
        "2",
        "--batch_size",
        "2",
        "--timestep_respacing",
        "ddim5",
        "--use_ddim",
        "True",
        "--seed",
        "3",
        "--output",
        npz.to_str().unwrap(),
        "--quiet",
    ]);
    let arrays = Tensor::read_npz(&npz).unwrap();
    assert_eq!(arrays.iter().find(|(n, _)| n == "arr_0").unwrap().1.dims(), &[2, 32, 32, 3]);
    assert!(
        arrays.iter().all(|(n, _)| n != "arr_1"),
        "an unconditional, unguided run has no labels"
    );

    // And back to .pt, which the golden config loads again.
    let pt = dir.path().join("back.pt");
    ok(&["convert", st.to_str().unwrap(), pt.to_str().unwrap()]);
    let inferred = ok(&["inspect", pt.to_str().unwrap(), "--no_keys"]);
    assert!(inferred.contains("inferred from the shapes"), "{inferred}");
    assert!(
        inferred.contains("num_res_blocks: 1") && inferred.contains("channel_mult: [1, 1]"),
        "{inferred}"
    );
    assert!(inferred.contains("attention_resolutions (downsample factors): [2]"), "{inferred}");
}

#[test]
fn cli_same_seed_same_samples_whatever_the_batch_size() {
    // The stochastic samplers: DDPM (one draw per step) and SDE-DPM-Solver++ (likewise).
    for sampler in [["--timestep_respacing", "4"], ["--sampler", "sde-dpm-solver++4"]] {
        same_samples_whatever_the_batch_size(&sampler);
    }
}

fn same_samples_whatever_the_batch_size(sampler: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (model, config) = (golden("model_unet_a.safetensors"), golden("model_unet_a.json"));
    let run = |batch: &str, name: &str| {
        let npz = dir.path().join(name);
        let mut args = vec![
            "sample",
            "--model_path",
            &model,
            "--model_config",
            &config,
            "--noise_schedule",
            "cosine",
            "--num_samples",
            "3",
            "--batch_size",
            batch,
            "--seed",
            "42",
            "--output",
            npz.to_str().unwrap(),
            "--no_grid",
            "--quiet",
        ];
        args.extend_from_slice(sampler);
        ok(&args);
        let a = Tensor::read_npz(&npz).unwrap();
        let img: Vec<u8> = a
            .iter()
            .find(|(n, _)| n == "arr_0")
            .unwrap()
            .1
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let lab: Vec<i64> = a.iter().find(|(n, _)| n == "arr_1").unwrap().1.to_vec1().unwrap();
        (img, lab)
    };
    let (a, la) = run("3", "a.npz");
    let (b, lb) = run("2", "b.npz");
    assert_eq!(la, lb, "random labels depend on the seed only");
    // The noise of every sample is identical (see the library's per-sample noise test); the
    // network's float sums may round differently with another batch composition, which can
    // move a pixel across a uint8 truncation boundary.
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    let max = a.iter().zip(&b).map(|(x, y)| (*x as i32 - *y as i32).abs()).max().unwrap();
    assert!(
        max <= 1 && differ * 1000 <= a.len(),
        "{sampler:?}: batch size changed the samples: {differ} pixels, max {max} levels"
    );
}

#[test]
fn cli_nll_writes_the_reference_term_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = golden("model_unet_b.pt");
    let mut args = vec![
        "nll",
        "--data_dir",
        "fashion-mnist:test",
        "--model_path",
        &src[..],
        "--timestep_respacing",
        "5",
        "--num_samples",
        "2",
        "--batch_size",
        "2",
        "--quiet",
        "--log_dir",
        dir.path().to_str().unwrap(),
    ];
    args.extend_from_slice(UNET_B_FLAGS);
    let out = ok(&args);
    assert!(out.contains("bpd="), "{out}");
    for name in ["vb", "mse", "xstart_mse"] {
        let a = Tensor::read_npz(dir.path().join(format!("{name}_terms.npz"))).unwrap();
        let v: Vec<f64> = a[0].1.to_vec1().unwrap();
        assert_eq!(v.len(), 5, "{name}: one term per timestep");
        assert!(v.iter().all(|x| x.is_finite()), "{name}: {v:?}");
    }
}

#[test]
fn cli_super_res_upsamples_base_samples() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.npz");
    let imgs = Tensor::arange(0u32, 2 * 16 * 16 * 3, &candle_core::Device::Cpu)
        .unwrap()
        .affine(1.0, 0.0)
        .unwrap()
        .to_dtype(candle_core::DType::U8)
        .unwrap()
        .reshape((2, 16, 16, 3))
        .unwrap();
    let labels = Tensor::new(&[7i64, 2], &candle_core::Device::Cpu).unwrap();
    Tensor::write_npz(&[("arr_0", &imgs), ("arr_1", &labels)], &base).unwrap();
    let out = dir.path().join("up.npz");
    ok(&[
        "super-res",
        "--model_path",
        &golden("model_sr.pt"),
        "--model_config",
        &golden("model_sr.json"),
        "--base_samples",
        base.to_str().unwrap(),
        "--large_size",
        "32",
        "--small_size",
        "16",
        "--num_samples",
        "2",
        "--batch_size",
        "2",
        "--timestep_respacing",
        "ddim4",
        "--use_ddim",
        "True",
        "--seed",
        "1",
        "--output",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    let a = Tensor::read_npz(&out).unwrap();
    assert_eq!(a.iter().find(|(n, _)| n == "arr_0").unwrap().1.dims(), &[2, 32, 32, 3]);
    let l: Vec<i64> = a.iter().find(|(n, _)| n == "arr_1").unwrap().1.to_vec1().unwrap();
    assert_eq!(l, vec![7, 2], "labels come from the base samples");
}

/// gdiff reads `$OPENAI_LOGDIR` (no `--log_dir`) and `$FASHION_MNIST_DIR` and passes them to the
/// library, which reads no environment.
#[test]
fn cli_nll_takes_its_log_and_data_directories_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (fm, logs, empty) = (dir.path().join("fm"), dir.path().join("logs"), dir.path().join("e"));
    std::fs::create_dir_all(&fm).unwrap();
    std::fs::create_dir_all(&empty).unwrap();
    for name in ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        let installed = std::path::Path::new("/usr/share/datasets/fashion-mnist").join(name);
        std::os::unix::fs::symlink(installed, fm.join(name)).unwrap();
    }
    let src = golden("model_unet_b.pt");
    let mut args = vec![
        "nll",
        "--data_dir",
        "fashion-mnist:test",
        "--model_path",
        &src[..],
        "--timestep_respacing",
        "2",
        "--num_samples",
        "1",
        "--quiet",
    ];
    args.extend_from_slice(UNET_B_FLAGS);
    let nll = |data: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gdiff"))
            .args(&args)
            .env("OPENAI_LOGDIR", &logs)
            .env("FASHION_MNIST_DIR", data)
            .output()
            .expect("gdiff runs")
    };
    let o = nll(&fm);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(logs.join("vb_terms.npz").is_file(), "the terms go to $OPENAI_LOGDIR");
    let o = nll(&empty);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "an empty $FASHION_MNIST_DIR must fail");
    let want = empty.join("t10k-images-idx3-ubyte.gz").display().to_string();
    assert!(e.contains(&want) && e.contains("FASHION_MNIST_DIR"), "{e}");
}

/// gdiff reads the MPI launcher's world size from the environment: a binary built without the
/// `mpi` feature refuses to run as one of several ranks (each would work alone).
#[cfg(not(feature = "mpi"))]
#[test]
fn cli_refuses_an_mpi_launch_without_mpi_support() {
    let dir = tempfile::tempdir().unwrap();
    let src = golden("model_unet_b.pt");
    let mut args = vec!["nll", "--data_dir", "fashion-mnist:test", "--model_path", &src[..]];
    args.extend_from_slice(UNET_B_FLAGS);
    args.extend_from_slice(&["--log_dir", dir.path().to_str().unwrap()]);
    for var in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_gdiff"))
            .args(&args)
            .env_remove("OMPI_COMM_WORLD_SIZE")
            .env_remove("PMI_SIZE")
            .env_remove("PMIX_SIZE")
            .env(var, "2")
            .output()
            .expect("gdiff runs");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains("built without MPI support"), "{var}: {e}");
    }
}
