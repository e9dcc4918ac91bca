//! Issue 18: `gdiff` on hostile files (made here, small, in a temp dir), under a memory cap
//! (`ulimit -v`): every run ends with exit code 1 or 2 and a one-line error, never a panic, an
//! abort or a signal, and leaves no partial output behind.
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod support;
use support::{golden_arg as golden, UNET_B_FLAGS};

/// Virtual memory cap of every run, KiB (the tiny models need well under 1 GiB).
const CAP_KB: u64 = 3 << 20;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `gdiff args` in `cwd` under the memory cap.
fn capped(cwd: &Path, args: &[&str]) -> Run {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {CAP_KB} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_gdiff"))
        .args(args)
        .current_dir(cwd)
        .env("RAYON_NUM_THREADS", "2")
        .stdin(Stdio::null())
        .output()
        .expect("sh runs");
    Run {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(dir).into_iter().map(|p| p.display().to_string()).collect();
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Runs a hostile case: exit code 1 or 2, an error line containing `want`, no panic, and no
/// new file in `out` (the run's working directory and output folder).
fn refuses(what: &str, args: &[&str], want: &str) {
    let out = tempfile::tempdir().unwrap();
    let before = files_in(out.path());
    let r = capped(out.path(), args);
    let e = &r.stderr;
    assert!(matches!(r.code, Some(1) | Some(2)), "{what}: exit {:?} (signal?)\n{e}", r.code);
    assert!(!e.contains("panicked") && !e.contains("memory allocation"), "{what}: {e}");
    assert!(e.starts_with("error: ") || e.contains("\nerror: "), "{what}: {e}");
    assert!(e.contains(want), "{what}: expected {want:?} in\n{e}");
    assert_eq!(files_in(out.path()), before, "{what}: left output behind");
}

/// A `.pt` archive with `data.pkl` = `pkl` and storages; `deflate` compresses the entries.
fn pt(path: &Path, pkl: &[u8], storages: &[(&str, Vec<u8>)], deflate: bool) {
    let f = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(f);
    let m = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let opts: zip::write::FileOptions<()> =
        zip::write::FileOptions::default().compression_method(m);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pkl).unwrap();
    for (name, data) in storages {
        zip.start_file(format!("archive/data/{name}"), opts).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
}

/// `{"w": _rebuild_tensor_v2(FloatStorage "0" of numel, 0, (numel,), (1,))}`.
fn one_tensor_pickle(numel: u32) -> Vec<u8> {
    let mut p = b"\x80\x02}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((".to_vec();
    p.extend_from_slice(b"X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000");
    p.extend_from_slice(b"X\x03\x00\x00\x00cpuJ");
    p.extend_from_slice(&numel.to_le_bytes());
    p.extend_from_slice(b"tQJ\x00\x00\x00\x00(J");
    p.extend_from_slice(&numel.to_le_bytes());
    p.extend_from_slice(b"t(J\x01\x00\x00\x00t\x89tRu.");
    p
}

fn safetensors_file(path: &Path, tensors: &[(&str, Vec<f32>)], meta: HashMap<String, String>) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, v)| {
            let bytes: &[u8] = unsafe_bytes(v);
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![v.len()], bytes)
                    .unwrap(),
            )
        })
        .collect();
    let b = safetensors::serialize(views, Some(meta)).unwrap();
    std::fs::write(path, b).unwrap();
}

fn unsafe_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8; the length is exact.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

