//! im2col / col2im on one NCHW image, a band of output rows at a time.
//!
//! The column matrix of a band of output rows `oy0..oy1` is `[C * KH * KW, (oy1 - oy0) * WO]`,
//! row-major, row index `(c * KH + i) * KW + j` — the order of a contiguous
//! `[C_out, C_in, KH, KW]` weight, so the weight is used as a `[C_out, K]` matrix as is.

/// The geometry of a 2-D convolution of one image (dilation 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    /// input channels, height, width
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// kernel height, width
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    /// zero padding on top/bottom and left/right
    pub ph: usize,
    pub pw: usize,
    /// output height, width
    pub ho: usize,
    pub wo: usize,
}

impl Geom {
    /// `None` when the padded input is smaller than the kernel, the stride is 0, or one of
    /// [`k`](Self::k), [`in_len`](Self::in_len), [`out_px`](Self::out_px) would overflow (the
    /// sizes come from files and flags: a wrapped product would under-allocate and then write
    /// out of bounds).
    pub fn new(
        c: usize,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        ph: usize,
        pw: usize,
    ) -> Option<Geom> {
        let hp = ph.checked_mul(2)?.checked_add(h)?;
        let wp = pw.checked_mul(2)?.checked_add(w)?;
        if stride == 0 || kh == 0 || kw == 0 || hp < kh || wp < kw {
            return None;
        }
        let ho = (hp - kh) / stride + 1;
        let wo = (wp - kw) / stride + 1;
        c.checked_mul(h)?.checked_mul(w)?;
        c.checked_mul(kh)?.checked_mul(kw)?;
        ho.checked_mul(wo)?;
        Some(Geom { c, h, w, kh, kw, stride, ph, pw, ho, wo })
    }

