//! MPI ranks: this process's place in the job ([`init`], for every command), and sampling
//! across the ranks: each rank's part of a run ([`Samples`] of its batches) is packed,
//! gathered on rank 0 in one collective and put back in global batch order, so rank 0 writes
//! the same files one process would. A rank that fails ends the whole job (`MPI_Abort`) with
//! its rank and error on stderr, never leaving the others waiting.
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use guided_diffusion::dist::{self, Distributed};
use guided_diffusion::sample::{Samples, Shard};

/// This process's place in the job: MPI when launched by `mpirun` (binary built with the `mpi`
/// feature), else one process. Call once per process and keep the result for the whole run.
pub fn init() -> Result<Box<dyn Distributed>> {
    Ok(dist::init(super::env::launcher_world_size())?)
}

/// The shard of `dist`.
pub fn shard(dist: &dyn Distributed) -> Shard {
    Shard { rank: dist.rank(), world: dist.world_size() }
}

/// Runs `body`; on an error with several ranks, prints it with the rank and ends the job.
pub fn run_or_abort<T>(dist: &dyn Distributed, body: impl FnOnce() -> Result<T>) -> Result<T> {
    let r = body().and_then(|v| {
        // A test's way to make one rank fail (`GDIFF_FAIL_RANK=1 mpirun -np 2 gdiff ...`).
        match std::env::var("GDIFF_FAIL_RANK").ok().and_then(|v| v.parse::<usize>().ok()) {
            Some(k) if k == dist.rank() => bail!("failing on purpose (GDIFF_FAIL_RANK={k})"),
            _ => Ok(v),
        }
    });
    match r {
        Err(e) if dist.world_size() > 1 => {
            eprintln!("error (rank {} of {}): {e:#}", dist.rank(), dist.world_size());
            dist.abort(1)
        }
        other => other,
    }
}

/// Rank 0's `seed` on every rank.
pub fn same_seed(dist: &dyn Distributed, seed: u64) -> Result<u64> {
    let mut b = seed.to_le_bytes().to_vec();
    dist.broadcast_bytes(&mut b)?;
    let Ok(b) = <[u8; 8]>::try_from(b.as_slice()) else {
        bail!("the broadcast seed is not 8 bytes")
    };
    Ok(u64::from_le_bytes(b))
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Reads a little-endian u64 at `*at`.
fn get_u64(b: &[u8], at: &mut usize) -> Result<u64> {
    let Some(s) = b.get(*at..*at + 8) else { bail!("a gathered part ends early") };
    *at += 8;
    Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

fn get_bytes<'a>(b: &'a [u8], at: &mut usize) -> Result<&'a [u8]> {
    let n = get_u64(b, at)? as usize;
    let Some(s) = b.get(*at..at.saturating_add(n)) else { bail!("a gathered part ends early") };
    *at += n;
    Ok(s)
}

