//! The IDX reader, plain and gzipped (the first input byte chooses).
#![no_main]
use guided_diffusion::data::idx;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        let _ = idx::parse_idx(rest);
    } else {
        let _ = idx::read_idx_from(flate2::read::GzDecoder::new(rest));
    }
});