    /// Rows of the column matrix (the gemm depth).
    pub fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    pub fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }

    pub fn out_px(&self) -> usize {
        self.ho * self.wo
    }

    /// A 1x1, stride-1, unpadded convolution: the image itself is its column matrix.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.ph == 0 && self.pw == 0
    }

    /// The output columns `ox` whose input column `ox * stride + j - pw` lies inside the
    /// image, as a range `lo..hi` (possibly empty).
    fn valid_ox(&self, j: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = if self.pw > j { (self.pw - j).div_ceil(s) } else { 0 };
        // ox * s + j - pw <= w - 1  <=>  ox <= (w - 1 + pw - j) / s
        let hi = if self.w + self.pw > j {
            ((self.w - 1 + self.pw - j) / s + 1).min(self.wo)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// The input row of output row `oy` and kernel row `i`, if inside the image.
    fn in_row(&self, oy: usize, i: usize) -> Option<usize> {
        let y = (oy * self.stride + i).checked_sub(self.ph)?;
        (y < self.h).then_some(y)
    }
}

/// Writes the column matrix of output rows `oy0..oy1` of image `x` (`[C, H, W]`) into `col`
/// (`[K, (oy1 - oy0) * WO]`).
pub fn im2col(x: &[f32], g: &Geom, oy0: usize, oy1: usize, col: &mut [f32]) {
    let tp = (oy1 - oy0) * g.wo;
    assert!(x.len() >= g.in_len() && g.k().checked_mul(tp).is_some_and(|n| col.len() >= n));
    for (r, row) in col[..g.k() * tp].chunks_exact_mut(tp.max(1)).enumerate().take(g.k()) {
        im2col_row(x, g, r, oy0, oy1, row);
    }
}

/// Row `r` (`(c * KH + i) * KW + j`) of the column matrix of output rows `oy0..oy1`, into
/// `row` (`(oy1 - oy0) * WO` values).
pub fn im2col_row(x: &[f32], g: &Geom, r: usize, oy0: usize, oy1: usize, row: &mut [f32]) {
    let (w, wo, s) = (g.w, g.wo, g.stride);
    let (c, i, j) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
    let xc = &x[c * g.h * w..(c + 1) * g.h * w];
    let (lo, hi) = g.valid_ox(j);
    for (oy, dst) in (oy0..oy1).zip(row.chunks_exact_mut(wo)) {
        let Some(y) = g.in_row(oy, i) else {
            dst.fill(0.0);
            continue;
        };
        let src = &xc[y * w..(y + 1) * w];
        dst[..lo].fill(0.0);
        dst[hi..].fill(0.0);
        if lo < hi {
            let x0 = lo * s + j - g.pw;
            if s == 1 {
                dst[lo..hi].copy_from_slice(&src[x0..x0 + hi - lo]);
            } else {
                for (d, v) in dst[lo..hi].iter_mut().zip(src[x0..].iter().step_by(s)) {
                    *d = *v;
                }
            }
        }
    }
}

/// Adds the column matrix `col` of output rows `oy0..oy1` back onto image `dx` (`[C, H, W]`):
/// the adjoint of [`im2col`].
pub fn col2im_add(col: &[f32], g: &Geom, oy0: usize, oy1: usize, dx: &mut [f32]) {
    let (w, wo, s) = (g.w, g.wo, g.stride);
    let tp = (oy1 - oy0) * wo;
    assert!(dx.len() >= g.in_len() && g.k().checked_mul(tp).is_some_and(|n| col.len() >= n));
    let mut r = 0;
    for c in 0..g.c {
        let dxc = &mut dx[c * g.h * w..(c + 1) * g.h * w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let (lo, hi) = g.valid_ox(j);
                let row = &col[r * tp..(r + 1) * tp];
                for (oy, src) in (oy0..oy1).zip(row.chunks_exact(wo)) {
                    let Some(y) = g.in_row(oy, i) else { continue };
                    if lo >= hi {
                        continue;
                    }
                    let dst = &mut dxc[y * w..(y + 1) * w];
                    let x0 = lo * s + j - g.pw;
                    if s == 1 {
                        for (d, v) in dst[x0..x0 + hi - lo].iter_mut().zip(&src[lo..hi]) {
                            *d += *v;
                        }
                    } else {
                        for (d, v) in dst[x0..].iter_mut().step_by(s).zip(&src[lo..hi]) {
                            *d += *v;
                        }
                    }
                }
                r += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct definition of the column matrix, for checking.
    fn naive(x: &[f32], g: &Geom) -> Vec<f32> {
        let p = g.out_px();
        let mut col = vec![0.0; g.k() * p];
        for c in 0..g.c {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let r = (c * g.kh + i) * g.kw + j;
                    for oy in 0..g.ho {
                        for ox in 0..g.wo {
                            let y = (oy * g.stride + i) as isize - g.ph as isize;
                            let xx = (ox * g.stride + j) as isize - g.pw as isize;
                            if y >= 0 && xx >= 0 && (y as usize) < g.h && (xx as usize) < g.w {
                                col[r * p + oy * g.wo + ox] =
                                    x[(c * g.h + y as usize) * g.w + xx as usize];
                            }
                        }
                    }
                }
            }
        }
        col
    }

    #[test]
    fn im2col_matches_definition_and_col2im_is_its_adjoint() {
        for &(c, h, w, k, s, p) in &[
            (2, 5, 7, 3, 1, 1),
            (3, 6, 5, 3, 2, 1),
            (1, 4, 4, 1, 1, 0),
            (2, 7, 6, 1, 2, 0),
            (2, 5, 5, 3, 3, 2),
            (1, 3, 3, 5, 1, 2),
        ] {
            let g = Geom::new(c, h, w, k, k, s, p, p).unwrap();
            let x: Vec<f32> = (0..g.in_len()).map(|i| (i as f32 * 0.37).sin()).collect();
            let want = naive(&x, &g);
            // Whole image and in bands of 2 rows.
            let mut col = vec![f32::NAN; want.len()];
            im2col(&x, &g, 0, g.ho, &mut col);
            assert_eq!(col, want, "{g:?}");
            let mut dx = vec![0.0; g.in_len()];
            let u: Vec<f32> = (0..want.len()).map(|i| (i as f32 * 0.11).cos()).collect();
            for oy0 in (0..g.ho).step_by(2) {
                let oy1 = (oy0 + 2).min(g.ho);
                let tp = (oy1 - oy0) * g.wo;
                let mut band = vec![f32::NAN; g.k() * tp];
                im2col(&x, &g, oy0, oy1, &mut band);
                let mut ub = vec![0.0; g.k() * tp];
                for r in 0..g.k() {
                    for q in 0..tp {
                        assert_eq!(band[r * tp + q], want[r * g.out_px() + oy0 * g.wo + q]);
                        ub[r * tp + q] = u[r * g.out_px() + oy0 * g.wo + q];
                    }
                }
                col2im_add(&ub, &g, oy0, oy1, &mut dx);
            }
            // <im2col(x), u> == <x, col2im(u)>
            let lhs: f64 = want.iter().zip(&u).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
            assert!((lhs - rhs).abs() < 1e-3, "{g:?}: {lhs} vs {rhs}");
        }
    }
}

#[cfg(test)]
mod size_checks {
    use super::super::conv_plan::Conv;
    use super::*;

    /// Issue 18, D1: an `image_size` of 2^32 made `ho * wo` wrap to 0 and the conv kernel
    /// write out of bounds. Sizes that overflow are now refused where they are computed.
    #[test]
    fn overflowing_geometries_are_refused() {
        let big = 1usize << 32;
        assert!(Geom::new(3, big, big, 3, 3, 1, 1, 1).is_none(), "h * w overflows");
        assert!(Geom::new(1, usize::MAX, 4, 3, 3, 1, 1, 1).is_none(), "h + 2p overflows");
        assert!(Geom::new(usize::MAX / 2, 2, 2, 3, 3, 1, 1, 1).is_none(), "c * kh * kw");
        let g = Geom::new(64, 1 << 14, 1 << 14, 3, 3, 1, 1, 1).unwrap();
        let cv = Conv { n: 1 << 20, co: 1 << 20, g };
        assert!(cv.lens().is_none(), "n * co * ho * wo overflows");
        assert!(!cv.fits(usize::MAX, usize::MAX, usize::MAX));
        let small = Conv { n: 2, co: 4, g: Geom::new(3, 5, 5, 3, 3, 1, 1, 1).unwrap() };
        assert_eq!(small.lens(), Some((2 * 75, 4 * 27, 2 * 4 * 25)));
        assert!(small.fits(150, 108, 200) && !small.fits(149, 108, 200));
    }
}
