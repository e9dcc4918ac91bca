//! bf16 products: convolutions (and attention's two products) whose inputs and weights are
//! rounded to bfloat16 and whose products are summed in f32, like PyTorch's CPU autocast.
//!
//! The reference samples its released models in float16 (`--use_fp16 True`): it casts the
//! convolutions' weights and activations to half precision and keeps GroupNorm in f32. Here
//! the same idea serves speed on CPUs with bf16 hardware, chosen at run time ([`Unit`]):
//! Intel AMX ([`super::amx`]), where a bf16 matrix product is several times faster than f32,
//! or AVX512_BF16 ([`super::dpbf16`], AMD Zen 4/5, Intel Cooper Lake), twice an f32 FMA's
//! work per instruction; and a bf16 weight is half the bytes, which is what the small 16x16
//! and 8x8 layers at batch 1 wait for. Both read the same packed operands. With a bf16 policy:
//! - convolution forwards and the input gradients of stride-1 convolutions (classifier
//!   guidance, training) are bf16 products;
//! - so are the weight gradients of convolutions with >= 128 output channels (training, on
//!   AMX);
//! - so are attention's `q^T k` and `v w^T` in the forward pass;
//! - everything else stays f32: GroupNorm, softmax, the linear layers, the diffusion
//!   arithmetic, thinner layers' weight gradients, the attention backward, the optimizer.
//!
//! The numerics are defined without bf16 hardware: round every input and weight to the
//! nearest bf16 (ties to even, NaN kept), multiply exactly and sum in f32. Without it
//! ([`Unit::Rounding`]) the same rounding goes through the f32 matrix product, so results
//! agree with AMX and AVX512_BF16 up to the order of the f32 sums (and both treating bf16
//! denormals as zero); that is what the tests check. The rounding path is slower than f32,
//! which is why programs run f32 instead where the CPU has neither unit (`gdiff` says so).
//!
//! It is opt-in, per network or call: a [`KernelPolicy`](super::KernelPolicy) with
//! [`Precision::Bf16`](super::Precision). `gdiff sample --precision bf16` and `gdiff train
//! --precision bf16` give their networks one.
use super::amx;
use super::disjoint::Disjoint;
use super::dpbf16;
use super::im2col::{im2col_row, Geom};

/// The f32 bit pattern of `x` rounded to the nearest bf16 (ties to even; NaN stays NaN,
/// quiet), low 16 bits zero.
#[inline(always)]
pub fn round_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    if b & 0x7fff_ffff > 0x7f80_0000 {
        (b | 0x0040_0000) & 0xffff_0000
    } else {
        rounded
    }
}

/// The bf16 pair `(lo, hi)` as one u32 (`lo` in the lower half), as AMX reads B.
#[inline(always)]
pub fn pair_bits(lo: f32, hi: f32) -> u32 {
    round_bits(hi) | (round_bits(lo) >> 16)
}

/// `x` rounded to the nearest bf16, as an f32.
#[inline(always)]
pub fn round(x: f32) -> f32 {
    f32::from_bits(round_bits(x))
}

/// Rounds every value of `xs` to bf16 in place.
pub fn round_slice(xs: &mut [f32]) {
    for x in xs {
        *x = round(*x);
    }
}

/// What multiplies the bf16 products: the policy's choice among what the CPU has
/// ([`KernelPolicy::bf16_unit`](super::KernelPolicy::bf16_unit)), passed to every product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Intel AMX tiles (`tdpbf16ps`, [`super::amx`]).
    Amx,
    /// AVX512_BF16 (`vdpbf16ps`, [`super::dpbf16`]), on the operands packed as for AMX.
    Avx512Bf16,
    /// No bf16 hardware: values rounded to bf16, multiplied by the f32 product (slower than
    /// f32; the definition of the numerics).
    Rounding,
}

impl Unit {
    /// The fastest unit this CPU has, AMX first (AMX if `amx` allows it, AVX512_BF16 if
    /// `avx512_bf16` does, else rounding).
    pub fn best(amx: bool, avx512_bf16: bool) -> Unit {
        if amx && amx::hardware() {
            Unit::Amx
        } else if avx512_bf16 && dpbf16::hardware() {
            Unit::Avx512Bf16
        } else {
            Unit::Rounding
        }
    }

