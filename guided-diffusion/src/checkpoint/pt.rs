//! Reading `torch.save` zip archives without executing them: [`super::pickle`] turns
//! `data.pkl` into inert values, this file finds the tensors in them and reads their storages
//! from the archive.
//!
//! Every size is checked before it is used: a tensor's extent (offset, sizes, strides) must lie
//! inside its storage, the storage inside its archive entry, and a compressed entry may not
//! inflate beyond [`ZIP_MAX_RATIO`] times its compressed size (plus [`ZIP_FREE_INFLATE`]) in
//! all, so a small zip bomb is refused before it is decompressed; entries are read through
//! `take`, so a lying header cannot make us read more than declared.
//!
//! The tensors are the string-keyed entries of the top-level dict (an `OrderedDict` state
//! dict) whose values are `torch._utils._rebuild_tensor_v2` calls, possibly wrapped in
//! `_rebuild_parameter(_with_state)` or `torch._tensor._rebuild_from_type_v2`; other entries
//! (a nested `_metadata`, numbers) are not weights and are left out.
use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::pickle::{self, Value};
use super::StateDict;
use crate::limits::{MAX_PICKLE_BYTES, MAX_RANK, ZIP_FREE_INFLATE, ZIP_MAX_RATIO};
use crate::{bail, Error, Result};

pub(super) fn read(path: &Path) -> Result<StateDict> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    read_from(std::io::BufReader::new(f), &path.display().to_string())
}

/// Reads a `.pt` archive from `reader`; `source` names it in errors.
pub fn read_from<R: Read + Seek>(reader: R, source: &str) -> Result<StateDict> {
    let tensors = read_tensors(reader)
        .map_err(|e| Error::msg(format!("{source}: cannot read the PyTorch checkpoint: {e}")))?;
    let mut map = HashMap::with_capacity(tensors.len());
    for (name, t) in tensors {
        // Checkpoints saved from a DataParallel/DDP wrapper prefix every key with `module.`.
        let name = name.strip_prefix("module.").map(str::to_string).unwrap_or(name);
        map.insert(name, t);
    }
    Ok(StateDict { tensors: map, metadata: HashMap::new() })
}

/// Where one tensor's elements are.
struct TensorRef {
    dtype: DType,
    storage_key: String,
    storage_numel: usize,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

fn read_tensors<R: Read + Seek>(reader: R) -> Result<Vec<(String, Tensor)>> {
    let mut zip = zip::ZipArchive::new(reader)
        .map_err(|e| Error::msg(format!("not a readable zip archive: {e}")))?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .find(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .ok_or_else(|| Error::msg("no data.pkl in the archive (not written by torch.save?)"))?;
    let prefix = pkl.strip_suffix("data.pkl").unwrap_or("").to_string();
    let mut budget = Inflate::default();
    let pickle_bytes = read_entry(&mut zip, &pkl, None, MAX_PICKLE_BYTES, &mut budget)?;
    let big_endian = match zip.index_for_name(&format!("{prefix}byteorder")) {
        None => false,
        Some(_) => {
            let b = read_entry(&mut zip, &format!("{prefix}byteorder"), None, 16, &mut budget)?;
            match b.as_slice() {
                b"little" => false,
                b"big" => true,
                other => bail!("byteorder entry says {:?}", String::from_utf8_lossy(other)),
            }
        }
    };
    let root = pickle::unpickle(&pickle_bytes).map_err(|e| Error::msg(format!("{pkl}: {e}")))?;
    let Value::Dict(root) = root else {
        bail!("{pkl} holds a {}, expected a state dict (a dict of tensors)", root.kind());
    };
    // Last value of a key wins, as in Python; the order is the file's.
    let mut refs: Vec<(String, TensorRef)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut others = Vec::new();
    for (k, v) in &root.items {
        let Some(name) = k.as_str() else {
            bail!("{pkl}: a state-dict key is a {}, expected a string", k.kind());
        };
        match tensor_ref(v, 0).map_err(|e| Error::msg(format!("{pkl}: tensor {name}: {e}")))? {
            Some(r) => match index.get(name) {
                Some(&i) => refs[i].1 = r,
                None => {
                    index.insert(name.to_string(), refs.len());
                    refs.push((name.to_string(), r));
                }
            },
            None => others.push(name.to_string()),
        }
    }
    if refs.is_empty() {
        let keys = others.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
        bail!(
            "the archive holds no tensors at the top level{} (expected a model state_dict)",
            if keys.is_empty() { String::new() } else { format!(" (its keys: {keys})") }
        );
    }
    // A storage is read once and kept only while tensors still to come use it.
    let mut uses: HashMap<String, usize> = HashMap::new();
    for (_, r) in &refs {
        *uses.entry(r.storage_key.clone()).or_default() += 1;
    }
    let mut storages: HashMap<String, Arc<Vec<u8>>> = HashMap::new();
    let mut out = Vec::with_capacity(refs.len());
    for (name, r) in refs {
        let t = load_tensor(&mut zip, &prefix, &r, big_endian, &mut storages, &mut budget)
            .map_err(|e| Error::msg(format!("tensor {name}: {e}")))?;
        if let Some(n) = uses.get_mut(&r.storage_key) {
            *n -= 1;
            if *n == 0 {
                storages.remove(&r.storage_key);
            }
        }
        out.push((name, t));
    }
    Ok(out)
}

/// The tensor a state-dict value rebuilds, if it is one.
fn tensor_ref(v: &Value, wrap: u32) -> Result<Option<TensorRef>> {
    let Value::Call(c) = v else { return Ok(None) };
    let Some((module, name)) = c.callable.as_global() else { return Ok(None) };
    let args = c.args.as_seq().unwrap_or(&[]);
    if wrap > 4 {
        bail!("tensor rebuild calls nested more than 4 deep");
    }
    match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            rebuild_args(args).map(Some)
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            let data =
                args.first().ok_or_else(|| Error::msg(format!("{name} without arguments")))?;
            tensor_ref(data, wrap + 1)
        }
        ("torch._tensor", "_rebuild_from_type_v2") => {
            // (func, new_type, args, state): the tensor is func(*args).
            let (Some(func), Some(inner)) = (args.first(), args.get(2)) else {
                bail!("_rebuild_from_type_v2 with {} arguments, expected 4", args.len());
            };
            let call = Value::Call(Rc::new(pickle::Call {
                depth: 1,
                callable: func.clone(),
                args: inner.clone(),
            }));
            tensor_ref(&call, wrap + 1)
        }
        _ => Ok(None),
    }
}

