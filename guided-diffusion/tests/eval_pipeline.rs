//! The evaluation pipeline on tiny batches: precomputed-features mode against the reference's
//! formulas in numpy (`tools/eval_fixtures.py npz`), precomputed reference statistics, a custom
//! [`FeatureExtractor`] plugged in on image batches, and the errors for malformed batches.
use guided_diffusion::eval::evaluator::{EvalOptions, Evaluator, Source};
use guided_diffusion::eval::features::{
    ExtractedFeatures, FeatureExtractor, FeatureMatrix, ImageBatch,
};
use guided_diffusion::eval::DistancePrecision;
use std::path::Path;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/eval");

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/e2e/expected.json")).unwrap())
        .unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

fn run(ref_file: &str, pr: DistancePrecision) -> guided_diffusion::eval::EvalResults {
    let opts = EvalOptions { pr_distance: pr, ..Default::default() };
    let ev = Evaluator::new(Source::Features, opts);
    let mut stages = Vec::new();
    let r = ev
        .evaluate(
            Path::new(&format!("{DIR}/e2e/{ref_file}")),
            Path::new(&format!("{DIR}/e2e/sample_features.npz")),
            &mut |stage, done, total| stages.push((stage.to_string(), done, total)),
        )
        .unwrap();
    assert!(stages.iter().any(|(s, d, t)| s == "precision/recall" && d == t));
    r
}

#[test]
fn eval_pipeline_features_mode_matches_numpy() {
    let want = expected();
    for (pr, tag) in [(DistancePrecision::F32, "f32"), (DistancePrecision::ReferenceF16, "f16")] {
        let r = run("ref_features.npz", pr);
        assert!(rel(r.inception_score.unwrap(), want["inception_score"].as_f64().unwrap()) < 1e-12);
        assert!(rel(r.fid, want["fid"].as_f64().unwrap()) < 1e-10, "fid {}", r.fid);
        assert!(rel(r.sfid.unwrap(), want["sfid"].as_f64().unwrap()) < 1e-10);
        // fractions of 50 and 60 points: equal up to the JSON round trip
        assert!(
            (r.precision - want[format!("precision_{tag}")].as_f64().unwrap()).abs() < 1e-12,
            "{tag}"
        );
        assert!(
            (r.recall - want[format!("recall_{tag}")].as_f64().unwrap()).abs() < 1e-12,
            "{tag}"
        );
        assert_eq!((r.details.num_reference, r.details.num_samples), (60, 50));
        assert_eq!(r.details.reference_statistics, "computed");
    }
}

#[test]
fn eval_pipeline_uses_precomputed_reference_statistics() {
    let want = expected();
    let r = run("ref_features_with_stats.npz", DistancePrecision::F32);
    assert!(rel(r.fid, want["fid_with_stats"].as_f64().unwrap()) < 1e-10, "fid {}", r.fid);
    assert!(rel(r.sfid.unwrap(), want["sfid_with_stats"].as_f64().unwrap()) < 1e-10);
    assert!(r.details.reference_statistics.starts_with("precomputed"));
    // precision/recall still come from the reference's features
    assert!((r.precision - want["precision_f32"].as_f64().unwrap()).abs() < 1e-12);
}

/// A toy extractor: per-channel means and a 2x2 pooled grayscale image; no logits.
struct Toy;

impl FeatureExtractor for Toy {
    fn describe(&self) -> String {
        "toy".into()
    }
    fn has_spatial(&self) -> bool {
        false
    }
    fn has_logits(&self) -> bool {
        false
    }
    fn extract(&self, b: &ImageBatch) -> guided_diffusion::Result<ExtractedFeatures> {
        let px = b.height * b.width;
        let mut data = Vec::new();
        for i in 0..b.n {
            let img = &b.data[i * px * b.channels..(i + 1) * px * b.channels];
            for c in 0..b.channels {
                data.push(img.iter().skip(c).step_by(b.channels).sum::<f32>() / px as f32);
            }
            data.push(img[0] / 255.0);
            data.push(img[img.len() - 1] / 255.0);
        }
        Ok(ExtractedFeatures {
            pool: FeatureMatrix::new(b.n, b.channels + 2, data)?,
            spatial: None,
            logits: None,
        })
    }
}

