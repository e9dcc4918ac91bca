//! The ADM networks: the UNet denoiser, the super-resolution UNet and the noise-aware
//! classifier, built by the reference's parameter names so released checkpoints load as is.
//!
//! - [`config`]: typed constructor arguments (`UNetConfig`, `EncoderConfig`, `NetConfig`).
//! - [`flags`]: the reference scripts' flags and `create_model` / `create_classifier` /
//!   `sr_create_model` semantics.
//! - [`layers`], [`resblock`], [`attention`], [`trunk`]: the blocks.
//! - [`unet`], [`classifier`]: the three networks; [`Net`] holds any of them.
pub mod attention;
pub mod classifier;
pub mod config;
pub mod flags;
pub mod init;
pub mod layers;
pub mod resblock;
pub mod trunk;
pub mod unet;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use classifier::EncoderUNetModel;
pub use config::{EncoderConfig, NetConfig, Pool, UNetConfig};
pub use flags::{ClassifierFlags, ModelFlags, SuperResFlags};
pub use unet::{SuperResModel, UNetModel};

use crate::checkpoint::{self, verify};
use crate::{bail, Error, Result};

/// Any of the three networks.
#[derive(Debug, Clone)]
pub enum Net {
    UNet(UNetModel),
    SuperRes(SuperResModel),
    Classifier(EncoderUNetModel),
}

impl Net {
    /// Builds the network described by `config`, taking parameters from `vb`.
    pub fn new(config: &NetConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        Ok(match config {
            NetConfig::UNet(c) => Net::UNet(UNetModel::new(c, vb)?),
            NetConfig::SuperRes(c) => Net::SuperRes(SuperResModel::new(c, vb)?),
            NetConfig::Classifier(c) => Net::Classifier(EncoderUNetModel::new(c, vb)?),
        })
    }

    /// Builds the network from a state dict, failing with a report of every mismatching key.
    /// `source` names the file in errors.
    pub fn from_tensors(
        config: &NetConfig,
        tensors: HashMap<String, Tensor>,
        source: &str,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        verify::build_checked(tensors, source, device, |vb| Net::new(config, vb))
    }

    /// Loads weights (`.pt` or `.safetensors`) for `config`. If the file embeds a config of its
    /// own and it disagrees with `config`, the error names the differing arguments.
    pub fn load_with_config(
        config: &NetConfig,
        weights: impl AsRef<Path>,
        device: &Device,
    ) -> Result<Self> {
        let weights = weights.as_ref();
        let sd = checkpoint::read(weights, device)?;
        if let Some(saved) = sd.embedded_config()? {
            if saved.builder() != config.builder() {
                bail!(
                    "{}: holds a {} but a {} was asked for",
                    weights.display(),
                    saved.builder(),
                    config.builder()
                );
            }
            let diffs = verify::config_differences(&saved.kwargs(), &config.kwargs());
            if !diffs.is_empty() {
                bail!(
                    "{} was saved with a different model config: {}",
                    weights.display(),
                    diffs.join("; ")
                );
            }
        }
        Self::from_tensors(config, sd.tensors, &weights.display().to_string(), device)
    }

    /// Loads a checkpoint that embeds its config (our safetensors).
    pub fn load_embedded(weights: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let weights = weights.as_ref();
        let sd = checkpoint::read(weights, device)?;
        let Some(config) = sd.embedded_config()? else {
            bail!(
                "{} carries no model config: give the model flags or --model_config",
                weights.display()
            );
        };
        Self::from_tensors(&config, sd.tensors, &weights.display().to_string(), device)
    }

    /// Loads a network from a model description (`{"builder", "kwargs"}` JSON, as the golden
    /// `model_<name>.json` files) and a weights file.
    pub fn load(
        json_path: impl AsRef<Path>,
        weights: impl AsRef<Path>,
        device: &Device,
    ) -> Result<Self> {
        let config = NetConfig::from_file(json_path)?;
        Self::load_with_config(&config, weights, device)
    }

    pub fn config(&self) -> NetConfig {
        match self {
            Net::UNet(m) => NetConfig::UNet(m.config().clone()),
            Net::SuperRes(m) => NetConfig::SuperRes(m.config().clone()),
            Net::Classifier(m) => NetConfig::Classifier(m.config().clone()),
        }
    }

    /// Classes the network is conditioned on (UNets with `num_classes`) or predicts
    /// (classifiers); `None` for an unconditional UNet.
    pub fn num_classes(&self) -> Option<usize> {
        match self {
            Net::UNet(m) => m.config().num_classes,
            Net::SuperRes(m) => m.config().num_classes,
            Net::Classifier(m) => Some(m.config().out_channels),
        }
    }

    /// Whether `forward` takes class labels (a class-conditional UNet).
    pub fn takes_labels(&self) -> bool {
        !matches!(self, Net::Classifier(_)) && self.num_classes().is_some()
    }

    pub fn set_training(&mut self, training: bool) {
        match self {
            Net::UNet(m) => m.set_training(training),
            Net::SuperRes(m) => m.set_training(training),
            Net::Classifier(m) => m.set_training(training),
        }
    }

    /// One call of the network: `x [N, C, H, W]` f32, `t [N]` f32 timesteps as the network sees
    /// them, `y [N]` class labels (class-conditional models), `low_res` (super-res models).
    /// A classifier returns logits `[N, classes]` and ignores `y`. Differentiable in `x`.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: Option<&Tensor>,
        low_res: Option<&Tensor>,
    ) -> Result<Tensor> {
        let t = if t.dtype() == DType::F32 { t.clone() } else { t.to_dtype(DType::F32)? };
        match self {
            Net::UNet(m) => {
                if low_res.is_some() {
                    bail!("low_res is only for super-resolution models");
                }
                m.forward(x, &t, y)
            }
            Net::SuperRes(m) => {
                let lr =
                    low_res.ok_or_else(|| Error::msg("a super-resolution model needs low_res"))?;
                m.forward(x, &t, lr, y)
            }
            Net::Classifier(m) => m.forward(x, &t),
        }
    }
}
