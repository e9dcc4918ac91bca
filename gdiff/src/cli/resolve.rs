//! Turning flags into configs: reference defaults, then a config file or the config embedded in
//! the checkpoint, then the flags the user gave (presets are already spliced into those).
use std::path::Path;

use anyhow::{bail, Context, Result};
use guided_diffusion::checkpoint;
use guided_diffusion::diffusion::{DiffusionConfig, NoiseSchedule};
use guided_diffusion::models::flags::{attention_ds, default_channel_mult, parse_list};
use guided_diffusion::models::{
    ClassifierFlags, EncoderConfig, ModelFlags, NetConfig, Pool, SuperResFlags, UNetConfig,
};

use super::args::{ClassifierArgs, DiffusionArgs, ModelArgs};

pub use checkpoint::DIFFUSION_KEY;

/// A config file: `{"builder": ..., "kwargs": {...}}`, or bare kwargs of `default_builder`.
pub fn read_config_file(path: &Path, default_builder: &str) -> Result<NetConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let cfg = if v.get("builder").is_some() {
        NetConfig::from_json(&v)
    } else {
        NetConfig::from_builder(default_builder, &v)
    };
    cfg.and_then(|c| c.validate().map(|_| c))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The model and diffusion configs embedded in one of our checkpoints, if any.
pub fn embedded(path: &Path) -> Result<(Option<NetConfig>, Option<DiffusionConfig>)> {
    if checkpoint::detect_format(path)? != checkpoint::Format::Safetensors {
        return Ok((None, None));
    }
    let meta = checkpoint::read_metadata(path)?;
    let key = checkpoint::CONFIG_KEY;
    let net = match meta.get(key) {
        Some(s) => {
            let v: serde_json::Value = serde_json::from_str(s).map_err(|e| {
                anyhow::anyhow!("{}: metadata {key} is not valid JSON: {e}", path.display())
            })?;
            let cfg = NetConfig::from_json(&v)
                .and_then(|c| c.validate().map(|_| c))
                .map_err(|e| anyhow::anyhow!("{}: metadata {key}: {e}", path.display()))?;
            Some(cfg)
        }
        None => None,
    };
    let diffusion = match meta.get(DIFFUSION_KEY) {
        Some(s) => {
            let d: DiffusionConfig = serde_json::from_str(s).map_err(|e| {
                anyhow::anyhow!("{}: metadata {DIFFUSION_KEY}: {e}", path.display())
            })?;
            d.build().map_err(|e| {
                anyhow::anyhow!("{}: metadata {DIFFUSION_KEY}: {e}", path.display())
            })?;
            Some(d)
        }
        None => None,
    };
    Ok((net, diffusion))
}

fn ds_list(image_size: usize, s: &str, flag: &str) -> Result<Vec<usize>> {
    Ok(attention_ds(image_size, s, flag)?)
}

/// Applies the flags the user gave to a UNet config that came from a file or a checkpoint,
/// with `create_model`'s meaning of each flag.
fn override_unet(c: &mut UNetConfig, a: &ModelArgs) -> Result<()> {
    if let Some(v) = a.image_size {
        c.image_size = v;
    }
    if let Some(v) = a.in_channels {
        let learn = c.learns_sigma();
        c.in_channels = v;
        c.out_channels = if learn { 2 * v } else { v };
    }
    if let Some(v) = a.num_channels {
        c.model_channels = v;
    }
    if let Some(v) = a.num_res_blocks {
        c.num_res_blocks = v;
    }
    if let Some(v) = a.num_heads {
        c.num_heads = v;
    }
    if let Some(v) = a.num_heads_upsample {
        c.num_heads_upsample = v;
    }
    if let Some(v) = a.num_head_channels {
        c.num_head_channels = v;
    }
    if let Some(s) = &a.attention_resolutions {
        c.attention_resolutions = ds_list(c.image_size, s, "attention_resolutions")?;
    }
    if let Some(s) = &a.channel_mult {
        c.channel_mult = if s.is_empty() {
            default_channel_mult(c.image_size)?
        } else {
            parse_list(s, "channel_mult")?
        };
    }
    if let Some(v) = a.dropout {
        c.dropout = v;
    }
    match a.class_cond {
        Some(true) => c.num_classes = Some(a.num_classes.or(c.num_classes).unwrap_or(1000)),
        Some(false) => c.num_classes = None,
        None => {
            if let (Some(n), Some(_)) = (a.num_classes, c.num_classes) {
                c.num_classes = Some(n);
            }
        }
    }
    if let Some(v) = a.use_checkpoint {
        c.use_checkpoint = v;
    }
    if let Some(v) = a.use_scale_shift_norm {
        c.use_scale_shift_norm = v;
    }
    if let Some(v) = a.resblock_updown {
        c.resblock_updown = v;
    }
    if let Some(v) = a.use_fp16 {
        c.use_fp16 = v;
    }
    if let Some(v) = a.use_new_attention_order {
        c.use_new_attention_order = v;
    }
    if let Some(v) = a.learn_sigma {
        c.out_channels = if v { 2 * c.in_channels } else { c.in_channels };
    }
    Ok(())
}

fn flags_from_args(a: &ModelArgs) -> ModelFlags {
    let mut f = ModelFlags::script_defaults();
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = &a.$field { f.$field = v.clone(); } )* };
    }
    set!(
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
        in_channels
    );
    f
}

/// The base config: `--model_config`, else the checkpoint's own.
fn base_config(a: &ModelArgs, weights: Option<&Path>, builder: &str) -> Result<Option<NetConfig>> {
    if let Some(p) = &a.model_config {
        return Ok(Some(read_config_file(p, builder)?));
    }
    match weights {
        Some(w) => Ok(embedded(w)?.0),
        None => Ok(None),
    }
}

