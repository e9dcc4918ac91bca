//! Classifier guidance (Dhariwal & Nichol 2021): the gradient of a noise-aware classifier's
//! log-probability of the asked class, `scale * grad_x log p(y | x_t)`, the reference's
//! `cond_fn` of `classifier_sample.py`.
use candle_core::{Tensor, Var};

use super::{labels_to_vec, Guidance};
use crate::{bail, Result};

/// The noisy-image classifier as a function: `(x_t [N, C, H, W], t as the model sees it [N]) ->
/// logits [N, K]`, differentiable w.r.t. x.
pub type ClassifierFn<'a> = dyn Fn(&Tensor, &Tensor) -> Result<Tensor> + Sync + 'a;

/// Classifier guidance: `scale * grad_x sum_i log_softmax(classifier(x, t))[i, y_i]`.
pub struct ClassifierGuidance<'a> {
    classifier: &'a ClassifierFn<'a>,
    labels: Vec<usize>,
    scale: f64,
}

impl<'a> ClassifierGuidance<'a> {
    /// `labels`: the asked class of each batch element; `scale`: `classifier_scale`.
    pub fn new(classifier: &'a ClassifierFn<'a>, labels: Vec<usize>, scale: f64) -> Self {
        Self { classifier, labels, scale }
    }

    /// Labels from an integer tensor `[N]` (u8/u32/i64).
    pub fn from_label_tensor(
        classifier: &'a ClassifierFn<'a>,
        labels: &Tensor,
        scale: f64,
    ) -> Result<Self> {
        let labels = labels_to_vec(labels)?;
        Ok(Self::new(classifier, labels, scale))
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }
}

impl Guidance for ClassifierGuidance<'_> {
    fn gradient(&self, x: &Tensor, t_model: &Tensor) -> Result<Option<Tensor>> {
        classifier_log_prob_grad(self.classifier, x, t_model, &self.labels, self.scale).map(Some)
    }
}

/// The `cond_fn` of the reference's `classifier_sample.py`:
/// `d/dx sum_i log_softmax(classifier(x, t))[i, labels_i] * scale`, by candle autograd.
pub fn classifier_log_prob_grad(
    classifier: &ClassifierFn,
    x: &Tensor,
    t_model: &Tensor,
    labels: &[usize],
    scale: f64,
) -> Result<Tensor> {
    let x_in = Var::from_tensor(&x.detach())?;
    let logits = classifier(x_in.as_tensor(), t_model)?;
    let (n, k) = logits.dims2()?;
    if labels.len() != n {
        bail!("classifier guidance: {} labels for a batch of {n}", labels.len());
    }
    if let Some(&bad) = labels.iter().find(|&&y| y >= k) {
        bail!("classifier guidance: label {bad} out of range for {k} classes");
    }
    // log_softmax with a detached max (its gradient cancels exactly in theory).
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    let log_probs = shifted.broadcast_sub(&lse)?;
    let idx: Vec<u32> = labels.iter().map(|&y| y as u32).collect();
    let idx = Tensor::from_vec(idx, (n, 1), logits.device())?;
    let selected = log_probs.gather(&idx, 1)?.sum_all()?;
    let grads = selected.backward()?;
    let Some(g) = grads.get(x_in.as_tensor()) else {
        bail!("classifier guidance: the classifier output does not depend on x (no gradient)");
    };
    Ok((g * scale)?)
}
