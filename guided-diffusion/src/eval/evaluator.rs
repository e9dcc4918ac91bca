//! The evaluation pipeline of the reference's `main()`: activations of the reference batch,
//! its statistics (precomputed `mu`/`sigma`/`mu_s`/`sigma_s` when the npz has them), the same
//! for the sample batch, then Inception Score (samples), FID, sFID and precision/recall.
//!
//! Two sources of activations:
//! - images: `arr_0`, `[N, H, W, C]`, any integer or float dtype on the 0–255 scale (uint8 in
//!   practice), streamed `batch_size` images at a time through a [`FeatureExtractor`];
//! - precomputed features (`--features`, or a batch without `arr_0` but with `pool` when the
//!   other batch is images): arrays `pool` `[N, D]` (required), `spatial` `[N, Ds]` and `logits`
//!   `[N, C]` (optional) in each npz, as [`super::feature_file`] writes them.
//!
//! With [`EvalOptions::save_features`] each batch's activations and statistics are written as
//! such a feature file, right after they are computed.
use super::feature_file::{self, BatchFeatures, FeatureFiles};
use super::features::{FeatureExtractor, FeatureMatrix, ImageBatch};
use super::frechet::{frechet_distance, SqrtmMethod};
use super::inception_score::{inception_score_from_logits, IS_SPLIT_SIZE};
use super::manifold::{DistancePrecision, ManifoldEstimator};
use super::npz::NpzFile;
use super::results::{EvalDetails, EvalResults};
use super::stats::{FidStatistics, MomentAccumulator};
use crate::{bail, Result};
use candle_core::Device;
use std::path::Path;

/// Knobs of an evaluation; defaults are the reference's.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Images per forward pass (the reference: 64).
    pub batch_size: usize,
    pub is_split_size: usize,
    pub sqrtm: SqrtmMethod,
    pub pr_distance: DistancePrecision,
    /// Row/column block of the pairwise distances (the reference: 10 000).
    pub pr_batch_size: usize,
    /// Device for the pairwise distances.
    pub device: Device,
    /// Write each batch's features and statistics to these files ([`super::feature_file`]).
    pub save_features: Option<FeatureFiles>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            batch_size: 64,
            is_split_size: IS_SPLIT_SIZE,
            sqrtm: SqrtmMethod::default(),
            pr_distance: DistancePrecision::default(),
            pr_batch_size: 10_000,
            device: Device::Cpu,
            save_features: None,
        }
    }
}

/// Progress of a stage: `(stage, done, total)`; stages are "reference batch", "sample batch"
/// (counted in images, or rows of features) and "precision/recall" (0 then 1).
pub type ProgressFn<'a> = dyn FnMut(&str, usize, usize) + 'a;

/// Activations of one batch: everything kept for the metrics.
pub struct Activations {
    pub pool: FeatureMatrix,
    pub pool_stats: MomentAccumulator,
    pub spatial_stats: Option<MomentAccumulator>,
    /// The spatial features themselves, kept only to be saved.
    pub spatial: Option<FeatureMatrix>,
    pub logits: Option<FeatureMatrix>,
    /// The network that made them, when known.
    pub extractor: Option<String>,
}

impl Activations {
    pub fn len(&self) -> usize {
        self.pool.rows
    }
    pub fn is_empty(&self) -> bool {
        self.pool.rows == 0
    }
}

/// Where activations come from.
pub enum Source<'a> {
    Images(&'a dyn FeatureExtractor),
    Features,
}

pub struct Evaluator<'a> {
    pub source: Source<'a>,
    pub options: EvalOptions,
}

