//! The reference's script flags and the `script_util` functions that turn them into networks.
//!
//! `create_model`, `create_classifier` and `sr_create_model` pick `channel_mult` from the image
//! size, turn attention *resolutions* ("32,16,8") into downsample factors (`image_size // res`)
//! and double the output channels for `learn_sigma`. The flag structs deserialize with the
//! defaults of those functions' signatures (what a JSON `kwargs` object omits); the command line
//! starts from [`ModelFlags::script_defaults`] (`model_and_diffusion_defaults`) instead.
//! Extensions over the reference: `num_classes` (the reference hard-codes 1000) and
//! `in_channels` (the reference hard-codes 3), both defaulting to the reference's value.
use serde::{Deserialize, Deserializer, Serialize};

use super::config::{EncoderConfig, UNetConfig};
use crate::{bail, Result};

/// The reference's `NUM_CLASSES`.
pub const NUM_CLASSES: usize = 1000;

fn default_num_classes() -> usize {
    NUM_CLASSES
}
fn default_in_channels() -> usize {
    3
}
fn default_attention_16() -> String {
    "16".into()
}
fn default_one() -> usize {
    1
}
fn default_minus_one() -> i64 {
    -1
}

/// Accepts `"32,16,8"`, `[32, 16, 8]` or a single number for a comma-list flag.
fn str_or_list<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    match v {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Array(a) => Ok(a
            .iter()
            .map(|x| match x {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")),
        other => Err(serde::de::Error::custom(format!(
            "expected a comma-separated string or a list, got {other}"
        ))),
    }
}

/// Parses a comma list of numbers such as `"1,2,3,4"`; `flag` names it in errors.
pub fn parse_list<T: std::str::FromStr>(s: &str, flag: &str) -> Result<Vec<T>> {
    s.split(',')
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<T>()
                .map_err(|_| crate::Error::msg(format!("--{flag} {s:?}: {p:?} is not a number")))
        })
        .collect()
}

/// Parses the reference's booleans: yes/true/t/y/1 and no/false/f/n/0, any case.
pub fn parse_bool(s: &str, flag: &str) -> Result<bool> {
    match s.to_ascii_lowercase().as_str() {
        "yes" | "true" | "t" | "y" | "1" => Ok(true),
        "no" | "false" | "f" | "n" | "0" => Ok(false),
        _ => bail!("--{flag} {s:?}: boolean value expected (True/False, yes/no, 1/0)"),
    }
}

