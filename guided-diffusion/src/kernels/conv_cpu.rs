//! The slice-level CPU algorithms of the convolution ops: forward (im2col + gemm, bias fused),
//! input gradient (a forward convolution with the flipped weight for stride 1, one gemm on the
//! transposed weight for 1x1, gemm + col2im otherwise) and weight gradient (gemm of the output
//! gradient with im2col(x)). The 3x3 stride-1 layers that [`winograd::applies`] to go through
//! Winograd instead, in all three (`winograd`, `winograd_wgrad`), when the policy allows it; a
//! frozen weight's derived forms come from its layer (`super::forms`).
//!
//! The work is cut into tiles as `conv_plan` says. Column matrices live in pooled scratch
//! buffers (no allocation once warm).
use std::sync::OnceLock;

use rayon::prelude::*;

use super::conv_plan::{sum_groups, Conv};
use super::disjoint::Disjoint;
use super::forms::Derived;
use super::im2col::{col2im_add, im2col, Geom};
use super::policy::KernelPolicy;
use super::scratch;
use super::sgemm::{sgemm, MatMut, MatRef};
use super::winograd;

/// `out[n, co, ho, wo] = conv(x[n, c, h, w], w[co, K]) + bias[co]`.
///
/// Through Winograd where it applies and `use_winograd`; `winograd`, when given, keeps the
/// weight's Winograd transform across calls (a frozen weight's, [`super::forms`]).
pub fn forward(
    cv: &Conv,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    use_winograd: bool,
    winograd: Option<&OnceLock<Vec<f32>>>,
) {
    if use_winograd && winograd::applies(cv) {
        return forward_winograd(cv, x, w, false, bias, out, winograd);
    }
    let g = cv.g;
    let (k, px) = (g.k(), g.out_px());
    assert!(cv.fits(x.len(), w.len(), out.len()), "conv forward: arrays smaller than {cv:?}");
    if cv.n * cv.co * px == 0 {
        return; // no output (e.g. the input gradient of a layer without input channels)
    }
    let plan = cv.plan();
    let out = Disjoint::new(&mut out[..cv.n * cv.co * px]);
    let run = |t: usize| {
        let (img, oy0, oy1) = cv.tile(&plan, t);
        let tp = (oy1 - oy0) * g.wo;
        let xi = &x[img * g.in_len()..(img + 1) * g.in_len()];
        // This tile's part of the output: `co` rows of `tp` pixels from `off`, `px` apart.
        let off = img * cv.co * px + oy0 * g.wo;
        if let Some(b) = bias {
            for (c, &bv) in b.iter().enumerate().take(cv.co) {
                // SAFETY: row `c` of this tile's part, which no other tile touches.
                unsafe { out.slice(off + c * px, tp) }.fill(bv);
            }
        }
        let lhs = MatRef::rows(w, k);
        let dst = MatMut::rows_in(out, off, px);
        let rhs;
        let mut col;
        if g.is_pointwise() {
            rhs = MatRef::rows(&xi[oy0 * g.wo..], px);
        } else {
            col = scratch::take(k * tp);
            im2col(xi, &g, oy0, oy1, &mut col);
            rhs = MatRef::rows(&col, tp);
        }
        // SAFETY: `lhs` is `w` (`co x k`, checked above), `rhs` the tile's `k x tp` input
        // (output rows oy0..oy1 of image `img` at stride `px`, or its column matrix), `dst`
        // this tile's part of `out`, written by no other tile.
        unsafe { sgemm(cv.co, tp, k, dst, bias.is_some(), lhs, rhs, plan.gemm_threads) };
    };
    plan.each_tile(run);
}

/// [`forward`] through Winograd, with the transform of `w` (or of its flipped transpose,
/// `flipped`) from `cache` or made into scratch.
fn forward_winograd(
    cv: &Conv,
    x: &[f32],
    w: &[f32],
    flipped: bool,
    bias: Option<&[f32]>,
    out: &mut [f32],
    cache: Option<&OnceLock<Vec<f32>>>,
) {
    let (co, c) = (cv.co, cv.g.c);
    let mut own = None;
    let u: &[f32] = match cache {
        Some(u) => u.get_or_init(|| winograd::transform_weight(w, co, c, flipped)),
        None => {
            let mut u = scratch::take(36 * co * c);
            winograd::transform_weight_into(w, co, c, flipped, &mut u);
            &own.insert(u)[..]
        }
    };
    winograd::forward(cv, x, u, bias, out)
}

