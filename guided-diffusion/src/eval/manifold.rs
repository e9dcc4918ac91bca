//! Improved precision and recall (Kynkäänniemi et al. 2019) as the reference's
//! `ManifoldEstimator`: each set of features spans a manifold made of balls around its points,
//! the radius of a point's ball being the (squared) distance to its k-th nearest neighbour
//! (k = 3, not counting the point itself); precision is the fraction of samples inside the
//! reference manifold, recall the fraction of reference points inside the sample manifold.
//!
//! Like the reference, distances are *squared* Euclidean distances computed in blocks of
//! `row_batch_size × col_batch_size` (10 000 each) as `max(|u|² - 2 u·v + |v|², 0)`, on the
//! candle device (so a GPU does the matmuls). The reference casts features to float16 for this
//! and only recomputes a block in float32 when the float16 result has an inf/NaN;
//! [`DistancePrecision::ReferenceF16`] (the default) emulates that by rounding to f16 after every
//! operation of the TensorFlow graph (inputs, squares, row sums, the matmul, each add), with f32
//! accumulation inside the sums and the matmul (what a GPU's f16 matmul does). It reproduces
//! the reference's coarse distances and ties, but cannot promise bit-identical rounding to a
//! given GPU kernel; [`DistancePrecision::F32`] is the reference's fallback path, exact up to
//! f32 summation order.
use super::features::FeatureMatrix;
use crate::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// Arithmetic of the pairwise distances; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DistancePrecision {
    #[default]
    ReferenceF16,
    F32,
}

/// The reference's `ManifoldEstimator` (with `clamp_to_percentile=None`).
#[derive(Debug, Clone)]
pub struct ManifoldEstimator {
    pub row_batch_size: usize,
    pub col_batch_size: usize,
    /// Neighbourhood sizes k; the reference uses `[3]`.
    pub nhood_sizes: Vec<usize>,
    pub precision: DistancePrecision,
    pub device: Device,
}

fn r16(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F16)?.to_dtype(DType::F32)?)
}

impl ManifoldEstimator {
    pub fn new(device: Device) -> Self {
        Self {
            row_batch_size: 10_000,
            col_batch_size: 10_000,
            nhood_sizes: vec![3],
            precision: DistancePrecision::default(),
            device,
        }
    }

