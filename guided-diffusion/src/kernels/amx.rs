//! Intel AMX (Advanced Matrix Extensions) bf16 matrix products: the hardware half of the
//! bf16 inference path ([`super::bf16`]).
//!
//! AMX has eight tile registers of 16 rows x 64 bytes and one instruction, `tdpbf16ps`, that
//! multiplies a 16x32 bf16 tile by a 32x16 bf16 tile (stored as 16 rows of 16 bf16 pairs, the
//! "VNNI" layout) into a 16x16 f32 tile: 16 Ki FLOP per instruction. On the Sapphire Rapids
//! cores here a loop of them reaches about 770 GFLOP/s per core from L2, against about 220 for
//! f32 AVX-512 FMA. The kernel below keeps a 32x32 f32 output block in four tiles (tmm0-3) and
//! streams two A tiles (tmm4-5) and two B tiles (tmm6-7) per 32-deep step.
//!
//! The instructions are written as inline assembly (Rust has no stable AMX intrinsics); no code
//! the compiler generates touches the tile registers, so their contents survive between the
//! `asm!` blocks of one call. Linux hands out the tile state only on request
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, once per process); [`hardware`]
//! checks the CPU (CPUID) and makes that request once.
//!
//! A is packed by [`super::bf16`] as `[m/16][k/32][16][32]` bf16 (m padded to a multiple of
//! 32, k to a multiple of 32, with zeros). B comes in 16-column blocks of 16 rows of bf16
//! pairs (the VNNI layout), each block at its own address and each 32-deep step at an offset
//! from it: either a packed matrix (`[n/16][k/32][16][16]` pairs) or, for a convolution, the
//! pair-interleaved input itself, where a step is one kernel tap and channel block, a block is
//! 16 output pixels of one row, and no column matrix is ever built.
use std::sync::OnceLock;

/// Whether AMX bf16 can be used in this process: the CPU has AMX-TILE and AMX-BF16 and the
/// kernel granted the tile state (probed once; a fact about the machine, not a setting: the
/// [`KernelPolicy`](super::KernelPolicy) chooses whether to use it).
pub fn hardware() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(probe)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn probe() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    let max_leaf = __cpuid(0).eax;
    if max_leaf < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    let (amx_bf16, amx_tile) = (edx & (1 << 22) != 0, edx & (1 << 24) != 0);
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments; it fails cleanly where unsupported.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn probe() -> bool {
    false
}

/// Tile rows (and A/B/C tile height) and the bf16 depth of one step.
pub const TILE: usize = 16;
pub const DEPTH: usize = 32;
/// u16 elements in one packed A or B tile.
pub const TILE_ELEMS: usize = TILE * DEPTH;

/// One 16-column block of the right-hand side B and of the output.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    /// Address of the block's B tile at depth step 0; step `s` is at `b + offsets[s]` bytes.
    pub b: *const u16,
    /// Offset of the block's first column within an output row (floats).
    pub col: usize,
    /// Valid columns, 0..=16 (0: a padding block, computed but not stored).
    pub cols: usize,
}

// SAFETY: a block's `b` is an address the products only read ([`gemm_blocks`], whose callers
// keep the buffer alive and unwritten while the products run), so blocks may be shared with
// the threads that split a product between them.
unsafe impl Send for Block {}
// SAFETY: as for `Send`.
unsafe impl Sync for Block {}

/// Where B's tiles lie: per depth step, the byte offset from a block's base, and the byte
/// stride between a tile's 16 rows (row pairs). A packed B has offsets `s * 1024` and stride
/// 64; a convolution's shifted input windows have one offset per (tap, channel block).
pub struct BLayout<'a> {
    pub offsets: &'a [usize],
    pub stride: usize,
}

/// What the output block starts from before the products are added.
#[derive(Clone, Copy, Debug)]
pub enum Start<'a> {
    /// `bias[r]` on row `r` (at least `m` values).
    Bias(&'a [f32]),
    /// The values already in `dst` (accumulation).
    Dst,
}

