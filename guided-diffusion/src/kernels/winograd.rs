//! Winograd F(4x4, 3x3): the 3x3, stride-1 convolutions with 4x fewer multiplications.
//!
//! Each 4x4 block of output pixels ("tile") of one output channel is
//! `A^T [ sum_c (G g_c G^T) . (B^T d_c B) ] A`, where `d_c` is the 6x6 input patch under the tile
//! in channel `c` and `g_c` the 3x3 kernel (Lavin & Gray 2016). So a layer becomes
//! - the *weight transform* `U[xi][co][c] = (G g G^T)[xi]` (36 = 6x6 positions `xi`), made
//!   per call, or once for a frozen weight (`super::forms`); for the input
//!   gradient, of the flipped weight, read flipped on the fly,
//! - the *input transform* `V[xi][c][tile] = (B^T d B)[xi]`,
//! - 36 matrix products `M[xi] = U[xi] V[xi]` (`[co, c] x [c, tiles]`, our packed gemm), and
//! - the *output transform* `y = A^T M A` (+ bias), cropped to the output size.
//!
//! That is 36 multiply-adds per 16 outputs and input channel instead of 144. The transforms
//! are memory-bound passes. The batch goes in blocks of whole images sized so that a block's
//! `V` and `M` stay near the L2 cache. Blocks, transform tasks and the 36 products all run in
//! parallel on rayon, with single-threaded gemms and pooled scratch buffers. The transforms
//! work on 16 tiles at a time (one AVX-512 register per value, or two AVX2 ones), on runs of
//! whole images of one channel: the tiles' patches are first gathered entry by entry
//! (`winograd_tiles`), so that every vector load is contiguous, and small images share the
//! lanes.
//!
//! Rounding differs from the direct sum: `G` holds 1/6 and 1/24, and the transforms add
//! values of both signs. The result carries an error of up to about 5e-6 of the output's
//! largest value; the direct im2col product has about 6e-7 (measured by
//! `kernels_conv2d_winograd_matches_definition`). The policy's `winograd` turns it off
//! (`super::KernelPolicy`); [`applies`] keeps it to layers wide enough to profit
//! (`benches/conv3x3.rs`). The weight
//! gradient of the same layers is in `winograd_wgrad`.
use rayon::prelude::*;

use super::conv_plan::Conv;
use super::disjoint::Disjoint;
use super::im2col::Geom;
use super::scratch;
use super::sgemm::{sgemm, MatMut, MatRef};
use super::vmath;
use super::winograd_tiles::{self as tiles, Planes};

/// Tiles (or input channels, in the weight transform) per vector step of the transforms.
pub(super) const L: usize = 16;
/// The fewest tiles (4x4 output blocks over the batch) worth the transforms.
const MIN_TILES: usize = 64;
/// Target floats of one block's `V` and `M` together: 384 Ki floats = 1.5 MiB (most of a
/// 2 MiB L2).
const BLOCK_FLOATS: usize = 384 * 1024;

/// Whether a convolution goes through Winograd: 3x3, stride 1, padding at most 2, at least
/// 32 input and output channels, and at least 64 tiles (below that the weight transform and
/// the thin products cost more than they save; see `benches/conv3x3.rs`).
pub fn applies(cv: &Conv) -> bool {
    let g = &cv.g;
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.ph <= 2
        && g.pw <= 2
        && g.c >= 32
        && cv.co >= 32
        && cv.n * g.ho.div_ceil(4) * g.wo.div_ceil(4) >= MIN_TILES
}