fn check_2d(npz: &NpzFile, key: &str) -> Result<(usize, usize)> {
    let h = npz.header(key)?;
    match h.shape.as_slice() {
        // The statistics hold D x D covariances: bound D before anything is read.
        &[_, d] if d > crate::limits::MAX_FEATURE_DIM => bail!(
            "{}: array '{key}': {d} features per row is over the limit of {} (the covariance \
             would take {} GiB)",
            npz.path().display(),
            crate::limits::MAX_FEATURE_DIM,
            (d as u128 * d as u128 * 8) >> 30
        ),
        &[n, d] if n > 0 && d > 0 => Ok((n, d)),
        s => bail!(
            "{}: array '{key}': expected a non-empty 2-d [N, D] feature array, got shape {s:?}",
            npz.path().display()
        ),
    }
}

fn read_matrix(npz: &NpzFile, key: &str) -> Result<FeatureMatrix> {
    let (n, d) = check_2d(npz, key)?;
    let h = npz.header(key)?;
    if !h.dtype.is_float() {
        bail!(
            "{}: array '{key}': expected float features, got dtype {}",
            npz.path().display(),
            h.dtype.name()
        );
    }
    let data = npz.read_f32(key)?.data;
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: array '{key}': value {} at row {}, column {} is not finite",
            npz.path().display(),
            data[i],
            i / d,
            i % d
        );
    }
    FeatureMatrix::new(n, d, data)
}

/// Image pixels must be finite levels in [0, 255] (uint8, or a float/int array holding them):
/// anything else would give a meaningless FID or an infinite Inception Score.
fn check_pixels(path: &str, first_image: usize, shape: &[usize], data: &[f32]) -> Result<()> {
    if let Some(i) = data.iter().position(|v| !(v.is_finite() && (0.0..=255.0).contains(v))) {
        let per_image = shape.iter().skip(1).product::<usize>().max(1);
        bail!(
            "{path}: array 'arr_0': image {} holds the value {}; expected pixel levels in [0, 255] \
             (uint8 NHWC)",
            first_image + i / per_image,
            data[i]
        );
    }
    Ok(())
}

/// Activations from a feature file: `pool`, and `spatial` / `logits` when present (`logits`
/// only when `want_logits`; `spatial` kept as a matrix only when `keep_spatial`).
fn feature_activations(
    npz: &NpzFile,
    want_logits: bool,
    keep_spatial: bool,
    stage: &str,
    progress: &mut ProgressFn<'_>,
) -> Result<Activations> {
    let pool = read_matrix(npz, "pool")?;
    let mut pool_stats = MomentAccumulator::new(pool.cols);
    pool_stats.update(&pool)?;
    let rows_match = |m: &FeatureMatrix, key: &str| -> Result<()> {
        if m.rows != pool.rows {
            bail!(
                "{}: array '{key}' has {} rows but 'pool' has {}",
                npz.path().display(),
                m.rows,
                pool.rows
            );
        }
        Ok(())
    };
    let (spatial_stats, spatial) = if npz.contains("spatial") {
        let s = read_matrix(npz, "spatial")?;
        rows_match(&s, "spatial")?;
        let mut acc = MomentAccumulator::new(s.cols);
        acc.update(&s)?;
        (Some(acc), keep_spatial.then_some(s))
    } else {
        (None, None)
    };
    let logits = if want_logits && npz.contains("logits") {
        let l = read_matrix(npz, "logits")?;
        rows_match(&l, "logits")?;
        Some(l)
    } else {
        None
    };
    let extractor = feature_file::read_extractor(npz)?;
    progress(stage, pool.rows, pool.rows);
    Ok(Activations { pool, pool_stats, spatial_stats, spatial, logits, extractor })
}

impl<'a> Evaluator<'a> {
    pub fn new(source: Source<'a>, options: EvalOptions) -> Self {
        Self { source, options }
    }

