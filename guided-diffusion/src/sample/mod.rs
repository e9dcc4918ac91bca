//! Sampling runs as users ask for them (`image_sample.py`, `classifier_sample.py` and
//! `super_res_sample.py` in one): batches, class labels, per-sample seeds, optional classifier
//! guidance and low-resolution conditioning, uint8 output.
//!
//! - [`noise`]: per-sample random streams (sample i is the same whatever the batch size).
//! - [`images`]: the reference's uint8 conversion, PNG grids.
pub mod images;
pub mod noise;

use candle_core::{DType, Device, Tensor};
use rand::Rng;

use crate::diffusion::{
    Ddim, Ddpm, GaussianDiffusion, NoiseSource, SampleOptions, Sampler, StepInfo,
};
use crate::guidance::{ClassifierGuidance, Guidance, NoGuidance};
use crate::models::Net;
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

/// A sampling method.
#[derive(Debug, Clone, Copy)]
pub enum Method {
    Ddpm,
    Ddim { eta: f64 },
}

/// Everything a run needs besides the request.
pub struct Sampling<'a> {
    pub model: &'a Net,
    pub diffusion: &'a GaussianDiffusion,
    /// Classifier and `classifier_scale`: guidance on when present.
    pub classifier: Option<(&'a Net, f64)>,
    pub method: Method,
    pub clip_denoised: bool,
    /// `[C, H, W]` of one sample.
    pub shape: [usize; 3],
    /// Label range for random classes and checks (the model's or the classifier's classes).
    pub num_classes: Option<usize>,
    pub device: Device,
}

/// What to sample.
pub struct Request<'a> {
    pub num_samples: usize,
    pub batch_size: usize,
    pub classes: Classes,
    pub seed: u64,
    /// x_T for every sample, `[num_samples, C, H, W]`.
    pub init_noise: Option<&'a Tensor>,
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

/// The outcome: uint8 NHWC images and the labels they were asked for (if any were used).
pub struct Samples {
    pub images: Tensor,
    pub labels: Option<Vec<i64>>,
}

impl Sampling<'_> {
    fn uses_labels(&self) -> bool {
        self.classifier.is_some() || self.model.takes_labels()
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
                Ok((0..n).map(|i| c[i % c.len()]).collect())
            }
            Classes::Random => {
                let Some(k) = self.num_classes else {
                    bail!("cannot draw random classes: the number of classes is unknown (give --classes)");
                };
                Ok((0..n).map(|i| noise::label_rng(req.seed, i as u64).gen_range(0..k)).collect())
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
        let num_batches = req.num_samples.div_ceil(req.batch_size);
        let steps = self.diffusion.num_timesteps();
        let mut out = Vec::with_capacity(num_batches);
        for b in 0..num_batches {
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
            let model_y = if self.model.takes_labels() { y.clone() } else { None };
            let low_res = match req.low_res {
                Some(lr) => Some(lr.narrow(0, first, n)?.to_device(&self.device)?),
                None => None,
            };
            let model = self.model;
            let model_fn =
                |x: &Tensor, t: &Tensor| model.forward(x, t, model_y.as_ref(), low_res.as_ref());
            let classifier_fn;
            let guidance: Box<dyn Guidance + '_> = match (self.classifier, &y) {
                (Some((clf, scale)), Some(y)) => {
                    classifier_fn = move |x: &Tensor, t: &Tensor| clf.forward(x, t, None, None);
                    Box::new(ClassifierGuidance::from_label_tensor(&classifier_fn, y, scale)?)
                }
                _ => Box::new(NoGuidance),
            };
            let opts = SampleOptions {
                clip_denoised: self.clip_denoised,
                denoised_fn: None,
                guidance: guidance.as_ref(),
            };
            let mut sampler: Box<dyn Sampler> = match self.method {
                Method::Ddpm => Box::new(Ddpm),
                Method::Ddim { eta } => Box::new(Ddim { eta }),
            };
            let mut cb = |info: &StepInfo| -> Result<()> {
                progress(Progress {
                    step: info.index + 1,
                    steps_per_batch: steps,
                    batch: b,
                    num_batches,
                    samples_done: first + if info.index + 1 == steps { n } else { 0 },
                    num_samples: req.num_samples,
                });
                Ok(())
            };
            let x0 = self.diffusion.sample_loop(
                &model_fn,
                sampler.as_mut(),
                &x_t,
                &opts,
                &mut noise,
                Some(&mut cb),
            )?;
            out.push(images::to_uint8_nhwc(&x0)?.to_device(&Device::Cpu)?);
        }
        Ok(Samples {
            images: Tensor::cat(&out, 0)?,
            labels: labels.map(|l| l.into_iter().map(|v| v as i64).collect()),
        })
    }
}
