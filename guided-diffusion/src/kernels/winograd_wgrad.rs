//! The weight gradient of a Winograd F(4x4, 3x3) convolution: 4x fewer multiplications than
//! the im2col product for the 3x3 stride-1 layers that [`applies`](super::winograd::applies) to.
//!
//! The forward pass computes each 4x4 output tile as `y = A^T [U . V] A` with `U = G g G^T`
//! and `V = B^T d B` (see [`super::winograd`]). It is linear in `U`, so for an output
//! gradient tile `dy` the gradient of `U` is `(A dy A^T) . V`, and that of the kernel `g` is
//! `G^T (...) G`.
//! Summed over tiles and images:
//!
//! `dw[o][c] = G^T [ sum_t Q[o][t] . V[c][t] ] G`, with `Q = A dy A^T` (6x6 from 4x4).
//!
//! So the layer becomes the input transform `V` (the forward's), a *gradient transform* `Q`,
//! 36 matrix products `P[xi] = Q[xi] V[xi]^T` (`[co, tiles] x [tiles, c]`) summed over the
//! batch, and the *inverse weight transform* `dw = G^T P G`. Tiles past the output's edge get
//! `dy = 0`, so the crop of the forward pass is respected.
//!
//! The batch goes in blocks of whole images. Wide layers (a large `P`, 4x the size of `dw`)
//! take blocks as large as [`BLOCK_FLOATS`] allows, so that `P` is read and written as few
//! times as possible, with the transforms parallel over planes and the 36 products over `xi`.
//! Thin layers take cache-sized blocks shared out among the threads, each summing into its own
//! `P`. Measured per call against the im2col product: the 64x64 model's 192 channels at 64x64,
//! batch 2, 19.2 -> 9.3 ms, 384 at 32x32 17.7 -> 8.1 ms; the small model's 64 channels at 32x32,
//! batch 32, 11.9 -> 9.3 ms.
//!
//! Rounding: `G^T` holds 1/4, 1/6, 1/12 and 1/24, and `A` up to 8, as in the forward pass. The
//! error is up to about 5e-6 of the largest value (6e-6 for 184 channels), against 3e-7 to
//! 5e-7 for the im2col product (`kernels_conv2d_winograd_matches_definition`).
use rayon::prelude::*;

use super::conv_plan::{add_partials, Conv};
use super::disjoint::Disjoint;
use super::im2col::Geom;
use super::scratch;
use super::sgemm::{sgemm, MatMut, MatRef};
use super::vmath;
use super::winograd::{
    gather_lanes, input_transform, load_lanes, put_lanes, store_lanes, Bufs, Lanes, L,
};
use super::winograd_tiles::{self as tiles, Planes};

/// Blocks for a large `P` (wide layers): at most this many floats of `V` and `Q` (64 MiB),
/// so that the products sum over as many tiles as possible per pass over `P`.
const BLOCK_FLOATS: usize = 16 * 1024 * 1024;

/// Blocks for a small `P` (`36 co c` below this, thin layers): `V`, `Q` and the thread's own
/// `P` stay in its L2 cache (384 Ki floats = 1.5 MiB of `V` and `Q`), and each thread sums its
/// blocks into its own `P`, added up at the end.
const SMALL_P_FLOATS: usize = 384 * 1024;

/// `dw[co, c, 3, 3] = sum over images of the weight gradient of `conv3x3(x)` for the output
/// gradient `gy[n, co, ho, wo]`, for the layers [`applies`](super::winograd::applies) to
/// (same geometry as [`forward`](super::winograd::forward)).
pub fn weight_grad(cv: &Conv, x: &[f32], gy: &[f32], dw: &mut [f32]) {
    if 36 * cv.co * cv.g.c < SMALL_P_FLOATS {
        weight_grad_in_blocks(cv, x, gy, dw, SMALL_P_FLOATS, rayon::current_num_threads().max(1))
    } else {
        weight_grad_in_blocks(cv, x, gy, dw, BLOCK_FLOATS, 1)
    }
}

