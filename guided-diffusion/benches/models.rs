//! Model benchmarks: forward and forward+backward time per call (median of repeated runs) and
//! images/s for the small Fashion-MNIST configuration, a 64-channel 32x32 one and (with
//! `GD_BENCH_BIG=1`) the released 64x64 ImageNet configuration, each with candle's ops
//! (`kernels off`, the "before") and with the fast CPU kernels (`kernels on`).
//! Run with `cargo bench -p guided-diffusion --bench models`.
mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::median_secs;
use guided_diffusion::kernels::KernelPolicy;
use guided_diffusion::models::{Net, NetConfig};

fn time<F: FnMut()>(reps: usize, f: F) -> f64 {
    median_secs(reps, reps, 0.0, f)
}

fn bench(name: &str, cfg: NetConfig, batch: usize, reps: usize) {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let mut net = Net::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    let (c, s) = match &cfg {
        NetConfig::UNet(u) => (u.trunk.in_channels, u.trunk.image_size),
        _ => unreachable!(),
    };
    let params: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
    let x = Tensor::randn(0f32, 1.0, (batch, c, s, s), &dev).unwrap();
    let t = Tensor::new(vec![500f32; batch], &dev).unwrap();
    let y = Tensor::new(vec![1u32; batch], &dev).unwrap();
    let y = cfg_classes(&cfg).then_some(y);
    let mut res = Vec::new();
    for on in [false, true] {
        net.set_policy(if on { KernelPolicy::default() } else { KernelPolicy::candle() });
        let fwd = time(reps, || {
            net.forward(&x, &t, y.as_ref(), None).unwrap();
        });
        let fb = time(reps, || {
            let out = net.forward(&x, &t, y.as_ref(), None).unwrap();
            out.sqr().unwrap().mean_all().unwrap().backward().unwrap();
        });
        println!(
            "{name:<28} params {:>9}  batch {batch:>3}  kernels {:<3}  forward {:>8.1} ms ({:>7.1} img/s)  fwd+bwd {:>8.1} ms ({:>7.1} img/s)",
            params,
            if on { "on" } else { "off" },
            fwd * 1e3,
            batch as f64 / fwd,
            fb * 1e3,
            batch as f64 / fb
        );
        res.push((fwd, fb));
    }
    println!(
        "{name:<28} speed-up with kernels: forward x{:.2}, fwd+bwd x{:.2}",
        res[0].0 / res[1].0,
        res[0].1 / res[1].1
    );
}

fn cfg_classes(cfg: &NetConfig) -> bool {
    matches!(cfg, NetConfig::UNet(u) if u.num_classes.is_some())
}

fn main() {
    common::tune_process();
    let small = common::small_flags();
    bench("fashion-mnist small (32ch)", NetConfig::UNet(small.to_config().unwrap()), 32, 5);
    let mid = common::mid_flags();
    bench("32x32 64ch 2 res blocks", NetConfig::UNet(mid.to_config().unwrap()), 8, 5);
    if std::env::var("GD_BENCH_BIG").is_ok() {
        let f = common::imagenet64_flags();
        bench("imagenet64 (released)", NetConfig::UNet(f.to_config().unwrap()), 1, 1);
    }
}
