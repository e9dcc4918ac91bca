//! [`Distributed`] over MPI (rsmpi; tested with Debian's OpenMPI). Built only with the cargo
//! feature `mpi`. Every collective packs all tensors into one flat host buffer, so a step costs
//! one `MPI_Allreduce` whatever the number of parameters (plus two tiny ones: a shape check and
//! the non-finite agreement).
use candle_core::{DType, Tensor};
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::Distributed;
use crate::{bail, Error, Result};

/// `MPI_COMM_WORLD` of this process. Keep it alive for the whole run: dropping it finalizes MPI.
pub struct Mpi {
    world: SimpleCommunicator,
    // Declared last so it is dropped (MPI_Finalize) after the communicator.
    _universe: Universe,
}

impl Mpi {
    /// `MPI_Init`; fails if MPI was already initialized in this process.
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize()
            .ok_or_else(|| Error::msg("MPI is already initialized in this process"))?;
        let world = universe.world();
        Ok(Self { world, _universe: universe })
    }

    /// Fails unless every rank passes the same `n` (a mismatch would otherwise corrupt the
    /// buffers of the collective that follows, or hang it).
    fn check_same_len(&self, what: &str, n: usize) -> Result<()> {
        let n = n as u64;
        let (mut lo, mut hi) = (0u64, 0u64);
        self.world.all_reduce_into(&n, &mut lo, SystemOperation::min());
        self.world.all_reduce_into(&n, &mut hi, SystemOperation::max());
        if lo != hi {
            bail!("MPI {what}: ranks disagree on the number of values ({lo} vs {hi}; rank {} has {n})", self.world.rank());
        }
        Ok(())
    }
}

/// A length as MPI's element count (a C int): larger buffers are an error, not a wrap-around.
fn count(n: usize) -> Result<mpi::Count> {
    mpi::Count::try_from(n)
        .map_err(|_| Error::msg(format!("MPI: {n} bytes exceed one message's limit (2 GiB)")))
}

/// Offsets of each rank's part in a gathered buffer, and the total length.
fn displacements(counts: &[mpi::Count]) -> Result<(Vec<mpi::Count>, usize)> {
    let mut displs = Vec::with_capacity(counts.len());
    let mut total = 0usize;
    for &c in counts {
        displs.push(count(total)?);
        total += usize::try_from(c).map_err(|_| Error::msg("MPI: a negative count"))?;
    }
    count(total)?;
    Ok((displs, total))
}

/// The gathered buffer cut back into each rank's part.
fn split(all: &[u8], counts: &[mpi::Count], displs: &[mpi::Count]) -> Vec<Vec<u8>> {
    counts
        .iter()
        .zip(displs)
        .map(|(&c, &d)| all[d as usize..d as usize + c as usize].to_vec())
        .collect()
}

/// All tensors flattened into one f32 buffer (or f64 if any tensor is f64, so nothing is
/// rounded), with what is needed to rebuild them.
enum Flat {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

fn flatten(tensors: &[Tensor]) -> Result<Flat> {
    let wide = tensors.iter().any(|t| t.dtype() == DType::F64);
    let n: usize = tensors.iter().map(|t| t.elem_count()).sum();
    Ok(if wide {
        let mut v = Vec::with_capacity(n);
        for t in tensors {
            v.extend(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?);
        }
        Flat::F64(v)
    } else {
        let mut v = Vec::with_capacity(n);
        for t in tensors {
            v.extend(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        }
        Flat::F32(v)
    })
}

fn unflatten(flat: &Flat, tensors: &mut [Tensor]) -> Result<()> {
    let mut off = 0;
    for t in tensors.iter_mut() {
        let n = t.elem_count();
        let host = match flat {
            Flat::F32(v) => {
                Tensor::from_slice(&v[off..off + n], t.dims(), &candle_core::Device::Cpu)?
            }
            Flat::F64(v) => {
                Tensor::from_slice(&v[off..off + n], t.dims(), &candle_core::Device::Cpu)?
            }
        };
        *t = host.to_dtype(t.dtype())?.to_device(t.device())?;
        off += n;
    }
    Ok(())
}

impl Distributed for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world_size(&self) -> usize {
        self.world.size() as usize
    }

    /// Sum by `MPI_Allreduce` into one buffer, then divide by the world size (DDP's averaging).
    fn all_reduce_mean(&self, tensors: &mut [Tensor]) -> Result<()> {
        let flat = flatten(tensors)?;
        let w = self.world.size();
        let out = match flat {
            Flat::F32(send) => {
                self.check_same_len("all_reduce_mean", send.len())?;
                let mut recv = vec![0f32; send.len()];
                self.world.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
                let inv = 1.0 / w as f32;
                recv.iter_mut().for_each(|x| *x *= inv);
                Flat::F32(recv)
            }
            Flat::F64(send) => {
                self.check_same_len("all_reduce_mean", send.len())?;
                let mut recv = vec![0f64; send.len()];
                self.world.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
                let inv = 1.0 / w as f64;
                recv.iter_mut().for_each(|x| *x *= inv);
                Flat::F64(recv)
            }
        };
        unflatten(&out, tensors)
    }

    fn broadcast_from_root(&self, tensors: &mut [Tensor]) -> Result<()> {
        let mut flat = flatten(tensors)?;
        let root = self.world.process_at_rank(0);
        match &mut flat {
            Flat::F32(v) => {
                self.check_same_len("broadcast_from_root", v.len())?;
                root.broadcast_into(&mut v[..]);
            }
            Flat::F64(v) => {
                self.check_same_len("broadcast_from_root", v.len())?;
                root.broadcast_into(&mut v[..]);
            }
        }
        unflatten(&flat, tensors)
    }

    fn any(&self, flag: bool) -> Result<bool> {
        let mine = flag as u32;
        let mut all = 0u32;
        self.world.all_reduce_into(&mine, &mut all, SystemOperation::max());
        Ok(all != 0)
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }

    fn gather_bytes(&self, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
        let root = self.world.process_at_rank(0);
        let n = count(bytes.len())?;
        if self.world.rank() != 0 {
            root.gather_into(&n);
            root.gather_varcount_into(bytes);
            return Ok(None);
        }
        let mut counts = vec![0 as mpi::Count; self.world.size() as usize];
        root.gather_into_root(&n, &mut counts[..]);
        let (displs, total) = displacements(&counts)?;
        let mut all = vec![0u8; total];
        {
            let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            root.gather_varcount_into_root(bytes, &mut part);
        }
        Ok(Some(split(&all, &counts, &displs)))
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let n = count(bytes.len())?;
        let mut counts = vec![0 as mpi::Count; self.world.size() as usize];
        self.world.all_gather_into(&n, &mut counts[..]);
        let (displs, total) = displacements(&counts)?;
        let mut all = vec![0u8; total];
        {
            let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(bytes, &mut part);
        }
        Ok(split(&all, &counts, &displs))
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        let root = self.world.process_at_rank(0);
        let mut n = bytes.len() as u64;
        root.broadcast_into(&mut n);
        bytes.resize(n as usize, 0);
        root.broadcast_into(&mut bytes[..]);
        Ok(())
    }
}
