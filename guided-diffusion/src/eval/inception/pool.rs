//! The elementwise and pooling steps of the FID Inception network on CPU f32 tensors, as candle
//! custom ops that run every `H × W` plane of the batch in parallel, in one pass each. candle's
//! own pooling runs on one thread and the TensorFlow flavours need extra passes through it
//! (padding copies, a rescaling pass): at batch 64 that cost about a tenth of a forward pass.
//!
//! - [`Pool::MaxS2`]: 3×3 max, stride 2, no padding (`F.max_pool2d(x, 3, 2)`);
//! - [`Pool::MaxS1`]: 3×3 max, stride 1, padding 1 (padded values never win);
//! - [`Pool::AvgS1ExcludePad`]: 3×3 average, stride 1, padding 1, dividing by the number of real
//!   pixels in the window (`count_include_pad=False`, TensorFlow's SAME average pooling);
//! - [`relu_in_place`]: the ReLU after each convolution, written over the convolution's fresh
//!   output instead of into a new tensor.
//!
//! The 3×3 windows are separable: each plane goes through a 3-tap pass along its rows into a
//! scratch plane, then a 3-tap pass down its columns, which combines whole rows and vectorises.
//! Sums therefore add each window row first, then the three row sums (PyTorch adds the nine in
//! row-major order); the difference is rounding, within a few ulps.
//!
//! [`super::layers`] calls these on CPU f32 tensors and keeps candle's ops for other devices.
use candle_core::{CpuStorage, CustomOp1, InplaceOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Which pooling; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    MaxS2,
    MaxS1,
    AvgS1ExcludePad,
}

impl Pool {
    /// Output size of an `h × w` plane (`None` when the plane is smaller than the window).
    fn out_size(self, h: usize, w: usize) -> Option<(usize, usize)> {
        match self {
            Pool::MaxS2 if h >= 3 && w >= 3 => Some(((h - 3) / 2 + 1, (w - 3) / 2 + 1)),
            Pool::MaxS2 => None,
            Pool::MaxS1 | Pool::AvgS1ExcludePad => Some((h, w)),
        }
    }

    /// Applies the pooling to an f32 `[n, c, h, w]` tensor on the CPU.
    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(&PoolOp(self))
    }
}

struct PoolOp(Pool);

/// 3-tap max along one row, stride 1, padding 1 (the window clipped to the row).
fn max3_row(x: &[f32], out: &mut [f32]) {
    let w = x.len();
    if w == 1 {
        out[0] = x[0];
        return;
    }
    out[0] = x[0].max(x[1]);
    for i in 1..w - 1 {
        out[i] = x[i - 1].max(x[i]).max(x[i + 1]);
    }
    out[w - 1] = x[w - 2].max(x[w - 1]);
}

/// 3-tap sum along one row, stride 1, padding 1 (zeros outside the row).
fn sum3_row(x: &[f32], out: &mut [f32]) {
    let w = x.len();
    if w == 1 {
        out[0] = x[0];
        return;
    }
    out[0] = x[0] + x[1];
    for i in 1..w - 1 {
        out[i] = x[i - 1] + x[i] + x[i + 1];
    }
    out[w - 1] = x[w - 2] + x[w - 1];
}

/// Number of real pixels in the 3-tap window centred on `i` of an axis of length `n`.
fn count(i: usize, n: usize) -> f32 {
    (1 + (i > 0) as usize + (i + 1 < n) as usize) as f32
}

/// Pools one `h × w` plane `x` into `out` (`ho × wo`), with `tmp` (`h × wo`) as scratch.
fn pool_plane(p: Pool, x: &[f32], h: usize, w: usize, tmp: &mut [f32], out: &mut [f32]) {
    match p {
        Pool::MaxS2 => {
            let wo = (w - 3) / 2 + 1;
            for (xr, tr) in x.chunks_exact(w).zip(tmp.chunks_exact_mut(wo)) {
                for (o, t) in tr.iter_mut().enumerate() {
                    *t = xr[2 * o].max(xr[2 * o + 1]).max(xr[2 * o + 2]);
                }
            }
            for (oy, orow) in out.chunks_exact_mut(wo).enumerate() {
                let r = |k: usize| &tmp[(2 * oy + k) * wo..(2 * oy + k + 1) * wo];
                for (((o, a), b), c) in orow.iter_mut().zip(r(0)).zip(r(1)).zip(r(2)) {
                    *o = a.max(*b).max(*c);
                }
            }
        }
        Pool::MaxS1 | Pool::AvgS1ExcludePad => {
            let max = p == Pool::MaxS1;
            for (xr, tr) in x.chunks_exact(w).zip(tmp.chunks_exact_mut(w)) {
                if max {
                    max3_row(xr, tr)
                } else {
                    sum3_row(xr, tr)
                }
            }
            let counts: Vec<f32> = (0..w).map(|i| count(i, w)).collect();
            for (oy, orow) in out.chunks_exact_mut(w).enumerate() {
                let (y0, y1) = (oy.saturating_sub(1), (oy + 2).min(h));
                orow.copy_from_slice(&tmp[y0 * w..(y0 + 1) * w]);
                for y in y0 + 1..y1 {
                    let r = &tmp[y * w..(y + 1) * w];
                    if max {
                        orow.iter_mut().zip(r).for_each(|(o, v)| *o = o.max(*v));
                    } else {
                        orow.iter_mut().zip(r).for_each(|(o, v)| *o += *v);
                    }
                }
                if !max {
                    let cy = (y1 - y0) as f32;
                    orow.iter_mut().zip(&counts).for_each(|(o, cx)| *o /= cy * cx);
                }
            }
        }
    }
}

