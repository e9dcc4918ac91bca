//! Mixed-precision training (`gdiff train --precision bf16`: the trained network holds a bf16
//! kernel policy): on real data, the first steps' losses match float32 to bf16's precision and
//! the loss falls as in float32.
mod support;

use candle_core::Device;
use candle_nn::VarMap;
use guided_diffusion::data::BatchSource;
use guided_diffusion::diffusion::{create_named_schedule_sampler, DiffusionConfig, NoiseSchedule};
use guided_diffusion::kernels::{self, KernelPolicy, Precision};
use guided_diffusion::models::Net;
use guided_diffusion::train::{DiffusionObjective, Logger, ParamSet, TrainConfig, TrainLoop};
use support::train::{fashion_loader, tiny_config};

fn tiny_loop(dir: &std::path::Path, policy: KernelPolicy) -> TrainLoop<DiffusionObjective> {
    let cfg = tiny_config();
    let vm = VarMap::new();
    let net =
        Net::new(&cfg, guided_diffusion::models::init::seeded_var_builder(&vm, 11, &Device::Cpu))
            .unwrap()
            .with_policy(policy);
    let diffusion = DiffusionConfig {
        steps: 1000,
        learn_sigma: true,
        noise_schedule: NoiseSchedule::Cosine,
        ..Default::default()
    }
    .build()
    .unwrap();
    let sampler = create_named_schedule_sampler("uniform", 1000).unwrap();
    let obj = DiffusionObjective { net, diffusion, sampler, small_size: None, label_dropout: None };
    let mut tc = TrainConfig::new(16, 2e-3, dir);
    tc.save_interval = 1000;
    tc.log_interval = 5;
    tc.seed = 7;
    TrainLoop::new(tc, ParamSet::from_varmap(&vm), obj, Logger::null()).unwrap()
}

/// The loss of each of `steps` steps.
fn losses(bf16: bool, steps: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let precision = if bf16 { Precision::Bf16 } else { Precision::F32 };
    let mut lp = tiny_loop(dir.path(), KernelPolicy::default().with_precision(precision));
    let mut data = fashion_loader(16, 1);
    (0..steps)
        .map(|_| {
            lp.run_step(&data.next_batch().unwrap()).unwrap();
            lp.logger.current().get("loss").copied().unwrap_or(f64::NAN)
        })
        .collect()
}

#[test]
fn train_bf16_losses_match_f32_and_fall() {
    println!("AMX: {}", kernels::amx::hardware());
    let f32_run = losses(false, 3);
    let run = losses(true, 40);
    assert!(run.iter().all(|l| l.is_finite()), "non-finite loss in bf16: {run:?}");
    // Step 1's output is 0 either way (the output convolution starts at zero); steps 2 and 3
    // see the updated weights.
    assert_eq!(run[0], f32_run[0]);
    for i in 1..3 {
        let rel = (run[i] - f32_run[i]).abs() / f32_run[i];
        println!(
            "loss of step {}: f32 {:.5}, bf16 {:.5} ({rel:.1e} apart)",
            i + 1,
            f32_run[i],
            run[i]
        );
        assert!(
            rel > 0.0 && rel < 2e-2,
            "step {} loss in bf16 {} vs f32 {}",
            i + 1,
            run[i],
            f32_run[i]
        );
    }
    let (first, last) = (run[..5].iter().sum::<f64>() / 5.0, run[35..].iter().sum::<f64>() / 5.0);
    println!("bf16 loss: first 5 steps {first:.4}, last 5 steps {last:.4}");
    assert!(last < 0.8 * first, "bf16 loss did not fall: {first} -> {last}");
}
