//! SDE-DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
//! Diffusion Probabilistic Models", and the authors' `sde-dpmsolver++` of diffusers'
//! `DPMSolverMultistepScheduler`): the multistep DPM-Solver++ of [`super::dpm_solver`] applied
//! to the reverse diffusion *SDE* instead of the probability-flow ODE. k-diffusion calls the
//! second-order form "DPM++ 2M SDE".
//!
//! With h = lambda_t - lambda_s and a fresh z ~ N(0, I) at every step, the steps are
//! - first order: `x_t = (sigma_t / sigma_s) e^-h x_s + alpha_t (1 - e^-2h) D_0
//!   + sigma_t sqrt(1 - e^-2h) z`;
//! - second order (multistep): the same plus `0.5 alpha_t (1 - e^-2h) D_1` (`solver_type=
//!   dpmsolver`, diffusers' "midpoint") or `alpha_t ((1 - e^-2h) / (-2h) + 1) D_1` (`taylor`,
//!   diffusers' "heun"), where `D_1 = (D_0 - D_prev) / r0` and `r0 = h_prev / h`.
//!
//! `D` is the data (x_0) prediction with its correction (the clamp, or dynamic thresholding).
//! Everything but the update is the ODE solver's: the official time grid on the continuous-time
//! [`super::VpSchedule`] (from 1 down to 1/N), the model adapter, guidance, and the lower
//! orders at the last steps below 10 steps. The diffusers scheduler runs on its own discrete
//! time grid down to sigma = 0; here the grid ends at t = 1/N as the ODE solver's, so the last
//! step adds noise of std `sigma_{1/N} sqrt(1 - e^-2h)` (0.006 for the cosine schedule, under
//! one 8-bit level); `denoise_to_zero=true` ends on a data prediction instead.
//!
//! Why it is here: the injected noise corrects errors of an imperfect model that the ODE
//! carries to the end. On the built-in Fashion-MNIST model, 20 steps of the SDE form reach the
//! judge's Fréchet distance of 250 ancestral (DDPM) steps, where the ODE solvers stay near
//! three times higher however many steps they take.
use std::collections::VecDeque;

use candle_core::Tensor;

use super::dpm_solver::{
    comb, multistep_order, read_shared, write_shared, Algorithm, DpmSolver, DpmSolverConfig,
    SolverType,
};
use super::spec::{ParamReader, ParamWriter, Params, SamplerKind};
use super::{finish_step, Denoiser, Sampler, StepCallback, StepInfo};
use crate::diffusion::{DiffusionConfig, NoiseSource};
use crate::{bail, Result};

/// The stochastic multistep DPM-Solver++ on the schedule of one diffusion process.
#[derive(Debug, Clone)]
pub struct SdeDpmSolver {
    /// The ODE solver this one shares its schedule, time grid and model adapter with; its
    /// config holds the options (`algorithm` DPM-Solver++, `method` multistep).
    ode: DpmSolver,
}

/// A data prediction at a time.
struct Eval {
    t: f64,
    value: Tensor,
}

impl SdeDpmSolver {
    /// The solver for a model trained with `diffusion`. `config` must be DPM-Solver++,
    /// multistep, order 1 or 2.
    pub fn new(config: DpmSolverConfig, diffusion: &DiffusionConfig) -> Result<Self> {
        check(&config)?;
        Ok(Self { ode: DpmSolver::new(config, diffusion)? })
    }

    pub fn config(&self) -> &DpmSolverConfig {
        self.ode.config()
    }

    /// One step from the last entry of `prev` to `t`, of `order` (1 or 2), with noise `z`.
    fn update(
        &self,
        x: &Tensor,
        prev: &VecDeque<Eval>,
        t: f64,
        order: usize,
        z: &Tensor,
    ) -> Result<Tensor> {
        let ns = self.ode.schedule();
        let k = prev.len();
        let p0 = &prev[k - 1];
        let lambda_p0 = ns.marginal_lambda(p0.t);
        let h = ns.marginal_lambda(t) - lambda_p0;
        let (sigma_p0, sigma_t) = (ns.marginal_std(p0.t), ns.marginal_std(t));
        let alpha_t = ns.marginal_log_mean_coeff(t).exp();
        // 1 - e^-2h, without the cancellation of small h.
        let one_minus = -(-2.0 * h).exp_m1();
        let lead_x = sigma_t / sigma_p0 * (-h).exp();
        let lead_m = alpha_t * one_minus;
        let lead_z = sigma_t * one_minus.sqrt();
        if order == 1 {
            return comb(&[(lead_x, x), (lead_m, &p0.value), (lead_z, z)]);
        }
        let p1 = &prev[k - 2];
        let r0 = (lambda_p0 - ns.marginal_lambda(p1.t)) / h;
        let d1 = ((&p0.value - &p1.value)? * (1.0 / r0))?;
        let c = match self.config().solver_type {
            SolverType::DpmSolver => 0.5 * alpha_t * one_minus,
            SolverType::Taylor => alpha_t * ((-2.0 * h).exp_m1() / (2.0 * h) + 1.0),
        };
        comb(&[(lead_x, x), (lead_m, &p0.value), (c, &d1), (lead_z, z)])
    }
}

