//! PIL-exact resampling of 8-bit images, and the reference's `center_crop_arr` and
//! `random_crop_arr` built on it.
//!
//! Why our own code instead of `image::imageops::resize`: the `image` crate's `CatmullRom`
//! filter is the same cubic kernel as PIL's BICUBIC (a = -0.5) and its `Triangle`/`Nearest` are
//! close relatives, but it keeps the intermediate (after the horizontal pass) in f32 and rounds
//! once at the end, has no BOX filter with PIL's half-open support, and places the kernel
//! differently at the borders. That gives ±1..3 level differences against PIL, i.e. different
//! training pixels from the reference. This module follows Pillow's algorithm (`Resample.c`):
//! - per output pixel, the kernel is centred at `(x + 0.5) * scale`, its support widened by the
//!   downscale factor (antialiasing), taps clipped to the image and the weights normalised to 1;
//! - weights become fixed-point integers with 22 fractional bits, rounded away from zero;
//! - a horizontal pass (skipped if the width is unchanged) writes an 8-bit intermediate, then a
//!   vertical pass (skipped if the height is unchanged); each sum starts at one half and is
//!   floored and clamped to 0..=255.
//!
//! Pillow 13 (2026, python-pillow/Pillow#9549) runs the vertical pass first when the height
//! shrinks much more than the width, which moves some pixels by a level or two on tall images.
//! We keep the order of every Pillow before it (horizontal, then vertical), the one the reference
//! was written and trained with.
//!
//! The test `data_resize` compares against a fixture computed by Pillow itself
//! (`tools/make_resize_fixture.py`), on cases where all Pillow versions agree.
use rand::Rng;

use crate::{bail, Result};

/// An 8-bit image, rows top to bottom, channels interleaved (RGB: 3, gray: 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawImage {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl RawImage {
    pub fn new(width: usize, height: usize, channels: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != width * height * channels {
            bail!(
                "image buffer of {} bytes does not match {width}x{height}x{channels}",
                data.len()
            );
        }
        Ok(Self { width, height, channels, data })
    }

    /// The `size x size` window whose top-left corner is `(x0, y0)`.
    pub fn crop(&self, x0: usize, y0: usize, w: usize, h: usize) -> Result<Self> {
        if x0 + w > self.width || y0 + h > self.height {
            bail!("crop {w}x{h}+{x0}+{y0} outside a {}x{} image", self.width, self.height);
        }
        let c = self.channels;
        let mut data = Vec::with_capacity(w * h * c);
        for y in y0..y0 + h {
            let row = (y * self.width + x0) * c;
            data.extend_from_slice(&self.data[row..row + w * c]);
        }
        Ok(Self { width: w, height: h, channels: c, data })
    }

    /// Mirror left-right (the reference's `arr[:, ::-1]`).
    pub fn flip_horizontal(&mut self) {
        let c = self.channels;
        for y in 0..self.height {
            let row = &mut self.data[y * self.width * c..(y + 1) * self.width * c];
            for x in 0..self.width / 2 {
                for ch in 0..c {
                    row.swap(x * c + ch, (self.width - 1 - x) * c + ch);
                }
            }
        }
    }

    /// CHW float32 in [-1, 1]: `v / 127.5 - 1` as the reference.
    pub fn to_chw_f32(&self) -> Vec<f32> {
        let (w, h, c) = (self.width, self.height, self.channels);
        let mut out = vec![0f32; w * h * c];
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    let v = self.data[(y * w + x) * c + ch] as f32;
                    out[ch * h * w + y * w + x] = v / 127.5 - 1.0;
                }
            }
        }
        out
    }
}

/// PIL's resampling filters used by the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Box,
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bicubic => 2.0,
        }
    }
    fn eval(self, x: f64) -> f64 {
        match self {
            // Half-open on the left, as Pillow.
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output position: first input tap, tap count, fixed-point weights.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i64>,
}

fn precompute(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i64; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(n) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let f = w * (1u64 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if w < 0.0 { (f - 0.5) as i64 } else { (f + 0.5) as i64 };
        }
        bounds.push((xmin, n));
    }
    Coeffs { ksize, bounds, weights }
}