    fn to_device(&self, m: &FeatureMatrix, start: usize, end: usize) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &m.data[start * m.cols..end * m.cols],
            (end - start, m.cols),
            &self.device,
        )?)
    }

    fn distances_f32(u: &Tensor, v: &Tensor) -> Result<Tensor> {
        let nu = u.sqr()?.sum_keepdim(1)?; // [r, 1]
        let nv = v.sqr()?.sum_keepdim(1)?.t()?; // [1, c]
        let mm = u.matmul(&v.t()?.contiguous()?)?;
        let d = nu.broadcast_sub(&(mm * 2.0)?)?.broadcast_add(&nv)?;
        Ok(d.relu()?)
    }

    fn distances_f16(u: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (u, v) = (r16(u)?, r16(v)?);
        let nu = r16(&r16(&u.sqr()?)?.sum_keepdim(1)?)?;
        let nv = r16(&r16(&v.sqr()?)?.sum_keepdim(1)?)?.t()?;
        let mm = r16(&u.matmul(&v.t()?.contiguous()?)?)?;
        let t = r16(&nu.broadcast_sub(&r16(&(mm * 2.0)?)?)?)?;
        let d = r16(&t.broadcast_add(&nv)?)?;
        Ok(d.relu()?)
    }

    /// Squared distances between rows `u` (r × d) and `v` (c × d), as a host `r × c` matrix.
    pub fn pairwise_distances(&self, u: &Tensor, v: &Tensor) -> Result<FeatureMatrix> {
        if self.precision == DistancePrecision::ReferenceF16 {
            let d = FeatureMatrix::from_tensor(&Self::distances_f16(u, v)?)?;
            if d.data.iter().all(|x| x.is_finite()) {
                return Ok(d);
            }
        }
        FeatureMatrix::from_tensor(&Self::distances_f32(u, v)?)
    }

    /// Radii `[n, len(nhood_sizes)]`: for each point, the k-th smallest squared distance to the
    /// set (index k in sorted order, the point itself being index 0).
    pub fn manifold_radii(&self, features: &FeatureMatrix) -> Result<FeatureMatrix> {
        let n = features.rows;
        let kmax = self.nhood_sizes.iter().copied().max().unwrap_or(0);
        if n <= kmax {
            bail!("precision/recall: need more than {kmax} feature vectors per batch to find the {kmax}-th neighbour, got {n}");
        }
        let nk = self.nhood_sizes.len();
        let mut radii = vec![0f32; n * nk];
        let mut row_buf = vec![0f32; n];
        for b1 in (0..n).step_by(self.row_batch_size) {
            let e1 = (b1 + self.row_batch_size).min(n);
            let rows = self.to_device(features, b1, e1)?;
            // distance_batch[0:e1-b1, :] filled column block by column block
            let mut block = vec![0f32; (e1 - b1) * n];
            for b2 in (0..n).step_by(self.col_batch_size) {
                let e2 = (b2 + self.col_batch_size).min(n);
                let cols = self.to_device(features, b2, e2)?;
                let d = self.pairwise_distances(&rows, &cols)?;
                for i in 0..(e1 - b1) {
                    block[i * n + b2..i * n + e2].copy_from_slice(d.row(i));
                }
            }
            for i in 0..(e1 - b1) {
                row_buf.copy_from_slice(&block[i * n..(i + 1) * n]);
                for (j, &k) in self.nhood_sizes.iter().enumerate() {
                    let (_, kth, _) = row_buf.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
                    radii[(b1 + i) * nk + j] = *kth;
                }
            }
        }
        FeatureMatrix::new(n, nk, radii)
    }

    /// `(precision, recall)` per neighbourhood size, as the reference's `evaluate_pr`:
    /// precision = fraction of `features_2` inside the manifold of `features_1` (radii_1),
    /// recall = fraction of `features_1` inside the manifold of `features_2` (radii_2).
    pub fn evaluate_pr(
        &self,
        features_1: &FeatureMatrix,
        radii_1: &FeatureMatrix,
        features_2: &FeatureMatrix,
        radii_2: &FeatureMatrix,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        if features_1.cols != features_2.cols {
            bail!(
                "precision/recall: reference features have {} dimensions, samples have {}",
                features_1.cols,
                features_2.cols
            );
        }
        let (n1, n2) = (features_1.rows, features_2.rows);
        let (k1, k2) = (radii_1.cols, radii_2.cols);
        if radii_1.rows != n1 || radii_2.rows != n2 {
            bail!("precision/recall: radii do not match their features");
        }
        // status_1[i][k]: point i of set 1 lies in a ball of set 2 with radius radii_2[:, k]
        let mut status_1 = vec![false; n1 * k2];
        let mut status_2 = vec![false; n2 * k1];
        for b1 in (0..n1).step_by(self.row_batch_size) {
            let e1 = (b1 + self.row_batch_size).min(n1);
            let batch_1 = self.to_device(features_1, b1, e1)?;
            for b2 in (0..n2).step_by(self.col_batch_size) {
                let e2 = (b2 + self.col_batch_size).min(n2);
                let batch_2 = self.to_device(features_2, b2, e2)?;
                let d = self.pairwise_distances(&batch_1, &batch_2)?;
                for i in 0..(e1 - b1) {
                    let row = d.row(i);
                    for (j, &dij) in row.iter().enumerate() {
                        for k in 0..k2 {
                            if dij <= radii_2.data[(b2 + j) * k2 + k] {
                                status_1[(b1 + i) * k2 + k] = true;
                            }
                        }
                        for k in 0..k1 {
                            if dij <= radii_1.data[(b1 + i) * k1 + k] {
                                status_2[(b2 + j) * k1 + k] = true;
                            }
                        }
                    }
                }
            }
        }
        let frac = |status: &[bool], n: usize, k: usize| -> Vec<f64> {
            (0..k)
                .map(|kk| (0..n).filter(|&i| status[i * k + kk]).count() as f64 / n as f64)
                .collect()
        };
        Ok((frac(&status_2, n2, k1), frac(&status_1, n1, k2)))
    }

    /// `(precision, recall)` for the first neighbourhood size, as the reference's
    /// `compute_prec_recall(activations_ref, activations_sample)`.
    pub fn precision_recall(
        &self,
        reference: &FeatureMatrix,
        samples: &FeatureMatrix,
    ) -> Result<(f64, f64)> {
        let r1 = self.manifold_radii(reference)?;
        let r2 = self.manifold_radii(samples)?;
        let (p, r) = self.evaluate_pr(reference, &r1, samples, &r2)?;
        Ok((p[0], r[0]))
    }
}
