//! The pickle of a `.pt`: the input is `data.pkl`, stored in a valid archive beside two small
//! storages (`data/0`: 64 bytes, `data/1`: 4096 bytes), then read as a checkpoint, so the
//! fuzzer reaches the unpickler and the tensor rebuilding without having to forge a zip.
#![no_main]
use std::io::Write;

use guided_diffusion::checkpoint;
use guided_diffusion::Device;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = checkpoint::pickle::unpickle(data);
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts: zip::write::FileOptions<()> =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", opts).unwrap();
        zip.write_all(data).unwrap();
        zip.start_file("archive/data/0", opts).unwrap();
        zip.write_all(&[0x3f; 64]).unwrap();
        zip.start_file("archive/data/1", opts).unwrap();
        zip.write_all(&[0x41; 4096]).unwrap();
        zip.finish().unwrap();
    }
    if let Ok(sd) = checkpoint::read_bytes(&buf.into_inner(), "fuzz.pt", &Device::Cpu) {
        let _ = checkpoint::infer::infer(&sd.tensors);
    }
});
