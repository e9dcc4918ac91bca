//! Training the real networks: one step's loss and gradients on a golden dev model, the loss
//! falling on real data, and resume = uninterrupted run with the diffusion objective.
mod support;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use guided_diffusion::data::Loader;
use guided_diffusion::diffusion::{create_named_schedule_sampler, DiffusionConfig, NoiseSchedule};
use guided_diffusion::models::{Net, NetConfig};
use guided_diffusion::train::{
    DiffusionObjective, LabelDropout, Logger, MicroScaling, ParamSet, TrainConfig, TrainLoop,
};
use support::train::{fashion_loader, tiny_config};
use support::{golden, Case};

fn trainable(cfg: &NetConfig) -> (Net, VarMap) {
    let vm = VarMap::new();
    let vb = guided_diffusion::models::init::seeded_var_builder(&vm, 11, &Device::Cpu);
    let net = Net::new(cfg, vb).unwrap();
    (net, vm)
}

#[test]
fn train_step_on_golden_model_matches_training_losses_and_reaches_every_parameter() {
    let cfg = NetConfig::from_file(golden("model_unet_a.json")).unwrap();
    let (net, vm) = trainable(&cfg);
    let params = ParamSet::from_varmap(&vm);
    let sd = guided_diffusion::checkpoint::read(golden("model_unet_a.safetensors"), &Device::Cpu)
        .unwrap();
    params.load_from(&sd.tensors, "model_unet_a").unwrap();

    let case = Case::load("training_losses_a");
    let d = DiffusionConfig {
        steps: 1000,
        learn_sigma: true,
        noise_schedule: NoiseSchedule::Cosine,
        ..Default::default()
    }
    .build()
    .unwrap();
    let y = case.get("in.y");
    let t: Vec<usize> =
        case.get("in.t").to_vec1::<i64>().unwrap().into_iter().map(|v| v as usize).collect();
    let model = |x: &Tensor, tt: &Tensor| net.forward(x, tt, Some(y), None);
    let tl = d.training_losses(&model, case.get("in.x_start"), &t, case.get("in.noise")).unwrap();
    support::assert_close(
        "train loss = reference training_losses",
        &tl.loss,
        case.get("out.call0.loss"),
        case.atol("call0.loss"),
    );

    let grads = tl.loss.mean_all().unwrap().backward().unwrap();
    let mut zero = Vec::new();
    for (name, var) in params.names().iter().zip(params.vars()) {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name}: non-finite gradient");
        if v.iter().all(|&x| x == 0.0) {
            zero.push(name.clone());
        }
    }
    assert!(zero.is_empty(), "parameters with an all-zero gradient: {zero:?}");
}

fn train_loop(
    dir: &std::path::Path,
    steps: u64,
    lr: f64,
) -> (TrainLoop<DiffusionObjective>, VarMap) {
    train_loop_with(dir, steps, lr, None)
}

fn train_loop_with(
    dir: &std::path::Path,
    steps: u64,
    lr: f64,
    label_dropout: Option<LabelDropout>,
) -> (TrainLoop<DiffusionObjective>, VarMap) {
    let mut cfg = tiny_config();
    if let (Some(d), NetConfig::UNet(u)) = (label_dropout, &mut cfg) {
        // The null class is one more, last label row.
        u.num_classes = Some(d.null_class + 1);
    }
    let (net, vm) = trainable(&cfg);
    let diffusion = DiffusionConfig {
        steps: 1000,
        learn_sigma: true,
        noise_schedule: NoiseSchedule::Cosine,
        ..Default::default()
    }
    .build()
    .unwrap();
    let sampler = create_named_schedule_sampler("loss-second-moment", 1000).unwrap();
    let obj = DiffusionObjective { net, diffusion, sampler, small_size: None, label_dropout };
    let mut tc = TrainConfig::new(16, lr, dir);
    tc.max_steps = Some(steps);
    tc.save_interval = 1000;
    tc.log_interval = 5;
    tc.seed = 7;
    tc.micro_scaling = MicroScaling::SumOfMicroMeans;
    tc.microbatch = 8;
    let lp = TrainLoop::new(tc, ParamSet::from_varmap(&vm), obj, Logger::null()).unwrap();
    (lp, vm)
}

fn mean_loss(lp: &mut TrainLoop<DiffusionObjective>, data: &mut Loader, n: usize) -> f64 {
    use guided_diffusion::data::BatchSource;
    let mut total = 0.0;
    for _ in 0..n {
        let b = data.next_batch().unwrap();
        lp.run_step(&b).unwrap();
        total += lp.logger.current().get("loss").copied().unwrap_or(f64::NAN);
    }
    total / n as f64
}

#[test]
fn train_loss_falls_on_fashion_mnist() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lp, _vm) = train_loop(dir.path(), 40, 2e-3);
    let mut data = fashion_loader(16, 1);
    let first = mean_loss(&mut lp, &mut data, 5);
    let _ = mean_loss(&mut lp, &mut data, 30);
    let last = mean_loss(&mut lp, &mut data, 5);
    println!("loss: first 5 steps {first:.4}, last 5 steps {last:.4}");
    assert!(last < 0.8 * first, "loss did not fall: {first} -> {last}");
}

#[test]
fn train_resume_matches_uninterrupted_run() {
    resume_matches_uninterrupted(None);
}