/// The default `channel_mult` of `create_model` / `create_classifier` for an image size.
pub fn default_channel_mult(image_size: usize) -> Result<Vec<f64>> {
    Ok(match image_size {
        512 => vec![0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
        256 => vec![1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
        128 => vec![1.0, 1.0, 2.0, 3.0, 4.0],
        64 => vec![1.0, 2.0, 3.0, 4.0],
        // Extension: small images (Fashion-MNIST, CIFAR-sized) as in improved-diffusion.
        32 => vec![1.0, 2.0, 2.0, 2.0],
        _ => bail!(
            "unsupported image size {image_size} without --channel_mult: the reference knows \
             512, 256, 128 and 64 (and we add 32); give --channel_mult, e.g. \"1,2,2\""
        ),
    })
}

/// Attention resolutions ("32,16,8") to downsample factors (`image_size // res`).
pub fn attention_ds(image_size: usize, resolutions: &str, flag: &str) -> Result<Vec<usize>> {
    let res: Vec<usize> = parse_list(resolutions, flag)?;
    res.iter()
        .map(|&r| {
            if r == 0 {
                bail!("--{flag} {resolutions:?}: resolution 0 is not allowed")
            }
            Ok(image_size / r)
        })
        .collect()
}

/// Arguments of `script_util.create_model` (plus `num_classes`, `in_channels`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFlags {
    pub image_size: usize,
    pub num_channels: usize,
    pub num_res_blocks: usize,
    #[serde(default, deserialize_with = "str_or_list")]
    pub channel_mult: String,
    #[serde(default)]
    pub learn_sigma: bool,
    #[serde(default)]
    pub class_cond: bool,
    #[serde(default)]
    pub use_checkpoint: bool,
    #[serde(default = "default_attention_16", deserialize_with = "str_or_list")]
    pub attention_resolutions: String,
    #[serde(default = "default_one")]
    pub num_heads: usize,
    #[serde(default = "default_minus_one")]
    pub num_head_channels: i64,
    #[serde(default = "default_minus_one")]
    pub num_heads_upsample: i64,
    #[serde(default)]
    pub use_scale_shift_norm: bool,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub resblock_updown: bool,
    #[serde(default)]
    pub use_fp16: bool,
    #[serde(default)]
    pub use_new_attention_order: bool,
    #[serde(default = "default_num_classes")]
    pub num_classes: usize,
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
}

impl ModelFlags {
    /// `model_and_diffusion_defaults()` of the reference (the scripts' flag defaults).
    pub fn script_defaults() -> Self {
        ModelFlags {
            image_size: 64,
            num_channels: 128,
            num_res_blocks: 2,
            channel_mult: String::new(),
            learn_sigma: false,
            class_cond: false,
            use_checkpoint: false,
            attention_resolutions: "16,8".into(),
            num_heads: 4,
            num_head_channels: -1,
            num_heads_upsample: -1,
            use_scale_shift_norm: true,
            dropout: 0.0,
            resblock_updown: false,
            use_fp16: false,
            use_new_attention_order: false,
            num_classes: NUM_CLASSES,
            in_channels: 3,
        }
    }

    fn channel_mult_for(&self, image_size: usize) -> Result<Vec<f64>> {
        if self.channel_mult.is_empty() {
            default_channel_mult(image_size)
        } else {
            parse_list(&self.channel_mult, "channel_mult")
        }
    }

    /// `create_model(...)`.
    pub fn to_config(&self) -> Result<UNetConfig> {
        Ok(UNetConfig {
            image_size: self.image_size,
            in_channels: self.in_channels,
            model_channels: self.num_channels,
            out_channels: if self.learn_sigma { 2 * self.in_channels } else { self.in_channels },
            num_res_blocks: self.num_res_blocks,
            attention_resolutions: attention_ds(
                self.image_size,
                &self.attention_resolutions,
                "attention_resolutions",
            )?,
            dropout: self.dropout,
            channel_mult: self.channel_mult_for(self.image_size)?,
            conv_resample: true,
            dims: 2,
            num_classes: self.class_cond.then_some(self.num_classes),
            use_checkpoint: self.use_checkpoint,
            use_fp16: self.use_fp16,
            num_heads: self.num_heads,
            num_head_channels: self.num_head_channels,
            num_heads_upsample: self.num_heads_upsample,
            use_scale_shift_norm: self.use_scale_shift_norm,
            resblock_updown: self.resblock_updown,
            use_new_attention_order: self.use_new_attention_order,
        })
    }
}

fn default_clf_width() -> usize {
    128
}
fn default_clf_depth() -> usize {
    2
}
fn default_clf_attention() -> String {
    "32,16,8".into()
}
fn default_true() -> bool {
    true
}
fn default_attention_pool() -> String {
    "attention".into()
}

/// Arguments of `script_util.create_classifier` (plus `num_classes`, `in_channels`, and
/// `channel_mult`, which the reference derives from the image size only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierFlags {
    pub image_size: usize,
    #[serde(default)]
    pub classifier_use_fp16: bool,
    #[serde(default = "default_clf_width")]
    pub classifier_width: usize,
    #[serde(default = "default_clf_depth")]
    pub classifier_depth: usize,
    #[serde(default = "default_clf_attention", deserialize_with = "str_or_list")]
    pub classifier_attention_resolutions: String,
    #[serde(default = "default_true")]
    pub classifier_use_scale_shift_norm: bool,
    #[serde(default = "default_true")]
    pub classifier_resblock_updown: bool,
    #[serde(default = "default_attention_pool")]
    pub classifier_pool: String,
    #[serde(default = "default_num_classes")]
    pub num_classes: usize,
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    #[serde(default, deserialize_with = "str_or_list")]
    pub channel_mult: String,
}

impl ClassifierFlags {
    /// `classifier_defaults()` of the reference.
    pub fn script_defaults() -> Self {
        ClassifierFlags {
            image_size: 64,
            classifier_use_fp16: false,
            classifier_width: 128,
            classifier_depth: 2,
            classifier_attention_resolutions: "32,16,8".into(),
            classifier_use_scale_shift_norm: true,
            classifier_resblock_updown: true,
            classifier_pool: "attention".into(),
            num_classes: NUM_CLASSES,
            in_channels: 3,
            channel_mult: String::new(),
        }
    }

