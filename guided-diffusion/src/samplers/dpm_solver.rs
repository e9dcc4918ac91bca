//! DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic
//! Model Sampling in Around 10 Steps") and DPM-Solver++ ("DPM-Solver++: Fast Solver for Guided
//! Sampling of Diffusion Probabilistic Models"), with the numerics of the official
//! `dpm_solver_pytorch.py` (LuChengTHU/dpm-solver): its `model_wrapper` and `DPM_Solver`.
//!
//! The solver integrates the diffusion ODE in the half-log-SNR lambda on the continuous-time
//! [`VpSchedule`] of the discrete model. With h = lambda_t - lambda_s, the first-order steps are
//! - noise form (`dpm-solver`): `x_t = (alpha_t / alpha_s) x_s - sigma_t (e^h - 1) eps(x_s, s)`;
//! - data form (`dpm-solver++`): `x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) x0(x_s, s)`.
//!
//! Higher orders add divided differences of the model's outputs, from intermediate points
//! (`singlestep`) or from the previous steps (`multistep`).
//!
//! The model adapter (`model_wrapper`): the network is called at the fractional time
//! `(t - 1/total_N) * 1000` ([`DpmSolver::model_time`]), a learned-sigma output is cut to its
//! first C channels, an x_0-predicting model is turned into a noise predictor, and classifier
//! guidance is `eps - sigma_t * gradient` where the gradient is the guidance's (already
//! scaled) `grad_x log p(y | x_t)` at the same fractional time. Classifier-free guidance is the
//! guidance's own output mix, so it needs nothing here.
use std::collections::VecDeque;

use candle_core::{DType, Tensor};

use super::spec::{ParamReader, ParamWriter, Params, SamplerKind};
use super::vp_schedule::{linspace_f32, VpSchedule};
use super::{finish_step, Denoiser, Sampler, StepCallback, StepInfo};
use crate::diffusion::{get_named_beta_schedule, DiffusionConfig, NoiseSource};
use crate::{bail, Result};

/// `algorithm_type`: which quantity the solver extrapolates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `dpmsolver`: the noise prediction.
    DpmSolver,
    /// `dpmsolver++`: the data (x_0) prediction.
    DpmSolverPP,
}

/// `method` of `DPM_Solver.sample`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Multistep, reusing the previous steps' model outputs (one NFE per step).
    Multistep,
    /// Singlestep "DPM-Solver-fast": orders mixed to use exactly `steps` NFE.
    Singlestep,
    /// Singlestep of one fixed order (`steps / order` steps).
    SinglestepFixed,
    /// Adaptive step size (DPM-Solver-12 / -23) with `atol` / `rtol`.
    Adaptive,
}

/// `skip_type`: how the time steps are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipType {
    TimeUniform,
    LogSnr,
    TimeQuadratic,
}

/// `solver_type`: the form of the higher-order terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolverType {
    DpmSolver,
    Taylor,
}

impl Method {
    const NAMES: [&'static str; 4] = ["multistep", "singlestep", "singlestep_fixed", "adaptive"];
    fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
    fn from_name(s: &str) -> Self {
        [Self::Multistep, Self::Singlestep, Self::SinglestepFixed, Self::Adaptive]
            [Self::NAMES.iter().position(|n| *n == s).unwrap_or(0)]
    }
}

impl SkipType {
    const NAMES: [&'static str; 3] = ["time_uniform", "logSNR", "time_quadratic"];
    fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
    fn from_name(s: &str) -> Self {
        [Self::TimeUniform, Self::LogSnr, Self::TimeQuadratic]
            [Self::NAMES.iter().position(|n| *n == s).unwrap_or(0)]
    }
}

impl SolverType {
    const NAMES: [&'static str; 2] = ["dpmsolver", "taylor"];
    fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
    fn from_name(s: &str) -> Self {
        if s == "taylor" {
            Self::Taylor
        } else {
            Self::DpmSolver
        }
    }
}

/// The arguments of `DPM_Solver(...)` and `.sample(...)`, with the official defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct DpmSolverConfig {
    pub algorithm: Algorithm,
    /// NFE for multistep / singlestep; steps * order for singlestep_fixed; unused by adaptive.
    pub steps: usize,
    pub order: usize,
    pub method: Method,
    pub skip_type: SkipType,
    pub solver_type: SolverType,
    /// Lower orders at the final steps (multistep, below 10 steps, as the official code).
    pub lower_order_final: bool,
    /// Dynamic thresholding of the x_0 predictions (Imagen): `correcting_x0_fn`.
    pub thresholding: bool,
    /// `dynamic_thresholding_ratio`: the quantile of |x_0| per sample.
    pub thresholding_ratio: f64,
    /// `thresholding_max_val`: the least threshold.
    pub thresholding_max: f64,
    /// A `correcting_x0_fn` that clamps x_0 to [-1, 1] (Imagen's static thresholding; the
    /// reference's `clip_denoised`). Not in the official code's options, which take any
    /// function there; exclusive with `thresholding`.
    pub clip_denoised: bool,
    /// One more data-prediction step to t = 0 at the end (one more NFE).
    pub denoise_to_zero: bool,
    /// Adaptive: absolute and relative tolerance.
    pub atol: f64,
    pub rtol: f64,
}

impl DpmSolverConfig {
    /// The official defaults of `sample` for `algorithm`: 20 steps, order 2, multistep,
    /// time-uniform, `dpmsolver` type, lower-order final steps, no thresholding.
    pub fn new(algorithm: Algorithm) -> Self {
        Self {
            algorithm,
            steps: 20,
            order: 2,
            method: Method::Multistep,
            skip_type: SkipType::TimeUniform,
            solver_type: SolverType::DpmSolver,
            lower_order_final: true,
            thresholding: false,
            thresholding_ratio: 0.995,
            thresholding_max: 1.0,
            clip_denoised: false,
            denoise_to_zero: false,
            atol: 0.0078,
            rtol: 0.05,
        }
    }
}

/// How the network's output relates to the noise (`model_type` of `model_wrapper`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelType {
    Noise,
    XStart,
}

/// A DPM-Solver / DPM-Solver++ sampler on the schedule of one diffusion process.
#[derive(Debug, Clone)]
pub struct DpmSolver {
    config: DpmSolverConfig,
    schedule: VpSchedule,
    model_type: ModelType,
    /// The factor of `(t - 1/total_N) * time_scale`: 1000 as the official code.
    time_scale: f64,
    nfe: usize,
}

/// The model output (eps or x_0) at a time, as the solver keeps it.
struct Eval {
    t: f64,
    value: Tensor,
}

/// `sum_i c_i * T_i`, computed term by term from the left.
pub(crate) fn comb(terms: &[(f64, &Tensor)]) -> Result<Tensor> {
    let mut acc = (terms[0].1 * terms[0].0)?;
    for &(c, t) in &terms[1..] {
        acc = (acc + (t * c)?)?;
    }
    Ok(acc)
}

/// `torch.linspace(start, end, n + 1)` in float32, as f64 values.
fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    linspace_f32(start as f32, end as f32, n + 1).into_iter().map(f64::from).collect()
}

