//! The reference's script flags, and the `script_util` functions that turn them into networks.
//!
//! [`ModelFlags`] and [`ClassifierFlags`] are the one flag form of a network's settings: every
//! field is optional ("not given"), so the sources of a command merge with [`ModelFlags::or`]
//! (explicit flags, presets spliced before them, a JSON `kwargs` object, the defaults of
//! [`super::defaults`]), and flags given on top of a complete config (a `--model_config` file,
//! the config embedded in a checkpoint) change it with [`ModelFlags::apply_to`], which gives each
//! flag `create_model`'s meaning. The complete configs come out of [`ModelFlags::create_model`],
//! [`ModelFlags::sr_create_model`] and [`ClassifierFlags::create_classifier`], which are
//! `apply_to` on an empty config: one mapping from flags to config.
//!
//! `create_model`, `create_classifier` and `sr_create_model` pick `channel_mult` from the image
//! size, turn attention *resolutions* ("32,16,8") into downsample factors (`image_size // res`)
//! and double the output channels for `learn_sigma`. Extensions over the reference:
//! `num_classes` (the reference hard-codes 1000) and `in_channels` (3), both defaulting to the
//! reference's value; `channel_mult` for the classifier. With the `clap` feature the structs
//! are `clap::Args` with the reference's flag names (`gdiff` flattens them into its commands).
use serde::{Deserialize, Deserializer, Serialize};

use super::config::{EncoderConfig, TrunkConfig, UNetConfig};
use super::defaults;
use crate::{bail, Result};

