//! The bf16 convolution forward ([`super::bf16`]): the bf16 product (AMX or AVX512_BF16, or
//! rounding + f32 gemm without them) of the weight with the column matrix, which goes from the
//! image straight into the packed form two rows at a time, with the bias as the product's
//! starting value; or, for 3x3 stride-1 layers, read from an interleaved copy of the image.
//!
//! Winograd is not used here: its transforms scale and mix the inputs before the product,
//! which would round transformed values instead of the inputs (larger errors than the bf16
//! inputs alone), and the direct bf16 product is already faster than f32 Winograd on AMX.
use std::sync::OnceLock;

use rayon::prelude::*;

use super::amx;
use super::bf16::{self, PackedWeight, Rhs, Unit};
use super::conv_plan::Conv;
use super::disjoint::Disjoint;
use super::im2col::Geom;
use super::scratch;

/// A convolution weight `[co, c, taps]` as stored, or read from the weight `[c, co, taps]`
/// of the convolution whose input gradient this is (flipped and transposed).
struct Weight<'a> {
    w: &'a [f32],
    flipped: bool,
    co: usize,
    c: usize,
    taps: usize,
}

impl Weight<'_> {
    /// Row `o` in im2col order: `out[ci * taps + tap]`.
    fn row_ck(&self, o: usize, out: &mut [f32]) {
        let (c, t) = (self.c, self.taps);
        if !self.flipped {
            out.copy_from_slice(&self.w[o * c * t..(o + 1) * c * t]);
            return;
        }
        for (ci, dst) in out.chunks_exact_mut(t).enumerate() {
            let src = &self.w[(ci * self.co + o) * t..(ci * self.co + o + 1) * t];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }

    /// Row `o` tap-major: `out[tap * c + ci]`.
    fn row_tc(&self, o: usize, out: &mut [f32]) {
        let (c, t) = (self.c, self.taps);
        for ci in 0..c {
            let src = if self.flipped { (ci * self.co + o) * t } else { (o * c + ci) * t };
            let src = &self.w[src..src + t];
            for tap in 0..t {
                out[tap * c + ci] = if self.flipped { src[t - 1 - tap] } else { src[tap] };
            }
        }
    }
}

/// The packed forms of a frozen weight, kept across calls ([`super::forms`]): packed for the
/// bf16 units (AMX and AVX512_BF16 read the same) and rounded for the rounding path (the
/// policy chooses per call).
#[derive(Default)]
pub struct Cache {
    packed: OnceLock<PackedWeight>,
    rounded: OnceLock<PackedWeight>,
    taps: OnceLock<TapsWeight>,
}

/// `out[n, co, ho, wo] = conv(x, w) + bias` with bf16 inputs and weights, f32 sums.
/// `cache`, when given, keeps the packed weight across calls (a frozen weight's).
/// With `flipped`, `w` is the weight of the convolution this one is the input gradient of
/// (`[c, co, kh, kw]`), read flipped and transposed (as `conv_cpu::input_grad` does). `unit`:
/// what multiplies (the policy's choice, one the CPU has).
pub fn forward(
    cv: &Conv,
    x: &[f32],
    w: &[f32],
    flipped: bool,
    bias: &[f32],
    out: &mut [f32],
    unit: Unit,
    cache: Option<&Cache>,
) {
    let g = cv.g;
    let (k, px) = (g.k(), g.out_px());
    assert!(cv.fits(x.len(), w.len(), out.len()) && bias.len() == cv.co);
    if cv.n * cv.co * px == 0 {
        return; // no output (e.g. the input gradient of a layer without input channels)
    }
    let wt = Weight { w, flipped, co: cv.co, c: g.c, taps: g.kh * g.kw };
    if taps_apply(&g, unit) {
        return forward_taps(unit, cv, x, &wt, bias, out, cache.map(|c| &c.taps));
    }
    let pack = || PackedWeight::from_rows(cv.co, k, unit, |o, row| wt.row_ck(o, row));
    let own;
    let pw = match cache.map(|c| if unit.packs() { &c.packed } else { &c.rounded }) {
        Some(p) => p.get_or_init(pack),
        None => {
            own = pack();
            &own
        }
    };
    let plan = cv.plan();
    let out = Disjoint::new(&mut out[..cv.n * cv.co * px]);
    let run = |t: usize| {
        let (img, oy0, oy1) = cv.tile(&plan, t);
        let tp = (oy1 - oy0) * g.wo;
        let xi = &x[img * g.in_len()..(img + 1) * g.in_len()];
        let rhs = if g.is_pointwise() {
            Rhs::Rows { b: &xi[oy0 * g.wo..], ld: px }
        } else {
            Rhs::Im2col { x: xi, g: &g, oy0, oy1 }
        };
        // This tile's part of the output: `co` rows of `tp` pixels, `px` apart.
        let dst = out.ptr(img * cv.co * px + oy0 * g.wo);
        // SAFETY: `dst` is this tile's part (inside `out`: sizes checked above), written by no
        // other tile; `rhs` has the weight's `k` rows of `tp` values; one bias per row; `pw`
        // is packed for `unit`, the policy's, which the CPU has.
        unsafe { bf16::gemm(unit, pw, &rhs, tp, bias, dst, px, plan.gemm_threads) };
    };
    plan.each_tile(run);
}

