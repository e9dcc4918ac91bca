//! Issue 18, D1/D6 (sizes in configs), D10 (training housekeeping): configs whose sizes would
//! overflow or allocate without bound get an error naming the key, the flag and the limit; a
//! log directory is used by one run at a time, and a resumed run cleans up after a killed one.
use guided_diffusion::diffusion::DiffusionConfig;
use guided_diffusion::models::NetConfig;
use guided_diffusion::train::{ckpt, Logger, RunLock};

fn unet(kwargs: serde_json::Value) -> String {
    let mut k = serde_json::json!({
        "image_size": 32, "in_channels": 3, "model_channels": 32, "out_channels": 3,
        "num_res_blocks": 1, "attention_resolutions": [], "channel_mult": [1, 2]
    });
    for (key, v) in kwargs.as_object().unwrap() {
        k[key] = v.clone();
    }
    let cfg = NetConfig::from_builder("unet.UNetModel", &k);
    match cfg.and_then(|c| c.validate()) {
        Ok(()) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn hostile_config_sizes_name_key_flag_and_limit() {
    assert_eq!(unet(serde_json::json!({})), "");
    // D1: image_size 2^32 wrapped the conv kernel's output size and wrote out of bounds.
    let e = unet(serde_json::json!({ "image_size": 4294967296u64 }));
    assert!(e.contains("image_size") && e.contains("--image_size") && e.contains("4096"), "{e}");
    let e = unet(serde_json::json!({ "image_size": 1048576 }));
    assert!(e.contains("1048576") && e.contains("limit of 4096"), "{e}");
    let e = unet(serde_json::json!({ "num_classes": 1u64 << 40 }));
    assert!(e.contains("num_classes") && e.contains("limit"), "{e}");
    // 70 levels made `1 << (levels - 1)` overflow.
    let e = unet(serde_json::json!({ "channel_mult": vec![1; 70] }));
    assert!(e.contains("channel_mult levels") && e.contains("70"), "{e}");
    let e = unet(serde_json::json!({ "model_channels": 1u64 << 40 }));
    assert!(e.contains("model_channels") && e.contains("--num_channels"), "{e}");
    let e = unet(serde_json::json!({ "channel_mult": [1e300] }));
    assert!(e.contains("channel_mult[0]"), "{e}");
    let e = unet(serde_json::json!({ "dropout": 2.0 }));
    assert!(e.contains("dropout 2"), "{e}");
    // D6: diffusion steps 4e9 from an embedded config or --diffusion_steps.
    let d = DiffusionConfig { steps: 4_000_000_000, ..Default::default() };
    let e = d.build().err().unwrap().to_string();
    assert!(
        e.contains("--diffusion_steps") && e.contains("4000000000") && e.contains("100000"),
        "{e}"
    );
    let d = DiffusionConfig { steps: 0, ..Default::default() };
    assert!(d.build().err().unwrap().to_string().contains("at least 1"));
}

#[test]
fn hostile_log_dir_is_locked_and_names_the_running_process() {
    let tmp = tempfile::tempdir().unwrap();
    let first = RunLock::acquire(tmp.path(), "gdiff train --first").unwrap();
    let e = RunLock::acquire(tmp.path(), "gdiff train --second").unwrap_err().to_string();
    assert!(e.contains("another training run"), "{e}");
    assert!(e.contains(&format!("pid {}", std::process::id())) && e.contains("--first"), "{e}");
    drop(first);
    // Released with its holder (as when a run is killed): the next run takes it.
    let _second = RunLock::acquire(tmp.path(), "gdiff train --second").unwrap();
}

#[test]
fn hostile_resume_removes_stale_temp_files_and_duplicate_progress_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // D10: kill -9 during a checkpoint write leaves `.model000500.safetensors.<pid>.tmp`.
    std::fs::write(d.join(".model000500.safetensors.12345.tmp"), b"partial").unwrap();
    std::fs::write(d.join(".opt000500.safetensors.77.tmp"), b"partial").unwrap();
    std::fs::write(d.join("notes.tmp"), b"not ours").unwrap();
    std::fs::write(d.join("model000400.safetensors"), b"kept").unwrap();
    let removed = ckpt::remove_stale_temp_files(d).unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(d.join("notes.tmp").exists() && d.join("model000400.safetensors").exists());
    // progress.csv: the killed run logged steps 10..50 but checkpointed at 30; the resumed run
    // continues from 30 without repeating rows 40 and 50.
    {
        let mut l = Logger::open(d, 0).unwrap();
        l.progress_line = false;
        for s in [10, 20, 30, 40, 50] {
            l.logkv("step", s as f64);
            l.logkv("loss", 1.0 / s as f64);
            l.dumpkvs().unwrap();
        }
    }
    let mut l = Logger::open(d, 0).unwrap();
    l.progress_line = false;
    l.truncate_progress_after(30).unwrap();
    for s in [40, 50] {
        l.logkv("step", s as f64);
        l.logkv("loss", 2.0);
        l.dumpkvs().unwrap();
    }
    let csv = std::fs::read_to_string(d.join("progress.csv")).unwrap();
    let steps: Vec<&str> = csv.lines().skip(1).map(|r| r.split(',').nth(1).unwrap()).collect();
    assert_eq!(steps, ["10", "20", "30", "40", "50"], "{csv}");
}

#[test]
fn hostile_config_type_errors_name_the_key() {
    // D11: "invalid type: null, expected f64" named neither the key nor the file.
    let e = unet(serde_json::json!({ "dropout": null }));
    assert!(e.contains("key dropout") && e.contains("kwargs of unet.UNetModel"), "{e}");
}
