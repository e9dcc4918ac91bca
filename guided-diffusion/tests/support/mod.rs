//! Shared helpers of the parity tests: golden file paths, case loading, tolerance checks;
//! `train`: the training tests' tiny model and data.
#![allow(dead_code)]
pub mod train;
use std::collections::HashMap;
use std::path::PathBuf;

use guided_diffusion::kernels::KernelPolicy;
use guided_diffusion::{DType, Device, Tensor};

/// The kernel policy the suites run their networks with: the `GD_*` switches of the
/// environment (`GD_KERNELS=candle` runs them on candle's own ops, `GD_WINOGRAD=0` without
/// Winograd), as `gdiff` reads them.
pub fn policy() -> KernelPolicy {
    KernelPolicy::from_vars(|k| std::env::var(k).ok())
}

/// A tensor of uniform values in [-1, 1) drawn from `rng` (the kernel tests' random inputs).
pub fn rand_tensor(rng: &mut rand::rngs::StdRng, shape: &[usize]) -> Tensor {
    use rand::Rng;
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

pub fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

/// A golden case: its tensors (`in.*`, `out.*`) and its JSON description.
pub struct Case {
    pub name: String,
    pub tensors: HashMap<String, Tensor>,
    pub json: serde_json::Value,
}

impl Case {
    pub fn load(name: &str) -> Case {
        let tensors = candle_core::safetensors::load(
            golden(&format!("case_{name}.safetensors")),
            &Device::Cpu,
        )
        .unwrap_or_else(|e| panic!("case {name}: {e}"));
        let text = std::fs::read_to_string(golden(&format!("case_{name}.json"))).unwrap();
        Case { name: name.into(), tensors, json: serde_json::from_str(&text).unwrap() }
    }

    pub fn get(&self, key: &str) -> Tensor {
        self.tensors.get(key).unwrap_or_else(|| panic!("case {}: no key {key}", self.name)).clone()
    }

    /// The case's suggested absolute tolerance for output `key` (without the `out.` prefix).
    pub fn atol(&self, key: &str) -> f64 {
        self.json["suggested_tolerance"][key]["atol"]
            .as_f64()
            .unwrap_or_else(|| panic!("case {}: no suggested atol for {key}", self.name))
    }

    pub fn params(&self) -> &serde_json::Value {
        &self.json["params"]
    }
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Asserts `|got - want| <= atol` elementwise and prints the observed difference.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, atol: f64) {
    let d = max_abs_diff(got, want);
    println!("{what}: max |diff| = {d:.3e} (atol {atol:.1e})");
    assert!(d <= atol, "{what}: max |diff| = {d:e} exceeds atol {atol:e}");
}
