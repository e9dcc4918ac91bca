//! Training checkpoints: the reference's names with `.safetensors` (`model000500`,
//! `ema_0.9999_000500`, `opt000500`), string metadata (config JSON, step, data classes, ...),
//! written to a temp file and renamed into place; finding the latest one in a log directory.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::data::files::write_atomic;
use crate::{bail, Error, Result};

/// Metadata keys every training checkpoint carries.
pub mod meta {
    /// `"model"`, `"ema"` or `"opt"`.
    pub const KIND: &str = "gdiff.kind";
    /// Completed optimizer-loop steps when written.
    pub const STEP: &str = "gdiff.step";
    /// The run's configuration as a JSON string (the CLI flags).
    pub const CONFIG: &str = "gdiff.config";
    /// JSON array of class names, when the data is labelled.
    pub const CLASSES: &str = "gdiff.classes";
    /// EMA rate of an `ema_*` file.
    pub const EMA_RATE: &str = "gdiff.ema_rate";
    /// The run's seed (all randomness derives from seed and step).
    pub const SEED: &str = "gdiff.seed";
    /// Classifier-free guidance: the label of the null class (an integer, the last row of the
    /// label embedding), for models trained with label dropout.
    pub const NULL_CLASS: &str = "gdiff.null_class";
    /// Classifier-free guidance: the probability with which a training label was replaced by
    /// the null class.
    pub const CLASS_DROPOUT_PROB: &str = "gdiff.class_dropout_prob";
}

pub fn model_file_name(step: u64) -> String {
    format!("model{step:06}.safetensors")
}
pub fn ema_file_name(rate: &str, step: u64) -> String {
    format!("ema_{rate}_{step:06}.safetensors")
}
pub fn opt_file_name(step: u64) -> String {
    format!("opt{step:06}.safetensors")
}

/// Serialises `tensors` with `metadata` and writes them atomically to `path`.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes =
        safetensors::tensor::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata))
            .map_err(|e| Error::msg(format!("{}: cannot serialise: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

/// Tensors (on `device`) and string metadata of a safetensors file (header checked before
/// anything is read, see `checkpoint`).
pub fn load_safetensors(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let sd = crate::checkpoint::read_safetensors_raw(path)?;
    let mut tensors = HashMap::with_capacity(sd.tensors.len());
    for (k, t) in sd.tensors {
        tensors.insert(k, t.to_device(device)?);
    }
    Ok((tensors, sd.metadata))
}

/// The step in a name like `path/to/model000500.safetensors` (the reference's
/// `parse_resume_step_from_filename`: digits after the last `model`, up to the first `.`).
pub fn parse_step_from_filename(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let tail = name.rsplit_once("model")?.1;
    tail.split('.').next()?.parse().ok()
}

/// The `model*.safetensors` with the largest step in `dir`, if any.
pub fn find_latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in rd {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !name.starts_with("model") || !name.ends_with(".safetensors") {
            continue;
        }
        if let Some(step) = parse_step_from_filename(&p) {
            if best.as_ref().is_none_or(|(s, _)| step > *s) {
                best = Some((step, p));
            }
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Reads `key` of `metadata` as an integer; `source` names the file in errors.
pub fn meta_u64(
    metadata: &HashMap<String, String>,
    key: &str,
    source: &Path,
) -> Result<Option<u64>> {
    match metadata.get(key) {
        None => Ok(None),
        Some(v) => match v.parse() {
            Ok(n) => Ok(Some(n)),
            Err(_) => bail!("{}: metadata {key}={v:?} is not an integer", source.display()),
        },
    }
}

/// Removes the temporary files a killed run left in `dir` (`.<name>.<pid>.tmp`, as
/// `write_atomic` names them) and returns their paths. Call it only while holding the
/// directory's [`RunLock`](super::RunLock): then no other run can be writing them.
pub fn remove_stale_temp_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut removed = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_ours = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|n| n.rsplit_once('.'))
            .is_some_and(|(stem, pid)| {
                !stem.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
            });
        if is_ours && entry.file_type().is_ok_and(|t| t.is_file()) {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            removed.push(p);
        }
    }
    removed.sort();
    Ok(removed)
}
