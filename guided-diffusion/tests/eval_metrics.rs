//! Metric math against numpy/scipy: fixtures from `tools/eval_fixtures.py metrics` (scipy 1.17,
//! what a fresh install of the reference evaluator's unpinned requirements gets).
use candle_core::{Device, Tensor};
use guided_diffusion::eval::frechet::{frechet_distance, SqrtmMethod};
use guided_diffusion::eval::inception_score::inception_score_from_logits;
use guided_diffusion::eval::manifold::{DistancePrecision, ManifoldEstimator};
use guided_diffusion::eval::{FeatureMatrix, FidStatistics};
use std::collections::HashMap;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/eval");

fn fixtures() -> (HashMap<String, Tensor>, serde_json::Value) {
    let arrays =
        candle_core::safetensors::load(format!("{DIR}/metrics.safetensors"), &Device::Cpu).unwrap();
    let json =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/metrics.json")).unwrap())
            .unwrap();
    (arrays, json)
}

fn matrix(a: &HashMap<String, Tensor>, k: &str) -> FeatureMatrix {
    FeatureMatrix::from_tensor(&a[k]).unwrap()
}

fn vec64(a: &HashMap<String, Tensor>, k: &str) -> Vec<f64> {
    a[k].flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn vec32(a: &HashMap<String, Tensor>, k: &str) -> Vec<f32> {
    a[k].flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

#[test]
fn eval_mean_and_covariance_match_numpy() {
    let (a, _) = fixtures();
    for case in ["fullrank", "rankdef", "constant3", "constant1"] {
        let s = FidStatistics::from_features(&matrix(&a, &format!("{case}_a"))).unwrap();
        let mu = vec64(&a, &format!("{case}_mu_a"));
        let sigma = vec64(&a, &format!("{case}_sigma_a"));
        let scale = sigma.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (x, y) in s.mu.iter().zip(&mu) {
            assert!((x - y).abs() < 1e-12, "{case}: mu {x} vs {y}");
        }
        for (x, y) in s.sigma.iter().zip(&sigma) {
            assert!((x - y).abs() < 1e-12 * scale, "{case}: sigma {x} vs {y}");
        }
    }
}

#[test]
fn eval_streaming_covariance_is_batch_independent() {
    let (a, _) = fixtures();
    let m = matrix(&a, "fullrank_a");
    let whole = FidStatistics::from_features(&m).unwrap();
    let mut acc = guided_diffusion::eval::MomentAccumulator::new(m.cols);
    for start in (0..m.rows).step_by(37) {
        acc.update(&m.slice_rows(start, (start + 37).min(m.rows))).unwrap();
    }
    let streamed = acc.finish().unwrap();
    for (x, y) in whole.sigma.iter().zip(&streamed.sigma) {
        assert!((x - y).abs() < 1e-12, "{x} vs {y}");
    }
}

#[test]
fn eval_fid_matches_scipy_sqrtm() {
    let (a, j) = fixtures();
    // (case, tolerance for the Schur-eigenvalue method, tolerance for the symmetric method)
    for (case, tol_schur, tol_sym) in [
        ("fullrank", 1e-11, 1e-10),
        ("rankdef", 1e-9, 1e-5),
        ("constant1", 1e-12, 1e-6),
        ("constant3", 1e-12, 1e-3),
    ] {
        let sa = FidStatistics::from_features(&matrix(&a, &format!("{case}_a"))).unwrap();
        let sb = FidStatistics::from_features(&matrix(&a, &format!("{case}_b"))).unwrap();
        let want = j[case]["fid"].as_f64().unwrap();
        let want_fallback = j[case]["eps_fallback"].as_bool().unwrap();
        let got = frechet_distance(&sa, &sb, SqrtmMethod::SchurEigenvalues).unwrap();
        println!(
            "{case}: fid {} (scipy {want}) rel {:.2e} fallback {}",
            got.distance,
            rel(got.distance, want),
            got.eps_fallback
        );
        assert!(rel(got.distance, want) < tol_schur, "{case}: {} vs scipy {want}", got.distance);
        assert_eq!(got.eps_fallback, want_fallback, "{case}: eps fallback");
        let sym = frechet_distance(&sa, &sb, SqrtmMethod::Symmetric).unwrap();
        println!("{case}: symmetric {} rel {:.2e}", sym.distance, rel(sym.distance, want));
        if !want_fallback {
            assert!(
                rel(sym.distance, want) < tol_sym,
                "{case}: symmetric {} vs scipy {want}",
                sym.distance
            );
        }
    }
}

/// Features of the degenerate-covariance test: a fixed pattern of multiples of `0.25 * scale`,
/// with the columns of `consts` held constant (zero rows and columns in the covariance), as
/// `tools/eval_fixtures.py degenerate` builds them.
fn pattern(
    n: usize,
    salt: usize,
    consts: &[(usize, f32)],
    scale: f64,
    shift: f64,
) -> FeatureMatrix {
    let d = 6;
    let mut data = Vec::with_capacity(n * d);
    for i in 0..n {
        for j in 0..d {
            let k = (i * 37 + j * 101 + i * j * 7 + salt * 11) % 23;
            let v = consts
                .iter()
                .find(|c| c.0 == j)
                .map_or(k as f64 * 0.25 * scale - 2.0 + shift, |c| c.1 as f64);
            data.push(v as f32);
        }
    }
    FeatureMatrix::new(n, d, data).unwrap()
}

/// The reference adds `eps·I` only when `sqrtm(S1 S2)` is not finite, and scipy's `sqrtm` is
/// finite for covariances with zero rows (features that never vary). Expected values from
/// `tools/eval_fixtures.py degenerate` (scipy 1.17.1, numpy 2.4): the reference's formula on the
/// same features. For "crossing" (zero rows at different positions in the two covariances)
/// scipy 1.15.3 returns NaN instead, falls back to eps and gives 30.411056917377188; see
/// `eval/frechet.rs`.
#[test]
fn eval_fid_degenerate_covariances_take_no_offset() {
    for (case, a_consts, b_consts, want) in [
        ("same", &[(1, 0.0), (4, 3.0)][..], &[(1, 0.0), (4, 3.0)][..], 6.798683046157976),
        ("one_side", &[(1, 0.0), (4, 3.0)][..], &[][..], 20.138594612998254),
        ("crossing", &[(0, 0.0), (1, 3.0)][..], &[(4, 0.0), (5, -1.5)][..], 30.426189320347007),
    ] {
        let sa = FidStatistics::from_features(&pattern(20, 1, a_consts, 1.0, 0.0)).unwrap();
        let sb = FidStatistics::from_features(&pattern(24, 2, b_consts, 1.25, 0.5)).unwrap();
        for &(i, _) in a_consts {
            assert!(sa.sigma[i * 6..(i + 1) * 6].iter().all(|&v| v == 0.0), "{case}: zero row {i}");
        }
        let got = frechet_distance(&sa, &sb, SqrtmMethod::SchurEigenvalues).unwrap();
        println!("{case}: {} (scipy {want}) rel {:.1e}", got.distance, rel(got.distance, want));
        assert!(!got.eps_fallback, "{case}: the plain result is finite, no offset");
        assert!(rel(got.distance, want) < 1e-12, "{case}: {} vs scipy {want}", got.distance);
    }
}

#[test]
fn eval_fid_of_identical_statistics_is_zero_and_symmetric() {
    let (a, _) = fixtures();
    let sa = FidStatistics::from_features(&matrix(&a, "fullrank_a")).unwrap();
    let sb = FidStatistics::from_features(&matrix(&a, "fullrank_b")).unwrap();
    let zero = frechet_distance(&sa, &sa, SqrtmMethod::default()).unwrap().distance;
    assert!(zero.abs() < 1e-9, "{zero}");
    let ab = frechet_distance(&sa, &sb, SqrtmMethod::default()).unwrap().distance;
    let ba = frechet_distance(&sb, &sa, SqrtmMethod::default()).unwrap().distance;
    assert!(rel(ab, ba) < 1e-11);
}

#[test]
fn eval_fid_errors_on_mismatched_dims_and_complex_sqrt() {
    let a = FidStatistics::new(vec![0.0; 2], vec![1.0, 0.0, 0.0, 1.0]).unwrap();
    let b = FidStatistics::new(vec![0.0; 3], vec![0.0; 9]).unwrap();
    let e = frechet_distance(&a, &b, SqrtmMethod::default()).unwrap_err().to_string();
    assert!(e.contains("different lengths"), "{e}");
    // an indefinite "covariance" makes the product's square root clearly complex
    let c = FidStatistics::new(vec![0.0; 2], vec![1.0, 0.0, 0.0, -1.0]).unwrap();
    let e = frechet_distance(&a, &c, SqrtmMethod::default()).unwrap_err().to_string();
    assert!(e.contains("Imaginary component"), "{e}");
}

#[test]
fn eval_inception_score_matches_numpy() {
    let (a, j) = fixtures();
    let logits = matrix(&a, "is_logits");
    for (split, key) in [(500, "is_split500"), (5000, "is_split5000")] {
        let got = inception_score_from_logits(&logits, split).unwrap();
        let want = j[key].as_f64().unwrap();
        assert!(rel(got, want) < 1e-12, "split {split}: {got} vs {want}");
    }
    // uniform predictions score 1
    let flat = FeatureMatrix::new(10, 4, vec![0.5; 40]).unwrap();
    assert!((inception_score_from_logits(&flat, 5000).unwrap() - 1.0).abs() < 1e-12);
}

fn estimator(p: DistancePrecision, rows: usize, cols: usize) -> ManifoldEstimator {
    let mut e = ManifoldEstimator::new(Device::Cpu);
    e.precision = p;
    e.row_batch_size = rows;
    e.col_batch_size = cols;
    e
}

#[test]
fn eval_precision_recall_f32_matches_numpy() {
    let (a, j) = fixtures();
    let (r, s) = (matrix(&a, "pr_ref"), matrix(&a, "pr_sample"));
    for (rows, cols) in [(64, 50), (10_000, 10_000), (7, 150)] {
        let est = estimator(DistancePrecision::F32, rows, cols);
        let rr = est.manifold_radii(&r).unwrap();
        let want = vec32(&a, "pr_f32_radii_ref");
        for (x, y) in rr.data.iter().zip(&want) {
            assert!((x - y).abs() <= 1e-5 * y.abs(), "radius {x} vs {y}");
        }
        let (p, rc) = est.precision_recall(&r, &s).unwrap();
        assert_eq!(
            p,
            j["pr_f32"]["precision"].as_f64().unwrap(),
            "precision, blocks {rows}x{cols}"
        );
        assert_eq!(rc, j["pr_f32"]["recall"].as_f64().unwrap(), "recall, blocks {rows}x{cols}");
    }
}

#[test]
fn eval_precision_recall_f16_emulation_matches_numpy() {
    let (a, j) = fixtures();
    let (r, s) = (matrix(&a, "pr_ref"), matrix(&a, "pr_sample"));
    let est = estimator(DistancePrecision::ReferenceF16, 64, 50);
    let rr = est.manifold_radii(&r).unwrap();
    let want = vec32(&a, "pr_f16_radii_ref");
    // f16 results: equal, or one f16 ulp apart where f32 summation order differs
    let mut exact = 0;
    for (x, y) in rr.data.iter().zip(&want) {
        assert!((x - y).abs() <= 2f32.powi(-10) * y.abs().max(1.0) * 2.0, "radius {x} vs {y}");
        exact += (x == y) as usize;
    }
    println!("f16 radii identical to numpy: {exact}/{}", rr.rows);
    let (p, rc) = est.precision_recall(&r, &s).unwrap();
    let (wp, wr) =
        (j["pr_f16"]["precision"].as_f64().unwrap(), j["pr_f16"]["recall"].as_f64().unwrap());
    assert!((p - wp).abs() <= 1.0 / s.rows as f64 + 1e-12, "precision {p} vs {wp}");
    assert!((rc - wr).abs() <= 1.0 / r.rows as f64 + 1e-12, "recall {rc} vs {wr}");
}

#[test]
fn eval_precision_recall_needs_enough_points() {
    let m = FeatureMatrix::new(3, 2, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    let e = estimator(DistancePrecision::F32, 10, 10).manifold_radii(&m).unwrap_err().to_string();
    assert!(e.contains("more than 3"), "{e}");
}
