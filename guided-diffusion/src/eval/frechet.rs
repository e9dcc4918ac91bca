//! Fréchet distance between two Gaussians, as the reference's
//! `FIDStatistics.frechet_distance`: `|mu1-mu2|² + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))`.
//!
//! # How `tr(sqrtm(S1 S2))` is computed, and why
//! The reference calls `scipy.linalg.sqrtm(S1 @ S2)`: a Schur decomposition `S1 S2 = Q T Qᴴ`
//! followed by the triangular square root `R` of `T`. Only the trace is used, and
//! `tr(Q R Qᴴ) = tr(R) = Σ sqrt(T_ii) = Σ sqrt(λ_i)`, with `λ_i` the eigenvalues of `S1 S2` (the
//! diagonal of its Schur form) and `sqrt` the principal branch. So the default
//! [`SqrtmMethod::SchurEigenvalues`] computes exactly those eigenvalues (faer's Hessenberg-QR, the
//! same LAPACK-style algorithm as scipy's `schur`, after LAPACK's isolation of the eigenvalues
//! that rows or columns with zero off-diagonal entries fix exactly) and sums their principal
//! square roots, keeping the real part as the reference does. On full-rank covariances it agrees with scipy
//! to ~1e-13 relative; on rank-deficient ones (fewer samples than dimensions), where the tiny
//! eigenvalues come out slightly negative or complex, it still agrees to ~1e-9, because it sees
//! the same eigenvalues scipy does. The alternative [`SqrtmMethod::Symmetric`] (eigenvalues of
//! the PSD matrix `sqrt(S1) S2 sqrt(S1)`, clamped at 0) is more robust in theory but differs
//! from scipy by up to ~1e-7 relative in rank-deficient cases, so it is kept for cross-checks.
//!
//! # The reference's two safety nets, reproduced
//! - **Epsilon fallback, only when the plain result is not finite.** The reference computes
//!   `sqrtm(S1 S2)` once and retries with `eps·I` added to both covariances only when that
//!   result holds a non-finite value. We do the same: the fallback is taken when the inputs or
//!   the eigenvalues are not finite, or the eigen-solver does not converge, and never otherwise.
//!   In particular covariances with zero rows (features that never vary, common with small or
//!   padded images) take no offset: scipy's `sqrtm` returns a finite result for them, so the
//!   reference uses the plain value. scipy 1.16 and later (a recursive Schur algorithm whose
//!   Sylvester solves perturb zero denominators) always return finite values for finite
//!   covariances, and so do older versions when the zero rows are at the same positions in both
//!   covariances. With zero rows at *different* positions in the two covariances, scipy 1.9–1.15
//!   may return NaN instead (a zero denominator over a numerator that is zero in exact
//!   arithmetic but not after rounding) and then fall back: a rounding accident that no other
//!   implementation reproduces, and which changes the distance by about 1e-5 relative. We
//!   follow the current scipy there.
//! - **Imaginary-part check.** The reference raises `ValueError("Imaginary component m")` when the
//!   diagonal of the complex `sqrtm` has an imaginary part above `1e-3`. Without the full matrix,
//!   we apply the check to the imaginary parts of `sqrt(λ_i)` (an upper bound on the diagonal's
//!   imaginary parts, so it is at least as strict).
use super::stats::{parallelism, FidStatistics};
use crate::{bail, Result};
use faer::{Accum, Mat, MatRef};

/// How to compute `tr(sqrtm(S1 S2))`; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqrtmMethod {
    #[default]
    SchurEigenvalues,
    Symmetric,
}

/// The reference's `eps` for the fallback.
pub const FID_EPS: f64 = 1e-6;
/// The reference's tolerance on imaginary parts.
pub const IMAG_ATOL: f64 = 1e-3;

/// `tr(sqrtm(S1 S2))` and what was seen on the way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceSqrt {
    /// Real part of the trace.
    pub trace: f64,
    /// Largest `|Im sqrt(λ)|` over the eigenvalues.
    pub max_imag: f64,
    /// The plain result is not finite, so the reference would add `eps·I` (see module docs).
    pub singular: bool,
}

