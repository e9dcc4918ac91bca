//! Ancestral sampling (DDPM, the reference's `p_sample` / `p_sample_loop`) on a respaced
//! process. Guidance enters as the reference's `condition_mean` (Sohl-Dickstein et al.): the
//! guidance gradient, evaluated at x_t with the model's timesteps, shifts the mean by
//! `variance * gradient`. One noise draw per step, including the last (masked) one.
use candle_core::Tensor;

use super::spec::{ParamReader, ParamWriter, Params, SamplerKind};
use super::{finish_step, Denoiser, SampleOptions, Sampler, StepInfo, StepOutput};
use crate::diffusion::{DiffusionConfig, GaussianDiffusion, ModelFn, NoiseSource, PMeanVariance};
use crate::{bail, Result};

impl GaussianDiffusion {
    /// p_mean_variance of the guided network output at x, and the guidance gradient there
    /// (both from [`Denoiser::outputs`]).
    pub fn guided_p_mean_variance(
        &self,
        denoiser: &Denoiser,
        x: &Tensor,
        t: &[usize],
    ) -> Result<(PMeanVariance, Option<Tensor>)> {
        let ts = self.model_timesteps(t, x.device())?;
        let (out, gradient) = denoiser.outputs(x, &ts)?;
        let o = &denoiser.opts;
        let pmv = self.p_mean_variance_from_output(&out, x, t, o.clip_denoised, o.denoised_fn)?;
        Ok((pmv, gradient))
    }

    /// `condition_mean`: `mean + variance * gradient`.
    pub fn condition_mean(&self, p: &PMeanVariance, gradient: &Tensor) -> Result<Tensor> {
        Ok((&p.mean + (&p.variance * gradient)?)?)
    }

    /// `[N, 1, ...]` mask: 1 where t != 0 (no noise is added at the last step).
    pub(crate) fn nonzero_mask(&self, t: &[usize], x: &Tensor) -> Result<Tensor> {
        self.extract(|i| if i != 0 { 1.0 } else { 0.0 }, t, x)
    }

    /// One ancestral step (`p_sample`): noise is drawn right after p_mean_variance, the guidance
    /// gradient shifts the mean, then `sample = mean + [t != 0] * exp(0.5 log_variance) * noise`.
    pub fn p_sample(
        &self,
        model: &ModelFn,
        x: &Tensor,
        t: &[usize],
        opts: &SampleOptions,
        noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        let (out, gradient) = self.guided_p_mean_variance(&Denoiser::new(model, *opts), x, t)?;
        let eps = noise.randn(x.shape(), x.device())?.to_dtype(x.dtype())?;
        let mask = self.nonzero_mask(t, x)?;
        let mean = match gradient {
            Some(g) => self.condition_mean(&out, &g)?,
            None => out.mean.clone(),
        };
        let std = (&out.log_variance * 0.5)?.exp()?;
        let sample = (mean + mask.broadcast_mul(&std)?.mul(&eps)?)?;
        Ok(StepOutput { sample, pred_xstart: out.pred_xstart })
    }

    /// `p_sample_loop` from a given x_T over t = T-1 .. 0.
    pub fn p_sample_loop(
        &self,
        model: &ModelFn,
        x_start_noise: &Tensor,
        opts: &SampleOptions,
        noise: &mut dyn NoiseSource,
        callback: Option<&mut super::StepCallback>,
    ) -> Result<Tensor> {
        Ddpm::new(self.clone()).sample(&Denoiser::new(model, *opts), x_start_noise, noise, callback)
    }
}

/// Runs `step` over the process's indices in `order` from `x`, reporting every step.
pub(crate) fn respaced_loop(
    d: &GaussianDiffusion,
    x: &Tensor,
    order: impl Iterator<Item = usize>,
    mut step: impl FnMut(&Tensor, &[usize]) -> Result<StepOutput>,
    mut callback: Option<&mut super::StepCallback>,
) -> Result<Tensor> {
    let n = x.dim(0)?;
    let num_steps = d.num_timesteps();
    let mut img = x.detach();
    for (index, ti) in order.enumerate() {
        let out = step(&img, &vec![ti; n])?;
        img = out.sample.detach();
        let info = StepInfo {
            index,
            num_steps,
            t: ti,
            t_model: d.model_timestep(ti),
            sample: &img,
            pred_xstart: &out.pred_xstart,
        };
        finish_step(&mut callback, info, Some(num_steps))?;
    }
    Ok(img)
}

/// DDPM on a (respaced) process.
#[derive(Debug, Clone)]
pub struct Ddpm {
    diffusion: GaussianDiffusion,
    clip_denoised: Option<bool>,
    nfe: usize,
}

impl Ddpm {
    /// Ancestral sampling over every step of `diffusion`, with the caller's `clip_denoised`.
    pub fn new(diffusion: GaussianDiffusion) -> Self {
        Self { diffusion, clip_denoised: None, nfe: 0 }
    }

