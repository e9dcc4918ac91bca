//! Guidance terms, passed to samplers as values: a sampler never branches on the kind.
//!
//! A [`Guidance`] has two hooks, each with a neutral default, so new kinds plug in without
//! touching the samplers: [`Guidance::model_output`] may replace the network's output (the place
//! for classifier-free guidance: mix a conditional and an unconditional output), and
//! [`Guidance::gradient`] may supply a (scaled) gradient of a log-probability w.r.t. x_t, which
//! each sampler folds in its own way (DDPM: `condition_mean`; DDIM: `condition_score`;
//! DPM-Solver: `eps - sigma_t * gradient`). Both receive the time as the model sees it.
//!
//! - [`classifier`]: classifier guidance (Dhariwal & Nichol 2021).
//! - [`classifier_free`]: classifier-free guidance (Ho & Salimans 2022), DiT's null class.
//! - [`interval`]: either of them limited to an interval of timesteps (Kynkäänniemi et al. 2024).
//! - [`Combined`]: classifier-free and classifier guidance together.
use candle_core::{DType, Tensor};

use crate::diffusion::ModelFn;
use crate::Result;

pub mod classifier;
pub mod classifier_free;
pub mod interval;

pub use classifier::{classifier_log_prob_grad, ClassifierFn, ClassifierGuidance};
pub use classifier_free::{ClassifierFree, LabeledModelFn};
pub use interval::Interval;

/// How a sampler is steered. `Sync`, because the samplers evaluate [`Guidance::model_output`]
/// and [`Guidance::gradient`] at the same time, on two threads: both read only x_t.
pub trait Guidance: Sync {
    /// The model output a sampler uses at `(x, t_model)`. Default: the model itself.
    fn model_output(&self, model: &ModelFn, x: &Tensor, t_model: &Tensor) -> Result<Tensor> {
        model(x, t_model)
    }

    /// A gradient of a log-probability w.r.t. `x` (already scaled), evaluated at the current
    /// x_t, or `None` for no gradient term. Default: none.
    fn gradient(&self, _x: &Tensor, _t_model: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// No guidance.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoGuidance;

impl Guidance for NoGuidance {}

/// Two guidance terms at once: the model output of `output` (e.g. classifier-free guidance)
/// and the gradient of `gradient` (e.g. classifier guidance), each evaluated as on its own.
#[derive(Clone, Copy)]
pub struct Combined<'a> {
    pub output: &'a dyn Guidance,
    pub gradient: &'a dyn Guidance,
}

impl Guidance for Combined<'_> {
    fn model_output(&self, model: &ModelFn, x: &Tensor, t_model: &Tensor) -> Result<Tensor> {
        self.output.model_output(model, x, t_model)
    }

    fn gradient(&self, x: &Tensor, t_model: &Tensor) -> Result<Option<Tensor>> {
        self.gradient.gradient(x, t_model)
    }
}

/// Class labels of an integer tensor as `usize`s.
pub fn labels_to_vec(labels: &Tensor) -> Result<Vec<usize>> {
    let labels = labels.flatten_all()?;
    Ok(match labels.dtype() {
        DType::I64 => labels.to_vec1::<i64>()?.into_iter().map(|v| v as usize).collect(),
        _ => {
            labels.to_dtype(DType::U32)?.to_vec1::<u32>()?.into_iter().map(|v| v as usize).collect()
        }
    })
}