/// Whether a convolution of a bf16 policy goes through the bf16 product, rather than f32.
///
/// Always on AMX, whose products are several times f32's, and on the rounding path (slower, but
/// the numerics a bf16 policy asks for; programs do not run it). With AVX512_BF16, whose
/// products are only twice f32's FMA, not where f32 Winograd is faster, doing 4x fewer
/// multiplications: layers Winograd takes ([`winograd::applies`], `winograd` on) that are wide
/// (at least 128 input and output channels: Winograd's products are efficient there) or whose
/// rows are too narrow for the taps form (under 16 pixels: the bf16 product then packs a column
/// matrix). Measured at one thread on Zen 4, f32 / bf16 time: the 64x64 model's 192 channels at
/// 64x64 0.88 and 384 at 32x32 0.77 (f32 kept); 576 at 16x16 2.03 and 768 at 8x8 1.51 (no
/// Winograd there); the small model's 32-128 channels at 32x32 and 16x16, batch 32, 1.04-1.39;
/// its 64 channels at 8x8 0.70 (f32 kept). Those layers stay f32 in a bf16 policy: more
/// precise, and not slower.
pub fn pays(cv: &Conv, unit: Unit, winograd: bool) -> bool {
    match unit {
        Unit::Amx | Unit::Rounding => true,
        Unit::Avx512Bf16 => {
            let wide = cv.g.c.min(cv.co) >= 128;
            !(winograd && super::winograd::applies(cv) && (wide || !taps_apply(&cv.g, unit)))
        }
    }
}

/// Whether the shifted-window ("taps") form applies: a bf16 unit (AMX or AVX512_BF16), a
/// multi-tap stride-1 kernel, input channels, and output rows of at least 16 pixels (a B block
/// is 16 pixels of one row).
pub fn taps_apply(g: &Geom, unit: Unit) -> bool {
    unit.packs() && g.stride == 1 && g.kh * g.kw > 1 && g.c > 0 && g.wo >= amx::TILE
}

/// A weight `[co, c, kh, kw]` packed as A (AMX and AVX512_BF16) for the taps form: depth step
/// `(i * kw + j) * cblocks + cb` holds tap `(i, j)` of channels `32 cb .. 32 cb + 32`.
pub struct TapsWeight {
    m: usize,
    data: Vec<u16>,
}

impl TapsWeight {
    fn new(w: &Weight, co: usize, g: &Geom) -> TapsWeight {
        let (c, taps) = (g.c, g.kh * g.kw);
        let cblocks = c.div_ceil(amx::DEPTH);
        let steps = taps * cblocks;
        let mb = bf16::blocks32(co) * 2;
        let mut data = vec![0u16; mb * steps * amx::TILE_ELEMS];
        // One task per 16 output channels (their A tiles are contiguous); weights of
        // variables are packed on every call, so this runs in parallel, a row at a time
        // through a tap-major buffer.
        data.par_chunks_mut((steps * amx::TILE_ELEMS).max(1)).enumerate().for_each(|(ib, blk)| {
            let mut row = vec![0f32; taps * c];
            for r in 0..amx::TILE.min(co.saturating_sub(ib * amx::TILE)) {
                w.row_tc(ib * amx::TILE + r, &mut row);
                for tap in 0..taps {
                    for cb in 0..cblocks {
                        let c0 = cb * amx::DEPTH;
                        let len = (c - c0).min(amx::DEPTH);
                        let dst = &mut blk
                            [(tap * cblocks + cb) * amx::TILE_ELEMS + r * amx::DEPTH..][..len];
                        bf16::to_bits16(&row[tap * c + c0..tap * c + c0 + len], dst);
                    }
                }
            }
        });
        TapsWeight { m: co, data }
    }
}

