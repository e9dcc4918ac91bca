//! `GaussianDiffusion`: the f64 schedule arrays, the (possibly respaced) timestep map, and the
//! closed-form distributions of the process (q(x_t|x_0), the posterior q(x_{t-1}|x_t,x_0) and the
//! model's p(x_{t-1}|x_t)). One type covers the reference's `GaussianDiffusion` and
//! `SpacedDiffusion`: an un-respaced process is a respacing with the identity map, exactly as
//! `create_gaussian_diffusion` always builds a `SpacedDiffusion`.
//!
//! Tensor math is f32; coefficients are gathered per timestep from the f64 arrays and cast to
//! f32 at use (`_extract_into_tensor`), and the f32 operations follow the reference's order so
//! that results round the same way.
use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor};

use super::{DenoisedFn, ModelFn};
use crate::{bail, Result};

/// What the model's (first C) output channels predict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelMeanType {
    /// The model predicts x_{t-1}.
    PreviousX,
    /// The model predicts x_0.
    StartX,
    /// The model predicts the noise epsilon.
    Epsilon,
}

/// How the variance of p(x_{t-1}|x_t) is obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelVarType {
    /// The model outputs the log-variance (C extra channels).
    Learned,
    /// The posterior variance (beta tilde).
    FixedSmall,
    /// beta_t (with the posterior variance at t = 0).
    FixedLarge,
    /// The model outputs v in [-1, 1] interpolating log beta tilde .. log beta (C extra channels).
    LearnedRange,
}

impl ModelVarType {
    /// Whether the model outputs 2C channels (mean part, then variance part).
    pub fn is_learned(self) -> bool {
        matches!(self, Self::Learned | Self::LearnedRange)
    }
}

/// The training objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossType {
    /// MSE of the mean target (+ the VB term for learned variances: the hybrid loss).
    Mse,
    /// As `Mse`, with the VB term scaled by T/1000.
    RescaledMse,
    /// The variational bound term of a single timestep (bits).
    Kl,
    /// As `Kl`, times T (an estimate of the full bound).
    RescaledKl,
}

impl LossType {
    pub fn is_vb(self) -> bool {
        matches!(self, Self::Kl | Self::RescaledKl)
    }
}

/// The mean/variance types and timestep scaling of a process (everything but the betas).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessKind {
    pub model_mean_type: ModelMeanType,
    pub model_var_type: ModelVarType,
    pub loss_type: LossType,
    /// Pass `t * 1000 / T_original` (float) to the model instead of the original timestep.
    pub rescale_timesteps: bool,
}

impl Default for ProcessKind {
    /// The defaults of `create_gaussian_diffusion`: epsilon, fixed large variance, MSE.
    fn default() -> Self {
        Self {
            model_mean_type: ModelMeanType::Epsilon,
            model_var_type: ModelVarType::FixedLarge,
            loss_type: LossType::Mse,
            rescale_timesteps: false,
        }
    }
}

/// Every array derived from the betas, in f64, as the reference's `GaussianDiffusion.__init__`.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffusionArrays {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    pub alphas_cumprod_prev: Vec<f64>,
    pub alphas_cumprod_next: Vec<f64>,
    pub sqrt_alphas_cumprod: Vec<f64>,
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    pub log_one_minus_alphas_cumprod: Vec<f64>,
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    pub posterior_variance: Vec<f64>,
    pub posterior_log_variance_clipped: Vec<f64>,
    pub posterior_mean_coef1: Vec<f64>,
    pub posterior_mean_coef2: Vec<f64>,
}

