//! A thin, typed wrapper over the `gemm` crate (the matrix product candle itself uses) for
//! strided f32 matrix views: runtime-dispatched AVX2/FMA (or AVX-512) micro-kernels with their
//! own packing, optionally threaded with rayon.
use super::disjoint::Disjoint;

/// A read-only strided matrix view: element `(i, j)` lives at `ptr + i * rs + j * cs`. Made
/// from a slice whose first value is element `(0, 0)`; how far the view reaches is the
/// product's (`m x k`, `k x n`), which its `unsafe` caller vouches for.
#[derive(Clone, Copy)]
pub struct MatRef {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

/// A writable strided matrix view, same addressing as [`MatRef`].
#[derive(Clone, Copy)]
pub struct MatMut {
    ptr: *mut f32,
    rs: isize,
    cs: isize,
}

impl MatRef {
    /// A row-major matrix starting at `s[0]` with leading dimension `ld`.
    pub fn rows(s: &[f32], ld: usize) -> Self {
        MatRef { ptr: s.as_ptr(), rs: ld as isize, cs: 1 }
    }
    /// The transpose of a row-major matrix starting at `s[0]` with leading dimension `ld`.
    pub fn rows_t(s: &[f32], ld: usize) -> Self {
        MatRef { ptr: s.as_ptr(), rs: 1, cs: ld as isize }
    }
}

impl MatMut {
    /// A row-major matrix starting at `s[0]` with leading dimension `ld`.
    pub fn rows(s: &mut [f32], ld: usize) -> Self {
        MatMut { ptr: s.as_mut_ptr(), rs: ld as isize, cs: 1 }
    }

    /// A row-major matrix starting `off` floats into a buffer shared by parallel tasks, with
    /// leading dimension `ld` (which part a product writes is its caller's argument).
    pub fn rows_in(buf: Disjoint, off: usize, ld: usize) -> Self {
        MatMut { ptr: buf.ptr(off), rs: ld as isize, cs: 1 }
    }

    /// A row-major matrix at `ptr` with leading dimension `ld`.
    ///
    /// # Safety
    /// `ptr` must be valid for the writes of the products the view is used in, as
    /// [`sgemm`] asks of its `dst`.
    pub unsafe fn from_raw(ptr: *mut f32, ld: usize) -> Self {
        MatMut { ptr, rs: ld as isize, cs: 1 }
    }
}

/// `dst[m, n] = (accumulate ? dst : 0) + lhs[m, k] * rhs[k, n]`, on `threads` threads.
///
/// # Safety
/// Every view must address valid memory for its `m x k`, `k x n`, `m x n` extent, and `dst`
/// must not alias `lhs` or `rhs` nor be written concurrently by someone else.
pub unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    accumulate: bool,
    lhs: MatRef,
    rhs: MatRef,
    threads: usize,
) {
    // SAFETY: this function's contract, which is sgemm_scaled's.
    unsafe { sgemm_scaled(m, n, k, dst, accumulate, lhs, rhs, 1.0, threads) }
}

/// [`sgemm`] with the product scaled: `dst = (accumulate ? dst : 0) + scale * lhs * rhs`.
///
/// # Safety
/// As [`sgemm`].
pub unsafe fn sgemm_scaled(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    accumulate: bool,
    lhs: MatRef,
    rhs: MatRef,
    scale: f32,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: (i, j) is inside dst's m x n extent, valid and ours (the contract).
                    unsafe { *dst.ptr.offset(i as isize * dst.rs + j as isize * dst.cs) = 0.0 };
                }
            }
        }
        return;
    }
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the views address valid memory for their extents, and dst aliases neither input
    // nor is written by anyone else (this function's contract, which is gemm's).
    unsafe {
        gemm::gemm(
            m, n, k, dst.ptr, dst.cs, dst.rs, accumulate, lhs.ptr, lhs.cs, lhs.rs, rhs.ptr, rhs.cs,
            rhs.rs, 1.0f32, scale, false, false, false, par,
        )
    };
}
