//! The on/off switch of the fast kernels.
//!
//! On by default. The environment variable `GD_KERNELS` is read once, on first use: `candle`,
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
    match STATE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let on = from_env(std::env::var("GD_KERNELS").ok().as_deref());
            // Keep an explicit `set_enabled` that raced with us.
            let _ = STATE.compare_exchange(UNSET, if on { ON } else { OFF }, Ordering::Relaxed, Ordering::Relaxed);
            STATE.load(Ordering::Relaxed) == ON
        }
    }
}

/// Whether the fast kernels are on and every tensor is f32 on the CPU.
pub fn applies_to(ts: &[&candle_core::Tensor]) -> bool {
    enabled() && ts.iter().all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
}

/// Turns the fast kernels on or off for the whole process.
pub fn set_enabled(on: bool) {
    STATE.store(if on { ON } else { OFF }, Ordering::Relaxed);
}

fn from_env(v: Option<&str>) -> bool {
    !matches!(v.map(|s| s.trim().to_ascii_lowercase()).as_deref(), Some("candle" | "off" | "0" | "false"))
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