/// Accepts `"32,16,8"`, `[32, 16, 8]` or a single number for a comma-list flag.
fn str_or_list<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s)),
        serde_json::Value::Number(n) => Ok(Some(n.to_string())),
        serde_json::Value::Array(a) => Ok(Some(
            a.iter()
                .map(|x| match x {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
        )),
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

/// [`parse_bool`] as a command-line value parser (the reference's `str2bool`).
pub fn bool_value(s: &str) -> std::result::Result<bool, String> {
    parse_bool(s, "flag")
        .map_err(|_| format!("{s:?} is not a boolean: use True/False, yes/no or 1/0"))
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

/// `channel_mult` as a flag gives it: `""` is the builder's default for the size.
fn channel_mult(
    s: &str,
    size: usize,
    default_for: fn(usize) -> Result<Vec<f64>>,
) -> Result<Vec<f64>> {
    if s.is_empty() {
        default_for(size)
    } else {
        parse_list(s, "channel_mult")
    }
}

/// A flag a complete flag set must have.
fn need<T: Clone>(v: &Option<T>, flag: &str, builder: &str) -> Result<T> {
    match v {
        Some(v) => Ok(v.clone()),
        None => bail!("{builder} needs {flag}"),
    }
}

/// `flags.or(fallback)` for the listed fields: each field of `flags`, else `fallback`'s.
macro_rules! or_fields {
    ($flags:expr, $fallback:expr, $($f:ident),* $(,)?) => {
        Self { $($f: $flags.$f.clone().or_else(|| $fallback.$f.clone()),)* }
    };
}

/// The flags of `script_util.create_model` / `sr_create_model` (`model_and_diffusion_defaults`
/// and the super-resolution sizes), plus `num_classes` and `in_channels`. `None`: not given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[cfg_attr(feature = "clap", command(rename_all = "snake_case"))]
pub struct ModelFlags {
    /// Image side in pixels [default: 64]
    #[cfg_attr(feature = "clap", arg(long))]
    pub image_size: Option<usize>,
    /// Base channel count [default: 128]
    #[cfg_attr(feature = "clap", arg(long))]
    pub num_channels: Option<usize>,
    /// Residual blocks per resolution [default: 2]
    #[cfg_attr(feature = "clap", arg(long))]
    pub num_res_blocks: Option<usize>,
    /// Attention heads [default: 4]
    #[cfg_attr(feature = "clap", arg(long))]
    pub num_heads: Option<usize>,
    /// Heads in the decoder, -1 = num_heads [default: -1]
    #[cfg_attr(feature = "clap", arg(long, allow_negative_numbers = true))]
    pub num_heads_upsample: Option<i64>,
    /// Channels per head, -1 = use num_heads [default: -1]
    #[cfg_attr(feature = "clap", arg(long, allow_negative_numbers = true))]
    pub num_head_channels: Option<i64>,
    /// Resolutions with attention, e.g. "32,16,8" [default: 16,8]
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(deserialize_with = "str_or_list", skip_serializing_if = "Option::is_none")]
    pub attention_resolutions: Option<String>,
    /// Channel multipliers per level, e.g. "1,2,3,4"; "" = by image size [default: ""]
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(deserialize_with = "str_or_list", skip_serializing_if = "Option::is_none")]
    pub channel_mult: Option<String>,
    /// Dropout probability [default: 0.0]
    #[cfg_attr(feature = "clap", arg(long))]
    pub dropout: Option<f64>,
    /// Class-conditional model [default: False]
    #[cfg_attr(feature = "clap", arg(long, value_parser = bool_value))]
    pub class_cond: Option<bool>,
    /// Gradient checkpointing (training; no effect on outputs) [default: False]
    #[cfg_attr(feature = "clap", arg(long, value_parser = bool_value))]
    pub use_checkpoint: Option<bool>,
    /// AdaGN scale-shift conditioning [default: True]
    #[cfg_attr(feature = "clap", arg(long, value_parser = bool_value))]
    pub use_scale_shift_norm: Option<bool>,
    /// BigGAN-style residual up/down-sampling [default: False]
    #[cfg_attr(feature = "clap", arg(long, value_parser = bool_value))]
    pub resblock_updown: Option<bool>,
    /// Accepted for compatibility; inference runs in float32 [default: False]
    #[cfg_attr(feature = "clap", arg(long, value_parser = bool_value))]
    pub use_fp16: Option<bool>,
    /// QKV split before heads (QKVAttention) instead of the legacy order [default: False]
    #[cfg_attr(feature = "clap", arg(long, value_parser = bool_value))]
    pub use_new_attention_order: Option<bool>,
    /// Predict the variance too (2x output channels) [default: False]
    #[cfg_attr(feature = "clap", arg(long, value_parser = bool_value))]
    pub learn_sigma: Option<bool>,
    /// Number of classes of a class-conditional model (the reference hard-codes 1000)
    #[cfg_attr(feature = "clap", arg(long))]
    pub num_classes: Option<usize>,
    /// Image channels (the reference hard-codes 3)
    #[cfg_attr(feature = "clap", arg(long))]
    pub in_channels: Option<usize>,
    /// `sr_create_model`'s output side (the super-resolution commands' own flag).
    #[cfg_attr(feature = "clap", arg(skip))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub large_size: Option<usize>,
    /// `sr_create_model`'s input side (the super-resolution commands' own flag).
    #[cfg_attr(feature = "clap", arg(skip))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub small_size: Option<usize>,
}

impl ModelFlags {
    /// `model_and_diffusion_defaults()` of the reference (the scripts' flag defaults), with our
    /// `num_classes` and `in_channels`.
    pub fn script_defaults() -> Self {
        use defaults::script as d;
        ModelFlags {
            image_size: Some(d::IMAGE_SIZE),
            num_channels: Some(d::NUM_CHANNELS),
            num_res_blocks: Some(d::NUM_RES_BLOCKS),
            channel_mult: Some(d::CHANNEL_MULT.into()),
            learn_sigma: Some(d::LEARN_SIGMA),
            class_cond: Some(d::CLASS_COND),
            use_checkpoint: Some(d::USE_CHECKPOINT),
            attention_resolutions: Some(d::ATTENTION_RESOLUTIONS.into()),
            num_heads: Some(d::NUM_HEADS),
            num_head_channels: Some(d::NUM_HEAD_CHANNELS),
            num_heads_upsample: Some(d::NUM_HEADS_UPSAMPLE),
            use_scale_shift_norm: Some(d::USE_SCALE_SHIFT_NORM),
            dropout: Some(d::DROPOUT),
            resblock_updown: Some(d::RESBLOCK_UPDOWN),
            use_fp16: Some(d::USE_FP16),
            use_new_attention_order: Some(d::USE_NEW_ATTENTION_ORDER),
            num_classes: Some(defaults::NUM_CLASSES),
            in_channels: Some(defaults::IN_CHANNELS),
            large_size: None,
            small_size: None,
        }
    }

    /// `script_util.create_model`'s signature defaults (none for `image_size`, `num_channels`,
    /// `num_res_blocks`), with our `num_classes` and `in_channels`.
    pub fn create_model_defaults() -> Self {
        use defaults::create_model as d;
        ModelFlags {
            channel_mult: Some(d::CHANNEL_MULT.into()),
            learn_sigma: Some(d::LEARN_SIGMA),
            class_cond: Some(d::CLASS_COND),
            use_checkpoint: Some(d::USE_CHECKPOINT),
            attention_resolutions: Some(d::ATTENTION_RESOLUTIONS.into()),
            num_heads: Some(d::NUM_HEADS),
            num_head_channels: Some(d::NUM_HEAD_CHANNELS),
            num_heads_upsample: Some(d::NUM_HEADS_UPSAMPLE),
            use_scale_shift_norm: Some(d::USE_SCALE_SHIFT_NORM),
            dropout: Some(d::DROPOUT),
            resblock_updown: Some(d::RESBLOCK_UPDOWN),
            use_fp16: Some(d::USE_FP16),
            use_new_attention_order: Some(d::USE_NEW_ATTENTION_ORDER),
            num_classes: Some(defaults::NUM_CLASSES),
            in_channels: Some(defaults::IN_CHANNELS),
            ..ModelFlags::default()
        }
    }

    /// `script_util.sr_create_model`'s signature defaults: `create_model`'s and the sizes.
    pub fn sr_create_model_defaults() -> Self {
        use defaults::sr_create_model as d;
        ModelFlags {
            large_size: Some(d::LARGE_SIZE),
            small_size: Some(d::SMALL_SIZE),
            ..Self::create_model_defaults()
        }
    }

    /// These flags, and `fallback`'s where these are not given.
    pub fn or(&self, fallback: &ModelFlags) -> ModelFlags {
        or_fields!(
            self,
            fallback,
            image_size,
            num_channels,
            num_res_blocks,
            num_heads,
            num_heads_upsample,
            num_head_channels,
            attention_resolutions,
            channel_mult,
            dropout,
            class_cond,
            use_checkpoint,
            use_scale_shift_norm,
            resblock_updown,
            use_fp16,
            use_new_attention_order,
            learn_sigma,
            num_classes,
            in_channels,
            large_size,
            small_size,
        )
    }

    /// The UNet of these flags, the scripts' defaults for the others (`create_model` as the
    /// reference scripts call it).
    pub fn to_config(&self) -> Result<UNetConfig> {
        self.or(&Self::script_defaults()).create_model()
    }

    /// The super-resolution UNet of these flags (`large_size` and `small_size` given), the
    /// scripts' defaults for the others (`sr_create_model` as `super_res_sample.py` calls it).
    pub fn to_super_res_config(&self) -> Result<UNetConfig> {
        self.or(&Self::script_defaults()).sr_create_model()
    }

    /// `create_model(...)`: `image_size`, `num_channels` and `num_res_blocks` must be given;
    /// the rest defaults as its signature says ([`Self::create_model_defaults`]).
    pub fn create_model(&self) -> Result<UNetConfig> {
        let f = self.or(&Self::create_model_defaults());
        let mut c = empty_unet(need(&f.image_size, "image_size", "create_model")?);
        need(&f.num_channels, "num_channels", "create_model")?;
        need(&f.num_res_blocks, "num_res_blocks", "create_model")?;
        f.apply_with(&mut c, defaults::channel_mult)?;
        Ok(c)
    }

    /// `sr_create_model(...)`: the UNet at `large_size`, `channel_mult` by `large_size`, the
    /// legacy attention order; `num_channels` and `num_res_blocks` must be given, the rest
    /// defaults as its signature says ([`Self::sr_create_model_defaults`]).
    pub fn sr_create_model(&self) -> Result<UNetConfig> {
        let f = self.or(&Self::sr_create_model_defaults());
        let large = need(&f.large_size, "large_size", "sr_create_model")?;
        need(&f.small_size, "small_size", "sr_create_model")?;
        need(&f.num_channels, "num_channels", "sr_create_model")?;
        need(&f.num_res_blocks, "num_res_blocks", "sr_create_model")?;
        let f = ModelFlags { image_size: Some(large), use_new_attention_order: Some(false), ..f };
        let mut c = empty_unet(large);
        f.apply_with(&mut c, defaults::sr_channel_mult)?;
        Ok(c)
    }

    /// Changes `c` (a complete config, e.g. one embedded in a checkpoint) by the flags given,
    /// each with `create_model`'s meaning: attention resolutions and `""` channel multipliers
    /// by the (new) image size, `learn_sigma` and `in_channels` as output channels,
    /// `class_cond` and `num_classes` as the class count.
    pub fn apply_to(&self, c: &mut UNetConfig) -> Result<()> {
        self.apply_with(c, defaults::channel_mult)
    }

    fn apply_with(
        &self,
        c: &mut UNetConfig,
        channel_mult_for: fn(usize) -> Result<Vec<f64>>,
    ) -> Result<()> {
        let t = &mut c.trunk;
        if let Some(v) = self.image_size {
            t.image_size = v;
        }
        if let Some(v) = self.in_channels {
            let learn = t.out_channels == 2 * t.in_channels;
            t.in_channels = v;
            t.out_channels = if learn { 2 * v } else { v };
        }
        if let Some(v) = self.num_channels {
            t.model_channels = v;
        }
        if let Some(v) = self.num_res_blocks {
            t.num_res_blocks = v;
        }
        if let Some(v) = self.num_heads {
            t.num_heads = v;
        }
        if let Some(v) = self.num_heads_upsample {
            t.num_heads_upsample = v;
        }
        if let Some(v) = self.num_head_channels {
            t.num_head_channels = v;
        }
        if let Some(s) = &self.attention_resolutions {
            t.attention_resolutions = attention_ds(t.image_size, s, "attention_resolutions")?;
        }
        if let Some(s) = &self.channel_mult {
            t.channel_mult = channel_mult(s, t.image_size, channel_mult_for)?;
        }
        if let Some(v) = self.dropout {
            t.dropout = v;
        }
        if let Some(v) = self.use_checkpoint {
            t.use_checkpoint = v;
        }
        if let Some(v) = self.use_scale_shift_norm {
            t.use_scale_shift_norm = v;
        }
        if let Some(v) = self.resblock_updown {
            t.resblock_updown = v;
        }
        if let Some(v) = self.use_fp16 {
            t.use_fp16 = v;
        }
        if let Some(v) = self.use_new_attention_order {
            t.use_new_attention_order = v;
        }
        if let Some(v) = self.learn_sigma {
            t.out_channels = if v { 2 * t.in_channels } else { t.in_channels };
        }
        match self.class_cond {
            Some(true) => {
                c.num_classes =
                    Some(self.num_classes.or(c.num_classes).unwrap_or(defaults::NUM_CLASSES))
            }
            Some(false) => c.num_classes = None,
            None => {
                if let (Some(n), Some(_)) = (self.num_classes, c.num_classes) {
                    c.num_classes = Some(n);
                }
            }
        }
        Ok(())
    }
}

/// A trunk with nothing set but what the script builders hard-code (`conv_resample`, `dims`),
/// for the flags to fill.
fn empty_trunk(image_size: usize) -> TrunkConfig {
    TrunkConfig {
        image_size,
        in_channels: 0,
        model_channels: 0,
        out_channels: 0,
        num_res_blocks: 0,
        attention_resolutions: vec![],
        dropout: 0.0,
        channel_mult: vec![],
        conv_resample: true,
        dims: 2,
        use_checkpoint: false,
        use_fp16: false,
        num_heads: 0,
        num_head_channels: 0,
        num_heads_upsample: 0,
        use_scale_shift_norm: false,
        resblock_updown: false,
        use_new_attention_order: false,
    }
}

fn empty_unet(image_size: usize) -> UNetConfig {
    UNetConfig { trunk: empty_trunk(image_size), num_classes: None }
}

/// The flags of `script_util.create_classifier` (`classifier_defaults`), plus `num_classes`,
/// `in_channels` and `channel_mult`, which the commands take from the model or the data (not
/// command-line flags of their own). `None`: not given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[cfg_attr(feature = "clap", command(rename_all = "snake_case"))]
pub struct ClassifierFlags {
    /// The image side (the model's `--image_size`).
    #[cfg_attr(feature = "clap", arg(skip))]
    pub image_size: Option<usize>,
    /// Accepted for compatibility; inference runs in float32 [default: False]
    #[cfg_attr(feature = "clap", arg(long, value_parser = bool_value))]
    pub classifier_use_fp16: Option<bool>,
    /// Classifier base channels [default: 128]
    #[cfg_attr(feature = "clap", arg(long))]
    pub classifier_width: Option<usize>,
    /// Classifier residual blocks per resolution [default: 2]
    #[cfg_attr(feature = "clap", arg(long))]
    pub classifier_depth: Option<usize>,
    /// Classifier attention resolutions [default: 32,16,8]
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(deserialize_with = "str_or_list", skip_serializing_if = "Option::is_none")]
    pub classifier_attention_resolutions: Option<String>,
    /// [default: True]
    #[cfg_attr(feature = "clap", arg(long, value_parser = bool_value))]
    pub classifier_use_scale_shift_norm: Option<bool>,
    /// [default: True]
    #[cfg_attr(feature = "clap", arg(long, value_parser = bool_value))]
    pub classifier_resblock_updown: Option<bool>,
    /// adaptive, attention, spatial or spatial_v2 [default: attention]
    #[cfg_attr(feature = "clap", arg(long))]
    pub classifier_pool: Option<String>,
    /// Classes (output logits).
    #[cfg_attr(feature = "clap", arg(skip))]
    pub num_classes: Option<usize>,
    /// Image channels.
    #[cfg_attr(feature = "clap", arg(skip))]
    pub in_channels: Option<usize>,
    /// Channel multipliers per level; "" = by image size.
    #[cfg_attr(feature = "clap", arg(skip))]
    #[serde(deserialize_with = "str_or_list", skip_serializing_if = "Option::is_none")]
    pub channel_mult: Option<String>,
}