/// The largest number of iterations of the adaptive solver before it gives up.
const MAX_ADAPTIVE_ITERS: usize = 100_000;

impl DpmSolver {
    /// The solver for a model trained with `diffusion` (its unspaced betas; any
    /// `timestep_respacing` is not used: the solver picks its own times).
    pub fn new(config: DpmSolverConfig, diffusion: &DiffusionConfig) -> Result<Self> {
        check_config(&config)?;
        let betas = get_named_beta_schedule(diffusion.noise_schedule, diffusion.steps);
        let schedule = VpSchedule::discrete(&betas)?;
        let model_type =
            if diffusion.predict_xstart { ModelType::XStart } else { ModelType::Noise };
        // The official adapter feeds `(t - 1/N) * 1000`: the discrete index for a 1000-step
        // model whose schedule kept all its steps. When the log-SNR clipping dropped steps
        // (cosine: N = 996) the factor stays 1000, so the model sees `i * 1000 / 996` for step
        // i; a quirk of the official code, matched here. A model of T != 1000 steps that does
        // not rescale its timesteps sees its own index range instead (factor T).
        let time_scale = if diffusion.rescale_timesteps { 1000.0 } else { diffusion.steps as f64 };
        Ok(Self { config, schedule, model_type, time_scale, nfe: 0 })
    }

    pub fn config(&self) -> &DpmSolverConfig {
        &self.config
    }

    /// Starts a new count of network evaluations (the stochastic form counts through this
    /// solver's model calls).
    pub(crate) fn reset_nfe(&mut self) {
        self.nfe = 0;
    }

    /// The end of a run: with `denoise_to_zero`, one more data prediction at t = 1/N (the last
    /// grid time) is the result; otherwise x as the last step left it.
    pub(crate) fn finish(&mut self, denoiser: &Denoiser, x: Tensor) -> Result<Tensor> {
        if !self.config.denoise_to_zero {
            return Ok(x);
        }
        let x0 = self.data_prediction(denoiser, &x, self.schedule.t_min())?;
        super::check_finite(&x0, self.num_steps().unwrap_or(0), self.num_steps())?;
        Ok(x0)
    }

    pub fn schedule(&self) -> &VpSchedule {
        &self.schedule
    }

    /// `get_model_input_time`: the time the network sees for continuous time `t`, in f32 as
    /// the official code computes it.
    pub fn model_time(&self, t: f64) -> f32 {
        let n = self.schedule.total_n() as f64;
        ((t as f32) - (1.0 / n) as f32) * self.time_scale as f32
    }

    /// `get_time_steps`: `n + 1` times from `t_t` down to `t_0`.
    pub fn time_steps(&self, skip: SkipType, t_t: f64, t_0: f64, n: usize) -> Vec<f64> {
        let ns = &self.schedule;
        match skip {
            SkipType::LogSnr => {
                let (lt, l0) = (ns.marginal_lambda(t_t) as f32, ns.marginal_lambda(t_0) as f32);
                linspace(lt as f64, l0 as f64, n)
                    .into_iter()
                    .map(|l| ns.inverse_lambda(l) as f32 as f64)
                    .collect()
            }
            SkipType::TimeUniform => linspace(t_t, t_0, n),
            SkipType::TimeQuadratic => linspace(t_t.sqrt(), t_0.sqrt(), n)
                .into_iter()
                .map(|v| ((v as f32) * (v as f32)) as f64)
                .collect(),
        }
    }

    /// `get_orders_and_timesteps_for_singlestep_solver`: DPM-Solver-fast's order of each step
    /// and the outer time steps.
    pub fn singlestep_orders(&self, t_t: f64, t_0: f64) -> Result<(Vec<f64>, Vec<usize>)> {
        let (steps, order, skip) = (self.config.steps, self.config.order, self.config.skip_type);
        let orders: Vec<usize> = match order {
            3 => {
                let k = steps / 3 + 1;
                match steps % 3 {
                    0 => [vec![3; k.saturating_sub(2)], vec![2, 1]].concat(),
                    1 => [vec![3; k - 1], vec![1]].concat(),
                    _ => [vec![3; k - 1], vec![2]].concat(),
                }
            }
            2 => {
                if steps % 2 == 0 {
                    vec![2; steps / 2]
                } else {
                    [vec![2; steps / 2], vec![1]].concat()
                }
            }
            1 => vec![1; steps],
            o => bail!("order {o}: must be 1, 2 or 3"),
        };
        let outer = if skip == SkipType::LogSnr {
            // As the official code ("to reproduce the results in DPM-Solver paper").
            self.time_steps(skip, t_t, t_0, orders.len())
        } else {
            let all = self.time_steps(skip, t_t, t_0, steps);
            let mut at = 0;
            let mut outer = vec![all[0]];
            for o in &orders {
                at += o;
                outer.push(all[at]);
            }
            outer
        };
        Ok((outer, orders))
    }

