//! Turning flags into configs: a config file or the config embedded in the checkpoint (as the
//! loading layer read it, `guided_diffusion::load::CheckpointInfo`) with the flags the user gave
//! applied (`ModelFlags::apply_to`), else the flags over the reference's defaults (presets are
//! already spliced into the flags).
use std::path::Path;

use anyhow::{bail, Context, Result};
use guided_diffusion::diffusion::{DiffusionConfig, NoiseSchedule};
use guided_diffusion::models::{ClassifierFlags, EncoderConfig, ModelFlags, NetConfig, UNetConfig};

use super::args::{ClassifierArgs, DiffusionArgs, ModelArgs};

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

/// The base config: `--model_config`, else the one the checkpoint embeds.
fn base_config(
    a: &ModelArgs,
    embedded: Option<&NetConfig>,
    builder: &str,
) -> Result<Option<NetConfig>> {
    if let Some(p) = &a.model_config {
        return Ok(Some(read_config_file(p, builder)?));
    }
    Ok(embedded.cloned())
}

/// The diffusion model's config: the base config (`--model_config` or the checkpoint's) with
/// the flags given applied, else `create_model` of the flags over the scripts' defaults.
pub fn unet_config(a: &ModelArgs, embedded: Option<&NetConfig>) -> Result<UNetConfig> {
    match base_config(a, embedded, "unet.UNetModel")? {
        Some(NetConfig::UNet(mut c)) => {
            a.flags.apply_to(&mut c)?;
            Ok(c)
        }
        Some(other) => bail!("the model config describes a {}, not a UNetModel", other.builder()),
        None => Ok(a.flags.to_config()?),
    }
}

/// The super-resolution model's config: as [`unet_config`], with `sr_create_model` for flags.
pub fn super_res_config(
    a: &ModelArgs,
    large: usize,
    small: usize,
    embedded: Option<&NetConfig>,
) -> Result<UNetConfig> {
    match base_config(a, embedded, "unet.SuperResModel")? {
        Some(NetConfig::SuperRes(mut c)) => {
            a.flags.apply_to(&mut c)?;
            Ok(c)
        }
        Some(other) => {
            bail!("the model config describes a {}, not a SuperResModel", other.builder())
        }
        None => {
            let f =
                ModelFlags { large_size: Some(large), small_size: Some(small), ..a.flags.clone() };
            Ok(f.to_super_res_config()?)
        }
    }
}

/// The classifier's config (`create_classifier` semantics; `image_size` is shared with the
/// model as in the reference scripts): the base config with the flags given applied, else the
/// flags alone.
pub fn classifier_config(
    c: &ClassifierArgs,
    image_size: usize,
    num_classes: Option<usize>,
    embedded: Option<&NetConfig>,
) -> Result<EncoderConfig> {
    let base = match &c.classifier_config {
        Some(p) => Some(read_config_file(p, "unet.EncoderUNetModel")?),
        None => embedded.cloned(),
    };
    match base {
        Some(NetConfig::Classifier(mut e)) => {
            c.flags.apply_to(&mut e)?;
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
    let f = ClassifierFlags {
        image_size: Some(image_size),
        num_classes,
        in_channels: Some(in_channels),
        channel_mult: channel_mult.map(str::to_string),
        ..c.flags.clone()
    };
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