/// [`weight_grad`] with at most `block_floats` of `V` and `Q` per block of images, the blocks
/// shared out among up to `groups` parallel tasks that each sum into their own `P` (with one
/// group, each block's transforms and products run in parallel instead).
fn weight_grad_in_blocks(
    cv: &Conv,
    x: &[f32],
    gy: &[f32],
    dw: &mut [f32],
    block_floats: usize,
    groups: usize,
) {
    let g = cv.g;
    let (co, c) = (cv.co, g.c);
    assert!(g.kh == 3 && g.kw == 3 && g.stride == 1 && g.ph <= 2 && g.pw <= 2);
    assert!(cv.fits(x.len(), dw.len(), gy.len()));
    let (th, tw) = (g.ho.div_ceil(4), g.wo.div_ceil(4));
    let tpi = th * tw;
    let imgs = (block_floats / (36 * (c + co) * tpi)).clamp(1, cv.n.max(1));
    let blocks = cv.n.div_ceil(imgs);
    let groups = groups.clamp(1, blocks.max(1));
    let inner_par = groups == 1;
    let plen = 36 * co * c;
    let mut parts = scratch::take(groups * plen);
    // Group `gi` sums blocks `gi * blocks / groups ..` into `parts[gi]`.
    let run_group = |(gi, part): (usize, &mut [f32])| {
        let (b0, b1) = (gi * blocks / groups, (gi + 1) * blocks / groups);
        if b1 == b0 {
            part.fill(0.0);
            return;
        }
        let pd = Disjoint::new(part);
        let mut buf = Bufs::default();
        for blk in b0..b1 {
            let (i0, i1) = (blk * imgs, ((blk + 1) * imgs).min(cv.n));
            let (ni, tiles) = (i1 - i0, (i1 - i0) * tpi);
            let xb = &x[i0 * g.in_len()..i1 * g.in_len()];
            let gb = &gy[i0 * co * g.out_px()..i1 * co * g.out_px()];
            let (vp, qp) = (Planes::new(c, tiles), Planes::new(co, tiles));
            let mut v = scratch::take_aligned(vp.len());
            let mut q = scratch::take_aligned(qp.len());
            {
                let (vd, qd) = (Disjoint::new(&mut v), Disjoint::new(&mut q));
                // Input channels first, then output-gradient channels, each for runs of `per`
                // images (a run of small planes fills the lanes).
                let per = tiles::planes_per_task(tpi, ni);
                let runs = ni.div_ceil(per);
                let plane = |buf: &mut Bufs, t: usize| {
                    let (run, ch) = (t / (c + co), t % (c + co));
                    let imgs = run * per..((run + 1) * per).min(ni);
                    if ch < c {
                        // SAFETY: task (run, ch) writes only v[.][ch][the tiles of its images].
                        unsafe { input_transform(xb, &g, th, tw, imgs, ch, vp, vd, buf) }
                    } else {
                        // SAFETY: task (run, ch) writes only q[.][ch - c][the tiles of its
                        // images].
                        unsafe { grad_transform(gb, &g, co, th, tw, imgs, ch - c, qp, qd, buf) }
                    }
                };
                if inner_par {
                    (0..runs * (c + co)).into_par_iter().for_each_init(Bufs::default, plane);
                } else {
                    (0..runs * (c + co)).for_each(|t| plane(&mut buf, t));
                }
            }
            let (v, q) = (&v[..], &q[..]);
            let product = |xi: usize| {
                let lhs = MatRef::rows(&q[qp.at(xi, 0)..], qp.ld);
                let rhs = MatRef::rows_t(&v[vp.at(xi, 0)..], vp.ld);
                let dst = MatMut::rows_in(pd, xi * co * c, c);
                // SAFETY: the views lie inside `q`, `v` and this group's `P` (sizes checked
                // above); each `xi` writes its own `P[xi]`.
                unsafe { sgemm(co, c, tiles, dst, blk > b0, lhs, rhs, 1) };
            };
            if inner_par {
                (0..36).into_par_iter().for_each(product);
            } else {
                (0..36).for_each(product);
            }
        }
    };
    if inner_par {
        run_group((0, &mut parts[..plen]));
    } else {
        parts.par_chunks_mut(plen).enumerate().for_each(run_group);
    }
    // Sum the groups' partials into the first.
    let (p, rest) = parts.split_at_mut(plen);
    add_partials(p, rest);
    let p = &p[..];
    let dw = Disjoint::new(&mut dw[..co * c * 9]);
    (0..co).into_par_iter().for_each(|o| {
        // SAFETY: each task writes the rows of its own output channel `o`.
        unsafe { inverse_weight_transform_row(p, co, c, o, dw) }
    });
}