    /// Whether the unit is hardware (AMX or AVX512_BF16), reading packed operands.
    pub fn packs(self) -> bool {
        self != Unit::Rounding
    }

    /// The unit's [`amx::gemm_blocks`] (`dpbf16::gemm_blocks` has the same contract).
    ///
    /// # Safety
    /// `self` is [`Unit::Amx`] or [`Unit::Avx512Bf16`], which the CPU has; the rest is the
    /// contract of `amx::gemm_blocks`.
    pub unsafe fn gemm_blocks(
        self,
        ib0: usize,
        ib1: usize,
        a: *const u16,
        m: usize,
        start: amx::Start,
        blocks: &[amx::Block],
        b: &amx::BLayout,
        dst: *mut f32,
        ldc: usize,
    ) {
        match self {
            // SAFETY: the CPU has AMX (the contract); the rest is the contract.
            Unit::Amx => unsafe { amx::gemm_blocks(ib0, ib1, a, m, start, blocks, b, dst, ldc) },
            // SAFETY: the CPU has AVX512_BF16 (the contract); the rest is the contract.
            Unit::Avx512Bf16 => unsafe {
                dpbf16::gemm_blocks(ib0, ib1, a, m, start, blocks, b, dst, ldc)
            },
            Unit::Rounding => {
                panic!("bf16::Unit::gemm_blocks: the rounding path has no packed products")
            }
        }
    }
}

/// A convolution weight `[co, K]` ready for the bf16 product.
pub enum PackedWeight {
    /// Packed A operand of AMX and AVX512_BF16 (`[m/16][k/32][16][32]` bf16).
    Tiles { m: usize, k: usize, data: Vec<u16> },
    /// The weight rounded to bf16 values, kept as f32 (the rounding path).
    Rounded(Vec<f32>),
}

impl PackedWeight {
    /// Packs `w` (`[m, k]` row-major) for `unit`.
    pub fn new(w: &[f32], m: usize, k: usize, unit: Unit) -> PackedWeight {
        assert!(w.len() >= m * k);
        Self::from_rows(m, k, unit, |r, row| row.copy_from_slice(&w[r * k..(r + 1) * k]))
    }

    /// Packs the `[m, k]` matrix whose row `r` `fill(r, row)` writes, in parallel, for `unit`.
    pub fn from_rows(
        m: usize,
        k: usize,
        unit: Unit,
        fill: impl Fn(usize, &mut [f32]) + Sync,
    ) -> PackedWeight {
        use rayon::prelude::*;
        if !unit.packs() {
            let mut r = vec![0f32; m * k];
            r.par_chunks_mut(k.max(1)).enumerate().for_each(|(row, dst)| {
                fill(row, dst);
                round_slice(dst);
            });
            return PackedWeight::Rounded(r);
        }
        let (mb, kb) = (blocks32(m) * 2, k.div_ceil(amx::DEPTH));
        let mut data = vec![0u16; mb * kb * amx::TILE_ELEMS];
        // One task per 16 rows (their tiles are contiguous).
        data.par_chunks_mut((kb * amx::TILE_ELEMS).max(1)).enumerate().for_each(|(ib, blk)| {
            let mut row = vec![0f32; k];
            for r in 0..amx::TILE.min(m.saturating_sub(ib * amx::TILE)) {
                fill(ib * amx::TILE + r, &mut row);
                for (kbi, chunk) in row.chunks(amx::DEPTH).enumerate() {
                    to_bits16(
                        chunk,
                        &mut blk[kbi * amx::TILE_ELEMS + r * amx::DEPTH..][..chunk.len()],
                    );
                }
            }
        });
        PackedWeight::Tiles { m, k, data }
    }
}

/// `out[i]` = the bf16 bits of `x[i]` (rounded to nearest even).
pub fn to_bits16(x: &[f32], out: &mut [u16]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (round_bits(v) >> 16) as u16;
    }
}

/// Number of 32-wide blocks covering `n`.
pub fn blocks32(n: usize) -> usize {
    n.div_ceil(32)
}

/// u32 words (bf16 pairs) of a packed B operand of depth `k` and `n` columns.
pub fn packed_b_len(k: usize, n: usize) -> usize {
    blocks32(n) * 2 * k.div_ceil(amx::DEPTH) * amx::TILE * amx::TILE
}

