//! From uint8-scale NHWC images to the network input: bilinear resize to 299×299 and scaling to
//! about [-1, 1], in one of two conventions:
//! - [`InputConvention::TfReference`] (default) is what the reference's TensorFlow graph does
//!   between its `ExpandDims` input and the first convolution: `ResizeBilinear` with
//!   `align_corners=False` in TensorFlow's legacy convention (source coordinate `dst·in/out`, no
//!   half-pixel offset), then `Sub 128`, `Mul 1/128`.
//! - [`InputConvention::PytorchFid`] is pytorch-fid's: `x/255`, `F.interpolate(bilinear,
//!   align_corners=False)` (half-pixel centres, source clamped at 0), then `2x - 1`.
//!
//! The two differ slightly (resampling grid, 127.5 vs 128); FID numbers meant to be compared with
//! the paper's should use the first. A bilinear resize is separable, so it is applied as two
//! matrix products with precomputed `out × in` interpolation matrices, which runs on any candle
//! device.
use crate::eval::features::ImageBatch;
use crate::{bail, Result};
use candle_core::{Device, Tensor};

/// Input size of Inception-v3.
pub const INCEPTION_SIZE: usize = 299;

/// Resampling and scaling convention; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputConvention {
    #[default]
    TfReference,
    PytorchFid,
}

/// Row-major `out × in` matrix whose product with a signal of length `in` resizes it bilinearly.
pub fn resize_matrix(in_size: usize, out_size: usize, conv: InputConvention) -> Vec<f32> {
    let mut m = vec![0f32; out_size * in_size];
    let scale = in_size as f64 / out_size as f64;
    for o in 0..out_size {
        let src = match conv {
            // TensorFlow computes the scale and the coordinate in f32.
            InputConvention::TfReference => (o as f32 * (in_size as f32 / out_size as f32)) as f64,
            InputConvention::PytorchFid => (scale * (o as f64 + 0.5) - 0.5).max(0.0),
        };
        let lo = (src.floor() as usize).min(in_size - 1);
        let hi = (lo + 1).min(in_size - 1);
        let frac = (src - lo as f64) as f32;
        m[o * in_size + lo] += 1.0 - frac;
        m[o * in_size + hi] += frac;
    }
    m
}

/// Resizes NCHW `x` to `out_h × out_w`.
pub fn resize_bilinear(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    conv: InputConvention,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let dev = x.device();
    let mut y = x.clone();
    if w != out_w {
        let rw = Tensor::from_vec(resize_matrix(w, out_w, conv), (out_w, w), dev)?;
        y = y.broadcast_matmul(&rw.t()?)?; // [.., h, out_w]
    }
    if h != out_h {
        let rh = Tensor::from_vec(resize_matrix(h, out_h, conv), (out_h, h), dev)?;
        y = rh.broadcast_matmul(&y)?; // [.., out_h, out_w]
    }
    Ok(y)
}

/// Images (values in [0, 255]) to the `[n, 3, 299, 299]` network input on `device`. Grayscale
/// images (one channel) are repeated to three channels.
pub fn preprocess(images: &ImageBatch, conv: InputConvention, device: &Device) -> Result<Tensor> {
    let (n, h, w, c) = (images.n, images.height, images.width, images.channels);
    if c != 3 && c != 1 {
        bail!("Inception expects RGB (3-channel) or grayscale images, got {c} channels");
    }
    let x = Tensor::from_slice(&images.data, (n, h, w, c), device)?
        .permute((0, 3, 1, 2))?
        .contiguous()?;
    let x = if c == 1 { x.repeat((1, 3, 1, 1))? } else { x };
    Ok(match conv {
        InputConvention::TfReference => {
            let y = resize_bilinear(&x, INCEPTION_SIZE, INCEPTION_SIZE, conv)?;
            ((y - 128.0)? * (1.0 / 128.0))?
        }
        InputConvention::PytorchFid => {
            let y = resize_bilinear(&(x / 255.0)?, INCEPTION_SIZE, INCEPTION_SIZE, conv)?;
            ((y * 2.0)? - 1.0)?
        }
    })
}
