//! SDE-DPM-Solver++ ("DPM++ 2M SDE"): its first order is DDIM with eta = 1 on the same grid and
//! the same noise draws (the two are the same formula), its second order matches the authors'
//! diffusers scheduler (values from `golden/gen_sde_dpm_solver.py`), and its spec keys are
//! checked like the ODE solver's.
use candle_core::{DType, Device, Shape, Tensor};
use guided_diffusion::diffusion::{DiffusionConfig, NoiseSchedule, NoiseSource, SeededNoise};
use guided_diffusion::samplers::{Ddim, Denoiser, SampleOptions, Sampler, SamplerSpec, StepInfo};
use guided_diffusion::Result;

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

/// A smooth noise predictor of x and the model time (a stand-in for a network).
fn smooth_model(x: &Tensor, t: &Tensor) -> Result<Tensor> {
    let tt = (t.reshape((t.dim(0)?, 1, 1, 1))? / 1000.0)?;
    Ok((x.broadcast_mul(&tt)?.sin()? * 0.8)?)
}

fn linear(respacing: &str) -> DiffusionConfig {
    DiffusionConfig {
        noise_schedule: NoiseSchedule::Linear,
        timestep_respacing: respacing.into(),
        ..Default::default()
    }
}

/// DDIM with eta = 1 steps from s to t as `alpha_t x0 + sqrt(sigma_t^2 - s^2) eps + s z` with
/// `s^2 = (sigma_t / sigma_s)^2 (1 - alpha_s^2 / alpha_t^2)`. Written with
/// `e^-h = (alpha_s sigma_t) / (sigma_s alpha_t)`, that is `sigma_t e^-h / sigma_s x_s +
/// alpha_t (1 - e^-2h) x0 + sigma_t sqrt(1 - e^-2h) z`: the first-order SDE-DPM-Solver++ step.
/// The solver's 9 time-uniform steps from t = 1 to 1/1000 are DDIM's first 9 on the respacing
/// "10" (DDIM's last step goes on to x_0), and both draw one noise per step.
#[test]
fn first_order_sde_dpm_solver_pp_is_ddim_with_eta_one() {
    let x_t = SeededNoise::new(5).randn(&Shape::from_dims(&[2, 3, 4, 4]), &Device::Cpu).unwrap();
    for clip in [false, true] {
        let opts = SampleOptions { clip_denoised: clip, ..Default::default() };
        let mut ddim_steps = vec![];
        let mut cb = |s: &StepInfo| -> Result<()> {
            ddim_steps.push(s.sample.clone());
            Ok(())
        };
        Ddim::new(linear("10").build().unwrap(), 1.0)
            .sample(
                &Denoiser::new(&smooth_model, opts),
                &x_t,
                &mut SeededNoise::new(7),
                Some(&mut cb),
            )
            .unwrap();
        let spec: SamplerSpec =
            format!("sde-dpm-solver++9 order=1 clip_denoised={clip}").parse().unwrap();
        let mut s = spec.build(&linear("")).unwrap();
        let mut steps = vec![];
        let mut cb = |s: &StepInfo| -> Result<()> {
            steps.push(s.sample.clone());
            Ok(())
        };
        s.sample(
            &Denoiser::new(&smooth_model, opts),
            &x_t,
            &mut SeededNoise::new(7),
            Some(&mut cb),
        )
        .unwrap();
        assert_eq!((s.nfe(), steps.len()), (9, 9));
        // Float32 schedule against DDIM's f64 alphas: the unclamped first x_0 estimates are
        // ~100 (1 / sqrt(alpha_bar) at t = 999), so 1e-6 relative rounding shows as ~1e-4.
        let tol = if clip { 1e-4 } else { 1e-3 };
        for (k, (a, b)) in steps.iter().zip(&ddim_steps).enumerate() {
            let e = max_diff(a, b);
            assert!(e < tol, "clip_denoised={clip} step {k}: {e}");
        }
    }
}

/// Closed-form "noise": draw k is `1.5 sin(1.3 i + 0.7 k + 0.1)` over the flattened tensor.
struct FormulaNoise(usize);

impl NoiseSource for FormulaNoise {
    fn randn(&mut self, shape: &Shape, device: &Device) -> Result<Tensor> {
        let k = self.0 as f64;
        self.0 += 1;
        let v: Vec<f32> = (0..shape.elem_count())
            .map(|i| (1.5 * (1.3 * i as f64 + 0.7 * k + 0.1).sin()) as f32)
            .collect();
        Ok(Tensor::from_vec(v, shape, device)?)
    }
}

