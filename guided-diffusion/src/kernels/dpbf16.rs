//! AVX512_BF16 bf16 matrix products: the bf16 path ([`super::bf16`]) on CPUs without AMX
//! (AMD Zen 4 and 5, Intel Cooper Lake; Sapphire Rapids and later with AMX off).
//!
//! `vdpbf16ps` multiplies 16 pairs of bf16 values by 16 pairs and adds each pair's two exact
//! products into one of 16 f32 sums: 32 multiply-adds per instruction, twice an f32 FMA's. It
//! reads its operands in the layout AMX reads ([`super::amx`]): A packed as
//! `[m/16][k/32][16][32]` bf16, so that the pair `(A[r, 2p], A[r, 2p + 1])` is one 32-bit word
//! to broadcast, and B in blocks of 16 columns whose row pair `p` is 16 consecutive pairs, one
//! vector. So every packing, cache and caller of the AMX path serves this one too, and
//! [`gemm_blocks`] has the contract of [`amx::gemm_blocks`](super::amx::gemm_blocks).
//!
//! The kernel keeps an 8-row x 32-column block of the output (two column blocks) in 16
//! registers and streams, per row pair of the depth, two B vectors and eight broadcast A
//! pairs.
//!
//! Numerics: products of bf16 values are exact in f32 and summed in f32, as on AMX; the
//! instruction treats bf16 denormals as zero (as AMX does) and sums in its own order, so results
//! agree with the rounding path up to the order of the f32 sums.
use super::amx::{BLayout, Block, Start, DEPTH, TILE, TILE_ELEMS};

/// Whether the CPU has AVX-512F and AVX512_BF16 (a fact about the machine, not a setting: the
/// [`KernelPolicy`](super::KernelPolicy) chooses whether to use it).
pub fn hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Output rows per register block (of a 16-row A tile).
const ROWS: usize = 8;

/// `dst[r, blk.col + c] = start + sum_k A[r, k] B_blk[k, c]`, as
/// [`amx::gemm_blocks`](super::amx::gemm_blocks) (same arguments, same packed operands).
///
/// # Safety
/// [`hardware`] must be true; the rest is the contract of `amx::gemm_blocks`: `a` holds the
/// packed extent of the row blocks `ib0..ib1` (`b.offsets.len()` depth steps each); every
/// block's B rows (16 row pairs of 64 bytes at `b.stride`, at each offset) are readable;
/// `bias` has at least `m` values; `dst` is valid for the writes described (and reads, with
/// `Start::Dst`) and not accessed by anyone else meanwhile.
#[cfg(target_arch = "x86_64")]
pub unsafe fn gemm_blocks(
    ib0: usize,
    ib1: usize,
    a: *const u16,
    m: usize,
    start: Start,
    blocks: &[Block],
    b: &BLayout,
    dst: *mut f32,
    ldc: usize,
) {
    // SAFETY: the CPU has the features (the contract); the rest is this function's contract.
    unsafe { gemm_blocks_avx512(ib0, ib1, a, m, start, blocks, b, dst, ldc) }
}