fn usize_of(v: &Value, what: &str) -> Result<usize> {
    match v.as_int() {
        Some(i) if i >= 0 => Ok(i as usize),
        _ => bail!("{what} is a {}, expected a non-negative integer", v.kind()),
    }
}

fn usizes_of(v: &Value, what: &str) -> Result<Vec<usize>> {
    let items = v.as_seq().ok_or_else(|| Error::msg(format!("{what} is a {}", v.kind())))?;
    if items.len() > MAX_RANK {
        bail!("{what} has {} dimensions (at most {MAX_RANK})", items.len());
    }
    items.iter().map(|x| usize_of(x, what)).collect()
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
fn rebuild_args(args: &[Value]) -> Result<TensorRef> {
    if args.len() < 4 {
        bail!("_rebuild_tensor_v2 with {} arguments, expected at least 4", args.len());
    }
    let Value::Persistent(pid) = &args[0] else {
        bail!("the storage is a {}, expected a persistent id", args[0].kind());
    };
    // ('storage', torch.<X>Storage, key, location, numel)
    let pid = &pid.items;
    if pid.len() < 5 || pid[0].as_str() != Some("storage") {
        bail!(
            "the storage id has {} fields, expected ('storage', type, key, location, numel)",
            pid.len()
        );
    }
    let dtype = match pid[1].as_global() {
        Some((_, "FloatStorage")) => DType::F32,
        Some((_, "DoubleStorage")) => DType::F64,
        Some((_, "HalfStorage")) => DType::F16,
        Some((_, "BFloat16Storage")) => DType::BF16,
        Some((_, "LongStorage")) => DType::I64,
        Some((_, "IntStorage")) => DType::I32,
        Some((_, "ByteStorage")) => DType::U8,
        Some((m, n)) => bail!("storage type {m}.{n} is not supported"),
        None => bail!("the storage type is a {}", pid[1].kind()),
    };
    let key = match &pid[2] {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        other => bail!("the storage key is a {}", other.kind()),
    };
    if key.is_empty() || key.contains(['/', '\\']) || key.contains("..") {
        bail!("storage key {key:?} is not a plain name");
    }
    Ok(TensorRef {
        dtype,
        storage_key: key,
        storage_numel: usize_of(&pid[4], "the storage size")?,
        offset: usize_of(&args[1], "the storage offset")?,
        size: usizes_of(&args[2], "the size")?,
        stride: usizes_of(&args[3], "the stride")?,
    })
}

/// Bytes inflated from compressed entries so far, against the bomb limit.
#[derive(Default)]
struct Inflate {
    inflated: u64,
    compressed: u64,
}

/// Reads entry `name` whole: its declared size must equal `expect` when given and be at most
/// `max`; compressed entries count against the inflate budget before they are decompressed.
fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    expect: Option<u64>,
    max: u64,
    budget: &mut Inflate,
) -> Result<Vec<u8>> {
    let entry = zip.by_name(name).map_err(|e| Error::msg(format!("archive entry {name}: {e}")))?;
    let size = entry.size();
    if let Some(n) = expect {
        if size < n {
            bail!("archive entry {name} holds {size} bytes, the pickle declares {n}");
        }
    }
    let want = expect.unwrap_or(size);
    if want > max {
        bail!("archive entry {name} of {want} bytes is over the limit of {max}");
    }
    if entry.compression() != zip::CompressionMethod::Stored {
        budget.inflated = budget.inflated.saturating_add(want);
        budget.compressed = budget.compressed.saturating_add(entry.compressed_size());
        let allowed =
            ZIP_FREE_INFLATE.saturating_add(budget.compressed.saturating_mul(ZIP_MAX_RATIO));
        if budget.inflated > allowed {
            bail!(
                "compressed entries would inflate to {} bytes from {} (more than {ZIP_MAX_RATIO}x \
                 plus {ZIP_FREE_INFLATE}; weights do not compress that well: a zip bomb?)",
                budget.inflated,
                budget.compressed
            );
        }
    } else if want > entry.compressed_size() {
        bail!(
            "stored archive entry {name} declares {want} bytes but holds {}",
            entry.compressed_size()
        );
    }
    let mut buf = Vec::new();
    buf.try_reserve_exact(want as usize)
        .map_err(|_| Error::msg(format!("archive entry {name}: cannot allocate {want} bytes")))?;
    let got = entry
        .take(want)
        .read_to_end(&mut buf)
        .map_err(|e| Error::msg(format!("archive entry {name}: {e}")))?;
    if (got as u64) < want {
        bail!("archive entry {name} is truncated: {got} of {want} bytes");
    }
    Ok(buf)
}

