//! How a run computes: the kernel policy its networks hold, from the `GD_*` environment
//! switches (read here, never by the library) and `--precision`.
//!
//! - `GD_KERNELS=candle` (or `0`, `off`): candle's own ops instead of the fast CPU kernels;
//! - `GD_WINOGRAD=0`: no Winograd convolutions; `GD_AMX=0`: no Intel AMX; `GD_AVX512_BF16=0`:
//!   no AVX512_BF16 (with neither, `--precision bf16` runs f32);
//! - `GD_FROZEN_CACHE=0`: loaded networks do not keep their weights' derived forms (Winograd
//!   transforms, flipped and packed weights), trading speed for memory.
use anyhow::{bail, Result};
use candle_core::Device;
use guided_diffusion::kernels::{Bf16Unit, KernelPolicy, Precision};
use guided_diffusion::models::Net;

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The policy of a run in f32, from the environment.
pub fn from_env() -> KernelPolicy {
    KernelPolicy::from_vars(var)
}

/// The policy of a run with `--precision` (`f32` or `bf16`) on `device` (named `device_flag` on
/// the command line): bf16 is CPU only, with the fast kernels on, and runs on Intel AMX or
/// AVX512_BF16, whichever the CPU has (and `GD_AMX` / `GD_AVX512_BF16` allow). On a CPU with
/// neither, bf16 would only round (slower than f32): the run is f32, and says so (unless
/// `quiet`).
pub fn with_precision(
    precision: &str,
    device: &Device,
    device_flag: &str,
    quiet: bool,
) -> Result<KernelPolicy> {
    let policy = from_env();
    if precision != "bf16" {
        return Ok(policy);
    }
    if !device.is_cpu() {
        bail!("--precision bf16: the bf16 convolutions are CPU kernels; on {device_flag} use f32");
    }
    if !policy.fast {
        bail!("--precision bf16 needs the fast CPU kernels, which GD_KERNELS turned off");
    }
    let bf16 = policy.with_precision(Precision::Bf16);
    if bf16.bf16_unit() == Bf16Unit::Rounding {
        if !quiet {
            eprintln!(
                "note: --precision bf16: this CPU has neither Intel AMX nor AVX512_BF16 (or \
                 GD_AMX / GD_AVX512_BF16 turned them off), so bf16 would be slower than f32; \
                 running in f32"
            );
        }
        return Ok(policy);
    }
    Ok(bf16)
}

/// Whether loaded networks keep their weights' derived forms (`GD_FROZEN_CACHE` unset or on).
pub fn keep_forms() -> bool {
    guided_diffusion::kernels::policy::switch_on(var("GD_FROZEN_CACHE").as_deref())
}

/// A loaded network set up for the run: its policy, and frozen (it was loaded so) unless
/// `GD_FROZEN_CACHE` turns the kept weight forms off.
pub fn prepare(mut net: Net, policy: KernelPolicy) -> Net {
    net.set_policy(policy);
    if !keep_forms() {
        net.thaw();
    }
    net
}

/// The process-wide settings, first thing in `main` (`kernels::tune_process`, from the
/// environment).
pub fn tune_process() {
    guided_diffusion::kernels::tune_process(var);
}
