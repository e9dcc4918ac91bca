//! The on/off switches of the fast kernels, their Winograd convolutions, the frozen-weights
//! cache and AMX.
//!
//! Both on by default. The environment variable `GD_KERNELS` is read once, on first use: `candle`,
//! `off` or `0` turn the fast kernels off (every op then runs candle's own implementation).
//! [`set_enabled`] overrides both at run time, e.g. for parity tests and benchmarks that
//! compare the two paths in one process.
use std::sync::atomic::{AtomicU8, Ordering};

const UNSET: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNSET);

/// Whether the fast CPU kernels are used where they apply.
pub fn enabled() -> bool {
    read(&STATE, "GD_KERNELS")
}

/// Whether the fast kernels are on and every tensor is f32 on the CPU.
pub fn applies_to(ts: &[&candle_core::Tensor]) -> bool {
    enabled() && ts.iter().all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
}

/// Turns the fast kernels on or off for the whole process.
pub fn set_enabled(on: bool) {
    STATE.store(if on { ON } else { OFF }, Ordering::Relaxed);
}

static WINOGRAD: AtomicU8 = AtomicU8::new(UNSET);

/// Whether 3x3 stride-1 convolutions may use Winograd F(4x4, 3x3) (on by default; the
/// environment variable `GD_WINOGRAD=0` / `off` turns it off, read once; [`set_winograd`]
/// overrides). Only consulted when the fast kernels are on.
pub fn winograd_enabled() -> bool {
    read(&WINOGRAD, "GD_WINOGRAD")
}

/// Turns Winograd convolutions on or off for the whole process.
pub fn set_winograd(on: bool) {
    WINOGRAD.store(if on { ON } else { OFF }, Ordering::Relaxed);
}

static FROZEN_CACHE: AtomicU8 = AtomicU8::new(UNSET);

/// Whether frozen-weight scopes keep derived weight forms ([`super::frozen`]; on by default,
/// `GD_FROZEN_CACHE=0` / `off` turns it off, read once; [`set_frozen_cache`] overrides).
pub fn frozen_cache_enabled() -> bool {
    read(&FROZEN_CACHE, "GD_FROZEN_CACHE")
}

/// Turns the frozen-weights cache on or off for the whole process.
pub fn set_frozen_cache(on: bool) {
    FROZEN_CACHE.store(if on { ON } else { OFF }, Ordering::Relaxed);
}

static AMX: AtomicU8 = AtomicU8::new(UNSET);

/// Whether bf16 products may use Intel AMX where the CPU has it (on by default; `GD_AMX=0` /
/// `off` turns it off, read once; [`set_amx`] overrides). Without it, bf16 scopes round to
/// bf16 and multiply in f32: the same numerics, slower.
pub fn amx_enabled() -> bool {
    read(&AMX, "GD_AMX")
}

/// Turns AMX on or off for the whole process (weights packed before keep their form).
pub fn set_amx(on: bool) {
    AMX.store(if on { ON } else { OFF }, Ordering::Relaxed);
}

/// The switch's state, from the environment variable `var` on first use.
fn read(flag: &AtomicU8, var: &str) -> bool {
    match flag.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let on = from_env(std::env::var(var).ok().as_deref());
            // Keep an explicit setting that raced with us.
            let _ = flag.compare_exchange(
                UNSET,
                if on { ON } else { OFF },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            flag.load(Ordering::Relaxed) == ON
        }
    }
}

fn from_env(v: Option<&str>) -> bool {
    !matches!(
        v.map(|s| s.trim().to_ascii_lowercase()).as_deref(),
        Some("candle" | "off" | "0" | "false")
    )
}

#[cfg(test)]
mod tests {
    use super::from_env;

    #[test]
    fn env_values() {
        assert!(from_env(None));
        assert!(from_env(Some("fast")));
        assert!(from_env(Some("")));
        assert!(!from_env(Some("candle")));
        assert!(!from_env(Some(" CANDLE ")));
        assert!(!from_env(Some("off")));
        assert!(!from_env(Some("0")));
    }
}
