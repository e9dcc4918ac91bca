//! Parity of the diffusion process driven by the real networks (golden models `unet_a`,
//! `unet_b`, `clf_attn`): p_mean_variance (plain, respaced, rescaled), training losses (all
//! loss types, t = 0), and the full DDIM / DDPM sampling loops, guided and unguided, with the
//! reference's noise replayed — each within the tolerances of its case JSON.
mod support;

use std::sync::Mutex;

use candle_core::{Device, Tensor};
use guided_diffusion::diffusion::{GaussianDiffusion, NoiseSource, ReplayNoise, SeededNoise};
use guided_diffusion::guidance::{ClassifierGuidance, Guidance, NoGuidance};
use guided_diffusion::models::Net;
use guided_diffusion::samplers::{Ddim, Ddpm, Denoiser, SampleOptions, Sampler, StepInfo};
use guided_diffusion::Result;
use support::{assert_close, golden_dir, to_uint8_nhwc, uint8_diff, Case};

fn load_net(name: &str) -> Net {
    let dir = golden_dir();
    Net::load(
        dir.join(format!("model_{name}.json")),
        dir.join(format!("model_{name}.safetensors")),
        &Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("loading model {name}: {e}"))
    .with_policy(support::policy())
}

fn build(diffusion: &serde_json::Value) -> GaussianDiffusion {
    Case::diffusion_config(diffusion).build().unwrap()
}

