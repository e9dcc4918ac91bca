//! Properties of the process that need no golden data: respacing to the full T reproduces the
//! unspaced process, the error cases of respacing / construction, the mean and variance types of
//! p_mean_variance, the likelihood helpers, noise sources and the training schedule samplers.
use candle_core::{DType, Device, Shape, Tensor};
use guided_diffusion::diffusion::likelihood::{discretized_gaussian_log_likelihood, normal_kl};
use guided_diffusion::diffusion::{
    get_named_beta_schedule, space_timesteps, DiffusionConfig, GaussianDiffusion,
    LossSecondMomentResampler, ModelMeanType, ModelVarType, NoiseSchedule, NoiseSource,
    ProcessKind, ReplayNoise, ScheduleSampler, SeededNoise, UniformSampler,
};
use guided_diffusion::Result;
use rand::SeedableRng;

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

/// A smooth deterministic "network": depends on x and on the timestep it is given.
fn toy_model(out_channels_factor: usize) -> impl Fn(&Tensor, &Tensor) -> Result<Tensor> {
    move |x: &Tensor, t: &Tensor| {
        let t = (t.reshape((t.dim(0)?, 1, 1, 1))? / 1000.0)?;
        let y = (x.tanh()?.broadcast_mul(&(t.cos()? + 0.5)?)? + x.broadcast_mul(&t.sin()?)?)?;
        let v = (x * 0.3)?.sin()?.broadcast_add(&(t - 0.5)?)?;
        Ok(if out_channels_factor == 2 { Tensor::cat(&[&y, &v], 1)? } else { y })
    }
}

/// Respacing that keeps every timestep ("T", "ddimT", sections covering everything) must give the
/// very same process as no respacing (the reference always builds a SpacedDiffusion), and a
/// process within float64 rounding of the plain GaussianDiffusion on the raw betas.
#[test]
fn respacing_full_t_reproduces_unspaced_process() {
    let mut n_checked = 0;
    let mut ts: Vec<usize> = (2..=40).collect();
    ts.extend([64, 100, 250, 999, 1000, 4000]);
    for schedule in [NoiseSchedule::Linear, NoiseSchedule::Cosine] {
        for &steps in &ts {
            if schedule == NoiseSchedule::Linear && steps < 20 {
                // 1000/T * 0.02 > 1: the reference's assert rejects these betas, so do we.
                assert!(DiffusionConfig { steps, ..Default::default() }.build().is_err());
                continue;
            }
            let base = DiffusionConfig {
                steps,
                noise_schedule: schedule,
                learn_sigma: true,
                ..Default::default()
            };
            let unspaced = base.build().unwrap();
            let raw = GaussianDiffusion::new(get_named_beta_schedule(schedule, steps), base.kind())
                .unwrap();
            let mut specs = vec![steps.to_string(), format!("ddim{steps}")];
            if steps >= 4 {
                specs.push(format!("{},{}", steps / 2 + steps % 2, steps / 2));
                let k = 3.min(steps);
                let per = steps / k;
                let extra = steps % k;
                let secs: Vec<String> =
                    (0..k).map(|i| (per + usize::from(i < extra)).to_string()).collect();
                specs.push(secs.join(","));
            }
            for spec in specs {
                let cfg = DiffusionConfig { timestep_respacing: spec.clone(), ..base.clone() };
                let d = cfg.build().unwrap();
                assert_eq!(d.timestep_map(), (0..steps).collect::<Vec<_>>().as_slice(), "{spec}");
                assert_eq!(
                    d.arrays(),
                    unspaced.arrays(),
                    "{schedule:?} T={steps} respacing {spec}"
                );
                for t in 0..steps {
                    assert_eq!(d.model_timestep(t), t as f32);
                }
                n_checked += 1;
            }
            // Versus the raw-beta process: equal up to f64 rounding of the rebuilt betas.
            let (a, b) = (unspaced.arrays(), raw.arrays());
            for (x, y) in a.alphas_cumprod.iter().zip(&b.alphas_cumprod) {
                assert!((x - y).abs() <= 1e-14 * y.abs().max(1e-300) + 1e-300, "{x} vs {y}");
            }
            for (x, y) in a.betas.iter().zip(&b.betas) {
                assert!((x - y).abs() <= 1e-9 * y.abs(), "beta {x} vs {y}");
            }
        }
    }
    assert!(n_checked > 250, "{n_checked}");

    // And the tensor outputs agree exactly between "" and "T" (same arrays, same f32 ops).
    let base = DiffusionConfig {
        steps: 100,
        noise_schedule: NoiseSchedule::Cosine,
        learn_sigma: true,
        ..Default::default()
    };
    let full =
        DiffusionConfig { timestep_respacing: "100".into(), ..base.clone() }.build().unwrap();
    let plain = base.build().unwrap();
    let x = randn(1, &[3, 3, 8, 8]);
    let t = vec![0, 57, 99];
    let m = toy_model(2);
    let a = full.p_mean_variance(&m, &x, &t, true, None).unwrap();
    let b = plain.p_mean_variance(&m, &x, &t, true, None).unwrap();
    assert_eq!(max_diff(&a.mean, &b.mean), 0.0);
    assert_eq!(max_diff(&a.log_variance, &b.log_variance), 0.0);
    assert_eq!(max_diff(&a.pred_xstart, &b.pred_xstart), 0.0);
}

