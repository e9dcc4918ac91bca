//! npy and npz: the input as a `.npy` file (`read_npy_f32`, as `--init_noise`) and as an
//! `.npz` archive (every member's header, then whole reads and batch streaming, as `eval`
//! and `--base_samples` read them). The readers take paths: the input is written to
//! /dev/shm (memory) where there is one, else the temp dir, one file per process.
#![no_main]
use guided_diffusion::eval::npz;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let npy = dir.join(format!("gdiff-fuzz-{}.npy", std::process::id()));
    std::fs::write(&npy, data).unwrap();
    let _ = npz::read_npy_f32(&npy);
    let path = dir.join(format!("gdiff-fuzz-{}.npz", std::process::id()));
    std::fs::write(&path, data).unwrap();
    if let Ok(f) = npz::NpzFile::open(&path) {
        for key in f.keys().to_vec() {
            let _ = f.header(&key);
            let _ = f.read_u8(&key);
            let _ = f.read_f64(&key);
            let _ = f.for_each_batch(&key, 7, |_, _| Ok(()));
        }
    }
});