fn npy(path: &Path, descr: &str, shape: &str, data: &[u8]) {
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    b.extend_from_slice(dict.as_bytes());
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

#[test]
fn hostile_cli_checkpoints_are_refused_under_a_memory_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let s = |p: &Path| p.display().to_string();
    // D4: memo bomb (candle: gigabytes from a few hundred bytes).
    let mut memo = b"\x80\x02]q\x000".to_vec();
    for _ in 0..60 {
        memo.extend_from_slice(b"h\x00h\x00\x86q\x000");
    }
    memo.extend_from_slice(b"}X\x01\x00\x00\x00ah\x00s.");
    pt(&d.join("memo.pt"), &memo, &[], false);
    refuses("memo bomb", &["inspect", &s(&d.join("memo.pt"))], "no tensors");
    // D3: deep nesting (candle: stack overflow, SIGSEGV).
    let mut deep = b"\x80\x02}X\x01\x00\x00\x00a)".to_vec();
    deep.extend(std::iter::repeat_n(0x85u8, 300_000));
    deep.extend_from_slice(b"s.");
    pt(&d.join("deep.pt"), &deep, &[], false);
    refuses("nesting", &["inspect", &s(&d.join("deep.pt"))], "nested deeper");
    // D2: too few rebuild arguments (candle: Vec::remove panic).
    pt(
        &d.join("short.pt"),
        b"\x80\x02}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(J\x00\x00\x00\x00tRu.",
        &[],
        false,
    );
    refuses("short args", &["inspect", &s(&d.join("short.pt"))], "expected at least 4");
    // Zip bomb: 40 MiB of zeros declared as a tensor, ~40 KiB on disk.
    pt(&d.join("bomb.pt"), &one_tensor_pickle(10 << 20), &[("0", vec![0; 40 << 20])], true);
    assert!(std::fs::metadata(d.join("bomb.pt")).unwrap().len() < 1 << 20);
    refuses("zip bomb", &["inspect", &s(&d.join("bomb.pt"))], "zip bomb");
    // D7: a sparse 8 GiB safetensors file.
    let sparse = d.join("sparse.safetensors");
    safetensors_file(&sparse, &[("w", vec![1.0; 4])], HashMap::new());
    std::fs::OpenOptions::new().write(true).open(&sparse).unwrap().set_len(8 << 30).unwrap();
    refuses("sparse", &["inspect", &s(&sparse)], "not a valid safetensors file");
    // D1: an embedded config with image_size 2^32 (was: out-of-bounds write, SIGSEGV).
    let cfg = serde_json::json!({"builder": "unet.UNetModel", "kwargs": {
        "image_size": 4294967296u64, "in_channels": 3, "model_channels": 32, "out_channels": 3,
        "num_res_blocks": 1, "attention_resolutions": [], "channel_mult": [1, 1]}});
    let huge = d.join("huge.safetensors");
    let meta = HashMap::from([("gdiff.model_config".to_string(), cfg.to_string())]);
    safetensors_file(&huge, &[("w", vec![1.0; 4])], meta);
    refuses(
        "image_size 2^32",
        &["sample", "--model_path", &s(&huge), "--num_samples", "1", "--quiet"],
        "limit of 4096",
    );
    // D9: NaN weights.
    let nan = d.join("nan.safetensors");
    safetensors_file(&nan, &[("time_embed.0.weight", vec![f32::NAN; 4])], HashMap::new());
    refuses(
        "nan weights",
        &["sample", "--model_path", &s(&nan), "--num_samples", "1", "--quiet"],
        "NaN or infinite",
    );
}