#[test]
fn respacing_error_cases_are_errors_not_panics() {
    // impossible ddim strides
    for spec in ["ddim999", "ddim0", "ddim1", "ddim1001", "ddim", "ddimx", "ddim-3"] {
        let e = space_timesteps(1000, spec).expect_err(spec);
        println!("{spec}: {e}");
    }
    let msg = space_timesteps(1000, "ddim999").unwrap_err().to_string();
    assert!(msg.contains("999") && msg.contains("stride"), "{msg}");
    // sections larger than their share, malformed counts
    for spec in ["1001", "10,600", "10,,20", "a", "-5", "3.5"] {
        let e = space_timesteps(1000, spec).expect_err(spec);
        println!("{spec}: {e}");
    }
    assert!(space_timesteps(1000, "10,600").unwrap_err().to_string().contains("600"));
    // A single step (or none): the reference crashes; we refuse clearly.
    for spec in ["1", "0", "1,0", "0,0,0"] {
        let cfg = DiffusionConfig { timestep_respacing: spec.into(), ..Default::default() };
        let e = cfg.build().expect_err(spec).to_string();
        println!("{spec}: {e}");
        assert!(e.contains("at least 2"), "{e}");
    }
    // 2 steps is the minimum that works.
    let two =
        DiffusionConfig { timestep_respacing: "2".into(), ..Default::default() }.build().unwrap();
    assert_eq!(two.timestep_map(), &[0, 999]);
    // A 1-step or 0-step base process, bad betas, unknown schedule names.
    assert!(DiffusionConfig { steps: 1, ..Default::default() }.build().is_err());
    assert!(DiffusionConfig { steps: 0, ..Default::default() }.build().is_err());
    assert!(GaussianDiffusion::new(vec![0.1, 0.0, 0.2], ProcessKind::default()).is_err());
    assert!(GaussianDiffusion::new(vec![0.1, 1.5], ProcessKind::default()).is_err());
    assert!(GaussianDiffusion::new(vec![0.1, f64::NAN], ProcessKind::default()).is_err());
    assert!("quadratic".parse::<NoiseSchedule>().is_err());
    // Out-of-range timesteps.
    let d =
        DiffusionConfig { steps: 10, noise_schedule: NoiseSchedule::Cosine, ..Default::default() }
            .build()
            .unwrap();
    let x = randn(0, &[1, 3, 4, 4]);
    assert!(d.q_sample(&x, &[10], &x).is_err());
    assert!(d.q_sample(&x, &[1, 2], &x).is_err());
    // Wrong model output channels.
    let learned = DiffusionConfig {
        steps: 10,
        learn_sigma: true,
        noise_schedule: NoiseSchedule::Cosine,
        ..Default::default()
    }
    .build()
    .unwrap();
    assert!(learned.p_mean_variance(&toy_model(1), &x, &[3], true, None).is_err());
    assert!(d.p_mean_variance(&toy_model(2), &x, &[3], true, None).is_err());
    // The ddim/section syntax accepts the reference's examples.
    assert_eq!(space_timesteps(300, "10,15,20").unwrap().len(), 45);
    assert_eq!(space_timesteps(1000, "").unwrap().len(), 1000);
}

