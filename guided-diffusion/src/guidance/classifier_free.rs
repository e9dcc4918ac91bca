//! Classifier-free guidance (Ho & Salimans 2022) in DiT's convention (facebookresearch/DiT,
//! `forward_with_cfg`): the class-conditional network is run once on a batch of 2N, the asked
//! labels and the null class, and the first C output channels are mixed as
//! `eps_uncond + scale * (eps_cond - eps_uncond)`; the variance channels of a learned-sigma
//! network are the conditional half's. Scale 1 is plain conditional sampling and runs the
//! network on N only, as the official DPM-Solver wrapper does.
//!
//! The null class is the last row of the label embedding of a model trained with label
//! dropout (`gdiff train --class_dropout_prob`).
use candle_core::Tensor;

use super::Guidance;
use crate::diffusion::ModelFn;
use crate::{bail, Result};

/// The class-conditional network as a function of its labels: `(x_t, t as the model sees it,
/// y [N] integer labels) -> output`.
pub type LabeledModelFn<'a> = dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Sync + 'a;

/// Classifier-free guidance with `scale` towards `labels` against `null_class`.
pub struct ClassifierFree<'a> {
    model: &'a LabeledModelFn<'a>,
    /// `[2N]` labels: the asked ones, then the null class N times.
    both: Tensor,
    scale: f64,
}

impl<'a> ClassifierFree<'a> {
    /// `labels`: `[N]` integer tensor of the asked classes; `null_class`: the unconditional
    /// label; `scale`: the guidance scale (1 = conditional).
    pub fn new(
        model: &'a LabeledModelFn<'a>,
        labels: &Tensor,
        null_class: usize,
        scale: f64,
    ) -> Result<Self> {
        if !scale.is_finite() {
            bail!("classifier-free guidance: the scale {scale} is not finite");
        }
        let labels = labels.flatten_all()?.to_dtype(candle_core::DType::U32)?;
        let null = Tensor::full(null_class as u32, labels.dim(0)?, labels.device())?;
        let both = Tensor::cat(&[&labels, &null], 0)?;
        Ok(Self { model, both, scale })
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }
}

impl Guidance for ClassifierFree<'_> {
    fn model_output(&self, model: &ModelFn, x: &Tensor, t_model: &Tensor) -> Result<Tensor> {
        if self.scale == 1.0 {
            return model(x, t_model);
        }
        let n = x.dim(0)?;
        if self.both.dim(0)? != 2 * n {
            bail!("classifier-free guidance: {} labels for a batch of {n}", self.both.dim(0)? / 2);
        }
        let x2 = Tensor::cat(&[x, x], 0)?;
        let t2 = Tensor::cat(&[t_model, t_model], 0)?;
        let out = (self.model)(&x2, &t2, &self.both)?;
        let (cond, uncond) = (out.narrow(0, 0, n)?, out.narrow(0, n, n)?);
        let c = x.dim(1)?;
        let (eps_c, eps_u) = (cond.narrow(1, 0, c)?, uncond.narrow(1, 0, c)?);
        let mixed = (&eps_u + ((&eps_c - &eps_u)? * self.scale)?)?;
        let rest = out.dim(1)? - c;
        if rest == 0 {
            return Ok(mixed);
        }
        Ok(Tensor::cat(&[&mixed, &cond.narrow(1, c, rest)?], 1)?)
    }
}
