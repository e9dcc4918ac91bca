//! Timestep respacing (`respace.space_timesteps` of the reference): which original timesteps a
//! shortened process keeps, from `"250"`, `"10,15,20"` or `"ddimN"`. Python's float accumulation
//! and banker's rounding (`round(166.5) == 166`) are reproduced; impossible requests are errors.
use std::collections::BTreeSet;

use crate::{bail, Result};

/// The set of original timesteps (sorted) to keep out of `num_timesteps`, for a respacing string:
/// `"ddimN"` (the DDIM paper's fixed integer stride giving exactly N steps) or comma-separated
/// per-section step counts (the process is cut into that many equal sections).
///
/// An empty string means no respacing (all timesteps), as `create_gaussian_diffusion` does.
pub fn space_timesteps(num_timesteps: usize, section_counts: &str) -> Result<BTreeSet<usize>> {
    let spec = section_counts.trim();
    if spec.is_empty() {
        return Ok((0..num_timesteps).collect());
    }
    if let Some(rest) = spec.strip_prefix("ddim") {
        let desired: usize = rest.trim().parse().map_err(|_| {
            crate::Error::msg(format!(
                "invalid respacing {section_counts:?}: expected \"ddimN\" with N a positive integer"
            ))
        })?;
        return ddim_timesteps(num_timesteps, desired);
    }
    let counts = spec
        .split(',')
        .map(|s| {
            s.trim().parse::<usize>().map_err(|_| {
                crate::Error::msg(format!(
                    "invalid respacing {section_counts:?}: {s:?} is not a non-negative integer step count"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    space_timesteps_sections(num_timesteps, &counts)
}

/// `"ddimN"`: the smallest stride `i >= 1` (and `< num_timesteps`) with `len(range(0, T, i)) == N`.
pub fn ddim_timesteps(num_timesteps: usize, desired_count: usize) -> Result<BTreeSet<usize>> {
    for stride in 1..num_timesteps {
        if num_timesteps.div_ceil(stride) == desired_count {
            return Ok((0..num_timesteps).step_by(stride).collect());
        }
    }
    bail!("cannot create exactly {desired_count} steps out of {num_timesteps} with an integer stride (respacing \"ddim{desired_count}\")")
}

/// Per-section step counts: section `i` has `T / n` steps (+1 for the first `T % n` sections) and
/// keeps `counts[i]` of them, evenly strided with Python's float accumulation and `round`.
pub fn space_timesteps_sections(num_timesteps: usize, counts: &[usize]) -> Result<BTreeSet<usize>> {
    if counts.is_empty() {
        bail!("respacing needs at least one section count");
    }
    let size_per = num_timesteps / counts.len();
    let extra = num_timesteps % counts.len();
    let mut start_idx = 0usize;
    let mut all = BTreeSet::new();
    for (i, &count) in counts.iter().enumerate() {
        let size = size_per + usize::from(i < extra);
        if size < count {
            bail!(
                "cannot divide section {i} of {size} steps into {count} (respacing {counts:?} of {num_timesteps} steps)"
            );
        }
        let frac_stride = if count <= 1 { 1.0 } else { (size - 1) as f64 / (count - 1) as f64 };
        let mut cur_idx = 0.0f64;
        for _ in 0..count {
            all.insert(start_idx + cur_idx.round_ties_even() as usize);
            cur_idx += frac_stride;
        }
        start_idx += size;
    }
    Ok(all)
}
