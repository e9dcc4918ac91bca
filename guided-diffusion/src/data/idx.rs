//! The IDX file format of (Fashion-)MNIST, optionally gzipped: magic `00 00 08 ndim`
//! (type 0x08 = unsigned byte), `ndim` big-endian u32 dimensions, then the bytes row-major.
//!
//! The header is read first and its size checked (overflow, [`MAX_IDX_BYTES`]) before the
//! data is decompressed, and then exactly that many bytes are read: a gzip bomb or a lying
//! header gets an error, not an allocation of its claimed size.
use std::io::Read;
use std::path::Path;

use crate::{bail, Error, Result};

/// Largest IDX payload read (Fashion-MNIST's training images are 47 MB).
pub const MAX_IDX_BYTES: usize = 1 << 30;

/// An unsigned-byte IDX array.
#[derive(Debug, Clone)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads `path`; a name ending in `.gz` is gunzipped first.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let f = std::io::BufReader::new(f);
    let r = if path.extension().is_some_and(|e| e == "gz") {
        read_idx_from(flate2::read::GzDecoder::new(f))
    } else {
        read_idx_from(f)
    };
    r.map_err(|e| Error::msg(format!("{}: {e}", path.display())))
}

/// Parses IDX bytes (already decompressed).
pub fn parse_idx(bytes: &[u8]) -> Result<IdxArray> {
    read_idx_from(bytes)
}

/// Reads an IDX array from a stream (decompressed), header first.
pub fn read_idx_from(mut r: impl Read) -> Result<IdxArray> {
    let io = |e: std::io::Error| Error::msg(format!("not a valid IDX stream: {e}"));
    let mut magic = [0u8; 4];
    let got = read_full(&mut r, &mut magic).map_err(io)?;
    if got < 4 || magic[0] != 0 || magic[1] != 0 {
        bail!("not an IDX file (bad magic)");
    }
    if magic[2] != 0x08 {
        bail!("IDX element type 0x{:02x} unsupported (only unsigned bytes, 0x08)", magic[2]);
    }
    let ndim = magic[3] as usize;
    let mut raw = vec![0u8; 4 * ndim];
    if read_full(&mut r, &mut raw).map_err(io)? < raw.len() {
        bail!("IDX header truncated");
    }
    let dims: Vec<usize> = raw
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| {
            Error::msg(format!("IDX dims {dims:?} are over the limit of {MAX_IDX_BYTES} bytes"))
        })?;
    let mut data = Vec::new();
    let got = r.by_ref().take(n as u64 + 1).read_to_end(&mut data).map_err(io)?;
    if got != n {
        let got = if got > n { "more".to_string() } else { got.to_string() };
        bail!("IDX size mismatch: dims {dims:?} need {n} bytes, file has {got}");
    }
    Ok(IdxArray { dims, data })
}

/// Fills `buf` as far as the stream allows; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
