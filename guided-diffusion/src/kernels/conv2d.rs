//! 2-D convolution (NCHW, f32, dilation 1, one group) as candle custom ops with autograd.
//!
//! [`conv2d`] is the entry point the model layers call: the fast CPU path when the
//! [`KernelPolicy`] has the fast kernels on and the inputs are f32 tensors on the CPU, else
//! candle's own `conv2d` (+ bias). The forward op's backward builds the input and weight
//! gradients from two further custom ops ([`conv2d_input_grad`], [`conv2d_weight_grad`]), whose
//! own backward passes are convolutions again, so second derivatives work too. Every op keeps
//! the policy and the weight's kept forms ([`super::forms`]) it was made with, so its backward
//! computes the same way wherever it runs.
use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor};

use super::conv_cpu;
use super::conv_plan::Conv;
use super::forms::Derived;
use super::im2col::Geom;
use super::policy::KernelPolicy;

type Result<T> = candle_core::Result<T>;

/// Stride and zero padding of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: usize,
    pub padding: usize,
}

/// `conv2d(x, w) + bias` with `x: [N, C, H, W]`, `w: [CO, C, KH, KW]`, `bias: [CO]`, the given
/// stride and padding; the fast kernels when `policy` has them and they apply, candle's op
/// otherwise. `forms`: the kept derived forms of `w`, from the layer that owns it (`None`:
/// made per call).
pub fn conv2d(
    policy: &KernelPolicy,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    forms: Option<Arc<Derived>>,
) -> Result<Tensor> {
    let p = ConvParams { stride, padding };
    // candle does not check these (its output size would underflow).
    if let (Ok((_, c, h, wd)), Ok((_, _, kh, kw))) = (x.dims4(), w.dims4()) {
        geom(c, h, wd, kh, kw, p, "conv2d")?;
    }
    if policy.fast && fast_conv_applies(x, w, bias, p) {
        let zeros;
        let b = match bias {
            Some(b) => b,
            None => {
                zeros = Tensor::zeros(w.dim(0)?, DType::F32, x.device())?;
                &zeros
            }
        };
        let op = ConvFwd { p, policy: *policy, forms };
        return x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, op);
    }
    let y = x.conv2d(w, padding, stride, 1, 1)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

/// The gradient of [`conv2d`] with respect to its input of spatial size `(h, w)`, given the
/// output gradient `gy: [N, CO, HO, WO]` and the weight `w: [CO, C, KH, KW]` with its kept
/// `forms` (fast path only, whatever `policy.fast` says).
pub fn conv2d_input_grad(
    policy: &KernelPolicy,
    gy: &Tensor,
    w: &Tensor,
    p: ConvParams,
    (h, wd): (usize, usize),
    forms: Option<Arc<Derived>>,
) -> Result<Tensor> {
    check_cpu_f32(&[gy, w], "conv2d_input_grad")?;
    let op = ConvInputGrad { p, h, w: wd, policy: *policy, forms };
    gy.contiguous()?.apply_op2(&w.contiguous()?, op)
}

/// The gradient of [`conv2d`] with respect to its `kh x kw` weight, given the input
/// `x: [N, C, H, W]` and the output gradient `gy: [N, CO, HO, WO]` (fast path only, whatever
/// `policy.fast` says).
pub fn conv2d_weight_grad(
    policy: &KernelPolicy,
    x: &Tensor,
    gy: &Tensor,
    p: ConvParams,
    kh: usize,
    kw: usize,
) -> Result<Tensor> {
    check_cpu_f32(&[x, gy], "conv2d_weight_grad")?;
    x.contiguous()?.apply_op2(&gy.contiguous()?, ConvWeightGrad { p, kh, kw, policy: *policy })
}

fn fast_conv_applies(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: ConvParams) -> bool {
    let on_cpu_f32 = |t: &Tensor| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32;
    let (Ok((_, c, h, wd)), Ok((co, c2, kh, kw))) = (x.dims4(), w.dims4()) else { return false };
    on_cpu_f32(x)
        && on_cpu_f32(w)
        && bias.is_none_or(|b| on_cpu_f32(b) && b.dims() == [co])
        && c == c2
        && Geom::new(c, h, wd, kh, kw, p.stride, p.padding, p.padding).is_some()
}

