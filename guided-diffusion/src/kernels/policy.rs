//! How the kernels compute: a [`KernelPolicy`] value, chosen by the program, held by a network
//! (`models::Net::set_policy`) or passed with a call (every public kernel takes one).
//!
//! Nothing here is process-wide: two networks with different policies (say one in f32 and one
//! in bf16) run side by side in one process, on threads of their own, and a policy travels
//! inside the custom ops it made, so the backward pass and work that rayon moves to other
//! threads compute as the call that started them asked. The library reads no environment
//! variables; [`KernelPolicy::from_vars`] is the one parser of the `GD_*` settings, for the
//! programs that do (`gdiff`, the benchmarks, the tests).

use super::bf16::Unit;

/// Precision of the convolutions' and attention's matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 inputs, weights and sums.
    #[default]
    F32,
    /// bf16-rounded inputs and weights, f32 sums ([`super::bf16`], like PyTorch's CPU
    /// autocast): convolution forwards, stride-1 input gradients, the weight gradients of wide
    /// layers (AMX) and attention's two forward products, on the unit
    /// [`KernelPolicy::bf16_unit`] picks. Needs the fast kernels.
    Bf16,
}

/// How to compute: which of our kernels to use and at what precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelPolicy {
    /// Our CPU kernels where they apply (f32 tensors on the CPU); off, every op is candle's own.
    pub fast: bool,
    /// 3x3 stride-1 convolutions through Winograd F(4x4, 3x3) where it pays (fast kernels only).
    pub winograd: bool,
    /// bf16 products on Intel AMX where the CPU has it.
    pub amx: bool,
    /// bf16 products with AVX512_BF16 where the CPU has it and AMX is not used. With neither,
    /// bf16 products round their inputs to bf16 and multiply in f32: the same numerics, slower
    /// than f32 ([`KernelPolicy::bf16_unit`]).
    pub avx512_bf16: bool,
    /// Precision of the products ([`Precision::Bf16`] only with `fast`).
    pub precision: Precision,
}

impl Default for KernelPolicy {
    /// Fast kernels, Winograd, AMX and AVX512_BF16 where they apply; f32.
    fn default() -> Self {
        KernelPolicy {
            fast: true,
            winograd: true,
            amx: true,
            avx512_bf16: true,
            precision: Precision::F32,
        }
    }
}

impl KernelPolicy {
    /// candle's own ops everywhere (the reference numerics' plainest path).
    pub fn candle() -> Self {
        KernelPolicy { fast: false, ..Self::default() }
    }

    /// This policy with products in `precision`.
    pub fn with_precision(self, precision: Precision) -> Self {
        KernelPolicy { precision, ..self }
    }

    /// Whether the fast kernels are on and every tensor is f32 on the CPU.
    pub fn applies_to(&self, ts: &[&candle_core::Tensor]) -> bool {
        self.fast && ts.iter().all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
    }

    /// Whether products are bf16 (asked for, and the fast kernels on).
    pub fn bf16(&self) -> bool {
        self.fast && self.precision == Precision::Bf16
    }

    /// Whether bf16 products run on AMX: asked for, and the CPU and OS allow it.
    pub fn uses_amx(&self) -> bool {
        self.bf16_unit() == Unit::Amx
    }

    /// What multiplies bf16 products under this policy, decided at run time from what the CPU
    /// has (CPUID) and what the policy allows: AMX, else AVX512_BF16, else the rounding path.
    pub fn bf16_unit(&self) -> Unit {
        Unit::best(self.amx, self.avx512_bf16)
    }

    /// The f32 policy the `GD_*` switches describe, `lookup` giving a setting's value by name
    /// (for a program: `|k| std::env::var(k).ok()`): `GD_KERNELS` (fast kernels), `GD_WINOGRAD`,
    /// `GD_AMX` and `GD_AVX512_BF16`, each on unless set to `0`, `off`, `false` (or `candle`).
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Self {
        KernelPolicy {
            fast: switch_on(lookup("GD_KERNELS").as_deref()),
            winograd: switch_on(lookup("GD_WINOGRAD").as_deref()),
            amx: switch_on(lookup("GD_AMX").as_deref()),
            avx512_bf16: switch_on(lookup("GD_AVX512_BF16").as_deref()),
            precision: Precision::F32,
        }
    }
}

/// Whether a `GD_*` switch's value leaves it on (unset, empty or anything but off).
pub fn switch_on(v: Option<&str>) -> bool {
    !matches!(
        v.map(|s| s.trim().to_ascii_lowercase()).as_deref(),
        Some("candle" | "off" | "0" | "false")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_values() {
        assert!(switch_on(None));
        assert!(switch_on(Some("fast")));
        assert!(switch_on(Some("")));
        assert!(!switch_on(Some("candle")));
        assert!(!switch_on(Some(" CANDLE ")));
        assert!(!switch_on(Some("off")));
        assert!(!switch_on(Some("0")));
    }

    #[test]
    fn from_vars() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(KernelPolicy::from_vars(vars(&[])), KernelPolicy::default());
        let p = KernelPolicy::from_vars(vars(&[("GD_KERNELS", "candle"), ("GD_AMX", "0")]));
        assert!(!p.fast && p.winograd && !p.amx && p.precision == Precision::F32);
        let p = KernelPolicy::from_vars(vars(&[("GD_WINOGRAD", "off")]));
        assert!(p.fast && !p.winograd && p.amx && p.avx512_bf16);
        let p = KernelPolicy::from_vars(vars(&[("GD_AVX512_BF16", "0"), ("GD_AMX", "off")]));
        assert!(p.fast && !p.amx && !p.avx512_bf16);
        assert_eq!(p.bf16_unit(), Unit::Rounding);
    }
}