impl DiffusionArrays {
    /// Derive every array from the betas. Needs at least 2 steps (the clipped posterior
    /// log-variance uses `posterior_variance[1]`) and `0 < beta <= 1`.
    pub fn from_betas(betas: Vec<f64>) -> Result<Self> {
        let n = betas.len();
        if n < 2 {
            bail!(
                "a diffusion process needs at least 2 timesteps, got {n} (the reference crashes on \
                 posterior_variance[1]; use a respacing of 2 or more steps)"
            );
        }
        if let Some((i, b)) = betas.iter().enumerate().find(|(_, &b)| !(b > 0.0 && b <= 1.0)) {
            bail!("beta[{i}] = {b} is outside (0, 1]");
        }
        let map = |v: &[f64], f: &dyn Fn(f64) -> f64| v.iter().map(|&x| f(x)).collect::<Vec<f64>>();
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut acc = 1.0f64;
        for (i, &b) in betas.iter().enumerate() {
            let a = 1.0 - b;
            acc = if i == 0 { a } else { acc * a };
            alphas_cumprod.push(acc);
        }
        let mut alphas_cumprod_prev = vec![1.0];
        alphas_cumprod_prev.extend_from_slice(&alphas_cumprod[..n - 1]);
        let mut alphas_cumprod_next = alphas_cumprod[1..].to_vec();
        alphas_cumprod_next.push(0.0);
        let sqrt_alphas_cumprod = map(&alphas_cumprod, &|a| a.sqrt());
        let sqrt_one_minus_alphas_cumprod = map(&alphas_cumprod, &|a| (1.0 - a).sqrt());
        let log_one_minus_alphas_cumprod = map(&alphas_cumprod, &|a| (1.0 - a).ln());
        let sqrt_recip_alphas_cumprod = map(&alphas_cumprod, &|a| (1.0 / a).sqrt());
        let sqrt_recipm1_alphas_cumprod = map(&alphas_cumprod, &|a| (1.0 / a - 1.0).sqrt());
        let posterior_variance: Vec<f64> = (0..n)
            .map(|i| betas[i] * (1.0 - alphas_cumprod_prev[i]) / (1.0 - alphas_cumprod[i]))
            .collect();
        let posterior_log_variance_clipped: Vec<f64> = (0..n)
            .map(|i| if i == 0 { posterior_variance[1] } else { posterior_variance[i] }.ln())
            .collect();
        let posterior_mean_coef1 = (0..n)
            .map(|i| betas[i] * alphas_cumprod_prev[i].sqrt() / (1.0 - alphas_cumprod[i]))
            .collect();
        let posterior_mean_coef2 = (0..n)
            .map(|i| {
                (1.0 - alphas_cumprod_prev[i]) * (1.0 - betas[i]).sqrt() / (1.0 - alphas_cumprod[i])
            })
            .collect();
        Ok(Self {
            betas,
            alphas_cumprod,
            alphas_cumprod_prev,
            alphas_cumprod_next,
            sqrt_alphas_cumprod,
            sqrt_one_minus_alphas_cumprod,
            log_one_minus_alphas_cumprod,
            sqrt_recip_alphas_cumprod,
            sqrt_recipm1_alphas_cumprod,
            posterior_variance,
            posterior_log_variance_clipped,
            posterior_mean_coef1,
            posterior_mean_coef2,
        })
    }

    pub fn num_timesteps(&self) -> usize {
        self.betas.len()
    }
}

/// Outputs of [`GaussianDiffusion::p_mean_variance`], each of x's shape.
#[derive(Clone, Debug)]
pub struct PMeanVariance {
    pub mean: Tensor,
    pub variance: Tensor,
    pub log_variance: Tensor,
    pub pred_xstart: Tensor,
}

/// A Gaussian diffusion process, possibly respaced: indices `t` given to its methods are
/// indices of this process (0..num_timesteps), the model sees `timestep_map[t]` (rescaled to
/// 0..1000 as float if `rescale_timesteps`).
#[derive(Clone, Debug)]
pub struct GaussianDiffusion {
    arrays: DiffusionArrays,
    kind: ProcessKind,
    timestep_map: Vec<usize>,
    original_num_steps: usize,
}

impl GaussianDiffusion {
    /// An un-respaced process on these betas.
    pub fn new(betas: Vec<f64>, kind: ProcessKind) -> Result<Self> {
        let n = betas.len();
        let arrays = DiffusionArrays::from_betas(betas)?;
        Ok(Self { arrays, kind, timestep_map: (0..n).collect(), original_num_steps: n })
    }

