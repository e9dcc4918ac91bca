//! Beta schedules (`get_named_beta_schedule` of the reference): the linear schedule of Ho et al.
//! scaled by 1000/T and the cosine schedule of Nichol & Dhariwal, both in f64 exactly as numpy
//! and Python compute them (the golden schedules are compared at rtol 1e-12).
use crate::{bail, Result};

/// A named beta schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseSchedule {
    /// `linspace(1000/T * 1e-4, 1000/T * 0.02, T)`.
    #[default]
    Linear,
    /// `alpha_bar(t) = cos((t + 0.008) / 1.008 * pi / 2)^2`, betas capped at 0.999.
    Cosine,
}

impl std::str::FromStr for NoiseSchedule {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            other => bail!("unknown beta schedule: {other:?} (expected \"linear\" or \"cosine\")"),
        }
    }
}

/// The betas of a named schedule for `num_steps` diffusion steps (f64, length `num_steps`).
pub fn get_named_beta_schedule(schedule: NoiseSchedule, num_steps: usize) -> Vec<f64> {
    match schedule {
        NoiseSchedule::Linear => {
            let scale = 1000.0 / num_steps as f64;
            linspace(scale * 0.0001, scale * 0.02, num_steps)
        }
        NoiseSchedule::Cosine => betas_for_alpha_bar(num_steps, cosine_alpha_bar, 0.999),
    }
}

/// `alpha_bar` of the cosine schedule for t in [0, 1] (same operation order as the reference).
pub fn cosine_alpha_bar(t: f64) -> f64 {
    let c = ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
    c * c
}

/// Betas discretising a cumulative-product function `alpha_bar` on [0, 1]:
/// `beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), max_beta)`.
pub fn betas_for_alpha_bar(
    num_steps: usize,
    alpha_bar: impl Fn(f64) -> f64,
    max_beta: f64,
) -> Vec<f64> {
    (0..num_steps)
        .map(|i| {
            let t1 = i as f64 / num_steps as f64;
            let t2 = (i + 1) as f64 / num_steps as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta)
        })
        .collect()
}

/// numpy's `linspace(start, stop, num)` (endpoint included): `i * step + start`, last = `stop`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return vec![];
    }
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    y[num - 1] = stop;
    y
}
