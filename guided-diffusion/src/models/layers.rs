//! The small building blocks of the ADM networks, with the reference's numerics and
//! parameter names: GroupNorm32, 3x3 / 1x1 convolutions, linear layers, the sinusoidal timestep
//! embedding, dropout; and [`Exec`], how a call runs, which a network hands down its blocks.
//!
//! Parameters are requested from a `candle_nn::VarBuilder` with PyTorch's default
//! initialisation as hints, so the same constructors serve loading (hints ignored), fresh
//! training (a `VarMap` applies them) and checkpoint verification (see `load::verify`).
//! Constructors only use view operations on the weights they get (`squeeze`, never `reshape`),
//! so verification can hand out zero-sized broadcast placeholders.
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::kernels::{self, KernelPolicy, WeightForms};
use crate::Result;

/// How one call of a network runs, handed down its blocks: the [`KernelPolicy`] the network
/// holds, and whether its weights are frozen (their derived forms kept by the layers that own
/// them, [`kernels::forms`]). A network holds one ([`Exec::freeze`] and [`Exec::thaw`] change
/// it); nothing of it is process-wide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exec {
    pub policy: KernelPolicy,
    frozen: bool,
    /// Counts the freezes, so that forms kept before a write (and a new freeze) are dropped.
    generation: u64,
}

impl Exec {
    pub fn new(policy: KernelPolicy) -> Self {
        Exec { policy, ..Exec::default() }
    }

    /// From now on the weights are not written: their derived forms are made once and kept.
    /// Freezing again (after writing the weights) drops the forms kept before.
    pub fn freeze(&mut self) {
        self.generation += 1;
        self.frozen = true;
    }

    /// The weights may be written: derived forms are made per call again.
    pub fn thaw(&mut self) {
        self.frozen = false;
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// The generation whose forms a layer may keep (`None`: not frozen).
    pub fn forms_generation(&self) -> Option<u64> {
        self.frozen.then_some(self.generation)
    }
}

/// PyTorch's default init for conv / linear weights: kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in)).
fn torch_uniform(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// `GroupNorm32(32, channels)`: 32 groups, eps 1e-5, affine, computed in float32.
///
/// With the fast kernels on (see [`crate::kernels`]) and f32 CPU tensors, the norm and what
/// follows it (affine, AdaGN scale/shift, SiLU) run as one fused op; otherwise as candle ops.
#[derive(Debug, Clone)]
pub struct GroupNorm32 {
    inner: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
}

impl GroupNorm32 {
    pub const GROUPS: usize = 32;
    pub const EPS: f64 = 1e-5;

    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        let inner = candle_nn::GroupNorm::new(
            weight.clone(),
            bias.clone(),
            channels,
            Self::GROUPS,
            Self::EPS,
        )?;
        Ok(GroupNorm32 { inner, weight, bias })
    }

    /// The fused kernel, or `None` where it does not apply.
    fn fused(
        &self,
        ex: &Exec,
        x: &Tensor,
        scale_shift: Option<&Tensor>,
        silu: bool,
    ) -> Result<Option<Tensor>> {
        Ok(kernels::group_norm(
            &ex.policy,
            x,
            &self.weight,
            &self.bias,
            Self::GROUPS,
            Self::EPS,
            scale_shift,
            silu,
        )?)
    }

    /// Normalises `[N, C, ...]` in float32 and casts back to the input dtype.
    pub fn forward(&self, ex: &Exec, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.fused(ex, x, None, false)? {
            return Ok(y);
        }
        let dtype = x.dtype();
        if dtype == DType::F32 {
            return Ok(self.inner.forward(x)?);
        }
        Ok(self.inner.forward(&x.to_dtype(DType::F32)?)?.to_dtype(dtype)?)
    }

    /// `silu(GN(x))`, the pair that opens every block.
    pub fn forward_silu(&self, ex: &Exec, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.fused(ex, x, None, true)? {
            return Ok(y);
        }
        Ok(self.forward(ex, x)?.silu()?)
    }

    /// `GN(x) * (1 + scale) + shift` (AdaGN), `scale`/`shift` broadcast from `[N, C, 1, 1]`.
    pub fn forward_scale_shift(
        &self,
        ex: &Exec,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
    ) -> Result<Tensor> {
        self.scale_shift(ex, x, scale, shift, false)
    }

    /// `silu(GN(x) * (1 + scale) + shift)`, the AdaGN + SiLU of a ResBlock's out layers.
    pub fn forward_scale_shift_silu(
        &self,
        ex: &Exec,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
    ) -> Result<Tensor> {
        self.scale_shift(ex, x, scale, shift, true)
    }

    fn scale_shift(
        &self,
        ex: &Exec,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        silu: bool,
    ) -> Result<Tensor> {
        if scale.dims() == shift.dims() && scale.rank() >= 2 {
            let ss = Tensor::cat(&[scale, shift], 1)?;
            if let Some(y) = self.fused(ex, x, Some(&ss), silu)? {
                return Ok(y);
            }
        }
        let h = self.forward(ex, x)?;
        let h = h.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?;
        Ok(if silu { h.silu()? } else { h })
    }
}

/// A 2-D convolution (`nn.Conv2d`) with bias, square kernel, and the derived forms of its
/// weight while its network is frozen.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
    forms: WeightForms,
}

