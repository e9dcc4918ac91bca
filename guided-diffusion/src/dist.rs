//! Several processes: rank/world size and the collectives that training, sampling and the
//! likelihood need. [`SingleProcess`] is the default; with the cargo feature `mpi`,
//! [`mpi::Mpi`] implements [`Distributed`] over MPI (allreduce-mean of gradients as DDP does,
//! broadcast of initial parameters from rank 0 — the reference's `sync_params` — an agreement
//! on skipped steps, gathers of samples and of the loss-aware sampler's losses, and
//! `MPI_Abort` when a rank fails, so that no rank waits forever in a collective).
//!
//! Sampling splits its batches over the ranks by global batch index (batch `k` on rank
//! `k % N`) and gathers them on rank 0, so with a seed the output equals the one-process output
//! for any `N`, and an uneven split costs every rank the same one gather.
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
//! [`init`] picks MPI when the process was started by an MPI launcher: the program reads the
//! world size the launcher announced in the environment and passes it (gdiff's `cli::env`; the
//! library reads no environment). `--batch_size` is per rank, as in the reference: the global
//! batch is `N * batch_size`. Data: every rank reads the same shuffled sequence of global
//! batches of `N * batch_size` items and keeps rows `[rank * b, (rank + 1) * b)`, decoding only
//! those ([`crate::data::LoaderConfig::rows`]); step randomness (timesteps, noise) is drawn
//! per sample from the sample's global row ([`crate::train::StepContext::row_rng`]). Hence
//! `N` ranks with batch `b` compute the same update, up to floating-point summation order, as
//! one process with batch `N * b` and the same seed — and the ranks never see the same sample
//! in a step. Parameters start equal (same seeded init, then a broadcast from rank 0); only
//! rank 0 writes logs and checkpoints (the others get a null logger) and every rank resumes
//! from the same checkpoint directory, which must therefore be shared (`--log_dir`).
//!
//! Launched by `mpirun` but built without the feature, [`init`] fails rather than
//! letting `N` independent copies train and overwrite each other's checkpoints.
use candle_core::{Device, Tensor};

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
    /// Every rank's `bytes`, in rank order, on rank 0 (`None` on the other ranks). One
    /// collective whatever the lengths.
    fn gather_bytes(&self, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>>;
    /// Every rank's `bytes`, in rank order, on every rank.
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Ends every process of the job with `code` (after printing what failed): a failing rank
    /// must not leave the others waiting in a collective.
    fn abort(&self, code: i32) -> !;
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
    fn gather_bytes(&self, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
        Ok(Some(vec![bytes.to_vec()]))
    }
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![bytes.to_vec()])
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Little-endian f64 values as bytes, and back (for gathers of host values).
pub fn f64s_to_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Inverse of [`f64s_to_bytes`].
pub fn bytes_to_f64s(b: &[u8]) -> Result<Vec<f64>> {
    if !b.len().is_multiple_of(8) {
        bail!("a gathered f64 buffer of {} bytes", b.len());
    }
    Ok(b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
}

/// Which of `num_batches` global batches rank `rank` of `world_size` runs: `k % world_size ==
/// rank`. Every batch keeps the composition it has in one process.
pub fn rank_batches(
    num_batches: usize,
    rank: usize,
    world_size: usize,
) -> impl Iterator<Item = usize> {
    (rank..num_batches).step_by(world_size.max(1))
}

/// Whether this binary was built with the `mpi` feature.
pub const MPI_ENABLED: bool = cfg!(feature = "mpi");

/// MPI when started by an MPI launcher and built with the `mpi` feature, else one process.
/// `launched` is the world size the launcher announced (in the environment: OpenMPI's
/// `OMPI_COMM_WORLD_SIZE`, MPICH's `PMI_SIZE`, PMIx's `PMIX_SIZE`), `None` when not launched.
/// Call once per process, and keep the result for the whole run (dropping it finalizes MPI).
pub fn init(launched: Option<usize>) -> Result<Box<dyn Distributed>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_batches_cover_every_batch_once() {
        let mut seen: Vec<usize> = (0..3).flat_map(|r| rank_batches(7, r, 3)).collect();
        seen.sort();
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
        assert_eq!(rank_batches(7, 1, 3).collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(rank_batches(2, 3, 4).count(), 0, "more ranks than batches");
        let v = [0.5, -2.0, f64::MAX];
        assert_eq!(bytes_to_f64s(&f64s_to_bytes(&v)).unwrap(), v);
        assert!(bytes_to_f64s(&[0; 7]).is_err());
    }

    #[test]
    fn init_is_one_process_unless_a_launcher_announced_ranks() {
        assert_eq!(init(None).unwrap().world_size(), 1);
        #[cfg(not(feature = "mpi"))]
        {
            assert_eq!(init(Some(1)).unwrap().world_size(), 1);
            let e = init(Some(2)).err().unwrap().to_string();
            assert!(e.contains("2 ranks") && e.contains("--features mpi"), "{e}");
        }
    }

    #[test]
    fn single_process_collectives_are_identities() {
        let d = SingleProcess;
        let mut b = b"dir".to_vec();
        d.broadcast_bytes(&mut b).unwrap();
        assert_eq!(b, b"dir");
        assert!(d.any(true).unwrap() && !d.any(false).unwrap());
        assert_eq!(d.gather_bytes(b"x").unwrap(), Some(vec![b"x".to_vec()]));
        assert_eq!(d.all_gather_bytes(b"y").unwrap(), vec![b"y".to_vec()]);
    }
}