/// One rank's part as bytes: its batches, images, labels, float samples and costs.
fn pack(s: &Samples) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    put_u64(&mut out, s.batches.len() as u64);
    for &b in &s.batches {
        put_u64(&mut out, b as u64);
    }
    for n in &s.nfe_per_batch {
        put_u64(&mut out, *n as u64);
    }
    let images: Vec<u8> = s.images.flatten_all()?.to_vec1()?;
    put_u64(&mut out, images.len() as u64);
    out.extend_from_slice(&images);
    let labels: Vec<u8> =
        s.labels.iter().flatten().flat_map(|l| l.to_le_bytes()).collect::<Vec<_>>();
    put_u64(&mut out, u64::from(s.labels.is_some()));
    put_u64(&mut out, labels.len() as u64);
    out.extend_from_slice(&labels);
    let float: Vec<u8> = match &s.float {
        Some(f) => {
            f.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        None => Vec::new(),
    };
    put_u64(&mut out, u64::from(s.float.is_some()));
    put_u64(&mut out, float.len() as u64);
    out.extend_from_slice(&float);
    let rows = s.images.dim(0)? as f64;
    for v in [s.model_evals * rows, s.classifier_evals * rows] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// One batch of a gathered run.
struct Part {
    batch: usize,
    nfe: usize,
    images: Vec<u8>,
    labels: Option<Vec<i64>>,
    float: Option<Vec<f32>>,
}

/// A rank's parts, one per batch (`rows_of(batch)` gives each batch's sample count), and its
/// summed network and classifier rows.
fn unpack(
    b: &[u8],
    image_len: usize,
    rows_of: &dyn Fn(usize) -> usize,
) -> Result<(Vec<Part>, f64, f64)> {
    let mut at = 0;
    let k = get_u64(b, &mut at)? as usize;
    let batches: Vec<usize> =
        (0..k).map(|_| get_u64(b, &mut at).map(|v| v as usize)).collect::<Result<_>>()?;
    let nfes: Vec<usize> =
        (0..k).map(|_| get_u64(b, &mut at).map(|v| v as usize)).collect::<Result<_>>()?;
    let images = get_bytes(b, &mut at)?;
    let has_labels = get_u64(b, &mut at)? == 1;
    let labels = get_bytes(b, &mut at)?;
    let has_float = get_u64(b, &mut at)? == 1;
    let float = get_bytes(b, &mut at)?;
    let f = |at: &mut usize| -> Result<f64> { Ok(f64::from_bits(get_u64(b, at)?)) };
    let (model_rows, classifier_rows) = (f(&mut at)?, f(&mut at)?);
    let (mut img_at, mut lab_at, mut flt_at) = (0usize, 0usize, 0usize);
    let mut parts = Vec::with_capacity(k);
    for (&batch, &nfe) in batches.iter().zip(&nfes) {
        let n = rows_of(batch);
        let take = |src: &[u8], at: &mut usize, len: usize| -> Result<Vec<u8>> {
            let Some(s) = src.get(*at..*at + len) else { bail!("a gathered batch ends early") };
            *at += len;
            Ok(s.to_vec())
        };
        let img = take(images, &mut img_at, n * image_len)?;
        let lab = if has_labels {
            let raw = take(labels, &mut lab_at, n * 8)?;
            Some(
                raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8"))).collect(),
            )
        } else {
            None
        };
        let flt = if has_float {
            let raw = take(float, &mut flt_at, n * image_len * 4)?;
            Some(
                raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect(),
            )
        } else {
            None
        };
        parts.push(Part { batch, nfe, images: img, labels: lab, float: flt });
    }
    Ok((parts, model_rows, classifier_rows))
}

/// Gathers every rank's part on rank 0 and puts the batches back in order: rank 0 gets the
/// whole run, as one process would have made it; the other ranks get `None`. `shape` is
/// `[C, H, W]` of one sample; `rows_of(batch)` the batch's sample count.
pub fn gather(
    dist: &dyn Distributed,
    part: Samples,
    shape: [usize; 3],
    rows_of: &dyn Fn(usize) -> usize,
) -> Result<Option<Samples>> {
    if dist.world_size() == 1 {
        return Ok(Some(part));
    }
    let Some(all) = dist.gather_bytes(&pack(&part)?)? else {
        return Ok(None);
    };
    let [c, h, w] = shape;
    let image_len = c * h * w;
    let mut parts = Vec::new();
    let (mut model_rows, mut classifier_rows) = (0.0, 0.0);
    for bytes in &all {
        let (p, m, k) = unpack(bytes, image_len, rows_of)?;
        parts.extend(p);
        model_rows += m;
        classifier_rows += k;
    }
    parts.sort_by_key(|p| p.batch);
    let total: usize = parts.iter().map(|p| p.images.len() / image_len).sum();
    let images: Vec<u8> = parts.iter().flat_map(|p| p.images.iter().copied()).collect();
    let labels = if parts.iter().all(|p| p.labels.is_some()) {
        Some(parts.iter().flat_map(|p| p.labels.clone().unwrap_or_default()).collect())
    } else {
        None
    };
    let float = if part.float.is_some() {
        let v: Vec<f32> = parts.iter().flat_map(|p| p.float.clone().unwrap_or_default()).collect();
        Some(Tensor::from_vec(v, (total, c, h, w), &Device::Cpu)?)
    } else {
        None
    };
    let per = |rows: f64| rows / total.max(1) as f64;
    Ok(Some(Samples {
        images: Tensor::from_vec(images, (total, h, w, c), &Device::Cpu)?.to_dtype(DType::U8)?,
        labels,
        batches: parts.iter().map(|p| p.batch).collect(),
        float,
        nfe_per_batch: parts.iter().map(|p| p.nfe).collect(),
        model_evals: per(model_rows),
        classifier_evals: per(classifier_rows),
    }))
}