    /// The reference's `SpacedDiffusion(use_timesteps, betas=base_betas)`: keeps the given
    /// original timesteps, with betas rebuilt so that the kept `alphas_cumprod` are unchanged:
    /// `new_beta_i = 1 - ab[map[i]] / ab[map[i-1]]` (previous = 1 for i = 0).
    pub fn spaced(
        base_betas: Vec<f64>,
        use_timesteps: &BTreeSet<usize>,
        kind: ProcessKind,
    ) -> Result<Self> {
        let original_num_steps = base_betas.len();
        let base = DiffusionArrays::from_betas(base_betas)?;
        if let Some(&bad) = use_timesteps.iter().find(|&&t| t >= original_num_steps) {
            bail!(
                "respaced timestep {bad} is out of range for a {original_num_steps}-step process"
            );
        }
        if use_timesteps.len() < 2 {
            bail!(
                "a respacing to {} step(s) is not supported: a diffusion process needs at least 2 \
                 timesteps (the reference crashes on it too)",
                use_timesteps.len()
            );
        }
        let mut last = 1.0f64;
        let mut new_betas = Vec::with_capacity(use_timesteps.len());
        let mut timestep_map = Vec::with_capacity(use_timesteps.len());
        for (i, &ab) in base.alphas_cumprod.iter().enumerate() {
            if use_timesteps.contains(&i) {
                new_betas.push(1.0 - ab / last);
                last = ab;
                timestep_map.push(i);
            }
        }
        let arrays = DiffusionArrays::from_betas(new_betas)?;
        Ok(Self { arrays, kind, timestep_map, original_num_steps })
    }

    pub fn arrays(&self) -> &DiffusionArrays {
        &self.arrays
    }
    pub fn kind(&self) -> ProcessKind {
        self.kind
    }
    pub fn num_timesteps(&self) -> usize {
        self.arrays.num_timesteps()
    }
    /// Spaced index -> original timestep.
    pub fn timestep_map(&self) -> &[usize] {
        &self.timestep_map
    }
    /// Number of steps of the process before respacing.
    pub fn original_num_steps(&self) -> usize {
        self.original_num_steps
    }

    /// The timestep value the model (and the classifier) sees for spaced index `t`:
    /// `timestep_map[t]`, times `1000 / original_num_steps` in f32 if `rescale_timesteps`.
    pub fn model_timestep(&self, t: usize) -> f32 {
        let m = self.timestep_map[t] as f32;
        if self.kind.rescale_timesteps {
            m * (1000.0 / self.original_num_steps as f64) as f32
        } else {
            m
        }
    }

    /// [`Self::model_timestep`] for a batch, as an f32 tensor `[N]` (what `_WrappedModel` passes).
    pub fn model_timesteps(&self, t: &[usize], device: &Device) -> Result<Tensor> {
        self.check_t(t)?;
        let v: Vec<f32> = t.iter().map(|&i| self.model_timestep(i)).collect();
        Ok(Tensor::from_vec(v, t.len(), device)?)
    }

    pub(crate) fn check_t(&self, t: &[usize]) -> Result<()> {
        if let Some(&bad) = t.iter().find(|&&i| i >= self.num_timesteps()) {
            bail!("timestep {bad} out of range for a {}-step process", self.num_timesteps());
        }
        Ok(())
    }

    /// `_extract_into_tensor`: `f(t_i)` (computed in f64, cast to f32) as a `[N, 1, ...]` tensor
    /// broadcastable against `x`.
    pub fn extract(&self, f: impl Fn(usize) -> f64, t: &[usize], x: &Tensor) -> Result<Tensor> {
        self.check_t(t)?;
        let n = x.dim(0)?;
        if t.len() != n {
            bail!("{} timesteps for a batch of {n}", t.len());
        }
        let vals: Vec<f32> = t.iter().map(|&i| f(i) as f32).collect();
        let mut shape = vec![1usize; x.rank()];
        shape[0] = n;
        Ok(Tensor::from_vec(vals, shape, x.device())?)
    }

    fn ex(&self, arr: &[f64], t: &[usize], x: &Tensor) -> Result<Tensor> {
        self.extract(|i| arr[i], t, x)
    }

    /// q(x_t | x_0): `(mean, variance, log_variance)`, each of x_start's shape.
    pub fn q_mean_variance(
        &self,
        x_start: &Tensor,
        t: &[usize],
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let a = &self.arrays;
        let mean = self.ex(&a.sqrt_alphas_cumprod, t, x_start)?.broadcast_mul(x_start)?;
        let variance = self
            .extract(|i| 1.0 - a.alphas_cumprod[i], t, x_start)?
            .broadcast_as(x_start.shape())?;
        let log_variance =
            self.ex(&a.log_one_minus_alphas_cumprod, t, x_start)?.broadcast_as(x_start.shape())?;
        Ok((mean, variance, log_variance))
    }

