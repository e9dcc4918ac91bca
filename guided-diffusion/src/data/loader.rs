//! Endless, reproducible batches from a [`Dataset`], prepared by background threads.
//!
//! Order: batch `b` belongs to epoch `b / batches_per_epoch`; each epoch is a fresh permutation
//! drawn from `(seed, epoch)` (or the identity when `shuffle` is off, the reference's
//! `deterministic=True`), cut into `batch_size` slices; the remainder is dropped
//! (`drop_last=True`). Item augmentation draws from `(seed, global item position)`. Everything a
//! batch contains is therefore a function of `(seed, b)`: [`Loader::seek`] jumps to any batch
//! without decoding the ones before it, which is how a resumed run continues identically.
//!
//! Threads: `workers` threads each claim the next unclaimed batch number, prepare the whole
//! batch, and hand it back; the consumer takes batches strictly in order. At most `prefetch`
//! batches are claimed beyond the one the consumer waits for, which bounds memory. With
//! `workers == 0` batches are prepared on the caller's thread.
//!
//! Several processes (data-parallel training): each sets [`LoaderConfig::rows`] to its rows of
//! the global batch, and decodes only those; the rows are exactly the ones one process with
//! the global batch would have at those positions (same items, same augmentation).
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;

use super::dataset::Dataset;
use super::files::ClassList;
use super::rng::{domain, stream};
use crate::{bail, Error, Result};

/// A batch: images `[N, C, H, W]` f32 in [-1, 1] and labels `[N]` u32 when labelled.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Option<Tensor>,
    /// The batch number (0-based, counted from the start of training).
    pub index: u64,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.images.dims().first().copied().unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Rows `start..start+len` (a micro-batch).
    pub fn narrow(&self, start: usize, len: usize) -> Result<Batch> {
        Ok(Batch {
            images: self.images.narrow(0, start, len)?,
            labels: match &self.labels {
                Some(l) => Some(l.narrow(0, start, len)?),
                None => None,
            },
            index: self.index,
        })
    }
}

/// Anything that yields training batches in order and can jump to batch `n`.
pub trait BatchSource {
    fn next_batch(&mut self) -> Result<Batch>;
    /// Makes the next batch returned be batch number `n`.
    fn seek(&mut self, n: u64) -> Result<()>;
    /// Class names of the data, if labelled (saved in checkpoint metadata).
    fn classes(&self) -> Option<ClassList> {
        None
    }
}

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Reshuffle every epoch (the reference's default); off = `deterministic`.
    pub shuffle: bool,
    pub seed: u64,
    /// Background threads; 0 = prepare on the calling thread.
    pub workers: usize,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// Where batches are delivered.
    pub device: Device,
    /// Only rows `start .. start + len` of each batch of `batch_size` (this rank's share of a
    /// global batch); all rows when `None`.
    pub rows: Option<(usize, usize)>,
}

impl LoaderConfig {
    pub fn new(batch_size: usize, seed: u64) -> Self {
        let workers =
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8);
        Self {
            batch_size,
            shuffle: true,
            seed,
            workers,
            prefetch: 2 * workers,
            device: Device::Cpu,
            rows: None,
        }
    }
}

/// What batch `b` is made of; shared by the workers and the synchronous path.
struct Plan {
    dataset: Arc<dyn Dataset>,
    batch_size: usize,
    /// The rows of each batch this loader delivers.
    rows: std::ops::Range<usize>,
    shuffle: bool,
    seed: u64,
    batches_per_epoch: u64,
    perm_cache: Mutex<Option<(u64, Arc<Vec<usize>>)>>,
}

/// Host-side batch (tensors are built on the consumer's device).
struct HostBatch {
    pixels: Vec<f32>,
    labels: Option<Vec<u32>>,
}

impl Plan {
    fn permutation(&self, epoch: u64) -> Arc<Vec<usize>> {
        let mut cache = self.perm_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((e, p)) = cache.as_ref() {
            if *e == epoch {
                return p.clone();
            }
        }
        let mut perm: Vec<usize> = (0..self.dataset.len()).collect();
        if self.shuffle {
            perm.shuffle(&mut stream(self.seed, domain::SHUFFLE, epoch));
        }
        let perm = Arc::new(perm);
        *cache = Some((epoch, perm.clone()));
        perm
    }

    fn prepare(&self, b: u64) -> Result<HostBatch> {
        let epoch = b / self.batches_per_epoch;
        let slot = (b % self.batches_per_epoch) as usize;
        let perm = self.permutation(epoch);
        let ds = &self.dataset;
        let per_item = ds.channels() * ds.image_size() * ds.image_size();
        let mut pixels = Vec::with_capacity(per_item * self.rows.len());
        let mut labels = Vec::with_capacity(self.rows.len());
        let mut labelled = true;
        for i in self.rows.clone() {
            let idx = perm[slot * self.batch_size + i];
            let mut rng = stream(self.seed, domain::AUGMENT, b * self.batch_size as u64 + i as u64);
            let item = ds.get(idx, &mut rng)?;
            if item.pixels.len() != per_item {
                bail!("data set item {idx} has {} values, expected {per_item}", item.pixels.len());
            }
            pixels.extend_from_slice(&item.pixels);
            match item.label {
                Some(l) => labels.push(l),
                None => labelled = false,
            }
        }
        Ok(HostBatch { pixels, labels: labelled.then_some(labels) })
    }
}

struct Shared {
    next_claim: u64,
    next_deliver: u64,
    ready: BTreeMap<u64, Result<HostBatch>>,
    stop: bool,
}

