//! Loading networks from checkpoints: the layer above [`crate::checkpoint`] (file I/O: the
//! tensors and the metadata of a `.pt` or safetensors file) and [`crate::models`] (networks
//! from configs), which know nothing of each other.
//!
//! A checkpoint is read once, by [`Checkpoint::read`]: its tensors, and everything our
//! metadata says about them, parsed into one [`CheckpointInfo`] (the network config, the
//! diffusion config, the class names, and for classifier-free guidance the null class and the
//! label-dropout probability). A command resolves its configs from that value and then builds
//! the network from the same tensors ([`Checkpoint::into_network`]): checked key by key
//! against its config ([`verify`]) and frozen, since the file's weights are held by nothing
//! else. `Net::load*` and `Net::from_tensors` are defined here too, as shorthands.
//!
//! - [`verify`]: building a network against a state dict, with a report of every missing,
//!   unexpected and mis-shaped key and the flag that most likely differs.
pub mod verify;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::checkpoint::{self, CONFIG_KEY, DIFFUSION_KEY};
use crate::diffusion::DiffusionConfig;
use crate::models::{Net, NetConfig};
use crate::train::ckpt::meta;
use crate::{bail, Error, Result};

/// What a checkpoint's metadata says about its weights (all `None` for a `.pt`).
#[derive(Debug, Clone, Default)]
pub struct CheckpointInfo {
    /// The file, as errors name it.
    pub source: String,
    /// The network config it embeds (`gdiff.model_config`).
    pub net: Option<NetConfig>,
    /// The diffusion config it embeds (`gdiff.diffusion_config`).
    pub diffusion: Option<DiffusionConfig>,
    /// The class names of the training data (`gdiff.classes`).
    pub class_names: Option<Vec<String>>,
    /// Classifier-free guidance: the null class label, the last row of the label embedding
    /// (`gdiff.null_class`).
    pub null_class: Option<usize>,
    /// Classifier-free guidance: the label-dropout probability it was trained with
    /// (`gdiff.class_dropout_prob`).
    pub class_dropout_prob: Option<f64>,
    /// Every metadata entry, as stored.
    pub metadata: HashMap<String, String>,
}

impl CheckpointInfo {
    /// Parses our keys of `metadata` (a file's, named `source` in errors). Class names that do
    /// not parse are left out; a config, null class or dropout probability that does not is an
    /// error naming the file and the key, and so is a config that does not validate (sizes
    /// past `crate::limits`, a diffusion config that does not build).
    pub fn from_metadata(source: &str, metadata: HashMap<String, String>) -> Result<Self> {
        let net = match metadata.get(CONFIG_KEY) {
            None => None,
            Some(s) => {
                let v: serde_json::Value = serde_json::from_str(s).map_err(|e| {
                    Error::msg(format!("{source}: metadata {CONFIG_KEY} is not valid JSON: {e}"))
                })?;
                let cfg = NetConfig::from_json(&v)
                    .and_then(|c| c.validate().map(|_| c))
                    .map_err(|e| Error::msg(format!("{source}: metadata {CONFIG_KEY}: {e}")))?;
                Some(cfg)
            }
        };
        let diffusion = match metadata.get(DIFFUSION_KEY) {
            None => None,
            Some(s) => {
                let d: DiffusionConfig = serde_json::from_str(s)
                    .map_err(|e| Error::msg(format!("{source}: metadata {DIFFUSION_KEY}: {e}")))?;
                d.build()
                    .map_err(|e| Error::msg(format!("{source}: metadata {DIFFUSION_KEY}: {e}")))?;
                Some(d)
            }
        };
        let class_names = metadata.get(meta::CLASSES).and_then(|s| serde_json::from_str(s).ok());
        let null_class = match metadata.get(meta::NULL_CLASS) {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| {
                Error::msg(format!("{source}: metadata {} {v:?} is not a label", meta::NULL_CLASS))
            })?),
        };
        let class_dropout_prob = match metadata.get(meta::CLASS_DROPOUT_PROB) {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| {
                Error::msg(format!(
                    "{source}: metadata {} {v:?} is not a probability",
                    meta::CLASS_DROPOUT_PROB
                ))
            })?),
        };
        Ok(CheckpointInfo {
            source: source.to_string(),
            net,
            diffusion,
            class_names,
            null_class,
            class_dropout_prob,
            metadata,
        })
    }

    /// The info of the checkpoint at `path`, reading only its header (safetensors).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_metadata(&path.display().to_string(), checkpoint::read_metadata(path)?)
    }
}

