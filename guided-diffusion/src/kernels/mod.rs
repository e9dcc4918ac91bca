//! Fast CPU kernels behind candle custom ops, used by the model layers when enabled.
//!
//! candle's CPU convolution is a tiled im2col + gemm in the forward pass, but its backward
//! goes through `conv_transpose2d`, a slow direct loop, and a weight gradient computed as a
//! convolution with an `H x W` kernel. The ops here keep the forward as im2col + gemm (with
//! reused, cache-sized tiles and the bias fused in) and give the backward the same shape:
//! input gradient as a convolution with the flipped weight (stride 1) or gemm + col2im, weight
//! gradient as a gemm of the output gradient with im2col(x).
//!
//! - [`policy`]: how to compute, a [`KernelPolicy`] value (fast kernels on or off, Winograd,
//!   AMX, precision) that every entry point takes: held by a network or passed with the call,
//!   never process-wide.
//! - [`conv2d`](mod@conv2d): convolution, the public entry point and the custom ops.
//! - [`bf16`](mod@bf16): the bf16 products of a [`Precision::Bf16`] policy: convolutions and
//!   attention products with bf16 inputs and weights and f32 sums, on Intel AMX ([`amx`]) or
//!   AVX512_BF16 ([`dpbf16`]), whichever the CPU has (AMX first).
//! - [`forms`]: derived forms of convolution weights (Winograd transforms, flipped and packed
//!   weights), kept by the layer that owns the weight while its network is frozen.
//! - [`group_norm`](mod@group_norm): GroupNorm fused with its affine, AdaGN scale/shift and
//!   SiLU, forward and backward in one op each.
//! - [`malloc`]: glibc malloc settings that keep freed tensor memory for reuse (opt-in, for
//!   programs).
//! - [`pools`]: how long candle-core's own worker threads spin beside rayon's (opt-in, for
//!   programs).
//! - [`reduce`]: per-channel sums (bias gradients).
//! - [`softmax`]: softmax over the last axis, forward and backward one pass each.
//! - [`attention`]: QKV attention with strided gemms and an in-place softmax, forward and
//!   backward (`models::attention` calls it when the fast kernels apply).
//! - [`update`]: AdamW, EMA and sums of squares as in-place one-pass updates.
//! - [`upsample`]: nearest 2x upsampling with a correct (accumulating) backward.
//! - `winograd`, `winograd_wgrad`: the 3x3 stride-1 convolutions as Winograd F(4x4, 3x3),
//!   forward and weight gradient, used by `conv_cpu`; `winograd_tiles`: their tiles in and out
//!   of image planes.
//! - `conv_bf16`: the bf16 convolution forward (and the weight gradient on AMX).
//! - `conv_cpu`, `group_norm_cpu`, `im2col`, `sgemm`, `vmath`, `scratch`: the slice-level
//!   algorithms and the pieces they are built from; `conv_plan`: a convolution's geometry and
//!   its tiling, which the convolution algorithms share.
//! - `disjoint`: the one handle through which parallel tasks write disjoint parts of a buffer,
//!   with its safety argument; `storage`: the one unpacking of a custom op's f32 arguments.
// Every `unsafe` block says why it is sound, and an `unsafe fn`'s body marks its own unsafe
// operations: the kernels are where this crate's raw pointers live.
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

mod conv_bf16;
mod conv_cpu;
mod conv_plan;
mod disjoint;
mod group_norm_cpu;
mod im2col;
mod scratch;
mod sgemm;
mod storage;
mod vmath;
mod winograd;
mod winograd_tiles;
mod winograd_wgrad;

pub mod amx;
pub mod attention;
pub mod bf16;
pub mod conv2d;
pub mod dpbf16;
pub mod forms;
pub mod group_norm;
pub mod malloc;
pub mod policy;
pub mod pools;
pub mod reduce;
pub mod softmax;
pub mod update;
pub mod upsample;

pub use attention::qkv_attention;
pub use bf16::Unit as Bf16Unit;
pub use conv2d::{conv2d, conv2d_input_grad, conv2d_weight_grad, ConvParams};
pub use forms::WeightForms;
pub use group_norm::group_norm;
pub use policy::{KernelPolicy, Precision};
pub use reduce::channel_sum;
pub use softmax::softmax_last;
pub use upsample::{sum_pool2x, upsample_nearest2x};

/// The process-wide settings a program makes first thing in `main`, before any thread starts
/// (the library never makes them on its own): glibc's malloc keeps freed tensor memory
/// ([`malloc`], unless `GD_MALLOC=default`), and candle-core's idle workers spin only briefly
/// beside rayon's ([`pools`], unless `CANDLE_BARRIER_POOL_SPIN_LIMIT` is set). `lookup` reads the
/// program's environment, as for [`KernelPolicy::from_vars`].
pub fn tune_process(lookup: impl Fn(&str) -> Option<String>) {
    if !malloc::keep_default(lookup("GD_MALLOC").as_deref()) {
        malloc::tune();
    }
    pools::tune(lookup(pools::SPIN_LIMIT_VAR).as_deref());
}
