//! safetensors in and out (via candle's `View` for tensors and the `safetensors` crate for the
//! metadata header). Writes go to a temporary file in the target directory and are renamed into
//! place, so a crash never leaves a half-written checkpoint.
use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::StateDict;
use crate::{Error, Result};

pub(super) fn read(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: &dyn std::fmt::Display| {
        Error::msg(format!("{}: not a valid safetensors file: {e}", path.display()))
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(&e))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let tensors =
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| bad(&e))?;
    Ok(StateDict { tensors, metadata })
}

/// Writes `tensors` (sorted by name) with `metadata` to `path` atomically.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &HashMap<String, Tensor>,
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let mut items: Vec<(&String, Tensor)> = Vec::with_capacity(tensors.len());
    for (k, t) in tensors {
        items.push((k, t.to_device(&Device::Cpu)?.contiguous()?));
    }
    items.sort_by(|a, b| a.0.cmp(b.0));
    let meta = if metadata.is_empty() { None } else { Some(metadata.clone()) };
    let bytes = safetensors::serialize(items.iter().map(|(k, t)| (k.as_str(), t)), meta)
        .map_err(|e| Error::msg(format!("{}: cannot serialize tensors: {e}", path.display())))?;
    crate::checkpoint::write_atomic(path, &bytes)
}