/// `dst[r, blk.col + c] = start + sum_k A[r, k] B_blk[k, c]` for rows `r < m` of the 16-row
/// blocks `ib0..ib1` of A (both even) and every block `blk` of `blocks` (an even number of
/// them), columns `c < blk.cols`. A is packed (`[m/16][kblocks][16][32]` bf16, m padded to a
/// multiple of 32, `kblocks = b.offsets.len()` steps), `dst` has row stride `ldc` floats.
///
/// # Safety
/// [`hardware`] must be true; `a` must hold the packed extent described; every block's B
/// tiles (16 rows of 64 bytes at `b.stride`, at each offset) must be readable; `bias` has at
/// least `m` values; `dst` must be valid for the writes described and not written by anyone
/// else meanwhile.
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
    use std::arch::asm;
    let kblocks = b.offsets.len();
    debug_assert!(ib0.is_multiple_of(2) && ib1.is_multiple_of(2) && blocks.len().is_multiple_of(2));
    if kblocks == 0 {
        // An empty product (no input channels): the start alone. (The loop below runs at
        // least one step.)
        let Start::Bias(bias) = start else { return };
        for (r, &bv) in bias.iter().enumerate().take((ib1 * TILE).min(m)).skip(ib0 * TILE) {
            for blk in blocks {
                // SAFETY: row `r < m`, the block's valid columns: among the writes `dst` allows.
                unsafe { std::slice::from_raw_parts_mut(dst.add(r * ldc + blk.col), blk.cols) }
                    .fill(bv);
            }
        }
        return;
    }
    #[repr(C, align(64))]
    struct Config([u8; 64]);
    let mut cfg = Config([0; 64]);
    cfg.0[0] = 1; // palette 1
    for t in 0..8 {
        // colsb[t] (u16 at 16 + 2t) = 64 bytes, rows[t] (u8 at 48 + t) = 16
        cfg.0[16 + 2 * t] = 64;
        cfg.0[48 + t] = TILE as u8;
    }
    #[repr(C, align(64))]
    struct Tiles([f32; 4 * TILE * TILE]);
    // Bias tiles of the two row blocks (each row one bias value), and an output spill area.
    let mut init = Tiles([0.0; 4 * TILE * TILE]);
    let mut spill = Tiles([0.0; 4 * TILE * TILE]);
    let a_stride = TILE_ELEMS * kblocks; // u16 between consecutive 16-row blocks of A
                                         // SAFETY: the CPU has AMX (the contract); `cfg` is a valid palette-1 configuration of
                                         // eight tiles of 16 rows x 64 bytes, 64-byte aligned.
    unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
    let mut ib = ib0;
    while ib < ib1 {
        if let Start::Bias(bias) = start {
            for half in 0..2 {
                for r in 0..TILE {
                    let row = (ib + half) * TILE + r;
                    let v = if row < m { bias[row] } else { 0.0 };
                    init.0[half * 256 + r * TILE..half * 256 + (r + 1) * TILE].fill(v);
                }
            }
        }
        // Row blocks `ib` and `ib + 1` of A (`a_stride` u16 apart): inside its packed extent.
        let (a0, a1) = (a.wrapping_add(ib * a_stride), a.wrapping_add((ib + 1) * a_stride));
        for pair in blocks.chunks_exact(2) {
            let (bj, bk) = (pair[0], pair[1]);
            let r0 = ib * TILE;
            let full = r0 + 2 * TILE <= m && bj.cols == TILE && bk.cols == TILE;
            // The four output tiles in dst (t = 2 * row half + block of the pair; used only
            // when the block is whole, hence wrapping), and in the spill area.
            let (d, e) = (dst.wrapping_add(r0 * ldc + bj.col), dst.wrapping_add(r0 * ldc + bk.col));
            let in_dst = [d, e, d.wrapping_add(TILE * ldc), e.wrapping_add(TILE * ldc)];
            let spill_tiles = |sp: *mut f32| {
                [sp, sp.wrapping_add(256), sp.wrapping_add(512), sp.wrapping_add(768)]
            };
            match start {
                Start::Bias(_) => {
                    let i0 = init.0.as_mut_ptr();
                    let i1 = i0.wrapping_add(256);
                    // SAFETY: AMX is configured; the two bias tiles (16 rows of 64 bytes) lie
                    // inside `init`.
                    unsafe { load_c([i0, i0, i1, i1], 64) };
                }
                // SAFETY: whole tiles (rows below `m`, 16 valid columns in both blocks) of
                // `dst`, readable with `Start::Dst` (the contract).
                Start::Dst if full => unsafe { load_c(in_dst, ldc * 4) },
                Start::Dst => {
                    // A partial block: its valid part through the spill area, zeros elsewhere.
                    spill.0.fill(0.0);
                    let sp = spill.0.as_mut_ptr();
                    valid_rows(r0, pair, m, ldc, |s, o, n| {
                        // SAFETY: `o..o + n` is a valid part of a row of `dst` (readable with
                        // `Start::Dst`), `s..s + n` lies inside `spill`; they do not overlap.
                        unsafe { std::ptr::copy_nonoverlapping(dst.add(o), sp.add(s), n) }
                    });
                    // SAFETY: AMX is configured; the four spill tiles lie inside `spill`.
                    unsafe { load_c(spill_tiles(sp), 64) };
                }
            }
            // SAFETY: AMX is configured; `a0` and `a1` start `kblocks` packed 16x32 A tiles
            // each (the contract); each block's B tiles at `b + offsets[s]`, 16 rows
            // `b.stride` apart, are readable (the contract); `offsets` has `kblocks` entries.
            unsafe {
                asm!(
                "2:",
                "mov {o}, qword ptr [{offs}]",
                "tileloadd tmm4, [{a0} + {s}*1]",
                "lea {t}, [{b0} + {o}]",
                "tileloadd tmm6, [{t} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "lea {t}, [{b1} + {o}]",
                "tileloadd tmm7, [{t} + {sb}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {s}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a0}, 1024",
                "add {a1}, 1024",
                "add {offs}, 8",
                "dec {kb}",
                "jnz 2b",
                a0 = inout(reg) a0 => _,
                a1 = inout(reg) a1 => _,
                b0 = in(reg) bj.b,
                b1 = in(reg) bk.b,
                offs = inout(reg) b.offsets.as_ptr() => _,
                kb = inout(reg) kblocks => _,
                o = out(reg) _,
                t = out(reg) _,
                s = in(reg) 64usize,
                sb = in(reg) b.stride,
                options(nostack, readonly),
                )
            };
            if full {
                // Whole tiles: straight into the output.
                // SAFETY: whole tiles of `dst`, writable (the contract).
                unsafe { store_c(in_dst, ldc * 4) };
            } else {
                let sp = spill.0.as_mut_ptr();
                // SAFETY: AMX is configured; the four spill tiles lie inside `spill`.
                unsafe { store_c(spill_tiles(sp), 64) };
                valid_rows(r0, pair, m, ldc, |s, o, n| {
                    // SAFETY: `s..s + n` inside `spill`, `o..o + n` a valid part of a row of
                    // `dst`, writable (the contract); they do not overlap.
                    unsafe { std::ptr::copy_nonoverlapping(sp.add(s), dst.add(o), n) }
                });
            }
        }
        ib += 2;
    }
    // SAFETY: AMX was configured above; this releases the tile state.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// Loads the output tiles tmm0-3 from `p` (rows `stride` bytes apart).
