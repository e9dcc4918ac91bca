//! Seeded parameter initialisation for training: a `VarBuilder` that creates every parameter
//! in a `VarMap` with PyTorch's default distributions (the hints the layers give), drawn on the
//! host from a stream derived from `(seed, parameter name)`. The same seed gives the same
//! network whatever the construction order or device — which candle's own initialisation
//! (an unseeded device RNG) cannot promise, and which resumable, reproducible training needs.
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

struct SeededInit {
    varmap: VarMap,
    seed: u64,
}

/// FNV-1a of the name: a stable per-parameter stream id.
fn name_hash(s: &str) -> u64 {
    s.bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

fn values(
    init: Init,
    n: usize,
    fan_in: usize,
    rng: &mut impl Rng,
) -> candle_core::Result<Vec<f32>> {
    Ok(match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Randn { mean, stdev } => (0..n)
            .map(|_| {
                let z: f64 = StandardNormal.sample(rng);
                (mean + stdev * z) as f32
            })
            .collect(),
        Init::Uniform { lo, up } => (0..n).map(|_| rng.gen_range(lo..up) as f32).collect(),
        Init::Kaiming { .. } => {
            let b = 1.0 / (fan_in.max(1) as f64).sqrt();
            (0..n).map(|_| rng.gen_range(-b..b) as f32).collect()
        }
    })
}

impl candle_nn::var_builder::SimpleBackend for SeededInit {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self.varmap.data().lock().expect("varmap lock");
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!(
                    "parameter {name} requested with shape {s:?} but exists with {:?}",
                    v.shape()
                );
            }
            return Ok(v.as_tensor().clone());
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed ^ name_hash(name));
        let fan_in = s.dims().iter().skip(1).product::<usize>();
        let v = values(h, s.elem_count(), fan_in, &mut rng)?;
        let t = Tensor::from_vec(v, s, &Device::Cpu)?.to_dtype(dtype)?.to_device(dev)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.varmap.data().lock().expect("varmap lock").get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("no parameter {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap.data().lock().expect("varmap lock").contains_key(name)
    }
}

/// A `VarBuilder` that fills `varmap` with seeded parameters (f32 on `device`).
pub fn seeded_var_builder(varmap: &VarMap, seed: u64, device: &Device) -> VarBuilder<'static> {
    let backend: Box<dyn candle_nn::var_builder::SimpleBackend> =
        Box::new(SeededInit { varmap: varmap.clone(), seed });
    VarBuilder::from_backend(backend, DType::F32, device.clone())
}
