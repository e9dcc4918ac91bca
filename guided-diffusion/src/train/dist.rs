//! The data-parallel hook: rank/world size and gradient averaging. One process is the only
//! implementation here; an MPI implementation (behind a cargo feature) plugs in by implementing
//! [`Distributed`] — allreduce-mean of gradients as DDP does, broadcast of initial parameters
//! from rank 0 (the reference's `sync_params`), and an agreement on skipped steps.
use candle_core::Tensor;

use crate::Result;

pub trait Distributed {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Replaces every tensor by its mean over ranks.
    fn all_reduce_mean(&self, tensors: &mut [Tensor]) -> Result<()>;
    /// Replaces every tensor by rank 0's value.
    fn broadcast_from_root(&self, tensors: &mut [Tensor]) -> Result<()>;
    /// True on every rank if `flag` is true on any (e.g. "my loss was not finite").
    fn any(&self, flag: bool) -> Result<bool>;
    fn barrier(&self) -> Result<()>;
}

/// A single process: rank 0 of 1; every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Distributed for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_mean(&self, _: &mut [Tensor]) -> Result<()> {
        Ok(())
    }
    fn broadcast_from_root(&self, _: &mut [Tensor]) -> Result<()> {
        Ok(())
    }
    fn any(&self, flag: bool) -> Result<bool> {
        Ok(flag)
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}