/// The right-hand side `B` (`[k, n]`) of a bf16 product, produced a row at a time.
pub enum Rhs<'a> {
    /// A row-major matrix with row stride `ld`.
    Rows { b: &'a [f32], ld: usize },
    /// The column matrix of output rows `oy0..oy1` of image `x` (never materialised whole).
    Im2col { x: &'a [f32], g: &'a Geom, oy0: usize, oy1: usize },
    /// The transpose of a row-major matrix with row stride `ld`: `B[k, n] = b[n * ld + k]`.
    Cols { b: &'a [f32], ld: usize },
}

impl Rhs<'_> {
    /// Writes row `r` (`out.len()` = n values).
    fn fill_row(&self, r: usize, out: &mut [f32]) {
        match self {
            Rhs::Rows { b, ld } => out.copy_from_slice(&b[r * ld..r * ld + out.len()]),
            Rhs::Im2col { x, g, oy0, oy1 } => im2col_row(x, g, r, *oy0, *oy1, out),
            Rhs::Cols { b, ld } => {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = b[j * ld + r];
                }
            }
        }
    }
}

/// Packs `k x n` rows from `rhs` as an AMX B operand: `[n/16][k/32][16 row pairs][16
/// columns]` u32 words, each the bf16 pair `(B[2p, j], B[2p + 1, j])` (lower half the even
/// row), zero outside `k x n`. Two rows at a time pass through small buffers, so an im2col
/// source goes straight from the image to the packed form.
pub fn pack_b(rhs: &Rhs, k: usize, n: usize, out: &mut [u32]) {
    let (nb, kb) = (blocks32(n) * 2, k.div_ceil(amx::DEPTH));
    assert!(out.len() >= packed_b_len(k, n));
    let mut rows = super::scratch::take(2 * n);
    let (r0, r1) = rows.split_at_mut(n);
    for p in 0..kb * amx::TILE {
        let (k0, k1) = (2 * p, 2 * p + 1);
        for (kk, buf) in [(k0, &mut *r0), (k1, &mut *r1)] {
            if kk < k {
                rhs.fill_row(kk, buf);
            } else {
                buf.fill(0.0);
            }
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") {
            // SAFETY: the features were just detected.
            unsafe { pack_pair_avx512(r0, r1, p, nb, kb, out) };
            continue;
        }
        pack_pair(r0, r1, p, nb, kb, out);
    }
}

/// [`pack_pair`] compiled for AVX-512.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_pair_avx512(
    r0: &[f32],
    r1: &[f32],
    p: usize,
    nb: usize,
    kb: usize,
    out: &mut [u32],
) {
    pack_pair(r0, r1, p, nb, kb, out)
}

/// [`pack_b`] for `Rhs::Cols { b, ld }` (`B[k, n] = b[n * ld + k]`): a B pair `(B[2p, j],
/// B[2p + 1, j])` is two adjacent values of row `j` of `b`, so each row is read once, in order.
pub fn pack_b_cols(b: &[f32], ld: usize, k: usize, n: usize, out: &mut [u32]) {
    const T: usize = amx::TILE;
    let kb = k.div_ceil(amx::DEPTH);
    assert!(out.len() >= packed_b_len(k, n) && (n == 0 || b.len() >= (n - 1) * ld + k));
    out[..packed_b_len(k, n)].fill(0);
    for j in 0..n {
        let row = &b[j * ld..j * ld + k];
        let base = (j / T) * kb * T * T + j % T;
        let mut pairs = row.chunks_exact(2);
        for (p, pr) in pairs.by_ref().enumerate() {
            out[base + p * T] = pair_bits(pr[0], pr[1]);
        }
        if let [last] = pairs.remainder() {
            out[base + (k / 2) * T] = round_bits(*last) >> 16;
        }
    }
}

/// `out[i]` = the bf16 pair `(a[i], b[i])` (lower half `a[i]`), for every `i`.
pub fn pack_pairs(a: &[f32], b: &[f32], out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the features were just detected.
        return unsafe { pack_pairs_avx512(a, b, out) };
    }
    pack_pairs_impl(a, b, out)
}