/// `dw[co, K] = sum over images of gy[co, px] * im2col(x)[K, px]^T` (through Winograd where it
/// applies and `use_winograd`).
pub fn weight_grad(cv: &Conv, x: &[f32], gy: &[f32], dw: &mut [f32], use_winograd: bool) {
    if use_winograd && winograd::applies(cv) {
        return super::winograd_wgrad::weight_grad(cv, x, gy, dw);
    }
    let g = cv.g;
    let (k, px) = (g.k(), g.out_px());
    assert!(cv.fits(x.len(), dw.len(), gy.len()), "conv weight grad: arrays smaller than {cv:?}");
    let mut plan = cv.plan();
    // Per-thread partial sums only when each thread reduces over enough pixels to pay for its
    // own `[co, K]` partial; otherwise one pass over the tiles with a threaded gemm.
    let threads = rayon::current_num_threads().max(1);
    let groups =
        if plan.par_tiles && cv.n * px >= 128 * threads { threads.min(plan.tiles) } else { 1 };
    if groups == 1 {
        plan.par_tiles = false;
        plan.gemm_threads = threads;
    }
    // Group `gi` sums tiles `bounds(gi)` into its own `[co, K]` partial.
    let bounds = |gi: usize| (gi * plan.tiles / groups, (gi + 1) * plan.tiles / groups);
    let accumulate = |acc: &mut [f32], gi: usize| {
        let (t0, t1) = bounds(gi);
        let mut col =
            if g.is_pointwise() { None } else { Some(scratch::take(k * plan.rows * g.wo)) };
        for t in t0..t1 {
            let (img, oy0, oy1) = cv.tile(&plan, t);
            let tp = (oy1 - oy0) * g.wo;
            let xi = &x[img * g.in_len()..(img + 1) * g.in_len()];
            let lhs = MatRef::rows(&gy[img * cv.co * px + oy0 * g.wo..], px);
            let rhs = match col.as_mut() {
                None => MatRef::rows_t(&xi[oy0 * g.wo..], px),
                Some(col) => {
                    im2col(xi, &g, oy0, oy1, col);
                    MatRef::rows_t(col, tp)
                }
            };
            // SAFETY: `lhs` is the tile's `co x tp` output gradient (stride `px`, inside `gy`,
            // checked above), `rhs` its `tp x K` input (transposed, inside `x` or `col`), `dst`
            // this group's own `co x K` partial `acc`.
            unsafe {
                sgemm(cv.co, k, tp, MatMut::rows(acc, k), t > t0, lhs, rhs, plan.gemm_threads)
            };
        }
        if t1 == t0 {
            acc.fill(0.0);
        }
    };
    sum_groups(&mut dw[..cv.co * k], groups, accumulate);
}

/// `dx[n, c, h, w]` from `gy[n, co, ho, wo]` and the weight `w[co, c, kh, kw]`, as `policy`
/// says (bf16 for stride 1 in a bf16 policy).
///
/// `frozen`, when given, keeps the flipped weight and its Winograd transform across calls.
pub fn input_grad(
    cv: &Conv,
    gy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    policy: &KernelPolicy,
    frozen: Option<&Derived>,
) {
    let g = cv.g;
    if g.is_pointwise() {
        return input_grad_pointwise(cv, gy, w, dx);
    }
    // Stride 1: a forward convolution with the flipped weight, through Winograd where it
    // applies (whose weight transform flips on the fly) or with the flipped weight made (or
    // kept, for a frozen weight).
    if g.stride == 1 && g.ph < g.kh && g.pw < g.kw {
        // dx = conv(gy, flip(w)^T) with padding k - 1 - p: a forward convolution.
        let (kh, kw) = (g.kh, g.kw);
        let Some(gt) = Geom::new(cv.co, g.ho, g.wo, kh, kw, 1, kh - 1 - g.ph, kw - 1 - g.pw) else {
            return input_grad_col2im(cv, gy, w, dx);
        };
        if gt.ho != g.h || gt.wo != g.w {
            return input_grad_col2im(cv, gy, w, dx);
        }
        let t = Conv { n: cv.n, co: g.c, g: gt };
        if policy.bf16() && super::conv_bf16::pays(&t, policy.bf16_unit(), policy.winograd) {
            // In a bf16 policy (classifier guidance while sampling, training): the bf16
            // forward, packing the flipped weight straight from `w`.
            let zeros = vec![0f32; g.c];
            return super::conv_bf16::forward(
                &t,
                gy,
                w,
                true,
                &zeros,
                dx,
                policy.bf16_unit(),
                frozen.map(|d| &d.bf16_flipped),
            );
        }
        if policy.winograd && winograd::applies(&t) {
            // The transform reads the flipped weight straight from `w`.
            return forward_winograd(
                &t,
                gy,
                w,
                true,
                None,
                dx,
                frozen.map(|d| &d.flipped_winograd),
            );
        }
        let len = g.c * cv.co * kh * kw;
        let flip = |wt: &mut [f32]| flip_transpose(w, cv.co, g.c, kh * kw, wt);
        return match frozen {
            Some(d) => {
                let wt = d.flipped.get_or_init(|| {
                    let mut wt = vec![0f32; len];
                    flip(&mut wt);
                    wt
                });
                forward(&t, gy, wt, None, dx, false, None)
            }
            None => {
                let mut wt = scratch::take(len);
                flip(&mut wt);
                forward(&t, gy, &wt, None, dx, false, None)
            }
        };
    }
    input_grad_col2im(cv, gy, w, dx)
}