/// Result of [`frechet_distance`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrechetOutcome {
    pub distance: f64,
    /// The `eps·I` fallback was used.
    pub eps_fallback: bool,
    pub max_imag: f64,
}

/// LAPACK's eigenvalue isolation (`gebal` with job `P`, which `gees`, and so scipy's `sqrtm`,
/// runs before the QR iterations): rows of `p` whose off-diagonal entries within the remaining
/// ("active") indices are all zero are split off, repeatedly, then columns likewise. Each split
/// index is an eigenvalue equal to its diagonal entry, exactly; the others are the eigenvalues of
/// `p` restricted to the active indices. Zero rows of a covariance make zero rows (first
/// factor) or zero columns (second factor) of the product, so their eigenvalues come out as
/// exact zeros, as in the reference, instead of rounding noise whose square roots (~1e-8 each)
/// would show in the trace. Returns (the isolated eigenvalues, the active indices).
fn isolate_eigenvalues(p: MatRef<'_, f64>) -> (Vec<f64>, Vec<usize>) {
    let n = p.nrows();
    let mut active = vec![true; n];
    let mut isolated = Vec::new();
    // Rows to convergence, then columns to convergence, as gebal. `nz[i]`: nonzero off-diagonal
    // entries of row (or column) i within the active indices.
    for by_column in [false, true] {
        let at = |i: usize, j: usize| if by_column { p[(j, i)] } else { p[(i, j)] };
        let mut nz: Vec<usize> = (0..n)
            .map(|i| (0..n).filter(|&j| j != i && active[j] && at(i, j) != 0.0).count())
            .collect();
        let mut queue: Vec<usize> = (0..n).filter(|&i| active[i] && nz[i] == 0).collect();
        while let Some(i) = queue.pop() {
            if !active[i] {
                continue;
            }
            active[i] = false;
            isolated.push(p[(i, i)]);
            for r in 0..n {
                if active[r] && r != i && at(r, i) != 0.0 {
                    nz[r] -= 1;
                    if nz[r] == 0 {
                        queue.push(r);
                    }
                }
            }
        }
    }
    (isolated, (0..n).filter(|&i| active[i]).collect())
}

