//! Mean and covariance of feature vectors in `f64` (`np.mean(axis=0)`, `np.cov(rowvar=False)`,
//! i.e. normalised by `N - 1`), computed in one streaming pass so that features can arrive batch
//! by batch; and [`FidStatistics`], the `(mu, sigma)` pair a reference batch may carry
//! precomputed.
//!
//! Streaming uses a shifted sum of outer products: with `s` the mean of the first batch,
//! `cov = (Σ (x-s)(x-s)ᵀ - n·δδᵀ) / (n-1)`, `δ = mean - s`. The shift keeps the cancellation
//! small, so the result agrees with numpy's two-pass `np.cov` to ~1e-13 relative.
use super::features::FeatureMatrix;
use super::npz::NpzFile;
use crate::{bail, Result};
use faer::{Accum, Mat, MatRef, Par};

/// Mean vector and covariance matrix (row-major `dim × dim`) of a set of features.
#[derive(Debug, Clone, PartialEq)]
pub struct FidStatistics {
    pub mu: Vec<f64>,
    pub sigma: Vec<f64>,
}

impl FidStatistics {
    pub fn new(mu: Vec<f64>, sigma: Vec<f64>) -> Result<Self> {
        let d = mu.len();
        if sigma.len() != d * d {
            bail!(
                "statistics: mu has {d} entries but sigma has {} (expected {d}x{d})",
                sigma.len()
            );
        }
        Ok(Self { mu, sigma })
    }

    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// Statistics of all rows of `features`.
    pub fn from_features(features: &FeatureMatrix) -> Result<Self> {
        let mut acc = MomentAccumulator::new(features.cols);
        acc.update(features)?;
        acc.finish()
    }

    /// Reads precomputed `mu_key` (1-d) and `sigma_key` (2-d, square) from an npz archive, as
    /// the reference does for its reference batches; errors name the file and key.
    pub fn from_npz(npz: &NpzFile, mu_key: &str, sigma_key: &str) -> Result<Self> {
        let p = npz.path().display();
        let mh = npz.header(mu_key)?;
        if mh.shape.len() != 1 || mh.shape[0] > crate::limits::MAX_FEATURE_DIM {
            bail!(
                "{p}: array '{mu_key}': expected a 1-d mean vector of at most {} features, got \
                 shape {:?}",
                crate::limits::MAX_FEATURE_DIM,
                mh.shape
            );
        }
        let sh = npz.header(sigma_key)?;
        if sh.shape != [mh.shape[0], mh.shape[0]] {
            bail!(
                "{p}: array '{sigma_key}': expected a {0}x{0} covariance to match '{mu_key}', got \
                 shape {1:?}",
                mh.shape[0],
                sh.shape
            );
        }
        let mu = npz.read_f64(mu_key)?;
        let sigma = npz.read_f64(sigma_key)?;
        let &[d] = mu.shape.as_slice() else {
            bail!("{p}: array '{mu_key}': expected a 1-d mean vector, got shape {:?}", mu.shape);
        };
        if sigma.shape != [d, d] {
            bail!(
                "{p}: array '{sigma_key}': expected a {d}x{d} covariance to match '{mu_key}', got shape {:?}",
                sigma.shape
            );
        }
        if mu.data.iter().chain(&sigma.data).any(|v| !v.is_finite()) {
            bail!("{p}: arrays '{mu_key}'/'{sigma_key}' hold non-finite values");
        }
        Self::new(mu.data, sigma.data)
    }

    pub(crate) fn sigma_ref(&self) -> MatRef<'_, f64> {
        MatRef::from_row_major_slice(&self.sigma, self.dim(), self.dim())
    }
}

/// One-pass accumulator of mean and covariance.
pub struct MomentAccumulator {
    dim: usize,
    n: usize,
    shift: Option<Vec<f64>>,
    sum: Vec<f64>,
    sxx: Mat<f64>,
}

pub(crate) fn parallelism() -> Par {
    Par::rayon(0)
}

impl MomentAccumulator {
    pub fn new(dim: usize) -> Self {
        Self { dim, n: 0, shift: None, sum: vec![0.0; dim], sxx: Mat::zeros(dim, dim) }
    }

    pub fn count(&self) -> usize {
        self.n
    }

    pub fn update(&mut self, batch: &FeatureMatrix) -> Result<()> {
        if batch.cols != self.dim {
            bail!(
                "statistics: features of width {} fed to an accumulator of width {}",
                batch.cols,
                self.dim
            );
        }
        if batch.rows == 0 {
            return Ok(());
        }
        let shift = self.shift.get_or_insert_with(|| {
            let mut m = vec![0.0; batch.cols];
            for r in 0..batch.rows {
                for (a, &v) in m.iter_mut().zip(batch.row(r)) {
                    *a += v as f64;
                }
            }
            m.iter_mut().for_each(|a| *a /= batch.rows as f64);
            m
        });
        let y = Mat::<f64>::from_fn(batch.rows, self.dim, |i, j| {
            batch.data[i * self.dim + j] as f64 - shift[j]
        });
        for i in 0..batch.rows {
            for (s, v) in self.sum.iter_mut().zip(y.row(i).iter()) {
                *s += *v;
            }
        }
        faer::linalg::matmul::matmul(
            self.sxx.as_mut(),
            Accum::Add,
            y.transpose(),
            y.as_ref(),
            1.0,
            parallelism(),
        );
        self.n += batch.rows;
        Ok(())
    }

    /// Mean and covariance (`N - 1` normalisation, as `np.cov`); needs at least two vectors.
    pub fn finish(&self) -> Result<FidStatistics> {
        let n = self.n;
        if n < 2 {
            bail!("statistics: need at least 2 feature vectors for a covariance, got {n}");
        }
        let shift = self.shift.as_ref().expect("n >= 2 implies a shift");
        let delta: Vec<f64> = self.sum.iter().map(|s| s / n as f64).collect();
        let mu: Vec<f64> = shift.iter().zip(&delta).map(|(s, d)| s + d).collect();
        let d = self.dim;
        let mut sigma = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                // symmetrise: the accumulated matrix is symmetric up to rounding
                let sij = 0.5 * (self.sxx[(i, j)] + self.sxx[(j, i)]);
                sigma[i * d + j] = (sij - n as f64 * delta[i] * delta[j]) / (n - 1) as f64;
            }
        }
        FidStatistics::new(mu, sigma)
    }
}
