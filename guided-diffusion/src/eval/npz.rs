//! Reading NumPy `.npz` archives the way the reference evaluator does: one array (`arr_0`, the
//! images) streamed in batches along its first axis, small arrays (`mu`, `sigma`, features) read
//! whole. Written here rather than taken from a crate so that every failure names the file, the
//! key and what was wrong with it (missing key, unsupported dtype, wrong rank), and so that a
//! 50 000-image batch never has to sit in memory at once.
//!
//! Supported: npy format versions 1–3, stored or deflate-compressed archive members
//! (`np.savez` / `np.savez_compressed`), little- and big-endian integer and float dtypes
//! (converted to `f32`/`f64` on read), C order streamed, Fortran order read whole and transposed.
//!
//! Files are untrusted: the header's length is bounded ([`MAX_NPY_HEADER`]), its shape is
//! multiplied out with checked arithmetic and compared with the bytes the archive member (or
//! the `.npy` file) really holds before anything is allocated, and data is read in bounded
//! steps, so a lying header gets an error, not an allocation of its claimed size.
use crate::limits::{MAX_NPY_HEADER, MAX_RANK};
use crate::{bail, Error, Result};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// Element type of an npy array, as its `descr` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F16,
    F32,
    F64,
}

impl NpyDtype {
    pub fn size(self) -> usize {
        match self {
            NpyDtype::U8 | NpyDtype::I8 => 1,
            NpyDtype::U16 | NpyDtype::I16 | NpyDtype::F16 => 2,
            NpyDtype::U32 | NpyDtype::I32 | NpyDtype::F32 => 4,
            NpyDtype::U64 | NpyDtype::I64 | NpyDtype::F64 => 8,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, NpyDtype::F16 | NpyDtype::F32 | NpyDtype::F64)
    }
    /// numpy's name for the type, for messages.
    pub fn name(self) -> &'static str {
        match self {
            NpyDtype::U8 => "uint8",
            NpyDtype::I8 => "int8",
            NpyDtype::U16 => "uint16",
            NpyDtype::I16 => "int16",
            NpyDtype::U32 => "uint32",
            NpyDtype::I32 => "int32",
            NpyDtype::U64 => "uint64",
            NpyDtype::I64 => "int64",
            NpyDtype::F16 => "float16",
            NpyDtype::F32 => "float32",
            NpyDtype::F64 => "float64",
        }
    }
}

/// The header of one npy array.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyHeader {
    pub descr: String,
    pub dtype: NpyDtype,
    pub big_endian: bool,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
}

impl NpyHeader {
    /// Bytes of data (`numel * itemsize`; checked not to overflow when the header was parsed).
    pub fn data_bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Elements in one entry along the first axis (1 for a 0-d or 1-d array).
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }
}

/// A whole array converted to `T`, in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

/// An opened `.npz` archive: the list of its arrays; members are re-opened per read.
pub struct NpzFile {
    path: PathBuf,
    keys: Vec<String>,
}

fn ctx(path: &Path, key: &str, what: impl std::fmt::Display) -> Error {
    Error::msg(format!("{}: array '{key}': {what}", path.display()))
}

fn open_archive(path: &Path) -> Result<zip::ZipArchive<BufReader<File>>> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    zip::ZipArchive::new(BufReader::new(f)).map_err(|e| {
        Error::msg(format!("{}: not a readable .npz (zip) archive: {e}", path.display()))
    })
}

