//! Sampling, super-resolution and likelihood under `mpirun -np 2`: the files equal the
//! one-process ones (sample i keeps its noise and label whatever the rank count), uneven
//! splits finish, and a rank that fails ends the whole job with its error.
//!
//! Needs the binary built with the `mpi` feature and OpenMPI's `mpirun` on PATH; CI runs it as
//! `cargo test --release --features mpi -p gdiff --test mpi_sample`. Built without the feature
//! (the default `cargo test`), each test prints why and passes without doing anything.
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};

mod support;
use support::golden_arg as golden;

fn skipped(name: &str) -> bool {
    if cfg!(feature = "mpi") {
        return false;
    }
    println!("SKIPPED {name}: gdiff built without the `mpi` feature (run `cargo test --release --features mpi -p gdiff --test mpi_sample`)");
    true
}

/// Runs a command to its end, failing the test if it takes longer than `limit` (a hang).
fn run_limited(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starts");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("still running after {limit:?}: a rank hangs");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn single(args: &[String]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gdiff"));
    c.args(args)
        .env("RAYON_NUM_THREADS", "1")
        .env_remove("OMPI_COMM_WORLD_SIZE")
        .env_remove("PMI_SIZE")
        .env_remove("PMIX_SIZE");
    run_limited(c, Duration::from_secs(600))
}