impl Sampler for SdeDpmSolver {
    fn num_steps(&self) -> Option<usize> {
        Some(self.config().steps)
    }

    fn nfe(&self) -> usize {
        self.ode.nfe()
    }

    fn sample(
        &mut self,
        denoiser: &Denoiser,
        x_t: &Tensor,
        noise: &mut dyn NoiseSource,
        callback: Option<&mut StepCallback>,
    ) -> Result<Tensor> {
        let mut callback = callback;
        self.ode.reset_nfe();
        let (steps, order) = (self.config().steps, self.config().order);
        let lower_order_final = self.config().lower_order_final;
        let ns = self.ode.schedule();
        let (t_max, t_min) = (ns.t_max(), ns.t_min());
        let ts = self.ode.time_steps(self.config().skip_type, t_max, t_min, steps);
        let mut x = x_t.detach();
        let mut prev: VecDeque<Eval> = VecDeque::with_capacity(order);
        prev.push_back(Eval { t: ts[0], value: self.ode.data_prediction(denoiser, &x, ts[0])? });
        for (step, &t) in ts.iter().enumerate().skip(1) {
            let step_order = multistep_order(step, order, steps, lower_order_final);
            let z = noise.randn(x.shape(), x.device())?.to_dtype(x.dtype())?;
            let x_new = self.update(&x, &prev, t, step_order, &z)?;
            let last = prev.back().expect("the history holds the previous step");
            let t_model = self.ode.model_time(last.t);
            let pred = last.value.clone();
            x = x_new;
            // The final step needs no model value.
            if step < steps {
                if prev.len() == order {
                    prev.pop_front();
                }
                prev.push_back(Eval { t, value: self.ode.data_prediction(denoiser, &x, t)? });
            }
            let info = StepInfo {
                index: step - 1,
                num_steps: steps,
                t: steps - step,
                t_model,
                sample: &x,
                pred_xstart: &pred,
            };
            finish_step(&mut callback, info, Some(steps))?;
        }
        self.ode.finish(denoiser, x)
    }
}

/// What the stochastic form supports of the ODE solver's options.
fn check(c: &DpmSolverConfig) -> Result<()> {
    if c.algorithm != Algorithm::DpmSolverPP {
        bail!("the SDE solver is the data-prediction form (DPM-Solver++)");
    }
    if c.method != super::dpm_solver::Method::Multistep {
        bail!("the SDE solver is multistep");
    }
    if !(1..=2).contains(&c.order) {
        bail!("order={}: the SDE solver takes order 1 or 2", c.order);
    }
    super::dpm_solver::check_config(c)
}

/// The kind `sde-dpm-solver++`.
pub(crate) struct SdeKind;
pub(crate) static SDE_DPM_SOLVER_PP: SdeKind = SdeKind;

const KEYS: &[(&str, &str)] = &[
    ("steps", "number of model evaluations (NFE) [default: 20]"),
    ("order", "solver order 1 or 2 [default: 2]"),
    (
        "skip_type",
        "time step spacing: time_uniform, logSNR or time_quadratic [default: time_uniform]",
    ),
    ("solver_type", "dpmsolver (midpoint) or taylor (heun) [default: dpmsolver]"),
    ("lower_order_final", "lower orders at the last steps below 10 steps [default: true]"),
    ("thresholding", "dynamic thresholding of x_0 (Imagen) [default: false]"),
    ("thresholding_ratio", "quantile of |x_0| for thresholding [default: 0.995]"),
    ("thresholding_max", "least threshold [default: 1]"),
    ("clip_denoised", "clamp x_0 predictions to [-1, 1] (static thresholding) [default: false]"),
    ("denoise_to_zero", "a final denoising step to t = 0 (one more NFE) [default: false]"),
];

impl SdeKind {
    fn read(&self, params: &Params) -> Result<DpmSolverConfig> {
        let mut r = ParamReader::new(self, params)?;
        let mut c = DpmSolverConfig::new(Algorithm::DpmSolverPP);
        read_shared(&mut r, &mut c, "1 or 2")?;
        for key in ["thresholding_ratio", "thresholding_max"] {
            if params.contains_key(key) && !c.thresholding {
                bail!("{key} does not apply here: it needs thresholding=true");
            }
        }
        check(&c)?;
        Ok(c)
    }
}

impl SamplerKind for SdeKind {
    fn name(&self) -> &'static str {
        "sde-dpm-solver++"
    }
    fn about(&self) -> &'static str {
        "SDE-DPM-Solver++ (DPM++ 2M SDE): multistep DPM-Solver++ on the reverse SDE, a fresh \
         noise draw per step"
    }
    fn keys(&self) -> &'static [(&'static str, &'static str)] {
        KEYS
    }
    fn normalize(&self, params: &Params) -> Result<Params> {
        let c = self.read(params)?;
        let d = DpmSolverConfig::new(Algorithm::DpmSolverPP);
        let mut w = ParamWriter::default();
        w.put_opt("steps", Some(c.steps));
        write_shared(&mut w, &c, &d);
        Ok(w.done())
    }
    fn build(&self, params: &Params, diffusion: &DiffusionConfig) -> Result<Box<dyn Sampler>> {
        Ok(Box::new(SdeDpmSolver::new(self.read(params)?, diffusion)?))
    }
}
