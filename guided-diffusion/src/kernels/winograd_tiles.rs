//! Moving Winograd's 4x4 tiles between image planes and the tile-major buffers its transforms
//! read and write ([`super::winograd`], [`super::winograd_wgrad`]).
//!
//! A transform works on `L` tiles at a time, one lane per tile, so it wants each entry of the
//! tiles' patches as a contiguous run: `d[entry * ld + tile]`. Tiles start 4 pixels apart, so
//! entry `(r, k)` of the tiles of one tile row is every 4th pixel of a plane row. Instead of
//! gathering those one by one, each plane row is padded and split once into its 4 phases
//! (pixels `4q`, `4q + 1`, ...); entry `(r, k)` of a tile row is then a contiguous run of phase
//! `k % 4`, `k / 4` quads in. The output goes back the same way: the 4 phases of an output row
//! are interleaved into it.
//!
//! Runs of several planes (images) go into one buffer, their tiles one after the other, so
//! that the small planes of 8x8 and 16x16 layers (4 and 16 tiles) still fill every lane.

/// Gathers the `p x p` patches under the `th x tw` tiles (origins 4 apart) of `count` planes
/// `plane(i)` of `h x w` pixels, padded by `pad = (top, left)` zeros, zeros past the bottom and
/// right edges too: `d[(r * p + k) * ld + i * th * tw + ty * tw + tx] = plane(i)[4 ty + r -
/// top][4 tx + k - left]`. Returns `ld`, which leaves `spare` columns after the tiles (filled,
/// their values unspecified) so that lane steps may load whole vectors. `p` is 4 or 6 (at most
/// 4 + 3, the reach of one quad past a tile).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn gather<'a>(
    count: usize,
    plane: impl Fn(usize) -> &'a [f32],
    hw: (usize, usize),
    pad: (usize, usize),
    p: usize,
    (th, tw): (usize, usize),
    spare: usize,
    d: &mut Vec<f32>,
    row: &mut Vec<f32>,
) -> usize {
    // The usual tile-row widths (planes 8, 16, 32 and 64 pixels wide) as constants, so that
    // every run is one vector move; any other width through the general copies.
    macro_rules! with {
        ($p:literal, $tw:literal) => {
            gather_with::<$p, $tw>(count, plane, hw, pad, (th, tw), spare, d, row)
        };
    }
    match (p, tw) {
        (6, 2) => with!(6, 2),
        (6, 4) => with!(6, 4),
        (6, 8) => with!(6, 8),
        (6, 16) => with!(6, 16),
        (6, _) => with!(6, 0),
        (4, 2) => with!(4, 2),
        (4, 4) => with!(4, 4),
        (4, 8) => with!(4, 8),
        (4, 16) => with!(4, 16),
        (4, _) => with!(4, 0),
        _ => panic!("winograd_tiles::gather: patches of {p}, not 4 or 6"),
    }
}

/// `dst[..tw] = src[..tw]`: one fixed-size move when `TW` (= `tw`) is given, else [`copy_run`].
#[inline(always)]
fn run<const TW: usize>(dst: &mut [f32], src: &[f32], tw: usize) {
    if TW > 0 {
        dst[..TW].copy_from_slice(&src[..TW]);
    } else {
        copy_run(&mut dst[..tw], &src[..tw]);
    }
}

