//! The denoiser every sampler asks: the network and the guidance together. At (x_t, t as the
//! model sees it) it gives the guided network output (the guidance may replace it, e.g. the
//! classifier-free mix) and the guidance gradient (the classifier's, already scaled); each
//! sampler folds the gradient in its own way (DDPM's mean shift, DDIM's score correction,
//! DPM-Solver's `eps - sigma_t * gradient`).
use candle_core::Tensor;

use super::SampleOptions;
use crate::diffusion::ModelFn;
use crate::Result;

/// A network with its guidance and the reference's x_0 options.
#[derive(Clone, Copy)]
pub struct Denoiser<'a> {
    pub model: &'a ModelFn<'a>,
    pub opts: SampleOptions<'a>,
}

impl<'a> Denoiser<'a> {
    pub fn new(model: &'a ModelFn<'a>, opts: SampleOptions<'a>) -> Self {
        Self { model, opts }
    }

    /// The guided network output and the guidance gradient at `(x, t_model)`, computed at the
    /// same time on rayon: both read only x_t, so they are independent, and the serial
    /// stretches of one (op dispatch, small layers, the autograd bookkeeping) overlap with the
    /// parallel kernels of the other. The results are those of running them one after the
    /// other (64x64 model and classifier at batch 1: 1.14 -> 0.99 s for both). On the CPU only.
    pub fn outputs(&self, x: &Tensor, t_model: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let guidance = self.opts.guidance;
        let output = || guidance.model_output(self.model, x, t_model);
        let gradient = || guidance.gradient(x, t_model);
        if !x.device().is_cpu() {
            // An accelerator runs one stream of kernels anyway; keep to one thread there.
            return Ok((output()?, gradient()?));
        }
        let (output, gradient) = rayon::join(output, gradient);
        Ok((output?, gradient?))
    }
}
