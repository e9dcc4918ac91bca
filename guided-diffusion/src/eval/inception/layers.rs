//! The building blocks of Inception-v3: torchvision's `BasicConv2d` (conv without bias,
//! BatchNorm with eps 0.001 in eval mode, ReLU) and the three pooling flavours the FID network
//! uses, including the TensorFlow quirks that pytorch-fid patches in: 3×3 average pooling that
//! does not count the zero padding, and 3×3 stride-1 max pooling with padding.
//!
//! With the fast kernels on (the [`Exec`]'s policy) and f32 tensors on the CPU, the
//! convolutions go through [`crate::kernels::conv2d`] (im2col + packed gemm with the bias fused,
//! Winograd for the 3×3 stride-1 layers, their weight forms kept while the network is frozen)
//! and the poolings through [`super::pool`]; otherwise through candle's own ops.
use super::pool::Pool;
use super::weights::WeightMap;
use crate::kernels::WeightForms;
use crate::models::Exec;
use crate::Result;
use candle_core::{DType, Device, Tensor};

/// BatchNorm epsilon of the TensorFlow graph (and torchvision's Inception).
pub const BN_EPS: f64 = 1e-3;

/// Convolution followed by BatchNorm and ReLU, with the BatchNorm folded into the convolution's
/// weight and bias at load time (in `f64`): `w' = w·γ/√(var+ε)`, `b' = β - mean·γ/√(var+ε)`.
#[derive(Clone)]
pub struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    pad: (usize, usize),
    /// The weight's Winograd transform (or packed form), kept while the network is frozen.
    forms: WeightForms,
}

impl ConvBn {
    /// Loads `{prefix}.conv.weight` and `{prefix}.bn.{weight,bias,running_mean,running_var}`.
    pub fn load(
        w: &WeightMap,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        kernel: (usize, usize),
        stride: usize,
        pad: (usize, usize),
        device: &Device,
    ) -> Result<Self> {
        let conv = w.get(&format!("{prefix}.conv.weight"), &[c_out, c_in, kernel.0, kernel.1])?;
        let gamma = w.get(&format!("{prefix}.bn.weight"), &[c_out])?;
        let beta = w.get(&format!("{prefix}.bn.bias"), &[c_out])?;
        let mean = w.get(&format!("{prefix}.bn.running_mean"), &[c_out])?;
        let var = w.get(&format!("{prefix}.bn.running_var"), &[c_out])?;
        let f64v =
            |t: &Tensor| -> Result<Vec<f64>> { Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?) };
        let (gamma, beta, mean, var) = (f64v(&gamma)?, f64v(&beta)?, f64v(&mean)?, f64v(&var)?);
        let scale: Vec<f64> =
            gamma.iter().zip(&var).map(|(g, v)| g / (v + BN_EPS).sqrt()).collect();
        let bias: Vec<f32> = (0..c_out).map(|o| (beta[o] - mean[o] * scale[o]) as f32).collect();
        let scale_t = Tensor::from_vec(scale, (c_out, 1, 1, 1), &Device::Cpu)?;
        let weight = conv.to_dtype(DType::F64)?.broadcast_mul(&scale_t)?.to_dtype(DType::F32)?;
        Ok(Self {
            weight: weight.to_device(device)?,
            bias: Tensor::from_vec(bias, c_out, device)?,
            stride,
            pad,
            forms: WeightForms::default(),
        })
    }

    pub fn forward(&self, x: &Tensor, exec: &Exec) -> Result<Tensor> {
        let (ph, pw) = self.pad;
        let (p, forms) = (&exec.policy, self.forms.for_call(&self.weight, exec.forms_generation()));
        // The kernels take one padding for both axes: the 1×n / n×1 layers pad explicitly.
        let y = if ph == pw {
            crate::kernels::conv2d(p, x, &self.weight, Some(&self.bias), self.stride, ph, forms)?
        } else {
            let xp = x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?;
            crate::kernels::conv2d(p, &xp, &self.weight, Some(&self.bias), self.stride, 0, forms)?
        };
        if fast(exec, &y) {
            return Ok(super::pool::relu_in_place(y)?);
        }
        Ok(y.relu()?)
    }
}

/// Whether [`super::pool`] takes `x`: the fast kernels on, `x` f32 on the CPU.
fn fast(exec: &Exec, x: &Tensor) -> bool {
    exec.policy.fast && x.device().is_cpu() && x.dtype() == DType::F32
}

/// 3×3 max pooling, stride 2, no padding (`F.max_pool2d(x, 3, 2)`).
pub fn max_pool_3x3_s2(x: &Tensor, exec: &Exec) -> Result<Tensor> {
    if fast(exec, x) {
        return Ok(Pool::MaxS2.apply(x)?);
    }
    Ok(x.max_pool2d_with_stride(3, 2)?)
}

/// 3×3 max pooling, stride 1, padding 1 (FIDInceptionE_2's branch pool). Padding by
/// replicating the border is exact here: every padded value is also inside its window.
pub fn max_pool_3x3_s1_p1(x: &Tensor, exec: &Exec) -> Result<Tensor> {
    if fast(exec, x) {
        return Ok(Pool::MaxS1.apply(x)?);
    }
    Ok(x.pad_with_same(2, 1, 1)?.pad_with_same(3, 1, 1)?.max_pool2d_with_stride(3, 1)?)
}

/// 3×3 average pooling, stride 1, padding 1, `count_include_pad=False` (TensorFlow's SAME
/// average pooling, as pytorch-fid patches it): border outputs average only the real pixels.
pub fn avg_pool_3x3_s1_p1_exclude_pad(x: &Tensor, exec: &Exec) -> Result<Tensor> {
    if fast(exec, x) {
        return Ok(Pool::AvgS1ExcludePad.apply(x)?);
    }
    let (_, _, h, w) = x.dims4()?;
    let sum9 = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?.avg_pool2d_with_stride(3, 1)?;
    let count =
        |i: usize, n: usize| -> f32 { (1 + (i > 0) as usize + (i + 1 < n) as usize) as f32 };
    let factors: Vec<f32> =
        (0..h).flat_map(|i| (0..w).map(move |j| 9.0 / (count(i, h) * count(j, w)))).collect();
    let factors = Tensor::from_vec(factors, (1, 1, h, w), x.device())?;
    Ok(sum9.broadcast_mul(&factors)?)
}

/// Global average pooling to `[batch, channels]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.mean(3)?.mean(2)?)
}
