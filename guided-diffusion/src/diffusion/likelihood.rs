//! Likelihood helpers of the reference's `losses.py`: the KL between Gaussians, the
//! tanh-approximated normal CDF and the discretized Gaussian log-likelihood of 8-bit images
//! (the decoder term at t = 0). Element-wise, differentiable, f32 with the reference's order.
use candle_core::Tensor;

use crate::Result;

/// KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), element-wise (tensors broadcast):
/// `0.5 * (-1 + lv2 - lv1 + exp(lv1 - lv2) + (m1 - m2)^2 * exp(-lv2))`.
pub fn normal_kl(
    mean1: &Tensor,
    logvar1: &Tensor,
    mean2: &Tensor,
    logvar2: &Tensor,
) -> Result<Tensor> {
    let a = (logvar2
        .broadcast_add(&Tensor::new(-1f32, logvar2.device())?.to_dtype(logvar2.dtype())?)?)
    .broadcast_sub(logvar1)?;
    let b = a.broadcast_add(&logvar1.broadcast_sub(logvar2)?.exp()?)?;
    let c = mean1.broadcast_sub(mean2)?.sqr()?.broadcast_mul(&logvar2.neg()?.exp()?)?;
    Ok((b.broadcast_add(&c)? * 0.5)?)
}

/// A fast approximation of the standard normal CDF:
/// `0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`.
pub fn approx_standard_normal_cdf(x: &Tensor) -> Result<Tensor> {
    let cube = x.sqr()?.mul(x)?;
    let inner = (x + (cube * 0.044715)?)?;
    let k = (2.0f64 / std::f64::consts::PI).sqrt();
    Ok((((inner * k)?.tanh()? + 1.0)? * 0.5)?)
}

/// Log-likelihood (nats, element-wise) of images `x` (uint8 values rescaled to [-1, 1]) under a
/// Gaussian discretised to bins of width 2/255; the edge bins extend to -inf / +inf.
pub fn discretized_gaussian_log_likelihood(
    x: &Tensor,
    means: &Tensor,
    log_scales: &Tensor,
) -> Result<Tensor> {
    if x.shape() != means.shape() || x.shape() != log_scales.shape() {
        crate::bail!(
            "discretized_gaussian_log_likelihood: shapes {:?}, {:?}, {:?} differ",
            x.shape(),
            means.shape(),
            log_scales.shape()
        );
    }
    let centered = (x - means)?;
    let inv_stdv = log_scales.neg()?.exp()?;
    let bin = 1.0 / 255.0;
    let plus_in = (&inv_stdv * (&centered + bin)?)?;
    let cdf_plus = approx_standard_normal_cdf(&plus_in)?;
    let min_in = (&inv_stdv * (&centered - bin)?)?;
    let cdf_min = approx_standard_normal_cdf(&min_in)?;
    let log_cdf_plus = cdf_plus.maximum(1e-12f32)?.log()?;
    let log_one_minus_cdf_min = cdf_min.affine(-1.0, 1.0)?.maximum(1e-12f32)?.log()?;
    let cdf_delta = (&cdf_plus - &cdf_min)?;
    let log_delta = cdf_delta.maximum(1e-12f32)?.log()?;
    let lo = x.lt(-0.999f32)?;
    let hi = x.gt(0.999f32)?;
    let inner = hi.where_cond(&log_one_minus_cdf_min, &log_delta)?;
    Ok(lo.where_cond(&log_cdf_plus, &inner)?)
}