    /// The network's noise prediction at continuous time `t` (`noise_pred_fn` with the
    /// classifier term of `model_fn`).
    fn noise_prediction(&mut self, den: &Denoiser, x: &Tensor, t: f64) -> Result<Tensor> {
        let n = x.dim(0)?;
        let c = x.dim(1)?;
        let t_in = Tensor::full(self.model_time(t), n, x.device())?;
        let (out, gradient) = den.outputs(x, &t_in)?;
        self.nfe += 1;
        // A learned-sigma network's variance channels are not the solver's business.
        let out = if out.dim(1)? > c { out.narrow(1, 0, c)? } else { out };
        let ns = &self.schedule;
        let (alpha_t, sigma_t) = (ns.marginal_alpha(t), ns.marginal_std(t));
        let eps = match self.model_type {
            ModelType::Noise => out,
            ModelType::XStart => ((x - (out * alpha_t)?)? / sigma_t)?,
        };
        Ok(match gradient {
            Some(g) => (eps - (g * sigma_t)?)?,
            None => eps,
        })
    }

    /// `data_prediction_fn`: x_0 from the noise prediction, with its correction if one is on
    /// (dynamic thresholding, or the clamp to [-1, 1]).
    pub(crate) fn data_prediction(&mut self, den: &Denoiser, x: &Tensor, t: f64) -> Result<Tensor> {
        let noise = self.noise_prediction(den, x, t)?;
        let ns = &self.schedule;
        let (alpha_t, sigma_t) = (ns.marginal_alpha(t), ns.marginal_std(t));
        let x0 = ((x - (noise * sigma_t)?)? / alpha_t)?;
        if self.config.thresholding {
            dynamic_thresholding(&x0, self.config.thresholding_ratio, self.config.thresholding_max)
        } else if self.config.clip_denoised {
            Ok(x0.clamp(-1f32, 1f32)?)
        } else {
            Ok(x0)
        }
    }

    /// `model_fn`: the data prediction for DPM-Solver++, the noise prediction otherwise.
    fn model_fn(&mut self, den: &Denoiser, x: &Tensor, t: f64) -> Result<Eval> {
        let value = match self.config.algorithm {
            Algorithm::DpmSolverPP => self.data_prediction(den, x, t)?,
            Algorithm::DpmSolver => self.noise_prediction(den, x, t)?,
        };
        Ok(Eval { t, value })
    }

    /// The x_0 prediction behind a model value at `(x, t)` (for the step callback).
    fn pred_xstart(&self, x: &Tensor, m: &Eval) -> Result<Tensor> {
        match self.config.algorithm {
            Algorithm::DpmSolverPP => Ok(m.value.clone()),
            Algorithm::DpmSolver => {
                let ns = &self.schedule;
                let (a, s) = (ns.marginal_alpha(m.t), ns.marginal_std(m.t));
                Ok(((x - (&m.value * s)?)? / a)?)
            }
        }
    }

    /// `dpm_solver_first_update` (DPM-Solver-1, i.e. DDIM) from `s` to `t`.
    fn first_update(&self, x: &Tensor, s: f64, t: f64, model_s: &Tensor) -> Result<Tensor> {
        let ns = &self.schedule;
        let h = ns.marginal_lambda(t) - ns.marginal_lambda(s);
        let (log_alpha_s, log_alpha_t) =
            (ns.marginal_log_mean_coeff(s), ns.marginal_log_mean_coeff(t));
        let (sigma_s, sigma_t) = (ns.marginal_std(s), ns.marginal_std(t));
        let alpha_t = log_alpha_t.exp();
        match self.config.algorithm {
            Algorithm::DpmSolverPP => {
                let phi_1 = (-h).exp_m1();
                comb(&[(sigma_t / sigma_s, x), (-(alpha_t * phi_1), model_s)])
            }
            Algorithm::DpmSolver => {
                let phi_1 = h.exp_m1();
                comb(&[((log_alpha_t - log_alpha_s).exp(), x), (-(sigma_t * phi_1), model_s)])
            }
        }
    }

    /// `singlestep_dpm_solver_second_update` from `s` to `t` with the intermediate point at
    /// ratio `r1` of the step in lambda. Returns x_t and the model value at the intermediate
    /// point.
    fn singlestep_second_update(
        &mut self,
        den: &Denoiser,
        x: &Tensor,
        s: f64,
        t: f64,
        r1: f64,
        model_s: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let ns = self.schedule.clone();
        let (lambda_s, lambda_t) = (ns.marginal_lambda(s), ns.marginal_lambda(t));
        let h = lambda_t - lambda_s;
        let s1 = ns.inverse_lambda(lambda_s + r1 * h);
        let (log_alpha_s, log_alpha_s1, log_alpha_t) = (
            ns.marginal_log_mean_coeff(s),
            ns.marginal_log_mean_coeff(s1),
            ns.marginal_log_mean_coeff(t),
        );
        let (sigma_s, sigma_s1, sigma_t) =
            (ns.marginal_std(s), ns.marginal_std(s1), ns.marginal_std(t));
        let (alpha_s1, alpha_t) = (log_alpha_s1.exp(), log_alpha_t.exp());
        let taylor = self.config.solver_type == SolverType::Taylor;
        match self.config.algorithm {
            Algorithm::DpmSolverPP => {
                let phi_11 = (-r1 * h).exp_m1();
                let phi_1 = (-h).exp_m1();
                let x_s1 = comb(&[(sigma_s1 / sigma_s, x), (-(alpha_s1 * phi_11), model_s)])?;
                let model_s1 = self.model_fn(den, &x_s1, s1)?.value;
                let d = (&model_s1 - model_s)?;
                let last = if taylor {
                    (1.0 / r1) * (alpha_t * (phi_1 / h + 1.0))
                } else {
                    -(0.5 / r1) * (alpha_t * phi_1)
                };
                let x_t =
                    comb(&[(sigma_t / sigma_s, x), (-(alpha_t * phi_1), model_s), (last, &d)])?;
                Ok((x_t, model_s1))
            }
            Algorithm::DpmSolver => {
                let phi_11 = (r1 * h).exp_m1();
                let phi_1 = h.exp_m1();
                let x_s1 = comb(&[
                    ((log_alpha_s1 - log_alpha_s).exp(), x),
                    (-(sigma_s1 * phi_11), model_s),
                ])?;
                let model_s1 = self.model_fn(den, &x_s1, s1)?.value;
                let d = (&model_s1 - model_s)?;
                let last = if taylor {
                    -(1.0 / r1) * (sigma_t * (phi_1 / h - 1.0))
                } else {
                    -(0.5 / r1) * (sigma_t * phi_1)
                };
                let x_t = comb(&[
                    ((log_alpha_t - log_alpha_s).exp(), x),
                    (-(sigma_t * phi_1), model_s),
                    (last, &d),
                ])?;
                Ok((x_t, model_s1))
            }
        }
    }

