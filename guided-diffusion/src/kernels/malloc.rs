//! glibc malloc settings for a process that allocates and frees tensor-sized buffers (one to
//! hundreds of MiB) all the time, as every candle op and gradient does.
//!
//! By default glibc serves anything above 128 KiB..32 MiB with its own `mmap` and gives it back
//! with `munmap` on free, and trims the heap top as soon as 128 KiB are free. Each tensor then
//! costs fresh zeroed pages (a fault per 4 KiB) and, with more than one thread, a TLB shootdown
//! on every `munmap`. On the 64x64 training step that was about 40% of all CPU time in the
//! kernel (`clear_page`, IPIs); [`tune`] keeps freed memory in the heap for reuse instead:
//! 64x64 training step 12.2 -> 8.3 s in the benchmark process, small model 7-11% (bench/README.md).
//! The price is that the resident size stays at its high-water mark until the process exits.
//!
//! It is a process-wide choice, so the library never makes it on its own: the `gdiff` binary
//! and the benchmarks call [`tune`] first thing, unless `GD_MALLOC=default` (which they read,
//! [`keep_default`]) asks them to leave glibc as it is.

/// Whether a `GD_MALLOC` setting asks to leave glibc's malloc as it is (`default`).
pub fn keep_default(gd_malloc: Option<&str>) -> bool {
    gd_malloc.is_some_and(|v| v.trim().eq_ignore_ascii_case("default"))
}

/// Applies the settings (glibc on Linux only; elsewhere does nothing). Returns whether they
/// were applied.
pub fn tune() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; any value is valid input.
        unsafe {
            // One arena: the threads of rayon would otherwise get their own, whose heaps are at
            // most 64 MiB, so that their large blocks are mmapped after all. Blocks up to 2 GiB
            // come from the heap, which grows in steps of 1 GiB (address space; pages are
            // touched only when used) and is never trimmed: a trim threshold of 2 GiB still
            // gave back the free top after each 64x64 training step (8.7 GB high-water mark),
            // about 0.4M page faults (1.6 GB re-zeroed) per step; -1 turns trimming off.
            let a = libc::mallopt(libc::M_ARENA_MAX, 1);
            let b = libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
            let c = libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
            let d = libc::mallopt(libc::M_TOP_PAD, 1 << 30);
            return a == 1 && b == 1 && c == 1 && d == 1;
        }
    }
    #[allow(unreachable_code)]
    false
}
