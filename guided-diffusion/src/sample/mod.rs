//! Sampling runs as users ask for them (`image_sample.py`, `classifier_sample.py` and
//! `super_res_sample.py` in one): batches, class labels, per-sample seeds, any sampler (by its
//! [`SamplerSpec`]), classifier and classifier-free guidance (alone, together, or limited to an
//! interval of timesteps), low-resolution conditioning, uint8 output.
//!
//! - [`noise`]: per-sample random streams (sample i is the same whatever the batch size).
//! - [`images`]: the reference's uint8 conversion, PNG grids.
pub mod images;
pub mod noise;

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};
use rand::Rng;

use crate::diffusion::{DiffusionConfig, NoiseSource};
use crate::guidance::{
    ClassifierFree, ClassifierGuidance, Combined, Guidance, Interval, NoGuidance,
};
use crate::models::Net;
use crate::samplers::{Denoiser, SampleOptions, SamplerSpec, StepInfo};
use crate::{bail, Result};

pub use noise::PerSampleNoise;

/// Which class each sample asks for.
#[derive(Debug, Clone)]
pub enum Classes {
    /// Uniformly random labels in `0..num_classes` (the reference's default), drawn per sample
    /// from the run's seed.
    Random,
    /// These labels, cycled over the samples.
    Cycle(Vec<usize>),
}

/// Classifier-free guidance settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassifierFreeSettings {
    /// `eps_uncond + scale * (eps_cond - eps_uncond)`; 1 = conditional sampling.
    pub scale: f64,
    /// The label of the unconditional branch (the last row of the label embedding).
    pub null_class: usize,
}

/// Which guidance a run uses.
#[derive(Clone, Copy, Default)]
pub struct GuidanceSettings<'a> {
    /// Classifier and `classifier_scale`: classifier guidance on when present.
    pub classifier: Option<(&'a Net, f64)>,
    /// Classifier-free guidance on when present (class-conditional models with a null class).
    pub classifier_free: Option<ClassifierFreeSettings>,
    /// Apply the guidance only at model times in `[lo, hi]` (original timesteps).
    pub interval: Option<(f64, f64)>,
    /// Sample the unconditional branch of a model trained for classifier-free guidance: the
    /// model is given this null class instead of the asked labels (which the classifier, if
    /// any, still guides towards). Not with `classifier_free`.
    pub null_branch: Option<usize>,
}

/// Everything a run needs besides the request.
pub struct Sampling<'a> {
    pub model: &'a Net,
    /// The diffusion process the model was trained with, with the user's
    /// `timestep_respacing` (DDPM and DDIM use it when their spec gives no steps).
    pub diffusion: &'a DiffusionConfig,
    /// The sampler, built afresh for every batch.
    pub sampler: &'a SamplerSpec,
    pub guidance: GuidanceSettings<'a>,
    pub clip_denoised: bool,
    /// `[C, H, W]` of one sample.
    pub shape: [usize; 3],
    /// Label range for random classes and checks (the model's or the classifier's classes).
    pub num_classes: Option<usize>,
    /// A label in that range that is not a class: the null class of a model trained for
    /// classifier-free guidance. Never drawn, and refused in [`Classes::Cycle`].
    pub null_class: Option<usize>,
    pub device: Device,
}

/// The part of a run one process does, when several share it (MPI): global batches `k` with
/// `k % world == rank`, each batch as it is in one process (same samples, same noise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self { rank: 0, world: 1 }
    }
}

/// What to sample.
#[derive(Clone)]
pub struct Request<'a> {
    pub num_samples: usize,
    pub batch_size: usize,
    pub classes: Classes,
    pub seed: u64,
    /// x_T for every sample, `[num_samples, C, H, W]`.
    pub init_noise: Option<&'a Tensor>,
    /// Also return the float x_0 ([`Samples::float`]).
    pub keep_float: bool,
    /// This process's batches (all of them by default).
    pub shard: Shard,
    /// Low-resolution conditioning for every sample (super-resolution), `[num_samples, C, h, w]`.
    pub low_res: Option<&'a Tensor>,
}

/// Progress of a run, reported after every denoising step.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub step: usize,
    pub steps_per_batch: usize,
    pub batch: usize,
    pub num_batches: usize,
    pub samples_done: usize,
    pub num_samples: usize,
}