/// [`forward`] in the taps form: the image goes once into a zero-padded, channel-pair
/// interleaved bf16 copy `[c/2][h + 2ph][wp]`, and every B tile is read from it in place (16
/// channel pairs x 16 pixels of one row, shifted by the tap): no column matrix.
fn forward_taps(
    unit: Unit,
    cv: &Conv,
    x: &[f32],
    w: &Weight,
    bias: &[f32],
    out: &mut [f32],
    packed: Option<&OnceLock<TapsWeight>>,
) {
    let g = cv.g;
    let px = g.out_px();
    let own;
    let tw = match packed {
        Some(p) => p.get_or_init(|| TapsWeight::new(w, cv.co, &g)),
        None => {
            own = TapsWeight::new(w, cv.co, &g);
            &own
        }
    };
    const T: usize = amx::TILE;
    let cblocks = g.c.div_ceil(amx::DEPTH);
    let pairs = cblocks * T;
    let hp = g.h + 2 * g.ph;
    let xblocks = g.wo.div_ceil(T);
    let wp = (g.w + 2 * g.pw).max(xblocks * T + g.kw - 1);
    let plane = hp * wp; // u32 pairs per channel pair
    let offsets: Vec<usize> = (0..g.kh * g.kw * cblocks)
        .map(|step| {
            let (tap, cb) = (step / cblocks, step % cblocks);
            let (i, j) = (tap / g.kw, tap % g.kw);
            4 * (cb * T * plane + i * wp + j)
        })
        .collect();
    let layout = amx::BLayout { offsets: &offsets, stride: 4 * plane };
    let mb = bf16::blocks32(cv.co) * 2;
    let threads = rayon::current_num_threads().max(1);
    let out = Disjoint::new(&mut out[..cv.n * cv.co * px]);
    // One image: interleave it, then the product over its pixel blocks on `parts` threads.
    let image = |img: usize, parts: usize| {
        let xi = &x[img * g.in_len()..(img + 1) * g.in_len()];
        let mut buf = scratch::take(pairs * plane);
        let xp: &mut [u32] = bytemuck::cast_slice_mut(&mut buf[..]);
        interleave(xi, &g, wp, hp, pairs, xp);
        let xp: &[u32] = xp;
        let mut blocks: Vec<amx::Block> = Vec::with_capacity(g.ho * xblocks + 1);
        for oy in 0..g.ho {
            for xb in 0..xblocks {
                blocks.push(amx::Block {
                    b: xp[oy * wp + xb * T..].as_ptr().cast::<u16>(),
                    col: oy * g.wo + xb * T,
                    cols: (g.wo - xb * T).min(T),
                });
            }
        }
        if blocks.len() % 2 == 1 {
            blocks.push(amx::Block { b: xp.as_ptr().cast::<u16>(), col: 0, cols: 0 });
        }
        // Image `img`'s output: `co` rows of `px` pixels.
        let dst = out.offset(img * cv.co * px);
        let run = |range: &[amx::Block]| {
            // SAFETY: `unit` is AMX or AVX512_BF16, which the CPU has (`taps_apply`, the
            // policy); `tw` holds `co` rows packed for the image's
            // `kh * kw * cblocks` steps; every block's B tiles (16 channel pairs `plane` apart,
            // shifted by a tap's offset) lie inside the padded, interleaved image `xp`, which
            // is `wp >= xblocks * 16 + kw - 1` wide and `hp` high; `bias` has `co` values;
            // `dst` is this image's output, of which this call writes the columns of the
            // blocks in `range` and no other call those.
            unsafe {
                unit.gemm_blocks(
                    0,
                    mb,
                    tw.data.as_ptr(),
                    tw.m,
                    amx::Start::Bias(bias),
                    range,
                    &layout,
                    dst.ptr(0),
                    px,
                )
            }
        };
        let npairs = blocks.len() / 2;
        let parts = parts.clamp(1, npairs.max(1));
        if parts == 1 {
            run(&blocks);
        } else {
            (0..parts).into_par_iter().for_each(|p| {
                run(&blocks[2 * (p * npairs / parts)..2 * ((p + 1) * npairs / parts)]);
            });
        }
    };
    if cv.n >= threads {
        (0..cv.n).into_par_iter().for_each(|img| image(img, 1));
    } else {
        (0..cv.n).for_each(|img| image(img, threads));
    }
}

