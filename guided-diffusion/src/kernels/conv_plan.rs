//! A convolution's geometry and how its work is cut: the one description the convolution
//! algorithms share (`conv_cpu`, `conv_bf16`, `winograd`, `winograd_wgrad`), kept apart from
//! them so that none imports another back.
//!
//! Work is split into *tiles*: one image and a band of output rows small enough that its
//! column matrix stays in cache. Tiles run in parallel on rayon with single-threaded gemms when
//! there are enough of them; otherwise they run one after the other with a threaded gemm.
//! Weight gradients sum over tiles into per-thread partials ([`sum_groups`]).
use rayon::prelude::*;

use super::im2col::Geom;
use super::scratch;

/// Target size of one tile's column matrix, in floats: 128 Ki floats = 512 KiB, the L2 of a
/// Zen3 core (256 KiB..2 MiB measured within noise of each other here).
const TILE_FLOATS: usize = 128 * 1024;

/// A batch convolution: `n` images of geometry `g` into `co` output channels.
#[derive(Clone, Copy, Debug)]
pub struct Conv {
    pub n: usize,
    pub co: usize,
    pub g: Geom,
}

/// How a batch is cut into tiles, and how many threads each gemm gets.
pub(super) struct Plan {
    pub rows: usize,
    pub tiles_per_img: usize,
    pub tiles: usize,
    /// run tiles in parallel (true) or one by one with a threaded gemm (false)
    pub par_tiles: bool,
    pub gemm_threads: usize,
}

impl Plan {
    /// Runs `f` on every tile index, in parallel or one after the other as planned.
    pub(super) fn each_tile(&self, f: impl Fn(usize) + Sync + Send) {
        if self.par_tiles {
            (0..self.tiles).into_par_iter().for_each(f);
        } else {
            (0..self.tiles).for_each(f);
        }
    }
}

impl Conv {
    /// The lengths of the input, weight and output arrays (`n*c*h*w`, `co*c*kh*kw`,
    /// `n*co*ho*wo`), or `None` if one does not fit a `usize`.
    pub fn lens(&self) -> Option<(usize, usize, usize)> {
        let g = &self.g;
        Some((
            self.n.checked_mul(g.in_len())?,
            self.co.checked_mul(g.k())?,
            self.n.checked_mul(self.co)?.checked_mul(g.out_px())?,
        ))
    }

    /// Whether arrays of these lengths hold the input, the weight and the output: the bounds
    /// check (it cannot wrap) that the unsafe pointer writes of the kernels rest on.
    pub fn fits(&self, x: usize, w: usize, out: usize) -> bool {
        self.lens().is_some_and(|(xl, wl, ol)| x >= xl && w >= wl && out >= ol)
    }

    pub(super) fn plan(&self) -> Plan {
        let g = &self.g;
        let threads = rayon::current_num_threads().max(1);
        let per_row = (g.k() * g.wo).max(1);
        let mut rows = (TILE_FLOATS / per_row).clamp(1, g.ho.max(1));
        // At least 128 output pixels per tile (the gemm's n), even past the cache target.
        rows = rows.max(128usize.div_ceil(g.wo.max(1))).min(g.ho.max(1));
        // With fewer images than threads, cut images into at least `threads` bands if that
        // leaves bands of a useful size (>= 64 output pixels).
        if self.n < threads && g.ho >= threads {
            let band = g.ho.div_ceil((2 * threads).div_ceil(self.n.max(1))).max(1);
            if band * g.wo >= 64 {
                rows = rows.min(band);
            }
        }
        let tiles_per_img = g.ho.div_ceil(rows).max(1);
        let tiles = self.n * tiles_per_img;
        let par_tiles = threads > 1 && tiles >= threads;
        Plan {
            rows,
            tiles_per_img,
            tiles,
            par_tiles,
            gemm_threads: if par_tiles { 1 } else { threads },
        }
    }

    /// Tile `t`: (image, first output row, end output row).
    pub(super) fn tile(&self, p: &Plan, t: usize) -> (usize, usize, usize) {
        let img = t / p.tiles_per_img;
        let oy0 = (t % p.tiles_per_img) * p.rows;
        (img, oy0, (oy0 + p.rows).min(self.g.ho))
    }
}

/// `dst = sum over groups gi < groups of f(gi)`, where `f(acc, gi)` overwrites `acc` with
/// group `gi`'s sum: group 0 writes `dst` itself, the others their own scratch partials, all
/// in parallel, then the partials are added (the per-thread weight-gradient sums).
pub(super) fn sum_groups(dst: &mut [f32], groups: usize, f: impl Fn(&mut [f32], usize) + Sync) {
    if dst.is_empty() {
        return;
    }
    if groups <= 1 {
        return f(dst, 0);
    }
    let len = dst.len();
    let mut partials = scratch::take((groups - 1) * len);
    {
        let mut parts: Vec<&mut [f32]> = vec![&mut *dst];
        parts.extend(partials.chunks_exact_mut(len));
        parts.into_par_iter().enumerate().for_each(|(gi, acc)| f(acc, gi));
    }
    add_partials(dst, &partials);
}

/// `dst += sum of the dst-sized partials` laid end to end in `partials`, in parallel over
/// chunks of `dst` (the per-thread partial sums of the weight gradients).
pub(super) fn add_partials(dst: &mut [f32], partials: &[f32]) {
    let len = dst.len();
    if len == 0 || partials.is_empty() {
        return;
    }
    let chunk = len.div_ceil(rayon::current_num_threads().max(1)).max(4096);
    dst.par_chunks_mut(chunk).enumerate().for_each(|(ci, d)| {
        let (off, dl) = (ci * chunk, d.len());
        for p in partials.chunks_exact(len) {
            for (a, b) in d.iter_mut().zip(&p[off..off + dl]) {
                *a += *b;
            }
        }
    });
}