    /// `singlestep_dpm_solver_third_update` from `s` to `t` with intermediate points at ratios
    /// `r1`, `r2`; `model_s1` is reused when the caller has it (the adaptive solver).
    fn singlestep_third_update(
        &mut self,
        den: &Denoiser,
        x: &Tensor,
        s: f64,
        t: f64,
        r1: f64,
        r2: f64,
        model_s: &Tensor,
        model_s1: Option<Tensor>,
    ) -> Result<Tensor> {
        let ns = self.schedule.clone();
        let (lambda_s, lambda_t) = (ns.marginal_lambda(s), ns.marginal_lambda(t));
        let h = lambda_t - lambda_s;
        let s1 = ns.inverse_lambda(lambda_s + r1 * h);
        let s2 = ns.inverse_lambda(lambda_s + r2 * h);
        let lam = |v: f64| ns.marginal_log_mean_coeff(v);
        let (log_alpha_s, log_alpha_s1, log_alpha_s2, log_alpha_t) =
            (lam(s), lam(s1), lam(s2), lam(t));
        let (sigma_s, sigma_s1, sigma_s2, sigma_t) =
            (ns.marginal_std(s), ns.marginal_std(s1), ns.marginal_std(s2), ns.marginal_std(t));
        let (alpha_s1, alpha_s2, alpha_t) =
            (log_alpha_s1.exp(), log_alpha_s2.exp(), log_alpha_t.exp());
        let taylor = self.config.solver_type == SolverType::Taylor;
        match self.config.algorithm {
            Algorithm::DpmSolverPP => {
                let phi_11 = (-r1 * h).exp_m1();
                let phi_12 = (-r2 * h).exp_m1();
                let phi_1 = (-h).exp_m1();
                let phi_22 = (-r2 * h).exp_m1() / (r2 * h) + 1.0;
                let phi_2 = phi_1 / h + 1.0;
                let phi_3 = phi_2 / h - 0.5;
                let model_s1 = match model_s1 {
                    Some(m) => m,
                    None => {
                        let x_s1 =
                            comb(&[(sigma_s1 / sigma_s, x), (-(alpha_s1 * phi_11), model_s)])?;
                        self.model_fn(den, &x_s1, s1)?.value
                    }
                };
                let d1 = (&model_s1 - model_s)?;
                let x_s2 = comb(&[
                    (sigma_s2 / sigma_s, x),
                    (-(alpha_s2 * phi_12), model_s),
                    (r2 / r1 * (alpha_s2 * phi_22), &d1),
                ])?;
                let model_s2 = self.model_fn(den, &x_s2, s2)?.value;
                let d2 = (&model_s2 - model_s)?;
                if taylor {
                    let d1_0 = (&d1 * (1.0 / r1))?;
                    let d1_1 = (&d2 * (1.0 / r2))?;
                    let big_d1 = (((&d1_0 * r2)? - (&d1_1 * r1)?)? / (r2 - r1))?;
                    let big_d2 = (((&d1_1 - &d1_0)? * 2.0)? / (r2 - r1))?;
                    comb(&[
                        (sigma_t / sigma_s, x),
                        (-(alpha_t * phi_1), model_s),
                        (alpha_t * phi_2, &big_d1),
                        (-(alpha_t * phi_3), &big_d2),
                    ])
                } else {
                    comb(&[
                        (sigma_t / sigma_s, x),
                        (-(alpha_t * phi_1), model_s),
                        ((1.0 / r2) * (alpha_t * phi_2), &d2),
                    ])
                }
            }
            Algorithm::DpmSolver => {
                let phi_11 = (r1 * h).exp_m1();
                let phi_12 = (r2 * h).exp_m1();
                let phi_1 = h.exp_m1();
                let phi_22 = (r2 * h).exp_m1() / (r2 * h) - 1.0;
                let phi_2 = phi_1 / h - 1.0;
                let phi_3 = phi_2 / h - 0.5;
                let model_s1 = match model_s1 {
                    Some(m) => m,
                    None => {
                        let x_s1 = comb(&[
                            ((log_alpha_s1 - log_alpha_s).exp(), x),
                            (-(sigma_s1 * phi_11), model_s),
                        ])?;
                        self.model_fn(den, &x_s1, s1)?.value
                    }
                };
                let d1 = (&model_s1 - model_s)?;
                let x_s2 = comb(&[
                    ((log_alpha_s2 - log_alpha_s).exp(), x),
                    (-(sigma_s2 * phi_12), model_s),
                    (-(r2 / r1) * (sigma_s2 * phi_22), &d1),
                ])?;
                let model_s2 = self.model_fn(den, &x_s2, s2)?.value;
                let d2 = (&model_s2 - model_s)?;
                let ratio = (log_alpha_t - log_alpha_s).exp();
                if taylor {
                    let d1_0 = (&d1 * (1.0 / r1))?;
                    let d1_1 = (&d2 * (1.0 / r2))?;
                    let big_d1 = (((&d1_0 * r2)? - (&d1_1 * r1)?)? / (r2 - r1))?;
                    let big_d2 = (((&d1_1 - &d1_0)? * 2.0)? / (r2 - r1))?;
                    comb(&[
                        (ratio, x),
                        (-(sigma_t * phi_1), model_s),
                        (-(sigma_t * phi_2), &big_d1),
                        (-(sigma_t * phi_3), &big_d2),
                    ])
                } else {
                    comb(&[
                        (ratio, x),
                        (-(sigma_t * phi_1), model_s),
                        (-(1.0 / r2) * (sigma_t * phi_2), &d2),
                    ])
                }
            }
        }
    }

