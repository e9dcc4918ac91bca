//! A clean classifier as an independent judge of class-conditional samples: how often a sample
//! is recognised as the class it was asked for, and how close the samples are to real images in
//! the judge's feature space (Fréchet distance, k-NN precision and recall). This is how the
//! guidance trade-off of the paper (its Table 4 and Figure 4) is measured on a data set whose
//! images Inception-v3 was never meant for (Fashion-MNIST).
//!
//! The judge must not be the guidance classifier: a guided sample is pushed to *that*
//! classifier's decision regions, so its verdict would be flattering. It is an
//! `EncoderUNetModel` trained on clean images (`train-classifier --noised False`) and run at
//! timestep 0.
use candle_core::{DType, Device, Tensor};

use super::features::FeatureMatrix;
use super::frechet::{frechet_distance, SqrtmMethod};
use super::manifold::ManifoldEstimator;
use super::stats::FidStatistics;
use crate::models::{EncoderUNetModel, Net};
use crate::sample::images::from_uint8_nhwc;
use crate::{bail, Result};

/// The judge network and the device it runs on.
pub struct Judge {
    net: EncoderUNetModel,
    device: Device,
}

/// What the judge says about a set of images.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Penultimate features, one row per image.
    pub features: FeatureMatrix,
    /// The judge's predicted class per image.
    pub predicted: Vec<usize>,
}

impl Verdict {
    /// Fraction of images whose predicted class is the asked one.
    pub fn accuracy(&self, asked: &[usize]) -> Result<f64> {
        if asked.len() != self.predicted.len() {
            bail!("{} labels for {} judged images", asked.len(), self.predicted.len());
        }
        if asked.is_empty() {
            bail!("no images to judge");
        }
        let hits = self.predicted.iter().zip(asked).filter(|(p, a)| p == a).count();
        Ok(hits as f64 / asked.len() as f64)
    }
}

/// Per-setting figures of a sample set measured against a reference set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JudgedMetrics {
    /// Judge accuracy on the asked classes.
    pub accuracy: f64,
    /// Fréchet distance of the samples' features to the full reference set's.
    pub fd: f64,
    /// k-NN (k = 3) precision and recall against an equally large reference subset.
    pub precision: f64,
    pub recall: f64,
}

impl Judge {
    /// Wraps a loaded network; it must be a classifier (`EncoderUNetModel`).
    pub fn new(net: Net, device: Device) -> Result<Self> {
        match net {
            Net::Classifier(mut m) => {
                m.set_training(false);
                Ok(Self { net: m, device })
            }
            _ => {
                bail!("the judge must be a classifier (an EncoderUNetModel checkpoint), not a UNet")
            }
        }
    }

    /// Image side length the judge expects.
    pub fn image_size(&self) -> usize {
        self.net.config().trunk.image_size
    }

    /// Judges uint8 NHWC images (`[N, H, W, C]`, as samplers write them).
    pub fn judge(&self, images: &Tensor, batch_size: usize) -> Result<Verdict> {
        let (n, h, w, c) = images.dims4()?;
        self.check_shape(h, w, c)?;
        self.judge_batches(n, batch_size, |start, len| {
            from_uint8_nhwc(&images.narrow(0, start, len)?.to_device(&self.device)?)
        })
    }

    /// Judges images already scaled to `[-1, 1]`, NCHW (as data sets deliver them).
    pub fn judge_scaled(&self, images: &Tensor, batch_size: usize) -> Result<Verdict> {
        let (n, c, h, w) = images.dims4()?;
        self.check_shape(h, w, c)?;
        self.judge_batches(n, batch_size, |start, len| {
            Ok(images.narrow(0, start, len)?.to_device(&self.device)?)
        })
    }

    fn check_shape(&self, h: usize, w: usize, c: usize) -> Result<()> {
        let cfg = self.net.config();
        if h != cfg.trunk.image_size || w != cfg.trunk.image_size || c != cfg.trunk.in_channels {
            bail!(
                "the judge takes {0}x{0} images with {1} channel(s), got {h}x{w} with {c}",
                cfg.trunk.image_size,
                cfg.trunk.in_channels
            );
        }
        Ok(())
    }

    fn judge_batches(
        &self,
        n: usize,
        batch_size: usize,
        batch: impl Fn(usize, usize) -> Result<Tensor>,
    ) -> Result<Verdict> {
        let bs = batch_size.max(1);
        let mut features = FeatureMatrix::empty(0);
        let mut predicted = Vec::with_capacity(n);
        for start in (0..n).step_by(bs) {
            let len = bs.min(n - start);
            let x = batch(start, len)?;
            let t = Tensor::zeros(len, DType::U32, &self.device)?;
            let (logits, f) = self.net.forward_with_features(&x, &t)?;
            features.append(&FeatureMatrix::from_tensor(&f)?)?;
            predicted.extend(
                logits
                    .argmax(1)?
                    .to_device(&Device::Cpu)?
                    .to_vec1::<u32>()?
                    .into_iter()
                    .map(|v| v as usize),
            );
        }
        Ok(Verdict { features, predicted })
    }
}

/// Scores `samples` (asked for `asked`) against a reference: FD to `reference_stats` (the whole
/// reference set) and precision/recall against `reference_subset` (best the same size as the
/// samples: k-NN radii shrink as a set grows, so unequal sizes bias both numbers).
pub fn score(
    samples: &Verdict,
    asked: &[usize],
    reference_stats: &FidStatistics,
    reference_subset: &FeatureMatrix,
    device: &Device,
) -> Result<JudgedMetrics> {
    let accuracy = samples.accuracy(asked)?;
    let stats = FidStatistics::from_features(&samples.features)?;
    let fd = frechet_distance(&stats, reference_stats, SqrtmMethod::default())?.distance;
    let (precision, recall) = ManifoldEstimator {
        precision: super::DistancePrecision::F32,
        ..ManifoldEstimator::new(device.clone())
    }
    .precision_recall(reference_subset, &samples.features)?;
    Ok(JudgedMetrics { accuracy, fd, precision, recall })
}