#[test]
fn model_sees_mapped_and_rescaled_timesteps() {
    let d = DiffusionConfig {
        steps: 500,
        rescale_timesteps: true,
        timestep_respacing: "50".into(),
        ..Default::default()
    }
    .build()
    .unwrap();
    let seen = std::sync::Mutex::new(vec![]);
    let model = |x: &Tensor, t: &Tensor| -> Result<Tensor> {
        seen.lock().unwrap().push(t.to_vec1::<f32>()?);
        Ok(x.zeros_like()?)
    };
    let x = randn(0, &[2, 3, 4, 4]);
    d.p_mean_variance(&model, &x, &[49, 7], true, None).unwrap();
    let map = d.timestep_map();
    assert_eq!(seen.lock().unwrap()[0], vec![map[49] as f32 * 2.0, map[7] as f32 * 2.0]);
    assert_eq!(map[49], 499);
}

#[test]
fn p_mean_variance_mean_and_variance_types() {
    let steps = 20;
    let mk = |mean, var| {
        GaussianDiffusion::new(
            get_named_beta_schedule(NoiseSchedule::Cosine, steps),
            ProcessKind { model_mean_type: mean, model_var_type: var, ..Default::default() },
        )
        .unwrap()
    };
    let x = randn(3, &[2, 3, 4, 4]);
    let target = (randn(4, &[2, 3, 4, 4]) * 0.7).unwrap();
    let t = vec![0, 13];
    let a = mk(ModelMeanType::Epsilon, ModelVarType::FixedSmall).arrays().clone();

    // START_X: pred_xstart is the (clipped) model output, the mean is the posterior mean.
    let d = mk(ModelMeanType::StartX, ModelVarType::FixedSmall);
    let tgt = target.clone();
    let m = move |_: &Tensor, _: &Tensor| -> Result<Tensor> { Ok(tgt.clone()) };
    let out = d.p_mean_variance(&m, &x, &t, true, None).unwrap();
    assert_eq!(max_diff(&out.pred_xstart, &target.clamp(-1f32, 1f32).unwrap()), 0.0);
    let (pm, pv, plv) = d.q_posterior_mean_variance(&out.pred_xstart, &x, &t).unwrap();
    assert_eq!(max_diff(&out.mean, &pm), 0.0);
    assert_eq!(max_diff(&out.variance, &pv), 0.0);
    assert_eq!(max_diff(&out.log_variance, &plv), 0.0);
    // FIXED_SMALL variance = posterior variance (f32 cast)
    let v = out.variance.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(v[0][0], a.posterior_variance[0] as f32);
    assert_eq!(v[1][5], a.posterior_variance[13] as f32);

    // denoised_fn applies before the clip.
    let f = |p: &Tensor| -> Result<Tensor> { Ok((p * 10.0)?) };
    let out = d.p_mean_variance(&m, &x, &t, true, Some(&f)).unwrap();
    assert_eq!(
        max_diff(&out.pred_xstart, &(&target * 10.0).unwrap().clamp(-1f32, 1f32).unwrap()),
        0.0
    );

    // PREVIOUS_X: the mean is the model output; pred_xstart inverts the posterior mean.
    let d = mk(ModelMeanType::PreviousX, ModelVarType::FixedLarge);
    let tgt = target.clone();
    let m = move |_: &Tensor, _: &Tensor| -> Result<Tensor> { Ok(tgt.clone()) };
    let out = d.p_mean_variance(&m, &x, &t, false, None).unwrap();
    assert_eq!(max_diff(&out.mean, &target), 0.0);
    let (pm, _, _) = d.q_posterior_mean_variance(&out.pred_xstart, &x, &t).unwrap();
    assert!(max_diff(&pm, &target) < 1e-5, "{}", max_diff(&pm, &target));
    // FIXED_LARGE: [posterior_variance[1], betas[1:]]
    let v = out.variance.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(v[0][0], a.posterior_variance[1] as f32);
    assert_eq!(v[1][0], a.betas[13] as f32);
    let lv = out.log_variance.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(lv[0][0], a.posterior_variance[1].ln() as f32);

    // LEARNED: log-variance is the second half of the output.
    let d = mk(ModelMeanType::Epsilon, ModelVarType::Learned);
    let out = d.p_mean_variance(&toy_model(2), &x, &t, true, None).unwrap();
    let ts = d.model_timesteps(&t, &dev()).unwrap();
    let raw = toy_model(2)(&x, &ts).unwrap();
    assert_eq!(max_diff(&out.log_variance, &raw.narrow(1, 3, 3).unwrap()), 0.0);
    assert_eq!(max_diff(&out.variance, &raw.narrow(1, 3, 3).unwrap().exp().unwrap()), 0.0);
    // EPSILON: pred_xstart from eps.
    let eps = raw.narrow(1, 0, 3).unwrap();
    let px = d.predict_xstart_from_eps(&x, &t, &eps).unwrap().clamp(-1f32, 1f32).unwrap();
    assert_eq!(max_diff(&out.pred_xstart, &px), 0.0);

    // LEARNED_RANGE: v = -1 -> min (clipped posterior), v = +1 -> max (betas).
    let d = mk(ModelMeanType::Epsilon, ModelVarType::LearnedRange);
    for (v, want) in [(-1.0, a.posterior_log_variance_clipped[13]), (1.0, a.betas[13].ln())] {
        let m = move |x: &Tensor, _: &Tensor| -> Result<Tensor> {
            Ok(Tensor::cat(&[&x.zeros_like()?, &(x.ones_like()? * v)?], 1)?)
        };
        let out = d.p_mean_variance(&m, &x, &t, true, None).unwrap();
        let lv = out.log_variance.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
        assert!((lv[1][7] as f64 - want).abs() < 1e-5 * want.abs(), "{} vs {want}", lv[1][7]);
    }
}