impl NpzFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let archive = open_archive(&path)?;
        let mut keys = Vec::new();
        for name in archive.file_names() {
            let name = name.map_err(|e| {
                Error::msg(format!(
                    "{}: unreadable member name in .npz archive: {e}",
                    path.display()
                ))
            })?;
            if let Some(k) = name.strip_suffix(".npy") {
                keys.push(k.to_string());
            }
        }
        Ok(Self { path, keys })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Array names, without the `.npy` suffix, in archive order.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    pub fn contains(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k == key)
    }

    fn missing(&self, key: &str) -> Error {
        ctx(
            &self.path,
            key,
            format!("missing from the archive (it holds: {})", self.keys.join(", ")),
        )
    }

    /// Opens member `key` and runs `f` on its header and the reader positioned at the data.
    fn with_member<T>(
        &self,
        key: &str,
        f: impl FnOnce(&NpyHeader, &mut dyn Read) -> Result<T>,
    ) -> Result<T> {
        if !self.contains(key) {
            return Err(self.missing(key));
        }
        let mut archive = open_archive(&self.path)?;
        let mut member = archive
            .by_name(&format!("{key}.npy"))
            .map_err(|e| ctx(&self.path, key, format!("cannot open member: {e}")))?;
        let declared = member.size();
        let (header, header_len) =
            read_header_len(&mut member).map_err(|e| ctx(&self.path, key, e))?;
        check_data_len(&header, declared.saturating_sub(header_len as u64))
            .map_err(|e| ctx(&self.path, key, e))?;
        f(&header, &mut member)
    }

    pub fn header(&self, key: &str) -> Result<NpyHeader> {
        self.with_member(key, |h, _| Ok(h.clone()))
    }

    /// Reads the whole array, converted to `f64`.
    pub fn read_f64(&self, key: &str) -> Result<NpyArray<f64>> {
        self.read_whole(key, |h, bytes| decode(h, bytes, |v| v))
    }

    /// Reads a whole `uint8` array as is (images).
    pub fn read_u8(&self, key: &str) -> Result<NpyArray<u8>> {
        let h = self.header(key)?;
        if h.dtype != NpyDtype::U8 {
            bail!("{}: array '{key}': dtype {}, expected uint8", self.path.display(), h.descr);
        }
        self.read_whole(key, |_, bytes| bytes.to_vec())
    }

    /// Reads the whole array, converted to `f32`.
    pub fn read_f32(&self, key: &str) -> Result<NpyArray<f32>> {
        self.read_whole(key, |h, bytes| decode(h, bytes, |v| v as f32))
    }

    fn read_whole<T: Copy + Default>(
        &self,
        key: &str,
        conv: impl Fn(&NpyHeader, &[u8]) -> Vec<T>,
    ) -> Result<NpyArray<T>> {
        self.with_member(key, |h, r| {
            let bytes = read_exact_vec(r, h.numel() * h.dtype.size())
                .map_err(|e| ctx(&self.path, key, e))?;
            let data = conv(h, &bytes);
            let data = if h.fortran_order { fortran_to_c(&h.shape, &data) } else { data };
            Ok(NpyArray { shape: h.shape.clone(), data })
        })
    }

    /// Streams the array along its first axis in batches of at most `batch_rows` entries,
    /// converted to `f32`; `f` gets the batch's shape (`[rows, ...]`) and its data. Fortran-order
    /// arrays are read whole first (as the reference does).
    pub fn for_each_batch(
        &self,
        key: &str,
        batch_rows: usize,
        mut f: impl FnMut(&[usize], Vec<f32>) -> Result<()>,
    ) -> Result<()> {
        let batch_rows = batch_rows.max(1);
        let header = self.header(key)?;
        if header.shape.is_empty() {
            bail!(
                "{}: array '{key}': is a scalar, expected an array with a first axis",
                self.path.display()
            );
        }
        if header.fortran_order {
            let arr = self.read_f32(key)?;
            let row = header.row_len();
            for start in (0..header.rows()).step_by(batch_rows) {
                let n = batch_rows.min(header.rows() - start);
                let mut shape = header.shape.clone();
                shape[0] = n;
                f(&shape, arr.data[start * row..(start + n) * row].to_vec())?;
            }
            return Ok(());
        }
        self.with_member(key, |h, r| {
            let row_bytes = h.row_len() * h.dtype.size();
            let mut start = 0;
            while start < h.rows() {
                let n = batch_rows.min(h.rows() - start);
                let bytes = read_exact_vec(r, n * row_bytes).map_err(|e| {
                    ctx(&self.path, key, format!("{e} (at entry {start} of {})", h.rows()))
                })?;
                let mut shape = h.shape.clone();
                shape[0] = n;
                f(&shape, decode(h, &bytes, |v| v as f32))?;
                start += n;
            }
            Ok(())
        })
    }
}

