//! Writing `torch.save`-compatible `.pt` files (the zip format of PyTorch >= 1.6): a pickle of
//! an `OrderedDict` of `torch._utils._rebuild_tensor_v2(...)` calls whose storages are persistent
//! ids pointing at `archive/data/<n>` entries. Only the opcodes `torch.load(weights_only=True)`
//! accepts are used, and no memo, so the file is also readable by strict unpicklers.
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::{bail, Error, Result};

/// Pickle protocol-2 opcodes we emit.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const GLOBAL: u8 = b'c';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const REDUCE: u8 = b'R';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const BINUNICODE: u8 = b'X';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const BINPERSID: u8 = b'Q';
    pub const NEWFALSE: u8 = 0x89;
    pub const SETITEMS: u8 = b'u';
    pub const STOP: u8 = b'.';
}

struct Pickler(Vec<u8>);

impl Pickler {
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(op::GLOBAL);
        self.0.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn string(&mut self, s: &str) {
        self.0.push(op::BINUNICODE);
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: usize) {
        if v <= i32::MAX as usize {
            self.0.push(op::BININT);
            self.0.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            self.0.push(op::LONG1);
            self.0.push(8);
            self.0.extend_from_slice(&(v as i64).to_le_bytes());
        }
    }
    fn int_tuple(&mut self, v: &[usize]) {
        self.0.push(op::MARK);
        for &x in v {
            self.int(x);
        }
        self.0.push(op::TUPLE);
    }
    fn ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.0.push(op::EMPTY_TUPLE);
        self.0.push(op::REDUCE);
    }
}

fn storage_class(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "FloatStorage",
        DType::F64 => "DoubleStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        DType::I64 => "LongStorage",
        DType::U8 => "ByteStorage",
        other => bail!("cannot write dtype {other:?} to a .pt file"),
    })
}

/// Writes `tensors` as a PyTorch state dict (keys sorted), atomically.
pub fn write_pt(path: impl AsRef<Path>, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let path = path.as_ref();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut p = Pickler(vec![op::PROTO, 2]);
    p.ordered_dict();
    p.0.push(op::MARK);
    let mut blobs = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let t = tensors[*name].to_device(&Device::Cpu)?.contiguous()?;
        let dims = t.dims().to_vec();
        let mut stride = vec![1usize; dims.len()];
        for d in (0..dims.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * dims[d + 1];
        }
        p.string(name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.0.push(op::MARK);
        // persistent id: ('storage', torch.<X>Storage, key, location, numel)
        p.0.push(op::MARK);
        p.string("storage");
        p.global("torch", storage_class(t.dtype())?);
        p.string(&i.to_string());
        p.string("cpu");
        p.int(t.elem_count());
        p.0.push(op::TUPLE);
        p.0.push(op::BINPERSID);
        p.int(0); // storage offset
        p.int_tuple(&dims);
        p.int_tuple(&stride);
        p.0.push(op::NEWFALSE); // requires_grad
        p.ordered_dict(); // backward hooks
        p.0.push(op::TUPLE);
        p.0.push(op::REDUCE);
        blobs.push(tensor_bytes(&t)?);
    }
    p.0.push(op::SETITEMS);
    p.0.push(op::STOP);

    let io = |e: std::io::Error| Error::io(path, e);
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts: zip::write::FileOptions<()> =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let zerr = |e: zip::result::ZipError| Error::msg(format!("{}: {e}", path.display()));
        zip.start_file("archive/data.pkl", opts).map_err(zerr)?;
        zip.write_all(&p.0).map_err(io)?;
        zip.start_file("archive/byteorder", opts).map_err(zerr)?;
        zip.write_all(b"little").map_err(io)?;
        for (i, b) in blobs.iter().enumerate() {
            zip.start_file(format!("archive/data/{i}"), opts).map_err(zerr)?;
            zip.write_all(b).map_err(io)?;
        }
        zip.start_file("archive/version", opts).map_err(zerr)?;
        zip.write_all(b"3\n").map_err(io)?;
        zip.finish().map_err(zerr)?;
    }
    super::write_atomic(path, &buf.into_inner())
}

fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => flat.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F64 => flat.to_vec1::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => flat.to_vec1::<half::f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => flat.to_vec1::<half::bf16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I64 => flat.to_vec1::<i64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::U8 => flat.to_vec1::<u8>()?,
        other => bail!("cannot write dtype {other:?} to a .pt file"),
    })
}
