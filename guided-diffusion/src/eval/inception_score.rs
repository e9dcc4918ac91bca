//! Inception Score as the reference's `compute_inception_score`: split the class probabilities
//! into consecutive chunks of `split_size` (5000; the last chunk may be shorter), in each take
//! `exp(mean_i KL(p_i || mean_j p_j))`, and average over chunks.
//!
//! Computed in `f64` (the reference works in `float32` on TensorFlow's softmax output, which
//! moves the score by ~1e-6 relative). From logits, `log p` comes from a stable log-softmax
//! instead of `log(softmax)`, which also avoids `0 · log 0 = NaN` when a probability underflows.
use super::features::FeatureMatrix;
use crate::{bail, Result};

/// The reference's split size.
pub const IS_SPLIT_SIZE: usize = 5000;

/// Row-wise log-softmax of `logits`, in `f64`.
pub fn log_softmax(logits: &FeatureMatrix) -> Vec<f64> {
    let mut out = Vec::with_capacity(logits.data.len());
    for r in 0..logits.rows {
        let row = logits.row(r);
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        out.extend(row.iter().map(|&v| v as f64 - lse));
    }
    out
}

/// Inception Score from class log-probabilities (`rows × classes`, row-major).
pub fn inception_score_from_log_probs(
    log_p: &[f64],
    classes: usize,
    split_size: usize,
) -> Result<f64> {
    if classes == 0 || log_p.is_empty() || !log_p.len().is_multiple_of(classes) {
        bail!("Inception Score: need at least one row of class probabilities");
    }
    if split_size == 0 {
        bail!("Inception Score: split size must be positive");
    }
    let rows = log_p.len() / classes;
    let mut scores = Vec::new();
    for start in (0..rows).step_by(split_size) {
        let end = (start + split_size).min(rows);
        let part = &log_p[start * classes..end * classes];
        let n = (end - start) as f64;
        let mut mean = vec![0.0f64; classes];
        for row in part.chunks_exact(classes) {
            for (m, &l) in mean.iter_mut().zip(row) {
                *m += l.exp();
            }
        }
        let log_mean: Vec<f64> = mean.iter().map(|m| (m / n).ln()).collect();
        let mut kl_sum = 0.0;
        for row in part.chunks_exact(classes) {
            for (&l, &lm) in row.iter().zip(&log_mean) {
                let p = l.exp();
                if p > 0.0 {
                    kl_sum += p * (l - lm);
                }
            }
        }
        scores.push((kl_sum / n).exp());
    }
    Ok(scores.iter().sum::<f64>() / scores.len() as f64)
}

/// Inception Score from probabilities (each row sums to 1), as the reference takes them.
pub fn inception_score_from_probs(probs: &[f64], classes: usize, split_size: usize) -> Result<f64> {
    let log_p: Vec<f64> = probs.iter().map(|p| p.ln()).collect();
    inception_score_from_log_probs(&log_p, classes, split_size)
}

/// Inception Score from logits (softmax taken here).
pub fn inception_score_from_logits(logits: &FeatureMatrix, split_size: usize) -> Result<f64> {
    inception_score_from_log_probs(&log_softmax(logits), logits.cols, split_size)
}
