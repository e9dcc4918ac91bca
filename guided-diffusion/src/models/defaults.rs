//! The reference's default values, all in one place (and depending on nothing).
//!
//! The reference has three layers of them, and a network's settings take theirs from exactly
//! one:
//! - the network constructors' keyword defaults (`UNetModel.__init__`,
//!   `EncoderUNetModel.__init__`): what a `{"builder": "unet.UNetModel", "kwargs"}` description
//!   may omit ([`kwargs`], the serde defaults of `super::config`);
//! - the script builders' signature defaults (`script_util.create_model`, `create_classifier`,
//!   `sr_create_model`): what a `{"builder": "script_util.create_model", "kwargs"}` description
//!   may omit ([`create_model`], [`create_classifier`], [`sr_create_model`]);
//! - the scripts' flag defaults (`model_and_diffusion_defaults()`, `classifier_defaults()`):
//!   what the command line starts from ([`script`], [`script_classifier`]).
//!
//! `super::flags` turns the last two into flag sets. Plus the values the reference hard-codes
//! and we make settable ([`NUM_CLASSES`], [`IN_CHANNELS`]) and its size-dependent choices
//! ([`channel_mult`], [`sr_channel_mult`]).

/// The reference's `NUM_CLASSES`.
pub const NUM_CLASSES: usize = 1000;
/// The reference's image channels (RGB).
pub const IN_CHANNELS: usize = 3;

/// Keyword defaults of `UNetModel.__init__` / `EncoderUNetModel.__init__`.
pub mod kwargs {
    pub fn dropout() -> f64 {
        0.0
    }
    pub fn channel_mult() -> Vec<f64> {
        vec![1.0, 2.0, 4.0, 8.0]
    }
    pub fn conv_resample() -> bool {
        true
    }
    pub fn dims() -> usize {
        2
    }
    pub fn num_heads() -> usize {
        1
    }
    pub fn num_head_channels() -> i64 {
        -1
    }
    pub fn num_heads_upsample() -> i64 {
        -1
    }
    /// `EncoderUNetModel`'s `pool`.
    pub const POOL: &str = "adaptive";
}

/// `script_util.create_model`'s signature defaults (`image_size`, `num_channels` and
/// `num_res_blocks` have none).
pub mod create_model {
    pub const CHANNEL_MULT: &str = "";
    pub const LEARN_SIGMA: bool = false;
    pub const CLASS_COND: bool = false;
    pub const USE_CHECKPOINT: bool = false;
    pub const ATTENTION_RESOLUTIONS: &str = "16";
    pub const NUM_HEADS: usize = 1;
    pub const NUM_HEAD_CHANNELS: i64 = -1;
    pub const NUM_HEADS_UPSAMPLE: i64 = -1;
    pub const USE_SCALE_SHIFT_NORM: bool = false;
    pub const DROPOUT: f64 = 0.0;
    pub const RESBLOCK_UPDOWN: bool = false;
    pub const USE_FP16: bool = false;
    pub const USE_NEW_ATTENTION_ORDER: bool = false;
}

/// `script_util.sr_create_model`'s signature defaults: [`create_model`]'s (it takes no
/// `use_new_attention_order`: always the legacy order), plus the sizes.
pub mod sr_create_model {
    pub const LARGE_SIZE: usize = 256;
    pub const SMALL_SIZE: usize = 64;
}

/// `model_and_diffusion_defaults()`: the model flags of the reference scripts.
pub mod script {
    pub const IMAGE_SIZE: usize = 64;
    pub const NUM_CHANNELS: usize = 128;
    pub const NUM_RES_BLOCKS: usize = 2;
    pub const CHANNEL_MULT: &str = "";
    pub const LEARN_SIGMA: bool = false;
    pub const CLASS_COND: bool = false;
    pub const USE_CHECKPOINT: bool = false;
    pub const ATTENTION_RESOLUTIONS: &str = "16,8";
    pub const NUM_HEADS: usize = 4;
    pub const NUM_HEAD_CHANNELS: i64 = -1;
    pub const NUM_HEADS_UPSAMPLE: i64 = -1;
    pub const USE_SCALE_SHIFT_NORM: bool = true;
    pub const DROPOUT: f64 = 0.0;
    pub const RESBLOCK_UPDOWN: bool = false;
    pub const USE_FP16: bool = false;
    pub const USE_NEW_ATTENTION_ORDER: bool = false;
}

/// `script_util.create_classifier`'s signature defaults (`image_size` has none), and what it
/// hard-codes.
pub mod create_classifier {
    pub const USE_FP16: bool = false;
    pub const WIDTH: usize = 128;
    pub const DEPTH: usize = 2;
    pub const ATTENTION_RESOLUTIONS: &str = "32,16,8";
    pub const USE_SCALE_SHIFT_NORM: bool = true;
    pub const RESBLOCK_UPDOWN: bool = true;
    pub const POOL: &str = "attention";
    /// Our extension: `""` picks by image size, as `create_model`.
    pub const CHANNEL_MULT: &str = "";
    /// The attention head width it hard-codes (`num_head_channels=64`).
    pub const HEAD_CHANNELS: i64 = 64;
}

/// `classifier_defaults()`: the classifier flags of the reference scripts
/// ([`create_classifier`]'s, with an image size).
pub mod script_classifier {
    pub const IMAGE_SIZE: usize = 64;
}

/// The `channel_mult` that `create_model` / `create_classifier` pick for an image size.
pub fn channel_mult(image_size: usize) -> crate::Result<Vec<f64>> {
    Ok(match image_size {
        512 => vec![0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
        256 => vec![1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
        128 => vec![1.0, 1.0, 2.0, 3.0, 4.0],
        64 => vec![1.0, 2.0, 3.0, 4.0],
        // Extension: small images (Fashion-MNIST, CIFAR-sized) as in improved-diffusion.
        32 => vec![1.0, 2.0, 2.0, 2.0],
        _ => crate::bail!(
            "unsupported image size {image_size} without --channel_mult: the reference knows \
             512, 256, 128 and 64 (and we add 32); give --channel_mult, e.g. \"1,2,2\""
        ),
    })
}

/// The `channel_mult` that `sr_create_model` picks for a large size.
pub fn sr_channel_mult(large_size: usize) -> crate::Result<Vec<f64>> {
    Ok(match large_size {
        512 | 256 => vec![1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
        64 => vec![1.0, 2.0, 3.0, 4.0],
        s => crate::bail!(
            "unsupported large size {s}: the reference knows 512, 256 and 64; give --channel_mult"
        ),
    })
}
