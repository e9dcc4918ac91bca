//! Full-size checks that take tens of seconds, ignored by default:
//! `cargo test --release -p guided-diffusion --test eval_bench -- --ignored --nocapture`.
//! FID at 2048 dimensions against scipy 1.15 (values computed by `tools/eval_fixtures.py`'s
//! `frechet` on the same generated features), and timings of each stage.
use candle_core::Device;
use guided_diffusion::eval::features::{FeatureExtractor, FeatureMatrix, ImageBatch};
use guided_diffusion::eval::frechet::{frechet_distance, SqrtmMethod};
use guided_diffusion::eval::inception::synthetic::{synthetic_state_dict, uniforms};
use guided_diffusion::eval::inception::{
    InceptionExtractor, InceptionV3, InputConvention, WeightMap,
};
use guided_diffusion::eval::manifold::ManifoldEstimator;
use guided_diffusion::eval::FidStatistics;
use std::time::Instant;

fn features(key: &str, n: usize, d: usize, scale: f64, shift: f64) -> FeatureMatrix {
    let u = uniforms(key, n * d);
    FeatureMatrix::new(n, d, u.iter().map(|x| ((x - 0.5) * scale + shift) as f32).collect())
        .unwrap()
}

#[test]
#[ignore]
fn eval_bench_fid_2048_matches_scipy() {
    let a = features("bench_a", 3000, 2048, 1.0, 0.0);
    let b = features("bench_b", 3000, 2048, 1.1, 0.01);
    // scipy 1.15 on the same features (full rank, then the first 1000 rows: rank-deficient)
    for (rows, want) in [(3000, 65.96359138435844), (1000, 166.73733473958583)] {
        let t = Instant::now();
        let sa = FidStatistics::from_features(&a.slice_rows(0, rows)).unwrap();
        let sb = FidStatistics::from_features(&b.slice_rows(0, rows)).unwrap();
        let t_stats = t.elapsed();
        for (m, tol) in [(SqrtmMethod::SchurEigenvalues, 1e-8), (SqrtmMethod::Symmetric, 1e-7)] {
            let t = Instant::now();
            let got = frechet_distance(&sa, &sb, m).unwrap();
            let rel = (got.distance - want).abs() / want;
            println!(
                "N={rows} D=2048 {m:?}: FID {} (scipy {want}) rel {rel:.1e}; stats {:.1?}, sqrtm {:.1?}",
                got.distance,
                t_stats,
                t.elapsed()
            );
            assert!(rel < tol, "{m:?}");
        }
    }
}

#[test]
#[ignore]
fn eval_bench_inception_and_precision_recall_timings() {
    let w = WeightMap::from_tensors("synthetic", synthetic_state_dict(true).unwrap()).unwrap();
    let ex = InceptionExtractor::new(
        InceptionV3::load(&w, &Device::Cpu).unwrap(),
        InputConvention::TfReference,
    );
    let n = 16;
    let data = uniforms("bench_images", n * 64 * 64 * 3)
        .iter()
        .map(|x| (x * 255.0).floor() as f32)
        .collect();
    let imgs = ImageBatch::new(&[n, 64, 64, 3], data).unwrap();
    ex.extract(&ImageBatch::new(&[1, 64, 64, 3], vec![0.0; 64 * 64 * 3]).unwrap()).unwrap();
    let t = Instant::now();
    ex.extract(&imgs).unwrap();
    let dt = t.elapsed();
    println!("Inception forward (CPU, batch {n}, 64x64 -> 299): {:.2?} per image", dt / n as u32);

    let a = features("bench_a", 5000, 2048, 1.0, 0.0);
    let b = features("bench_b", 5000, 2048, 1.1, 0.01);
    for p in [
        guided_diffusion::eval::DistancePrecision::ReferenceF16,
        guided_diffusion::eval::DistancePrecision::F32,
    ] {
        let mut est = ManifoldEstimator::new(Device::Cpu);
        est.precision = p;
        let t = Instant::now();
        let (pr, rc) = est.precision_recall(&a, &b).unwrap();
        println!(
            "precision/recall 5000 vs 5000 x 2048 ({p:?}): {pr} / {rc} in {:.1?}",
            t.elapsed()
        );
    }
}
