//! The discrete-time VP noise schedule as the official DPM-Solver sees it
//! (`NoiseScheduleVP('discrete', betas)` of LuChengTHU/dpm-solver, `dpm_solver_pytorch.py`).
//!
//! A DPM trained on steps n = 0..N-1 becomes a continuous-time one on t in [1/N, 1] with
//! `t_n = (n + 1) / N`; `log alpha_t` is interpolated piecewise linearly between the steps
//! (`log alpha_{t_n} = 0.5 log alphas_cumprod[n]`), `sigma_t = sqrt(1 - alpha_t^2)` and the
//! half-log-SNR `lambda_t = log alpha_t - log sigma_t` ([`VpSchedule::marginal_lambda`]), which
//! is invertible ([`VpSchedule::inverse_lambda`]).
//!
//! Numerics follow the official code: the log-alphas are clipped where `lambda < -5.1`
//! ([`numerical_clip_alpha`]; the cosine schedule keeps 996 of its 1000 steps), and the two
//! interpolation tables are stored in float32 as there. Scalars are computed in f64 from those
//! f32 tables (the official computes them in float32; the difference is ~1e-7 relative).
use crate::{bail, Result};

/// The official clipping threshold of the half-log-SNR.
pub const CLIPPED_LAMBDA: f64 = -5.1;

/// `NoiseScheduleVP('discrete', betas=betas)`, computing in float32 as the official code does
/// with its float32 tensors, operation for operation (the time grids of the solver are
/// ill-conditioned in f32 near t = 1: f64 arithmetic moves the logSNR grid's model times by
/// ~1e-3). Values are returned as f64 for the caller's own (well-conditioned) arithmetic.
#[derive(Debug, Clone)]
pub struct VpSchedule {
    /// `t_array`: `t_i = (i + 1) / total_N`, increasing.
    t_array: Vec<f32>,
    /// `log_alpha_array` after clipping (decreasing).
    log_alpha_array: Vec<f32>,
    /// Both flipped, for `inverse_lambda`.
    log_alpha_flipped: Vec<f32>,
    t_flipped: Vec<f32>,
}

/// `numerical_clip_alpha`: drops the last steps whose half-log-SNR is below `clipped_lambda`
/// (`idx = searchsorted(flip(lambdas), clipped_lambda)` of them).
pub fn numerical_clip_alpha(log_alphas: &[f32], clipped_lambda: f64) -> Vec<f32> {
    let clipped = clipped_lambda as f32;
    let lambdas: Vec<f32> = log_alphas
        .iter()
        .map(|&la| {
            let log_sigma = 0.5 * (1.0 - (2.0 * la).exp()).ln();
            la - log_sigma
        })
        .collect();
    // searchsorted (left) on the increasing flipped lambdas: the number of values < clipped.
    let idx = lambdas.iter().rev().take_while(|&&l| l < clipped).count();
    log_alphas[..log_alphas.len() - idx].to_vec()
}

/// Piecewise-linear `y = f(x)` through the keypoints `(xp, yp)` (xp increasing), extended
/// linearly beyond them by the outermost segments: the official `interpolate_fn`, in f32 and
/// in its order of operations. A point equal to a keypoint takes the segment that ends there.
fn interpolate(x: f32, xp: &[f32], yp: &[f32]) -> f32 {
    let k = xp.len();
    let pos = xp.partition_point(|&v| v < x);
    let start = pos.saturating_sub(1).min(k - 2);
    let (x0, x1, y0, y1) = (xp[start], xp[start + 1], yp[start], yp[start + 1]);
    y0 + (x - x0) * (y1 - y0) / (x1 - x0)
}

impl VpSchedule {
    /// The schedule of a discrete DPM with these `betas` (the unspaced process's). As the
    /// official guided-diffusion example, the betas are float32 and `log(1 - beta)` is summed
    /// in float32.
    pub fn discrete(betas: &[f64]) -> Result<Self> {
        if betas.len() < 2 {
            bail!("DPM-Solver needs a schedule of at least 2 steps, got {}", betas.len());
        }
        if let Some(b) = betas.iter().find(|&&b| !(b > 0.0 && b < 1.0)) {
            bail!("DPM-Solver: beta {b} is outside (0, 1)");
        }
        // log_alphas = 0.5 * cumsum(log(1 - betas)).
        let mut acc = 0.0f32;
        let log_alphas: Vec<f32> = betas
            .iter()
            .map(|&b| {
                acc += (1.0 - b as f32).ln();
                0.5 * acc
            })
            .collect();
        let log_alpha_array = numerical_clip_alpha(&log_alphas, CLIPPED_LAMBDA);
        let n = log_alpha_array.len();
        if n < 2 {
            bail!("DPM-Solver: the schedule keeps {n} steps after the log-SNR clipping (need 2)");
        }
        // torch.linspace(0, 1, n + 1)[1:] in float32.
        let t_array: Vec<f32> = linspace_f32(0.0, 1.0, n + 1)[1..].to_vec();
        let log_alpha_flipped = log_alpha_array.iter().rev().copied().collect();
        let t_flipped = t_array.iter().rev().copied().collect();
        Ok(Self { t_array, log_alpha_array, log_alpha_flipped, t_flipped })
    }