impl ClassifierFlags {
    /// `classifier_defaults()` of the reference.
    pub fn script_defaults() -> Self {
        ClassifierFlags {
            image_size: Some(defaults::script_classifier::IMAGE_SIZE),
            ..Self::create_classifier_defaults()
        }
    }

    /// `script_util.create_classifier`'s signature defaults (none for `image_size`), with our
    /// `num_classes`, `in_channels` and `channel_mult`.
    pub fn create_classifier_defaults() -> Self {
        use defaults::create_classifier as d;
        ClassifierFlags {
            image_size: None,
            classifier_use_fp16: Some(d::USE_FP16),
            classifier_width: Some(d::WIDTH),
            classifier_depth: Some(d::DEPTH),
            classifier_attention_resolutions: Some(d::ATTENTION_RESOLUTIONS.into()),
            classifier_use_scale_shift_norm: Some(d::USE_SCALE_SHIFT_NORM),
            classifier_resblock_updown: Some(d::RESBLOCK_UPDOWN),
            classifier_pool: Some(d::POOL.into()),
            num_classes: Some(defaults::NUM_CLASSES),
            in_channels: Some(defaults::IN_CHANNELS),
            channel_mult: Some(d::CHANNEL_MULT.into()),
        }
    }

    /// These flags, and `fallback`'s where these are not given.
    pub fn or(&self, fallback: &ClassifierFlags) -> ClassifierFlags {
        or_fields!(
            self,
            fallback,
            image_size,
            classifier_use_fp16,
            classifier_width,
            classifier_depth,
            classifier_attention_resolutions,
            classifier_use_scale_shift_norm,
            classifier_resblock_updown,
            classifier_pool,
            num_classes,
            in_channels,
            channel_mult,
        )
    }

