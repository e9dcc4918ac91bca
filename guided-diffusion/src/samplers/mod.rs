//! Samplers: the methods that turn x_T into x_0 with a (guided) denoiser.
//!
//! A sampler is a value implementing [`Sampler`]: it owns its time grid (a respaced
//! [`GaussianDiffusion`] for DDPM/DDIM, a [`VpSchedule`] time grid for the DPM-Solvers) and its
//! state (the multistep history), and asks one [`Denoiser`] (the network plus guidance) for
//! what it needs at (x_t, t): the guided output and the guidance gradient. Guidance is a value
//! too ([`crate::guidance`]); any guidance works with any sampler.
//!
//! - [`ddpm`]: ancestral sampling (`p_sample`), guidance as the reference's mean shift.
//! - [`ddim`]: DDIM with eta (`ddim_sample`) and its reverse ODE, guidance as the reference's
//!   score correction.
//! - [`dpm_solver`]: DPM-Solver and DPM-Solver++ (Lu et al. 2022), all methods of the official
//!   `dpm_solver_pytorch.py`, on the [`vp_schedule`] of the official code.
//! - [`sde_dpm_solver`]: SDE-DPM-Solver++ ("DPM++ 2M SDE"), the multistep DPM-Solver++ on the
//!   reverse SDE: a noise draw per step, on the same time grid and model adapter.
//! - [`spec`]: [`SamplerSpec`], the one type that parses and prints a sampler ("ddim25",
//!   "dpm-solver++ steps=20 order=2") and builds it; its registry lists every sampler.
//!
//! Adding a sampler is one file (a [`Sampler`] and a [`spec::SamplerKind`]) plus one line in
//! the registry of [`spec`].
//!
//! Every loop checks x once per step for NaN/Inf (one reduction, negligible beside a network
//! call) and stops with the step and the likely causes, instead of returning black images.
use candle_core::Tensor;

use crate::diffusion::{DenoisedFn, NoiseSource};
use crate::guidance::{Guidance, NoGuidance};
use crate::{bail, Result};

pub mod ddim;
pub mod ddpm;
pub mod denoiser;
pub mod dpm_solver;
pub mod sde_dpm_solver;
pub mod spec;
pub mod vp_schedule;

pub use crate::diffusion::GaussianDiffusion;
pub use ddim::Ddim;
pub use ddpm::Ddpm;
pub use denoiser::Denoiser;
pub use dpm_solver::{DpmSolver, DpmSolverConfig};
pub use sde_dpm_solver::SdeDpmSolver;
pub use spec::SamplerSpec;
pub use vp_schedule::VpSchedule;

/// The reference's sampling-loop options besides the model. DPM-Solver ignores `clip_denoised`
/// and `denoised_fn`, as the official code (it has dynamic thresholding instead).
#[derive(Clone, Copy)]
pub struct SampleOptions<'a> {
    /// Clamp the x_0 prediction to [-1, 1].
    pub clip_denoised: bool,
    /// Applied to the x_0 prediction before the clip.
    pub denoised_fn: Option<&'a DenoisedFn<'a>>,
    /// Guidance (none by default).
    pub guidance: &'a dyn Guidance,
}

impl Default for SampleOptions<'_> {
    fn default() -> Self {
        Self { clip_denoised: true, denoised_fn: None, guidance: &NoGuidance }
    }
}

/// The result of one reverse step of DDPM/DDIM.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// x_{t-1} (x_{t+1} for the reverse ODE).
    pub sample: Tensor,
    /// The step's x_0 prediction (after guidance for DDIM).
    pub pred_xstart: Tensor,
}

/// What a loop reports after each step.
#[derive(Debug)]
pub struct StepInfo<'a> {
    /// 0-based step count in loop order.
    pub index: usize,
    /// Number of steps of the loop (for an adaptive solver: the steps taken so far plus one).
    pub num_steps: usize,
    /// DDPM/DDIM: the index of this step in the (respaced) process. DPM-Solver: the index of
    /// the step's end point in its time grid (counting down to 0 at the last step).
    pub t: usize,
    /// The time the model saw at the step's start (original timestep, rescaled if configured;
    /// fractional for DPM-Solver).
    pub t_model: f32,
    /// x after the step.
    pub sample: &'a Tensor,
    /// The x_0 prediction the step used.
    pub pred_xstart: &'a Tensor,
}

/// Per-step callback of the loops (progress, intermediates); an error stops the loop.
pub type StepCallback<'a> = dyn FnMut(&StepInfo<'_>) -> Result<()> + 'a;

/// A sampling method with its time grid and state.
pub trait Sampler {
    /// The number of steps (callbacks) of a run; `None` when the solver chooses its own steps
    /// (the adaptive DPM-Solver).
    fn num_steps(&self) -> Option<usize>;

    /// Network evaluations per sample of the last run (NFE). A guided step counts once (the
    /// classifier's gradient and classifier-free guidance's second half are not counted).
    fn nfe(&self) -> usize;

    /// Runs from `x_t` (x_T) to x_0. `noise` feeds stochastic samplers (one draw per step for
    /// DDPM and DDIM, as the reference; one per step for SDE-DPM-Solver++); deterministic
    /// solvers draw nothing.
    fn sample(
        &mut self,
        denoiser: &Denoiser,
        x_t: &Tensor,
        noise: &mut dyn NoiseSource,
        callback: Option<&mut StepCallback>,
    ) -> Result<Tensor>;
}

/// Stops a loop whose x went non-finite, naming the step and the likely causes.
pub(crate) fn check_finite(x: &Tensor, index: usize, num_steps: Option<usize>) -> Result<()> {
    let sum = x.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    if !sum.is_finite() {
        let of = num_steps.map(|n| format!("/{n}")).unwrap_or_default();
        bail!(
            "sampling produced non-finite values (NaN or Inf) at step {}{of}: the network's \
             output or the guidance overflowed. Check the checkpoint's weights, x_T \
             (--init_noise) and the guidance scales (--classifier_scale, --cfg_scale)",
            index + 1
        );
    }
    Ok(())
}

/// The shared end of a step: the finite check, then the callback.
pub(crate) fn finish_step(
    callback: &mut Option<&mut StepCallback>,
    info: StepInfo<'_>,
    num_steps: Option<usize>,
) -> Result<()> {
    check_finite(info.sample, info.index, num_steps)?;
    if let Some(cb) = callback.as_deref_mut() {
        cb(&info)?;
    }
    Ok(())
}