/// Reads exactly `n` bytes. The buffer grows with the data actually read (in steps of at most
/// 64 MiB), so a wrong `n` costs at most one step beyond what the reader holds.
fn read_exact_vec(r: &mut dyn Read, n: usize) -> std::result::Result<Vec<u8>, String> {
    const STEP: usize = 64 << 20;
    let mut buf = Vec::new();
    while buf.len() < n {
        let want = (n - buf.len()).min(STEP);
        let start = buf.len();
        buf.resize(start + want, 0);
        let mut got = 0;
        while got < want {
            match r.read(&mut buf[start + got..start + want]) {
                Ok(0) => {
                    return Err(format!("truncated data: expected {n} bytes, got {}", start + got))
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read error: {e}")),
            }
        }
    }
    Ok(buf)
}

/// Fails unless `available` bytes hold the array's data (`numel * itemsize`).
fn check_data_len(h: &NpyHeader, available: u64) -> std::result::Result<(), String> {
    let need = h.data_bytes();
    if need as u64 > available {
        return Err(format!(
            "the header declares shape {:?} of {} ({need} bytes) but only {available} bytes follow",
            h.shape, h.descr
        ));
    }
    Ok(())
}

/// Parses the npy magic, version and header dictionary.
pub fn read_header(r: &mut dyn Read) -> std::result::Result<NpyHeader, String> {
    read_header_len(r).map(|(h, _)| h)
}

/// [`read_header`], plus the bytes it took (where the data starts).
pub fn read_header_len(r: &mut dyn Read) -> std::result::Result<(NpyHeader, usize), String> {
    let pre = read_exact_vec(r, 8)?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err("not an npy array (bad magic)".into());
    }
    let len = match pre[6] {
        1 => {
            let b = read_exact_vec(r, 2)?;
            u16::from_le_bytes([b[0], b[1]]) as usize
        }
        2 | 3 => {
            let b = read_exact_vec(r, 4)?;
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
        }
        v => return Err(format!("unsupported npy format version {v}.{}", pre[7])),
    };
    if len > MAX_NPY_HEADER {
        return Err(format!("an npy header of {len} bytes is over the limit of {MAX_NPY_HEADER}"));
    }
    let text = read_exact_vec(r, len)?;
    let text = String::from_utf8_lossy(&text);
    let consumed = if pre[6] == 1 { 10 } else { 12 } + len;
    let header = parse_header_dict(&text).map_err(|e| {
        // The messages quote the header; a hostile one can be a megabyte long.
        if e.len() > 300 {
            format!("{}...", e.chars().take(300).collect::<String>())
        } else {
            e
        }
    })?;
    Ok((header, consumed))
}

/// Reads a whole `.npy` file converted to `f32`, checking its declared shape against the
/// file's real length first.
pub fn read_npy_f32(path: &Path) -> Result<NpyArray<f32>> {
    let bad = |e: &dyn std::fmt::Display| Error::msg(format!("{}: {e}", path.display()));
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut r = BufReader::new(f);
    let (h, header_len) = read_header_len(&mut r).map_err(|e| bad(&e))?;
    let data_len = len.saturating_sub(header_len as u64);
    check_data_len(&h, data_len).map_err(|e| bad(&e))?;
    if data_len != h.data_bytes() as u64 {
        return Err(bad(&format!(
            "{} bytes follow the header, the shape {:?} of {} needs {}",
            data_len,
            h.shape,
            h.descr,
            h.data_bytes()
        )));
    }
    let bytes = read_exact_vec(&mut r, h.data_bytes()).map_err(|e| bad(&e))?;
    let data = decode(&h, &bytes, |v| v as f32);
    let data = if h.fortran_order { fortran_to_c(&h.shape, &data) } else { data };
    Ok(NpyArray { shape: h.shape.clone(), data })
}