/// 12 steps of second order against diffusers 0.30.0's `sde-dpmsolver++` (the authors' code)
/// run on this crate's time grid: see `golden/gen_sde_dpm_solver.py`.
#[test]
fn second_order_matches_the_authors_diffusers_scheduler() {
    let x_t: Vec<f32> = (0..6).map(|i| (1.2 * (0.9 * i as f64).cos()) as f32).collect();
    let x_t = Tensor::from_vec(x_t, (1, 1, 2, 3), &Device::Cpu).unwrap();
    let expected: [(&str, [f64; 6]); 2] = [
        (
            "dpmsolver",
            [127.082_954, 186.790_115, -29.094_326, -262.369_873, -144.586_319, 74.084_770],
        ),
        ("taylor", [129.030_991, 238.788_406, -29.754_545, -284.270_660, -169.728_653, 82.993_584]),
    ];
    for (solver_type, want) in expected {
        let spec: SamplerSpec =
            format!("sde-dpm-solver++12 solver_type={solver_type}").parse().unwrap();
        let mut s = spec.build(&linear("")).unwrap();
        let opts = SampleOptions { clip_denoised: false, ..Default::default() };
        let x = s
            .sample(&Denoiser::new(&smooth_model, opts), &x_t, &mut FormulaNoise(0), None)
            .unwrap();
        let got = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (g, w) in got.iter().zip(want) {
            // The values grow to ~100 (the closed-form model is no denoiser); both sides run
            // a float32 schedule and agree to float32 rounding (1.5e-6 relative here).
            let rel = ((*g as f64 - w) / w.abs().max(1.0)).abs();
            assert!(rel < 1e-5, "{solver_type}: got {got:?}, want {want:?}");
        }
        assert_eq!(s.nfe(), 12);
    }
}

#[test]
fn specs_round_trip_and_refuse_what_does_not_apply() {
    for s in [
        "sde-dpm-solver++20",
        "sde-dpm-solver++20 clip_denoised=true",
        "sde-dpm-solver++ steps=10 order=1 skip_type=logSNR solver_type=taylor",
        "sde-dpm-solver++15 thresholding=true thresholding_ratio=0.99 denoise_to_zero=true",
        "sde-dpm-solver++5 lower_order_final=false",
    ] {
        let spec: SamplerSpec = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
        let again: SamplerSpec = spec.to_string().parse().unwrap();
        assert_eq!(spec, again, "{s}");
    }
    let a: SamplerSpec = "sde-dpm-solver++ steps=20 order=2".parse().unwrap();
    assert_eq!(a.to_string(), "sde-dpm-solver++20");
    for (bad, says) in [
        ("sde-dpm-solver++ order=3", "order 1 or 2"),
        ("sde-dpm-solver++ method=singlestep", "method"),
        ("sde-dpm-solver++ atol=0.1", "atol"),
        ("sde-dpm-solver++ steps=1 order=2", "needs at least 2 steps"),
        ("sde-dpm-solver++ thresholding_ratio=0.9", "needs thresholding=true"),
        ("sde-dpm-solver++ thresholding=true clip_denoised=true", "two corrections"),
        ("sde-dpm-solver++0", "steps=0"),
    ] {
        let e = bad.parse::<SamplerSpec>().unwrap_err().to_string();
        assert!(e.contains(says), "{bad:?}: {e}");
    }
}

/// One noise draw per step (so a seeded run is reproducible), and `denoise_to_zero` ends on a
/// data prediction: one more evaluation, and the clamp then bounds the result.
#[test]
fn draws_one_noise_per_step_and_denoises_to_zero() {
    struct Counting(usize, SeededNoise);
    impl NoiseSource for Counting {
        fn randn(&mut self, shape: &Shape, device: &Device) -> Result<Tensor> {
            self.0 += 1;
            self.1.randn(shape, device)
        }
    }
    let x_t = SeededNoise::new(1).randn(&Shape::from_dims(&[2, 1, 4, 4]), &Device::Cpu).unwrap();
    let opts = SampleOptions { clip_denoised: false, ..Default::default() };
    let den = Denoiser::new(&smooth_model, opts);
    let run = |spec: &str| {
        let mut s = spec.parse::<SamplerSpec>().unwrap().build(&linear("")).unwrap();
        let mut noise = Counting(0, SeededNoise::new(3));
        let x = s.sample(&den, &x_t, &mut noise, None).unwrap();
        (x, s.nfe(), noise.0)
    };
    let (a, nfe, draws) = run("sde-dpm-solver++10 clip_denoised=true");
    assert_eq!((nfe, draws), (10, 10));
    let (b, _, _) = run("sde-dpm-solver++10 clip_denoised=true");
    assert_eq!(max_diff(&a, &b), 0.0, "same seed, same samples");
    let (z, nfe, draws) = run("sde-dpm-solver++10 clip_denoised=true denoise_to_zero=true");
    assert_eq!((nfe, draws), (11, 10));
    let m = z.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(m <= 1.0, "the clamped final data prediction: max |x| {m}");
}
