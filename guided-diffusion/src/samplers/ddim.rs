//! DDIM (Song et al. 2021; the reference's `ddim_sample` / `ddim_sample_loop`) with
//! stochasticity eta, and the deterministic reverse ODE (`ddim_reverse_sample`, image -> noise).
//! Guidance enters as the reference's `condition_score`: `eps -= sqrt(1 - alpha_bar) *
//! gradient` with the respaced process's alpha_bar. One noise draw per step even with eta = 0,
//! as the reference's `randn_like`.
use candle_core::Tensor;

use super::ddpm::{respaced_loop, Respacing};
use super::spec::{ParamReader, ParamWriter, Params, SamplerKind};
use super::{Denoiser, SampleOptions, Sampler, StepCallback, StepOutput};
use crate::diffusion::{DiffusionConfig, GaussianDiffusion, ModelFn, NoiseSource, PMeanVariance};
use crate::Result;

impl GaussianDiffusion {
    /// `condition_score` (Song et al.): `eps -= sqrt(1 - ab) * gradient` with this process's
    /// alpha_bar; returns the new x_0 prediction (not clipped again) and the posterior mean.
    pub fn condition_score(
        &self,
        p: &PMeanVariance,
        x: &Tensor,
        t: &[usize],
        gradient: &Tensor,
    ) -> Result<PMeanVariance> {
        let alpha_bar = self.extract(|i| self.arrays().alphas_cumprod[i], t, x)?;
        let eps = self.predict_eps_from_xstart(x, t, &p.pred_xstart)?;
        let coef = alpha_bar.affine(-1.0, 1.0)?.sqrt()?;
        let eps = (eps - coef.broadcast_mul(gradient)?)?;
        let pred_xstart = self.predict_xstart_from_eps(x, t, &eps)?;
        let (mean, _, _) = self.q_posterior_mean_variance(&pred_xstart, x, t)?;
        Ok(PMeanVariance {
            mean,
            variance: p.variance.clone(),
            log_variance: p.log_variance.clone(),
            pred_xstart,
        })
    }

    /// One DDIM step (`ddim_sample`, Eq. 12 of the DDIM paper) with the guidance gradient applied
    /// through `condition_score`; noise is drawn even when eta = 0.
    pub fn ddim_sample(
        &self,
        model: &ModelFn,
        x: &Tensor,
        t: &[usize],
        opts: &SampleOptions,
        eta: f64,
        noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        let (mut out, gradient) =
            self.guided_p_mean_variance(&Denoiser::new(model, *opts), x, t)?;
        if let Some(g) = gradient {
            out = self.condition_score(&out, x, t, &g)?;
        }
        let eps = self.predict_eps_from_xstart(x, t, &out.pred_xstart)?;
        let a = self.arrays();
        let ab = self.extract(|i| a.alphas_cumprod[i], t, x)?;
        let ab_prev = self.extract(|i| a.alphas_cumprod_prev[i], t, x)?;
        let one_minus_ab = ab.affine(-1.0, 1.0)?;
        let one_minus_ab_prev = ab_prev.affine(-1.0, 1.0)?;
        let sigma = ((one_minus_ab_prev.div(&one_minus_ab)?.sqrt()? * eta)?)
            .mul(&ab.div(&ab_prev)?.affine(-1.0, 1.0)?.sqrt()?)?;
        let z = noise.randn(x.shape(), x.device())?.to_dtype(x.dtype())?;
        let c_eps = (one_minus_ab_prev - sigma.sqr()?)?.sqrt()?;
        let mean_pred =
            (out.pred_xstart.broadcast_mul(&ab_prev.sqrt()?)? + c_eps.broadcast_mul(&eps)?)?;
        let mask = self.nonzero_mask(t, x)?;
        let sample = (mean_pred + mask.mul(&sigma)?.broadcast_mul(&z)?)?;
        Ok(StepOutput { sample, pred_xstart: out.pred_xstart })
    }

    /// One step of the DDIM reverse ODE (`ddim_reverse_sample`, eta = 0): x_t -> x_{t+1}.
    /// Only the guidance's model output is used (the reference takes no cond_fn here).
    pub fn ddim_reverse_sample(
        &self,
        model: &ModelFn,
        x: &Tensor,
        t: &[usize],
        opts: &SampleOptions,
    ) -> Result<StepOutput> {
        let ts = self.model_timesteps(t, x.device())?;
        let out = opts.guidance.model_output(model, x, &ts)?;
        let out =
            self.p_mean_variance_from_output(&out, x, t, opts.clip_denoised, opts.denoised_fn)?;
        let eps = self.predict_eps_from_xstart(x, t, &out.pred_xstart)?;
        let ab_next = self.extract(|i| self.arrays().alphas_cumprod_next[i], t, x)?;
        let mean_pred = (out.pred_xstart.broadcast_mul(&ab_next.sqrt()?)?
            + ab_next.affine(-1.0, 1.0)?.sqrt()?.broadcast_mul(&eps)?)?;
        Ok(StepOutput { sample: mean_pred, pred_xstart: out.pred_xstart })
    }

