//! Training objectives and likelihood evaluation: `training_losses` (MSE / hybrid MSE + VB /
//! KL, with the reference's loss-type rules), the per-timestep variational-bound term
//! `_vb_terms_bpd` (KL to the posterior, or the discretized decoder NLL at t = 0) and
//! `calc_bpd_loop` (bits per dimension over all timesteps plus the prior term).
//!
//! Everything is built from candle ops so that `loss.backward()` reaches the model's weights;
//! the learned-variance VB term sees a detached mean (the stop-gradient of the hybrid loss).
use candle_core::{DType, Tensor};

use super::gaussian::{mean_flat, scalar_like, GaussianDiffusion, LossType, ModelMeanType};
use super::likelihood::{discretized_gaussian_log_likelihood, normal_kl};
use super::noise::NoiseSource;
use super::ModelFn;
use crate::Result;

/// The terms of [`GaussianDiffusion::training_losses`], each of shape `[N]`.
#[derive(Clone, Debug)]
pub struct TrainingLosses {
    /// The loss to minimise (weight it per sample and average it for the optimiser).
    pub loss: Tensor,
    /// The mean-prediction MSE (MSE loss types only).
    pub mse: Option<Tensor>,
    /// The variational-bound term (bits; MSE loss types with a learned variance only).
    pub vb: Option<Tensor>,
}

/// The output of [`GaussianDiffusion::vb_terms_bpd`].
#[derive(Clone, Debug)]
pub struct VbTerms {
    /// `[N]`: the decoder NLL where t = 0, else KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)), in bits.
    pub output: Tensor,
    pub pred_xstart: Tensor,
}

/// The output of [`GaussianDiffusion::calc_bpd_loop`].
#[derive(Clone, Debug)]
pub struct BpdTerms {
    /// `[N]`: the whole variational bound, `vb.sum(1) + prior_bpd`, in bits per dimension.
    pub total_bpd: Tensor,
    /// `[N]`: KL(q(x_T|x_0) || N(0, I)) in bits per dimension.
    pub prior_bpd: Tensor,
    /// `[N, T]`: per-timestep terms; column `k` is timestep `T - 1 - k` (loop order, as the reference).
    pub vb: Tensor,
    /// `[N, T]`: mean squared error of the x_0 prediction, same column order.
    pub xstart_mse: Tensor,
    /// `[N, T]`: mean squared error of the implied epsilon, same column order.
    pub mse: Tensor,
}

fn div_ln2(x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_div(&scalar_like(std::f64::consts::LN_2, x)?)?)
}

impl GaussianDiffusion {
    /// One VB term per batch element, in bits, from a model output already computed.
    pub fn vb_terms_bpd_from_output(
        &self,
        model_output: &Tensor,
        x_start: &Tensor,
        x_t: &Tensor,
        t: &[usize],
        clip_denoised: bool,
    ) -> Result<VbTerms> {
        let (true_mean, _, true_log_var) = self.q_posterior_mean_variance(x_start, x_t, t)?;
        let out = self.p_mean_variance_from_output(model_output, x_t, t, clip_denoised, None)?;
        let kl = normal_kl(&true_mean, &true_log_var, &out.mean, &out.log_variance)?;
        let kl = div_ln2(&mean_flat(&kl)?)?;
        let log_scales = (&out.log_variance * 0.5)?;
        let decoder_nll =
            discretized_gaussian_log_likelihood(x_start, &out.mean, &log_scales)?.neg()?;
        let decoder_nll = div_ln2(&mean_flat(&decoder_nll)?)?;
        let is_zero: Vec<u8> = t.iter().map(|&i| u8::from(i == 0)).collect();
        let mask = Tensor::from_vec(is_zero, t.len(), x_t.device())?;
        let output = mask.where_cond(&decoder_nll, &kl)?;
        Ok(VbTerms { output, pred_xstart: out.pred_xstart })
    }

    /// `_vb_terms_bpd`: calls the model at `x_t` and returns the VB term for timesteps `t`.
    pub fn vb_terms_bpd(
        &self,
        model: &ModelFn,
        x_start: &Tensor,
        x_t: &Tensor,
        t: &[usize],
        clip_denoised: bool,
    ) -> Result<VbTerms> {
        let out = self.call_model(model, x_t, t)?;
        self.vb_terms_bpd_from_output(&out, x_start, x_t, t, clip_denoised)
    }