impl Conv2d {
    pub fn new(
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        zero_init: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let fan_in = cin * kernel * kernel;
        let (wi, bi) = if zero_init {
            (Init::Const(0.0), Init::Const(0.0))
        } else {
            (torch_uniform(fan_in), torch_uniform(fan_in))
        };
        let weight = vb.get_with_hints((cout, cin, kernel, kernel), "weight", wi)?;
        let bias = vb.get_with_hints(cout, "bias", bi)?;
        Ok(Conv2d { weight, bias, stride, padding, forms: WeightForms::default() })
    }

    /// 3x3, padding 1, stride 1 (`conv_nd(2, cin, cout, 3, padding=1)`).
    pub fn k3(cin: usize, cout: usize, zero_init: bool, vb: VarBuilder) -> Result<Self> {
        Self::new(cin, cout, 3, 1, 1, zero_init, vb)
    }

    pub fn in_channels(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Whether the derived forms of the weight are kept (for tests).
    pub fn keeps_forms(&self) -> bool {
        self.forms.is_kept()
    }

    /// The fast CPU kernel when the policy has it (see [`crate::kernels`]), candle's `conv2d`
    /// otherwise.
    pub fn forward(&self, ex: &Exec, x: &Tensor) -> Result<Tensor> {
        let forms = self.forms.for_call(&self.weight, ex.forms_generation());
        let (w, b) = (&self.weight, Some(&self.bias));
        Ok(kernels::conv2d(&ex.policy, x, w, b, self.stride, self.padding, forms)?)
    }
}

/// A kernel-size-1 convolution over `[N, C, T]` (`conv_nd(1, cin, cout, 1)`), or over
/// `[N, C, H, W]` (2-D 1x1), computed as a matrix product.
#[derive(Debug, Clone)]
pub struct Conv1x1 {
    /// `[cout, cin]`
    weight: Tensor,
    /// The same weight as `[cout, cin, 1, 1]`, for the convolution kernel.
    weight_4d: Tensor,
    bias: Tensor,
    /// Derived forms of `weight_4d` (e.g. its bf16 packing) while the network is frozen.
    forms: WeightForms,
}

impl Conv1x1 {
    /// `dims` = 1 for `conv_nd(1, ...)` (weight `[cout, cin, 1]`), 2 for a 2-D 1x1 conv
    /// (weight `[cout, cin, 1, 1]`).
    pub fn new(
        cin: usize,
        cout: usize,
        dims: usize,
        zero_init: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (wi, bi) = if zero_init {
            (Init::Const(0.0), Init::Const(0.0))
        } else {
            (torch_uniform(cin), torch_uniform(cin))
        };
        let weight = if dims == 1 {
            vb.get_with_hints((cout, cin, 1), "weight", wi)?.squeeze(2)?
        } else {
            vb.get_with_hints((cout, cin, 1, 1), "weight", wi)?.squeeze(3)?.squeeze(2)?
        };
        let bias = vb.get_with_hints(cout, "bias", bi)?;
        let weight_4d = weight.unsqueeze(2)?.unsqueeze(3)?;
        Ok(Conv1x1 { weight, weight_4d, bias, forms: WeightForms::default() })
    }

