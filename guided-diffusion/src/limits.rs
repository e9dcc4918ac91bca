//! The limits every size from a file or a flag is checked against before anything is
//! allocated, in one place, so that a hostile or broken input gets a one-line error naming the
//! key or flag, the value and the limit instead of a huge allocation, an overflow or a hang.
//!
//! Each limit is far above what the released ADM models and the reference's scripts use (the
//! largest released model is 512x512 with 1000 diffusion steps and 4000 for the improved
//! schedules); they exist to stop nonsense, not to constrain real work.

use crate::{bail, Result};

/// Image side (`image_size`, `--large_size`, decoded data set images are separate).
pub const MAX_IMAGE_SIZE: usize = 4096;
/// Image channels (`in_channels`, `out_channels`).
pub const MAX_IMAGE_CHANNELS: usize = 1024;
/// Channels of one network level (`model_channels * channel_mult[i]`).
pub const MAX_LEVEL_CHANNELS: usize = 16384;
/// Levels of a UNet (`channel_mult` entries): 2^(levels-1) must divide the image size.
pub const MAX_LEVELS: usize = 12;
/// Residual blocks per level (`num_res_blocks`).
pub const MAX_RES_BLOCKS: usize = 64;
/// Attention heads (`num_heads`, `num_heads_upsample`, `num_head_channels`).
pub const MAX_HEADS: usize = 4096;
/// Classes of a class-conditional model or a classifier (`num_classes`, `out_channels`).
pub const MAX_CLASSES: usize = 1 << 20;
/// Steps of the diffusion process (`diffusion_steps`).
pub const MAX_DIFFUSION_STEPS: usize = 100_000;
/// Images one command produces (`--num_samples`).
pub const MAX_NUM_SAMPLES: usize = 100_000_000;
/// Images per model call or training step (`--batch_size`).
pub const MAX_BATCH_SIZE: usize = 1 << 16;
/// Data-loading threads (`--data_workers`).
pub const MAX_DATA_WORKERS: usize = 256;

/// Decoded images of a data folder: width and height...
pub const MAX_DECODED_SIDE: u32 = 16384;
/// ...their pixel count (64 Mpx, e.g. 8192x8192; a 710-byte JPEG claiming 15111x8446 took
/// 8.5 s and 900 MB to decode and crop, found by the `image` fuzz target)...
pub const MAX_DECODED_PIXELS: u64 = 1 << 26;
/// ...and the memory one decode may allocate (a 8192x8192 RGBA image is 256 MiB).
pub const MAX_DECODE_ALLOC: u64 = 512 << 20;

/// The pickle of a `.pt` checkpoint (`data.pkl`), decompressed.
pub const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// Objects the unpickler may create or copy (a state dict of 10 000 tensors needs ~200 000).
pub const MAX_PICKLE_WORK: u64 = 1 << 24;
/// Nesting depth of pickled containers (a state dict needs 5).
pub const MAX_PICKLE_DEPTH: u32 = 100;
/// Tensor rank in a checkpoint or an npy array.
pub const MAX_RANK: usize = 32;
/// Compressed entries of a `.pt` archive may inflate to this many bytes in all...
pub const ZIP_FREE_INFLATE: u64 = 16 << 20;
/// ...plus this many times their compressed size (`torch.save` stores weights uncompressed,
/// and float weights do not deflate to less than ~80%; a larger ratio is a zip bomb).
pub const ZIP_MAX_RATIO: u64 = 64;

/// A safetensors JSON header (the `safetensors` crate's own limit).
pub const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;
/// An npy header dictionary (numpy writes ~100 bytes; numpy itself refuses over 10 000
/// bytes by default).
pub const MAX_NPY_HEADER: usize = 1 << 20;
/// Feature width for the evaluator's covariances (`D x D` doubles; Inception's pool is 2048).
pub const MAX_FEATURE_DIM: usize = 16384;

/// Fails with `"{what} {value}: over the limit of {limit}{hint}"` when `value > limit`;
/// `what` names the flag or key (`--num_samples`, `image_size`).
pub fn check(what: &str, value: usize, limit: usize) -> Result<()> {
    if value > limit {
        bail!("{what} {value}: over the limit of {limit}");
    }
    Ok(())
}

/// `a * b * ...` or an error naming `what` when it does not fit a `usize`.
pub fn product(what: &str, dims: &[usize]) -> Result<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| {
        crate::Error::msg(format!("{what}: the size {dims:?} overflows the address space"))
    })
}

/// `--num_samples` (the count must be positive too: no samples is no output).
pub fn check_num_samples(flag: &str, n: usize) -> Result<()> {
    if n == 0 {
        bail!("{flag} 0: expected at least one sample");
    }
    check(flag, n, MAX_NUM_SAMPLES)
}

/// `--batch_size`.
pub fn check_batch_size(flag: &str, n: usize) -> Result<()> {
    if n == 0 {
        bail!("{flag} 0: expected at least 1");
    }
    check(flag, n, MAX_BATCH_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_value_and_limit() {
        let e = check("--num_samples", 1 << 40, MAX_NUM_SAMPLES).unwrap_err().to_string();
        assert!(e.contains("--num_samples") && e.contains("1099511627776"), "{e}");
        assert!(e.contains(&MAX_NUM_SAMPLES.to_string()), "{e}");
        assert!(product("x", &[usize::MAX, 2]).is_err());
        assert_eq!(product("x", &[3, 4]).unwrap(), 12);
        assert!(check_num_samples("--num_samples", 0).unwrap_err().to_string().contains("0"));
    }
}