    pub fn diffusion(&self) -> &GaussianDiffusion {
        &self.diffusion
    }
}

impl Sampler for Ddpm {
    fn num_steps(&self) -> Option<usize> {
        Some(self.diffusion.num_timesteps())
    }

    fn nfe(&self) -> usize {
        self.nfe
    }

    fn sample(
        &mut self,
        denoiser: &Denoiser,
        x_t: &Tensor,
        noise: &mut dyn NoiseSource,
        callback: Option<&mut super::StepCallback>,
    ) -> Result<Tensor> {
        let mut opts = denoiser.opts;
        if let Some(c) = self.clip_denoised {
            opts.clip_denoised = c;
        }
        let d = &self.diffusion;
        self.nfe = 0;
        let nfe = &mut self.nfe;
        let step = |x: &Tensor, t: &[usize]| {
            *nfe += 1;
            d.p_sample(denoiser.model, x, t, &opts, noise)
        };
        respaced_loop(d, x_t, (0..d.num_timesteps()).rev(), step, callback)
    }
}

/// The respacing and clipping parameters DDPM and DDIM share.
pub(crate) struct Respacing {
    /// `steps=N`: the reference's `timestep_respacing` "N" (DDPM) / "ddimN" (DDIM).
    pub steps: Option<usize>,
    /// `respacing=...`: a `timestep_respacing` string ("250", "10,15,20", "ddim25").
    pub respacing: Option<String>,
    pub clip_denoised: Option<bool>,
}

/// Largest step count a spec may ask for (sizes from flags are checked before use).
pub const MAX_STEPS: usize = 100_000;

impl Respacing {
    pub fn read(r: &mut ParamReader) -> Result<Self> {
        let steps: Option<usize> = r.opt("steps", "a positive integer")?;
        if let Some(s) = steps {
            if s == 0 || s > MAX_STEPS {
                bail!("steps={s}: expected 1..={MAX_STEPS}");
            }
        }
        let respacing: Option<String> = r.opt("respacing", "a timestep_respacing string")?;
        if steps.is_some() && respacing.is_some() {
            bail!("give steps or respacing, not both");
        }
        let clip_denoised = r.opt_bool("clip_denoised")?;
        Ok(Self { steps, respacing, clip_denoised })
    }

    pub fn write(&self, w: &mut ParamWriter) {
        w.put_opt("steps", self.steps);
        w.put_opt("respacing", self.respacing.clone());
        w.put_opt("clip_denoised", self.clip_denoised);
    }

    /// The process to sample: `diffusion` respaced as asked (`ddim_prefix`: DDIM's `steps=N`
    /// means "ddimN"); without any, the config's own `timestep_respacing`.
    pub fn build(
        &self,
        diffusion: &DiffusionConfig,
        ddim_prefix: bool,
    ) -> Result<GaussianDiffusion> {
        let mut cfg = diffusion.clone();
        if let Some(n) = self.steps {
            if n > cfg.steps {
                bail!("steps={n}: the model's process has only {} steps", cfg.steps);
            }
            cfg.timestep_respacing = if ddim_prefix { format!("ddim{n}") } else { n.to_string() };
        } else if let Some(r) = &self.respacing {
            cfg.timestep_respacing = r.clone();
        }
        cfg.build()
    }
}

/// `ddpm`: the kind of [`Ddpm`].
pub(crate) struct DdpmKind;
pub(crate) static KIND: DdpmKind = DdpmKind;

const KEYS: &[(&str, &str)] = &[
    ("steps", "sampling steps N, the reference's --timestep_respacing N [default: all]"),
    ("respacing", "a --timestep_respacing string, e.g. 10,15,20"),
    ("clip_denoised", "clamp x_0 predictions to [-1, 1] [default: true]"),
];

impl SamplerKind for DdpmKind {
    fn name(&self) -> &'static str {
        "ddpm"
    }
    fn about(&self) -> &'static str {
        "ancestral sampling (Ho et al. 2020), the reference's p_sample_loop"
    }
    fn keys(&self) -> &'static [(&'static str, &'static str)] {
        KEYS
    }
    fn normalize(&self, params: &Params) -> Result<Params> {
        let mut r = ParamReader::new(self, params)?;
        let mut w = ParamWriter::default();
        Respacing::read(&mut r)?.write(&mut w);
        Ok(w.done())
    }
    fn build(&self, params: &Params, diffusion: &DiffusionConfig) -> Result<Box<dyn Sampler>> {
        let resp = Respacing::read(&mut ParamReader::new(self, params)?)?;
        let mut s = Ddpm::new(resp.build(diffusion, false)?);
        s.clip_denoised = resp.clip_denoised;
        Ok(Box::new(s))
    }
}