/// The outcome: uint8 NHWC images and the labels they were asked for (if any were used), of
/// the shard's batches ([`Samples::batches`]) in order.
pub struct Samples {
    pub images: Tensor,
    pub labels: Option<Vec<i64>>,
    /// The global batches these samples are (all of them without a shard).
    pub batches: Vec<usize>,
    /// The final x_0 in float32 NCHW before the uint8 conversion, when asked for.
    pub float: Option<Tensor>,
    /// Each batch's network evaluations (NFE; they differ between batches only with the
    /// adaptive DPM-Solver).
    pub nfe_per_batch: Vec<usize>,
    /// Images the diffusion network processed, per sample: the NFE, doubled where
    /// classifier-free guidance ran its 2N batch.
    pub model_evals: f64,
    /// Images the classifier processed (forward and backward), per sample.
    pub classifier_evals: f64,
}

impl Sampling<'_> {
    fn uses_labels(&self) -> bool {
        self.guidance.classifier.is_some() || self.model.takes_labels()
    }

    /// The label of every sample.
    fn labels(&self, req: &Request) -> Result<Vec<usize>> {
        let n = req.num_samples;
        match &req.classes {
            Classes::Cycle(c) => {
                if c.is_empty() {
                    bail!("--classes is empty");
                }
                if let Some(k) = self.num_classes {
                    if let Some(bad) = c.iter().find(|&&l| l >= k) {
                        bail!("--classes: class {bad} is out of range, the model has {k} classes (0..{})", k - 1);
                    }
                }
                if let Some(null) = self.null_class {
                    if c.contains(&null) {
                        bail!("--classes: {null} is the model's null class (the unconditional label of classifier-free guidance), not a class");
                    }
                }
                Ok((0..n).map(|i| c[i % c.len()]).collect())
            }
            Classes::Random => {
                let Some(k) = self.num_classes else {
                    bail!("cannot draw random classes: the number of classes is unknown (give --classes)");
                };
                // The null class is skipped: draws over the k - 1 real classes.
                let (range, skip) = match self.null_class {
                    Some(null) if null < k && k > 1 => (k - 1, Some(null)),
                    _ => (k, None),
                };
                Ok((0..n)
                    .map(|i| {
                        let l = noise::label_rng(req.seed, i as u64).gen_range(0..range);
                        match skip {
                            Some(null) if l >= null => l + 1,
                            _ => l,
                        }
                    })
                    .collect())
            }
        }
    }

    /// Runs the whole request batch by batch.
    pub fn run(&self, req: &Request, progress: &mut dyn FnMut(Progress)) -> Result<Samples> {
        if req.batch_size == 0 {
            bail!("--batch_size must be positive");
        }
        let [c, h, w] = self.shape;
        for (what, t) in [("--init_noise", req.init_noise), ("low-resolution samples", req.low_res)]
        {
            if let Some(t) = t {
                if t.dim(0)? < req.num_samples {
                    bail!(
                        "{what} holds {} images but {} samples were asked for",
                        t.dim(0)?,
                        req.num_samples
                    );
                }
            }
        }
        if let Some(x) = req.init_noise {
            if x.dims()[1..] != [c, h, w] {
                bail!("--init_noise has shape {:?}; expected [N, {c}, {h}, {w}]", x.dims());
            }
        }
        let labels = if self.uses_labels() { Some(self.labels(req)?) } else { None };
        if self.guidance.classifier_free.is_some() && !self.model.takes_labels() {
            bail!("classifier-free guidance needs a class-conditional model");
        }
        if self.guidance.null_branch.is_some() && self.guidance.classifier_free.is_some() {
            bail!("sampling the null branch and classifier-free guidance exclude each other");
        }
        // Rows each network processed, for the cost of guidance.
        let model_rows = AtomicUsize::new(0);
        let classifier_rows = AtomicUsize::new(0);
        let count = |counter: &AtomicUsize, x: &Tensor| -> Result<()> {
            counter.fetch_add(x.dim(0)?, Ordering::Relaxed);
            Ok(())
        };
        let num_batches = req.num_samples.div_ceil(req.batch_size);
        // Checked before any batch runs (a bad spec fails at once, not after a batch).
        let steps = self.sampler.build(self.diffusion)?.num_steps().unwrap_or(0);
        let mut out = Vec::with_capacity(num_batches);
        let mut floats = Vec::new();
        let mut nfe_per_batch = Vec::with_capacity(num_batches);
        let mine: Vec<usize> =
            crate::dist::rank_batches(num_batches, req.shard.rank, req.shard.world).collect();
        let mut done = 0usize;
        for &b in &mine {
            let first = b * req.batch_size;
            let n = req.batch_size.min(req.num_samples - first);
            let mut noise = PerSampleNoise::new(req.seed, first, n);
            let x_t = match req.init_noise {
                Some(x) => x.narrow(0, first, n)?.to_dtype(DType::F32)?.to_device(&self.device)?,
                None => noise.randn(&candle_core::Shape::from_dims(&[n, c, h, w]), &self.device)?,
            };
            let y = match &labels {
                Some(l) => Some(Tensor::from_iter(
                    l[first..first + n].iter().map(|&v| v as u32),
                    &self.device,
                )?),
                None => None,
            };
            let model_y = match (self.model.takes_labels(), self.guidance.null_branch) {
                (false, _) => None,
                (true, None) => y.clone(),
                (true, Some(null)) => Some(Tensor::full(null as u32, n, &self.device)?),
            };
            let low_res = match req.low_res {
                Some(lr) => Some(lr.narrow(0, first, n)?.to_device(&self.device)?),
                None => None,
            };
            let model = self.model;
            let model_fn = |x: &Tensor, t: &Tensor| {
                count(&model_rows, x)?;
                model.forward(x, t, model_y.as_ref(), low_res.as_ref())
            };
            // The 2N batch of classifier-free guidance repeats the low-resolution input.
            let labeled_fn = |x: &Tensor, t: &Tensor, yy: &Tensor| {
                let lr = match &low_res {
                    Some(lr) if lr.dim(0)? != x.dim(0)? => Some(Tensor::cat(&[lr, lr], 0)?),
                    other => other.clone(),
                };
                count(&model_rows, x)?;
                model.forward(x, t, Some(yy), lr.as_ref())
            };
            let classifier_fn = |x: &Tensor, t: &Tensor| match self.guidance.classifier {
                Some((clf, _)) => {
                    count(&classifier_rows, x)?;
                    clf.forward(x, t, None, None)
                }
                None => bail!("no classifier"),
            };
            let clf_guidance = match (self.guidance.classifier, &y) {
                (Some((_, scale)), Some(y)) => {
                    Some(ClassifierGuidance::from_label_tensor(&classifier_fn, y, scale)?)
                }
                _ => None,
            };
            let cfg_guidance = match (self.guidance.classifier_free, &y) {
                (Some(cf), Some(y)) => {
                    Some(ClassifierFree::new(&labeled_fn, y, cf.null_class, cf.scale)?)
                }
                _ => None,
            };
            let combined;
            let guidance: &dyn Guidance = match (&cfg_guidance, &clf_guidance) {
                (Some(f), Some(g)) => {
                    combined = Combined { output: f, gradient: g };
                    &combined
                }
                (Some(f), None) => f,
                (None, Some(g)) => g,
                (None, None) => &NoGuidance,
            };
            let limited;
            let guidance: &dyn Guidance = match self.guidance.interval {
                Some((lo, hi)) => {
                    limited = Interval::new(guidance, lo, hi)?;
                    &limited
                }
                None => guidance,
            };
            let opts =
                SampleOptions { clip_denoised: self.clip_denoised, denoised_fn: None, guidance };
            let mut sampler = self.sampler.build(self.diffusion)?;
            let mut cb = |info: &StepInfo| -> Result<()> {
                let done = steps > 0 && info.index + 1 == steps;
                progress(Progress {
                    step: info.index + 1,
                    steps_per_batch: steps.max(info.num_steps),
                    batch: b,
                    num_batches,
                    samples_done: first + if done { n } else { 0 },
                    num_samples: req.num_samples,
                });
                Ok(())
            };
            let x0 =
                sampler.sample(&Denoiser::new(&model_fn, opts), &x_t, &mut noise, Some(&mut cb))?;
            nfe_per_batch.push(sampler.nfe());
            if req.keep_float {
                floats.push(x0.to_device(&Device::Cpu)?);
            }
            out.push(images::to_uint8_nhwc(&x0)?.to_device(&Device::Cpu)?);
            done += n;
        }
        if out.is_empty() {
            // A rank with no batch (more ranks than batches) returns an empty part.
            out.push(Tensor::zeros((0, h, w, c), DType::U8, &Device::Cpu)?);
            if req.keep_float {
                floats.push(Tensor::zeros((0, c, h, w), DType::F32, &Device::Cpu)?);
            }
        }
        let labels = labels.map(|l| {
            mine.iter()
                .flat_map(|&b| {
                    let first = b * req.batch_size;
                    l[first..req.num_samples.min(first + req.batch_size)].to_vec()
                })
                .map(|v| v as i64)
                .collect()
        });
        let per_sample = |rows: usize| rows as f64 / done.max(1) as f64;
        Ok(Samples {
            images: Tensor::cat(&out, 0)?,
            labels,
            batches: mine,
            float: if req.keep_float { Some(Tensor::cat(&floats, 0)?) } else { None },
            nfe_per_batch,
            model_evals: per_sample(model_rows.into_inner()),
            classifier_evals: per_sample(classifier_rows.into_inner()),
        })
    }
}
