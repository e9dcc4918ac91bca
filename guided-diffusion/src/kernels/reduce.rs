//! Per-channel sums `[N, C, ...] -> [C]` as a custom op: the bias gradient of a convolution.
//! candle's `sum((0, 2, 3))` reduces over non-contiguous axes element by element, about 100x
//! slower than summing the contiguous `H x W` rows.
use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::policy::KernelPolicy;
use super::vmath;

type Result<T> = candle_core::Result<T>;

/// `sum over all axes but 1` of an f32 CPU tensor of rank >= 2, as `[C]`, with the fast
/// kernels on in `policy`; candle's `sum` otherwise. Its gradient broadcasts back.
pub fn channel_sum(policy: &KernelPolicy, x: &Tensor) -> Result<Tensor> {
    let rank = x.rank();
    if !matches!(x.device(), Device::Cpu) || x.dtype() != DType::F32 || rank < 2 || !policy.fast {
        let axes: Vec<usize> = (0..rank).filter(|&a| a != 1).collect();
        return x.sum(axes);
    }
    x.contiguous()?.apply_op1(ChannelSum)
}

struct ChannelSum;

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "gd-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::storage::f32_values(s, l, "channel-sum")?;
        let d = l.dims();
        if d.len() < 2 {
            bail!("channel-sum: expected [N, C, ...], got {d:?}");
        }
        let (n, c) = (d[0], d[1]);
        let p: usize = d[2..].iter().product();
        let mut out = vec![0f32; c];
        out.par_iter_mut().enumerate().for_each(|(ch, o)| {
            let s: f64 =
                (0..n).map(|i| vmath::sum(&x[(i * c + ch) * p..(i * c + ch + 1) * p])).sum();
            *o = s as f32;
        });
        Ok((CpuStorage::F32(out), Shape::from(c)))
    }

    fn bwd(&self, x: &Tensor, _s: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let mut shape = vec![1; x.rank()];
        shape[1] = x.dim(1)?;
        Ok(Some(g.reshape(shape)?.broadcast_as(x.shape())?.contiguous()?))
    }
}
