//! Evaluation metrics: FID, sFID, Inception Score, precision and recall.
//!
//! The Rust counterpart of the reference's `evaluations/evaluator.py`, without TensorFlow:
//! - [`npz`]: reading `.npz` batches (images streamed, statistics whole) with errors that name
//!   the file and key;
//! - [`features`]: image batches, feature matrices and the [`FeatureExtractor`] trait that the
//!   Inception network (and any other extractor) implements;
//! - [`stats`], [`frechet`], [`inception_score`], [`manifold`]: the metric math in `f64`
//!   (f32/f16 for the pairwise distances, as the reference);
//! - [`inception`]: Inception-v3 as pytorch-fid's FID variant, in candle;
//! - [`judge`]: a clean classifier as the judge of class-conditional samples (accuracy on the
//!   asked class, Fréchet distance and precision/recall in its feature space);
//! - [`feature_file`]: a batch's features and statistics saved in the `--features` layout;
//! - [`evaluator`]: the pipeline that turns two batches into the five numbers, and
//!   [`results`]: those numbers, their printout in the reference's format and their JSON.
pub mod evaluator;
pub mod feature_file;
pub mod features;
pub mod frechet;
pub mod inception;
pub mod inception_score;
pub mod judge;
pub mod manifold;
pub mod npz;
pub mod results;
pub mod stats;

pub use evaluator::{EvalOptions, Evaluator};
pub use features::{ExtractedFeatures, FeatureExtractor, FeatureMatrix, ImageBatch};
pub use frechet::{frechet_distance, FrechetOutcome, SqrtmMethod};
pub use judge::{Judge, JudgedMetrics, Verdict};
pub use manifold::{DistancePrecision, ManifoldEstimator};
pub use results::EvalResults;
pub use stats::{FidStatistics, MomentAccumulator};