#[test]
fn likelihood_helpers() {
    // KL of identical Gaussians is 0; a known value otherwise.
    let m = randn(5, &[2, 6]);
    let lv = (randn(6, &[2, 6]) * 0.3).unwrap();
    let kl = normal_kl(&m, &lv, &m, &lv).unwrap();
    assert!(kl
        .abs()
        .unwrap()
        .max_keepdim(1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|&v| v < 1e-6));
    let zero = Tensor::zeros((), DType::F32, &dev()).unwrap();
    let one = Tensor::ones((), DType::F32, &dev()).unwrap();
    // KL(N(1, 1) || N(0, 1)) = 0.5
    let v = normal_kl(&one, &zero, &zero, &zero).unwrap().to_scalar::<f32>().unwrap();
    assert!((v - 0.5).abs() < 1e-6);

    // The discretized likelihood sums to ~1 over the 256 bins.
    let bins: Vec<f32> = (0..256).map(|k| k as f32 / 127.5 - 1.0).collect();
    let x = Tensor::from_vec(bins, (1, 256), &dev()).unwrap();
    for (mean, log_scale) in [(0.1f32, -2.0f32), (-0.9, -3.5), (0.97, -1.0), (0.0, -6.0)] {
        let means = (x.ones_like().unwrap() * mean as f64).unwrap();
        let ls = (x.ones_like().unwrap() * log_scale as f64).unwrap();
        let lp = discretized_gaussian_log_likelihood(&x, &means, &ls).unwrap();
        let total: f32 = lp.exp().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!((total - 1.0).abs() < 2e-3, "mean {mean} log_scale {log_scale}: sum {total}");
    }
}

