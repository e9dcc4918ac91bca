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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_noise_is_independent_of_the_batch_split() {
        let shape = |n: usize| Shape::from_dims(&[n, 2, 3, 3]);
        let whole = PerSampleNoise::new(9, 0, 5).randn(&shape(5), &Device::Cpu).unwrap();
        let mut first = PerSampleNoise::new(9, 0, 2);
        let mut rest = PerSampleNoise::new(9, 2, 3);
        let a = first.randn(&shape(2), &Device::Cpu).unwrap();
        let b = rest.randn(&shape(3), &Device::Cpu).unwrap();
        let split = Tensor::cat(&[&a, &b], 0).unwrap();
        let d: f32 =
            (whole - split).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert_eq!(d, 0.0);
        // A second draw continues each sample's own stream.
        let mut whole2 = PerSampleNoise::new(9, 0, 5);
        whole2.randn(&shape(5), &Device::Cpu).unwrap();
        let second = whole2.randn(&shape(5), &Device::Cpu).unwrap();
        let a2 = first.randn(&shape(2), &Device::Cpu).unwrap();
        let b2 = rest.randn(&shape(3), &Device::Cpu).unwrap();
        let d2: f32 = (second - Tensor::cat(&[&a2, &b2], 0).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d2, 0.0);
    }
}