struct Workers {
    state: Arc<(Mutex<Shared>, Condvar)>,
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    fn start(plan: Arc<Plan>, start: u64, n: usize, prefetch: usize) -> Result<Self> {
        let state = Arc::new((
            Mutex::new(Shared {
                next_claim: start,
                next_deliver: start,
                ready: BTreeMap::new(),
                stop: false,
            }),
            Condvar::new(),
        ));
        let mut w = Self { state, handles: Vec::with_capacity(n) };
        for i in 0..n {
            let (plan, state) = (plan.clone(), w.state.clone());
            let h = std::thread::Builder::new()
                .name(format!("data-loader-{i}"))
                .spawn(move || worker_loop(&plan, &state, prefetch.max(1) as u64))
                .map_err(|e| {
                    Error::msg(format!("--data_workers {n}: cannot start loader thread {i}: {e}"))
                })?;
            w.handles.push(h);
        }
        Ok(w)
    }

    fn take(&self) -> Result<HostBatch> {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let want = s.next_deliver;
            if let Some(r) = s.ready.remove(&want) {
                s.next_deliver += 1;
                cv.notify_all();
                return r;
            }
            if self.handles.iter().all(|h| h.is_finished()) {
                return Err(Error::msg("data loader threads exited unexpectedly"));
            }
            s = cv
                .wait_timeout(s, std::time::Duration::from_millis(200))
                .map(|r| r.0)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

fn worker_loop(plan: &Plan, state: &(Mutex<Shared>, Condvar), prefetch: u64) {
    let (lock, cv) = state;
    loop {
        let b = {
            let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
            while !s.stop && s.next_claim >= s.next_deliver + prefetch {
                s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            if s.stop {
                return;
            }
            s.next_claim += 1;
            s.next_claim - 1
        };
        let r = plan.prepare(b);
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        s.ready.insert(b, r);
        cv.notify_all();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        {
            let (lock, cv) = &*self.state;
            let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
            s.stop = true;
            cv.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Endless batches of a data set; see the module docs for order and threading.
pub struct Loader {
    plan: Arc<Plan>,
    cfg: LoaderConfig,
    position: u64,
    workers: Option<Workers>,
}

impl Loader {
    pub fn new(dataset: Arc<dyn Dataset>, cfg: LoaderConfig) -> Result<Self> {
        if cfg.batch_size == 0 {
            bail!("--batch_size must be positive");
        }
        crate::limits::check("--batch_size", cfg.batch_size, crate::limits::MAX_BATCH_SIZE)?;
        crate::limits::check("--data_workers", cfg.workers, crate::limits::MAX_DATA_WORKERS)?;
        // Every item of a batch is held in memory: check the batch's size before any decode.
        crate::limits::product(
            "a batch (--batch_size x channels x --image_size^2)",
            &[cfg.batch_size, dataset.channels(), dataset.image_size(), dataset.image_size()],
        )?;
        if dataset.len() < cfg.batch_size {
            bail!(
                "data set has {} items (this rank), fewer than --batch_size {}: no full batch",
                dataset.len(),
                cfg.batch_size
            );
        }
        let rows = match cfg.rows {
            None => 0..cfg.batch_size,
            Some((start, len)) => {
                if len == 0 || start.checked_add(len).is_none_or(|end| end > cfg.batch_size) {
                    bail!("rows {start}..+{len} of a batch of {}", cfg.batch_size);
                }
                start..start + len
            }
        };
        let plan = Arc::new(Plan {
            batches_per_epoch: (dataset.len() / cfg.batch_size) as u64,
            dataset,
            batch_size: cfg.batch_size,
            rows,
            shuffle: cfg.shuffle,
            seed: cfg.seed,
            perm_cache: Mutex::new(None),
        });
        let mut l = Self { plan, cfg, position: 0, workers: None };
        l.restart()?;
        Ok(l)
    }

    fn restart(&mut self) -> Result<()> {
        self.workers = None; // joins the old threads first
        if self.cfg.workers > 0 {
            self.workers = Some(Workers::start(
                self.plan.clone(),
                self.position,
                self.cfg.workers,
                self.cfg.prefetch,
            )?);
        }
        Ok(())
    }

    /// Full batches per epoch (items / batch size, rounded down).
    pub fn batches_per_epoch(&self) -> u64 {
        self.plan.batches_per_epoch
    }
    /// Number of the batch `next_batch` returns next.
    pub fn position(&self) -> u64 {
        self.position
    }
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.plan.dataset
    }
}

impl BatchSource for Loader {
    fn next_batch(&mut self) -> Result<Batch> {
        let host = match &self.workers {
            Some(w) => w.take()?,
            None => self.plan.prepare(self.position)?,
        };
        let ds = &self.plan.dataset;
        let (c, s) = (ds.channels(), ds.image_size());
        let n = self.plan.rows.len();
        let images = Tensor::from_vec(host.pixels, (n, c, s, s), &Device::Cpu)?
            .to_device(&self.cfg.device)?;
        let labels = match host.labels {
            Some(l) => Some(Tensor::from_vec(l, n, &Device::Cpu)?.to_device(&self.cfg.device)?),
            None => None,
        };
        let index = self.position;
        self.position += 1;
        Ok(Batch { images, labels, index })
    }

    fn seek(&mut self, n: u64) -> Result<()> {
        if n != self.position {
            self.position = n;
            self.restart()?;
        }
        Ok(())
    }

    fn classes(&self) -> Option<ClassList> {
        self.plan.dataset.classes().cloned()
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        Some(self.next_batch())
    }
}