#[inline]
fn clip8(ss: i64) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `pil_image.resize((width, height), resample=filter)` for an 8-bit image.
pub fn resize(img: &RawImage, width: usize, height: usize, filter: Filter) -> Result<RawImage> {
    if width == 0 || height == 0 || img.width == 0 || img.height == 0 {
        bail!("cannot resize a {}x{} image to {width}x{height}", img.width, img.height);
    }
    let c = img.channels;
    let half = 1i64 << (PRECISION_BITS - 1);
    let mut cur = img.clone();
    if width != cur.width {
        let co = precompute(cur.width, width, filter);
        let mut out = vec![0u8; width * cur.height * c];
        for y in 0..cur.height {
            let row = &cur.data[y * cur.width * c..(y + 1) * cur.width * c];
            for (xx, &(xmin, n)) in co.bounds.iter().enumerate() {
                let k = &co.weights[xx * co.ksize..xx * co.ksize + n];
                for ch in 0..c {
                    let mut ss = half;
                    for (x, &kx) in k.iter().enumerate() {
                        ss += row[(xmin + x) * c + ch] as i64 * kx;
                    }
                    out[(y * width + xx) * c + ch] = clip8(ss);
                }
            }
        }
        cur = RawImage { width, height: cur.height, channels: c, data: out };
    }
    if height != cur.height {
        let co = precompute(cur.height, height, filter);
        let w = cur.width;
        let mut out = vec![0u8; w * height * c];
        for (yy, &(ymin, n)) in co.bounds.iter().enumerate() {
            let k = &co.weights[yy * co.ksize..yy * co.ksize + n];
            for i in 0..w * c {
                let mut ss = half;
                for (y, &ky) in k.iter().enumerate() {
                    ss += cur.data[(ymin + y) * w * c + i] as i64 * ky;
                }
                out[yy * w * c + i] = clip8(ss);
            }
        }
        cur = RawImage { width: w, height, channels: c, data: out };
    }
    Ok(cur)
}

/// Python's `round()` on a float: round half to even.
pub fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// Halve (BOX) while the short side is at least `2 * short_side`, then BICUBIC so the short side
/// equals `short_side` (other side `round(x * scale)`, Python rounding).
pub fn resize_short_side(img: &RawImage, short_side: usize) -> Result<RawImage> {
    if short_side == 0 {
        bail!("target size must be positive");
    }
    let mut cur = img.clone();
    while cur.width.min(cur.height) >= 2 * short_side {
        cur = resize(&cur, cur.width / 2, cur.height / 2, Filter::Box)?;
    }
    let scale = short_side as f64 / cur.width.min(cur.height) as f64;
    let w = round_half_even(cur.width as f64 * scale) as usize;
    let h = round_half_even(cur.height as f64 * scale) as usize;
    if (w, h) == (cur.width, cur.height) {
        return Ok(cur);
    }
    resize(&cur, w, h, Filter::Bicubic)
}

/// The reference's `center_crop_arr`: resize so the short side is `size`, then take the
/// centre `size x size` window (offset `(dim - size) / 2`, rounded down).
pub fn center_crop_arr(img: &RawImage, size: usize) -> Result<RawImage> {
    let r = resize_short_side(img, size)?;
    let y0 = (r.height - size) / 2;
    let x0 = (r.width - size) / 2;
    r.crop(x0, y0, size, size)
}

/// The reference's `random_crop_arr`: short side drawn uniformly from
/// `ceil(size / max_crop_frac) ..= ceil(size / min_crop_frac)`, then a uniformly placed window.
pub fn random_crop_arr<R: Rng + ?Sized>(
    img: &RawImage,
    size: usize,
    min_crop_frac: f64,
    max_crop_frac: f64,
    rng: &mut R,
) -> Result<RawImage> {
    if !(min_crop_frac > 0.0 && min_crop_frac <= max_crop_frac && max_crop_frac <= 1.0) {
        bail!("random crop fractions must satisfy 0 < min ({min_crop_frac}) <= max ({max_crop_frac}) <= 1");
    }
    let lo = (size as f64 / max_crop_frac).ceil() as usize;
    let hi = (size as f64 / min_crop_frac).ceil() as usize;
    let smaller = rng.gen_range(lo..=hi);
    let r = resize_short_side(img, smaller)?;
    let y0 = rng.gen_range(0..=r.height - size);
    let x0 = rng.gen_range(0..=r.width - size);
    r.crop(x0, y0, size, size)
}

/// The reference's defaults for `random_crop_arr`.
pub const MIN_CROP_FRAC: f64 = 0.8;
pub const MAX_CROP_FRAC: f64 = 1.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(0.5), 0.0);
        assert_eq!(round_half_even(1.5), 2.0);
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(96.0), 96.0);
        assert_eq!(round_half_even(96.4999), 96.0);
        assert_eq!(round_half_even(96.5001), 97.0);
    }

    #[test]
    fn identity_and_constant() {
        let img = RawImage::new(5, 3, 1, (0..15).map(|v| v as u8 * 10).collect()).unwrap();
        assert_eq!(resize(&img, 5, 3, Filter::Bicubic).unwrap(), img);
        let flat = RawImage::new(7, 9, 3, vec![77; 7 * 9 * 3]).unwrap();
        let r = resize(&flat, 4, 5, Filter::Bicubic).unwrap();
        assert!(r.data.iter().all(|&v| v == 77));
    }
}
