//! The safetensors header and metadata: any bytes through `checkpoint::read_bytes`, then the
//! embedded configs as `gdiff` reads them (`load::CheckpointInfo`, which validates them).
#![no_main]
use guided_diffusion::checkpoint;
use guided_diffusion::load::CheckpointInfo;
use guided_diffusion::Device;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.starts_with(b"PK") {
        return; // the .pt path has its own targets
    }
    if let Ok(sd) = checkpoint::read_bytes(data, "fuzz.safetensors", &Device::Cpu) {
        let _ = sd.check_finite("fuzz");
        let _ = CheckpointInfo::from_metadata("fuzz.safetensors", sd.metadata.clone());
        let _ = checkpoint::infer::infer(&sd.tensors);
    }
});
