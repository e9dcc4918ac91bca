//! Weights in and out, as pure file I/O: PyTorch `.pt` state-dict zips as released (parsed,
//! never executed) and safetensors, each a map of tensors by parameter name plus string
//! metadata. What the metadata means (our embedded configs, class names, ...) and building
//! networks from the tensors are the loading layer's, [`crate::load`].
//!
//! - [`read`] loads every tensor of a file by its reference parameter name, casting f16/bf16/f64
//!   weights to f32; the format is detected from the file's first bytes. Files are untrusted:
//!   `.pt` pickles go through our own restricted unpickler ([`pickle`]), and every size is
//!   checked against the file before anything is allocated (`crate::limits`). [`read_metadata`]
//!   reads a safetensors header only.
//! - [`infer`] guesses the constructor arguments a state dict's shapes determine.
//! - [`write_safetensors`] writes atomically (temporary file, then rename); [`write_pt`] writes
//!   the reference's `.pt` form.
//! - [`torchscript`] reads the parameters of a TorchScript archive (`torch.jit.save`) by their
//!   attribute paths, for converters.
pub mod infer;
pub mod pickle;
mod pt;
mod pt_write;
mod st;
pub mod torchscript;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::{bail, Error, Result};

pub use pt_write::write_pt;
pub use st::write_safetensors;

/// Metadata key under which our checkpoints carry the network config
/// (`{"builder": ..., "kwargs": {...}}` JSON; read by [`crate::load`]).
pub const CONFIG_KEY: &str = "gdiff.model_config";

/// Metadata key of the diffusion config (`create_gaussian_diffusion` kwargs JSON) in our
/// checkpoints, so sampling needs no diffusion flags either.
pub const DIFFUSION_KEY: &str = "gdiff.diffusion_config";

/// The tensors of a checkpoint by name, plus its safetensors metadata (empty for `.pt`).
#[derive(Debug, Clone, Default)]
pub struct StateDict {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

impl StateDict {
    /// Total number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
    }

    /// Fails, naming `source` and the first tensor at fault, if any floating-point weight is
    /// NaN or infinite (such weights only ever sample black images).
    pub fn check_finite(&self, source: &str) -> Result<()> {
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        for name in names {
            let t = &self.tensors[name];
            if !t.dtype().is_float() {
                continue;
            }
            let bad = t
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .filter(|v| !v.is_finite())
                .count();
            if bad > 0 {
                bail!(
                    "{source}: tensor {name} has {bad} NaN or infinite value(s) of {}: the \
                     checkpoint is corrupt or its training diverged",
                    t.elem_count()
                );
            }
        }
        Ok(())
    }
}

/// File formats we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `torch.save` zip archive (the released `.pt` checkpoints).
    TorchZip,
    Safetensors,
}

/// Detects the format from the first bytes: a zip starts with `PK\x03\x04`; safetensors with an
/// 8-byte little-endian header length followed by `{`.
pub fn detect_format(path: &Path) -> Result<Format> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = [0u8; 9];
    let n = f.read(&mut head).map_err(|e| Error::io(path, e))?;
    if n >= 4 && &head[..4] == b"PK\x03\x04" {
        return Ok(Format::TorchZip);
    }
    if n == 9 && head[8] == b'{' {
        return Ok(Format::Safetensors);
    }
    if n >= 2 && head[0] == 0x80 {
        bail!(
            "{}: a legacy (pre-1.6, non-zip) torch pickle; re-save it with torch.save in the \
             zip format or convert it to safetensors",
            path.display()
        );
    }
    bail!("{}: neither a PyTorch .pt zip nor a safetensors file", path.display())
}

/// Reads every tensor of a `.pt` or `.safetensors` file, as f32 on `device`.
pub fn read(path: impl AsRef<Path>, device: &Device) -> Result<StateDict> {
    let path = path.as_ref();
    let sd = match detect_format(path)? {
        Format::TorchZip => pt::read(path)?,
        Format::Safetensors => st::read(path)?,
    };
    to_f32(sd, &path.display().to_string(), device)
}

/// Reads a checkpoint from memory (`.pt` zip or safetensors, by its first bytes), as [`read`]
/// does a file; `source` names it in errors. The entry point of the fuzz targets.
pub fn read_bytes(bytes: &[u8], source: &str, device: &Device) -> Result<StateDict> {
    let sd = if bytes.starts_with(b"PK\x03\x04") {
        pt::read_from(std::io::Cursor::new(bytes), source)?
    } else {
        st::read_from(std::io::Cursor::new(bytes), source)?
    };
    to_f32(sd, source, device)
}

/// The raw tensors of a safetensors file, in their own dtypes (training checkpoints keep
/// integer optimizer counters), with its metadata.
pub fn read_safetensors_raw(path: impl AsRef<Path>) -> Result<StateDict> {
    st::read(path.as_ref())
}

fn to_f32(mut sd: StateDict, source: &str, device: &Device) -> Result<StateDict> {
    if sd.tensors.is_empty() {
        bail!("{source}: holds no tensors (expected model weights)");
    }
    for (name, t) in sd.tensors.iter_mut() {
        let cast = match t.dtype() {
            DType::F32 => t.clone(),
            DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
            other => bail!(
                "{source}: tensor {name} has dtype {other:?}; expected floating-point weights"
            ),
        };
        *t = cast.to_device(device)?;
    }
    Ok(sd)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// The metadata of a safetensors file (reads and checks only the header); empty for a `.pt`.
pub fn read_metadata(path: impl AsRef<Path>) -> Result<HashMap<String, String>> {
    let path = path.as_ref();
    if detect_format(path)? != Format::Safetensors {
        return Ok(HashMap::new());
    }
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let (meta, _) = st::read_header(&mut std::io::BufReader::new(f), &path.display().to_string())?;
    Ok(meta.metadata().clone().unwrap_or_default())
}
