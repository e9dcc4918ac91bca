//! Samplers, guidance and losses with small closure "models" (no network): DDPM / DDIM / DDIM
//! reverse loops (noise draws, callbacks, exactness on analytic models), how guidance enters
//! each sampler (condition_mean / condition_score / model-output override), the classifier
//! gradient, and the losses' values and gradients (stop-gradient of the hybrid loss).
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor, Var};
use guided_diffusion::diffusion::likelihood::discretized_gaussian_log_likelihood;
use guided_diffusion::diffusion::{
    mean_flat, DiffusionConfig, GaussianDiffusion, LossType, ModelMeanType, ModelVarType,
    NoiseSchedule, NoiseSource, ProcessKind, ReplayNoise, SeededNoise,
};
use guided_diffusion::guidance::{
    classifier_log_prob_grad, ClassifierGuidance, Guidance, NoGuidance,
};
use guided_diffusion::samplers::{SampleOptions, StepInfo};
use guided_diffusion::Result;

fn dev() -> Device {
    Device::Cpu
}

fn randn(seed: u64, shape: &[usize]) -> Tensor {
    SeededNoise::new(seed).randn(&Shape::from_dims(shape), &dev()).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn replay(n: usize, shape: &[usize], seed: u64) -> (ReplayNoise, Vec<Tensor>) {
    let draws: Vec<Tensor> = (0..n).map(|k| randn(seed + k as u64, shape)).collect();
    (ReplayNoise::new(draws.clone()), draws)
}

fn cosine(steps: usize, respacing: &str, learn_sigma: bool) -> GaussianDiffusion {
    DiffusionConfig {
        steps,
        noise_schedule: NoiseSchedule::Cosine,
        learn_sigma,
        timestep_respacing: respacing.into(),
        ..Default::default()
    }
    .build()
    .unwrap()
}

/// The exact epsilon predictor when the data is the single point `c`, on the original process.
fn point_mass_model(
    orig: GaussianDiffusion,
    c: Tensor,
) -> impl Fn(&Tensor, &Tensor) -> Result<Tensor> {
    move |x: &Tensor, t: &Tensor| {
        let ts: Vec<usize> = t.to_vec1::<f32>()?.into_iter().map(|v| v as usize).collect();
        let a = orig.arrays();
        let s = orig.extract(|i| a.sqrt_alphas_cumprod[i], &ts, x)?;
        let m = orig.extract(|i| a.sqrt_one_minus_alphas_cumprod[i], &ts, x)?;
        Ok((x - s.broadcast_mul(&c)?)?.broadcast_div(&m)?)
    }
}

/// The exact epsilon predictor for data ~ N(0, s^2 I).
fn gaussian_data_model(
    orig: GaussianDiffusion,
    s: f64,
) -> impl Fn(&Tensor, &Tensor) -> Result<Tensor> {
    move |x: &Tensor, t: &Tensor| {
        let ts: Vec<usize> = t.to_vec1::<f32>()?.into_iter().map(|v| v as usize).collect();
        let a = orig.arrays();
        let k = orig.extract(
            |i| {
                let ab = a.alphas_cumprod[i];
                (1.0 - ab).sqrt() / (ab * s * s + 1.0 - ab)
            },
            &ts,
            x,
        )?;
        Ok(x.broadcast_mul(&k)?)
    }
}

#[test]
fn ddim_recovers_point_mass_on_respaced_process_with_callbacks() {
    let orig = cosine(1000, "", false);
    let d = cosine(1000, "ddim25", false);
    let c = (randn(1, &[2, 3, 8, 8]).tanh().unwrap() * 0.9).unwrap();
    let model = point_mass_model(orig, c.clone());
    let x_t = randn(2, &[2, 3, 8, 8]);
    let (mut noise, _) = replay(25, &[2, 3, 8, 8], 100);
    let mut seen = vec![];
    let mut cb = |s: &StepInfo| -> Result<()> {
        seen.push((s.index, s.t, s.t_model, max_diff(s.pred_xstart, &c)));
        Ok(())
    };
    let out = d
        .ddim_sample_loop(&model, &x_t, &SampleOptions::default(), 0.0, &mut noise, Some(&mut cb))
        .unwrap();
    assert_eq!(noise.used(), 25, "DDIM draws one noise per step even with eta = 0");
    assert!(max_diff(&out, &c) < 1e-4, "{}", max_diff(&out, &c));
    assert_eq!(seen.len(), 25);
    for (k, (index, t, t_model, err)) in seen.iter().enumerate() {
        assert_eq!(*index, k);
        assert_eq!(*t, 24 - k);
        assert_eq!(*t_model, d.timestep_map()[24 - k] as f32);
        assert!(*err < 1e-3, "step {k}: pred_xstart off by {err}");
    }
    assert_eq!(seen[0].2, 960.0);
}

#[test]
fn ddpm_loop_draws_one_noise_per_step_and_is_deterministic_per_seed() {
    let orig = cosine(100, "", true);
    let d = cosine(100, "10", true);
    let base = gaussian_data_model(orig, 0.5);
    // learned-range model: eps + v channels
    let model = move |x: &Tensor, t: &Tensor| -> Result<Tensor> {
        let eps = base(x, t)?;
        Ok(Tensor::cat(&[&eps, &(x.zeros_like()? + 0.2)?], 1)?)
    };
    let x_t = randn(5, &[2, 3, 4, 4]);
    let (mut noise, _) = replay(10, &[2, 3, 4, 4], 7);
    let a = d.p_sample_loop(&model, &x_t, &SampleOptions::default(), &mut noise, None).unwrap();
    assert_eq!(noise.used(), 10);
    let (mut fewer, _) = replay(9, &[2, 3, 4, 4], 7);
    assert!(d.p_sample_loop(&model, &x_t, &SampleOptions::default(), &mut fewer, None).is_err());
    let (mut again, _) = replay(10, &[2, 3, 4, 4], 7);
    let b = d.p_sample_loop(&model, &x_t, &SampleOptions::default(), &mut again, None).unwrap();
    assert_eq!(max_diff(&a, &b), 0.0);
    // Seeded end to end: the same seed gives the same images.
    // x_T and then every step's noise from one seeded source.
    let seeded = |seed: u64| {
        let mut noise = SeededNoise::new(seed);
        let x_t = noise.randn(&Shape::from_dims(&[2, 3, 4, 4]), &dev()).unwrap();
        d.p_sample_loop(&model, &x_t, &SampleOptions::default(), &mut noise, None).unwrap()
    };
    let (s1, s2, s3) = (seeded(3), seeded(3), seeded(4));
    assert_eq!(max_diff(&s1, &s2), 0.0);
    assert!(max_diff(&s1, &s3) > 1e-3);
}

/// One DDPM step by hand: noise masked at t = 0, std = exp(0.5 log_variance).
#[test]
fn ddpm_step_matches_formula() {
    let d = cosine(50, "", false);
    let model = gaussian_data_model(d.clone(), 0.5);
    let x = randn(11, &[2, 3, 4, 4]);
    for t in [vec![0, 0], vec![30, 30], vec![0, 49]] {
        let (mut noise, draws) = replay(1, &[2, 3, 4, 4], 12);
        let out = d.p_sample(&model, &x, &t, &SampleOptions::default(), &mut noise).unwrap();
        let p = d.p_mean_variance(&model, &x, &t, true, None).unwrap();
        let mask = d.extract(|i| if i == 0 { 0.0 } else { 1.0 }, &t, &x).unwrap();
        let want = (&p.mean
            + mask
                .broadcast_mul(&(&p.log_variance * 0.5).unwrap().exp().unwrap())
                .unwrap()
                .mul(&draws[0])
                .unwrap())
        .unwrap();
        assert_eq!(max_diff(&out.sample, &want), 0.0);
        if t == vec![0, 0] {
            assert_eq!(max_diff(&out.sample, &p.mean), 0.0);
        }
    }
}

/// DDIM with eta > 0 by hand (Eq. 12), and the reverse ODE inverting the forward one.
#[test]
fn ddim_eta_step_and_reverse_ode() {
    let d = cosine(200, "ddim50", false);
    let orig = cosine(200, "", false);
    let model = gaussian_data_model(orig, 0.5);
    let x = randn(21, &[2, 3, 4, 4]);
    let t = vec![30, 30];
    let (mut noise, draws) = replay(1, &[2, 3, 4, 4], 22);
    let opts = SampleOptions { clip_denoised: false, ..Default::default() };
    let out = d.ddim_sample(&model, &x, &t, &opts, 0.7, &mut noise).unwrap();
    let a = d.arrays();
    let (ab, abp) = (a.alphas_cumprod[30], a.alphas_cumprod_prev[30]);
    let sigma = 0.7 * ((1.0 - abp) / (1.0 - ab)).sqrt() * (1.0 - ab / abp).sqrt();
    let p = d.p_mean_variance(&model, &x, &t, false, None).unwrap();
    let eps = d.predict_eps_from_xstart(&x, &t, &p.pred_xstart).unwrap();
    let want = ((&p.pred_xstart * abp.sqrt()).unwrap()
        + (eps * (1.0 - abp - sigma * sigma).sqrt()).unwrap()
        + (&draws[0] * sigma).unwrap())
    .unwrap();
    assert!(max_diff(&out.sample, &want) < 1e-5, "{}", max_diff(&out.sample, &want));

    // One reverse step by hand: x_{t+1} = x0_pred sqrt(ab_next) + sqrt(1 - ab_next) eps.
    let rev = d.ddim_reverse_sample(&model, &x, &t, &opts).unwrap();
    let abn = a.alphas_cumprod_next[30];
    let p = d.p_mean_variance(&model, &x, &t, false, None).unwrap();
    let eps = d.predict_eps_from_xstart(&x, &t, &p.pred_xstart).unwrap();
    let want =
        ((&p.pred_xstart * abn.sqrt()).unwrap() + (eps * (1.0 - abn).sqrt()).unwrap()).unwrap();
    assert!(max_diff(&rev.sample, &want) < 1e-5);

    // Reverse ODE image -> noise, then DDIM eta = 0 back: reconstructs the image up to the
    // first-order discretisation error of the DDIM inversion (error ~ 1/steps).
    let model = gaussian_data_model(cosine(1000, "", false), 0.5);
    let x0 = (randn(23, &[2, 3, 4, 4]) * 0.5).unwrap();
    let mut errs = vec![];
    for n in [50usize, 200, 1000] {
        let d = cosine(1000, &n.to_string(), false);
        let mut steps = 0;
        let mut cb = |s: &StepInfo| -> Result<()> {
            assert_eq!((s.index, s.t), (steps, steps));
            steps += 1;
            Ok(())
        };
        let z = d.ddim_reverse_sample_loop(&model, &x0, &opts, Some(&mut cb)).unwrap();
        assert_eq!(steps, n);
        let (mut noise, _) = replay(n, &[2, 3, 4, 4], 0);
        let back = d.ddim_sample_loop(&model, &z, &opts, 0.0, &mut noise, None).unwrap();
        let err = max_diff(&back, &x0);
        println!("DDIM reverse/forward reconstruction error ({n} steps): {err:e}");
        errs.push(err);
    }
    assert!(
        errs[0] < 0.15 && errs[1] < errs[0] / 3.0 && errs[2] < errs[1] / 3.0 && errs[2] < 1e-2,
        "{errs:?}"
    );
}

/// A test guidance: a fixed gradient, recording the timesteps it is given.
struct ConstGrad {
    g: Tensor,
    seen: Mutex<Vec<Vec<f32>>>,
}

impl Guidance for ConstGrad {
    fn gradient(&self, _x: &Tensor, t_model: &Tensor) -> Result<Option<Tensor>> {
        self.seen.lock().unwrap().push(t_model.to_vec1::<f32>()?);
        Ok(Some(self.g.clone()))
    }
}

#[test]
fn guidance_condition_mean_for_ddpm_and_condition_score_for_ddim() {
    let d = cosine(1000, "ddim10", true);
    let model = |x: &Tensor, t: &Tensor| -> Result<Tensor> {
        let tt = (t.reshape((t.dim(0)?, 1, 1, 1))? / 1000.0)?;
        let eps = x.broadcast_mul(&tt)?.sin()?;
        Ok(Tensor::cat(&[&eps, &(x * 0.1)?.tanh()?], 1)?)
    };
    let x = (randn(31, &[2, 3, 4, 4]) * 1.5).unwrap();
    let g = (randn(32, &[2, 3, 4, 4]) * 0.05).unwrap();
    let guide = ConstGrad { g: g.clone(), seen: Mutex::new(vec![]) };
    let opts = SampleOptions { guidance: &guide, ..Default::default() };
    let t = vec![6, 0];

    // DDPM: mean + variance * g, same noise.
    let (mut n1, draws) = replay(1, &[2, 3, 4, 4], 33);
    let out = d.p_sample(&model, &x, &t, &opts, &mut n1).unwrap();
    let p = d.p_mean_variance(&model, &x, &t, true, None).unwrap();
    let mean = (&p.mean + (&p.variance * &g).unwrap()).unwrap();
    let mask = d.extract(|i| if i == 0 { 0.0 } else { 1.0 }, &t, &x).unwrap();
    let want = (mean
        + mask
            .broadcast_mul(&(&p.log_variance * 0.5).unwrap().exp().unwrap())
            .unwrap()
            .mul(&draws[0])
            .unwrap())
    .unwrap();
    assert_eq!(max_diff(&out.sample, &want), 0.0);
    // The guidance saw the original timesteps.
    assert_eq!(guide.seen.lock().unwrap()[0], vec![d.timestep_map()[6] as f32, 0.0]);

    // DDIM: eps -= sqrt(1 - ab) g with the spaced ab, pred_xstart not clipped again.
    let (mut n2, _) = replay(1, &[2, 3, 4, 4], 34);
    let out = d.ddim_sample(&model, &x, &t, &opts, 0.0, &mut n2).unwrap();
    let eps = d.predict_eps_from_xstart(&x, &t, &p.pred_xstart).unwrap();
    let ab = d.extract(|i| d.arrays().alphas_cumprod[i], &t, &x).unwrap();
    let eps =
        (eps - ab.affine(-1.0, 1.0).unwrap().sqrt().unwrap().broadcast_mul(&g).unwrap()).unwrap();
    let pred = d.predict_xstart_from_eps(&x, &t, &eps).unwrap();
    assert_eq!(max_diff(&out.pred_xstart, &pred), 0.0);
    let max_abs =
        pred.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(max_abs > 1.0, "guided pred_xstart is not re-clipped ({max_abs})");
    // At t = 0 (alpha_bar_prev = 1) the DDIM sample is the guided pred_xstart.
    let s0 = out.sample.get(1).unwrap();
    assert!(max_diff(&s0, &pred.get(1).unwrap()) < 1e-6);

    // No guidance: plain p_mean_variance.
    let (mut n3, _) = replay(1, &[2, 3, 4, 4], 34);
    let plain = d
        .ddim_sample(
            &model,
            &x,
            &t,
            &SampleOptions { guidance: &NoGuidance, ..Default::default() },
            0.0,
            &mut n3,
        )
        .unwrap();
    assert_eq!(max_diff(&plain.pred_xstart, &p.pred_xstart), 0.0);
}

/// A guidance replacing the model output (the hook classifier-free guidance uses) works with
/// every sampler without touching them.
#[test]
fn guidance_can_replace_the_model_output() {
    struct Doubled;
    impl Guidance for Doubled {
        fn model_output(
            &self,
            model: &guided_diffusion::diffusion::ModelFn,
            x: &Tensor,
            t: &Tensor,
        ) -> Result<Tensor> {
            Ok((model(x, t)? * 2.0)?)
        }
    }
    let d = cosine(100, "", false);
    let model = gaussian_data_model(d.clone(), 0.5);
    let doubled = |x: &Tensor, t: &Tensor| -> Result<Tensor> { Ok((model(x, t)? * 2.0)?) };
    let x = randn(41, &[1, 3, 4, 4]);
    let guided = SampleOptions { guidance: &Doubled, ..Default::default() };
    let plain = SampleOptions::default();
    for eta in [None, Some(0.3)] {
        let (mut n1, _) = replay(1, &[1, 3, 4, 4], 42);
        let (mut n2, _) = replay(1, &[1, 3, 4, 4], 42);
        let (a, b) = match eta {
            None => (
                d.p_sample(&model, &x, &[40], &guided, &mut n1).unwrap(),
                d.p_sample(&doubled, &x, &[40], &plain, &mut n2).unwrap(),
            ),
            Some(eta) => (
                d.ddim_sample(&model, &x, &[40], &guided, eta, &mut n1).unwrap(),
                d.ddim_sample(&doubled, &x, &[40], &plain, eta, &mut n2).unwrap(),
            ),
        };
        assert_eq!(max_diff(&a.sample, &b.sample), 0.0);
    }
}

/// The classifier gradient equals the analytic gradient of a linear classifier's log-softmax.
#[test]
fn classifier_gradient_matches_analytic_linear_classifier() {
    let (n, c, h, w, k) = (3usize, 3usize, 4usize, 4usize, 5usize);
    let dim = c * h * w;
    let wmat = (randn(51, &[k, dim]) * 0.2).unwrap();
    let bias = randn(52, &[k]);
    let seen_t = Mutex::new(vec![]);
    let classifier = |x: &Tensor, t: &Tensor| -> Result<Tensor> {
        seen_t.lock().unwrap().push(t.to_vec1::<f32>()?);
        Ok(x.flatten_from(1)?.matmul(&wmat.t()?)?.broadcast_add(&bias)?)
    };
    let x = randn(53, &[n, c, h, w]);
    let t = Tensor::new(&[10f32, 500., 999.], &dev()).unwrap();
    let labels = vec![0usize, 4, 2];
    let grad = classifier_log_prob_grad(&classifier, &x, &t, &labels, 3.0).unwrap();
    // analytic: scale * (W[y] - softmax(logits) @ W)
    let logits = classifier(&x, &t).unwrap();
    let p = candle_nn::ops::softmax(&logits, 1).unwrap();
    let expected_w = p.matmul(&wmat).unwrap();
    let idx = Tensor::new(&[0u32, 4, 2], &dev()).unwrap();
    let wy = wmat.index_select(&idx, 0).unwrap();
    let want = ((wy - expected_w).unwrap() * 3.0).unwrap().reshape((n, c, h, w)).unwrap();
    let err = max_diff(&grad, &want);
    assert!(err < 1e-6, "{err}");
    assert_eq!(seen_t.lock().unwrap()[0], vec![10.0, 500.0, 999.0]);
    // The guidance value wraps it; wrong labels are errors.
    let guide = ClassifierGuidance::new(&classifier, labels, 3.0);
    let g = guide.gradient(&x, &t).unwrap().unwrap();
    assert_eq!(max_diff(&g, &grad), 0.0);
    assert!(classifier_log_prob_grad(&classifier, &x, &t, &[0, 1], 1.0).is_err());
    assert!(classifier_log_prob_grad(&classifier, &x, &t, &[0, 1, 5], 1.0).is_err());
}

fn scalar_var(v: f32) -> Var {
    Var::from_tensor(&Tensor::new(v, &dev()).unwrap()).unwrap()
}

/// The hybrid loss: gradients reach the weights; the VB term does not move the mean output.
#[test]
fn training_losses_are_differentiable_with_stop_gradient_on_the_mean() {
    let d = cosine(1000, "", true);
    let (a, b, c, e) = (scalar_var(0.8), scalar_var(0.1), scalar_var(0.3), scalar_var(-0.2));
    let model = |x: &Tensor, _t: &Tensor| -> Result<Tensor> {
        let eps = x.broadcast_mul(a.as_tensor())?.broadcast_add(b.as_tensor())?;
        let v = x.broadcast_mul(c.as_tensor())?.broadcast_add(e.as_tensor())?.tanh()?;
        Ok(Tensor::cat(&[&eps, &v], 1)?)
    };
    let x0 = randn(61, &[3, 3, 4, 4]).tanh().unwrap();
    let noise = randn(62, &[3, 3, 4, 4]);
    let t = vec![0, 10, 600];
    let losses = d.training_losses(&model, &x0, &t, &noise).unwrap();
    let (mse, vb) = (losses.mse.clone().unwrap(), losses.vb.clone().unwrap());
    assert_eq!(max_diff(&losses.loss, &(&mse + &vb).unwrap()), 0.0);

    let g_loss = losses.loss.mean_all().unwrap().backward().unwrap();
    let g_mse = mse.mean_all().unwrap().backward().unwrap();
    let g_vb = vb.mean_all().unwrap().backward().unwrap();
    let val = |gs: &candle_core::backprop::GradStore, v: &Var| {
        gs.get(v.as_tensor()).map(|g| g.to_scalar::<f32>().unwrap())
    };
    // mean parameters: only the MSE term
    for p in [&a, &b] {
        let (gl, gm) = (val(&g_loss, p).unwrap(), val(&g_mse, p).unwrap());
        assert!(gl != 0.0 && (gl - gm).abs() <= 1e-6 * gm.abs().max(1.0), "{gl} vs {gm}");
        assert!(val(&g_vb, p).unwrap_or(0.0) == 0.0);
    }
    // variance parameters: only the VB term
    for p in [&c, &e] {
        let (gl, gv) = (val(&g_loss, p).unwrap(), val(&g_vb, p).unwrap());
        assert!(gl != 0.0 && (gl - gv).abs() <= 1e-6 * gv.abs().max(1.0), "{gl} vs {gv}");
        assert!(val(&g_mse, p).unwrap_or(0.0) == 0.0);
    }

    // The t = 0 term is the decoder NLL in bits, the others the KL.
    let x_t = d.q_sample(&x0, &t, &noise).unwrap();
    let ts = d.model_timesteps(&t, &dev()).unwrap();
    let out = model(&x_t, &ts).unwrap();
    let frozen =
        Tensor::cat(&[&out.narrow(1, 0, 3).unwrap().detach(), &out.narrow(1, 3, 3).unwrap()], 1)
            .unwrap();
    let p = d.p_mean_variance_from_output(&frozen, &x_t, &t, false, None).unwrap();
    let nll = discretized_gaussian_log_likelihood(&x0, &p.mean, &(&p.log_variance * 0.5).unwrap())
        .unwrap()
        .neg()
        .unwrap();
    let nll0 = mean_flat(&nll).unwrap().to_vec1::<f32>().unwrap()[0] / std::f32::consts::LN_2;
    let vb0 = vb.to_vec1::<f32>().unwrap()[0];
    assert!((nll0 - vb0).abs() <= 1e-5 * vb0.abs(), "{nll0} vs {vb0}");
}

#[test]
fn loss_types_and_targets() {
    let model = |x: &Tensor, t: &Tensor| -> Result<Tensor> {
        let tt = (t.reshape((t.dim(0)?, 1, 1, 1))? / 1000.0)?;
        let eps = x.broadcast_mul(&(tt.cos()? * 0.9)?)?;
        Ok(Tensor::cat(&[&eps, &(x * 0.5)?.sin()?], 1)?)
    };
    let x0 = randn(71, &[2, 3, 4, 4]).tanh().unwrap();
    let noise = randn(72, &[2, 3, 4, 4]);
    let t = vec![0, 333];
    let mk = |use_kl: bool, rescale: bool, steps: usize| {
        DiffusionConfig {
            steps,
            noise_schedule: NoiseSchedule::Linear,
            learn_sigma: true,
            use_kl,
            rescale_learned_sigmas: rescale,
            ..Default::default()
        }
        .build()
        .unwrap()
    };
    // RESCALED_MSE scales the VB term by T/1000 (T = 500).
    let mse = mk(false, false, 500).training_losses(&model, &x0, &t, &noise).unwrap();
    let rmse = mk(false, true, 500).training_losses(&model, &x0, &t, &noise).unwrap();
    assert_eq!(mk(false, true, 500).kind().loss_type, LossType::RescaledMse);
    assert_eq!(max_diff(&(mse.vb.unwrap() * 0.5).unwrap(), &rmse.vb.unwrap()), 0.0);
    // RESCALED_KL = T * KL, no mse term.
    let rkl = mk(true, false, 500).training_losses(&model, &x0, &t, &noise).unwrap();
    assert!(rkl.mse.is_none() && rkl.vb.is_none());
    let kl = GaussianDiffusion::spaced(
        guided_diffusion::diffusion::get_named_beta_schedule(NoiseSchedule::Linear, 500),
        &(0..500).collect(),
        ProcessKind {
            model_var_type: ModelVarType::LearnedRange,
            loss_type: LossType::Kl,
            ..Default::default()
        },
    )
    .unwrap();
    let k = kl.training_losses(&model, &x0, &t, &noise).unwrap();
    assert_eq!(max_diff(&(k.loss * 500.0).unwrap(), &rkl.loss), 0.0);

    // START_X / PREVIOUS_X targets with fixed variances: loss = mse = mean((target - out)^2).
    for mean_type in [ModelMeanType::StartX, ModelMeanType::PreviousX, ModelMeanType::Epsilon] {
        let d = GaussianDiffusion::new(
            guided_diffusion::diffusion::get_named_beta_schedule(NoiseSchedule::Linear, 500),
            ProcessKind { model_mean_type: mean_type, ..Default::default() },
        )
        .unwrap();
        let m = |x: &Tensor, _: &Tensor| -> Result<Tensor> { Ok((x * 0.7)?) };
        let l = d.training_losses(&m, &x0, &t, &noise).unwrap();
        assert!(l.vb.is_none());
        let x_t = d.q_sample(&x0, &t, &noise).unwrap();
        let target = match mean_type {
            ModelMeanType::StartX => x0.clone(),
            ModelMeanType::PreviousX => d.q_posterior_mean_variance(&x0, &x_t, &t).unwrap().0,
            ModelMeanType::Epsilon => noise.clone(),
        };
        let want = mean_flat(&(target - (&x_t * 0.7).unwrap()).unwrap().sqr().unwrap()).unwrap();
        assert_eq!(max_diff(&l.loss, &want), 0.0, "{mean_type:?}");
    }
}

#[test]
fn calc_bpd_loop_terms() {
    let d = cosine(20, "", true);
    let base = gaussian_data_model(d.clone(), 0.5);
    let model = move |x: &Tensor, t: &Tensor| -> Result<Tensor> {
        Ok(Tensor::cat(&[&base(x, t)?, &x.zeros_like()?], 1)?)
    };
    let x0 = (randn(81, &[2, 3, 4, 4]) * 0.5).unwrap().clamp(-1f32, 1f32).unwrap();
    let (mut noise, _) = replay(20, &[2, 3, 4, 4], 82);
    let bpd = d.calc_bpd_loop(&model, &x0, true, &mut noise).unwrap();
    assert_eq!(noise.used(), 20);
    assert_eq!(bpd.vb.dims(), &[2, 20]);
    assert_eq!(bpd.mse.dims(), &[2, 20]);
    assert_eq!(bpd.xstart_mse.dims(), &[2, 20]);
    assert_eq!(bpd.prior_bpd.dims(), &[2]);
    let total = (bpd.vb.sum(1).unwrap() + &bpd.prior_bpd).unwrap();
    assert!(max_diff(&total, &bpd.total_bpd) < 1e-4);
    let v = bpd.total_bpd.to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| x.is_finite() && *x > 0.0), "{v:?}");
    let prior = bpd.prior_bpd.to_vec1::<f32>().unwrap();
    assert!(prior.iter().all(|&p| (0.0..1e-2).contains(&p)), "prior {prior:?}");
}