/// [`gather`] for patches of `P`, with the tile-row width `TW` (= `tw`) a constant, or 0.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gather_with<'a, const P: usize, const TW: usize>(
    count: usize,
    plane: impl Fn(usize) -> &'a [f32],
    (h, w): (usize, usize),
    (top, left): (usize, usize),
    (th, tw): (usize, usize),
    spare: usize,
    d: &mut Vec<f32>,
    row: &mut Vec<f32>,
) -> usize {
    const ZEROS: [f32; 64] = [0.0; 64];
    let p = P;
    debug_assert!(th > 0 && tw > 0 && (TW == 0 || TW == tw));
    let nt = th * tw;
    let ld = count * nt + spare;
    d.resize(p * p * ld, 0.0);
    // Quads per padded row: the tiles' `tw` plus the one their last patch reaches into.
    let nq = tw + (p - 1) / 4;
    let width = 4 * nq;
    row.resize(2 * width, 0.0);
    let (padded, phases) = row.split_at_mut(width);
    // Columns of the padded row that hold pixels.
    let (c0, c1) = (left.min(width), (left + w).min(width));
    for i in 0..count {
        let pl = &plane(i)[..h * w];
        let base = i * nt;
        for yy in 0..4 * (th - 1) + p {
            // Tile rows whose patches hold padded row `yy` (as their row `yy - 4 ty`).
            let ty0 = (yy + 1).saturating_sub(p).div_ceil(4);
            let ty1 = (yy / 4).min(th - 1);
            let iy = yy.wrapping_sub(top);
            if iy >= h {
                for ty in ty0..=ty1 {
                    let r = yy - 4 * ty;
                    for k in 0..P {
                        let dst = &mut d[(r * p + k) * ld + base + ty * tw..];
                        if TW > 0 && TW <= 64 {
                            run::<TW>(dst, &ZEROS, tw);
                        } else {
                            zero_run(&mut dst[..tw]);
                        }
                    }
                }
                continue;
            }
            zero_run(&mut padded[..c0]);
            copy_run(&mut padded[c0..c1], &pl[iy * w..][..c1 - c0]);
            zero_run(&mut padded[c1..]);
            {
                let (p0, rest) = phases.split_at_mut(nq);
                let (p1, rest) = rest.split_at_mut(nq);
                let (p2, p3) = rest.split_at_mut(nq);
                let quads = padded.chunks_exact(4).zip(p0).zip(p1).zip(p2).zip(p3);
                for ((((quad, a), b), c), e) in quads {
                    (*a, *b, *c, *e) = (quad[0], quad[1], quad[2], quad[3]);
                }
            }
            for ty in ty0..=ty1 {
                let r = yy - 4 * ty;
                for k in 0..P {
                    let src = &phases[(k % 4) * nq + k / 4..];
                    run::<TW>(&mut d[(r * p + k) * ld + base + ty * tw..], src, tw);
                }
            }
        }
    }
    ld
}

/// Scatters the 4x4 output tiles of plane `i` back into it: `plane[4 ty + a][4 tx + b] =
/// y[(a * 4 + b) * ld + i * th * tw + ty * tw + tx]` for its `ho x wo` pixels (the tiles' parts
/// past the edges are dropped). `row` is scratch.
#[inline(always)]
pub(super) fn scatter(
    plane: &mut [f32],
    i: usize,
    (ho, wo): (usize, usize),
    (th, tw): (usize, usize),
    y: &[f32],
    ld: usize,
    row: &mut Vec<f32>,
) {
    let nt = th * tw;
    row.resize(4 * tw, 0.0);
    let plane = &mut plane[..ho * wo];
    for oy in 0..ho {
        let (ty, a) = (oy / 4, oy % 4);
        let at = |b: usize| &y[(a * 4 + b) * ld + i * nt + ty * tw..][..tw];
        let (s0, s1, s2, s3) = (at(0), at(1), at(2), at(3));
        let quads = row.chunks_exact_mut(4).zip(s0).zip(s1).zip(s2).zip(s3);
        for ((((quad, a), b), c), e) in quads {
            quad.copy_from_slice(&[*a, *b, *c, *e]);
        }
        copy_run(&mut plane[oy * wo..][..wo], &row[..wo]);
    }
}

/// `dst.copy_from_slice(src)` for the short runs here (a few to a few dozen floats), in
/// fixed-size pieces that compile to vector moves: no call to `memcpy` per run.
#[inline(always)]
pub(super) fn copy_run(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    let mut chunks = dst.chunks_exact_mut(8).zip(src.chunks_exact(8));
    for (d, s) in &mut chunks {
        let d: &mut [f32; 8] = d.try_into().unwrap();
        *d = s.try_into().unwrap();
    }
    let done = dst.len() - dst.len() % 8;
    let (mut dst, mut src) = (&mut dst[done..], &src[done..]);
    if dst.len() >= 4 {
        let (d, rest) = dst.split_at_mut(4);
        <&mut [f32; 4]>::try_from(d).unwrap().copy_from_slice(&src[..4]);
        (dst, src) = (rest, &src[4..]);
    }
    if dst.len() >= 2 {
        let (d, rest) = dst.split_at_mut(2);
        <&mut [f32; 2]>::try_from(d).unwrap().copy_from_slice(&src[..2]);
        (dst, src) = (rest, &src[2..]);
    }
    if let (Some(d), Some(s)) = (dst.first_mut(), src.first()) {
        *d = *s;
    }
}

/// `dst.fill(0.0)` for short runs, as [`copy_run`] copies them.
#[inline(always)]
pub(super) fn zero_run(dst: &mut [f32]) {
    const ZEROS: [f32; 64] = [0.0; 64];
    for d in dst.chunks_mut(64) {
        copy_run(d, &ZEROS[..d.len()]);
    }
}