#[test]
fn eval_pipeline_runs_a_custom_extractor_on_images() {
    let toy = Toy;
    let opts = EvalOptions { batch_size: 2, ..Default::default() };
    let ev = Evaluator::new(Source::Images(&toy), opts);
    let f = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/eval/npz/images.npz"));
    let r = ev.evaluate(f, f, &mut |_, _, _| {}).unwrap();
    // 5 images, 5-d features: a singular covariance, so only ~sqrt(machine eps) from 0
    assert!(r.fid.abs() < 1e-5, "same batch: FID {}", r.fid);
    assert_eq!((r.precision, r.recall), (1.0, 1.0));
    assert!(r.inception_score.is_none() && r.sfid.is_none());
    assert!(r.details.inception_score_unavailable.as_deref().unwrap().contains("fc.weight"));
    let report = r.report();
    assert!(report.starts_with("Inception Score: unavailable ("), "{report}");
    assert!(
        report.contains("\nFID: ")
            && report.contains("\nsFID: unavailable")
            && report.contains("\nPrecision: 1.0\nRecall: 1.0\n"),
        "{report}"
    );
}

#[test]
fn eval_pipeline_errors_name_file_and_key() {
    let toy = Toy;
    let ev = Evaluator::new(Source::Images(&toy), EvalOptions::default());
    let npz = |f: &str| format!("{DIR}/npz/{f}");
    let good = npz("images.npz");
    let err = |a: &str, b: &str| {
        ev.evaluate(Path::new(a), Path::new(b), &mut |_, _, _| {}).unwrap_err().to_string()
    };
    let e = err(&good, &npz("bad_shape.npz"));
    assert!(
        e.contains("bad_shape.npz") && e.contains("'arr_0'") && e.contains("[N, H, W, 3]"),
        "{e}"
    );
    let e = err(&npz("bad_channels_first.npz"), &good);
    assert!(e.contains("bad_channels_first.npz") && e.contains("channels first"), "{e}");
    let e = err(&good, &npz("bad_missing_arr0.npz"));
    assert!(
        e.contains("bad_missing_arr0.npz") && e.contains("'arr_0'") && e.contains("missing"),
        "{e}"
    );
    let e = err(&npz("bad_dtype.npz"), &good);
    assert!(e.contains("bad_dtype.npz") && e.contains("dtype"), "{e}");
    // features mode: image batches lack 'pool'
    let fe = Evaluator::new(Source::Features, EvalOptions::default());
    let e =
        fe.evaluate(Path::new(&good), Path::new(&good), &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("images.npz") && e.contains("'pool'") && e.contains("missing"), "{e}");
}

