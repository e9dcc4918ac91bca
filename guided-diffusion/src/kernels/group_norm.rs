//! Fused GroupNorm (+ affine, + AdaGN scale/shift, + SiLU) as a candle custom op with autograd.
//!
//! candle composes GroupNorm from ~10 broadcast ops and SiLU from several more, each a full
//! pass over the tensor with its own allocation, and their backward passes are slower still.
//! Here the forward is one pass and the backward one op computing the gradients of the input,
//! of gamma/beta and of scale/shift together (returned packed in one tensor and split with
//! views). Second derivatives are not supported (the backward op has no backward).
use candle_core::{bail, CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};

use super::group_norm_cpu::{self, Gn};
use super::policy::KernelPolicy;
use super::storage::f32_values;

type Result<T> = candle_core::Result<T>;

/// `act((GN(x) * gamma + beta) * (1 + scale) + shift)` over `x: [N, C, ...]` with `groups`
/// groups, where `scale_shift` is `[N, 2C]` (or `[N, 2C, 1, 1]`, scale first) and `act` is
/// SiLU when `silu`. Returns `None` where the fast kernels do not apply (off in `policy`, not
/// f32 on the CPU, channels not divisible by `groups`); the caller then uses candle's ops.
pub fn group_norm(
    policy: &KernelPolicy,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    scale_shift: Option<&Tensor>,
    silu: bool,
) -> Result<Option<Tensor>> {
    let cpu_f32 = |t: &Tensor| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32;
    let dims = x.dims();
    if !policy.fast || dims.len() < 3 || groups == 0 || !dims[1].is_multiple_of(groups) {
        return Ok(None);
    }
    let (n, c) = (dims[0], dims[1]);
    if !cpu_f32(x) || !cpu_f32(gamma) || !cpu_f32(beta) || gamma.dims() != [c] || beta.dims() != [c]
    {
        return Ok(None);
    }
    let ss = match scale_shift {
        Some(s) if cpu_f32(s) && s.elem_count() == n * 2 * c && s.dim(0)? == n => {
            s.reshape((n, 2 * c))?
        }
        Some(_) => return Ok(None),
        None => Tensor::zeros((n, 2 * c), DType::F32, x.device())?,
    };
    let gb = Tensor::stack(&[gamma, beta], 0)?;
    let op = GnFwd { groups, eps, silu };
    Ok(Some(x.contiguous()?.apply_op3(&gb.contiguous()?, &ss.contiguous()?, op)?))
}

/// The problem of `x` (dims `[N, C, ...]`) with `gb: [2, C]` and `ss: [N, 2C]`.
fn problem(
    xd: &[usize],
    gbd: &[usize],
    ssd: &[usize],
    groups: usize,
    eps: f64,
    silu: bool,
    op: &str,
) -> Result<Gn> {
    if xd.len() < 3 {
        bail!("{op}: input must be [N, C, ...], got {xd:?}");
    }
    let (n, c) = (xd[0], xd[1]);
    if groups == 0 || !c.is_multiple_of(groups) || gbd != [2, c] || ssd != [n, 2 * c] {
        bail!("{op}: input {xd:?}, {groups} groups, gamma/beta {gbd:?}, scale/shift {ssd:?} do not match");
    }
    Ok(Gn { n, c, hw: xd[2..].iter().product(), groups, eps, silu })
}

/// Forward: `(x, [gamma; beta], [scale, shift]) -> y`.
struct GnFwd {
    groups: usize,
    eps: f64,
    silu: bool,
}

impl CustomOp3 for GnFwd {
    fn name(&self) -> &'static str {
        "gd-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let p = problem(l1.dims(), l2.dims(), l3.dims(), self.groups, self.eps, self.silu, op)?;
        let (x, gb, ss) =
            (f32_values(s1, l1, op)?, f32_values(s2, l2, op)?, f32_values(s3, l3, op)?);
        let mut y = vec![0f32; x.len()];
        group_norm_cpu::forward(&p, x, gb, ss, &mut y);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gb: &Tensor,
        ss: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c) = (x.dim(0)?, x.dim(1)?);
        let xl = x.elem_count();
        // One packed tensor [dx | d(gamma, beta) | d(scale, shift)], split with views.
        let params = Tensor::cat(&[gb.flatten_all()?, ss.flatten_all()?], 0)?;
        let op = GnBwd { groups: self.groups, eps: self.eps, silu: self.silu, n, c };
        let packed = x.apply_op3_no_bwd(&dy.contiguous()?, &params, &op)?;
        let dx = x.track_op().then(|| packed.narrow(0, 0, xl)?.reshape(x.shape())).transpose()?;
        let dgb =
            gb.track_op().then(|| packed.narrow(0, xl, 2 * c)?.reshape((2, c))).transpose()?;
        let dss = ss
            .track_op()
            .then(|| packed.narrow(0, xl + 2 * c, n * 2 * c)?.reshape((n, 2 * c)))
            .transpose()?;
        Ok((dx, dgb, dss))
    }
}

/// Backward: `(x, dy, [gamma; beta; scale, shift] flat) -> [dx | dgb | dss]` flat.
struct GnBwd {
    groups: usize,
    eps: f64,
    silu: bool,
    n: usize,
    c: usize,
}

impl CustomOp3 for GnBwd {
    fn name(&self) -> &'static str {
        "gd-group-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (n, c) = (self.n, self.c);
        let p = problem(l1.dims(), &[2, c], &[n, 2 * c], self.groups, self.eps, self.silu, op)?;
        let (x, dy, params) =
            (f32_values(s1, l1, op)?, f32_values(s2, l2, op)?, f32_values(s3, l3, op)?);
        if l2.dims() != l1.dims() || params.len() != 2 * c + n * 2 * c || (p.n, p.c) != (n, c) {
            bail!(
                "{op}: gradient {:?} / parameters ({}) do not match input {:?}",
                l2.dims(),
                params.len(),
                l1.dims()
            );
        }
        let (gb, ss) = params.split_at(2 * c);
        let mut out = vec![0f32; x.len() + 2 * c + n * 2 * c];
        let (dx, rest) = out.split_at_mut(x.len());
        let (dgb, dss) = rest.split_at_mut(2 * c);
        group_norm_cpu::backward(&p, x, gb, ss, dy, dx, dgb, dss);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}