    /// `multistep_dpm_solver_update` of `order` from the last entry of `prev` to `t`.
    fn multistep_update(
        &self,
        x: &Tensor,
        prev: &VecDeque<Eval>,
        t: f64,
        order: usize,
    ) -> Result<Tensor> {
        let ns = &self.schedule;
        let k = prev.len();
        let p0 = &prev[k - 1];
        if order == 1 {
            return self.first_update(x, p0.t, t, &p0.value);
        }
        let p1 = &prev[k - 2];
        let (lambda_p1, lambda_p0, lambda_t) =
            (ns.marginal_lambda(p1.t), ns.marginal_lambda(p0.t), ns.marginal_lambda(t));
        let (log_alpha_p0, log_alpha_t) =
            (ns.marginal_log_mean_coeff(p0.t), ns.marginal_log_mean_coeff(t));
        let (sigma_p0, sigma_t) = (ns.marginal_std(p0.t), ns.marginal_std(t));
        let alpha_t = log_alpha_t.exp();
        let h_0 = lambda_p0 - lambda_p1;
        let h = lambda_t - lambda_p0;
        let r0 = h_0 / h;
        let d1_0 = ((&p0.value - &p1.value)? * (1.0 / r0))?;
        let pp = self.config.algorithm == Algorithm::DpmSolverPP;
        let (lead_x, lead_m) = if pp {
            (sigma_t / sigma_p0, -(alpha_t * (-h).exp_m1()))
        } else {
            ((log_alpha_t - log_alpha_p0).exp(), -(sigma_t * h.exp_m1()))
        };
        if order == 2 {
            let c = match (pp, self.config.solver_type) {
                (true, SolverType::DpmSolver) => -0.5 * (alpha_t * (-h).exp_m1()),
                (true, SolverType::Taylor) => alpha_t * ((-h).exp_m1() / h + 1.0),
                (false, SolverType::DpmSolver) => -0.5 * (sigma_t * h.exp_m1()),
                (false, SolverType::Taylor) => -(sigma_t * (h.exp_m1() / h - 1.0)),
            };
            return comb(&[(lead_x, x), (lead_m, &p0.value), (c, &d1_0)]);
        }
        // Third order (the official has no taylor variant here).
        let p2 = &prev[k - 3];
        let lambda_p2 = ns.marginal_lambda(p2.t);
        let h_1 = lambda_p1 - lambda_p2;
        let r1 = h_1 / h;
        let d1_1 = ((&p1.value - &p2.value)? * (1.0 / r1))?;
        let diff = (&d1_0 - &d1_1)?;
        let big_d1 = (&d1_0 + (&diff * (r0 / (r0 + r1)))?)?;
        let big_d2 = (&diff * (1.0 / (r0 + r1)))?;
        let (c1, c2) = if pp {
            let phi_1 = (-h).exp_m1();
            let phi_2 = phi_1 / h + 1.0;
            let phi_3 = phi_2 / h - 0.5;
            (alpha_t * phi_2, -(alpha_t * phi_3))
        } else {
            let phi_1 = h.exp_m1();
            let phi_2 = phi_1 / h - 1.0;
            let phi_3 = phi_2 / h - 0.5;
            (-(sigma_t * phi_2), -(sigma_t * phi_3))
        };
        comb(&[(lead_x, x), (lead_m, &p0.value), (c1, &big_d1), (c2, &big_d2)])
    }

    /// The multistep method.
    fn sample_multistep(
        &mut self,
        den: &Denoiser,
        x: &Tensor,
        callback: &mut Option<&mut StepCallback>,
    ) -> Result<Tensor> {
        let (steps, order) = (self.config.steps, self.config.order);
        let ns = &self.schedule;
        let ts = self.time_steps(self.config.skip_type, ns.t_max(), ns.t_min(), steps);
        let mut x = x.clone();
        let mut prev: VecDeque<Eval> = VecDeque::with_capacity(order);
        prev.push_back(self.model_fn(den, &x, ts[0])?);
        for (step, &t) in ts.iter().enumerate().skip(1) {
            let step_order = multistep_order(step, order, steps, self.config.lower_order_final);
            let x_new = self.multistep_update(&x, &prev, t, step_order)?;
            let last = prev.back().expect("the history holds the previous step");
            let pred = if callback.is_some() { Some(self.pred_xstart(&x, last)?) } else { None };
            let t_model = self.model_time(last.t);
            x = x_new;
            if step < order {
                prev.push_back(self.model_fn(den, &x, t)?);
            } else {
                if prev.len() == order {
                    prev.pop_front();
                }
                // The final step needs no model value.
                let value = if step < steps { self.model_fn(den, &x, t)?.value } else { x.clone() };
                prev.push_back(Eval { t, value });
            }
            let info = StepInfo {
                index: step - 1,
                num_steps: steps,
                t: steps - step,
                t_model,
                sample: &x,
                pred_xstart: pred.as_ref().unwrap_or(&x),
            };
            finish_step(callback, info, Some(steps))?;
        }
        Ok(x)
    }

    /// `singlestep_dpm_solver_update`: one step of `order` from `s` to `t`.
    fn singlestep_update(
        &mut self,
        den: &Denoiser,
        x: &Tensor,
        s: f64,
        t: f64,
        order: usize,
        r1: f64,
        r2: f64,
    ) -> Result<(Tensor, Eval)> {
        let model_s = self.model_fn(den, x, s)?;
        let x_t = match order {
            1 => self.first_update(x, s, t, &model_s.value)?,
            2 => self.singlestep_second_update(den, x, s, t, r1, &model_s.value)?.0,
            3 => self.singlestep_third_update(den, x, s, t, r1, r2, &model_s.value, None)?,
            o => bail!("order {o}: must be 1, 2 or 3"),
        };
        Ok((x_t, model_s))
    }

