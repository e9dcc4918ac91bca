//! Nearest-neighbour 2x upsampling and its adjoint, 2x2 sum pooling, as a pair of custom ops
//! that are each other's backward (NCHW, f32).
//!
//! Besides speed (candle's backward of `upsample_nearest2d` is a grouped convolution), this
//! fixes a candle 0.11 bug: that backward *assigns* the input gradient instead of adding to
//! it, dropping the contributions of the input's other consumers (as in the reference's
//! up-sampling ResBlock, where `x` feeds both the norm and the upsampling).
use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::policy::KernelPolicy;

type Result<T> = candle_core::Result<T>;

/// `[N, C, H, W] -> [N, C, 2H, 2W]`, nearest neighbour. Where the fast kernels do not apply
/// (off in `policy`, not f32 on the CPU), a broadcast + reshape of candle ops (not candle's
/// `upsample_nearest2d`, for its backward).
pub fn upsample_nearest2x(policy: &KernelPolicy, x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if !policy.fast || !matches!(x.device(), Device::Cpu) || x.dtype() != DType::F32 {
        let y = x.reshape((n, c, h, 1, w, 1))?.broadcast_as((n, c, h, 2, w, 2))?;
        return y.contiguous()?.reshape((n, c, 2 * h, 2 * w));
    }
    x.contiguous()?.apply_op1(Up2)
}

/// `[N, C, 2H, 2W] -> [N, C, H, W]`, the sum of each 2x2 block (the adjoint of
/// [`upsample_nearest2x`]); f32 CPU tensors with even height and width only.
pub fn sum_pool2x(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SumPool2)
}

/// The contiguous f32 data of an NCHW argument and its `(n, c, h, w)`.
type Nchw<'a> = (&'a [f32], (usize, usize, usize, usize));

fn arg<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<Nchw<'a>> {
    let (n, c, h, w) = l.shape().dims4()?;
    Ok((super::storage::f32_values(s, l, op)?, (n, c, h, w)))
}

struct Up2;

impl CustomOp1 for Up2 {
    fn name(&self) -> &'static str {
        "gd-upsample-nearest2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, (n, c, h, w)) = arg(s, l, self.name())?;
        let mut y = vec![0f32; n * c * h * w * 4];
        if w > 0 && h > 0 {
            y.par_chunks_mut(4 * w * h).zip(x.par_chunks(w * h)).for_each(|(yp, xp)| {
                for (r, xr) in xp.chunks(w).enumerate() {
                    let (top, bottom) = yp[4 * w * r..4 * w * (r + 1)].split_at_mut(2 * w);
                    for (o, &v) in top.chunks_exact_mut(2).zip(xr) {
                        o[0] = v;
                        o[1] = v;
                    }
                    bottom.copy_from_slice(top);
                }
            });
        }
        Ok((CpuStorage::F32(y), Shape::from((n, c, 2 * h, 2 * w))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(sum_pool2x(g)?))
    }
}

struct SumPool2;

impl CustomOp1 for SumPool2 {
    fn name(&self) -> &'static str {
        "gd-sum-pool2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, (n, c, h2, w2)) = arg(s, l, self.name())?;
        if h2 % 2 != 0 || w2 % 2 != 0 {
            bail!("{}: height and width must be even, got {h2}x{w2}", self.name());
        }
        let (h, w) = (h2 / 2, w2 / 2);
        let mut y = vec![0f32; n * c * h * w];
        if w > 0 && h > 0 {
            y.par_chunks_mut(w * h).zip(x.par_chunks(4 * w * h)).for_each(|(yp, xp)| {
                for (r, yr) in yp.chunks_mut(w).enumerate() {
                    let (top, bottom) = xp[4 * w * r..4 * w * (r + 1)].split_at(2 * w);
                    for ((o, t), b) in
                        yr.iter_mut().zip(top.chunks_exact(2)).zip(bottom.chunks_exact(2))
                    {
                        *o = (t[0] + t[1]) + (b[0] + b[1]);
                    }
                }
            });
        }
        Ok((CpuStorage::F32(y), Shape::from((n, c, h, w))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1(Up2)?))
    }
}
