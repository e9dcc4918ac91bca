//! The kernel tests, in one binary: every test passes the [`KernelPolicy`] it wants (fast
//! kernels, Winograd, AMX, precision) with its calls, so they run side by side on the test
//! harness's threads; no setting is process-wide.
//!
//! - `conv2d`: the fast convolution against candle and a direct definition (incl. Winograd);
//! - `bf16`: bf16 policies (convolutions, stride-1 input gradients, attention), AMX and not;
//! - `forms`: the derived weight forms a frozen layer keeps;
//! - `group_norm`, `misc`: the fused GroupNorm, channel sums, upsampling, softmax, attention;
//! - `policy`: the policy itself: fast kernels off is candle, layers agree on and off, two
//!   networks with different policies on two threads at once.
#[path = "../support/mod.rs"]
mod support;

mod bf16;
mod conv2d;
mod forms;
mod group_norm;
mod misc;
mod policy;

use guided_diffusion::kernels::{KernelPolicy, Precision};

/// The fast kernels in f32, Winograd and AMX where they apply (the default policy).
pub const FAST: KernelPolicy = KernelPolicy {
    fast: true,
    winograd: true,
    amx: true,
    avx512_bf16: true,
    precision: Precision::F32,
};
