//! Image decoding as the data loader does it: decode (PNG/JPEG/GIF, under the decoding
//! limits) to 1, 3 or 4 channels, then the reference's center crop to 32x32.
#![no_main]
use guided_diffusion::data::decode;
use guided_diffusion::data::resize::center_crop_arr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let channels = [1, 3, 4, 2][(mode & 3) as usize];
    if let Ok(img) = decode::decode(rest, channels) {
        let _ = center_crop_arr(&img, 32);
    }
});