/// `A q` over 4 lane vectors (the rows of A^T as columns: q0; q0+q1+q2+q3; q0-q1+q2-q3;
/// q0+2q1+4q2+8q3; q0-2q1+4q2-8q3; q3).
#[inline(always)]
fn a_apply(q: &[Lanes; 4]) -> [Lanes; 6] {
    let mut o = [[0f32; L]; 6];
    for l in 0..L {
        let [q0, q1, q2, q3] = [q[0][l], q[1][l], q[2][l], q[3][l]];
        let (s02, s13, t02, t13) = (q0 + q2, q1 + q3, q0 + 4.0 * q2, 2.0 * q1 + 8.0 * q3);
        o[0][l] = q0;
        o[1][l] = s02 + s13;
        o[2][l] = s02 - s13;
        o[3][l] = t02 + t13;
        o[4][l] = t02 - t13;
        o[5][l] = q3;
    }
    o
}

/// `G^T p` over 6 lane vectors (p0/4 - p1/6 - p2/6 + p3/24 + p4/24; -p1/6 + p2/6 + p3/12 -
/// p4/12; -p1/6 - p2/6 + p3/6 + p4/6 + p5).
#[inline(always)]
fn gt_apply(p: &[Lanes; 6]) -> [Lanes; 3] {
    let mut o = [[0f32; L]; 3];
    for l in 0..L {
        let [p0, p1, p2, p3, p4, p5] = [p[0][l], p[1][l], p[2][l], p[3][l], p[4][l], p[5][l]];
        let (s12, d12, s34, d34) = (p1 + p2, p2 - p1, p3 + p4, p3 - p4);
        o[0][l] = p0 / 4.0 - s12 / 6.0 + s34 / 24.0;
        o[1][l] = d12 / 6.0 + d34 / 12.0;
        o[2][l] = (s34 - s12) / 6.0 + p5;
    }
    o
}

vmath::avx2_fn! { avx512:
    /// `q[xi][o][t] = (A dy A^T)[xi]` for the tiles `t` of the images `imgs` of the block in
    /// output channel `o` (outputs past the edge count as zero).
    ///
    /// # Safety
    /// No other task accesses `q[.][o][the tiles of imgs]` meanwhile.
    unsafe fn grad_transform(
        gy: &[f32],
        g: &Geom,
        co: usize,
        th: usize,
        tw: usize,
        imgs: std::ops::Range<usize>,
        o: usize,
        qp: Planes,
        q: Disjoint,
        buf: &mut Bufs,
    ) {
        let nt = th * tw;
        // The 4x4 gradient tiles, entry by entry: d[(a * 4 + b) * ld + t] = gy[4 ty + a][4 tx + b].
        let px = g.ho * g.wo;
        let plane = |i: usize| &gy[((imgs.start + i) * co + o) * px..][..px];
        let Bufs { d, row } = buf;
        let ld = tiles::gather(imgs.len(), plane, (g.ho, g.wo), (0, 0), 4, (th, tw), L, d, row);
        let (base, run) = (imgs.start * nt, imgs.len() * nt);
        // The first pass's 24 vectors, through memory (they do not fit in registers).
        row.resize(24 * L, 0.0);
        let e = &mut row[..24 * L];
        for t0 in (0..run).step_by(L) {
            let nl = L.min(run - t0);
            // e[i][b] = sum_a A[i][a] dy[a][b], column by column; then the rows.
            for b in 0..4 {
                let col: [Lanes; 4] = gather_lanes(|a| &d[(a * 4 + b) * ld + t0..]);
                for (i, ei) in a_apply(&col).iter().enumerate() {
                    put_lanes(&mut e[(i * 4 + b) * L..], ei);
                }
            }
            for i in 0..6 {
                let ei: [Lanes; 4] = gather_lanes(|b| &e[(i * 4 + b) * L..]);
                for (j, qj) in a_apply(&ei).iter().enumerate() {
                    // SAFETY: q[i * 6 + j][o][base + t0..][..nl], this plane's (the contract).
                    store_lanes(unsafe { q.slice(qp.at(i * 6 + j, o) + base + t0, nl) }, qj);
                }
            }
        }
    }
}