    /// Sample x_t ~ q(x_t | x_0) with the given standard normal `noise`.
    pub fn q_sample(&self, x_start: &Tensor, t: &[usize], noise: &Tensor) -> Result<Tensor> {
        if noise.shape() != x_start.shape() {
            bail!(
                "q_sample: noise shape {:?} != x_start shape {:?}",
                noise.shape(),
                x_start.shape()
            );
        }
        let a = &self.arrays;
        let lhs = self.ex(&a.sqrt_alphas_cumprod, t, x_start)?.broadcast_mul(x_start)?;
        let rhs = self.ex(&a.sqrt_one_minus_alphas_cumprod, t, x_start)?.broadcast_mul(noise)?;
        Ok((lhs + rhs)?)
    }

    /// The posterior q(x_{t-1} | x_t, x_0): `(mean, variance, log_variance_clipped)`.
    pub fn q_posterior_mean_variance(
        &self,
        x_start: &Tensor,
        x_t: &Tensor,
        t: &[usize],
    ) -> Result<(Tensor, Tensor, Tensor)> {
        if x_start.shape() != x_t.shape() {
            bail!(
                "q_posterior: x_start {:?} and x_t {:?} differ in shape",
                x_start.shape(),
                x_t.shape()
            );
        }
        let a = &self.arrays;
        let mean = (self.ex(&a.posterior_mean_coef1, t, x_t)?.broadcast_mul(x_start)?
            + self.ex(&a.posterior_mean_coef2, t, x_t)?.broadcast_mul(x_t)?)?;
        let var = self.ex(&a.posterior_variance, t, x_t)?.broadcast_as(x_t.shape())?;
        let logvar =
            self.ex(&a.posterior_log_variance_clipped, t, x_t)?.broadcast_as(x_t.shape())?;
        Ok((mean, var, logvar))
    }

    /// Call the model at spaced indices `t` (it receives [`Self::model_timesteps`]).
    pub fn call_model(&self, model: &ModelFn, x: &Tensor, t: &[usize]) -> Result<Tensor> {
        let ts = self.model_timesteps(t, x.device())?;
        model(x, &ts)
    }

    /// p(x_{t-1} | x_t): calls the model then [`Self::p_mean_variance_from_output`].
    pub fn p_mean_variance(
        &self,
        model: &ModelFn,
        x: &Tensor,
        t: &[usize],
        clip_denoised: bool,
        denoised_fn: Option<&DenoisedFn>,
    ) -> Result<PMeanVariance> {
        let out = self.call_model(model, x, t)?;
        self.p_mean_variance_from_output(&out, x, t, clip_denoised, denoised_fn)
    }

    /// p(x_{t-1} | x_t) from a model output already computed (2C channels for learned variances).
    /// `denoised_fn` applies to the x_0 prediction before the clip to [-1, 1].
    pub fn p_mean_variance_from_output(
        &self,
        model_output: &Tensor,
        x: &Tensor,
        t: &[usize],
        clip_denoised: bool,
        denoised_fn: Option<&DenoisedFn>,
    ) -> Result<PMeanVariance> {
        let a = &self.arrays;
        let dims = x.dims();
        if dims.len() < 2 {
            bail!("p_mean_variance: x must be [N, C, ...], got {:?}", dims);
        }
        let (b, c) = (dims[0], dims[1]);
        if t.len() != b {
            bail!("p_mean_variance: {} timesteps for a batch of {b}", t.len());
        }
        let var_type = self.kind.model_var_type;
        let (mean_out, variance, log_variance) = if var_type.is_learned() {
            let mut expect = dims.to_vec();
            expect[1] = 2 * c;
            if model_output.dims() != expect.as_slice() {
                bail!(
                    "model output shape {:?}, expected {:?} (mean and variance channels)",
                    model_output.dims(),
                    expect
                );
            }
            let mean_out = model_output.narrow(1, 0, c)?;
            let var_values = model_output.narrow(1, c, c)?;
            let log_variance = if var_type == ModelVarType::Learned {
                var_values
            } else {
                let min_log = self.ex(&a.posterior_log_variance_clipped, t, x)?;
                let max_log = self.extract(|i| a.betas[i].ln(), t, x)?;
                let frac = ((var_values + 1.0)? / 2.0)?;
                let one_minus = frac.affine(-1.0, 1.0)?;
                (frac.broadcast_mul(&max_log)? + one_minus.broadcast_mul(&min_log)?)?
            };
            let variance = log_variance.exp()?;
            (mean_out, variance, log_variance)
        } else {
            if model_output.dims() != dims {
                bail!("model output shape {:?}, expected {:?}", model_output.dims(), dims);
            }
            let (var, logvar) = if var_type == ModelVarType::FixedLarge {
                let f = |i: usize| if i == 0 { a.posterior_variance[1] } else { a.betas[i] };
                (self.extract(f, t, x)?, self.extract(|i| f(i).ln(), t, x)?)
            } else {
                (
                    self.ex(&a.posterior_variance, t, x)?,
                    self.ex(&a.posterior_log_variance_clipped, t, x)?,
                )
            };
            (model_output.clone(), var.broadcast_as(x.shape())?, logvar.broadcast_as(x.shape())?)
        };

        let process_xstart = |p: Tensor| -> Result<Tensor> {
            let p = match denoised_fn {
                Some(f) => f(&p)?,
                None => p,
            };
            Ok(if clip_denoised { p.clamp(-1f32, 1f32)? } else { p })
        };
        let (mean, pred_xstart) = match self.kind.model_mean_type {
            ModelMeanType::PreviousX => {
                let pred = process_xstart(self.predict_xstart_from_xprev(x, t, &mean_out)?)?;
                (mean_out, pred)
            }
            ModelMeanType::StartX => {
                let pred = process_xstart(mean_out)?;
                (self.q_posterior_mean_variance(&pred, x, t)?.0, pred)
            }
            ModelMeanType::Epsilon => {
                let pred = process_xstart(self.predict_xstart_from_eps(x, t, &mean_out)?)?;
                (self.q_posterior_mean_variance(&pred, x, t)?.0, pred)
            }
        };
        Ok(PMeanVariance { mean, variance, log_variance, pred_xstart })
    }