/// [`gemm_blocks`] compiled for AVX-512 and AVX512_BF16.
///
/// # Safety
/// As [`gemm_blocks`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn gemm_blocks_avx512(
    ib0: usize,
    ib1: usize,
    a: *const u16,
    m: usize,
    start: Start,
    blocks: &[Block],
    b: &BLayout,
    dst: *mut f32,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    let kblocks = b.offsets.len();
    let a = a.cast::<u32>();
    // u32 words (bf16 pairs) of one packed A tile, and between consecutive 16-row blocks.
    let (tile_words, a_stride) = (TILE_ELEMS / 2, TILE_ELEMS / 2 * kblocks);
    const { assert!(DEPTH == 2 * TILE) };
    for ib in ib0..ib1 {
        for half in 0..TILE / ROWS {
            let r0 = ib * TILE + half * ROWS;
            if r0 >= m {
                break;
            }
            let rows = (m - r0).min(ROWS);
            // This register block's rows of A: word `(r, p)` of step `s` at
            // `ar + s * tile_words + r * 16 + p` (inside the packed extent, the contract).
            let ar = a.wrapping_add(ib * a_stride + half * ROWS * TILE);
            for pair in blocks.chunks(2) {
                // (An odd last block pairs with a padding block: no columns.)
                let (bj, bk) =
                    (pair[0], pair.get(1).copied().unwrap_or(Block { cols: 0, ..pair[0] }));
                let masks = [col_mask(bj.cols), col_mask(bk.cols)];
                // The output rows' starting values.
                let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
                for (r, accr) in acc.iter_mut().enumerate().take(rows) {
                    for (t, blk) in [bj, bk].iter().enumerate() {
                        accr[t] = match start {
                            Start::Bias(bias) => _mm512_set1_ps(bias[r0 + r]),
                            // SAFETY: row `r0 + r < m`, the block's valid columns (masked): a
                            // readable part of `dst` with `Start::Dst` (the contract).
                            Start::Dst => unsafe {
                                _mm512_maskz_loadu_ps(masks[t], dst.add((r0 + r) * ldc + blk.col))
                            },
                        };
                    }
                }
                for (s, &off) in b.offsets.iter().enumerate() {
                    let (pj, pk) =
                        (bj.b.cast::<u8>().wrapping_add(off), bk.b.cast::<u8>().wrapping_add(off));
                    let at = ar.wrapping_add(s * tile_words);
                    for p in 0..TILE {
                        // SAFETY: row pair `p` of step `s` of both blocks' B (64 bytes each,
                        // readable: the contract; a padding block reads its block 0's).
                        let (vj, vk) = unsafe {
                            (
                                bh(_mm512_loadu_si512(pj.add(p * b.stride).cast())),
                                bh(_mm512_loadu_si512(pk.add(p * b.stride).cast())),
                            )
                        };
                        for (r, accr) in acc.iter_mut().enumerate() {
                            // SAFETY: word (r, p) of step `s` of this row block's A tile,
                            // inside the packed extent (rows past `m` are zero padding).
                            let w = unsafe { *at.add(r * TILE + p) };
                            let va = bh(_mm512_set1_epi32(w as i32));
                            accr[0] = _mm512_dpbf16_ps(accr[0], va, vj);
                            accr[1] = _mm512_dpbf16_ps(accr[1], va, vk);
                        }
                    }
                }
                for (r, accr) in acc.iter().enumerate().take(rows) {
                    for (t, blk) in [bj, bk].iter().enumerate() {
                        if blk.cols > 0 {
                            // SAFETY: row `r0 + r < m`, the block's valid columns (masked):
                            // among the writes `dst` allows (the contract).
                            unsafe {
                                _mm512_mask_storeu_ps(
                                    dst.add((r0 + r) * ldc + blk.col),
                                    masks[t],
                                    accr[t],
                                )
                            };
                        }
                    }
                }
            }
        }
    }
}

/// The mask of the first `cols` (0..=16) lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn col_mask(cols: usize) -> u16 {
    ((1u32 << cols.min(16)) - 1) as u16
}

/// A 512-bit integer vector as 32 bf16 values (the same bits).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn bh(v: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m512bh {
    // SAFETY: both are plain 64-byte vectors with no invalid bit patterns.
    unsafe { std::mem::transmute(v) }
}

/// Not x86_64: never called ([`hardware`] is false).
///
/// # Safety
/// Never safe to call; it panics.
#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn gemm_blocks(
    _ib0: usize,
    _ib1: usize,
    _a: *const u16,
    _m: usize,
    _start: Start,
    _blocks: &[Block],
    _b: &BLayout,
    _dst: *mut f32,
    _ldc: usize,
) {
    unreachable!("AVX512_BF16 is x86_64 only")
}