/// The bytes of an `.npy` file (format 1.0) holding `data`, raw little-endian values of numpy
/// type `descr` (`"|u1"`, `"<i8"`, `"<f4"`, ...) and `shape`, C order.
pub fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    // Pad with spaces so that magic (6) + version (2) + length (2) + dict + '\n' is a multiple
    // of 64, as numpy does.
    let total = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Writes named `.npy` members (as made by [`npy_bytes`]) to an `.npz` archive at `path`,
/// assembled in memory and then written atomically (temporary file and rename).
pub fn write_npz(path: &Path, members: &[(&str, Vec<u8>)]) -> Result<()> {
    let bytes = npz_bytes(members).map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    crate::checkpoint::write_atomic(path, &bytes)
}

/// The bytes of an `.npz` archive of `.npy` members (stored, as `np.savez`).
pub fn npz_bytes(members: &[(&str, Vec<u8>)]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    let zerr = |e: zip::result::ZipError| Error::msg(format!("npz: {e}"));
    let mut zip = zip::ZipWriter::new(&mut buf);
    let opts: zip::write::FileOptions<()> = zip::write::FileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(members.iter().any(|(_, b)| b.len() as u64 >= u32::MAX as u64));
    for (name, bytes) in members {
        zip.start_file(format!("{name}.npy"), opts).map_err(zerr)?;
        zip.write_all(bytes).map_err(|e| Error::msg(format!("npz: {e}")))?;
    }
    zip.finish().map_err(zerr)?;
    Ok(buf.into_inner())
}

fn dict_value<'a>(text: &'a str, key: &str) -> std::result::Result<&'a str, String> {
    let pat_sq = format!("'{key}'");
    let pat_dq = format!("\"{key}\"");
    let pos = text
        .find(&pat_sq)
        .map(|p| p + pat_sq.len())
        .or_else(|| text.find(&pat_dq).map(|p| p + pat_dq.len()))
        .ok_or_else(|| format!("npy header lacks '{key}': {text}"))?;
    let rest = text[pos..].trim_start();
    let rest = rest.strip_prefix(':').ok_or_else(|| format!("malformed npy header: {text}"))?;
    Ok(rest.trim_start())
}

fn parse_header_dict(text: &str) -> std::result::Result<NpyHeader, String> {
    // descr
    let d = dict_value(text, "descr")?;
    let quote = d.chars().next().filter(|c| *c == '\'' || *c == '"');
    let descr = match quote {
        Some(q) => {
            let end =
                d[1..].find(q).ok_or_else(|| format!("malformed descr in npy header: {text}"))?;
            d[1..1 + end].to_string()
        }
        None => return Err(format!("unsupported dtype (structured or object array): {text}")),
    };
    let (big_endian, dtype) = parse_descr(&descr)?;
    // fortran_order
    let fo = dict_value(text, "fortran_order")?;
    let fortran_order = if fo.starts_with("True") {
        true
    } else if fo.starts_with("False") {
        false
    } else {
        return Err(format!("malformed fortran_order in npy header: {text}"));
    };
    // shape
    let s = dict_value(text, "shape")?;
    let s = s.strip_prefix('(').ok_or_else(|| format!("malformed shape in npy header: {text}"))?;
    let end = s.find(')').ok_or_else(|| format!("malformed shape in npy header: {text}"))?;
    let shape = s[..end]
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.trim_end_matches('L').parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| format!("malformed shape in npy header: {text}"))?;
    if shape.len() > MAX_RANK {
        return Err(format!("{} dimensions (at most {MAX_RANK})", shape.len()));
    }
    shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| format!("shape {shape:?} of {descr} overflows the address space"))?;
    Ok(NpyHeader { descr, dtype, big_endian, fortran_order, shape })
}

fn parse_descr(descr: &str) -> std::result::Result<(bool, NpyDtype), String> {
    let (order, code) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
        _ => ('=', descr),
    };
    let dtype = match code {
        "u1" | "B" => NpyDtype::U8,
        "i1" | "b" => NpyDtype::I8,
        "u2" => NpyDtype::U16,
        "i2" => NpyDtype::I16,
        "u4" => NpyDtype::U32,
        "i4" => NpyDtype::I32,
        "u8" => NpyDtype::U64,
        "i8" => NpyDtype::I64,
        "f2" => NpyDtype::F16,
        "f4" => NpyDtype::F32,
        "f8" => NpyDtype::F64,
        _ => {
            return Err(format!("unsupported dtype '{descr}' (expected an integer or float type)"))
        }
    };
    let big = order == '>' || (order == '=' && cfg!(target_endian = "big"));
    Ok((big && dtype.size() > 1, dtype))
}