    /// x_0 = sqrt(1/ab) x_t - sqrt(1/ab - 1) eps.
    pub fn predict_xstart_from_eps(
        &self,
        x_t: &Tensor,
        t: &[usize],
        eps: &Tensor,
    ) -> Result<Tensor> {
        let a = &self.arrays;
        Ok((self.ex(&a.sqrt_recip_alphas_cumprod, t, x_t)?.broadcast_mul(x_t)?
            - self.ex(&a.sqrt_recipm1_alphas_cumprod, t, x_t)?.broadcast_mul(eps)?)?)
    }

    /// x_0 = (x_{t-1} - coef2 x_t) / coef1.
    pub fn predict_xstart_from_xprev(
        &self,
        x_t: &Tensor,
        t: &[usize],
        xprev: &Tensor,
    ) -> Result<Tensor> {
        let a = &self.arrays;
        let c1 = self.extract(|i| 1.0 / a.posterior_mean_coef1[i], t, x_t)?;
        let c2 = self.extract(|i| a.posterior_mean_coef2[i] / a.posterior_mean_coef1[i], t, x_t)?;
        Ok((c1.broadcast_mul(xprev)? - c2.broadcast_mul(x_t)?)?)
    }

    /// eps = (sqrt(1/ab) x_t - x_0) / sqrt(1/ab - 1).
    pub fn predict_eps_from_xstart(
        &self,
        x_t: &Tensor,
        t: &[usize],
        pred_xstart: &Tensor,
    ) -> Result<Tensor> {
        let a = &self.arrays;
        let num =
            (self.ex(&a.sqrt_recip_alphas_cumprod, t, x_t)?.broadcast_mul(x_t)? - pred_xstart)?;
        Ok(num.broadcast_div(&self.ex(&a.sqrt_recipm1_alphas_cumprod, t, x_t)?)?)
    }
}

/// A scalar as an f32 tensor broadcastable against `like` (for torch-style `tensor / float`,
/// which divides in f32; candle's `tensor / f64` multiplies by the reciprocal instead).
pub(crate) fn scalar_like(v: f64, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::new(v as f32, like.device())?.to_dtype(like.dtype())?)
}

/// `mean_flat`: mean over all non-batch dimensions, `[N, ...] -> [N]`. Accumulated in f64 and
/// rounded once to f32 (the reference's cascade-summed f32 mean is within an ulp or two of it;
/// a plain sequential f32 sum over 3072 elements would not be). Differentiable.
pub fn mean_flat(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let n: usize = x.dims()[1..].iter().product();
    let s = x.to_dtype(DType::F64)?.flatten_from(1)?.sum(1)?;
    Ok(s.broadcast_div(&Tensor::new(n as f64, x.device())?)?.to_dtype(dtype)?)
}