    /// `[N, Cin, T] -> [N, Cout, T]`; the fast convolution kernel when it applies (a 1x1
    /// convolution over `[N, Cin, T, 1]`), else a broadcast matmul.
    pub fn forward(&self, ex: &Exec, x: &Tensor) -> Result<Tensor> {
        if x.rank() == 3 && ex.policy.applies_to(&[x, &self.weight, &self.bias]) {
            let forms = self.forms.for_call(&self.weight_4d, ex.forms_generation());
            let (x4, w, b) = (x.unsqueeze(3)?, &self.weight_4d, Some(&self.bias));
            return Ok(kernels::conv2d(&ex.policy, &x4, w, b, 1, 0, forms)?.squeeze(3)?);
        }
        let y = self.weight.broadcast_matmul(x)?;
        Ok(y.broadcast_add(&self.bias.unsqueeze(1)?)?)
    }

    /// `[N, Cin, H, W] -> [N, Cout, H, W]`
    pub fn forward_2d(&self, ex: &Exec, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let y = self.forward(ex, &x.reshape((n, c, h * w))?)?;
        Ok(y.reshape((n, (), h, w))?)
    }
}

/// `nn.Linear` with PyTorch's default init.
pub fn linear(cin: usize, cout: usize, vb: VarBuilder) -> Result<candle_nn::Linear> {
    let weight = vb.get_with_hints((cout, cin), "weight", torch_uniform(cin))?;
    let bias = vb.get_with_hints(cout, "bias", torch_uniform(cin))?;
    Ok(candle_nn::Linear::new(weight, Some(bias)))
}

/// `nn.Embedding` (init N(0, 1) as PyTorch).
pub fn embedding(n: usize, dim: usize, vb: VarBuilder) -> Result<Tensor> {
    Ok(vb.get_with_hints((n, dim), "weight", Init::Randn { mean: 0.0, stdev: 1.0 })?)
}

/// The sinusoidal timestep embedding of the reference (`nn.timestep_embedding`):
/// `freqs = exp(-ln(10000) * arange(half) / half)` in float32, `args = t[:, None] * freqs`,
/// `[cos(args), sin(args)]` — cosine first — and a zero column for odd `dim`.
/// `t` may be fractional (rescaled timesteps).
pub fn timestep_embedding(t: &Tensor, dim: usize, device: &Device) -> Result<Tensor> {
    let ts: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let half = dim / 2;
    // Same float32 operation order as `-math.log(10000) * arange(half, float32) / half`.
    let neg_log = -(10000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half).map(|i| ((neg_log * i as f32) / half as f32).exp()).collect();
    let mut out = Vec::with_capacity(ts.len() * dim);
    for &tv in &ts {
        out.extend(freqs.iter().map(|&f| (tv * f).cos()));
        out.extend(freqs.iter().map(|&f| (tv * f).sin()));
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Ok(Tensor::from_vec(out, (ts.len(), dim), device)?)
}

/// Inverted dropout, active only in training.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if !train || p <= 0.0 {
        return Ok(x.clone());
    }
    Ok(candle_nn::ops::dropout(x, p as f32)?)
}

/// Softmax over the last dimension, computed in float32 (differentiable).
pub fn softmax_last_f32(policy: &KernelPolicy, x: &Tensor) -> Result<Tensor> {
    if let Some(y) = kernels::softmax_last(policy, x)? {
        return Ok(y);
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    // Softmax is shift invariant: the detached max changes no gradient.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?.to_dtype(dtype)?)
}