/// A toy extractor with all three outputs: channel means and corners (pool), row means
/// (spatial), channel maxima (logits).
struct Toy3(&'static str);

impl FeatureExtractor for Toy3 {
    fn describe(&self) -> String {
        self.0.into()
    }
    fn has_spatial(&self) -> bool {
        true
    }
    fn has_logits(&self) -> bool {
        true
    }
    fn extract(&self, b: &ImageBatch) -> guided_diffusion::Result<ExtractedFeatures> {
        let pool = Toy.extract(b)?.pool;
        let (row, px) = (b.width * b.channels, b.height * b.width * b.channels);
        let (mut spatial, mut logits) = (Vec::new(), Vec::new());
        for img in b.data.chunks(px) {
            spatial.extend(img.chunks(row).map(|r| r.iter().sum::<f32>() / row as f32));
            for c in 0..b.channels {
                logits.push(
                    img.iter().skip(c).step_by(b.channels).fold(0f32, |m, v| m.max(*v)) / 64.0,
                );
            }
        }
        Ok(ExtractedFeatures {
            pool,
            spatial: Some(FeatureMatrix::new(b.n, b.height, spatial)?),
            logits: Some(FeatureMatrix::new(b.n, b.channels, logits)?),
        })
    }
}

/// `n` RGB images of 5x4 pixels (uint8 values from a fixed pattern) as an npz `arr_0`.
fn image_npz(path: &Path, n: usize, salt: usize) {
    let v: Vec<u8> =
        (0..n * 5 * 4 * 3).map(|i| ((i * 97 + salt * 31 + i / 7 * salt) % 256) as u8).collect();
    let t = candle_core::Tensor::from_vec(v, (n, 5, 4, 3), &candle_core::Device::Cpu).unwrap();
    candle_core::Tensor::write_npz(&[("arr_0", &t)], path).unwrap();
}

#[test]
fn eval_pipeline_saved_features_round_trip() {
    use guided_diffusion::eval::feature_file::FeatureFiles;
    use guided_diffusion::eval::npz::NpzFile;
    let dir = tempfile::tempdir().unwrap();
    let (r_img, s_img) = (dir.path().join("ref.npz"), dir.path().join("samples.npz"));
    image_npz(&r_img, 12, 1);
    image_npz(&s_img, 10, 2);
    let toy = Toy3("toy3");
    let files = FeatureFiles::from_stem(&dir.path().join("feats.npz"));
    assert_eq!(files.reference, dir.path().join("feats.ref.npz"));
    assert_eq!(files.samples, dir.path().join("feats.sample.npz"));
    let opts =
        EvalOptions { batch_size: 4, save_features: Some(files.clone()), ..Default::default() };
    let a = Evaluator::new(Source::Images(&toy), opts)
        .evaluate(&r_img, &s_img, &mut |_, _, _| {})
        .unwrap();
    assert!(a.fid > 1.0 && a.sfid.unwrap() > 1e-3 && a.inception_score.unwrap() > 1.0, "{a:?}");

    let f = NpzFile::open(&files.reference).unwrap();
    let mut keys = f.keys().to_vec();
    keys.sort();
    assert_eq!(keys, ["extractor", "logits", "mu", "mu_s", "pool", "sigma", "sigma_s", "spatial"]);
    assert_eq!(f.header("pool").unwrap().shape, [12, 5]);
    assert_eq!(f.header("spatial").unwrap().shape, [12, 5]);
    assert_eq!(f.header("sigma").unwrap().shape, [5, 5]);
    assert_eq!(
        guided_diffusion::eval::feature_file::read_extractor(&f).unwrap().as_deref(),
        Some("toy3")
    );
    let names: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 4, "no temporary file left: {names:?}");

    let same = |b: &guided_diffusion::eval::EvalResults, how: &str| {
        assert_eq!(
            (b.inception_score, b.fid, b.sfid, b.precision, b.recall),
            (a.inception_score, a.fid, a.sfid, a.precision, a.recall),
            "{how}"
        );
        assert_eq!((b.details.num_reference, b.details.num_samples), (12, 10), "{how}");
    };
    // both batches from their feature files
    let b = Evaluator::new(Source::Features, EvalOptions::default())
        .evaluate(&files.reference, &files.samples, &mut |_, _, _| {})
        .unwrap();
    same(&b, "--features");
    assert!(b.details.extractor.contains("toy3"), "{}", b.details.extractor);
    // the saved reference batch in place of its images
    let c =
        Evaluator::new(Source::Images(&toy), EvalOptions { batch_size: 4, ..Default::default() })
            .evaluate(&files.reference, &s_img, &mut |_, _, _| {})
            .unwrap();
    same(&c, "reference features, sample images");
    // ... but not with another network
    let other = Toy3("another network");
    let e = Evaluator::new(Source::Images(&other), EvalOptions::default())
        .evaluate(&files.reference, &s_img, &mut |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("feats.ref.npz") && e.contains("'toy3'") && e.contains("'another network'"),
        "{e}"
    );
}