/// Where a block's 36 transformed planes lie (`V`, `M`, `Q`: one per position `xi` of the 6x6
/// tile): value `(xi, channel, tile)` at `xi * plane + channel * ld + tile`.
///
/// Rows and planes start at multiples of 16 floats (in a buffer from
/// [`take_aligned`](super::scratch::take_aligned): whole cache lines), so that the transforms'
/// 16-lane vectors do not straddle lines. And the planes are one cache line further apart than
/// their size: the transforms write (or read) all 36 at once, and planes of a power-of-two size
/// (32 channels of 128 tiles: 16 KiB) would put those 36 streams in the same L1 sets, where
/// they evict each other on every access (measured: the input transform of a 32-channel layer
/// cost about 140 cycles per tile and channel, most of it there).
#[derive(Clone, Copy, Debug)]
pub(super) struct Planes {
    pub ld: usize,
    pub plane: usize,
}

impl Planes {
    pub fn new(channels: usize, tiles: usize) -> Planes {
        let ld = tiles.next_multiple_of(16);
        Planes { ld, plane: channels * ld + 16 }
    }

    /// Floats of all 36 planes.
    pub fn len(&self) -> usize {
        36 * self.plane
    }

    /// Offset of `(xi, channel, tile 0)`.
    pub fn at(&self, xi: usize, channel: usize) -> usize {
        xi * self.plane + channel * self.ld
    }
}

/// Planes per task for `tiles_per_plane` tiles each, out of `planes`: enough for 64 tiles (4
/// lane steps), so that the transforms of small planes run on full lanes.
pub(super) fn planes_per_task(tiles_per_plane: usize, planes: usize) -> usize {
    64usize.div_ceil(tiles_per_plane.max(1)).clamp(1, planes.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry of every patch, for odd sizes and both paddings, against the definition.
    #[test]
    fn gather_is_the_definition() {
        for (h, w, top, left, p) in [
            (8usize, 8usize, 1usize, 1usize, 6usize),
            (13, 11, 1, 1, 6),
            (5, 9, 2, 0, 6),
            (8, 8, 0, 0, 4),
            (7, 10, 0, 0, 4),
        ] {
            let count = 3;
            let (th, tw) = if p == 6 {
                ((h + 2 * top - 2).div_ceil(4), (w + 2 * left - 2).div_ceil(4))
            } else {
                (h.div_ceil(4), w.div_ceil(4))
            };
            let planes: Vec<Vec<f32>> = (0..count)
                .map(|i| (0..h * w).map(|j| (i * 1000 + j + 1) as f32).collect())
                .collect();
            let (mut d, mut row) = (Vec::new(), Vec::new());
            let ld = gather(
                count,
                |i| &planes[i][..],
                (h, w),
                (top, left),
                p,
                (th, tw),
                16,
                &mut d,
                &mut row,
            );
            for i in 0..count {
                for ty in 0..th {
                    for tx in 0..tw {
                        for r in 0..p {
                            for k in 0..p {
                                let (iy, ix) = (
                                    (4 * ty + r) as isize - top as isize,
                                    (4 * tx + k) as isize - left as isize,
                                );
                                let want =
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w
                                    {
                                        planes[i][iy as usize * w + ix as usize]
                                    } else {
                                        0.0
                                    };
                                let got = d[(r * p + k) * ld + i * th * tw + ty * tw + tx];
                                assert_eq!(got, want, "{h}x{w} pad {top},{left} p {p}: plane {i} tile ({ty},{tx}) entry ({r},{k})");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn scatter_is_the_definition() {
        let (ho, wo, count) = (7usize, 10usize, 2usize);
        let (th, tw) = (ho.div_ceil(4), wo.div_ceil(4));
        let ld = count * th * tw + 5;
        let y: Vec<f32> = (0..16 * ld).map(|j| j as f32).collect();
        let mut planes = vec![vec![-1f32; ho * wo]; count];
        let mut row = Vec::new();
        for (i, plane) in planes.iter_mut().enumerate() {
            scatter(plane, i, (ho, wo), (th, tw), &y, ld, &mut row);
        }
        for (i, plane) in planes.iter().enumerate() {
            for oy in 0..ho {
                for ox in 0..wo {
                    let (ty, a, tx, b) = (oy / 4, oy % 4, ox / 4, ox % 4);
                    let want = y[(a * 4 + b) * ld + i * th * tw + ty * tw + tx];
                    assert_eq!(plane[oy * wo + ox], want, "plane {i} ({oy},{ox})");
                }
            }
        }
    }
}