fn mpirun(np: usize, args: &[String], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string()]);
    c.args(["-x", "RAYON_NUM_THREADS=1"]);
    for (k, v) in env {
        c.args(["-x", &format!("{k}={v}")]);
    }
    c.arg(env!("CARGO_BIN_EXE_gdiff")).args(args);
    run_limited(c, Duration::from_secs(600))
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn npz(path: &Path) -> Vec<(String, Tensor)> {
    Tensor::read_npz(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    let (a, b) = (a.to_dtype(DType::F64).unwrap(), b.to_dtype(DType::F64).unwrap());
    a.dims() == b.dims()
        && a.flatten_all().unwrap().to_vec1::<f64>().unwrap()
            == b.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// The outputs of one process and of two ranks are the same files.
fn assert_same_outputs(one: &Path, two: &Path) {
    let (a, b) = (npz(&one.join("out.npz")), npz(&two.join("out.npz")));
    assert_eq!(a.len(), b.len());
    for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert!(same(ta, tb), "{ka} differs between one process and two ranks");
    }
    let fa = Tensor::read_npy(one.join("out.npy")).unwrap();
    let fb = Tensor::read_npy(two.join("out.npy")).unwrap();
    assert!(same(&fa, &fb), "the float samples differ");
    assert!(two.join("out.png").exists(), "rank 0 writes the grid");
}

fn sample_args(dir: &Path) -> Vec<String> {
    let d = |f: &str| dir.join(f).display().to_string();
    let mut v = strings(&[
        "sample",
        "--model_path",
        &golden("model_unet_a.safetensors"),
        "--model_config",
        &golden("model_unet_a.json"),
        "--classifier_path",
        &golden("model_clf_attn.safetensors"),
        "--classifier_config",
        &golden("model_clf_attn.json"),
        "--classifier_scale",
        "2",
        "--noise_schedule",
        "cosine",
        "--sampler",
        "ddim",
        "--steps",
        "4",
        "--num_samples",
        "10",
        "--batch_size",
        "2",
        "--seed",
        "5",
        "--quiet",
    ]);
    v.extend([
        "--output".into(),
        d("out.npz"),
        "--output_float".into(),
        d("out.npy"),
        "--grid".into(),
        d("out.png"),
    ]);
    v
}

/// Runs `gdiff <what>` in one process and under `mpirun -np 2`, each writing into its own
/// directory under `tmp` (`args` gets the directory), and checks the files are equal.
fn one_and_two_ranks_write_the_same(tmp: &Path, args: impl Fn(&Path) -> Vec<String>, what: &str) {
    let (one, two) = (tmp.join("one"), tmp.join("two"));
    std::fs::create_dir_all(&one).unwrap();
    std::fs::create_dir_all(&two).unwrap();
    ok(&single(&args(&one)), &format!("gdiff {what}"));
    ok(&mpirun(2, &args(&two), &[]), &format!("mpirun -np 2 gdiff {what}"));
    assert_same_outputs(&one, &two);
}

/// Classifier-guided sampling, 10 samples in batches of 2 over 2 ranks (3 + 2 batches).
#[test]
fn mpi_sample_equals_one_process() {
    if skipped("mpi_sample_equals_one_process") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    one_and_two_ranks_write_the_same(tmp.path(), sample_args, "sample");
}

/// Super-resolution of 5 low-resolution images in batches of 2 over 2 ranks.
#[test]
fn mpi_super_res_equals_one_process() {
    if skipped("mpi_super_res_equals_one_process") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.npz");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("model_sr.json")).unwrap()).unwrap();
    let k = &cfg["kwargs"];
    let (large, ch) = (k["image_size"].as_u64().unwrap() as usize, 3usize);
    let small = large / 2;
    let v: Vec<u8> = (0..5 * small * small * ch).map(|i| (i * 37 % 251) as u8).collect();
    let imgs = Tensor::from_vec(v, (5, small, small, ch), &Device::Cpu).unwrap();
    let mut arrays = vec![("arr_0", imgs)];
    if k["num_classes"].is_number() {
        arrays.push(("arr_1", Tensor::new(&[1i64, 2, 3, 4, 5], &Device::Cpu).unwrap()));
    }
    let refs: Vec<(&str, &Tensor)> = arrays.iter().map(|(n, t)| (*n, t)).collect();
    Tensor::write_npz(&refs, &base).unwrap();
    let args = |dir: &Path| {
        let d = |f: &str| dir.join(f).display().to_string();
        let mut v = strings(&[
            "super-res",
            "--model_path",
            &golden("model_sr.safetensors"),
            "--model_config",
            &golden("model_sr.json"),
            "--base_samples",
            &base.display().to_string(),
            "--large_size",
            &large.to_string(),
            "--small_size",
            &small.to_string(),
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--num_samples",
            "5",
            "--batch_size",
            "2",
            "--seed",
            "2",
            "--quiet",
        ]);
        v.extend([
            "--output".into(),
            d("out.npz"),
            "--output_float".into(),
            d("out.npy"),
            "--grid".into(),
            d("out.png"),
        ]);
        v
    };
    one_and_two_ranks_write_the_same(tmp.path(), args, "super-res");
}

/// Bits per dimension of 5 images in batches of 2 over 2 ranks: the same terms up to the
/// order of the sums.
#[test]
fn mpi_nll_averages_over_ranks() {
    if skipped("mpi_nll_averages_over_ranks") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..5u32 {
        let img = image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([(x * 7 + i * 31) as u8, (y * 5 + i) as u8, ((x + y) * 3) as u8])
        });
        img.save(data.join(format!("img_{i}.png"))).unwrap();
    }
    let args = |dir: &Path| {
        strings(&[
            "nll",
            "--data_dir",
            &data.display().to_string(),
            "--model_path",
            &golden("model_unet_b.safetensors"),
            "--model_config",
            &golden("model_unet_b.json"),
            "--diffusion_steps",
            "100",
            "--num_samples",
            "5",
            "--batch_size",
            "2",
            "--log_dir",
            &dir.display().to_string(),
            "--quiet",
        ])
    };
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let o1 = single(&args(&one));
    ok(&o1, "gdiff nll");
    let o2 = mpirun(2, &args(&two), &[]);
    ok(&o2, "mpirun -np 2 gdiff nll");
    let bpd = |o: &Output| -> f64 {
        let s = String::from_utf8_lossy(&o.stdout);
        let line = s.lines().find(|l| l.starts_with("bpd=")).expect("a bpd line");
        line[4..].split_whitespace().next().unwrap().parse().unwrap()
    };
    let (b1, b2) = (bpd(&o1), bpd(&o2));
    assert!((b1 - b2).abs() <= 1e-9 * b1.abs(), "bpd {b1} vs {b2}");
    for name in ["vb", "mse", "xstart_mse"] {
        let f = format!("{name}_terms.npz");
        let (a, b) = (&npz(&one.join(&f))[0].1, &npz(&two.join(&f))[0].1);
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(d <= 1e-9, "{name} terms differ by {d}");
    }
}

/// A failure on rank 1 ends both processes, with the rank and its error on stderr, and no
/// output is left.
#[test]
fn mpi_error_on_one_rank_ends_the_job() {
    if skipped("mpi_error_on_one_rank_ends_the_job") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let o = mpirun(2, &sample_args(tmp.path()), &[("GDIFF_FAIL_RANK", "1")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the job must fail");
    assert!(err.contains("error (rank 1 of 2)") && err.contains("GDIFF_FAIL_RANK"), "{err}");
    assert!(!tmp.path().join("out.npz").exists(), "no output is left");
}
