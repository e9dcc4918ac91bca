//! Deterministic stand-in weights for Inception-v3, so the full-size network can be checked
//! against PyTorch without shipping 95 MB of weights: every value is a pure function of the
//! state-dict key and the element index (FNV-1a of the key, then a SplitMix64 finaliser per
//! element), which `tools/eval_fixtures.py` reproduces bit for bit in numpy to build the same
//! network in pytorch-fid's classes. Scales keep activations O(1) through the 94 layers
//! (He-style conv weights, BatchNorm near identity). Not meant for real evaluations.
use super::weights::WeightMap;
use super::InceptionV3;
use crate::Result;
use candle_core::{Device, Tensor};
use std::collections::HashMap;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn fnv1a(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform values in `[0, 1)` for `key`, element `i` → `mix(fnv1a(key) + (i+1)·golden) >> 11 · 2⁻⁵³`.
pub fn uniforms(key: &str, n: usize) -> Vec<f64> {
    let seed = fnv1a(key);
    (0..n as u64)
        .map(|i| {
            (mix(seed.wrapping_add((i + 1).wrapping_mul(GOLDEN))) >> 11) as f64
                * (1.0 / (1u64 << 53) as f64)
        })
        .collect()
}

/// The synthetic value of every element of `key` with `shape`.
pub fn synthetic_values(key: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let u = uniforms(key, n);
    let f = |a: f64, b: f64| -> Vec<f32> { u.iter().map(|x| (a + b * x) as f32).collect() };
    if key.ends_with(".conv.weight") {
        let fan_in: usize = shape[1..].iter().product();
        let s = (6.0 / fan_in as f64).sqrt();
        f(-s, 2.0 * s)
    } else if key.ends_with(".bn.weight") {
        f(0.8, 0.4)
    } else if key.ends_with(".bn.bias") || key.ends_with(".bn.running_mean") {
        f(-0.2, 0.4)
    } else if key.ends_with(".bn.running_var") {
        f(0.5, 1.0)
    } else if key == "fc.weight" {
        let s = (3.0 / shape[1] as f64).sqrt();
        f(-s, 2.0 * s)
    } else {
        f(-0.1, 0.2)
    }
}

/// Builds the synthetic pytorch-fid state dict (all keys the network loads, `fc.weight` and
/// `fc.bias` when `with_head`), on the CPU.
pub fn synthetic_state_dict(with_head: bool) -> Result<HashMap<String, Tensor>> {
    let w = WeightMap::generated("synthetic weights", synthetic_values);
    InceptionV3::load(&w, &Device::Cpu)?;
    let mut map = w.take_generated();
    if with_head {
        for (k, shape) in [("fc.weight", vec![1008, 2048]), ("fc.bias", vec![1008])] {
            map.insert(
                k.to_string(),
                Tensor::from_vec(synthetic_values(k, &shape), shape, &Device::Cpu)?,
            );
        }
    }
    Ok(map)
}

/// Writes [`synthetic_state_dict`] to a `.safetensors` file (for smoke runs of `gdiff eval`).
pub fn save_synthetic_weights(path: impl AsRef<std::path::Path>, with_head: bool) -> Result<()> {
    let path = path.as_ref();
    candle_core::safetensors::save(&synthetic_state_dict(with_head)?, path).map_err(|e| {
        crate::Error::msg(format!("{}: cannot write synthetic weights: {e}", path.display()))
    })
}