    /// `ddim_sample_loop` from a given x_T over t = T-1 .. 0.
    pub fn ddim_sample_loop(
        &self,
        model: &ModelFn,
        x_start_noise: &Tensor,
        opts: &SampleOptions,
        eta: f64,
        noise: &mut dyn NoiseSource,
        callback: Option<&mut StepCallback>,
    ) -> Result<Tensor> {
        let mut s = Ddim::new(self.clone(), eta);
        s.sample(&Denoiser::new(model, *opts), x_start_noise, noise, callback)
    }

    /// Encode an image into noise with the DDIM reverse ODE, t = 0 .. T-1 (deterministic).
    pub fn ddim_reverse_sample_loop(
        &self,
        model: &ModelFn,
        x0: &Tensor,
        opts: &SampleOptions,
        callback: Option<&mut StepCallback>,
    ) -> Result<Tensor> {
        let step = |x: &Tensor, t: &[usize]| self.ddim_reverse_sample(model, x, t, opts);
        respaced_loop(self, x0, 0..self.num_timesteps(), step, callback)
    }
}

/// DDIM on a (respaced) process.
#[derive(Debug, Clone)]
pub struct Ddim {
    diffusion: GaussianDiffusion,
    eta: f64,
    clip_denoised: Option<bool>,
    nfe: usize,
}

impl Ddim {
    /// DDIM with `eta` over every step of `diffusion`, with the caller's `clip_denoised`.
    pub fn new(diffusion: GaussianDiffusion, eta: f64) -> Self {
        Self { diffusion, eta, clip_denoised: None, nfe: 0 }
    }

    pub fn diffusion(&self) -> &GaussianDiffusion {
        &self.diffusion
    }

    pub fn eta(&self) -> f64 {
        self.eta
    }
}

impl Sampler for Ddim {
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
        callback: Option<&mut StepCallback>,
    ) -> Result<Tensor> {
        let mut opts = denoiser.opts;
        if let Some(c) = self.clip_denoised {
            opts.clip_denoised = c;
        }
        let (d, eta) = (&self.diffusion, self.eta);
        self.nfe = 0;
        let nfe = &mut self.nfe;
        let step = |x: &Tensor, t: &[usize]| {
            *nfe += 1;
            d.ddim_sample(denoiser.model, x, t, &opts, eta, noise)
        };
        respaced_loop(d, x_t, (0..d.num_timesteps()).rev(), step, callback)
    }
}

/// `ddim`: the kind of [`Ddim`].
pub(crate) struct DdimKind;
pub(crate) static KIND: DdimKind = DdimKind;

const KEYS: &[(&str, &str)] = &[
    ("steps", "sampling steps N, the reference's --timestep_respacing ddimN [default: all]"),
    ("respacing", "a --timestep_respacing string, e.g. ddim25 or 10,15,20"),
    ("eta", "stochasticity, 0 = deterministic [default: 0]"),
    ("clip_denoised", "clamp x_0 predictions to [-1, 1] [default: true]"),
];

fn read_eta(r: &mut ParamReader) -> Result<f64> {
    r.float("eta", 0.0, 0.0, 1.0)
}

impl SamplerKind for DdimKind {
    fn name(&self) -> &'static str {
        "ddim"
    }
    fn about(&self) -> &'static str {
        "DDIM (Song et al. 2021), the reference's ddim_sample_loop"
    }
    fn keys(&self) -> &'static [(&'static str, &'static str)] {
        KEYS
    }
    fn normalize(&self, params: &Params) -> Result<Params> {
        let mut r = ParamReader::new(self, params)?;
        let mut w = ParamWriter::default();
        Respacing::read(&mut r)?.write(&mut w);
        w.put("eta", read_eta(&mut r)?, 0.0);
        Ok(w.done())
    }
    fn build(&self, params: &Params, diffusion: &DiffusionConfig) -> Result<Box<dyn Sampler>> {
        let mut r = ParamReader::new(self, params)?;
        let resp = Respacing::read(&mut r)?;
        let mut s = Ddim::new(resp.build(diffusion, true)?, read_eta(&mut r)?);
        s.clip_denoised = resp.clip_denoised;
        Ok(Box::new(s))
    }
}