    /// `total_N`: the number of steps kept after clipping.
    pub fn total_n(&self) -> usize {
        self.t_array.len()
    }

    /// `T` = 1.
    pub fn t_max(&self) -> f64 {
        1.0
    }

    /// The default end time `1 / total_N`.
    pub fn t_min(&self) -> f64 {
        1.0 / self.total_n() as f64
    }

    fn log_mean_coeff_f32(&self, t: f64) -> f32 {
        interpolate(t as f32, &self.t_array, &self.log_alpha_array)
    }

    /// `marginal_log_mean_coeff`: `log alpha_t`.
    pub fn marginal_log_mean_coeff(&self, t: f64) -> f64 {
        self.log_mean_coeff_f32(t) as f64
    }

    /// `marginal_alpha`: `alpha_t`.
    pub fn marginal_alpha(&self, t: f64) -> f64 {
        self.log_mean_coeff_f32(t).exp() as f64
    }

    /// `marginal_std`: `sigma_t = sqrt(1 - alpha_t^2)`.
    pub fn marginal_std(&self, t: f64) -> f64 {
        (1.0 - (2.0 * self.log_mean_coeff_f32(t)).exp()).sqrt() as f64
    }

    /// `marginal_lambda`: `lambda_t = log alpha_t - log sigma_t`.
    pub fn marginal_lambda(&self, t: f64) -> f64 {
        let lm = self.log_mean_coeff_f32(t);
        let log_std = 0.5 * (1.0 - (2.0 * lm).exp()).ln();
        (lm - log_std) as f64
    }

    /// `inverse_lambda`: the time t whose half-log-SNR is `lambda`.
    pub fn inverse_lambda(&self, lambda: f64) -> f64 {
        // log_alpha = -0.5 * logaddexp(0, -2 lambda), as torch.logaddexp computes it.
        let a = -2.0 * lambda as f32;
        let lse = a.max(0.0) + (-a.abs()).exp().ln_1p();
        let log_alpha = -0.5 * lse;
        interpolate(log_alpha, &self.log_alpha_flipped, &self.t_flipped) as f64
    }
}

/// `torch.linspace(start, end, steps)` in float32 (its own two-sided formula: from the start
/// for the first half, from the end for the rest).
pub fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::{get_named_beta_schedule, NoiseSchedule};

    #[test]
    fn cosine_keeps_996_steps_and_linear_all() {
        let cos =
            VpSchedule::discrete(&get_named_beta_schedule(NoiseSchedule::Cosine, 1000)).unwrap();
        assert_eq!(cos.total_n(), 996);
        let lin =
            VpSchedule::discrete(&get_named_beta_schedule(NoiseSchedule::Linear, 1000)).unwrap();
        assert_eq!(lin.total_n(), 1000);
    }

    #[test]
    fn lambda_inverts_and_interpolation_extends_linearly() {
        let s =
            VpSchedule::discrete(&get_named_beta_schedule(NoiseSchedule::Linear, 1000)).unwrap();
        for t in [0.001, 0.0123, 0.5, 0.77, 1.0] {
            let back = s.inverse_lambda(s.marginal_lambda(t));
            assert!((back - t).abs() < 1e-5, "{t} -> {back}");
            let (a, sd) = (s.marginal_alpha(t), s.marginal_std(t));
            assert!((a * a + sd * sd - 1.0).abs() < 1e-6);
        }
        // Keypoints are hit exactly; beyond the last one the last segment continues.
        let xp = [0.0f32, 1.0, 3.0];
        let yp = [0.0f32, 2.0, 3.0];
        assert_eq!(interpolate(1.0, &xp, &yp), 2.0);
        assert_eq!(interpolate(2.0, &xp, &yp), 2.5);
        assert_eq!(interpolate(5.0, &xp, &yp), 4.0);
        assert_eq!(interpolate(-1.0, &xp, &yp), -2.0);
    }
}
