//! Typed network configurations with the reference constructors' keyword names and defaults.
//!
//! [`UNetConfig`] mirrors `unet.UNetModel.__init__` (and `SuperResModel`, which takes the same
//! arguments), [`EncoderConfig`] mirrors `unet.EncoderUNetModel.__init__`. Both deserialize from
//! the `kwargs` object of a reference model description, with the constructor's defaults for any
//! missing key. [`NetConfig`] ties a config to the constructor ("builder") that consumes it and is
//! what travels inside our safetensors checkpoints (parsed from a description by
//! `super::describe`). The arguments both constructors take are
//! one [`TrunkConfig`], flattened into each; their defaults are in [`super::defaults`]. The
//! script-flag constructors (`create_model`, `create_classifier`, `sr_create_model`) live in
//! [`super::flags`].
use serde::{Deserialize, Serialize};

use super::defaults::kwargs;
use crate::{bail, Result};

/// The constructor arguments `UNetModel` and `EncoderUNetModel` share: everything but the
/// UNet's `num_classes` and the encoder's `pool`. Their trunks (time embedding, input and
/// middle blocks) are built from it. `attention_resolutions` are downsample factors (`ds`), as
/// the constructors take them; `channel_mult` may hold fractions (the 512x512 model uses 0.5),
/// channels are `int(mult * model_channels)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrunkConfig {
    pub image_size: usize,
    pub in_channels: usize,
    pub model_channels: usize,
    pub out_channels: usize,
    pub num_res_blocks: usize,
    pub attention_resolutions: Vec<usize>,
    #[serde(default = "kwargs::dropout")]
    pub dropout: f64,
    #[serde(default = "kwargs::channel_mult")]
    pub channel_mult: Vec<f64>,
    #[serde(default = "kwargs::conv_resample")]
    pub conv_resample: bool,
    #[serde(default = "kwargs::dims")]
    pub dims: usize,
    #[serde(default)]
    pub use_checkpoint: bool,
    #[serde(default)]
    pub use_fp16: bool,
    #[serde(default = "kwargs::num_heads")]
    pub num_heads: usize,
    #[serde(default = "kwargs::num_head_channels")]
    pub num_head_channels: i64,
    #[serde(default = "kwargs::num_heads_upsample")]
    pub num_heads_upsample: i64,
    #[serde(default)]
    pub use_scale_shift_norm: bool,
    #[serde(default)]
    pub resblock_updown: bool,
    #[serde(default)]
    pub use_new_attention_order: bool,
}

/// Arguments of `UNetModel` / `SuperResModel`: the shared trunk arguments (flattened: the
/// kwargs object is one flat map, as the reference's) and the class count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    #[serde(flatten)]
    pub trunk: TrunkConfig,
    #[serde(default)]
    pub num_classes: Option<usize>,
}

/// The classifier's output head (`pool` argument of `EncoderUNetModel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    Adaptive,
    Attention,
    Spatial,
    SpatialV2,
}

impl std::str::FromStr for Pool {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "adaptive" => Pool::Adaptive,
            "attention" => Pool::Attention,
            "spatial" => Pool::Spatial,
            "spatial_v2" => Pool::SpatialV2,
            _ => bail!(
                "unknown classifier pool {s:?}: expected adaptive, attention, spatial or spatial_v2"
            ),
        })
    }
}

/// Arguments of `EncoderUNetModel` (the noise-aware classifier): the shared trunk arguments
/// (flattened) and the output head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    #[serde(flatten)]
    pub trunk: TrunkConfig,
    #[serde(default = "default_pool")]
    pub pool: Pool,
}

fn default_pool() -> Pool {
    kwargs::POOL.parse().expect("the default pool is a known one")
}

impl TrunkConfig {
    /// `int(mult * model_channels)` for every level.
    pub fn level_channels(&self) -> Vec<usize> {
        self.channel_mult.iter().map(|m| (m * self.model_channels as f64) as usize).collect()
    }

