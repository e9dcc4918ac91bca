//! Timing helpers shared by the benchmarks: warm-up, then repeated runs within a time budget,
//! reporting the median (the machine is shared and noisy; the median is the robust figure).
#![allow(dead_code)]
use std::time::Instant;

/// Median seconds per call of `f`: one warm-up call, then at least `min_reps` calls and more
/// while under `budget_s` seconds (at most `max_reps`).
pub fn median_secs<F: FnMut()>(min_reps: usize, max_reps: usize, budget_s: f64, mut f: F) -> f64 {
    f();
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < min_reps.max(1) || (times.len() < max_reps && start.elapsed().as_secs_f64() < budget_s) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    median(&mut times)
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

/// `true` when the environment variable is set to anything but `0` / empty.
pub fn flag(name: &str) -> bool {
    std::env::var(name).map(|v| !v.is_empty() && v != "0").unwrap_or(false)
}