/// The diffusion model's config (`create_model` semantics for flags).
pub fn unet_config(a: &ModelArgs, weights: Option<&Path>) -> Result<UNetConfig> {
    match base_config(a, weights, "unet.UNetModel")? {
        Some(NetConfig::UNet(mut c)) => {
            override_unet(&mut c, a)?;
            Ok(c)
        }
        Some(other) => bail!("the model config describes a {}, not a UNetModel", other.builder()),
        None => Ok(flags_from_args(a).to_config()?),
    }
}

/// The super-resolution model's config (`sr_create_model` semantics for flags).
pub fn super_res_config(
    a: &ModelArgs,
    large: usize,
    small: usize,
    weights: Option<&Path>,
) -> Result<UNetConfig> {
    match base_config(a, weights, "unet.SuperResModel")? {
        Some(NetConfig::SuperRes(mut c)) => {
            override_unet(&mut c, a)?;
            Ok(c)
        }
        Some(other) => {
            bail!("the model config describes a {}, not a SuperResModel", other.builder())
        }
        None => {
            let m = flags_from_args(a);
            let f = SuperResFlags {
                large_size: large,
                small_size: small,
                num_channels: m.num_channels,
                num_res_blocks: m.num_res_blocks,
                learn_sigma: m.learn_sigma,
                class_cond: m.class_cond,
                use_checkpoint: m.use_checkpoint,
                attention_resolutions: m.attention_resolutions,
                num_heads: m.num_heads,
                num_head_channels: m.num_head_channels,
                num_heads_upsample: m.num_heads_upsample,
                use_scale_shift_norm: m.use_scale_shift_norm,
                dropout: m.dropout,
                resblock_updown: m.resblock_updown,
                use_fp16: m.use_fp16,
                num_classes: m.num_classes,
                in_channels: m.in_channels,
                channel_mult: m.channel_mult,
            };
            Ok(f.to_config()?)
        }
    }
}

/// The classifier's config (`create_classifier` semantics; `image_size` is shared with the
/// model as in the reference scripts).
pub fn classifier_config(
    c: &ClassifierArgs,
    image_size: usize,
    num_classes: Option<usize>,
    weights: &Path,
) -> Result<EncoderConfig> {
    let base = match &c.classifier_config {
        Some(p) => Some(read_config_file(p, "unet.EncoderUNetModel")?),
        None => embedded(weights)?.0,
    };
    match base {
        Some(NetConfig::Classifier(mut e)) => {
            if let Some(v) = c.classifier_width {
                e.model_channels = v;
            }
            if let Some(v) = c.classifier_depth {
                e.num_res_blocks = v;
            }
            if let Some(s) = &c.classifier_attention_resolutions {
                e.attention_resolutions =
                    ds_list(e.image_size, s, "classifier_attention_resolutions")?;
            }
            if let Some(v) = c.classifier_use_scale_shift_norm {
                e.use_scale_shift_norm = v;
            }
            if let Some(v) = c.classifier_resblock_updown {
                e.resblock_updown = v;
            }
            if let Some(p) = &c.classifier_pool {
                e.pool = p.parse::<Pool>()?;
            }
            Ok(e)
        }
        Some(other) => {
            bail!("the classifier config describes a {}, not an EncoderUNetModel", other.builder())
        }
        None => classifier_config_from_flags(c, image_size, num_classes, 3, None),
    }
}

/// `create_classifier` from flags alone (plus `in_channels` and `channel_mult` extensions).
pub fn classifier_config_from_flags(
    c: &ClassifierArgs,
    image_size: usize,
    num_classes: Option<usize>,
    in_channels: usize,
    channel_mult: Option<&str>,
) -> Result<EncoderConfig> {
    let mut f = ClassifierFlags::script_defaults();
    f.image_size = image_size;
    f.in_channels = in_channels;
    if let Some(n) = num_classes {
        f.num_classes = n;
    }
    if let Some(m) = channel_mult {
        f.channel_mult = m.to_string();
    }
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = &c.$field { f.$field = v.clone(); } )* };
    }
    set!(
        classifier_use_fp16,
        classifier_width,
        classifier_depth,
        classifier_attention_resolutions,
        classifier_use_scale_shift_norm,
        classifier_resblock_updown,
        classifier_pool
    );
    Ok(f.to_config()?)
}

/// The diffusion config: the checkpoint's own (if any), then the flags; `learn_sigma` always
/// follows the model's output channels.
pub fn diffusion_config(
    d: &DiffusionArgs,
    base: Option<DiffusionConfig>,
    learn_sigma: bool,
) -> Result<DiffusionConfig> {
    let mut c = base.unwrap_or_default();
    if let Some(v) = d.diffusion_steps {
        c.steps = v;
    }
    if let Some(s) = &d.noise_schedule {
        c.noise_schedule =
            s.parse::<NoiseSchedule>().map_err(|e| anyhow::anyhow!("--noise_schedule: {e}"))?;
    }
    if let Some(s) = &d.timestep_respacing {
        c.timestep_respacing = s.clone();
    }
    if let Some(v) = d.use_kl {
        c.use_kl = v;
    }
    if let Some(v) = d.predict_xstart {
        c.predict_xstart = v;
    }
    if let Some(v) = d.rescale_timesteps {
        c.rescale_timesteps = v;
    }
    if let Some(v) = d.rescale_learned_sigmas {
        c.rescale_learned_sigmas = v;
    }
    if let Some(v) = d.sigma_small {
        c.sigma_small = v;
    }
    c.learn_sigma = learn_sigma;
    Ok(c)
}
