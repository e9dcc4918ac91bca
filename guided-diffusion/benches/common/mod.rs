//! Timing helpers shared by the benchmarks: warm-up, then repeated runs within a time budget,
//! reporting the median (the machine is shared and noisy; the median is the robust figure).
#![allow(dead_code)]
use std::time::Instant;

/// Median seconds per call of `f`: one warm-up call, then at least `min_reps` calls and more
/// while under `budget_s` seconds (at most `max_reps`). Seconds of [`clock`]: wall time, or
/// with `GD_BENCH_CLOCK=cpu` the process's CPU time.
pub fn median_secs<F: FnMut()>(min_reps: usize, max_reps: usize, budget_s: f64, mut f: F) -> f64 {
    f();
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < min_reps.max(1)
        || (times.len() < max_reps && start.elapsed().as_secs_f64() < budget_s)
    {
        let t = clock();
        f();
        times.push(clock() - t);
    }
    median(&mut times)
}

/// Whether `GD_BENCH_CLOCK=cpu` asks for CPU time instead of wall time.
pub fn cpu_clock() -> bool {
    std::env::var("GD_BENCH_CLOCK").is_ok_and(|v| v.trim().eq_ignore_ascii_case("cpu"))
}

/// Seconds on the benchmark's clock: wall time since a fixed start, or with
/// `GD_BENCH_CLOCK=cpu` the CPU time of the whole process (all threads, user and system).
/// On a loaded machine, CPU time at one thread is the work done, whatever the other tenants
/// take; with more threads it also counts time threads spend spinning while they wait.
pub fn clock() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    if cpu_clock() {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid timespec to write; CLOCK_PROCESS_CPUTIME_ID is always there
        // on Linux.
        if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0 {
            return ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9;
        }
    }
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// The kernel policy of a benchmark run, from the `GD_*` switches (`GD_KERNELS`, `GD_WINOGRAD`,
/// `GD_AMX`; the library reads no environment) and `GD_PRECISION=bf16` (bf16 products).
pub fn policy() -> guided_diffusion::kernels::KernelPolicy {
    use guided_diffusion::kernels::{KernelPolicy, Precision};
    let p = KernelPolicy::from_vars(|k| std::env::var(k).ok());
    let bf16 = std::env::var("GD_PRECISION").is_ok_and(|v| v.trim().eq_ignore_ascii_case("bf16"));
    p.with_precision(if bf16 { Precision::Bf16 } else { Precision::F32 })
}

/// The process-wide settings `gdiff` makes (`kernels::tune_process`, from the environment).
pub fn tune_process() {
    guided_diffusion::kernels::tune_process(|k| std::env::var(k).ok());
}

/// `true` when the environment variable is set to anything but `0` / empty.
pub fn flag(name: &str) -> bool {
    std::env::var(name).map(|v| !v.is_empty() && v != "0").unwrap_or(false)
}

/// Peak resident set size of this process (VmHWM), in MiB; NaN where /proc is missing.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resets VmHWM to the current RSS (Linux: "5" to /proc/self/clear_refs); best effort.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The small Fashion-MNIST UNet (32x32, 1 channel, 32 channels, levels 1,2,2).
pub fn small_flags() -> guided_diffusion::models::ModelFlags {
    let mut f = guided_diffusion::models::ModelFlags::script_defaults();
    f.image_size = Some(32);
    f.in_channels = Some(1);
    f.num_channels = Some(32);
    f.num_res_blocks = Some(1);
    f.channel_mult = Some("1,2,2".into());
    f.attention_resolutions = Some("8".into());
    f.num_head_channels = Some(32);
    f.class_cond = Some(true);
    f.num_classes = Some(10);
    f.learn_sigma = Some(true);
    f.resblock_updown = Some(true);
    f
}