/// `dx = w^T gy` image by image for a 1x1 convolution: one gemm reading the weight
/// transposed in place.
fn input_grad_pointwise(cv: &Conv, gy: &[f32], w: &[f32], dx: &mut [f32]) {
    let g = cv.g;
    let (px, il) = (g.out_px(), g.in_len());
    assert!(cv.fits(dx.len(), w.len(), gy.len()), "conv input grad: arrays smaller than {cv:?}");
    let threads = rayon::current_num_threads().max(1);
    let par_imgs = threads > 1 && cv.n >= threads;
    let run = |(img, dxi): (usize, &mut [f32])| {
        let lhs = MatRef::rows_t(w, g.c);
        let rhs = MatRef::rows(&gy[img * cv.co * px..], px);
        let dst = MatMut::rows(dxi, px);
        // SAFETY: `lhs` is `w` read as `[c, co]`, `rhs` image `img` of `gy`, `dst` its `dx`
        // (sizes checked above); each image's `dx` is its own chunk.
        unsafe { sgemm(g.c, px, cv.co, dst, false, lhs, rhs, if par_imgs { 1 } else { threads }) };
    };
    let dx = &mut dx[..cv.n * il];
    if par_imgs {
        dx.par_chunks_mut(il.max(1)).enumerate().for_each(run);
    } else {
        dx.chunks_mut(il.max(1)).enumerate().for_each(run);
    }
}

/// `wt[c, o, t] = w[o, c, taps - 1 - t]` (the weight of the transposed convolution), in blocks
/// of 16 rows of `wt` on rayon: each row written in order, its `taps`-long runs gathered from
/// `w` (measured 1.6x faster than reading `w` in order and scattering the writes).
fn flip_transpose(w: &[f32], co: usize, c: usize, taps: usize, wt: &mut [f32]) {
    const BLOCK: usize = 16;
    let row = co * taps;
    wt[..c * row].par_chunks_mut(BLOCK * row).enumerate().for_each(|(b, dst)| {
        for (dc, drow) in dst.chunks_exact_mut(row).enumerate() {
            let ci = b * BLOCK + dc;
            for (o, d) in drow.chunks_exact_mut(taps).enumerate() {
                let s = &w[(o * c + ci) * taps..][..taps];
                if let (Ok(d), Ok(s)) =
                    (<&mut [f32; 9]>::try_from(&mut *d), <&[f32; 9]>::try_from(s))
                {
                    // 3x3, the common case: a fixed-size reversal the compiler unrolls.
                    for t in 0..9 {
                        d[t] = s[8 - t];
                    }
                } else {
                    for (t, v) in d.iter_mut().zip(s.iter().rev()) {
                        *t = *v;
                    }
                }
            }
        }
    });
}

/// The general input gradient: `dcol = w^T gy` per tile, then col2im, one image per task.
fn input_grad_col2im(cv: &Conv, gy: &[f32], w: &[f32], dx: &mut [f32]) {
    let g = cv.g;
    let (k, px, il) = (g.k(), g.out_px(), g.in_len());
    assert!(cv.fits(dx.len(), w.len(), gy.len()), "conv input grad: arrays smaller than {cv:?}");
    let plan = cv.plan();
    let threads = rayon::current_num_threads().max(1);
    let par_imgs = threads > 1 && cv.n >= threads;
    let gemm_threads = if par_imgs { 1 } else { threads };
    let run = |(img, dxi): (usize, &mut [f32])| {
        dxi.fill(0.0);
        let mut dcol = scratch::take(k * plan.rows * g.wo);
        for oy0 in (0..g.ho).step_by(plan.rows) {
            let oy1 = (oy0 + plan.rows).min(g.ho);
            let tp = (oy1 - oy0) * g.wo;
            let lhs = MatRef::rows_t(w, k);
            let rhs = MatRef::rows(&gy[img * cv.co * px + oy0 * g.wo..], px);
            let dst = MatMut::rows(&mut dcol, tp);
            // SAFETY: `lhs` is `w` read as `[K, co]`, `rhs` the band's `co x tp` output
            // gradient (stride `px`, inside `gy`, checked above), `dst` this task's `dcol`.
            unsafe { sgemm(k, tp, cv.co, dst, false, lhs, rhs, gemm_threads) };
            col2im_add(&dcol, &g, oy0, oy1, dxi);
        }
    };
    let dx = &mut dx[..cv.n * il];
    if par_imgs {
        dx.par_chunks_mut(il.max(1)).enumerate().for_each(run);
    } else {
        dx.chunks_mut(il.max(1)).enumerate().for_each(run);
    }
}