    /// The classifier of these flags, the scripts' defaults for the others.
    pub fn to_config(&self) -> Result<EncoderConfig> {
        self.or(&Self::script_defaults()).create_classifier()
    }

    /// `create_classifier(...)`: `image_size` must be given, the rest defaults as its
    /// signature says ([`Self::create_classifier_defaults`]); one head of
    /// `num_head_channels=64`, as the reference hard-codes.
    pub fn create_classifier(&self) -> Result<EncoderConfig> {
        let f = self.or(&Self::create_classifier_defaults());
        let image_size = need(&f.image_size, "image_size", "create_classifier")?;
        let in_channels = need(&f.in_channels, "in_channels", "create_classifier")?;
        let mut trunk = empty_trunk(image_size);
        trunk.in_channels = in_channels;
        trunk.out_channels = need(&f.num_classes, "num_classes", "create_classifier")?;
        let mult = need(&f.channel_mult, "channel_mult", "create_classifier")?;
        trunk.channel_mult = channel_mult(&mult, image_size, defaults::channel_mult)?;
        trunk.use_fp16 = need(&f.classifier_use_fp16, "classifier_use_fp16", "create_classifier")?;
        trunk.num_heads = 1;
        trunk.num_head_channels = defaults::create_classifier::HEAD_CHANNELS;
        trunk.num_heads_upsample = -1;
        let pool = need(&f.classifier_pool, "classifier_pool", "create_classifier")?.parse()?;
        let mut e = EncoderConfig { trunk, pool };
        f.apply_to(&mut e)?;
        Ok(e)
    }

