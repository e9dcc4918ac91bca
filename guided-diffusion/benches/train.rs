//! Training-step benchmark: steps/s, images/s and peak resident memory of one full training
//! step (diffusion loss, backward, AdamW, EMA) for the small Fashion-MNIST configuration and
//! (with `GD_BENCH_BIG=1`) the released 64x64 configuration at batch 2.
//! Run with `cargo bench -p guided-diffusion --bench train`; `GD_TRAIN_BENCH=small,shipped,mid`
//! picks the configurations (the shipped one is the small model with 2 residual blocks per
//! level, as the project trains it), `GD_BENCH_CLOCK=cpu` times in CPU seconds (a loaded
//! machine: run with `RAYON_NUM_THREADS=1`), `GD_PRECISION=bf16` trains with a bf16 policy.
mod common;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use guided_diffusion::data::Batch;
use guided_diffusion::diffusion::{create_named_schedule_sampler, DiffusionConfig, NoiseSchedule};
use guided_diffusion::models::{init::seeded_var_builder, ModelFlags, Net, NetConfig};
use guided_diffusion::train::{DiffusionObjective, Logger, ParamSet, TrainConfig, TrainLoop};

fn bench(name: &str, flags: &ModelFlags, batch: usize, steps: usize) {
    let dev = Device::Cpu;
    let cfg = NetConfig::UNet(flags.to_config().unwrap());
    let vm = VarMap::new();
    let policy = common::policy();
    let net = Net::new(&cfg, seeded_var_builder(&vm, 0, &dev)).unwrap().with_policy(policy);
    let diffusion = DiffusionConfig {
        learn_sigma: flags.to_config().unwrap().learns_sigma(),
        noise_schedule: NoiseSchedule::Cosine,
        ..Default::default()
    }
    .build()
    .unwrap();
    let sampler = create_named_schedule_sampler("uniform", 1000).unwrap();
    let obj = DiffusionObjective { net, diffusion, sampler, small_size: None, label_dropout: None };
    let dir = std::env::temp_dir().join(format!("gd-bench-train-{}", std::process::id()));
    let mut tc = TrainConfig::new(batch, 1e-4, &dir);
    tc.save_interval = u64::MAX;
    tc.log_interval = u64::MAX;
    tc.policy = policy;
    let mut lp = TrainLoop::new(tc, ParamSet::from_varmap(&vm), obj, Logger::null()).unwrap();
    let u = flags.to_config().unwrap();
    let (c, s) = (u.trunk.in_channels, u.trunk.image_size);
    let images = Tensor::rand(-1f32, 1.0, (batch, c, s, s), &dev).unwrap();
    let labels = u.num_classes.is_some().then(|| Tensor::new(vec![1u32; batch], &dev).unwrap());
    let b = Batch { images, labels, index: 0 };
    lp.run_step(&b).unwrap(); // warm-up
    let mut times: Vec<f64> = (0..steps)
        .map(|_| {
            let t = common::clock();
            lp.run_step(&b).unwrap();
            common::clock() - t
        })
        .collect();
    let per = common::median(&mut times);
    let params: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
    println!(
        "{name:<28} params {params:>10}  batch {batch:>3}  {:>8.1} ms/step ({})  {:>6.3} steps/s  {:>7.1} img/s  peak RSS {:>7.0} MiB",
        per * 1e3,
        if common::cpu_clock() { "CPU, median" } else { "median" },
        1.0 / per,
        batch as f64 / per,
        common::peak_rss_mib()
    );
}

fn main() {
    common::tune_process();
    let only = std::env::var("GD_TRAIN_BENCH").ok();
    let on = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|n| n == name));
    if on("small") {
        bench("fashion-mnist small (32ch)", &common::small_flags(), 32, 3);
    }
    if on("shipped") {
        bench("fashion-mnist shipped (2 res)", &common::shipped_flags(), 32, 3);
    }
    if on("mid") {
        let mut mid = common::mid_flags();
        mid.in_channels = Some(3);
        bench("32x32 64ch 2 res blocks", &mid, 8, 3);
    }
    if std::env::var("GD_BENCH_BIG").is_ok() {
        let f = common::imagenet64_flags();
        bench("imagenet64 (released)", &f, 2, 1);
    }
}
