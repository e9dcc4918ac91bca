//! safetensors in and out (via candle's `View` for tensors and the `safetensors` crate for the
//! header). Writes go to a temporary file in the target directory and are renamed into place,
//! so a crash never leaves a half-written checkpoint.
//!
//! Reading checks before it allocates: the header length against
//! [`MAX_SAFETENSORS_HEADER`] and the file's real length, then the parsed header (offsets
//! contiguous, every tensor's bytes equal to its shape times its dtype, the data exactly
//! filling the rest of the file); only then are the tensors read, one at a time.
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::Metadata;

use super::StateDict;
use crate::limits::MAX_SAFETENSORS_HEADER;
use crate::{bail, Error, Result};

pub(super) fn read(path: &Path) -> Result<StateDict> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    read_from(std::io::BufReader::new(f), &path.display().to_string())
}

/// The parsed header of a safetensors stream and where its data starts.
pub(super) fn read_header<R: Read + Seek>(r: &mut R, source: &str) -> Result<(Metadata, u64)> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::msg(format!("{source}: not a valid safetensors file: {e}"))
    };
    let file_len = r.seek(SeekFrom::End(0)).map_err(|e| bad(&e))?;
    r.seek(SeekFrom::Start(0)).map_err(|e| bad(&e))?;
    let mut len = [0u8; 8];
    r.read_exact(&mut len).map_err(|_| bad(&"shorter than its 8-byte header length"))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_SAFETENSORS_HEADER {
        return Err(bad(&format!(
            "a header of {n} bytes is over the limit of {MAX_SAFETENSORS_HEADER}"
        )));
    }
    if n > file_len - 8 {
        return Err(bad(&format!(
            "a header of {n} bytes, but the file has {} after it",
            file_len - 8
        )));
    }
    let mut header = vec![0u8; n as usize];
    r.read_exact(&mut header).map_err(|e| bad(&e))?;
    let meta: Metadata = serde_json::from_slice(&header).map_err(|e| bad(&e))?;
    let data_len = meta.data_len() as u64;
    if 8 + n + data_len != file_len {
        return Err(bad(&format!(
            "the header describes {data_len} bytes of tensors, the file has {}",
            file_len - 8 - n
        )));
    }
    Ok((meta, 8 + n))
}

/// Reads a safetensors stream; `source` names it in errors.
pub fn read_from<R: Read + Seek>(mut r: R, source: &str) -> Result<StateDict> {
    let (meta, start) = read_header(&mut r, source)?;
    let bad =
        |name: &str, e: &dyn std::fmt::Display| Error::msg(format!("{source}: tensor {name}: {e}"));
    let mut tensors = HashMap::new();
    for name in meta.offset_keys() {
        let Some(info) = meta.info(&name) else { continue };
        let dtype = dtype_of(info.dtype).map_err(|e| bad(&name, &e))?;
        let (s, e) = info.data_offsets;
        r.seek(SeekFrom::Start(start + s as u64)).map_err(|e| bad(&name, &e))?;
        let mut buf = vec![0u8; e - s];
        r.read_exact(&mut buf).map_err(|e| bad(&name, &e))?;
        let t = Tensor::from_raw_buffer(&buf, dtype, &info.shape, &Device::Cpu)
            .map_err(|e| bad(&name, &e))?;
        tensors.insert(name, t);
    }
    let metadata = meta.metadata().clone().unwrap_or_default();
    Ok(StateDict { tensors, metadata })
}

fn dtype_of(d: safetensors::Dtype) -> Result<DType> {
    use safetensors::Dtype as S;
    Ok(match d {
        S::U8 => DType::U8,
        S::U32 => DType::U32,
        S::I16 => DType::I16,
        S::I32 => DType::I32,
        S::I64 => DType::I64,
        S::BF16 => DType::BF16,
        S::F16 => DType::F16,
        S::F32 => DType::F32,
        S::F64 => DType::F64,
        other => bail!("dtype {other:?} is not supported"),
    })
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
