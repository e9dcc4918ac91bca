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
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, once per process); [`available`]
//! checks the CPU (CPUID) and makes that request once.
//!
//! Operands are packed by [`super::bf16`]: A as `[m/16][k/32][16][32]` bf16, B as
//! `[n/16][k/32][16][16]` bf16 pairs, with m and n padded to multiples of 32 and k to a
//! multiple of 32 (zeros).
use std::sync::OnceLock;

/// Whether AMX bf16 can be used in this process: the CPU has AMX-TILE and AMX-BF16, the
/// kernel granted the tile state, and `GD_AMX` is not `0`/`off` ([`super::switch`]).
pub fn available() -> bool {
    hardware() && super::switch::amx_enabled()
}

/// The CPU and OS part of [`available`], probed once.
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

/// `dst[r, c] = bias[r] + sum_k A[r, k] B[k, c]` for rows `r < m`, columns `c < n`, over the
/// 16-row blocks `ib0..ib1` of A (`ib0` and `ib1` even), where `a` holds A packed with
/// `kblocks` 32-deep steps and `b` holds B packed likewise with `nblocks` 16-column blocks
/// (both even-padded). `dst` has row stride `ldc` floats.
///
/// # Safety
/// [`available`] must be true; `a` and `b` must hold the packed extents described, `bias`
/// at least `m` values, and `dst` must be valid for writes of `m` rows of `n` floats at row
/// stride `ldc`, not written by anyone else meanwhile.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_rows(
    ib0: usize,
    ib1: usize,
    kblocks: usize,
    nblocks: usize,
    a: *const u16,
    b: *const u16,
    m: usize,
    n: usize,
    bias: &[f32],
    dst: *mut f32,
    ldc: usize,
) {
    use std::arch::asm;
    debug_assert!(ib0.is_multiple_of(2) && ib1.is_multiple_of(2) && nblocks.is_multiple_of(2) && kblocks > 0);
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
    struct Block([f32; 4 * TILE * TILE]);
    // Bias tiles of the two row blocks (each row one bias value), and an output spill block.
    let mut init = Block([0.0; 4 * TILE * TILE]);
    let mut spill = Block([0.0; 4 * TILE * TILE]);
    let tile_stride = TILE_ELEMS * kblocks; // u16 between consecutive 16-blocks
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    let mut ib = ib0;
    while ib < ib1 {
        for half in 0..2 {
            for r in 0..TILE {
                let row = (ib + half) * TILE + r;
                let v = if row < m { bias[row] } else { 0.0 };
                init.0[half * 256 + r * TILE..half * 256 + (r + 1) * TILE].fill(v);
            }
        }
        let a0 = a.add(ib * tile_stride);
        let a1 = a.add((ib + 1) * tile_stride);
        let mut jb = 0;
        while jb < nblocks {
            let b0 = b.add(jb * tile_stride);
            let b1 = b.add((jb + 1) * tile_stride);
            let init0 = init.0.as_ptr();
            let init1 = init.0.as_ptr().add(256);
            asm!(
                "tileloadd tmm0, [{i0} + {s}*1]",
                "tileloadd tmm1, [{i0} + {s}*1]",
                "tileloadd tmm2, [{i1} + {s}*1]",
                "tileloadd tmm3, [{i1} + {s}*1]",
                "2:",
                "tileloadd tmm4, [{a0} + {s}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {s}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a0}, 1024",
                "add {a1}, 1024",
                "add {b0}, 1024",
                "add {b1}, 1024",
                "dec {kb}",
                "jnz 2b",
                i0 = in(reg) init0,
                i1 = in(reg) init1,
                a0 = inout(reg) a0 => _,
                a1 = inout(reg) a1 => _,
                b0 = inout(reg) b0 => _,
                b1 = inout(reg) b1 => _,
                kb = inout(reg) kblocks => _,
                s = in(reg) 64usize,
                options(nostack, readonly),
            );
            let (r0, c0) = (ib * TILE, jb * TILE);
            if r0 + 2 * TILE <= m && c0 + 2 * TILE <= n {
                // A whole 32x32 block: straight into the output.
                let d = dst.add(r0 * ldc + c0);
                asm!(
                    "tilestored [{d0} + {s}*1], tmm0",
                    "tilestored [{d1} + {s}*1], tmm1",
                    "tilestored [{d2} + {s}*1], tmm2",
                    "tilestored [{d3} + {s}*1], tmm3",
                    d0 = in(reg) d,
                    d1 = in(reg) d.add(TILE),
                    d2 = in(reg) d.add(TILE * ldc),
                    d3 = in(reg) d.add(TILE * ldc + TILE),
                    s = in(reg) ldc * 4,
                    options(nostack),
                );
            } else {
                let p = spill.0.as_mut_ptr();
                asm!(
                    "tilestored [{d0} + {s}*1], tmm0",
                    "tilestored [{d1} + {s}*1], tmm1",
                    "tilestored [{d2} + {s}*1], tmm2",
                    "tilestored [{d3} + {s}*1], tmm3",
                    d0 = in(reg) p,
                    d1 = in(reg) p.add(256),
                    d2 = in(reg) p.add(512),
                    d3 = in(reg) p.add(768),
                    s = in(reg) 64usize,
                    options(nostack),
                );
                // Tile t = 2 * (row half) + (column half).
                for t in 0..4 {
                    let (tr, tc) = (r0 + (t / 2) * TILE, c0 + (t % 2) * TILE);
                    if tr >= m || tc >= n {
                        continue;
                    }
                    let (rows, cols) = ((m - tr).min(TILE), (n - tc).min(TILE));
                    for r in 0..rows {
                        let src = &spill.0[t * 256 + r * TILE..t * 256 + r * TILE + cols];
                        std::ptr::copy_nonoverlapping(src.as_ptr(), dst.add((tr + r) * ldc + tc), cols);
                    }
                }
            }
            jb += 2;
        }
        ib += 2;
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// Not x86_64: never called ([`available`] is false).
///
/// # Safety
/// Never safe to call; it panics.
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_rows(
    _ib0: usize,
    _ib1: usize,
    _kblocks: usize,
    _nblocks: usize,
    _a: *const u16,
    _b: *const u16,
    _m: usize,
    _n: usize,
    _bias: &[f32],
    _dst: *mut f32,
    _ldc: usize,
) {
    unreachable!("AMX is x86_64 only")
}
