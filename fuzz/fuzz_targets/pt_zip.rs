//! The `.pt` zip archive: any bytes as an archive through `checkpoint::read_bytes`.
#![no_main]
use guided_diffusion::checkpoint;
use guided_diffusion::Device;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bytes = b"PK\x03\x04".to_vec();
    bytes.extend_from_slice(data.strip_prefix(b"PK\x03\x04").unwrap_or(data));
    if let Ok(sd) = checkpoint::read_bytes(&bytes, "fuzz.pt", &Device::Cpu) {
        let _ = checkpoint::infer::infer(&sd.tensors);
    }
});