/// `out[n, co, ho, wo] = conv3x3(x[n, c, h, w], w[co, c, 3, 3]) + bias[co]`.
///
/// The batch goes in blocks of whole images, as many as keep a block's `V` and `M` near
/// [`BLOCK_FLOATS`] (at least one image). Blocks run in parallel, and so do the planes of each
/// transform and the 36 products inside a block, so both many small images and one large image
/// keep every thread busy.
///
/// `u` is the weight transformed by [`transform_weight`] or [`transform_weight_into`].
pub fn forward(cv: &Conv, x: &[f32], u: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let g = cv.g;
    assert!(g.kh == 3 && g.kw == 3 && g.stride == 1 && g.ph <= 2 && g.pw <= 2);
    assert!(
        cv.fits(x.len(), usize::MAX, out.len())
            && cv.co.checked_mul(g.c).and_then(|n| n.checked_mul(36)).is_some_and(|n| u.len() >= n)
    );
    let (th, tw) = (g.ho.div_ceil(4), g.wo.div_ceil(4));
    let tpi = th * tw;
    let imgs = (BLOCK_FLOATS / (36 * (g.c + cv.co) * tpi)).clamp(1, cv.n);
    let out = Disjoint::new(&mut out[..cv.n * cv.co * g.out_px()]);
    (0..cv.n.div_ceil(imgs)).into_par_iter().for_each(|blk| {
        let (i0, i1) = (blk * imgs, ((blk + 1) * imgs).min(cv.n));
        let tiles = (i1 - i0) * tpi;
        let xb = &x[i0 * g.in_len()..i1 * g.in_len()];
        let (vp, mp) = (Planes::new(g.c, tiles), Planes::new(cv.co, tiles));
        let mut v = scratch::take_aligned(vp.len());
        let mut m = scratch::take_aligned(mp.len());
        let vd = Disjoint::new(&mut v);
        // Tasks of `per` images (a run of small planes fills the lanes) and one channel.
        let ni = i1 - i0;
        let per = tiles::planes_per_task(tpi, ni);
        let runs = ni.div_ceil(per);
        (0..runs * g.c).into_par_iter().for_each_init(Bufs::default, |buf, p| {
            let (img0, ci) = ((p / g.c) * per, p % g.c);
            let imgs = img0..(img0 + per).min(ni);
            // SAFETY: task (run, ci) writes only v[.][ci][the tiles of its images].
            unsafe { input_transform(xb, &g, th, tw, imgs, ci, vp, vd, buf) };
        });
        let md = Disjoint::new(&mut m);
        let v = &v[..];
        (0..36).into_par_iter().for_each(|xi| {
            let lhs = MatRef::rows(&u[xi * cv.co * g.c..], g.c);
            let rhs = MatRef::rows(&v[vp.at(xi, 0)..], vp.ld);
            let dst = MatMut::rows_in(md, mp.at(xi, 0), mp.ld);
            // SAFETY: the views lie inside `u`, `v`, `m` (sizes checked above); each `xi`
            // writes its own `m[xi]`.
            unsafe { sgemm(cv.co, tiles, g.c, dst, false, lhs, rhs, 1) };
        });
        let m = &m[..];
        let ob = out.offset(i0 * cv.co * g.out_px());
        (0..runs * cv.co).into_par_iter().for_each_init(Bufs::default, |buf, p| {
            let (img0, o) = ((p / cv.co) * per, p % cv.co);
            let imgs = img0..(img0 + per).min(ni);
            // SAFETY: the planes (img, o) of this task's images in this block's output are
            // written by this task alone.
            unsafe { output_transform(m, &g, cv.co, th, tw, imgs, o, mp, bias, ob, buf) };
        });
    });
}

pub(super) type Lanes = [f32; L];

/// `G g` over 3 lane vectors (the rows of G: g0/4; -(g0+g1+g2)/6; -(g0-g1+g2)/6;
/// g0/24 + g1/12 + g2/6; g0/24 - g1/12 + g2/6; g2).
#[inline(always)]
fn g_apply(g: &[Lanes; 3]) -> [Lanes; 6] {
    let mut o = [[0f32; L]; 6];
    for l in 0..L {
        let [g0, g1, g2] = [g[0][l], g[1][l], g[2][l]];
        o[0][l] = g0 / 4.0;
        o[1][l] = -(g0 + g1 + g2) / 6.0;
        o[2][l] = -(g0 - g1 + g2) / 6.0;
        o[3][l] = g0 / 24.0 + g1 / 12.0 + g2 / 6.0;
        o[4][l] = g0 / 24.0 - g1 / 12.0 + g2 / 6.0;
        o[5][l] = g2;
    }
    o
}

