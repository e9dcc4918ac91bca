//! What the training loop asks of a model: per-sample losses of a micro-batch. The loop is
//! generic over it, so the diffusion loss (`training_losses` + schedule sampler) and the
//! classifier's cross-entropy plug in the same way.
use std::collections::HashMap;

use candle_core::{Device, Tensor};

use crate::data::rng::StreamRng;
use crate::data::Batch;
use crate::Result;

/// Handed to [`Objective::losses`].
pub struct StepContext<'a> {
    /// Completed steps before this one (the step being computed is `step + 1`).
    pub step: u64,
    /// Randomness of the step for a resumed run to continue identically; the stream is derived
    /// from `(seed, step)` and shared by the rank's micro-batches in order (so it depends on how
    /// the batch is split; per-sample draws should use [`StepContext::row_rng`]). Draw
    /// host-side and upload (e.g. [`randn`]).
    pub rng: &'a mut StreamRng,
    /// False for evaluation passes (no backward follows).
    pub train: bool,
    pub device: &'a Device,
    /// Key of this step's per-sample streams (see [`StepContext::row_rng`]).
    pub row_key: u64,
    /// Global row of the micro-batch's first sample within the step's global batch (all ranks
    /// together): `rank * batch_size + micro-batch start`.
    pub first_row: u64,
    /// The processes sharing the step (one by default). Every rank calls the objective the
    /// same number of times, so objectives may use collectives (the loss-aware schedule
    /// sampler gathers every rank's losses).
    pub dist: &'a dyn crate::dist::Distributed,
}

impl StepContext<'_> {
    /// The random stream of sample `i` of the micro-batch, a function of the step and the
    /// sample's global row only. Objectives draw per-sample randomness (timestep, noise) from
    /// here so that the draws do not depend on how the global batch is split into ranks and
    /// micro-batches: N ranks with batch b see exactly what one process with batch N*b sees.
    pub fn row_rng(&self, i: usize) -> StreamRng {
        crate::data::rng::stream(
            self.row_key,
            crate::data::rng::domain::STEP,
            self.first_row + i as u64,
        )
    }
}

/// The key of `row_rng` for `(seed, domain, step)`.
pub fn row_key(seed: u64, domain: u64, step: u64) -> u64 {
    use rand::RngCore;
    // A stream distinct from the step stream `stream(seed, domain, step)` itself.
    crate::data::rng::stream(seed ^ 0x726f_775f_6b65_7973, domain, step).next_u64()
}

/// Per-sample results of one micro-batch.
pub struct Losses {
    /// `[n]` differentiable per-sample loss; the loop minimises `mean(loss * weights)`.
    pub loss: Tensor,
    /// `[n]` importance weights of the schedule sampler (None: all 1).
    pub weights: Option<Tensor>,
    /// Per-sample values to log, e.g. `("loss", ..), ("mse", ..), ("vb", ..)` or
    /// `("train_loss", ..), ("train_acc@1", ..)`. Multiplied by `weights` before logging, as the
    /// reference's `log_loss_dict(diffusion, t, {k: v * weights})`.
    pub terms: Vec<(String, Tensor)>,
    /// Diffusion timestep of each sample and the number of timesteps, for the `<key>_q0..q3`
    /// quartile keys; None: no quartile keys.
    pub timesteps: Option<(Vec<i64>, usize)>,
}

pub trait Objective {
    fn losses(&mut self, batch: &Batch, ctx: &mut StepContext<'_>) -> Result<Losses>;

    /// State to keep across a resume (e.g. the loss-second-moment sampler's history), saved in
    /// the `opt*` checkpoint under `objective.<name>`.
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }
    fn load_state(&mut self, _state: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}

impl<F> Objective for F
where
    F: FnMut(&Batch, &mut StepContext<'_>) -> Result<Losses>,
{
    fn losses(&mut self, batch: &Batch, ctx: &mut StepContext<'_>) -> Result<Losses> {
        self(batch, ctx)
    }
}

/// Standard normal f32 tensor of `shape` drawn from `rng` (host-side, so it is reproducible on
/// every device; candle's own CPU `randn` cannot be seeded).
pub fn randn(rng: &mut StreamRng, shape: &[usize], device: &Device) -> Result<Tensor> {
    use rand_distr::Distribution;
    let n: usize = shape.iter().product();
    let d = rand_distr::StandardNormal;
    let v: Vec<f32> = (0..n).map(|_| d.sample(rng)).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_device(device)?)
}

/// The reference's `log_loss_dict`: the mean of each term, and per-sample values averaged into
/// `<key>_q<quartile>` with `quartile = floor(4 t / num_timesteps)`.
pub fn log_loss_dict(
    logger: &mut super::logger::Logger,
    timesteps: Option<&(Vec<i64>, usize)>,
    terms: &[(String, Vec<f32>)],
) {
    for (key, values) in terms {
        if values.is_empty() {
            continue;
        }
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
        logger.logkv_mean(key, mean);
        if let Some((ts, n)) = timesteps {
            for (&t, &v) in ts.iter().zip(values) {
                let q = (4 * t) / (*n as i64).max(1);
                logger.logkv_mean(&format!("{key}_q{q}"), v as f64);
            }
        }
    }
}
