//! Softmax over the last axis as a custom op: one pass for the row maximum, one for
//! `exp(x - max)` (vectorized exp) and its sum, one to scale; the backward
//! `dx = y * (dy - sum(dy * y))` is one op too. candle composes it from five broadcast ops,
//! each a pass with an allocation, and differentiates each of them.
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::policy::KernelPolicy;
use super::vmath;

type Result<T> = candle_core::Result<T>;

/// Softmax over the last axis of an f32 CPU tensor, or `None` where the fast kernels do not
/// apply (off in `policy`, other device or dtype, rank 0).
pub fn softmax_last(policy: &KernelPolicy, x: &Tensor) -> Result<Option<Tensor>> {
    if !policy.applies_to(&[x]) || x.rank() == 0 {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op1(Softmax)?))
}

/// The values of an argument and the length of its rows (its last axis).
fn rows<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<(&'a [f32], usize)> {
    let Some(&n) = l.dims().last() else { bail!("{op}: expected at least one axis") };
    Ok((super::storage::f32_values(s, l, op)?, n))
}

/// Rows per rayon task: about 16 Ki values.
fn rows_per_task(n: usize) -> usize {
    (16 * 1024 / n.max(1)).max(1)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "gd-softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, n) = rows(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        if n > 0 {
            let per = rows_per_task(n);
            y.par_chunks_mut(n * per).zip(x.par_chunks(n * per)).for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_mut(n).zip(xc.chunks(n)) {
                    softmax_row(xr, yr);
                }
            });
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxBwd)?))
    }
}

vmath::avx2_fn! {
    fn softmax_row(x: &[f32], y: &mut [f32]) {
        let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for (o, &v) in y.iter_mut().zip(x) {
            *o = vmath::exp(v - m);
        }
        let inv = (1.0 / vmath::sum(y)) as f32;
        for o in y.iter_mut() {
            *o *= inv;
        }
    }
}

vmath::avx2_fn! {
    /// In-place [`softmax_row`].
    pub(crate) fn softmax_row_inplace(x: &mut [f32]) {
        let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for v in x.iter_mut() {
            *v = vmath::exp(*v - m);
        }
        let inv = (1.0 / vmath::sum(x)) as f32;
        for v in x.iter_mut() {
            *v *= inv;
        }
    }
}

vmath::avx2_fn! {
    /// `g <- y * (g - sum(g * y))`: the softmax backward in place of the output gradient.
    pub(crate) fn softmax_bwd_row_inplace(y: &[f32], g: &mut [f32]) {
        let dot = vmath::sum_prod_dev(g, y, 0.0) as f32;
        for (o, &a) in g.iter_mut().zip(y) {
            *o = a * (*o - dot);
        }
    }
}

vmath::avx2_fn! {
    fn softmax_bwd_row(y: &[f32], dy: &[f32], dx: &mut [f32]) {
        let dot = vmath::sum_prod_dev(dy, y, 0.0) as f32;
        for ((o, &a), &g) in dx.iter_mut().zip(y).zip(dy) {
            *o = a * (g - dot);
        }
    }
}

/// `(y, dy) -> dx` of the softmax.
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "gd-softmax-last-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, n) = rows(s1, l1, self.name())?;
        let (dy, _) = rows(s2, l2, self.name())?;
        if l1.dims() != l2.dims() {
            bail!("{}: output {:?} and gradient {:?} differ", self.name(), l1.dims(), l2.dims());
        }
        let mut dx = vec![0f32; y.len()];
        if n > 0 {
            let per = rows_per_task(n);
            dx.par_chunks_mut(n * per)
                .zip(y.par_chunks(n * per))
                .zip(dy.par_chunks(n * per))
                .for_each(|((dc, yc), gc)| {
                    for ((dr, yr), gr) in dc.chunks_mut(n).zip(yc.chunks(n)).zip(gc.chunks(n)) {
                        softmax_bwd_row(yr, gr, dr);
                    }
                });
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