/// [`pack_pairs_impl`] compiled for AVX-512.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_pairs_avx512(a: &[f32], b: &[f32], out: &mut [u32]) {
    pack_pairs_impl(a, b, out)
}

#[inline(always)]
fn pack_pairs_impl(a: &[f32], b: &[f32], out: &mut [u32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = pair_bits(x, y);
    }
}

/// Row pair `p` (rows `r0`, `r1`, n values each) into its place in every column block.
#[inline(always)]
fn pack_pair(r0: &[f32], r1: &[f32], p: usize, nb: usize, kb: usize, out: &mut [u32]) {
    const T: usize = amx::TILE;
    let n = r0.len();
    let (kbi, kp) = (p / T, p % T);
    for jb in 0..nb {
        let dst = &mut out[((jb * kb + kbi) * T + kp) * T..][..T];
        let c0 = jb * T;
        let cols = n.saturating_sub(c0).min(T);
        if cols < T {
            dst.fill(0);
        }
        let c0 = c0.min(n);
        pack_pairs_impl(&r0[c0..c0 + cols], &r1[c0..c0 + cols], &mut dst[..cols]);
    }
}

/// `dst[r, c] = bias[r] + sum_k W[r, k] B[k, c]` in bf16 (`W` packed for `unit`, `B` the
/// `[k, n]` right-hand side `rhs`), `dst` with row stride `ldc`, on `threads` threads.
///
/// # Safety
/// `dst` must be valid for writes of `m` rows of `n` floats at row stride `ldc` and not
/// written by anyone else meanwhile; `rhs` must have the weight's `k` rows of `n` values;
/// `bias` has one value per row of `W`; `unit` is one the CPU has.
pub unsafe fn gemm(
    unit: Unit,
    w: &PackedWeight,
    rhs: &Rhs,
    n: usize,
    bias: &[f32],
    dst: *mut f32,
    ldc: usize,
    threads: usize,
) {
    use super::scratch;
    use super::sgemm::{sgemm, MatMut, MatRef};
    match w {
        PackedWeight::Rounded(wr) => {
            let m = bias.len();
            let k = wr.len() / m.max(1);
            let mut br = scratch::take(k * n);
            for r in 0..k {
                let row = &mut br[r * n..(r + 1) * n];
                rhs.fill_row(r, row);
                round_slice(row);
            }
            for (r, &bv) in bias.iter().enumerate() {
                // SAFETY: row `r` of the `m x n` output at `dst` (the contract).
                unsafe { std::slice::from_raw_parts_mut(dst.add(r * ldc), n) }.fill(bv);
            }
            // SAFETY: `wr` is `m x k`, `br` `k x n`, and `dst` valid for the `m x n` writes at
            // stride `ldc` and ours alone (the contract).
            unsafe {
                sgemm(
                    m,
                    n,
                    k,
                    MatMut::from_raw(dst, ldc),
                    true,
                    MatRef::rows(wr, k),
                    MatRef::rows(&br, n),
                    threads,
                )
            };
        }
        PackedWeight::Tiles { k, .. } => {
            let b = PackedB::new(rhs, *k, n);
            // SAFETY: `w` is packed with `b`'s depth, for a unit the CPU has (it was packed for
            // one: `unit` packs); the rest is the contract.
            unsafe { gemm_packed(unit, w, &b, amx::Start::Bias(bias), dst, ldc, threads) }
        }
    }
}

/// A right-hand side packed once for several AMX products (`[k, n]`, see [`pack_b`]).
pub struct PackedB {
    buf: super::scratch::Scratch,
    k: usize,
    n: usize,
}

impl PackedB {
    pub fn new(rhs: &Rhs, k: usize, n: usize) -> PackedB {
        let mut buf = super::scratch::take(packed_b_len(k, n));
        let words: &mut [u32] = bytemuck::cast_slice_mut(&mut buf[..]);
        match rhs {
            Rhs::Cols { b, ld } => pack_b_cols(b, *ld, k, n, words),
            _ => pack_b(rhs, k, n, words),
        }
        PackedB { buf, k, n }
    }
}