    /// The singlestep methods (DPM-Solver-fast and fixed order).
    fn sample_singlestep(
        &mut self,
        den: &Denoiser,
        x: &Tensor,
        callback: &mut Option<&mut StepCallback>,
    ) -> Result<Tensor> {
        let (t_t, t_0) = (self.schedule.t_max(), self.schedule.t_min());
        let skip = self.config.skip_type;
        let (outer, orders) = if self.config.method == Method::Singlestep {
            self.singlestep_orders(t_t, t_0)?
        } else {
            let k = self.config.steps / self.config.order;
            (self.time_steps(skip, t_t, t_0, k), vec![self.config.order; k])
        };
        let mut x = x.clone();
        let n = orders.len();
        for (step, &order) in orders.iter().enumerate() {
            let (s, t) = (outer[step], outer[step + 1]);
            let inner = self.time_steps(skip, s, t, order);
            let lambda: Vec<f64> =
                inner.iter().map(|&v| self.schedule.marginal_lambda(v) as f32 as f64).collect();
            let h = lambda[order] - lambda[0];
            let r1 = if order <= 1 { 0.5 } else { (lambda[1] - lambda[0]) / h };
            let r2 = if order <= 2 { 2.0 / 3.0 } else { (lambda[2] - lambda[0]) / h };
            let (x_new, model_s) = self.singlestep_update(den, &x, s, t, order, r1, r2)?;
            let pred =
                if callback.is_some() { Some(self.pred_xstart(&x, &model_s)?) } else { None };
            x = x_new;
            let info = StepInfo {
                index: step,
                num_steps: n,
                t: n - step - 1,
                t_model: self.model_time(s),
                sample: &x,
                pred_xstart: pred.as_ref().unwrap_or(&x),
            };
            finish_step(callback, info, Some(n))?;
        }
        Ok(x)
    }

    /// `dpm_solver_adaptive`: DPM-Solver-12 (order 2) or -23 (order 3) with step-size control.
    /// The error norm is the largest over the batch, as the official code: a sample's steps
    /// depend on the other samples of its batch.
    fn sample_adaptive(
        &mut self,
        den: &Denoiser,
        x: &Tensor,
        callback: &mut Option<&mut StepCallback>,
    ) -> Result<Tensor> {
        let ns = self.schedule.clone();
        let order = self.config.order;
        let (atol, rtol, theta, t_err) = (self.config.atol, self.config.rtol, 0.9f64, 1e-5f64);
        let (t_t, t_0) = (ns.t_max(), ns.t_min());
        let mut s = t_t;
        let mut lambda_s = ns.marginal_lambda(s);
        let lambda_0 = ns.marginal_lambda(t_0);
        let mut h = 0.05f64;
        let mut x = x.clone();
        let mut x_prev = x.clone();
        let mut accepted = 0usize;
        let mut iters = 0usize;
        while (s - t_0).abs() > t_err {
            iters += 1;
            if iters > MAX_ADAPTIVE_ITERS {
                bail!("the adaptive DPM-Solver did not reach t = {t_0} in {MAX_ADAPTIVE_ITERS} iterations (s = {s}); loosen atol / rtol");
            }
            let t = ns.inverse_lambda(lambda_s + h) as f32 as f64;
            let model_s = self.model_fn(den, &x, s)?.value;
            let (x_lower, x_higher) = if order == 2 {
                let lower = self.first_update(&x, s, t, &model_s)?;
                let higher = self.singlestep_second_update(den, &x, s, t, 0.5, &model_s)?.0;
                (lower, higher)
            } else {
                let (r1, r2) = (1.0 / 3.0, 2.0 / 3.0);
                let (lower, model_s1) =
                    self.singlestep_second_update(den, &x, s, t, r1, &model_s)?;
                let higher =
                    self.singlestep_third_update(den, &x, s, t, r1, r2, &model_s, Some(model_s1))?;
                (lower, higher)
            };
            // delta = max(atol, rtol * max(|x_lower|, |x_prev|)); E = max_n rms((hi - lo) / delta).
            let delta = x_lower.abs()?.maximum(&x_prev.abs()?)?.affine(rtol, 0.0)?.maximum(atol)?;
            let ratio = ((&x_higher - &x_lower)? / delta)?;
            let n = ratio.dim(0)?;
            let e: f64 = ratio
                .sqr()?
                .reshape((n, ()))?
                .mean(1)?
                .sqrt()?
                .max(0)?
                .to_dtype(DType::F64)?
                .to_scalar()?;
            if !e.is_finite() {
                super::check_finite(&x_higher, accepted, None)?;
                bail!("the adaptive DPM-Solver's error estimate is not finite at t = {s}");
            }
            if e <= 1.0 {
                let t_model = self.model_time(s);
                x = x_higher;
                s = t;
                x_prev = x_lower;
                lambda_s = ns.marginal_lambda(s);
                let info = StepInfo {
                    index: accepted,
                    num_steps: accepted + 1,
                    t: 0,
                    t_model,
                    sample: &x,
                    pred_xstart: &x,
                };
                finish_step(callback, info, None)?;
                accepted += 1;
            }
            h = (theta * h * e.powf(-1.0 / order as f64)).min(lambda_0 - lambda_s) as f32 as f64;
        }
        Ok(x)
    }
}

impl Sampler for DpmSolver {
    fn num_steps(&self) -> Option<usize> {
        let c = &self.config;
        let steps = match c.method {
            Method::Multistep => c.steps,
            // The length of DPM-Solver-fast's order list (`singlestep_orders`).
            Method::Singlestep => match c.order {
                3 => c.steps / 3 + 1,
                2 => c.steps.div_ceil(2),
                _ => c.steps,
            },
            Method::SinglestepFixed => c.steps / c.order,
            Method::Adaptive => return None,
        };
        Some(steps)
    }