fn load_tensor<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    prefix: &str,
    r: &TensorRef,
    big_endian: bool,
    storages: &mut HashMap<String, Arc<Vec<u8>>>,
    budget: &mut Inflate,
) -> Result<Tensor> {
    if r.size.len() != r.stride.len() {
        bail!("size {:?} and stride {:?} differ in rank", r.size, r.stride);
    }
    let es = r.dtype.size_in_bytes();
    let numel = crate::limits::product("the size", &r.size)?;
    // The last element's index in the storage: offset + sum (size_i - 1) * stride_i.
    let last = if numel == 0 {
        None
    } else {
        let mut last = Some(r.offset);
        for (&n, &s) in r.size.iter().zip(&r.stride) {
            last = last.and_then(|l| (n - 1).checked_mul(s).and_then(|x| x.checked_add(l)));
        }
        Some(last.ok_or_else(|| Error::msg("the tensor's extent overflows"))?)
    };
    if let Some(l) = last {
        if l >= r.storage_numel {
            bail!(
                "offset {} size {:?} stride {:?} reach element {l}, past its storage of {}",
                r.offset,
                r.size,
                r.stride,
                r.storage_numel
            );
        }
    }
    let storage_bytes =
        r.storage_numel.checked_mul(es).ok_or_else(|| Error::msg("the storage size overflows"))?;
    let storage = match storages.get(&r.storage_key) {
        Some(s) if s.len() >= storage_bytes => s.clone(),
        _ => {
            let name = format!("{prefix}data/{}", r.storage_key);
            let mut b = read_entry(zip, &name, Some(storage_bytes as u64), u64::MAX, budget)?;
            if big_endian && es > 1 {
                for c in b.chunks_exact_mut(es) {
                    c.reverse();
                }
            }
            let b = Arc::new(b);
            storages.insert(r.storage_key.clone(), b.clone());
            b
        }
    };
    let bytes = gather(&storage, es, r, numel)?;
    Ok(Tensor::from_raw_buffer(&bytes, r.dtype, &r.size, &Device::Cpu)?)
}

/// The tensor's elements in C order (`numel` of them, all inside `storage` as checked): the
/// storage's own bytes when the tensor is a contiguous slice of it (the common case), else a
/// gathered copy.
fn gather<'a>(
    storage: &'a [u8],
    es: usize,
    r: &TensorRef,
    numel: usize,
) -> Result<std::borrow::Cow<'a, [u8]>> {
    let mut contiguous = vec![1usize; r.size.len()];
    for d in (0..r.size.len().saturating_sub(1)).rev() {
        contiguous[d] = contiguous[d + 1].saturating_mul(r.size[d + 1]);
    }
    let nbytes = numel * es; // <= storage bytes, checked by the caller
    if numel == 0 {
        return Ok(std::borrow::Cow::Borrowed(&[]));
    }
    let is_contiguous =
        r.size.iter().zip(r.stride.iter().zip(&contiguous)).all(|(&n, (&s, &c))| n == 1 || s == c);
    if is_contiguous {
        let start = r.offset * es;
        return Ok(std::borrow::Cow::Borrowed(&storage[start..start + nbytes]));
    }
    let mut out = Vec::with_capacity(nbytes);
    let mut idx = vec![0usize; r.size.len()];
    for _ in 0..numel {
        let e: usize = r.offset + idx.iter().zip(&r.stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&storage[e * es..(e + 1) * es]);
        for ax in (0..idx.len()).rev() {
            idx[ax] += 1;
            if idx[ax] < r.size[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    Ok(std::borrow::Cow::Owned(out))
}
