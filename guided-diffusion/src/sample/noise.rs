//! Per-sample noise: sample `i` of a run draws from its own random stream `(seed, i)` (the
//! value-stable ChaCha8 streams of [`crate::data::rng`]), so its x_T and every later draw are
//! the same whatever the batch size, the position in the batch or the number of processes.
use candle_core::{Device, Shape, Tensor};
use rand_distr::{Distribution, StandardNormal};

use crate::data::rng::{domain, stream, StreamRng};
use crate::diffusion::NoiseSource;
use crate::{bail, Result};

/// The noise stream of sample `index` under `seed`.
pub fn noise_rng(seed: u64, index: u64) -> StreamRng {
    stream(seed, domain::SAMPLE_NOISE, index)
}

/// The label stream of sample `index` under `seed`.
pub fn label_rng(seed: u64, index: u64) -> StreamRng {
    stream(seed, domain::SAMPLE_LABEL, index)
}

/// A [`NoiseSource`] for a batch holding samples `first .. first + n` of a run.
pub struct PerSampleNoise {
    rngs: Vec<StreamRng>,
}

impl PerSampleNoise {
    pub fn new(seed: u64, first: usize, n: usize) -> Self {
        Self { rngs: (first..first + n).map(|i| noise_rng(seed, i as u64)).collect() }
    }
}
impl NoiseSource for PerSampleNoise {
    fn randn(&mut self, shape: &Shape, device: &Device) -> Result<Tensor> {
        let dims = shape.dims();
        if dims.first() != Some(&self.rngs.len()) {
            bail!("per-sample noise for {} samples asked for shape {dims:?}", self.rngs.len());
        }
        let per: usize = dims[1..].iter().product();
        let mut v = Vec::with_capacity(per * self.rngs.len());
        for rng in &mut self.rngs {
            v.extend((0..per).map(|_| -> f32 { StandardNormal.sample(rng) }));
        }
        Ok(Tensor::from_vec(v, shape.clone(), &Device::Cpu)?.to_device(device)?)
    }
}