#[test]
fn noise_sources_are_deterministic_and_replayable() {
    let shape = [2usize, 3, 8, 8];
    let a = randn(42, &shape);
    let b = randn(42, &shape);
    let c = randn(43, &shape);
    assert_eq!(max_diff(&a, &b), 0.0);
    assert!(max_diff(&a, &c) > 0.1);
    let v = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32;
    assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.15, "mean {mean} var {var}");
    // Consecutive draws of one source differ; the sequence is reproducible.
    let mut s1 = SeededNoise::new(7);
    let mut s2 = SeededNoise::new(7);
    let (x1, x2) = (
        s1.randn(&Shape::from_dims(&shape), &dev()).unwrap(),
        s1.randn(&Shape::from_dims(&shape), &dev()).unwrap(),
    );
    let (y1, y2) = (
        s2.randn(&Shape::from_dims(&shape), &dev()).unwrap(),
        s2.randn(&Shape::from_dims(&shape), &dev()).unwrap(),
    );
    assert!(max_diff(&x1, &x2) > 0.1);
    assert_eq!(max_diff(&x1, &y1) + max_diff(&x2, &y2), 0.0);
    // Replay hands out recorded draws in order and errors when exhausted or mis-shaped.
    let stacked = Tensor::stack(&[&a, &c], 0).unwrap();
    let mut r = ReplayNoise::from_stacked(&stacked).unwrap();
    assert!(r.randn(&Shape::from_dims(&[1, 2]), &dev()).is_err());
    assert_eq!(max_diff(&r.randn(&Shape::from_dims(&shape), &dev()).unwrap(), &a), 0.0);
    assert_eq!(max_diff(&r.randn(&Shape::from_dims(&shape), &dev()).unwrap(), &c), 0.0);
    assert_eq!(r.used(), 2);
    assert!(r.randn(&Shape::from_dims(&shape), &dev()).is_err());
}

#[test]
fn schedule_samplers() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let u = UniformSampler::new(50);
    assert_eq!(u.weights(), vec![1.0; 50]);
    let (ts, w) = u.sample(1000, &mut rng);
    assert!(ts.iter().all(|&t| t < 50) && w.iter().all(|&x| x == 1.0));
    let mut seen = [false; 50];
    ts.iter().for_each(|&t| seen[t] = true);
    assert!(seen.iter().all(|&s| s));

    let mut s = LossSecondMomentResampler::new(4);
    // Not warmed up: uniform.
    s.update_with_losses(&[0, 1, 2], &[1.0, 1.0, 1.0]).unwrap();
    assert!(!s.warmed_up());
    assert_eq!(s.weights(), vec![1.0; 4]);
    // Fill 10 losses per t: t gets loss (t+1), except t=3 whose history later shifts.
    for _ in 0..10 {
        s.update_with_losses(&[0, 1, 2, 3], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    }
    assert!(s.warmed_up());
    let w = s.weights();
    // t=0 got one extra 1.0 at the start; the shifted histories are all (t+1).
    let rms = [1.0f64, 2.0, 3.0, 4.0];
    let total: f64 = rms.iter().sum();
    for t in 0..4 {
        let want = rms[t] / total * 0.999 + 0.001 / 4.0;
        assert!((w[t] - want).abs() < 1e-12, "{t}: {} vs {want}", w[t]);
    }
    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    // The oldest loss is shifted out.
    s.update_with_losses(&[3], &[40.0]).unwrap();
    assert!(s.update_with_losses(&[4], &[1.0]).is_err());
    assert!(s.update_with_losses(&[1, 2], &[1.0]).is_err());
    assert!(UniformSampler::new(4).update_with_losses(&[9], &[1.0]).is_err());
    assert_eq!(UniformSampler::new(0).sample(3, &mut rng).0.len(), 0);
    let w2 = s.weights();
    assert!(w2[3] > w[3]);
    // Importance weights are 1 / (T p_t).
    let (ts, iw) = s.sample(2000, &mut rng);
    let p3 = w2[3] / w2.iter().sum::<f64>();
    for (t, x) in ts.iter().zip(&iw) {
        if *t == 3 {
            assert!((*x as f64 - 1.0 / (4.0 * p3)).abs() < 1e-6);
        }
    }
    let frac3 = ts.iter().filter(|&&t| t == 3).count() as f64 / ts.len() as f64;
    assert!((frac3 - p3).abs() < 0.05, "{frac3} vs {p3}");
    assert!(guided_diffusion::diffusion::create_named_schedule_sampler("nope", 10).is_err());
}