fn check_cpu_f32(ts: &[&Tensor], op: &str) -> Result<()> {
    for t in ts {
        if !matches!(t.device(), Device::Cpu) || t.dtype() != DType::F32 {
            bail!(
                "{op}: the fast kernels take f32 tensors on the CPU, got {:?} on {:?}",
                t.dtype(),
                t.device()
            );
        }
    }
    Ok(())
}

/// The contiguous f32 data of a custom-op argument and its dims.
fn f32_arg<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<(&'a [f32], Vec<usize>)> {
    Ok((super::storage::f32_values(s, l, op)?, l.dims().to_vec()))
}

fn dims4(d: &[usize], op: &str, what: &str) -> Result<(usize, usize, usize, usize)> {
    match *d {
        [a, b, c, e] => Ok((a, b, c, e)),
        _ => bail!("{op}: {what} must be 4-D, got {d:?}"),
    }
}

fn geom(
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    p: ConvParams,
    op: &str,
) -> Result<Geom> {
    match Geom::new(c, h, w, kh, kw, p.stride, p.padding, p.padding) {
        Some(g) => Ok(g),
        None => bail!(
            "{op}: kernel {kh}x{kw} does not fit input {h}x{w} with padding {} (stride {})",
            p.padding,
            p.stride
        ),
    }
}

/// The input, weight and output lengths of `cv`, or an error if one overflows a `usize`
/// (sizes come from files and flags; a wrapped product would under-allocate).
fn lens(cv: &Conv, op: &str) -> Result<(usize, usize, usize)> {
    match cv.lens() {
        Some(l) => Ok(l),
        None => bail!("{op}: the sizes of {cv:?} overflow the address space"),
    }
}

/// Forward: `(x, w, bias) -> y` as `policy` says (in bf16 where it pays, `conv_bf16::pays`;
/// the gradients as the policy says for them); `forms` keeps derived forms of a frozen weight.
struct ConvFwd {
    p: ConvParams,
    policy: KernelPolicy,
    forms: Option<Arc<Derived>>,
}

impl CustomOp3 for ConvFwd {
    fn name(&self) -> &'static str {
        "gd-conv2d"
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
        let (x, xd) = f32_arg(s1, l1, op)?;
        let (w, wdims) = f32_arg(s2, l2, op)?;
        let (b, bd) = f32_arg(s3, l3, op)?;
        let (n, c, h, wd) = dims4(&xd, op, "input")?;
        let (co, c2, kh, kw) = dims4(&wdims, op, "weight")?;
        if c != c2 || bd != [co] {
            bail!("{op}: input {xd:?}, weight {wdims:?} and bias {bd:?} do not match");
        }
        let g = geom(c, h, wd, kh, kw, self.p, op)?;
        let cv = Conv { n, co, g };
        let (_, _, out_len) = lens(&cv, op)?;
        let mut y = vec![0f32; out_len];
        let unit = self.policy.bf16_unit();
        if self.policy.bf16() && super::conv_bf16::pays(&cv, unit, self.policy.winograd) {
            super::conv_bf16::forward(
                &cv,
                x,
                w,
                false,
                b,
                &mut y,
                unit,
                self.forms.as_ref().map(|d| &d.bf16),
            );
        } else {
            let winograd = self.forms.as_ref().map(|d| &d.winograd);
            conv_cpu::forward(&cv, x, w, Some(b), &mut y, self.policy.winograd, winograd);
        }
        Ok((CpuStorage::F32(y), Shape::from((n, co, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, _, h, wd) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let pol = &self.policy;
        let gx = if x.track_op() {
            Some(conv2d_input_grad(pol, gy, w, self.p, (h, wd), self.forms.clone())?)
        } else {
            None
        };
        let gw =
            if w.track_op() { Some(conv2d_weight_grad(pol, x, gy, self.p, kh, kw)?) } else { None };
        let gb = if b.track_op() { Some(super::channel_sum(pol, gy)?) } else { None };
        Ok((gx, gw, gb))
    }
}

/// Input gradient: `(gy, w) -> dx` for an input of spatial size `h x w`, as `policy` says
/// (in bf16 for stride 1); `forms` keeps derived forms of a frozen weight.
struct ConvInputGrad {
    p: ConvParams,
    h: usize,
    w: usize,
    policy: KernelPolicy,
    forms: Option<Arc<Derived>>,
}

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "gd-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (gy, gd) = f32_arg(s1, l1, op)?;
        let (w, wdims) = f32_arg(s2, l2, op)?;
        let (n, co, ho, wo) = dims4(&gd, op, "output gradient")?;
        let (co2, c, kh, kw) = dims4(&wdims, op, "weight")?;
        let g = geom(c, self.h, self.w, kh, kw, self.p, op)?;
        if co != co2 || (g.ho, g.wo) != (ho, wo) {
            bail!(
                "{op}: output gradient {gd:?} does not match weight {wdims:?} and input {}x{}",
                self.h,
                self.w
            );
        }
        let cv = Conv { n, co, g };
        let (in_len, _, _) = lens(&cv, op)?;
        let mut dx = vec![0f32; in_len];
        conv_cpu::input_grad(&cv, gy, w, &mut dx, &self.policy, self.forms.as_deref());
        Ok((CpuStorage::F32(dx), Shape::from((n, c, self.h, self.w))))
    }

