//! Guidance limited to an interval of timesteps (Kynkäänniemi et al. 2024, "Applying Guidance
//! in a Limited Interval Improves Sample and Distribution Quality in Diffusion Models"): inside
//! `[lo, hi]` (in the model's time, the original process's timesteps) the inner guidance runs;
//! outside, the network's own (conditional) output is used and nothing else is evaluated, so
//! the unconditional half and the classifier cost nothing there.
use candle_core::Tensor;

use super::Guidance;
use crate::diffusion::ModelFn;
use crate::{bail, Result};

/// `inner` guidance for model times in `[lo, hi]` only.
pub struct Interval<'a> {
    inner: &'a dyn Guidance,
    lo: f64,
    hi: f64,
}

impl<'a> Interval<'a> {
    pub fn new(inner: &'a dyn Guidance, lo: f64, hi: f64) -> Result<Self> {
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            bail!("guidance interval [{lo}, {hi}]: expected finite bounds with lo <= hi");
        }
        Ok(Self { inner, lo, hi })
    }

    /// Whether the batch's time is inside the interval. The samplers give one time to the
    /// whole batch; its first entry decides.
    fn active(&self, t_model: &Tensor) -> Result<bool> {
        let t = t_model.flatten_all()?.get(0)?.to_dtype(candle_core::DType::F64)?;
        let t = t.to_scalar::<f64>()?;
        Ok(t >= self.lo && t <= self.hi)
    }
}

impl Guidance for Interval<'_> {
    fn model_output(&self, model: &ModelFn, x: &Tensor, t_model: &Tensor) -> Result<Tensor> {
        if self.active(t_model)? {
            self.inner.model_output(model, x, t_model)
        } else {
            model(x, t_model)
        }
    }

    fn gradient(&self, x: &Tensor, t_model: &Tensor) -> Result<Option<Tensor>> {
        if self.active(t_model)? {
            self.inner.gradient(x, t_model)
        } else {
            Ok(None)
        }
    }
}