impl CustomOp1 for PoolOp {
    fn name(&self) -> &'static str {
        "inception-pool3x3"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else { candle_core::bail!("{}: expected f32", self.name()) };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("{}: expected a contiguous tensor", self.name())
        };
        let &[n, c, h, w] = l.dims() else {
            candle_core::bail!("{}: expected [n, c, h, w], got {:?}", self.name(), l.dims())
        };
        let Some((ho, wo)) = self.0.out_size(h, w) else {
            candle_core::bail!("{}: a {h}x{w} plane is smaller than the 3x3 window", self.name())
        };
        let x = &v[a..b];
        let mut out = vec![0f32; n * c * ho * wo];
        if ho * wo > 0 {
            out.par_chunks_mut(ho * wo).zip(x.par_chunks(h * w)).for_each_init(
                || vec![0f32; h * w],
                |tmp, (o, plane)| pool_plane(self.0, plane, h, w, tmp, o),
            );
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c, ho, wo))))
    }
}

/// `max(x, 0)` over a CPU f32 tensor's storage, in place.
struct ReluInPlace;

impl InplaceOp1 for ReluInPlace {
    fn name(&self) -> &'static str {
        "inception-relu-in-place"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(v) = s else { candle_core::bail!("{}: expected f32", self.name()) };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("{}: expected a contiguous tensor", self.name())
        };
        // NaN stays NaN, as in PyTorch (`x < 0` is false for it).
        v[a..b]
            .par_chunks_mut(1 << 14)
            .for_each(|c| c.iter_mut().for_each(|x| *x = if *x < 0.0 { 0.0 } else { *x }));
        Ok(())
    }
}

/// ReLU of `y`, a contiguous f32 CPU tensor that nothing else refers to (a convolution's fresh
/// output), computed in its own storage.
pub fn relu_in_place(y: Tensor) -> candle_core::Result<Tensor> {
    y.inplace_op1(&ReluInPlace)?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::Pool;
    use candle_core::{Device, Tensor};

    /// The poolings by their definition: every window element by element, row-major sums.
    fn naive(p: Pool, x: &[f32], h: usize, w: usize) -> Vec<f32> {
        let (stride, pad) = if p == Pool::MaxS2 { (2, 0) } else { (1, 1) };
        let (ho, wo) = p.out_size(h, w).unwrap();
        let mut out = Vec::new();
        for oy in 0..ho {
            for ox in 0..wo {
                let (mut m, mut s, mut n) = (f32::NEG_INFINITY, 0f32, 0);
                for i in 0..3 {
                    for j in 0..3 {
                        let (y, xx) =
                            ((oy * stride + i) as isize - pad, (ox * stride + j) as isize - pad);
                        if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w {
                            let v = x[y as usize * w + xx as usize];
                            m = m.max(v);
                            s += v;
                            n += 1;
                        }
                    }
                }
                out.push(if p == Pool::AvgS1ExcludePad { s / n as f32 } else { m });
            }
        }
        out
    }

    #[test]
    fn poolings_match_their_definition() {
        for (p, sizes) in [
            (Pool::MaxS2, &[(3, 3), (4, 5), (7, 7), (8, 3)][..]),
            (Pool::MaxS1, &[(1, 1), (1, 5), (2, 3), (7, 8)][..]),
            (Pool::AvgS1ExcludePad, &[(1, 1), (5, 1), (2, 3), (7, 8)][..]),
        ] {
            for &(h, w) in sizes {
                let (n, c) = (2, 3);
                let data: Vec<f32> =
                    (0..n * c * h * w).map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.37).collect();
                let x = Tensor::from_slice(&data, (n, c, h, w), &Device::Cpu).unwrap();
                let got = p.apply(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let want: Vec<f32> =
                    data.chunks(h * w).flat_map(|plane| naive(p, plane, h, w)).collect();
                assert_eq!(got.len(), want.len(), "{p:?} {h}x{w}");
                for (g, e) in got.iter().zip(&want) {
                    assert!((g - e).abs() <= 1e-6 * e.abs().max(1.0), "{p:?} {h}x{w}: {g} vs {e}");
                }
            }
        }
        let e = Pool::MaxS2
            .apply(&Tensor::zeros((1, 1, 2, 5), candle_core::DType::F32, &Device::Cpu).unwrap());
        assert!(e.unwrap_err().to_string().contains("smaller than the 3x3 window"));
    }

    #[test]
    fn relu_in_place_keeps_nan() {
        let x = Tensor::new(&[-1f32, 0.0, 2.5, f32::NAN, -0.0], &Device::Cpu).unwrap();
        let y = super::relu_in_place(x).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(&y[..3], &[0.0, 0.0, 2.5]);
        assert!(y[3].is_nan());
    }
}