    /// `dx = A(w) gy` is linear in both: `d gy = conv(u, w)`, `d w = weight_grad(u, gy)`.
    fn bwd(
        &self,
        gy: &Tensor,
        w: &Tensor,
        _dx: &Tensor,
        u: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, _, kh, kw) = w.dims4()?;
        let pol = &self.policy;
        let dgy = if gy.track_op() {
            Some(conv2d(pol, u, w, None, self.p.stride, self.p.padding, self.forms.clone())?)
        } else {
            None
        };
        let dw =
            if w.track_op() { Some(conv2d_weight_grad(pol, u, gy, self.p, kh, kw)?) } else { None };
        Ok((dgy, dw))
    }
}

/// Weight gradient: `(x, gy) -> dw` for a `kh x kw` kernel, as `policy` says.
struct ConvWeightGrad {
    p: ConvParams,
    kh: usize,
    kw: usize,
    policy: KernelPolicy,
}

impl CustomOp2 for ConvWeightGrad {
    fn name(&self) -> &'static str {
        "gd-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (x, xd) = f32_arg(s1, l1, op)?;
        let (gy, gd) = f32_arg(s2, l2, op)?;
        let (n, c, h, wd) = dims4(&xd, op, "input")?;
        let (n2, co, ho, wo) = dims4(&gd, op, "output gradient")?;
        let g = geom(c, h, wd, self.kh, self.kw, self.p, op)?;
        if n != n2 || (g.ho, g.wo) != (ho, wo) {
            bail!("{op}: input {xd:?} and output gradient {gd:?} do not match");
        }
        let cv = Conv { n, co, g };
        let (_, w_len, _) = lens(&cv, op)?;
        let mut dw = vec![0f32; w_len];
        let unit = self.policy.bf16_unit();
        if self.policy.bf16() && super::conv_bf16::weight_grad_applies(&cv, unit) {
            super::conv_bf16::weight_grad(unit, &cv, x, gy, &mut dw);
        } else {
            conv_cpu::weight_grad(&cv, x, gy, &mut dw, self.policy.winograd);
        }
        Ok((CpuStorage::F32(dw), Shape::from((co, c, self.kh, self.kw))))
    }

    /// `dw = B(x) gy` is linear in both: `d x = input_grad(gy, v)`, `d gy = conv(x, v)`.
    fn bwd(
        &self,
        x: &Tensor,
        gy: &Tensor,
        _dw: &Tensor,
        v: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, _, h, wd) = x.dims4()?;
        let pol = &self.policy;
        let dx = if x.track_op() {
            Some(conv2d_input_grad(pol, gy, v, self.p, (h, wd), None)?)
        } else {
            None
        };
        let dgy = if gy.track_op() {
            Some(conv2d(pol, x, v, None, self.p.stride, self.p.padding, None)?)
        } else {
            None
        };
        Ok((dx, dgy))
    }
}