/// `B^T d` over 6 lane vectors.
#[inline(always)]
fn bt_apply(d: &[Lanes; 6]) -> [Lanes; 6] {
    let mut o = [[0f32; L]; 6];
    for l in 0..L {
        let [d0, d1, d2, d3, d4, d5] = [d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]];
        o[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        o[1][l] = -4.0 * (d1 + d2) + (d3 + d4);
        o[2][l] = 4.0 * (d1 - d2) + (d4 - d3);
        o[3][l] = 2.0 * (d3 - d1) + (d4 - d2);
        o[4][l] = 2.0 * (d1 - d3) + (d4 - d2);
        o[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    o
}

/// `A^T m` over 6 lane vectors.
#[inline(always)]
fn at_apply(m: &[Lanes; 6]) -> [Lanes; 4] {
    let mut o = [[0f32; L]; 4];
    for l in 0..L {
        let [m0, m1, m2, m3, m4, m5] = [m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]];
        let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
        o[0][l] = m0 + s12 + s34;
        o[1][l] = d12 + 2.0 * d34;
        o[2][l] = s12 + 4.0 * s34;
        o[3][l] = d12 + 8.0 * d34 + m5;
    }
    o
}

/// The Winograd transform of the `[co, c, 3, 3]` weight of a convolution, as [`forward`]
/// takes it. With `flipped`, that weight is `w` flipped and transposed (`w` is then
/// `[c, co, 3, 3]`): the convolution that gives the input gradient of `w`'s.
pub fn transform_weight(w: &[f32], co: usize, c: usize, flipped: bool) -> Vec<f32> {
    let mut u = vec![0f32; 36 * co * c];
    transform_weight_into(w, co, c, flipped, &mut u);
    u
}

/// [`transform_weight`] into `u` (at least `36 co c` floats), in parallel over output channels.
pub fn transform_weight_into(w: &[f32], co: usize, c: usize, flipped: bool, u: &mut [f32]) {
    assert!(w.len() >= co * c * 9 && u.len() >= 36 * co * c);
    let u = Disjoint::new(u);
    (0..co).into_par_iter().for_each(|o| {
        // SAFETY: each task writes the rows of its own output channel `o`.
        unsafe { weight_transform_row(w, co, c, o, flipped, u) }
    });
}

vmath::avx2_fn! {
    /// The kernels of output channel `o`, 16 input channels at a time.
    /// (`flipped`: of the flipped and transposed weight, read from `w[c, co, 3, 3]`.)
    ///
    /// # Safety
    /// No other task accesses `u[.][o][.]` (the rows of output channel `o`) meanwhile.
    unsafe fn weight_transform_row(
        w: &[f32],
        co: usize,
        c: usize,
        o: usize,
        flipped: bool,
        u: Disjoint,
    ) {
        for c0 in (0..c).step_by(L) {
            let nl = L.min(c - c0);
            let mut k = [[0f32; L]; 9];
            for l in 0..nl {
                let ci = c0 + l;
                if flipped {
                    let src: &[f32; 9] = w[(ci * co + o) * 9..][..9].try_into().unwrap();
                    for (tap, kt) in k.iter_mut().enumerate() {
                        kt[l] = src[8 - tap];
                    }
                } else {
                    let src: &[f32; 9] = w[(o * c + ci) * 9..][..9].try_into().unwrap();
                    for (tap, kt) in k.iter_mut().enumerate() {
                        kt[l] = src[tap];
                    }
                }
            }
            // G applied to the kernel's columns, then to the rows of the result.
            let mut t = [[[0f32; L]; 3]; 6];
            for j in 0..3 {
                let col = g_apply(&[k[j], k[3 + j], k[6 + j]]);
                for i in 0..6 {
                    t[i][j] = col[i];
                }
            }
            for (i, ti) in t.iter().enumerate() {
                for (j, rj) in g_apply(ti).iter().enumerate() {
                    // SAFETY: u[i * 6 + j][o][c0..c0 + nl], this task's (the contract).
                    store_lanes(unsafe { u.slice(((i * 6 + j) * co + o) * c + c0, nl) }, rj);
                }
            }
        }
    }
}

/// Scratch of one transform task: the tile-major patches or outputs, and a row.
#[derive(Default)]
pub(super) struct Bufs {
    pub d: Vec<f32>,
    pub row: Vec<f32>,
}

vmath::avx2_fn! { avx512:
    /// `v[xi][ci][t]` for the tiles `t` of the images `imgs` of the block in input channel
    /// `ci` (tiles counted over the block, `tiles` of them, those of one image consecutive).
    ///
    /// # Safety
    /// No other task accesses `v[.][ci][the tiles of imgs]` meanwhile.
    pub(super) unsafe fn input_transform(
        x: &[f32],
        g: &Geom,
        th: usize,
        tw: usize,
        imgs: std::ops::Range<usize>,
        ci: usize,
        vp: Planes,
        v: Disjoint,
        buf: &mut Bufs,
    ) {
        let nt = th * tw;
        let hw = g.h * g.w;
        let plane = |i: usize| &x[(imgs.start + i) * g.in_len() + ci * hw..][..hw];
        let count = imgs.len();
        let Bufs { d, row } = buf;
        let ld =
            tiles::gather(count, plane, (g.h, g.w), (g.ph, g.pw), 6, (th, tw), L, d, row);
        let (base, run) = (imgs.start * nt, count * nt);
        for t0 in (0..run).step_by(L) {
            let nl = L.min(run - t0);
            // e[i][k] = sum_r B^T[i][r] d[r][k], column by column, in place of d[i][k] (whole
            // vectors in and out of memory: the 36 of them do not fit in registers).
            for k in 0..6 {
                let col: [Lanes; 6] = gather_lanes(|r| &d[(r * 6 + k) * ld + t0..]);
                for (i, e) in bt_apply(&col).iter().enumerate() {
                    put_lanes(&mut d[(i * 6 + k) * ld + t0..], e);
                }
            }
            for i in 0..6 {
                let ei: [Lanes; 6] = gather_lanes(|k| &d[(i * 6 + k) * ld + t0..]);
                for (j, vj) in bt_apply(&ei).iter().enumerate() {
                    // SAFETY: v[i * 6 + j][ci][base + t0..][..nl], this task's (the contract).
                    let dst = unsafe { v.slice(vp.at(i * 6 + j, ci) + base + t0, nl) };
                    store_lanes(dst, vj);
                }
            }
        }
    }
}

/// `dst = src[..dst.len()]`, a whole-vector copy when `dst` holds `L` floats (no memcpy call).
#[inline(always)]
pub(super) fn store_lanes(dst: &mut [f32], src: &Lanes) {
    if let Ok(d) = <&mut Lanes>::try_from(&mut *dst) {
        *d = *src;
    } else {
        let n = dst.len();
        tiles::copy_run(dst, &src[..n]);
    }
}

/// The first `L` floats of `src` as one vector.
#[inline(always)]
pub(super) fn lanes(src: &[f32]) -> Lanes {
    *<&Lanes>::try_from(&src[..L]).unwrap()
}

/// `N` vectors, vector `i` the first `L` floats of `src(i)` (unrolled: `std::array::from_fn`
/// is not always inlined, and its result then comes back through memory in narrower pieces
/// than the vector loads that read it, which stalls them).
#[inline(always)]
pub(super) fn gather_lanes<'a, const N: usize>(src: impl Fn(usize) -> &'a [f32]) -> [Lanes; N] {
    let mut out = [[0f32; L]; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = lanes(src(i));
    }
    out
}