/// `xp[p][y][x]` = the bf16 pair (channel 2p, channel 2p + 1) of the image at
/// `(y - ph, x - pw)`, zero outside the image and past the channels.
fn interleave(xi: &[f32], g: &Geom, wp: usize, hp: usize, pairs: usize, xp: &mut [u32]) {
    let hw = g.h * g.w;
    let zeros = vec![0f32; g.w];
    for p in 0..pairs {
        let (c0, c1) = (2 * p, 2 * p + 1);
        for y in 0..hp {
            let row = &mut xp[(p * hp + y) * wp..(p * hp + y + 1) * wp];
            let iy = y.wrapping_sub(g.ph);
            if iy >= g.h || c0 >= g.c {
                row.fill(0);
                continue;
            }
            let r0 = &xi[c0 * hw + iy * g.w..c0 * hw + (iy + 1) * g.w];
            let r1 = if c1 < g.c {
                &xi[c1 * hw + iy * g.w..c1 * hw + (iy + 1) * g.w]
            } else {
                &zeros[..]
            };
            row[..g.pw].fill(0);
            row[g.pw + g.w..].fill(0);
            bf16::pack_pairs(r0, r1, &mut row[g.pw..g.pw + g.w]);
        }
    }
}

/// Whether [`weight_grad`] is worth it over the f32 weight gradient: AMX, and at least 128
/// output channels (AVX512_BF16's products are only twice f32's, which the packing eats). Its operands are packed per tile (the output gradient and the transposed
/// column matrix), at about the same cost per value whatever the layer; the product does
/// `2 * co` FLOPs per packed value, so thin layers spend their time packing (the small
/// Fashion-MNIST model, 32-64 channels: no faster than f32 Winograd; the 64x64 model's
/// 192-768 channel layers: training step 4.94 -> 4.53 s).
pub fn weight_grad_applies(cv: &Conv, unit: Unit) -> bool {
    unit == Unit::Amx && cv.co >= 128
}

/// The weight gradient in bf16 on `unit` (callers check [`weight_grad_applies`] with the
/// policy's unit; any unit the CPU has but the rounding path works):
/// `dw[co, K] = sum over images and pixels of gy[co, px] * im2col(x)[K, px]`, with `gy` and
/// `x` rounded to bf16 and f32 sums. Tiles (an image's band of output rows) are the depth of
/// the product: the band's `gy` is A, its transposed column matrix B, and each thread
/// accumulates its tiles into its own partial (`conv_plan::sum_groups`).
pub fn weight_grad(unit: Unit, cv: &Conv, x: &[f32], gy: &[f32], dw: &mut [f32]) {
    let g = cv.g;
    let (k, px) = (g.k(), g.out_px());
    assert!(unit.packs(), "conv_bf16::weight_grad needs AMX or AVX512_BF16");
    assert!(cv.fits(x.len(), dw.len(), gy.len()));
    let dw = &mut dw[..cv.co * k];
    if px == 0 || cv.n == 0 {
        return dw.fill(0.0);
    }
    let plan = cv.plan();
    let groups = rayon::current_num_threads().max(1).min(plan.tiles).max(1);
    let bounds = |gi: usize| (gi * plan.tiles / groups, (gi + 1) * plan.tiles / groups);
    let accumulate = |acc: &mut [f32], gi: usize| {
        let (t0, t1) = bounds(gi);
        acc.fill(0.0);
        let mut col = scratch::take(k * plan.rows * g.wo);
        for t in t0..t1 {
            let (img, oy0, oy1) = cv.tile(&plan, t);
            let tp = (oy1 - oy0) * g.wo;
            let xi = &x[img * g.in_len()..(img + 1) * g.in_len()];
            let gyb = &gy[img * cv.co * px + oy0 * g.wo..];
            let col = &mut col[..k * tp];
            super::im2col::im2col(xi, &g, oy0, oy1, col);
            let a = PackedWeight::from_rows(cv.co, tp, unit, |o, row| {
                row.copy_from_slice(&gyb[o * px..o * px + tp])
            });
            let b = bf16::PackedB::new(&Rhs::Cols { b: col, ld: tp }, tp, k);
            // SAFETY: `a` is packed for `unit` (a hardware unit: checked above; the policy's,
            // which the CPU has) with `tp` depth as `b`; `acc` is this group's own `[co, K]`
            // partial, readable and writable.
            unsafe { bf16::gemm_packed(unit, &a, &b, amx::Start::Dst, acc.as_mut_ptr(), k, 1) };
        }
    };
    super::conv_plan::sum_groups(dw, groups, accumulate);
}