/// With label dropout the drops come from the training streams too: resumed = uninterrupted.
#[test]
fn train_resume_with_label_dropout_matches_uninterrupted_run() {
    resume_matches_uninterrupted(Some(LabelDropout { prob: 0.3, null_class: 10 }));
}

fn resume_matches_uninterrupted(dropout: Option<LabelDropout>) {
    use guided_diffusion::data::BatchSource;
    let straight_dir = tempfile::tempdir().unwrap();
    let (mut a, vm_a) = train_loop_with(straight_dir.path(), 4, 1e-3, dropout);
    a.run(&mut fashion_loader(16, 3), None).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (mut b, _) = train_loop_with(dir.path(), 2, 1e-3, dropout);
    b.run(&mut fashion_loader(16, 3), None).unwrap();
    b.save().unwrap();
    let (mut c, vm_c) = train_loop_with(dir.path(), 4, 1e-3, dropout);
    c.resume(None).unwrap();
    assert_eq!(c.step(), 2);
    let mut data = fashion_loader(16, 3);
    data.seek(2).unwrap();
    c.run(&mut data, None).unwrap();

    let pa = ParamSet::from_varmap(&vm_a);
    let pc = ParamSet::from_varmap(&vm_c);
    for ((n, va), vc) in pa.names().iter().zip(pa.vars()).zip(pc.vars()) {
        let d = support::max_abs_diff(va.as_tensor(), vc.as_tensor());
        assert_eq!(d, 0.0, "{n} differs by {d} after resume");
    }
}

/// Sampling from the EMA's weights after an in-place EMA update gives what a freshly loaded
/// copy of the updated EMA gives: a network built on the EMA's own tensors (not frozen, so it
/// keeps no derived weight forms) follows the update, and so does one that was frozen (keeping
/// Winograd transforms of the old weights) and is frozen again after the update.
#[test]
fn train_ema_sampling_after_in_place_update_matches_fresh_copy() {
    use guided_diffusion::sample::{Classes, GuidanceSettings, Request, Sampling};
    use guided_diffusion::samplers::SamplerSpec;
    use guided_diffusion::train::Ema;
    use std::collections::HashMap;
    let dev = Device::Cpu;
    let cfg = tiny_config();
    let (_net, vm) = trainable(&cfg);
    let params = ParamSet::from_varmap(&vm);
    let mut ema = Ema::new(0.5, &params).unwrap();
    let named = |ema: &Ema| -> HashMap<String, Tensor> {
        params.names().iter().cloned().zip(ema.params.iter().cloned()).collect()
    };
    let follows = Net::from_tensors(&cfg, named(&ema), "the EMA", &dev).unwrap();
    let mut refrozen = Net::from_tensors(&cfg, named(&ema), "the EMA", &dev).unwrap();
    refrozen.freeze();
    let d = DiffusionConfig {
        steps: 1000,
        learn_sigma: true,
        noise_schedule: NoiseSchedule::Cosine,
        ..Default::default()
    };
    let ddim: SamplerSpec = "ddim3".parse().unwrap();
    // Four 16x16 images: 64 Winograd tiles, so the frozen network keeps Winograd forms.
    let x = Tensor::randn(0f32, 1.0, (4, 1, 16, 16), &dev).unwrap();
    let t = Tensor::new(&[10f32, 300.0, 600.0, 900.0], &dev).unwrap();
    let y = Tensor::new(&[0u32, 3, 5, 9], &dev).unwrap();
    let sample = |net: &Net| -> (Vec<u8>, Vec<u32>) {
        let run = Sampling {
            model: net,
            diffusion: &d,
            sampler: &ddim,
            guidance: GuidanceSettings::default(),
            clip_denoised: true,
            shape: [1, 16, 16],
            num_classes: Some(10),
            null_class: None,
            device: Device::Cpu,
        };
        let req = Request {
            num_samples: 4,
            batch_size: 4,
            classes: Classes::Cycle(vec![0, 3, 5, 9]),
            seed: 3,
            init_noise: None,
            keep_float: false,
            shard: Default::default(),
            low_res: None,
        };
        let images = run.run(&req, &mut |_| {}).unwrap().images;
        let out = net.forward(&x, &t, Some(&y), None).unwrap();
        let bits = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (
            images.flatten_all().unwrap().to_vec1().unwrap(),
            bits.into_iter().map(f32::to_bits).collect(),
        )
    };
    let before = sample(&refrozen);
    assert_eq!(sample(&follows), before);
    let Net::UNet(u) = &refrozen else { unreachable!("a UNet config") };
    assert!(u.keeps_weight_forms(), "the frozen network keeps its weights' forms");
    // A training step's worth of change (every parameter moves, the zero-initialised output
    // convolution too), then the EMA update, in place on the CPU.
    for v in params.vars() {
        let noise = Tensor::randn(0f32, 0.05, v.dims(), &dev).unwrap();
        v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
    }
    ema.update(&params).unwrap();
    refrozen.freeze();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ema.safetensors");
    let pairs: Vec<(String, Tensor)> = named(&ema).into_iter().collect();
    guided_diffusion::train::ckpt::save_safetensors(&path, &pairs, HashMap::new()).unwrap();
    let fresh = Net::load_with_config(&cfg, &path, &dev).unwrap();
    let want = sample(&fresh);
    assert!(want.1 != before.1, "the update must change the network's output");
    assert!(sample(&follows) == want, "the network on the EMA's tensors missed the update");
    assert!(sample(&refrozen) == want, "the network frozen again kept stale weight forms");
}
