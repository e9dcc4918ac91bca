//! The data that flows between a feature extractor and the metrics: image batches in, feature
//! matrices out, and the [`FeatureExtractor`] trait that Inception-v3 implements and that any
//! other network (e.g. the small Fashion-MNIST classifier) implements to be evaluated the same
//! way. Kept apart from the network and the math so each side can be tested alone.
use crate::{bail, Result};

/// A row-major `rows × cols` matrix of `f32` features, one row per image.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FeatureMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl FeatureMatrix {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != rows * cols {
            bail!("feature matrix: {} values for {rows} x {cols}", data.len());
        }
        Ok(Self { rows, cols, data })
    }

    pub fn empty(cols: usize) -> Self {
        Self { rows: 0, cols, data: Vec::new() }
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Rows `start..end` as a new matrix.
    pub fn slice_rows(&self, start: usize, end: usize) -> FeatureMatrix {
        FeatureMatrix {
            rows: end - start,
            cols: self.cols,
            data: self.data[start * self.cols..end * self.cols].to_vec(),
        }
    }

    /// Appends the rows of `other` (same width).
    pub fn append(&mut self, other: &FeatureMatrix) -> Result<()> {
        if self.rows == 0 && self.data.is_empty() {
            self.cols = other.cols;
        }
        if other.cols != self.cols {
            bail!("feature width changed between batches: {} then {}", self.cols, other.cols);
        }
        self.data.extend_from_slice(&other.data);
        self.rows += other.rows;
        Ok(())
    }

    /// From a 2-D candle tensor (any float dtype, any device).
    pub fn from_tensor(t: &candle_core::Tensor) -> Result<Self> {
        let (rows, cols) = t.dims2()?;
        let data = t
            .to_dtype(candle_core::DType::F32)?
            .to_device(&candle_core::Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Self::new(rows, cols, data)
    }

    pub fn to_tensor(&self, device: &candle_core::Device) -> Result<candle_core::Tensor> {
        Ok(candle_core::Tensor::from_slice(&self.data, (self.rows, self.cols), device)?)
    }
}

/// A batch of images, NHWC, values on the uint8 scale `[0, 255]` held as `f32` (the
/// reference casts its batches with `astype(np.float32)` before the network).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBatch {
    pub n: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: Vec<f32>,
}

impl ImageBatch {
    pub fn new(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        let &[n, height, width, channels] = shape else {
            bail!("images must be NHWC (4 axes), got shape {shape:?}");
        };
        if data.len() != n * height * width * channels {
            bail!("image batch: {} values for shape {shape:?}", data.len());
        }
        Ok(Self { n, height, width, channels, data })
    }
}

/// What one forward pass of an extractor gives for a batch of `n` images.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractedFeatures {
    /// Features for FID and precision/recall (Inception: pool_3, 2048-d).
    pub pool: FeatureMatrix,
    /// Spatial features for sFID (Inception: mixed_6/conv, first 7 channels, 17x17x7 in HWC
    /// order), when the extractor has them.
    pub spatial: Option<FeatureMatrix>,
    /// Class logits for the Inception Score, when the extractor has a classifier head.
    pub logits: Option<FeatureMatrix>,
}

/// A network that turns images into the features the metrics use.
///
/// Implement this to evaluate with another network than Inception-v3 (for instance the small
/// Fashion-MNIST classifier): [`crate::eval::evaluator::Evaluator`] only talks to this trait.
pub trait FeatureExtractor {
    /// A short description for logs and the results JSON (e.g. "inception-v3 (pytorch-fid)").
    fn describe(&self) -> String;
    /// Whether [`ExtractedFeatures::spatial`] is filled (sFID available).
    fn has_spatial(&self) -> bool;
    /// Whether [`ExtractedFeatures::logits`] is filled (Inception Score available).
    fn has_logits(&self) -> bool;
    /// Runs the network on one batch.
    fn extract(&self, images: &ImageBatch) -> Result<ExtractedFeatures>;
}