#[test]
fn hostile_cli_flags_and_side_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let s = |p: &Path| p.display().to_string();
    let model = golden("model_unet_b.pt");
    let sample = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> =
            ["sample", "--model_path", &model, "--num_samples", "1", "--batch_size", "1"]
                .iter()
                .map(|x| x.to_string())
                .collect();
        v.extend(UNET_B_FLAGS.iter().map(|x| x.to_string()));
        v.extend(["--timestep_respacing", "2", "--quiet", "--output", "o.npz"].map(String::from));
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let run = |what: &str, args: Vec<String>, want: &str| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        refuses(what, &a, want)
    };
    // D1 as a flag, D6 the steps.
    run("--image_size 2^32", sample(&["--image_size", "4294967296"]), "limit of 4096");
    run("--diffusion_steps", sample(&["--diffusion_steps", "2000000000"]), "--diffusion_steps");
    // D6/D9/D11: --init_noise with a lying header, NaN, big-endian.
    npy(&d.join("lie.npy"), "<f4", "(1099511627776, 3, 32, 32)", &[0; 64]);
    run("init_noise size", sample(&["--init_noise", &s(&d.join("lie.npy"))]), "only 64 bytes");
    let nan: Vec<u8> = vec![f32::NAN; 3 * 32 * 32].iter().flat_map(|v| v.to_le_bytes()).collect();
    npy(&d.join("nan.npy"), "<f4", "(1, 3, 32, 32)", &nan);
    run("init_noise nan", sample(&["--init_noise", &s(&d.join("nan.npy"))]), "not finite");
    npy(&d.join("be.npy"), ">f4", "(1, 3, 32, 32)", &[0; 16]);
    run("init_noise short", sample(&["--init_noise", &s(&d.join("be.npy"))]), ">f4");
    // D11: an empty base-samples file.
    let base = d.join("empty.npz");
    {
        let f = std::fs::File::create(&base).unwrap();
        let mut z = zip::ZipWriter::new(f);
        z.start_file("arr_0.npy", zip::write::FileOptions::<()>::default()).unwrap();
        let dict = "{'descr': '|u1', 'fortran_order': False, 'shape': (0, 16, 16, 3), }\n";
        z.write_all(b"\x93NUMPY\x01\x00").unwrap();
        z.write_all(&(dict.len() as u16).to_le_bytes()).unwrap();
        z.write_all(dict.as_bytes()).unwrap();
        z.finish().unwrap();
    }
    refuses(
        "empty base samples",
        &[
            "super-res",
            "--model_path",
            &golden("model_sr.pt"),
            "--model_config",
            &golden("model_sr.json"),
            "--base_samples",
            &s(&base),
            "--large_size",
            "32",
            "--small_size",
            "16",
            "--quiet",
            "--output",
            "o.npz",
        ],
        "is empty",
    );
    // D9: eval inputs that gave FID 2e8 / IS inf.
    let feats = d.join("f.npz");
    {
        let f = std::fs::File::create(&feats).unwrap();
        let mut z = zip::ZipWriter::new(f);
        z.start_file("pool.npy", zip::write::FileOptions::<()>::default()).unwrap();
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }\n";
        z.write_all(b"\x93NUMPY\x01\x00").unwrap();
        z.write_all(&(dict.len() as u16).to_le_bytes()).unwrap();
        z.write_all(dict.as_bytes()).unwrap();
        for v in [0.0f32, f32::INFINITY, 1.0, 2.0] {
            z.write_all(&v.to_le_bytes()).unwrap();
        }
        z.finish().unwrap();
    }
    refuses(
        "eval inf",
        &["eval", "--features", &s(&feats), &s(&feats), "--device", "cpu", "--output", "r.json"],
        "not finite",
    );
    // Training flags (D6, D9) are refused before anything is created.
    let train = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["train", "--data_dir", "fashion-mnist", "--log_dir", "logs"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    run("lr -1", train(&["--lr=-1"]), "--lr -1");
    run("lr nan", train(&["--lr", "NaN"]), "--lr NaN");
    run("workers", train(&["--data_workers", "100000"]), "--data_workers 100000");
    run("microbatch", train(&["--microbatch", "0"]), "--microbatch 0");
    // D11: missing required arguments are listed whole.
    refuses("missing args", &["train"], "--data_dir");
}

#[test]
fn hostile_cli_inspect_survives_a_closed_stdout_and_odd_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    // D8: tensors with unexpected ranks and no embedded config.
    let odd = tmp.path().join("odd.safetensors");
    safetensors_file(
        &odd,
        &[("time_embed.0.weight", vec![1.0; 3]), ("input_blocks.0.0.weight", vec![1.0])],
        HashMap::new(),
    );
    let r = capped(tmp.path(), &["inspect", odd.to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("not an ADM network"), "{}", r.stdout);
    // D8: `gdiff inspect F | head -1` (a closed stdout) ends quietly, no panic.
    let mut child = Command::new(env!("CARGO_BIN_EXE_gdiff"))
        .args(["inspect", &golden("model_unet_b.pt")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before the first line
    let o = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code().is_some() && !e.contains("panicked"), "{:?} {e}", o.status);
    assert_eq!(o.status.code(), Some(0), "{e}");
}