/// Converts raw little/big-endian bytes to values through `f64`, then `conv`.
fn decode<T>(h: &NpyHeader, bytes: &[u8], conv: impl Fn(f64) -> T) -> Vec<T> {
    let sz = h.dtype.size();
    let be = h.big_endian;
    macro_rules! go {
        ($t:ty, $n:expr) => {
            bytes
                .chunks_exact($n)
                .map(|c| {
                    let a: [u8; $n] = c.try_into().unwrap();
                    let v = if be { <$t>::from_be_bytes(a) } else { <$t>::from_le_bytes(a) };
                    conv(v as f64)
                })
                .collect()
        };
    }
    debug_assert_eq!(bytes.len() % sz, 0);
    match h.dtype {
        NpyDtype::U8 => bytes.iter().map(|&b| conv(b as f64)).collect(),
        NpyDtype::I8 => bytes.iter().map(|&b| conv(b as i8 as f64)).collect(),
        NpyDtype::U16 => go!(u16, 2),
        NpyDtype::I16 => go!(i16, 2),
        NpyDtype::U32 => go!(u32, 4),
        NpyDtype::I32 => go!(i32, 4),
        NpyDtype::U64 => go!(u64, 8),
        NpyDtype::I64 => go!(i64, 8),
        NpyDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| {
                let a = [c[0], c[1]];
                let bits = if be { u16::from_be_bytes(a) } else { u16::from_le_bytes(a) };
                conv(half::f16::from_bits(bits).to_f64())
            })
            .collect(),
        NpyDtype::F32 => go!(f32, 4),
        NpyDtype::F64 => go!(f64, 8),
    }
}

/// Reorders Fortran-order data of `shape` into C order.
fn fortran_to_c<T: Copy + Default>(shape: &[usize], data: &[T]) -> Vec<T> {
    let n = data.len();
    if shape.len() < 2 {
        return data.to_vec();
    }
    // Fortran strides: axis 0 fastest.
    let mut fstride = vec![1usize; shape.len()];
    for i in 1..shape.len() {
        fstride[i] = fstride[i - 1] * shape[i - 1];
    }
    let mut out = vec![T::default(); n];
    let mut idx = vec![0usize; shape.len()];
    for o in out.iter_mut() {
        let src: usize = idx.iter().zip(&fstride).map(|(i, s)| i * s).sum();
        *o = data[src];
        // advance the C-order multi-index (last axis fastest)
        for ax in (0..shape.len()).rev() {
            idx[ax] += 1;
            if idx[ax] < shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_headers() {
        let h = parse_header_dict(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (10, 64, 64, 3), }",
        )
        .unwrap();
        assert_eq!(h.dtype, NpyDtype::U8);
        assert_eq!(h.shape, vec![10, 64, 64, 3]);
        let h =
            parse_header_dict("{'descr': '>f8', 'fortran_order': True, 'shape': (7,), }").unwrap();
        assert!(h.big_endian && h.fortran_order);
        assert_eq!(h.shape, vec![7]);
        let h =
            parse_header_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (), }").unwrap();
        assert!(h.shape.is_empty());
        assert!(
            parse_header_dict("{'descr': '<U5', 'fortran_order': False, 'shape': (3,), }").is_err()
        );
        assert!(parse_header_dict(
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,), }"
        )
        .is_err());
    }

    #[test]
    fn fortran_reorder() {
        // 2x3 array [[0,1,2],[3,4,5]] in Fortran order is 0,3,1,4,2,5.
        let c = fortran_to_c(&[2, 3], &[0, 3, 1, 4, 2, 5]);
        assert_eq!(c, vec![0, 1, 2, 3, 4, 5]);
    }
}