/// `tr(sqrtm(s1 · s2))` for square symmetric `s1`, `s2` of equal size.
pub fn trace_sqrt_product(
    s1: MatRef<'_, f64>,
    s2: MatRef<'_, f64>,
    method: SqrtmMethod,
) -> Result<TraceSqrt> {
    let n = s1.nrows();
    if s1.ncols() != n || s2.nrows() != n || s2.ncols() != n {
        bail!("sqrtm: covariances must be square and of equal size");
    }
    if (0..n).any(|i| (0..n).any(|j| !s1[(i, j)].is_finite() || !s2[(i, j)].is_finite())) {
        return Ok(TraceSqrt { trace: f64::NAN, max_imag: 0.0, singular: true });
    }
    match method {
        SqrtmMethod::SchurEigenvalues => {
            let mut p = Mat::<f64>::zeros(n, n);
            faer::linalg::matmul::matmul(p.as_mut(), Accum::Replace, s1, s2, 1.0, parallelism());
            let (isolated, active) = isolate_eigenvalues(p.as_ref());
            let mut eig: Vec<faer::c64> =
                isolated.iter().map(|&v| faer::c64::new(v, 0.0)).collect();
            if !active.is_empty() {
                let block = Mat::<f64>::from_fn(active.len(), active.len(), |i, j| {
                    p[(active[i], active[j])]
                });
                match block.eigenvalues() {
                    Ok(e) => eig.extend(e),
                    Err(_) => {
                        return Ok(TraceSqrt { trace: f64::NAN, max_imag: 0.0, singular: true })
                    }
                }
            }
            let mut trace = 0.0;
            let mut max_imag: f64 = 0.0;
            let mut finite = true;
            for l in &eig {
                finite &= l.re.is_finite() && l.im.is_finite();
                let r = l.sqrt();
                trace += r.re;
                max_imag = max_imag.max(r.im.abs());
            }
            Ok(TraceSqrt { trace, max_imag, singular: !finite })
        }
        SqrtmMethod::Symmetric => {
            let e1 = s1.self_adjoint_eigen(faer::Side::Lower).map_err(|_| {
                crate::Error::msg("sqrtm: eigen-decomposition of sigma did not converge")
            })?;
            let u = e1.U();
            let s = e1.S();
            // sqrt(S1) = U diag(sqrt(max(s, 0))) Uᵀ
            let us = Mat::<f64>::from_fn(n, n, |i, j| u[(i, j)] * s[j].max(0.0).sqrt());
            let mut r1 = Mat::<f64>::zeros(n, n);
            faer::linalg::matmul::matmul(
                r1.as_mut(),
                Accum::Replace,
                us.as_ref(),
                u.transpose(),
                1.0,
                parallelism(),
            );
            let mut t = Mat::<f64>::zeros(n, n);
            faer::linalg::matmul::matmul(
                t.as_mut(),
                Accum::Replace,
                r1.as_ref(),
                s2,
                1.0,
                parallelism(),
            );
            let mut m = Mat::<f64>::zeros(n, n);
            faer::linalg::matmul::matmul(
                m.as_mut(),
                Accum::Replace,
                t.as_ref(),
                r1.as_ref(),
                1.0,
                parallelism(),
            );
            let ev = m
                .self_adjoint_eigenvalues(faer::Side::Lower)
                .map_err(|_| crate::Error::msg("sqrtm: eigen-decomposition did not converge"))?;
            let trace = ev.iter().map(|l| l.max(0.0).sqrt()).sum();
            let max_imag = ev.iter().map(|l| (-l).max(0.0).sqrt()).fold(0.0, f64::max);
            Ok(TraceSqrt { trace, max_imag, singular: false })
        }
    }
}

/// The reference's Fréchet distance with its `eps` fallback and imaginary-part check.
pub fn frechet_distance(
    a: &FidStatistics,
    b: &FidStatistics,
    method: SqrtmMethod,
) -> Result<FrechetOutcome> {
    if a.dim() != b.dim() {
        bail!(
            "Fréchet distance: mean vectors have different lengths ({} and {}); were the two batches \
             evaluated with the same feature extractor?",
            a.dim(),
            b.dim()
        );
    }
    let n = a.dim();
    let diff2: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y) * (x - y)).sum();
    let tr1: f64 = (0..n).map(|i| a.sigma[i * n + i]).sum();
    let tr2: f64 = (0..n).map(|i| b.sigma[i * n + i]).sum();
    let mut ts = trace_sqrt_product(a.sigma_ref(), b.sigma_ref(), method)?;
    let mut eps_fallback = false;
    if ts.singular {
        eprintln!(
            "warning: fid calculation produces singular product; adding {FID_EPS:e} to diagonal of cov estimates"
        );
        eps_fallback = true;
        let add_eps = |s: MatRef<'_, f64>| {
            Mat::<f64>::from_fn(n, n, |i, j| s[(i, j)] + if i == j { FID_EPS } else { 0.0 })
        };
        let s1 = add_eps(a.sigma_ref());
        let s2 = add_eps(b.sigma_ref());
        ts = trace_sqrt_product(s1.as_ref(), s2.as_ref(), method)?;
    }
    if ts.max_imag > IMAG_ATOL {
        bail!(
            "Fréchet distance: Imaginary component {} (sqrtm of the covariance product)",
            ts.max_imag
        );
    }
    Ok(FrechetOutcome {
        distance: diff2 + tr1 + tr2 - 2.0 * ts.trace,
        eps_fallback,
        max_imag: ts.max_imag,
    })
}