    /// Reads and checks a batch, returning its activations: images through the extractor, or
    /// features from a feature file (`--features`, or any batch with `pool` and no `arr_0`).
    pub fn read_activations(
        &self,
        npz: &NpzFile,
        want_logits: bool,
        stage: &str,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Activations> {
        let keep = self.options.save_features.is_some();
        match self.source {
            Source::Images(ex) if !feature_file::is_feature_file(npz) => {
                self.image_activations(ex, npz, want_logits || keep, stage, progress)
            }
            Source::Images(ex) => {
                let acts = feature_activations(npz, want_logits || keep, keep, stage, progress)?;
                if let Some(theirs) = &acts.extractor {
                    if *theirs != ex.describe() {
                        bail!(
                            "{}: its features were made by '{theirs}', but this run's images go \
                             through '{}'; give the same network and input convention, or \
                             --features for two feature files",
                            npz.path().display(),
                            ex.describe()
                        );
                    }
                }
                Ok(acts)
            }
            Source::Features => {
                feature_activations(npz, want_logits || keep, keep, stage, progress)
            }
        }
    }

    fn image_activations(
        &self,
        ex: &dyn FeatureExtractor,
        npz: &NpzFile,
        want_logits: bool,
        stage: &str,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Activations> {
        let p = npz.path().display().to_string();
        let h = npz.header("arr_0")?;
        let total = match h.shape.as_slice() {
            &[n, hh, ww, c] if n > 0 && hh > 0 && ww > 0 && (c == 3 || c == 1) => n,
            s => bail!(
                "{p}: array 'arr_0': expected images of shape [N, H, W, 3] (NHWC, N > 0), got {s:?}{}",
                if s.len() == 4 && s[1] <= 4 { " — channels first? transpose to NHWC" } else { "" }
            ),
        };
        let want_logits = want_logits && ex.has_logits();
        let keep_spatial = self.options.save_features.is_some();
        let mut pool = FeatureMatrix::default();
        let mut pool_stats: Option<MomentAccumulator> = None;
        let mut spatial_stats: Option<MomentAccumulator> = None;
        let mut spatial: Option<FeatureMatrix> = None;
        let mut logits: Option<FeatureMatrix> = None;
        let mut done = 0;
        progress(stage, 0, total);
        let needs_check = h.dtype != super::npz::NpyDtype::U8;
        npz.for_each_batch("arr_0", self.options.batch_size, |shape, data| {
            if needs_check {
                check_pixels(&p, done, shape, &data)?;
            }
            let batch = ImageBatch::new(shape, data)?;
            let f = ex.extract(&batch)?;
            pool_stats
                .get_or_insert_with(|| MomentAccumulator::new(f.pool.cols))
                .update(&f.pool)?;
            pool.append(&f.pool)?;
            if let Some(s) = &f.spatial {
                spatial_stats.get_or_insert_with(|| MomentAccumulator::new(s.cols)).update(s)?;
                if keep_spatial {
                    spatial.get_or_insert_with(FeatureMatrix::default).append(s)?;
                }
            }
            if want_logits {
                if let Some(l) = &f.logits {
                    logits.get_or_insert_with(FeatureMatrix::default).append(l)?;
                }
            }
            done += batch.n;
            progress(stage, done, total);
            Ok(())
        })?;
        let pool_stats = pool_stats.expect("at least one batch");
        let extractor = Some(ex.describe());
        Ok(Activations { pool, pool_stats, spatial_stats, spatial, logits, extractor })
    }

    /// `(pool statistics, spatial statistics, description)`, from the npz when it has `mu`
    /// (as the reference's `read_statistics`), else from the activations.
    pub fn read_statistics(
        &self,
        npz: &NpzFile,
        acts: &Activations,
    ) -> Result<(FidStatistics, Option<FidStatistics>, String)> {
        if npz.contains("mu") {
            let pool = FidStatistics::from_npz(npz, "mu", "sigma")?;
            let (spatial, how) = if npz.contains("mu_s") {
                (
                    Some(FidStatistics::from_npz(npz, "mu_s", "sigma_s")?),
                    "precomputed (mu, sigma, mu_s, sigma_s)",
                )
            } else {
                (
                    acts.spatial_stats.as_ref().map(|a| a.finish()).transpose()?,
                    "precomputed (mu, sigma); spatial computed",
                )
            };
            return Ok((pool, spatial, how.to_string()));
        }
        let pool = acts.pool_stats.finish()?;
        let spatial = acts.spatial_stats.as_ref().map(|a| a.finish()).transpose()?;
        Ok((pool, spatial, "computed".to_string()))
    }

    /// The whole evaluation of `samples` against `reference`.
    pub fn evaluate(
        &self,
        reference: &Path,
        samples: &Path,
        progress: &mut ProgressFn<'_>,
    ) -> Result<EvalResults> {
        let ref_npz = NpzFile::open(reference)?;
        let sample_npz = NpzFile::open(samples)?;
        let save = |path: Option<&Path>, acts: &Activations, stats, spatial| -> Result<()> {
            let Some(path) = path else { return Ok(()) };
            feature_file::write_features(
                path,
                &BatchFeatures {
                    pool: &acts.pool,
                    spatial: acts.spatial.as_ref(),
                    logits: acts.logits.as_ref(),
                    stats,
                    spatial_stats: spatial,
                    extractor: acts.extractor.as_deref(),
                },
            )
        };
        let files = self.options.save_features.as_ref();
        let ref_acts = self.read_activations(&ref_npz, false, "reference batch", progress)?;
        let (ref_stats, ref_spatial, ref_how) = self.read_statistics(&ref_npz, &ref_acts)?;
        save(files.map(|f| f.reference.as_path()), &ref_acts, &ref_stats, ref_spatial.as_ref())?;
        let sample_acts = self.read_activations(&sample_npz, true, "sample batch", progress)?;
        let (sample_stats, sample_spatial, sample_how) =
            self.read_statistics(&sample_npz, &sample_acts)?;
        save(
            files.map(|f| f.samples.as_path()),
            &sample_acts,
            &sample_stats,
            sample_spatial.as_ref(),
        )?;

        let o = &self.options;
        let mut details = EvalDetails {
            reference_batch: reference.display().to_string(),
            sample_batch: samples.display().to_string(),
            num_reference: ref_acts.len(),
            num_samples: sample_acts.len(),
            extractor: match (&self.source, &sample_acts.extractor) {
                (Source::Images(ex), _) => ex.describe(),
                (Source::Features, Some(e)) => format!("precomputed features ({e})"),
                (Source::Features, None) => "precomputed features".to_string(),
            },
            reference_statistics: ref_how,
            sample_statistics: sample_how,
            is_split_size: o.is_split_size,
            pr_distance: format!("{:?}", o.pr_distance),
            sqrtm: format!("{:?}", o.sqrtm),
            ..Default::default()
        };

        let inception_score = match &sample_acts.logits {
            Some(l) => Some(inception_score_from_logits(l, o.is_split_size)?),
            None => {
                details.inception_score_unavailable = Some(match self.source {
                    Source::Images(ex) if !ex.has_logits() => {
                        "the extractor has no classifier head (weights without fc.weight)".into()
                    }
                    Source::Images(_) => "the extractor returned no logits".into(),
                    Source::Features => format!("{} has no 'logits' array", samples.display()),
                });
                None
            }
        };
        let fid = frechet_distance(&sample_stats, &ref_stats, o.sqrtm)?;
        details.fid_eps_fallback = fid.eps_fallback;
        let sfid = match (&sample_spatial, &ref_spatial) {
            (Some(s), Some(r)) => {
                let out = frechet_distance(s, r, o.sqrtm)?;
                details.sfid_eps_fallback = out.eps_fallback;
                Some(out.distance)
            }
            _ => {
                details.sfid_unavailable = Some("no spatial features for both batches".into());
                None
            }
        };
        let mut est = ManifoldEstimator::new(o.device.clone());
        est.precision = o.pr_distance;
        est.row_batch_size = o.pr_batch_size;
        est.col_batch_size = o.pr_batch_size;
        progress("precision/recall", 0, 1);
        let (precision, recall) = est.precision_recall(&ref_acts.pool, &sample_acts.pool)?;
        progress("precision/recall", 1, 1);
        Ok(EvalResults { inception_score, fid: fid.distance, sfid, precision, recall, details })
    }
}