    /// Changes `e` (a complete config) by the classifier flags given, with `create_classifier`'s
    /// meaning: width, depth, attention resolutions (by `e`'s image size), scale-shift norm,
    /// up/down blocks, pool. (`classifier_use_fp16` and the size, class and channel counts are
    /// the checkpoint's.)
    pub fn apply_to(&self, e: &mut EncoderConfig) -> Result<()> {
        let t = &mut e.trunk;
        if let Some(v) = self.classifier_width {
            t.model_channels = v;
        }
        if let Some(v) = self.classifier_depth {
            t.num_res_blocks = v;
        }
        if let Some(s) = &self.classifier_attention_resolutions {
            t.attention_resolutions =
                attention_ds(t.image_size, s, "classifier_attention_resolutions")?;
        }
        if let Some(v) = self.classifier_use_scale_shift_norm {
            t.use_scale_shift_norm = v;
        }
        if let Some(v) = self.classifier_resblock_updown {
            t.resblock_updown = v;
        }
        if let Some(p) = &self.classifier_pool {
            e.pool = p.parse()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::NetConfig;

    #[test]
    fn no_flags_is_create_model_of_the_script_defaults() {
        let c = ModelFlags::default().to_config().unwrap();
        let t = &c.trunk;
        assert_eq!((t.image_size, t.model_channels, t.num_res_blocks), (64, 128, 2));
        assert_eq!(t.channel_mult, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(t.attention_resolutions, vec![4, 8]);
        assert_eq!((t.num_heads, t.in_channels, t.out_channels), (4, 3, 3));
        assert!(t.use_scale_shift_norm && t.conv_resample && t.dims == 2);
        assert_eq!(c.num_classes, None);
    }

    #[test]
    fn merge_takes_the_given_flags_first() {
        let preset = ModelFlags {
            image_size: Some(128),
            class_cond: Some(true),
            num_heads: Some(8),
            ..Default::default()
        };
        let explicit = ModelFlags { num_heads: Some(2), ..Default::default() };
        let f = explicit.or(&preset);
        assert_eq!((f.image_size, f.class_cond, f.num_heads), (Some(128), Some(true), Some(2)));
        assert_eq!(f.num_channels, None);
        let c = f.to_config().unwrap();
        assert_eq!((c.trunk.num_heads, c.num_classes), (2, Some(1000)));
        assert_eq!(c.trunk.channel_mult, vec![1.0, 1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn applying_flags_to_a_config_keeps_its_architecture_and_changes_what_is_given() {
        let mut c = ModelFlags::script_defaults().to_config().unwrap();
        let before = c.clone();
        ModelFlags::default().apply_to(&mut c).unwrap();
        assert_eq!(c, before, "no flags, no change");
        // A new image size keeps the attention levels (ds) of the checkpoint's config.
        let f = ModelFlags { image_size: Some(128), learn_sigma: Some(true), ..Default::default() };
        f.apply_to(&mut c).unwrap();
        assert_eq!(c.trunk.attention_resolutions, before.trunk.attention_resolutions);
        assert_eq!((c.trunk.image_size, c.trunk.out_channels), (128, 6));
        // Classes: on with the default count, a new count only for a class-conditional model.
        let on = ModelFlags { class_cond: Some(true), ..Default::default() };
        on.apply_to(&mut c).unwrap();
        assert_eq!(c.num_classes, Some(1000));
        ModelFlags { num_classes: Some(10), ..Default::default() }.apply_to(&mut c).unwrap();
        assert_eq!(c.num_classes, Some(10));
        ModelFlags { class_cond: Some(false), ..Default::default() }.apply_to(&mut c).unwrap();
        assert_eq!(c.num_classes, None);
    }

    #[test]
    fn script_builders_take_their_signature_defaults() {
        let kw = serde_json::json!({"image_size": 64, "num_channels": 64, "num_res_blocks": 1});
        let NetConfig::UNet(c) = NetConfig::from_builder("script_util.create_model", &kw).unwrap()
        else {
            panic!("a UNet")
        };
        // create_model's own defaults: attention "16", one head, no scale-shift norm.
        assert_eq!((c.trunk.attention_resolutions.clone(), c.trunk.num_heads), (vec![4], 1));
        assert!(!c.trunk.use_scale_shift_norm);
        let e = NetConfig::from_builder(
            "script_util.create_model",
            &serde_json::json!({"image_size": 64}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("num_channels"), "{e}");
        let bad = serde_json::json!({"large_size": 256, "num_channels": 64, "num_res_blocks": 1, "image_size": 64});
        assert!(NetConfig::from_builder("create_model", &bad).is_err());
        let sr = serde_json::json!({"num_channels": 64, "num_res_blocks": 1, "large_size": 64, "small_size": 16});
        let NetConfig::SuperRes(c) = NetConfig::from_builder("sr_create_model", &sr).unwrap()
        else {
            panic!("a super-res UNet")
        };
        assert_eq!((c.trunk.image_size, c.trunk.channel_mult.len()), (64, 4));
        let k = serde_json::json!({"image_size": 32, "classifier_depth": 1, "num_classes": 10});
        let NetConfig::Classifier(e) = NetConfig::from_builder("create_classifier", &k).unwrap()
        else {
            panic!("a classifier")
        };
        assert_eq!(
            (e.trunk.num_res_blocks, e.trunk.out_channels, e.trunk.num_head_channels),
            (1, 10, 64)
        );
    }

    #[test]
    fn constructor_kwargs_refuse_unknown_keys_through_the_flattened_trunk() {
        let c = ModelFlags::script_defaults().to_config().unwrap();
        let mut kw = serde_json::to_value(&c).unwrap();
        assert!(NetConfig::from_builder("unet.UNetModel", &kw).is_ok());
        kw["num_chanels"] = 3.into();
        let e = NetConfig::from_builder("unet.UNetModel", &kw).unwrap_err().to_string();
        assert!(e.contains("unknown field `num_chanels`"), "{e}");
        // Flags: serde's own check; a null is "not given".
        let kw = serde_json::json!({"image_size": 64, "num_channels": 64, "num_res_blocks": 1,
            "channel_mult": null});
        assert!(NetConfig::from_builder("create_model", &kw).is_ok());
        let kw = serde_json::json!({"image_size": 64, "num_channel": 64});
        let e = NetConfig::from_builder("create_model", &kw).unwrap_err().to_string();
        assert!(e.contains("unknown field `num_channel`"), "{e}");
    }
}
