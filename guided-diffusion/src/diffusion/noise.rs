//! Where the samplers' Gaussian noise comes from: a `NoiseSource` is asked for one standard
//! normal tensor per draw (the reference's `randn_like` / `randn`). `SeededNoise` makes
//! reproducible noise from a seed; `ReplayNoise` hands out recorded tensors in order, which is
//! how the parity tests replay the reference's injected noise.
use candle_core::{Device, Shape, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::{bail, Result};

/// A source of standard normal noise.
pub trait NoiseSource {
    /// One f32 tensor of i.i.d. N(0, 1) values of `shape` on `device`.
    fn randn(&mut self, shape: &Shape, device: &Device) -> Result<Tensor>;
}

/// Standard normal noise from a seeded RNG (`rand`'s `StdRng` + `StandardNormal`): the same seed
/// gives the same sequence of draws (for a given version of this crate and of `rand`).
/// Values are generated on the host in row-major order and moved to the device.
#[derive(Clone, Debug)]
pub struct SeededNoise {
    rng: StdRng,
}

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        Self { rng: StdRng::seed_from_u64(seed) }
    }
}

impl NoiseSource for SeededNoise {
    fn randn(&mut self, shape: &Shape, device: &Device) -> Result<Tensor> {
        let v: Vec<f32> =
            (0..shape.elem_count()).map(|_| StandardNormal.sample(&mut self.rng)).collect();
        Ok(Tensor::from_vec(v, shape.clone(), &Device::Cpu)?.to_device(device)?)
    }
}

/// Replays recorded draws: the k-th call returns `draws[k]` (which must have the asked shape).
/// Running out is an error, so a test notices a sampler drawing more often than the reference.
#[derive(Clone, Debug)]
pub struct ReplayNoise {
    draws: Vec<Tensor>,
    next: usize,
}

impl ReplayNoise {
    pub fn new(draws: Vec<Tensor>) -> Self {
        Self { draws, next: 0 }
    }

    /// Split a `[K, ...]` tensor into K draws along dim 0.
    pub fn from_stacked(stacked: &Tensor) -> Result<Self> {
        let k = stacked.dim(0)?;
        let draws = (0..k).map(|i| stacked.get(i)).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self::new(draws))
    }

    /// How many draws have been handed out.
    pub fn used(&self) -> usize {
        self.next
    }

    /// How many draws are left.
    pub fn remaining(&self) -> usize {
        self.draws.len() - self.next
    }
}

impl NoiseSource for ReplayNoise {
    fn randn(&mut self, shape: &Shape, device: &Device) -> Result<Tensor> {
        let Some(t) = self.draws.get(self.next) else {
            bail!(
                "ReplayNoise exhausted: draw {} asked, only {} recorded",
                self.next,
                self.draws.len()
            );
        };
        if t.shape() != shape {
            bail!(
                "ReplayNoise draw {}: recorded shape {:?}, asked {:?}",
                self.next,
                t.shape(),
                shape
            );
        }
        self.next += 1;
        Ok(t.to_device(device)?)
    }
}