    /// Checks the structural arguments (group-norm channel multiples, sizes, heads).
    pub fn validate(&self) -> Result<()> {
        let (image_size, dims) = (self.image_size, self.dims);
        use crate::limits::{self, check};
        // Sizes first, with the key and the flag named: they size every allocation below.
        check("image_size (--image_size)", image_size, limits::MAX_IMAGE_SIZE)?;
        if image_size == 0 {
            bail!("image_size 0: expected a positive image side (--image_size)");
        }
        check("in_channels (--in_channels)", self.in_channels, limits::MAX_IMAGE_CHANNELS)?;
        if self.in_channels == 0 {
            bail!("in_channels 0: expected at least 1 (--in_channels)");
        }
        check("model_channels (--num_channels)", self.model_channels, limits::MAX_LEVEL_CHANNELS)?;
        check("num_res_blocks (--num_res_blocks)", self.num_res_blocks, limits::MAX_RES_BLOCKS)?;
        check("channel_mult levels (--channel_mult)", self.channel_mult.len(), limits::MAX_LEVELS)?;
        check("num_heads (--num_heads)", self.num_heads, limits::MAX_HEADS)?;
        if self.num_head_channels > limits::MAX_LEVEL_CHANNELS as i64 {
            bail!(
                "num_head_channels (--num_head_channels) {}: over the limit of {}",
                self.num_head_channels,
                limits::MAX_LEVEL_CHANNELS
            );
        }
        for (i, m) in self.channel_mult.iter().enumerate() {
            let ch = m * self.model_channels as f64;
            if !ch.is_finite() || ch < 0.0 || ch > limits::MAX_LEVEL_CHANNELS as f64 {
                bail!(
                    "channel_mult[{i}]={m} with model_channels={} gives {ch} channels: over the \
                     limit of {} (--channel_mult, --num_channels)",
                    self.model_channels,
                    limits::MAX_LEVEL_CHANNELS
                );
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout {}: expected a probability in [0, 1) (--dropout)", self.dropout);
        }
        if dims != 2 {
            bail!("dims={dims}: only 2-D images are supported (the released ADM models are 2-D)");
        }
        if self.channel_mult.is_empty() {
            bail!("channel_mult is empty: expected at least one level, e.g. \"1,2,3,4\"");
        }
        if self.model_channels == 0 {
            bail!("model_channels (--num_channels) must be positive");
        }
        for (i, ch) in self.level_channels().into_iter().enumerate() {
            if ch == 0 || ch % 32 != 0 {
                bail!(
                    "channel_mult[{i}]={} with model_channels={} gives {ch} channels: GroupNorm(32) \
                     needs a positive multiple of 32",
                    self.channel_mult[i],
                    self.model_channels
                );
            }
        }
        let down = 1usize << (self.channel_mult.len() - 1);
        if image_size % down != 0 {
            bail!(
                "image_size={image_size} is not divisible by {down} (2^(levels-1) for \
                 channel_mult of {} levels)",
                self.channel_mult.len()
            );
        }
        if self.num_head_channels == 0 || self.num_head_channels < -1 {
            bail!("num_head_channels={}: expected -1 or a positive number", self.num_head_channels);
        }
        if self.num_head_channels == -1 && self.num_heads == 0 {
            bail!("num_heads must be positive when num_head_channels is -1");
        }
        Ok(())
    }
}

impl UNetConfig {
    /// `num_heads_upsample`, with the reference's `-1 -> num_heads`.
    pub fn heads_upsample(&self) -> usize {
        if self.trunk.num_heads_upsample == -1 {
            self.trunk.num_heads
        } else {
            self.trunk.num_heads_upsample as usize
        }
    }

    /// Whether the model predicts a variance too (`learn_sigma`: twice the input channels).
    pub fn learns_sigma(&self) -> bool {
        self.trunk.out_channels == 2 * self.trunk.in_channels
    }
}

/// A network configuration together with the reference constructor it feeds.
#[derive(Debug, Clone, PartialEq)]
pub enum NetConfig {
    /// `unet.UNetModel`
    UNet(UNetConfig),
    /// `unet.SuperResModel` (same arguments; the input is doubled internally).
    SuperRes(UNetConfig),
    /// `unet.EncoderUNetModel`
    Classifier(EncoderConfig),
}

impl NetConfig {
    /// The reference constructor's qualified name.
    pub fn builder(&self) -> &'static str {
        match self {
            NetConfig::UNet(_) => "unet.UNetModel",
            NetConfig::SuperRes(_) => "unet.SuperResModel",
            NetConfig::Classifier(_) => "unet.EncoderUNetModel",
        }
    }

    pub fn image_size(&self) -> usize {
        match self {
            NetConfig::UNet(c) | NetConfig::SuperRes(c) => c.trunk.image_size,
            NetConfig::Classifier(c) => c.trunk.image_size,
        }
    }

    /// The constructor's keyword arguments as a JSON object.
    pub fn kwargs(&self) -> serde_json::Value {
        match self {
            NetConfig::UNet(c) | NetConfig::SuperRes(c) => serde_json::to_value(c),
            NetConfig::Classifier(c) => serde_json::to_value(c),
        }
        .expect("configs serialize")
    }

    /// `{"builder": ..., "kwargs": {...}}`, the form embedded in our checkpoints.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "builder": self.builder(), "kwargs": self.kwargs() })
    }

    /// Validates the structural arguments (group-norm channel multiples, sizes, heads).
    pub fn validate(&self) -> Result<()> {
        use crate::limits::{self, check};
        match self {
            NetConfig::UNet(c) | NetConfig::SuperRes(c) => {
                c.trunk.validate()?;
                check("out_channels", c.trunk.out_channels, limits::MAX_IMAGE_CHANNELS)?;
                if c.trunk.out_channels == 0 {
                    bail!("out_channels 0: expected at least 1");
                }
                if let Some(n) = c.num_classes {
                    check("num_classes (--num_classes)", n, limits::MAX_CLASSES)?;
                }
                if c.trunk.num_heads_upsample > limits::MAX_HEADS as i64
                    || c.trunk.num_heads_upsample < -1
                {
                    bail!(
                        "num_heads_upsample (--num_heads_upsample) {}: expected -1 or 0..={}",
                        c.trunk.num_heads_upsample,
                        limits::MAX_HEADS
                    );
                }
                Ok(())
            }
            NetConfig::Classifier(c) => {
                c.trunk.validate()?;
                check(
                    "out_channels (classes of the classifier)",
                    c.trunk.out_channels,
                    limits::MAX_CLASSES,
                )?;
                if c.pool == Pool::Attention && c.trunk.num_head_channels == -1 {
                    bail!(
                        "pool=attention needs num_head_channels != -1 (the reference asserts it)"
                    );
                }
                Ok(())
            }
        }
    }
}