    fn nfe(&self) -> usize {
        self.nfe
    }

    fn sample(
        &mut self,
        denoiser: &Denoiser,
        x_t: &Tensor,
        _noise: &mut dyn NoiseSource,
        callback: Option<&mut StepCallback>,
    ) -> Result<Tensor> {
        let mut callback = callback;
        self.nfe = 0;
        let x = x_t.detach();
        let x = match self.config.method {
            Method::Multistep => self.sample_multistep(denoiser, &x, &mut callback)?,
            Method::Singlestep | Method::SinglestepFixed => {
                self.sample_singlestep(denoiser, &x, &mut callback)?
            }
            Method::Adaptive => self.sample_adaptive(denoiser, &x, &mut callback)?,
        };
        self.finish(denoiser, x)
    }
}

/// `dynamic_thresholding_fn` (Imagen): per sample, `s = max(quantile(|x0|, ratio), max_val)`,
/// then `clamp(x0, -s, s) / s`. The quantile interpolates linearly, as `torch.quantile`.
pub fn dynamic_thresholding(x0: &Tensor, ratio: f64, max_val: f64) -> Result<Tensor> {
    let n = x0.dim(0)?;
    let flat = x0.reshape((n, ()))?.to_dtype(DType::F32)?;
    let rows: Vec<Vec<f32>> = flat.abs()?.to_vec2()?;
    let mut s = Vec::with_capacity(n);
    for mut row in rows {
        row.sort_by(|a, b| a.total_cmp(b));
        let pos = ratio * (row.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = pos.ceil() as usize;
        let frac = (pos - lo as f64) as f32;
        let q = row[lo] + (row[hi] - row[lo]) * frac;
        s.push(q.max(max_val as f32));
    }
    let mut shape = vec![1usize; x0.rank()];
    shape[0] = n;
    let s = Tensor::from_vec(s, shape, x0.device())?;
    Ok(x0.broadcast_maximum(&s.neg()?)?.broadcast_minimum(&s)?.broadcast_div(&s)?)
}

/// Checks a configuration before anything runs.
pub(crate) fn check_config(c: &DpmSolverConfig) -> Result<()> {
    if c.steps == 0 || c.steps > super::ddpm::MAX_STEPS {
        bail!("steps={}: expected 1..={}", c.steps, super::ddpm::MAX_STEPS);
    }
    match c.method {
        Method::Adaptive if !(2..=3).contains(&c.order) => {
            bail!("order={}: the adaptive method takes order 2 or 3", c.order)
        }
        _ if !(1..=3).contains(&c.order) => bail!("order={}: expected 1, 2 or 3", c.order),
        Method::Multistep if c.steps < c.order => {
            bail!("steps={}: multistep order {} needs at least {} steps", c.steps, c.order, c.order)
        }
        Method::SinglestepFixed if c.steps < c.order => {
            bail!(
                "steps={}: singlestep_fixed order {} needs at least {} steps",
                c.steps,
                c.order,
                c.order
            )
        }
        _ => {}
    }
    for (k, v) in [("atol", c.atol), ("rtol", c.rtol)] {
        if !(v.is_finite() && v > 0.0) {
            bail!("{k}={v}: expected a positive number");
        }
    }
    if !(c.thresholding_ratio > 0.0 && c.thresholding_ratio <= 1.0) {
        bail!("thresholding_ratio={}: expected a quantile in (0, 1]", c.thresholding_ratio);
    }
    if !(c.thresholding_max.is_finite() && c.thresholding_max > 0.0) {
        bail!("thresholding_max={}: expected a positive number", c.thresholding_max);
    }
    if c.thresholding && c.clip_denoised {
        bail!("thresholding=true and clip_denoised=true are two corrections of x_0: choose one");
    }
    Ok(())
}

/// Reads the options the ODE solver shares with its SDE form ([`super::sde_dpm_solver`]) into
/// `c`; `orders` says which orders the kind takes, for the parse error.
pub(crate) fn read_shared(
    r: &mut ParamReader,
    c: &mut DpmSolverConfig,
    orders: &str,
) -> Result<()> {
    c.steps = r.value("steps", c.steps, "a positive integer")?;
    c.order = r.value("order", c.order, orders)?;
    c.skip_type = SkipType::from_name(r.choice("skip_type", "time_uniform", &SkipType::NAMES)?);
    c.solver_type =
        SolverType::from_name(r.choice("solver_type", "dpmsolver", &SolverType::NAMES)?);
    c.lower_order_final = r.bool("lower_order_final", c.lower_order_final)?;
    c.thresholding = r.bool("thresholding", c.thresholding)?;
    c.thresholding_ratio = r.float("thresholding_ratio", c.thresholding_ratio, 0.0, 1.0)?;
    c.thresholding_max = r.float("thresholding_max", c.thresholding_max, 0.0, f64::MAX)?;
    c.clip_denoised = r.bool("clip_denoised", c.clip_denoised)?;
    c.denoise_to_zero = r.bool("denoise_to_zero", c.denoise_to_zero)?;
    Ok(())
}

/// Writes the shared options of [`read_shared`] that differ from the defaults `d` (the step
/// count is each kind's own business).
pub(crate) fn write_shared(w: &mut ParamWriter, c: &DpmSolverConfig, d: &DpmSolverConfig) {
    w.put("order", c.order, d.order);
    w.put("skip_type", c.skip_type.name(), d.skip_type.name());
    w.put("solver_type", c.solver_type.name(), d.solver_type.name());
    w.put("lower_order_final", c.lower_order_final, d.lower_order_final);
    w.put("thresholding", c.thresholding, d.thresholding);
    w.put("thresholding_ratio", c.thresholding_ratio, d.thresholding_ratio);
    w.put("thresholding_max", c.thresholding_max, d.thresholding_max);
    w.put("clip_denoised", c.clip_denoised, d.clip_denoised);
    w.put("denoise_to_zero", c.denoise_to_zero, d.denoise_to_zero);
}

/// The order of multistep step `step` (1-based) of `steps`: the orders available during the
/// warm-up, then `order`, lowered at the last steps below 10 steps ("we only use lower order
/// for steps < 10", as the official code).
pub(crate) fn multistep_order(
    step: usize,
    order: usize,
    steps: usize,
    lower_order_final: bool,
) -> usize {
    if step < order {
        step
    } else if lower_order_final && steps < 10 {
        order.min(steps + 1 - step)
    } else {
        order
    }
}

/// The kinds `dpm-solver` and `dpm-solver++`.
pub(crate) struct DpmKind(Algorithm);
pub(crate) static DPM_SOLVER: DpmKind = DpmKind(Algorithm::DpmSolver);
pub(crate) static DPM_SOLVER_PP: DpmKind = DpmKind(Algorithm::DpmSolverPP);

const KEYS: &[(&str, &str)] = &[
    ("steps", "number of model evaluations (NFE) [default: 20]"),
    ("order", "solver order 1, 2 or 3 [default: 2]"),
    ("method", "multistep, singlestep, singlestep_fixed or adaptive [default: multistep]"),
    (
        "skip_type",
        "time step spacing: time_uniform, logSNR or time_quadratic [default: time_uniform]",
    ),
    ("solver_type", "dpmsolver or taylor [default: dpmsolver]"),
    (
        "lower_order_final",
        "lower orders at the last steps below 10 steps (multistep) [default: true]",
    ),
    ("thresholding", "dynamic thresholding of x_0 (Imagen) [default: false]"),
    ("thresholding_ratio", "quantile of |x_0| for thresholding [default: 0.995]"),
    ("thresholding_max", "least threshold [default: 1]"),
    (
        "clip_denoised",
        "clamp x_0 predictions to [-1, 1] (static thresholding; not official) [default: false]",
    ),
    ("denoise_to_zero", "a final denoising step to t = 0 (one more NFE) [default: false]"),
    ("atol", "adaptive: absolute tolerance [default: 0.0078]"),
    ("rtol", "adaptive: relative tolerance [default: 0.05]"),
];

impl DpmKind {
    fn read(&self, params: &Params) -> Result<DpmSolverConfig> {
        let mut r = ParamReader::new(self, params)?;
        let mut c = DpmSolverConfig::new(self.0);
        let given = |k: &str| params.contains_key(k);
        c.method = Method::from_name(r.choice("method", "multistep", &Method::NAMES)?);
        read_shared(&mut r, &mut c, "1, 2 or 3")?;
        c.atol = r.float("atol", c.atol, 0.0, f64::MAX)?;
        c.rtol = r.float("rtol", c.rtol, 0.0, f64::MAX)?;
        // Keys that mean nothing for the chosen method are mistakes, not silent no-ops.
        let adaptive = c.method == Method::Adaptive;
        for (key, applies, why) in [
            ("steps", !adaptive, "method=adaptive chooses its own steps (see atol, rtol)"),
            ("atol", adaptive, "only method=adaptive uses it"),
            ("rtol", adaptive, "only method=adaptive uses it"),
            ("lower_order_final", c.method == Method::Multistep, "only method=multistep uses it"),
            ("thresholding_ratio", c.thresholding, "it needs thresholding=true"),
            ("thresholding_max", c.thresholding, "it needs thresholding=true"),
        ] {
            if given(key) && !applies {
                bail!("{key} does not apply here: {why}");
            }
        }
        check_config(&c)?;
        Ok(c)
    }
}

impl SamplerKind for DpmKind {
    fn name(&self) -> &'static str {
        match self.0 {
            Algorithm::DpmSolver => "dpm-solver",
            Algorithm::DpmSolverPP => "dpm-solver++",
        }
    }
    fn about(&self) -> &'static str {
        match self.0 {
            Algorithm::DpmSolver => "DPM-Solver (Lu et al. 2022), noise form, official numerics",
            Algorithm::DpmSolverPP => {
                "DPM-Solver++ (Lu et al. 2022), data form, official numerics; for guided sampling"
            }
        }
    }
    fn keys(&self) -> &'static [(&'static str, &'static str)] {
        KEYS
    }
    fn normalize(&self, params: &Params) -> Result<Params> {
        let c = self.read(params)?;
        let d = DpmSolverConfig::new(self.0);
        let mut w = ParamWriter::default();
        if c.method != Method::Adaptive {
            // Always shown: the step count is what a reader of a spec wants first.
            w.put_opt("steps", Some(c.steps));
        }
        write_shared(&mut w, &c, &d);
        w.put("method", c.method.name(), d.method.name());
        w.put("atol", c.atol, d.atol);
        w.put("rtol", c.rtol, d.rtol);
        Ok(w.done())
    }
    fn build(&self, params: &Params, diffusion: &DiffusionConfig) -> Result<Box<dyn Sampler>> {
        Ok(Box::new(DpmSolver::new(self.read(params)?, diffusion)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn singlestep_orders_use_all_evaluations() {
        let d = DiffusionConfig::default();
        for order in 1..=3 {
            for steps in 1..=20 {
                let mut c = DpmSolverConfig::new(Algorithm::DpmSolverPP);
                c.method = Method::Singlestep;
                c.order = order;
                c.steps = steps;
                let s = DpmSolver::new(c, &d).unwrap();
                let (outer, orders) = s.singlestep_orders(1.0, 1e-3).unwrap();
                assert_eq!(orders.iter().sum::<usize>(), steps, "order {order} steps {steps}");
                assert_eq!(outer.len(), orders.len() + 1);
                assert_eq!(s.num_steps(), Some(orders.len()));
            }
        }
    }

    #[test]
    fn linspace_matches_endpoints() {
        let v = linspace(1.0, 0.001, 10);
        assert_eq!(v.len(), 11);
        assert_eq!(v[0], 1.0);
        assert_eq!(v[10], 0.001f32 as f64);
    }
}