/// A checkpoint read once: its tensors (f32, on the device asked for) and its info.
pub struct Checkpoint {
    pub info: CheckpointInfo,
    tensors: HashMap<String, Tensor>,
    device: Device,
}

impl Checkpoint {
    /// Reads the checkpoint at `path` (`.pt` or safetensors) onto `device`: every tensor and
    /// the metadata, in one pass over the file.
    pub fn read(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let sd = checkpoint::read(path, device)?;
        let info = CheckpointInfo::from_metadata(&path.display().to_string(), sd.metadata)?;
        Ok(Checkpoint { info, tensors: sd.tensors, device: device.clone() })
    }

    /// The tensors by parameter name.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// The info and the tensors.
    pub fn into_parts(self) -> (CheckpointInfo, HashMap<String, Tensor>) {
        (self.info, self.tensors)
    }

    /// Total number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
    }

    /// The network `config` describes, with these weights, frozen. If the checkpoint embeds a
    /// config of its own and it disagrees with `config`, the error names the differing
    /// arguments; a key that does not fit is reported with the flag that probably differs, and
    /// a NaN or infinite weight with its tensor's name.
    pub fn into_network(self, config: &NetConfig) -> Result<Net> {
        let source = &self.info.source;
        let sd = checkpoint::StateDict { tensors: self.tensors, metadata: HashMap::new() };
        sd.check_finite(source)?;
        if let Some(saved) = &self.info.net {
            if saved.builder() != config.builder() {
                bail!(
                    "{source}: holds a {} but a {} was asked for",
                    saved.builder(),
                    config.builder()
                );
            }
            let diffs = verify::config_differences(&saved.kwargs(), &config.kwargs());
            if !diffs.is_empty() {
                bail!("{source} was saved with a different model config: {}", diffs.join("; "));
            }
        }
        let mut net = Net::from_tensors(config, sd.tensors, source, &self.device)?;
        net.freeze();
        Ok(net)
    }

    /// The network the checkpoint's embedded config describes, with its weights, frozen.
    pub fn into_embedded_network(self) -> Result<Net> {
        let Some(config) = self.info.net.clone() else {
            bail!(
                "{} carries no model config: give the model flags or --model_config",
                self.info.source
            );
        };
        self.into_network(&config)
    }
}

impl Net {
    /// Builds the network from a state dict, failing with a report of every mismatching key.
    /// `source` names the file in errors. Not frozen: the caller may hold the tensors too.
    pub fn from_tensors(
        config: &NetConfig,
        tensors: HashMap<String, Tensor>,
        source: &str,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        verify::build_checked(tensors, source, device, |vb| Net::new(config, vb))
    }

    /// Loads weights (`.pt` or `.safetensors`) for `config`, frozen
    /// ([`Checkpoint::into_network`]).
    pub fn load_with_config(
        config: &NetConfig,
        weights: impl AsRef<Path>,
        device: &Device,
    ) -> Result<Self> {
        Checkpoint::read(weights, device)?.into_network(config)
    }

    /// Loads a checkpoint that embeds its config (our safetensors), frozen.
    pub fn load_embedded(weights: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Checkpoint::read(weights, device)?.into_embedded_network()
    }

    /// Loads a network (frozen) from a model description (`{"builder", "kwargs"}` JSON, as the
    /// golden `model_<name>.json` files) and a weights file.
    pub fn load(
        json_path: impl AsRef<Path>,
        weights: impl AsRef<Path>,
        device: &Device,
    ) -> Result<Self> {
        let config = NetConfig::from_file(json_path)?;
        Self::load_with_config(&config, weights, device)
    }
}

/// Writes a network's state dict to safetensors with its config embedded (plus `extra`
/// metadata such as a training step), atomically.
pub fn write_model(
    path: impl AsRef<Path>,
    tensors: &HashMap<String, Tensor>,
    config: &NetConfig,
    extra: &HashMap<String, String>,
) -> Result<()> {
    let mut meta = extra.clone();
    meta.insert(CONFIG_KEY.to_string(), config.to_json().to_string());
    meta.insert("format".to_string(), "pt".to_string());
    checkpoint::write_safetensors(path, tensors, &meta)
}
