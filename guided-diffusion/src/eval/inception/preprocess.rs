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
//! the paper's should use the first.
//!
//! A bilinear resize is separable and every output is a blend of two inputs per axis, so it runs
//! directly on the pixels: [`Axis`] holds, for each output coordinate, its two source indices
//! and weights; each plane is resized along its rows into a small `h × 299` buffer, then along
//! its columns (a blend of two buffer rows, which vectorises), with the layout change (NHWC in,
//! NCHW out), the grayscale expansion and the scaling fused in. Planes run in parallel. On the
//! CPU that is about 4 multiply-adds per output value instead of the `in`-long dot products of
//! a resize by matrix products; on other devices the planes are made on the CPU and copied.
use crate::eval::features::ImageBatch;
use crate::{bail, Result};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

/// Input size of Inception-v3.
pub const INCEPTION_SIZE: usize = 299;

/// Resampling and scaling convention; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputConvention {
    #[default]
    TfReference,
    PytorchFid,
}

/// The two source indices and weights of every output coordinate along one axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub lo: Vec<usize>,
    pub hi: Vec<usize>,
    pub w_lo: Vec<f32>,
    pub w_hi: Vec<f32>,
}

impl Axis {
    /// Bilinear sampling of `in_size` samples at `out_size` points, in convention `conv`.
    pub fn new(in_size: usize, out_size: usize, conv: InputConvention) -> Self {
        assert!(in_size > 0, "bilinear resize of an empty axis");
        let scale = in_size as f64 / out_size as f64;
        let mut a = Axis {
            lo: Vec::with_capacity(out_size),
            hi: Vec::with_capacity(out_size),
            w_lo: Vec::with_capacity(out_size),
            w_hi: Vec::with_capacity(out_size),
        };
        for o in 0..out_size {
            let src = match conv {
                // TensorFlow computes the scale and the coordinate in f32.
                InputConvention::TfReference => {
                    (o as f32 * (in_size as f32 / out_size as f32)) as f64
                }
                InputConvention::PytorchFid => (scale * (o as f64 + 0.5) - 0.5).max(0.0),
            };
            let lo = (src.floor() as usize).min(in_size - 1);
            let hi = (lo + 1).min(in_size - 1);
            let frac = (src - lo as f64) as f32;
            a.lo.push(lo);
            a.hi.push(hi);
            a.w_lo.push(1.0 - frac);
            a.w_hi.push(frac);
        }
        a
    }

    pub fn len(&self) -> usize {
        self.lo.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lo.is_empty()
    }
}

/// Row-major `out × in` matrix whose product with a signal of length `in` resizes it bilinearly
/// (the same weights as [`Axis`], as a matrix).
pub fn resize_matrix(in_size: usize, out_size: usize, conv: InputConvention) -> Vec<f32> {
    let a = Axis::new(in_size, out_size, conv);
    let mut m = vec![0f32; out_size * in_size];
    for o in 0..out_size {
        m[o * in_size + a.lo[o]] += a.w_lo[o];
        m[o * in_size + a.hi[o]] += a.w_hi[o];
    }
    m
}

/// Resizes one plane: `src(y, x)` reads input pixel `(y, x)` of an `h`-row plane; `out`
/// (`ay.len() × ax.len()`) receives `post(value)`; `rows` is scratch of `h × ax.len()`.
fn resize_plane(
    h: usize,
    src: impl Fn(usize, usize) -> f32,
    ax: &Axis,
    ay: &Axis,
    rows: &mut [f32],
    out: &mut [f32],
    post: impl Fn(f32) -> f32,
) {
    let ow = ax.len();
    for (y, row) in rows.chunks_exact_mut(ow).enumerate().take(h) {
        for (o, r) in row.iter_mut().enumerate() {
            *r = ax.w_lo[o] * src(y, ax.lo[o]) + ax.w_hi[o] * src(y, ax.hi[o]);
        }
    }
    for (o, dst) in out.chunks_exact_mut(ow).enumerate() {
        let (wl, wh) = (ay.w_lo[o], ay.w_hi[o]);
        let lo = &rows[ay.lo[o] * ow..(ay.lo[o] + 1) * ow];
        let hi = &rows[ay.hi[o] * ow..(ay.hi[o] + 1) * ow];
        for ((d, &a), &b) in dst.iter_mut().zip(lo).zip(hi) {
            *d = post(wl * a + wh * b);
        }
    }
}

/// Resizes NCHW `x` to `out_h × out_w` (any float dtype; the result is f32 on `x`'s device).
pub fn resize_bilinear(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    conv: InputConvention,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if h == 0 || w == 0 {
        bail!("bilinear resize of an empty image ({h}x{w})");
    }
    let data = x.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let (ax, ay) = (Axis::new(w, out_w, conv), Axis::new(h, out_h, conv));
    let mut out = vec![0f32; n * c * out_h * out_w];
    out.par_chunks_mut((out_h * out_w).max(1)).enumerate().for_each(|(p, dst)| {
        let plane = &data[p * h * w..(p + 1) * h * w];
        let mut rows = vec![0f32; h * out_w];
        resize_plane(h, |y, xx| plane[y * w + xx], &ax, &ay, &mut rows, dst, |v| v);
    });
    Ok(Tensor::from_vec(out, (n, c, out_h, out_w), x.device())?)
}

/// Images (values in [0, 255]) to the `[n, 3, 299, 299]` network input on `device`. Grayscale
/// images (one channel) are repeated to three channels.
pub fn preprocess(images: &ImageBatch, conv: InputConvention, device: &Device) -> Result<Tensor> {
    let (n, h, w, c) = (images.n, images.height, images.width, images.channels);
    if c != 3 && c != 1 {
        bail!("Inception expects RGB (3-channel) or grayscale images, got {c} channels");
    }
    if h == 0 || w == 0 {
        bail!("Inception needs non-empty images, got {h}x{w}");
    }
    let s = INCEPTION_SIZE;
    let (ax, ay) = (Axis::new(w, s, conv), Axis::new(h, s, conv));
    let mut out = vec![0f32; n * 3 * s * s];
    out.par_chunks_mut(s * s).enumerate().for_each(|(p, dst)| {
        let (img, ch) = (p / 3, if c == 1 { 0 } else { p % 3 });
        let pix = &images.data[img * h * w * c..(img + 1) * h * w * c];
        let mut rows = vec![0f32; h * s];
        match conv {
            // ResizeBilinear, then (y - 128) * (1/128)
            InputConvention::TfReference => {
                let src = |y: usize, x: usize| pix[(y * w + x) * c + ch];
                resize_plane(h, src, &ax, &ay, &mut rows, dst, |v| (v - 128.0) * (1.0 / 128.0))
            }
            // x / 255, interpolate, then 2y - 1
            InputConvention::PytorchFid => {
                let src = |y: usize, x: usize| pix[(y * w + x) * c + ch] / 255.0;
                resize_plane(h, src, &ax, &ay, &mut rows, dst, |v| v * 2.0 - 1.0)
            }
        }
    });
    Ok(Tensor::from_vec(out, (n, 3, s, s), device)?)
}