#[test]
fn parity_p_mean_variance() {
    let case = Case::load("p_mean_variance");
    let net = load_net(case.params()["model"].as_str().unwrap());
    let x = case.get("in.x");
    let y = case.get("in.y");
    let calls = case.params()["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 4);
    for (n, call) in calls.iter().enumerate() {
        let d = build(&call["diffusion"]);
        let clip = call["clip_denoised"].as_bool().unwrap();
        let t = case.usizes(&format!("in.call{n}.t"));
        let seen = Mutex::new(None);
        let model = |x: &Tensor, ts: &Tensor| -> Result<Tensor> {
            *seen.lock().unwrap() = Some(ts.clone());
            net.forward(x, ts, Some(y), None)
        };
        let out = d.p_mean_variance(&model, x, &t, clip, None).unwrap();
        let pre = format!("call{n}");
        let ts = seen.lock().unwrap().clone().unwrap();
        assert_close(
            &format!("{pre}.model_timesteps"),
            &ts,
            case.get(&format!("out.{pre}.model_timesteps")),
            0.0,
        );
        for (key, got) in [
            ("mean", &out.mean),
            ("variance", &out.variance),
            ("log_variance", &out.log_variance),
            ("pred_xstart", &out.pred_xstart),
        ] {
            let k = format!("{pre}.{key}");
            assert_close(&k, got, case.get(&format!("out.{k}")), case.atol(&k));
        }
    }
}

fn run_losses_case(name: &str) {
    let case = Case::load(name);
    let net = load_net(case.params()["model"].as_str().unwrap());
    let x_start = case.get("in.x_start");
    let noise = case.get("in.noise");
    let t = case.usizes("in.t");
    assert!(t.contains(&0), "the case exercises the t = 0 decoder term");
    let y = case.has("in.y").then(|| case.get("in.y").clone());
    let model =
        |x: &Tensor, ts: &Tensor| -> Result<Tensor> { net.forward(x, ts, y.as_ref(), None) };
    for (n, call) in case.params()["calls"].as_array().unwrap().iter().enumerate() {
        let d = build(&call["diffusion"]);
        let losses = d.training_losses(&model, x_start, &t, noise).unwrap();
        let mut checked = 0;
        for (term, got) in
            [("loss", Some(&losses.loss)), ("mse", losses.mse.as_ref()), ("vb", losses.vb.as_ref())]
        {
            let key = format!("out.call{n}.{term}");
            if case.has(&key) {
                let got = got.unwrap_or_else(|| panic!("{name} call{n}: no {term} term"));
                assert_close(
                    &format!("{name}.call{n}.{term}"),
                    got,
                    case.get(&key),
                    case.atol(&format!("call{n}.{term}")),
                );
                let want = case.get(&key).to_vec1::<f32>().unwrap();
                println!("    got {:?} want {want:?}", got.to_vec1::<f32>().unwrap());
                checked += 1;
            } else {
                assert!(got.is_none() || term == "loss", "{name} call{n}: unexpected {term}");
            }
        }
        assert!(checked >= 1);
    }
}

#[test]
fn parity_loss_training_losses_learned_sigma() {
    run_losses_case("training_losses_a");
}

#[test]
fn parity_loss_training_losses_fixed_sigma() {
    run_losses_case("training_losses_b");
}

/// Runs a golden sampling case: the reference's `ddim_sample_loop_progressive` /
/// `p_sample_loop_progressive` with `model_fn` and `cond_fn` of `classifier_sample.py`.
fn run_sample_case(name: &str) {
    let case = Case::load(name);
    let p = case.params().clone();
    let net = load_net(p["model"].as_str().unwrap());
    let class_cond = p["class_cond"].as_bool().unwrap();
    let y = case.get("in.y").clone();
    let model = |x: &Tensor, ts: &Tensor| -> Result<Tensor> {
        net.forward(x, ts, if class_cond { Some(&y) } else { None }, None)
    };
    let clf = p["classifier"].as_str().map(load_net);
    let classifier = |x: &Tensor, ts: &Tensor| -> Result<Tensor> {
        clf.as_ref().unwrap().forward(x, ts, None, None)
    };
    let scale = p["classifier_scale"].as_f64().unwrap();
    let guided: Box<dyn Guidance> = match clf {
        Some(_) => Box::new(ClassifierGuidance::from_label_tensor(&classifier, &y, scale).unwrap()),
        None => Box::new(NoGuidance),
    };
    let d = build(&p["diffusion"]);
    let opts = SampleOptions {
        clip_denoised: p["clip_denoised"].as_bool().unwrap(),
        denoised_fn: None,
        guidance: guided.as_ref(),
    };
    let mut sampler: Box<dyn Sampler> = match p["method"].as_str().unwrap() {
        "ddim" => Box::new(Ddim::new(d.clone(), p["eta"].as_f64().unwrap())),
        "ddpm" => Box::new(Ddpm::new(d.clone())),
        m => panic!("unknown method {m}"),
    };
    let steps = d.num_timesteps();
    let mut replay = case
        .has("in.injected_noise")
        .then(|| ReplayNoise::from_stacked(case.get("in.injected_noise")).unwrap());
    // Without injected noise only DDIM with eta = 0 is replayable: its draws are multiplied by 0.
    let mut seeded = SeededNoise::new(0);
    let noise: &mut dyn NoiseSource = match replay.as_mut() {
        Some(r) => r,
        None => {
            assert_eq!(
                p["eta"].as_f64(),
                Some(0.0),
                "{name}: stochastic case without injected noise"
            );
            &mut seeded
        }
    };
    let (mut t_spaced, mut t_model, mut samples, mut preds) = (vec![], vec![], vec![], vec![]);
    let mut cb = |s: &StepInfo| -> Result<()> {
        t_spaced.push(s.t as i64);
        t_model.push(s.t_model as i64);
        samples.push(s.sample.clone());
        preds.push(s.pred_xstart.clone());
        Ok(())
    };
    let started = std::time::Instant::now();
    let sample = sampler
        .sample(&Denoiser::new(&model, opts), case.get("in.x_T"), noise, Some(&mut cb))
        .unwrap();
    println!("{name}: {steps} steps in {:.1?}", started.elapsed());
    if let Some(r) = &replay {
        assert_eq!(r.used(), steps, "one noise draw per step");
        assert_eq!(r.remaining(), 0);
    }
    assert_eq!(t_spaced, case.get("out.t_spaced").to_vec1::<i64>().unwrap(), "t_spaced");
    assert_eq!(t_model, case.get("out.t_model").to_vec1::<i64>().unwrap(), "t_model");
    assert_close(&format!("{name}.sample"), &sample, case.get("out.sample"), case.atol("sample"));
    if case.has("out.steps_sample") {
        let s = Tensor::stack(&samples, 0).unwrap();
        let px = Tensor::stack(&preds, 0).unwrap();
        assert_close(
            &format!("{name}.steps_sample"),
            &s,
            case.get("out.steps_sample"),
            case.atol("steps_sample"),
        );
        assert_close(
            &format!("{name}.steps_pred_xstart"),
            &px,
            case.get("out.steps_pred_xstart"),
            case.atol("steps_pred_xstart"),
        );
    }
    // uint8 images: at most 1 level, on at most 1% of the elements (truncation boundary).
    let img = to_uint8_nhwc(&sample);
    let (max_level, n_diff, total) = uint8_diff(&img, case.get("out.sample_uint8_nhwc"));
    println!(
        "{name}.sample_uint8_nhwc: max level diff {max_level}, {n_diff} of {total} elements differ"
    );
    assert!(max_level <= 1, "{name}: uint8 differs by {max_level} levels");
    assert!(n_diff * 100 <= total, "{name}: {n_diff} of {total} uint8 elements differ (> 1%)");
}

#[test]
fn parity_ddim_guided() {
    run_sample_case("ddim_guided");
}

#[test]
fn parity_ddim_unguided() {
    run_sample_case("ddim_unguided");
}

#[test]
fn parity_ddim_eta_guided_injected() {
    run_sample_case("ddim_eta_guided_injected");
}

#[test]
fn parity_ddpm_guided_injected() {
    run_sample_case("ddpm_guided_injected");
}

#[test]
fn parity_ddpm_uncondmodel_guided_injected() {
    run_sample_case("ddpm_uncondmodel_guided_injected");
}
