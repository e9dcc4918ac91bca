//! Timestep samplers for training (`resample.py`): importance sampling of t with weights
//! `1 / (T p_t)` so the objective's expectation is unchanged. `UniformSampler` (p uniform) and
//! `LossSecondMomentResampler` (p proportional to the RMS of the last 10 losses of each t, mixed
//! with 1e-3 uniform, uniform until every t has a full history).
use rand::{Rng, RngCore};

use crate::{bail, Result};

/// A distribution over the timesteps of a process.
pub trait ScheduleSampler {
    /// Positive (unnormalised) weights, one per timestep.
    fn weights(&self) -> Vec<f64>;

    /// Record the losses observed at timesteps `ts` (loss-aware samplers); others ignore them.
    /// Errors on a length mismatch or a timestep out of range.
    fn update_with_losses(&mut self, ts: &[usize], losses: &[f64]) -> Result<()> {
        check_update(self.weights().len(), ts, losses)
    }

    /// The sampler's learned state as a flat vector (empty for stateless samplers), so a
    /// resumed training run continues with the same distribution.
    fn state(&self) -> Vec<f64> {
        Vec::new()
    }

    /// Restores [`ScheduleSampler::state`].
    fn load_state(&mut self, state: &[f64]) -> Result<()> {
        if !state.is_empty() {
            bail!("this schedule sampler has no state, got {} values", state.len());
        }
        Ok(())
    }

    /// Draw `batch_size` timesteps with p = w / sum(w); returns them and their importance weights
    /// `1 / (T p_t)` (as numpy's `choice`: inverse CDF of a uniform draw).
    fn sample(&self, batch_size: usize, rng: &mut dyn RngCore) -> (Vec<usize>, Vec<f32>) {
        let w = self.weights();
        if w.is_empty() {
            return (vec![], vec![]);
        }
        let total: f64 = w.iter().sum();
        let p: Vec<f64> = w.iter().map(|x| x / total).collect();
        let mut cdf = Vec::with_capacity(p.len());
        let mut acc = 0.0;
        for &pi in &p {
            acc += pi;
            cdf.push(acc);
        }
        let last = *cdf.last().unwrap_or(&1.0);
        for c in &mut cdf {
            *c /= last;
        }
        let mut ts = Vec::with_capacity(batch_size);
        let mut weights = Vec::with_capacity(batch_size);
        for _ in 0..batch_size {
            let u: f64 = rng.gen();
            // searchsorted(cdf, u, side="right")
            let i = cdf.partition_point(|&c| c <= u).min(p.len() - 1);
            ts.push(i);
            weights.push((1.0 / (p.len() as f64 * p[i])) as f32);
        }
        (ts, weights)
    }
}

fn check_update(num_timesteps: usize, ts: &[usize], losses: &[f64]) -> Result<()> {
    if ts.len() != losses.len() {
        bail!("{} timesteps but {} losses", ts.len(), losses.len());
    }
    if let Some(&bad) = ts.iter().find(|&&t| t >= num_timesteps) {
        bail!("timestep {bad} out of range for {num_timesteps} timesteps");
    }
    Ok(())
}

/// `create_named_schedule_sampler`: `"uniform"` or `"loss-second-moment"`.
pub fn create_named_schedule_sampler(
    name: &str,
    num_timesteps: usize,
) -> Result<Box<dyn ScheduleSampler>> {
    match name {
        "uniform" => Ok(Box::new(UniformSampler::new(num_timesteps))),
        "loss-second-moment" => Ok(Box::new(LossSecondMomentResampler::new(num_timesteps))),
        other => bail!(
            "unknown schedule sampler {other:?} (expected \"uniform\" or \"loss-second-moment\")"
        ),
    }
}

/// Every timestep equally likely (importance weights all 1).
#[derive(Clone, Debug)]
pub struct UniformSampler {
    num_timesteps: usize,
}

impl UniformSampler {
    pub fn new(num_timesteps: usize) -> Self {
        Self { num_timesteps }
    }
}

impl ScheduleSampler for UniformSampler {
    fn weights(&self) -> Vec<f64> {
        vec![1.0; self.num_timesteps]
    }
}

/// Samples t proportionally to sqrt(E[loss_t^2]) over the last `history_per_term` losses.
#[derive(Clone, Debug)]
pub struct LossSecondMomentResampler {
    history_per_term: usize,
    uniform_prob: f64,
    loss_history: Vec<Vec<f64>>,
    loss_counts: Vec<usize>,
}

impl LossSecondMomentResampler {
    /// The reference's defaults: history 10 per timestep, uniform probability 1e-3.
    pub fn new(num_timesteps: usize) -> Self {
        Self::with_params(num_timesteps, 10, 0.001)
    }

    /// `history_per_term` is at least 1.
    pub fn with_params(num_timesteps: usize, history_per_term: usize, uniform_prob: f64) -> Self {
        let history_per_term = history_per_term.max(1);
        Self {
            history_per_term,
            uniform_prob,
            loss_history: vec![vec![0.0; history_per_term]; num_timesteps],
            loss_counts: vec![0; num_timesteps],
        }
    }

    /// Whether every timestep has a full loss history (before that, sampling is uniform).
    pub fn warmed_up(&self) -> bool {
        self.loss_counts.iter().all(|&c| c == self.history_per_term)
    }
}

impl ScheduleSampler for LossSecondMomentResampler {
    fn weights(&self) -> Vec<f64> {
        let n = self.loss_counts.len();
        if !self.warmed_up() {
            return vec![1.0; n];
        }
        let mut w: Vec<f64> = self
            .loss_history
            .iter()
            .map(|h| (h.iter().map(|x| x * x).sum::<f64>() / h.len() as f64).sqrt())
            .collect();
        let total: f64 = w.iter().sum();
        for x in &mut w {
            *x = *x / total * (1.0 - self.uniform_prob) + self.uniform_prob / n as f64;
        }
        w
    }

    /// History (`T x history_per_term`, row-major) followed by the per-t counts.
    fn state(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.loss_history.iter().flatten().copied().collect();
        v.extend(self.loss_counts.iter().map(|&c| c as f64));
        v
    }

    fn load_state(&mut self, state: &[f64]) -> Result<()> {
        let (t, h) = (self.loss_counts.len(), self.history_per_term);
        if state.len() != t * (h + 1) {
            bail!("loss-second-moment state has {} values; expected {}", state.len(), t * (h + 1));
        }
        for (i, row) in self.loss_history.iter_mut().enumerate() {
            row.copy_from_slice(&state[i * h..(i + 1) * h]);
        }
        for (i, c) in self.loss_counts.iter_mut().enumerate() {
            *c = (state[t * h + i] as usize).min(h);
        }
        Ok(())
    }

    fn update_with_losses(&mut self, ts: &[usize], losses: &[f64]) -> Result<()> {
        check_update(self.loss_counts.len(), ts, losses)?;
        for (&t, &loss) in ts.iter().zip(losses) {
            let count = self.loss_counts[t];
            let hist = &mut self.loss_history[t];
            if count == self.history_per_term {
                hist.rotate_left(1);
                hist[count - 1] = loss;
            } else {
                hist[count] = loss;
                self.loss_counts[t] += 1;
            }
        }
        Ok(())
    }
}