    /// Training losses for timesteps `t` (one per batch element) with the given standard normal
    /// `noise` (draw it with a [`NoiseSource`]; the reference's `randn_like`).
    ///
    /// - KL / RESCALED_KL: `loss` = VB term (times T for RESCALED_KL).
    /// - MSE / RESCALED_MSE: `mse` = mean_flat((target - prediction)^2) with target x_{t-1}
    ///   posterior mean / x_0 / eps by mean type; with a learned variance also `vb` (on a
    ///   detached mean, times T/1000 for RESCALED_MSE) and `loss = mse + vb`.
    pub fn training_losses(
        &self,
        model: &ModelFn,
        x_start: &Tensor,
        t: &[usize],
        noise: &Tensor,
    ) -> Result<TrainingLosses> {
        let x_t = self.q_sample(x_start, t, noise)?;
        let kind = self.kind();
        if kind.loss_type.is_vb() {
            let mut loss = self.vb_terms_bpd(model, x_start, &x_t, t, false)?.output;
            if kind.loss_type == LossType::RescaledKl {
                loss = (loss * self.num_timesteps() as f64)?;
            }
            return Ok(TrainingLosses { loss, mse: None, vb: None });
        }
        let model_output = self.call_model(model, &x_t, t)?;
        let c = x_t.dim(1)?;
        let (prediction, vb) = if kind.model_var_type.is_learned() {
            let expect_c = 2 * c;
            if model_output.dim(1)? != expect_c {
                crate::bail!(
                    "model output has {} channels, expected {expect_c} (learned variance)",
                    model_output.dim(1)?
                );
            }
            let prediction = model_output.narrow(1, 0, c)?;
            let var_values = model_output.narrow(1, c, c)?;
            // Learn the variance with the VB term without letting it move the mean.
            let frozen = Tensor::cat(&[&prediction.detach(), &var_values], 1)?;
            let mut vb = self.vb_terms_bpd_from_output(&frozen, x_start, &x_t, t, false)?.output;
            if kind.loss_type == LossType::RescaledMse {
                vb = (vb * (self.num_timesteps() as f64 / 1000.0))?;
            }
            (prediction, Some(vb))
        } else {
            (model_output, None)
        };
        let target = match kind.model_mean_type {
            ModelMeanType::PreviousX => self.q_posterior_mean_variance(x_start, &x_t, t)?.0,
            ModelMeanType::StartX => x_start.clone(),
            ModelMeanType::Epsilon => noise.clone(),
        };
        if prediction.shape() != target.shape() {
            crate::bail!(
                "model prediction {:?} and target {:?} differ in shape",
                prediction.shape(),
                target.shape()
            );
        }
        let mse = mean_flat(&(target - &prediction)?.sqr()?)?;
        let loss = match &vb {
            Some(vb) => (&mse + vb)?,
            None => mse.clone(),
        };
        Ok(TrainingLosses { loss, mse: Some(mse), vb })
    }

    /// `_prior_bpd`: KL(q(x_T | x_0) || N(0, I)) per batch element, in bits per dimension.
    pub fn prior_bpd(&self, x_start: &Tensor) -> Result<Tensor> {
        let n = x_start.dim(0)?;
        let t = vec![self.num_timesteps() - 1; n];
        let (mean, _, log_var) = self.q_mean_variance(x_start, &t)?;
        let zero = Tensor::zeros((), x_start.dtype(), x_start.device())?;
        div_ln2(&mean_flat(&normal_kl(&mean, &log_var, &zero, &zero)?)?)
    }

    /// `calc_bpd_loop`: the variational bound in bits per dimension, looping t = T-1 .. 0 with
    /// fresh noise per timestep from `noise` (one draw per timestep). No gradients are kept.
    pub fn calc_bpd_loop(
        &self,
        model: &ModelFn,
        x_start: &Tensor,
        clip_denoised: bool,
        noise: &mut dyn NoiseSource,
    ) -> Result<BpdTerms> {
        let n = x_start.dim(0)?;
        let (mut vb, mut xstart_mse, mut mse) = (vec![], vec![], vec![]);
        for step in (0..self.num_timesteps()).rev() {
            let t = vec![step; n];
            let eps = noise.randn(x_start.shape(), x_start.device())?.to_dtype(x_start.dtype())?;
            let x_t = self.q_sample(x_start, &t, &eps)?;
            let out = self.vb_terms_bpd(model, x_start, &x_t, &t, clip_denoised)?;
            let pred = out.pred_xstart.detach();
            vb.push(out.output.detach());
            xstart_mse.push(mean_flat(&(&pred - x_start)?.sqr()?)?);
            let eps_pred = self.predict_eps_from_xstart(&x_t, &t, &pred)?;
            mse.push(mean_flat(&(eps_pred - &eps)?.sqr()?)?);
        }
        let vb = Tensor::stack(&vb, 1)?;
        let xstart_mse = Tensor::stack(&xstart_mse, 1)?;
        let mse = Tensor::stack(&mse, 1)?;
        let prior_bpd = self.prior_bpd(x_start)?;
        // Sum the T terms in f64 (like mean_flat) before adding the prior.
        let total_bpd = (vb.to_dtype(DType::F64)?.sum(1)?.to_dtype(vb.dtype())? + &prior_bpd)?;
        Ok(BpdTerms { total_bpd, prior_bpd, vb, xstart_mse, mse })
    }
}
