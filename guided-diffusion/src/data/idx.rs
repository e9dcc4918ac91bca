//! The IDX file format of (Fashion-)MNIST, optionally gzipped: magic `00 00 08 ndim`
//! (type 0x08 = unsigned byte), `ndim` big-endian u32 dimensions, then the bytes row-major.
use std::io::Read;
use std::path::Path;

use crate::{bail, Error, Result};

/// An unsigned-byte IDX array.
#[derive(Debug, Clone)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads `path`; a name ending in `.gz` is gunzipped first.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::msg(format!("{}: not a valid gzip file: {e}", path.display())))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|e| Error::msg(format!("{}: {e}", path.display())))
}

/// Parses IDX bytes (already decompressed).
pub fn parse_idx(bytes: &[u8]) -> Result<IdxArray> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        bail!("not an IDX file (bad magic)");
    }
    if bytes[2] != 0x08 {
        bail!("IDX element type 0x{:02x} unsupported (only unsigned bytes, 0x08)", bytes[2]);
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        bail!("IDX header truncated");
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap_or([0; 4])) as usize
        })
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() != header + n {
        bail!("IDX size mismatch: dims {dims:?} need {n} bytes, file has {}", bytes.len() - header);
    }
    Ok(IdxArray { dims, data: bytes[header..].to_vec() })
}