/// `dst[..L] = v`, one vector store.
#[inline(always)]
pub(super) fn put_lanes(dst: &mut [f32], v: &Lanes) {
    *<&mut Lanes>::try_from(&mut dst[..L]).unwrap() = *v;
}

/// `dst[..src.len()] = src`, zeros after; a whole-vector copy when `src` holds `L` floats.
#[inline(always)]
pub(super) fn load_lanes(dst: &mut Lanes, src: &[f32]) {
    if let Ok(s) = <&Lanes>::try_from(src) {
        *dst = *s;
    } else {
        *dst = [0.0; L];
        tiles::copy_run(&mut dst[..src.len()], src);
    }
}

vmath::avx2_fn! { avx512:
    /// Output planes `(img, o)` (+ their bias) of the images `imgs` of the block from the
    /// products `m[xi][o][t]`.
    ///
    /// # Safety
    /// No other task accesses the output planes `(img, o)`, `img` in `imgs`, meanwhile.
    unsafe fn output_transform(
        m: &[f32],
        g: &Geom,
        co: usize,
        th: usize,
        tw: usize,
        imgs: std::ops::Range<usize>,
        o: usize,
        mp: Planes,
        bias: Option<&[f32]>,
        out: Disjoint,
        buf: &mut Bufs,
    ) {
        let nt = th * tw;
        let (base, run) = (imgs.start * nt, imgs.len() * nt);
        let b = bias.map_or(0.0, |b| b[o]);
        // y[(a * 4 + bq) * ld + t]: output (a, bq) of tile t, then scattered into the planes.
        let ld = run + L;
        let Bufs { d: y, row } = buf;
        // The first pass's 24 vectors, through memory (they do not fit in registers).
        y.resize(16 * ld + 24 * L, 0.0);
        let (y, s) = y.split_at_mut(16 * ld);
        for t0 in (0..run).step_by(L) {
            let nl = L.min(run - t0);
            // s[a][j] = sum_i A^T[a][i] m[i][j], column by column.
            for j in 0..6 {
                let mut col = [[0f32; L]; 6];
                for (i, ci) in col.iter_mut().enumerate() {
                    load_lanes(ci, &m[mp.at(i * 6 + j, o) + base + t0..][..nl]);
                }
                for (a, sa) in at_apply(&col).iter().enumerate() {
                    put_lanes(&mut s[(a * 6 + j) * L..], sa);
                }
            }
            for a in 0..4 {
                let sa: [Lanes; 6] = gather_lanes(|j| &s[(a * 6 + j) * L..]);
                for (bq, yb) in at_apply(&sa).iter().enumerate() {
                    let mut v = *yb;
                    for x in v.iter_mut() {
                        *x += b;
                    }
                    store_lanes(&mut y[(a * 4 + bq) * ld + t0..][..L], &v);
                }
            }
        }
        let px = g.ho * g.wo;
        for (i, img) in imgs.enumerate() {
            // SAFETY: plane (img, o) of the output, this task's (the contract).
            let plane = unsafe { out.slice((img * co + o) * px, px) };
            tiles::scatter(plane, i, (g.ho, g.wo), (th, tw), y, ld, row);
        }
    }
}
