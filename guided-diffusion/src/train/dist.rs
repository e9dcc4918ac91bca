//! The data-parallel hook: rank/world size and gradient averaging. [`SingleProcess`] is the
//! default; with the cargo feature `mpi`, [`mpi::Mpi`] implements [`Distributed`] over MPI
//! (allreduce-mean of gradients as DDP does, broadcast of initial parameters from rank 0 — the
//! reference's `sync_params` — and an agreement on skipped steps).
//!
//! # Launching a multi-process run
//!
//! Build with the feature (Debian: `apt-get install libopenmpi-dev openmpi-bin libclang-dev`,
//! the last for mpi-sys's bindgen), then start one process per rank with `mpirun`:
//!
//! ```text
//! cargo build --release --features mpi -p gdiff
//! mpirun -np 4 target/release/gdiff train --data_dir fashion-mnist --image_size 32 \
//!     --batch_size 16 --log_dir runs/fm ...        # as root add --allow-run-as-root
//! ```
//!
//! [`init_from_env`] picks MPI when the process was started by an MPI launcher. `--batch_size`
//! is per rank, as in the reference: the global batch is `N * batch_size`. Data: every rank
//! reads the same shuffled sequence of global batches of `N * batch_size` items and keeps rows
//! `[rank * b, (rank + 1) * b)` ([`RankSlice`]); step randomness (timesteps, noise) is drawn
//! per sample from the sample's global row ([`crate::train::StepContext::row_rng`]). Hence
//! `N` ranks with batch `b` compute the same update, up to floating-point summation order, as
//! one process with batch `N * b` and the same seed — and the ranks never see the same sample
//! in a step. Parameters start equal (same seeded init, then a broadcast from rank 0); only
//! rank 0 writes logs and checkpoints (the others get a null logger) and every rank resumes
//! from the same checkpoint directory, which must therefore be shared (`--log_dir`).
//!
//! Launched by `mpirun` but built without the feature, [`init_from_env`] fails rather than
//! letting `N` independent copies train and overwrite each other's checkpoints.
use candle_core::{Device, Tensor};

use crate::data::{Batch, BatchSource, ClassList};
use crate::{bail, Result};

#[cfg(feature = "mpi")]
pub mod mpi;

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
    /// Replaces `bytes` by rank 0's (e.g. the log directory rank 0 chose). The default goes
    /// through [`Distributed::broadcast_from_root`] with one f32 per byte (exact).
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        let mut len = [Tensor::new(&[bytes.len() as f32], &Device::Cpu)?];
        self.broadcast_from_root(&mut len)?;
        let n = len[0].to_vec1::<f32>()?[0] as usize;
        bytes.resize(n, 0);
        let data: Vec<f32> = bytes.iter().map(|&b| b as f32).collect();
        let mut t = [Tensor::from_vec(data, n, &Device::Cpu)?];
        self.broadcast_from_root(&mut t)?;
        *bytes = t[0].to_vec1::<f32>()?.into_iter().map(|v| v as u8).collect();
        Ok(())
    }
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
    fn broadcast_bytes(&self, _: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
}

/// The world size an MPI launcher announced in the environment (OpenMPI, MPICH/PMI, PMIx),
/// if any.
pub fn launcher_world_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok().and_then(|v| v.trim().parse().ok()))
}

/// Whether this binary was built with the `mpi` feature.
pub const MPI_ENABLED: bool = cfg!(feature = "mpi");

/// MPI when started by an MPI launcher and built with the `mpi` feature, else one process.
/// Call once per process, and keep the result for the whole run (dropping it finalizes MPI).
pub fn init_from_env() -> Result<Box<dyn Distributed>> {
    let launched = launcher_world_size();
    #[cfg(feature = "mpi")]
    if launched.is_some() {
        return Ok(Box::new(mpi::Mpi::init()?));
    }
    if let Some(n) = launched.filter(|&n| n > 1) {
        bail!(
            "started by an MPI launcher with {n} ranks, but this binary was built without MPI support: \
             every rank would train alone on the same files (rebuild with `--features mpi`)"
        );
    }
    Ok(Box::new(SingleProcess))
}

/// Rank `rank`'s share of a source of global batches: rows `[rank * b, (rank + 1) * b)` of
/// each batch, `b = global / world_size`. Wrap a loader built with the global batch size
/// (`world_size * --batch_size`) and the same seed on every rank.
///
/// Every rank prepares the whole global batch and keeps its slice: simple and exactly equal
/// to the single-process order, at `world_size` times the decoding work (cheap for in-memory
/// data such as Fashion-MNIST; for large JPEG folders a loader that decodes only its rows is
/// the next step).
pub struct RankSlice<S: BatchSource> {
    inner: S,
    rank: usize,
    world_size: usize,
}

impl<S: BatchSource> RankSlice<S> {
    pub fn new(inner: S, rank: usize, world_size: usize) -> Result<Self> {
        if world_size == 0 || rank >= world_size {
            bail!("invalid rank {rank} of world size {world_size}");
        }
        Ok(Self { inner, rank, world_size })
    }
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: BatchSource> BatchSource for RankSlice<S> {
    fn next_batch(&mut self) -> Result<Batch> {
        let g = self.inner.next_batch()?;
        let n = g.len();
        if n % self.world_size != 0 {
            bail!("global batch of {n} does not split into {} ranks", self.world_size);
        }
        let b = n / self.world_size;
        g.narrow(self.rank * b, b)
    }
    fn seek(&mut self, n: u64) -> Result<()> {
        self.inner.seek(n)
    }
    fn classes(&self) -> Option<ClassList> {
        self.inner.classes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batch `k` of 6 rows holds the values `6k .. 6k + 6`.
    struct Counting(u64);
    impl BatchSource for Counting {
        fn next_batch(&mut self) -> Result<Batch> {
            let v: Vec<f32> = (0..6).map(|i| (self.0 * 6 + i) as f32).collect();
            let index = self.0;
            self.0 += 1;
            Ok(Batch {
                images: Tensor::from_vec(v, (6, 1, 1, 1), &Device::Cpu)?,
                labels: None,
                index,
            })
        }
        fn seek(&mut self, n: u64) -> Result<()> {
            self.0 = n;
            Ok(())
        }
    }

    #[test]
    fn rank_slices_partition_the_global_batch_in_order() {
        let mut all = Vec::new();
        for r in 0..3 {
            let mut s = RankSlice::new(Counting(0), r, 3).unwrap();
            s.seek(2).unwrap();
            let b = s.next_batch().unwrap();
            assert_eq!(b.index, 2);
            all.extend(b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        assert_eq!(all, (12..18).map(|v| v as f32).collect::<Vec<_>>());
        assert!(RankSlice::new(Counting(0), 3, 3).is_err());
        assert!(RankSlice::new(Counting(0), 0, 4).unwrap().next_batch().is_err());
    }

    #[test]
    fn single_process_collectives_are_identities() {
        let d = SingleProcess;
        let mut b = b"dir".to_vec();
        d.broadcast_bytes(&mut b).unwrap();
        assert_eq!(b, b"dir");
        assert!(d.any(true).unwrap() && !d.any(false).unwrap());
    }
}
