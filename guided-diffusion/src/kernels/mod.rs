//! Fast CPU kernels behind candle custom ops, used by the model layers when enabled.
//!
//! candle's CPU convolution is a tiled im2col + gemm in the forward pass, but its backward
//! goes through `conv_transpose2d`, a slow direct loop, and a weight gradient computed as a
//! convolution with an `H x W` kernel. The ops here keep the forward as im2col + gemm (with
//! reused, cache-sized tiles and the bias fused in) and give the backward the same shape:
//! input gradient as a convolution with the flipped weight (stride 1) or gemm + col2im, weight
//! gradient as a gemm of the output gradient with im2col(x).
//!
//! - [`switch`]: whether the fast path is on (`GD_KERNELS=candle` turns it off, read once;
//!   [`set_enabled`] overrides at run time).
//! - [`conv2d`](mod@conv2d): the public entry point and the custom ops.
//! - `im2col`, `sgemm`, `scratch`: the pieces those ops are built from.
mod conv_cpu;
mod im2col;
mod scratch;
mod sgemm;

pub mod conv2d;
pub mod switch;

pub use conv2d::{conv2d, conv2d_input_grad, conv2d_weight_grad, ConvParams};
pub use conv_cpu::set_tile_bytes;
pub use switch::{enabled, set_enabled};
