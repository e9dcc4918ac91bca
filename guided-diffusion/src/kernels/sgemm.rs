//! A thin, typed wrapper over the `gemm` crate (the matrix product candle itself uses) for
//! strided f32 matrix views: runtime-dispatched AVX2/FMA (or AVX-512) micro-kernels with their
//! own packing, optionally threaded with rayon.

/// A read-only strided matrix view: element `(i, j)` lives at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub struct MatRef {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// A writable strided matrix view, same addressing as [`MatRef`].
#[derive(Clone, Copy)]
pub struct MatMut {
    pub ptr: *mut f32,
    pub rs: isize,
    pub cs: isize,
}

// The views are plain addresses; the callers guarantee disjoint writes across threads.
unsafe impl Send for MatRef {}
unsafe impl Sync for MatRef {}
unsafe impl Send for MatMut {}
unsafe impl Sync for MatMut {}

impl MatRef {
    /// A row-major `[rows, cols]` matrix starting at `ptr` with leading dimension `ld`.
    pub fn rows(ptr: *const f32, ld: usize) -> Self {
        MatRef { ptr, rs: ld as isize, cs: 1 }
    }
    /// The transpose of a row-major matrix with leading dimension `ld`.
    pub fn rows_t(ptr: *const f32, ld: usize) -> Self {
        MatRef { ptr, rs: 1, cs: ld as isize }
    }
}

impl MatMut {
    /// A row-major matrix starting at `ptr` with leading dimension `ld`.
    pub fn rows(ptr: *mut f32, ld: usize) -> Self {
        MatMut { ptr, rs: ld as isize, cs: 1 }
    }
}

/// `dst[m, n] = (accumulate ? dst : 0) + lhs[m, k] * rhs[k, n]`, on `threads` threads.
///
/// # Safety
/// Every view must address valid memory for its `m x k`, `k x n`, `m x n` extent, and `dst`
/// must not alias `lhs` or `rhs` nor be written concurrently by someone else.
#[allow(clippy::too_many_arguments)]
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
    sgemm_scaled(m, n, k, dst, accumulate, lhs, rhs, 1.0, threads)
}

/// [`sgemm`] with the product scaled: `dst = (accumulate ? dst : 0) + scale * lhs * rhs`.
///
/// # Safety
/// As [`sgemm`].
#[allow(clippy::too_many_arguments)]
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
                    *dst.ptr.offset(i as isize * dst.rs + j as isize * dst.cs) = 0.0;
                }
            }
        }
        return;
    }
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    gemm::gemm(
        m, n, k, dst.ptr, dst.cs, dst.rs, accumulate, lhs.ptr, lhs.cs, lhs.rs, rhs.ptr, rhs.cs,
        rhs.rs, 1.0f32, scale, false, false, false, par,
    );
}
