//! The f32 data of a custom op's arguments: the one place that unpacks candle's CPU storage
//! (every op takes f32 tensors that it made contiguous first).
use candle_core::{bail, CpuStorage, Layout, Result};

/// The contiguous f32 values of `s` under layout `l`; `op` names the op in errors.
pub fn f32_values<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { bail!("{op}: expected f32 data") };
    let Some((a, b)) = l.contiguous_offsets() else { bail!("{op}: expected a contiguous tensor") };
    match v.get(a..b) {
        Some(v) => Ok(v),
        None => bail!("{op}: layout {a}..{b} past the storage's {} values", v.len()),
    }
}

/// [`f32_values`] for writing (in-place ops).
pub fn f32_values_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(v) = s else { bail!("{op}: expected f32 data") };
    let Some((a, b)) = l.contiguous_offsets() else { bail!("{op}: expected a contiguous tensor") };
    let n = v.len();
    match v.get_mut(a..b) {
        Some(v) => Ok(v),
        None => bail!("{op}: layout {a}..{b} past the storage's {n} values"),
    }
}
