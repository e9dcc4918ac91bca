//! Per-sample noise: sample `i` of a run draws from its own random stream seeded by
//! `(seed, i)`, so its x_T and every later draw are the same whatever the batch size, the
//! position in the batch or the number of processes.
use candle_core::{Device, Shape, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::diffusion::NoiseSource;
use crate::{bail, Result};

/// SplitMix64 finaliser: decorrelates neighbouring (seed, index) pairs.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The random stream of sample `index` under `seed`; `stream` separates independent uses
/// (noise, labels).
pub fn sample_rng(seed: u64, index: u64, stream: u64) -> StdRng {
    StdRng::seed_from_u64(mix(mix(seed ^ stream.wrapping_mul(0xA24B_AED4_963E_E407)) ^ index))
}

/// A [`NoiseSource`] for a batch holding samples `first .. first + n` of a run.
pub struct PerSampleNoise {
    rngs: Vec<StdRng>,
}

impl PerSampleNoise {
    pub fn new(seed: u64, first: usize, n: usize) -> Self {
        Self { rngs: (first..first + n).map(|i| sample_rng(seed, i as u64, 0)).collect() }
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