    /// `create_classifier(...)`: `num_head_channels=64` as the reference hard-codes.
    pub fn to_config(&self) -> Result<EncoderConfig> {
        let channel_mult = if self.channel_mult.is_empty() {
            default_channel_mult(self.image_size)?
        } else {
            parse_list(&self.channel_mult, "channel_mult")?
        };
        Ok(EncoderConfig {
            image_size: self.image_size,
            in_channels: self.in_channels,
            model_channels: self.classifier_width,
            out_channels: self.num_classes,
            num_res_blocks: self.classifier_depth,
            attention_resolutions: attention_ds(
                self.image_size,
                &self.classifier_attention_resolutions,
                "classifier_attention_resolutions",
            )?,
            dropout: 0.0,
            channel_mult,
            conv_resample: true,
            dims: 2,
            use_checkpoint: false,
            use_fp16: self.classifier_use_fp16,
            num_heads: 1,
            num_head_channels: 64,
            num_heads_upsample: -1,
            use_scale_shift_norm: self.classifier_use_scale_shift_norm,
            resblock_updown: self.classifier_resblock_updown,
            use_new_attention_order: false,
            pool: self.classifier_pool.parse()?,
        })
    }
}

fn default_large() -> usize {
    256
}
fn default_small() -> usize {
    64
}

/// Arguments of `script_util.sr_create_model` (plus `num_classes`, `in_channels`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperResFlags {
    #[serde(default = "default_large")]
    pub large_size: usize,
    #[serde(default = "default_small")]
    pub small_size: usize,
    pub num_channels: usize,
    pub num_res_blocks: usize,
    #[serde(default)]
    pub learn_sigma: bool,
    #[serde(default)]
    pub class_cond: bool,
    #[serde(default)]
    pub use_checkpoint: bool,
    #[serde(default = "default_attention_16", deserialize_with = "str_or_list")]
    pub attention_resolutions: String,
    #[serde(default = "default_one")]
    pub num_heads: usize,
    #[serde(default = "default_minus_one")]
    pub num_head_channels: i64,
    #[serde(default = "default_minus_one")]
    pub num_heads_upsample: i64,
    #[serde(default)]
    pub use_scale_shift_norm: bool,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub resblock_updown: bool,
    #[serde(default)]
    pub use_fp16: bool,
    #[serde(default = "default_num_classes")]
    pub num_classes: usize,
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    #[serde(default, deserialize_with = "str_or_list")]
    pub channel_mult: String,
}

impl SuperResFlags {
    /// `sr_create_model(...)`: channel_mult from `large_size` (512 and 256 share one).
    pub fn to_config(&self) -> Result<UNetConfig> {
        let channel_mult = if !self.channel_mult.is_empty() {
            parse_list(&self.channel_mult, "channel_mult")?
        } else {
            match self.large_size {
                512 | 256 => vec![1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
                64 => vec![1.0, 2.0, 3.0, 4.0],
                s => bail!(
                    "unsupported large size {s}: the reference knows 512, 256 and 64; give \
                     --channel_mult"
                ),
            }
        };
        Ok(UNetConfig {
            image_size: self.large_size,
            in_channels: self.in_channels,
            model_channels: self.num_channels,
            out_channels: if self.learn_sigma { 2 * self.in_channels } else { self.in_channels },
            num_res_blocks: self.num_res_blocks,
            attention_resolutions: attention_ds(
                self.large_size,
                &self.attention_resolutions,
                "attention_resolutions",
            )?,
            dropout: self.dropout,
            channel_mult,
            conv_resample: true,
            dims: 2,
            num_classes: self.class_cond.then_some(self.num_classes),
            use_checkpoint: self.use_checkpoint,
            use_fp16: self.use_fp16,
            num_heads: self.num_heads,
            num_head_channels: self.num_head_channels,
            num_heads_upsample: self.num_heads_upsample,
            use_scale_shift_norm: self.use_scale_shift_norm,
            resblock_updown: self.resblock_updown,
            use_new_attention_order: false,
        })
    }
}
