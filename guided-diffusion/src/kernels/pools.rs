//! How long candle-core's own worker threads spin when idle: a setting for programs, as
//! [`super::malloc`] is.
//!
//! Two thread pools share the cores. Our kernels run on rayon's; candle-core (0.11) runs its
//! element-wise ops on a pool of its own, whose workers spin for
//! `CANDLE_BARRIER_POOL_SPIN_LIMIT` iterations (25,000 by default: about half a millisecond)
//! after every op before they sleep. During that time a spinning candle worker takes a core
//! from the rayon kernel that usually comes next. In the small model's training step at two
//! threads (AMD EPYC Zen 4, `benches/workloads.rs` `train_step_small`, 2026-11-30) the step
//! took 0.325-0.433 s with the default limit (median 0.342 s, five alternating runs) and
//! 0.320-0.347 s with [`SPIN_LIMIT`] (median 0.333 s): about 3% faster, and the slowest run
//! much less slow. Forward-only workloads did not move. At one thread candle starts no workers, so the
//! setting does nothing.
//!
//! candle-core reads the variable once, when its pool starts; a program sets it first thing in
//! `main` ([`tune`]) unless its user already did. The library never calls [`tune`] on its own.

/// The environment variable candle-core reads.
pub const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// The spin limit [`tune`] sets: about 20 microseconds, enough to keep a worker awake between
/// back-to-back element-wise ops, too little to slow the next rayon kernel.
pub const SPIN_LIMIT: u32 = 1000;

/// The value [`tune`] gives [`SPIN_LIMIT_VAR`] when the variable holds `current`: none when
/// the user set it, else [`SPIN_LIMIT`].
pub fn setting(current: Option<&str>) -> Option<String> {
    current.is_none().then(|| SPIN_LIMIT.to_string())
}

/// Sets [`SPIN_LIMIT_VAR`] as [`setting`] says for `current` (the variable's value, which the
/// program reads). Returns whether it set it.
///
/// Call it first thing in `main`, before any thread starts: it changes the process
/// environment.
pub fn tune(current: Option<&str>) -> bool {
    let Some(value) = setting(current) else { return false };
    std::env::set_var(SPIN_LIMIT_VAR, value);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_setting_is_kept() {
        assert_eq!(setting(Some("25000")), None);
        assert_eq!(setting(Some("")), None);
        assert_eq!(setting(None).as_deref(), Some("1000"));
    }
}