vmath::avx2_fn! {
    /// `dw[o][c] = G^T p[.][o][c] G` for output channel `o`, 16 input channels at a time.
    ///
    /// # Safety
    /// No other task accesses `dw[o]` meanwhile.
    unsafe fn inverse_weight_transform_row(p: &[f32], co: usize, c: usize, o: usize, dw: Disjoint) {
        for c0 in (0..c).step_by(L) {
            let nl = L.min(c - c0);
            // G^T applied to the columns of the 6x6, then to the rows of the 3x6 result.
            let mut r = [[[0f32; L]; 6]; 3];
            for j in 0..6 {
                let mut col = [[0f32; L]; 6];
                for (i, ci) in col.iter_mut().enumerate() {
                    load_lanes(ci, &p[((i * 6 + j) * co + o) * c + c0..][..nl]);
                }
                let t = gt_apply(&col);
                for k in 0..3 {
                    r[k][j] = t[k];
                }
            }
            // SAFETY: dw[o][c0..c0 + nl][..9], this task's (the contract).
            let out = unsafe { dw.slice((o * c + c0) * 9, nl * 9) };
            for (k, rk) in r.iter().enumerate() {
                for (m, v) in gt_apply(rk).iter().enumerate() {
                    for (l, &x) in v.iter().enumerate().take(nl) {
                        out[l * 9 + k * 3 + m] = x;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{a_apply, gt_apply, weight_grad_in_blocks, L};
    use crate::kernels::conv_plan::Conv;
    use crate::kernels::im2col::Geom;

    /// Blocks of one image each (the products summed into `P` over five blocks), one block for
    /// the whole batch, and blocks shared among groups with their own `P` all give the f64
    /// definition's weight gradient.
    #[test]
    fn blocks_accumulate_into_the_definition() {
        let (n, c, co, h, w) = (5, 32, 33, 15, 13);
        let g = Geom::new(c, h, w, 3, 3, 1, 1, 1).unwrap();
        let cv = Conv { n, co, g };
        let mut s = 1u32;
        let mut rnd = || {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let x: Vec<f32> = (0..n * c * h * w).map(|_| rnd()).collect();
        let gy: Vec<f32> = (0..n * co * h * w).map(|_| rnd()).collect();
        let mut want = vec![0f64; co * c * 9];
        for b in 0..n {
            for o in 0..co {
                for ci in 0..c {
                    for (tap, acc) in want[(o * c + ci) * 9..][..9].iter_mut().enumerate() {
                        let (ky, kx) = (tap / 3, tap % 3);
                        for oy in 0..h {
                            for ox in 0..w {
                                let (iy, ix) = ((oy + ky) as isize - 1, (ox + kx) as isize - 1);
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    let xv = x[((b * c + ci) * h + iy as usize) * w + ix as usize]
                                        as f64;
                                    *acc += xv * gy[((b * co + o) * h + oy) * w + ox] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let tiles_floats = 36 * (c + co) * 16;
        for (block, groups) in
            [(tiles_floats, 1), (usize::MAX / 2, 1), (tiles_floats, 2), (2 * tiles_floats, 3)]
        {
            let mut dw = vec![0f32; co * c * 9];
            weight_grad_in_blocks(&cv, &x, &gy, &mut dw, block, groups);
            let err = dw.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
            assert!(
                err < 1e-5 * scale,
                "block {block}, {groups} groups: error {err:e} of {scale:e}"
            );
        }
    }

    /// The lane transforms are the transposes of the forward's A^T and G (checked on unit
    /// vectors against the matrices written out).
    #[test]
    fn transforms_are_the_transposes() {
        let at: [[f32; 6]; 4] = [
            [1., 1., 1., 1., 1., 0.],
            [0., 1., -1., 2., -2., 0.],
            [0., 1., 1., 4., 4., 0.],
            [0., 1., -1., 8., -8., 1.],
        ];
        for a in 0..4 {
            let mut q = [[0f32; L]; 4];
            q[a] = [1.0; L];
            let o = a_apply(&q);
            for i in 0..6 {
                assert_eq!(o[i][0], at[a][i], "A[{i}][{a}]");
            }
        }
        let g: [[f32; 3]; 6] = [
            [0.25, 0., 0.],
            [-1. / 6., -1. / 6., -1. / 6.],
            [-1. / 6., 1. / 6., -1. / 6.],
            [1. / 24., 1. / 12., 1. / 6.],
            [1. / 24., -1. / 12., 1. / 6.],
            [0., 0., 1.],
        ];
        for i in 0..6 {
            let mut p = [[0f32; L]; 6];
            p[i] = [1.0; L];
            let o = gt_apply(&p);
            for k in 0..3 {
                assert!(
                    (o[k][0] - g[i][k]).abs() < 1e-7,
                    "G[{i}][{k}]: {} vs {}",
                    o[k][0],
                    g[i][k]
                );
            }
        }
    }
}