///
/// # Safety
/// AMX must be configured (`ldtilecfg`, 16 rows x 64 bytes); each `p[i]` must be readable for
/// 16 rows of 64 bytes, `stride` bytes apart.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load_c(p: [*mut f32; 4], stride: usize) {
    // SAFETY: the contract above.
    unsafe {
        std::arch::asm!(
            "tileloadd tmm0, [{p0} + {s}*1]",
            "tileloadd tmm1, [{p1} + {s}*1]",
            "tileloadd tmm2, [{p2} + {s}*1]",
            "tileloadd tmm3, [{p3} + {s}*1]",
            p0 = in(reg) p[0],
            p1 = in(reg) p[1],
            p2 = in(reg) p[2],
            p3 = in(reg) p[3],
            s = in(reg) stride,
            options(nostack, readonly),
        )
    };
}

/// Stores the output tiles tmm0-3 to `p` (rows `stride` bytes apart).
///
/// # Safety
/// AMX must be configured as for [`load_c`]; each `p[i]` must be writable for 16 rows of 64
/// bytes, `stride` bytes apart, and not accessed by anyone else meanwhile.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_c(p: [*mut f32; 4], stride: usize) {
    // SAFETY: the contract above.
    unsafe {
        std::arch::asm!(
            "tilestored [{p0} + {s}*1], tmm0",
            "tilestored [{p1} + {s}*1], tmm1",
            "tilestored [{p2} + {s}*1], tmm2",
            "tilestored [{p3} + {s}*1], tmm3",
            p0 = in(reg) p[0],
            p1 = in(reg) p[1],
            p2 = in(reg) p[2],
            p3 = in(reg) p[3],
            s = in(reg) stride,
            options(nostack),
        )
    };
}

/// Every valid row of the four output tiles of a block pair starting at row `r0`: `f(offset
/// in the spill area, offset in dst, columns)`, both in floats.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn valid_rows(
    r0: usize,
    pair: &[Block],
    m: usize,
    ldc: usize,
    mut f: impl FnMut(usize, usize, usize),
) {
    for t in 0..4 {
        let (tr, blk) = (r0 + (t / 2) * TILE, pair[t % 2]);
        if tr >= m || blk.cols == 0 {
            continue;
        }
        for r in 0..(m - tr).min(TILE) {
            f(t * TILE * TILE + r * TILE, (tr + r) * ldc + blk.col, blk.cols);
        }
    }
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
    unreachable!("AMX is x86_64 only")
}