/// [`gemm`] with a packed right-hand side, starting from a bias or from `dst` itself
/// (accumulation); `w` must be packed (tiles), with `b.k` deep.
///
/// # Safety
/// As [`gemm`], with `unit` AMX or AVX512_BF16; with [`amx::Start::Dst`], `dst` must also be
/// readable.
pub unsafe fn gemm_packed(
    unit: Unit,
    w: &PackedWeight,
    b: &PackedB,
    start: amx::Start,
    dst: *mut f32,
    ldc: usize,
    threads: usize,
) {
    let PackedWeight::Tiles { m, k, data } = w else {
        panic!("gemm_packed: the weight is not packed")
    };
    assert!(unit.packs(), "gemm_packed: the rounding path has no packed products");
    let (m, k, n) = (*m, *k, b.n);
    assert!(b.k == k);
    if let amx::Start::Bias(bias) = start {
        assert!(bias.len() >= m);
    }
    let (mb, kb, nb) = (blocks32(m) * 2, k.div_ceil(amx::DEPTH), blocks32(n) * 2);
    let tile_bytes = amx::TILE_ELEMS * 2;
    let offsets: Vec<usize> = (0..kb).map(|s| s * tile_bytes).collect();
    let layout = amx::BLayout { offsets: &offsets, stride: 64 };
    let words: &[u32] = bytemuck::cast_slice(&b.buf[..]);
    let blocks: Vec<amx::Block> = (0..nb)
        .map(|jb| amx::Block {
            // Block `jb`'s packed tiles: `kb` of 16 x 16 pairs, `TILE_ELEMS / 2` words each.
            b: words[jb * kb * amx::TILE_ELEMS / 2..].as_ptr().cast::<u16>(),
            col: jb * amx::TILE,
            cols: n.saturating_sub(jb * amx::TILE).min(amx::TILE),
        })
        .collect();
    // SAFETY: `dst` is valid for `m` rows of `n` floats `ldc` apart and ours alone (the
    // contract): that extent, which the bands below split between threads.
    let d = unsafe { Disjoint::from_raw(dst, if m * n == 0 { 0 } else { (m - 1) * ldc + n }) };
    let run = |ib0: usize, ib1: usize| {
        // SAFETY: the CPU has `unit` (the contract); `data` holds `mb` row blocks of `kb`
        // tiles; every block's tiles lie inside `b`'s packed buffer; `dst` is valid for the
        // writes (and, with `Start::Dst`, reads) and this call's rows `ib0 * 16..ib1 * 16` are
        // written by no other call (the contract and the bands below).
        unsafe {
            unit.gemm_blocks(ib0, ib1, data.as_ptr(), m, start, &blocks, &layout, d.ptr(0), ldc)
        }
    };
    // Threads take disjoint bands of 32 output rows.
    let pairs = mb / 2;
    let parts = threads.clamp(1, pairs.max(1));
    if parts == 1 {
        run(0, mb);
    } else {
        use rayon::prelude::*;
        (0..parts)
            .into_par_iter()
            .for_each(|p| run(2 * (p * pairs / parts), 2 * ((p + 1) * pairs / parts)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_nearest_even() {
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even (1).
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(round(1.0 + 1.0 / 256.0 + 1e-6), 1.0 + 1.0 / 128.0);
        assert_eq!(round(-2.5), -2.5);
        assert!(round(f32::NAN).is_nan());
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
        assert_eq!(round(f32::MAX), f32::INFINITY);
        assert_eq!(round(0.0).to_bits(), 0);
    }

    #[test]
    fn pack_b_layout() {
        let (k, n, ld) = (35, 19, 21);
        let src: Vec<f32> = (0..k * ld).map(|i| i as f32).collect();
        let mut out = vec![0u32; packed_b_len(k, n)];
        pack_b(&Rhs::Rows { b: &src, ld }, k, n, &mut out);
        let kb = k.div_ceil(32);
        for p in 0..kb * 16 {
            for j in 0..blocks32(n) * 32 {
                let w = out[((j / 16 * kb + p / 16) * 16 + p % 16) * 16 + j % 16];
                let want = |kk: usize| {
                    if kk < k && j < n {
                        round_bits(src[kk * ld + j]) >> 16
                    } else {
                        0
                    }
                };
                assert_eq!(w & 0xffff, want(2 * p), "row {} col {j}", 2 * p);
                assert_eq!(w >> 16, want(2 * p + 1), "row {} col {j}", 2 * p + 1);
            }
        }
    }
}
