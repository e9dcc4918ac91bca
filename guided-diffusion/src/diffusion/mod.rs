//! The Gaussian diffusion process: schedules, respacing, q/p distributions, losses, samplers.
//!
//! A port of the reference's `gaussian_diffusion.py`, `respace.py`, `losses.py` and
//! `resample.py`, numerically matching it (schedules in f64, tensor math in f32 in the same
//! order). The network is just a function ([`ModelFn`]): `(x_t, t as the model sees it) -> output`;
//! class labels or other conditioning are captured by the closure.
//!
//! - [`schedule`]: beta schedules. [`respace`]: `space_timesteps`.
//! - [`gaussian`]: [`GaussianDiffusion`] (arrays, timestep map, q/posterior/p_mean_variance).
//! - [`config`]: [`DiffusionConfig`], the flags of `create_gaussian_diffusion`.
//! - [`likelihood`]: normal KL, discretized Gaussian log-likelihood.
//! - [`training`]: training losses, VB terms, bits per dim.
//! - [`noise`]: noise sources (the samplers themselves are in [`crate::samplers`]).
//! - [`schedule_sampler`]: timestep samplers for training.
use candle_core::Tensor;

use crate::Result;

pub mod config;
pub mod gaussian;
pub mod likelihood;
pub mod noise;
pub mod respace;
pub mod schedule;
pub mod schedule_sampler;
pub mod training;

pub use config::DiffusionConfig;
pub use gaussian::{
    mean_flat, DiffusionArrays, GaussianDiffusion, LossType, ModelMeanType, ModelVarType,
    PMeanVariance, ProcessKind,
};
pub use noise::{NoiseSource, ReplayNoise, SeededNoise};
pub use respace::space_timesteps;
pub use schedule::{get_named_beta_schedule, NoiseSchedule};
pub use schedule_sampler::{
    create_named_schedule_sampler, LossSecondMomentResampler, ScheduleSampler, UniformSampler,
};
pub use training::{BpdTerms, TrainingLosses, VbTerms};

/// The denoising network as a function: `(x_t [N, C, H, W] f32, t [N] f32) -> output`, where `t`
/// is what the model sees (the original timestep of a respaced process, rescaled to 0..1000 if
/// `rescale_timesteps`). Outputs 2C channels for learned variances. Must be differentiable
/// w.r.t. its weights for training. `Sync`: a guided sampling step calls it on one thread while
/// the guidance gradient runs on another.
pub type ModelFn<'a> = dyn Fn(&Tensor, &Tensor) -> Result<Tensor> + Sync + 'a;

/// A function applied to the x_0 prediction before clipping (`denoised_fn`).
pub type DenoisedFn<'a> = dyn Fn(&Tensor) -> Result<Tensor> + Sync + 'a;