/// The Fashion-MNIST model the project trains and ships: the small UNet with 2 residual blocks
/// per level (`--num_res_blocks 2`; `use_scale_shift_norm` as the script default, true).
pub fn shipped_flags() -> guided_diffusion::models::ModelFlags {
    let mut f = small_flags();
    f.num_res_blocks = Some(2);
    f
}

/// The small UNet widened to 64 channels with 2 residual blocks per level.
pub fn mid_flags() -> guided_diffusion::models::ModelFlags {
    let mut f = small_flags();
    f.num_channels = Some(64);
    f.num_res_blocks = Some(2);
    f
}

/// The released 64x64 ImageNet model (`--preset imagenet64`).
pub fn imagenet64_flags() -> guided_diffusion::models::ModelFlags {
    let mut f = guided_diffusion::models::ModelFlags::script_defaults();
    f.attention_resolutions = Some("32,16,8".into());
    f.class_cond = Some(true);
    f.learn_sigma = Some(true);
    f.num_channels = Some(192);
    f.num_head_channels = Some(64);
    f.num_res_blocks = Some(3);
    f.resblock_updown = Some(true);
    f.use_new_attention_order = Some(true);
    f
}

/// The machine's f32 peak in GFLOP/s on all rayon threads: `GD_PEAK_GFLOPS` if set, else
/// measured with independent FMA chains (AVX-512 where the CPU has it, else AVX2+FMA).
#[allow(dead_code)]
pub fn peak_gflops() -> f64 {
    if let Some(p) = std::env::var("GD_PEAK_GFLOPS").ok().and_then(|v| v.parse().ok()) {
        return p;
    }
    const ITERS: usize = 20_000_000;
    let per_thread = |_: rayon::BroadcastContext| -> f64 { fma_loop(ITERS) };
    fma_loop(ITERS / 10); // warm up the clocks
    let start = Instant::now();
    let flops: f64 = rayon::broadcast(per_thread).into_iter().sum();
    flops / start.elapsed().as_secs_f64() / 1e9
}

/// FLOPs done by `iters` rounds of 12 independent FMA chains.
fn fma_loop(iters: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        if std::is_x86_feature_detected!("avx512f") {
            /// `iters` rounds of 12 AVX-512 FMA chains.
            ///
            /// # Safety
            /// The CPU must have AVX-512F.
            #[target_feature(enable = "avx512f")]
            unsafe fn run(iters: usize) -> f32 {
                let m = _mm512_set1_ps(0.999_999);
                let a = _mm512_set1_ps(1e-7);
                let mut acc = [_mm512_set1_ps(1.0); 12];
                for _ in 0..iters {
                    for v in acc.iter_mut() {
                        *v = _mm512_fmadd_ps(*v, m, a);
                    }
                }
                acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
            }
            // SAFETY: the feature was just detected.
            std::hint::black_box(unsafe { run(iters) });
            return (iters * 12 * 16 * 2) as f64;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            /// `iters` rounds of 12 AVX2 FMA chains.
            ///
            /// # Safety
            /// The CPU must have AVX2 and FMA.
            #[target_feature(enable = "avx2,fma")]
            unsafe fn run(iters: usize) -> f32 {
                let m = _mm256_set1_ps(0.999_999);
                let a = _mm256_set1_ps(1e-7);
                let mut acc = [_mm256_set1_ps(1.0); 12];
                for _ in 0..iters {
                    for v in acc.iter_mut() {
                        *v = _mm256_fmadd_ps(*v, m, a);
                    }
                }
                let mut out = [0f32; 8];
                let mut s = 0.0;
                for v in acc {
                    _mm256_storeu_ps(out.as_mut_ptr(), v);
                    s += out.iter().sum::<f32>();
                }
                s
            }
            // SAFETY: the features were just detected.
            std::hint::black_box(unsafe { run(iters) });
            return (iters * 12 * 8 * 2) as f64;
        }
    }
    let mut acc = [1f32; 8];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = v.mul_add(0.999_999, 1e-7);
        }
    }
    std::hint::black_box(acc);
    (iters * 8 * 2) as f64
}
