//! How a run computes: the kernel policy its networks hold, from the `GD_*` environment
//! switches (read here, never by the library) and `--precision`.
//!
//! - `GD_KERNELS=candle` (or `0`, `off`): candle's own ops instead of the fast CPU kernels;
//! - `GD_WINOGRAD=0`: no Winograd convolutions; `GD_AMX=0`: no Intel AMX;
//! - `GD_FROZEN_CACHE=0`: loaded networks do not keep their weights' derived forms (Winograd
//!   transforms, flipped and packed weights), trading speed for memory.
use anyhow::{bail, Result};
use candle_core::Device;
use guided_diffusion::kernels::{KernelPolicy, Precision};
use guided_diffusion::models::Net;

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The policy of a run in f32, from the environment.
pub fn from_env() -> KernelPolicy {
    KernelPolicy::from_vars(var)
}

/// The policy of a run with `--precision` (`f32` or `bf16`) on `device` (named `device_flag` on
/// the command line): bf16 is CPU only, with the fast kernels on; without AMX it says that it
/// will be slow (unless `quiet`).
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
    if !quiet && !policy.uses_amx() {
        eprintln!(
            "note: this CPU has no usable Intel AMX: bf16 gives its rounding but not its speed"
        );
    }
    Ok(policy.with_precision(Precision::Bf16))
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

/// Whether to tune glibc's malloc (`GD_MALLOC=default` leaves it as it is).
pub fn tune_malloc() {
    if !guided_diffusion::kernels::malloc::keep_default(var("GD_MALLOC").as_deref()) {
        guided_diffusion::kernels::malloc::tune();
    }
}
