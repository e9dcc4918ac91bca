//! Where the time goes in the FID Inception forward (`gdiff eval`'s feature extractor): every
//! convolution shape of the network (conv + folded batch norm + ReLU, `ConvBn::forward`) timed
//! alone at its input size, with its FLOPs and achieved GFLOP/s, grouped by kind (1x1, 3x3,
//! 1x7/7x1, stride 2, ...), then the input resize and the whole forward for comparison. The
//! rest of the whole forward (poolings, concatenations) shows as the difference.
//! `cargo bench -p guided-diffusion --bench inception` (`GD_PROFILE_BATCH`, default 16, sets the
//! batch; RAYON_NUM_THREADS the threads). The machine's f32 peak, measured first with an FMA
//! loop (`GD_PEAK_GFLOPS` sets it), puts the rates in proportion on a shared machine.
mod common;

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use common::median_secs;
use guided_diffusion::eval::features::{FeatureExtractor, ImageBatch};
use guided_diffusion::eval::inception::layers::ConvBn;
use guided_diffusion::eval::inception::preprocess::{preprocess, InputConvention};
use guided_diffusion::eval::inception::synthetic::{synthetic_state_dict, synthetic_values};
use guided_diffusion::eval::inception::{InceptionExtractor, InceptionV3, WeightMap};
use guided_diffusion::models::Exec;

/// One convolution of the network: input channels, output channels, kernel, stride, padding,
/// input side.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Layer {
    ci: usize,
    co: usize,
    k: (usize, usize),
    stride: usize,
    pad: (usize, usize),
    res: usize,
}

impl Layer {
    fn out(&self) -> (usize, usize) {
        let o = |k: usize, p: usize| (self.res + 2 * p - k) / self.stride + 1;
        (o(self.k.0, self.pad.0), o(self.k.1, self.pad.1))
    }
    fn flop(&self) -> f64 {
        let (ho, wo) = self.out();
        2.0 * (self.ci * self.co * self.k.0 * self.k.1 * ho * wo) as f64
    }
    fn kind(&self) -> String {
        let s = if self.stride == 2 { " s2" } else { "" };
        format!("{}x{}{s} @{}", self.k.0, self.k.1, self.out().0)
    }
}

/// Every convolution of pytorch-fid's FID Inception at 299x299, as `InceptionV3::load` builds it.
fn layers() -> Vec<Layer> {
    let l = |ci, co, k, stride, pad, res| Layer { ci, co, k, stride, pad, res };
    let (k1, k3, k5, k17, k71, k13, k31) = ((1, 1), (3, 3), (5, 5), (1, 7), (7, 1), (1, 3), (3, 1));
    let (p0, p1, p2, p17, p71, p13, p31) = ((0, 0), (1, 1), (2, 2), (0, 3), (3, 0), (0, 1), (1, 0));
    let mut v = vec![
        l(3, 32, k3, 2, p0, 299),
        l(32, 32, k3, 1, p0, 149),
        l(32, 64, k3, 1, p1, 147),
        l(64, 80, k1, 1, p0, 73),
        l(80, 192, k3, 1, p0, 73),
    ];
    for (ci, pool) in [(192, 32), (256, 64), (288, 64)] {
        v.extend([
            l(ci, 64, k1, 1, p0, 35),
            l(ci, 48, k1, 1, p0, 35),
            l(48, 64, k5, 1, p2, 35),
            l(ci, 64, k1, 1, p0, 35),
            l(64, 96, k3, 1, p1, 35),
            l(96, 96, k3, 1, p1, 35),
            l(ci, pool, k1, 1, p0, 35),
        ]);
    }
    v.extend([
        l(288, 384, k3, 2, p0, 35),
        l(288, 64, k1, 1, p0, 35),
        l(64, 96, k3, 1, p1, 35),
        l(96, 96, k3, 2, p0, 35),
    ]);
    for c7 in [128, 160, 160, 192] {
        v.extend([
            l(768, 192, k1, 1, p0, 17),
            l(768, c7, k1, 1, p0, 17),
            l(c7, c7, k17, 1, p17, 17),
            l(c7, 192, k71, 1, p71, 17),
            l(768, c7, k1, 1, p0, 17),
            l(c7, c7, k71, 1, p71, 17),
            l(c7, c7, k17, 1, p17, 17),
            l(c7, c7, k71, 1, p71, 17),
            l(c7, 192, k17, 1, p17, 17),
            l(768, 192, k1, 1, p0, 17),
        ]);
    }
    v.extend([
        l(768, 192, k1, 1, p0, 17),
        l(192, 320, k3, 2, p0, 17),
        l(768, 192, k1, 1, p0, 17),
        l(192, 192, k17, 1, p17, 17),
        l(192, 192, k71, 1, p71, 17),
        l(192, 192, k3, 2, p0, 17),
    ]);
    for ci in [1280, 2048] {
        v.extend([
            l(ci, 320, k1, 1, p0, 8),
            l(ci, 384, k1, 1, p0, 8),
            l(384, 384, k13, 1, p13, 8),
            l(384, 384, k31, 1, p31, 8),
            l(ci, 448, k1, 1, p0, 8),
            l(448, 384, k3, 1, p1, 8),
            l(384, 384, k13, 1, p13, 8),
            l(384, 384, k31, 1, p31, 8),
            l(ci, 192, k1, 1, p0, 8),
        ]);
    }
    v
}

fn main() {
    common::tune_process();
    let batch: usize =
        std::env::var("GD_PROFILE_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let dev = Device::Cpu;
    let all = layers();
    assert_eq!(all.len(), 94, "the FID Inception has 94 convolutions");
    let mut counts: BTreeMap<Layer, usize> = BTreeMap::new();
    for l in &all {
        *counts.entry(*l).or_default() += 1;
    }
    let peak = common::peak_gflops();
    println!(
        "# FID Inception forward, batch {batch}, {} threads, f32 peak now {peak:.0} GFLOP/s; each conv shape timed alone (conv + folded BN + ReLU)",
        rayon::current_num_threads()
    );
    // as a loaded InceptionV3 runs: frozen weights (Winograd transforms kept), the policy of the
    // GD_* switches
    let mut exec = Exec::new(common::policy());
    exec.freeze();
    let mut by_kind: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut conv_total = 0.0;
    println!("| layer (ci->co k stride @ in) | count | ms per call | GFLOP/s |");
    println!("|---|---:|---:|---:|");
    for (l, n) in &counts {
        let w = WeightMap::generated("synthetic", synthetic_values);
        let conv = ConvBn::load(&w, "L", l.ci, l.co, l.k, l.stride, l.pad, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (batch, l.ci, l.res, l.res), &dev).unwrap();
        let s = median_secs(3, 10, 0.5, || {
            conv.forward(&x, &exec).unwrap();
        });
        let flop = l.flop() * batch as f64;
        println!(
            "| {}->{} {}x{} s{} @{} | {n} | {:.2} | {:.0} |",
            l.ci,
            l.co,
            l.k.0,
            l.k.1,
            l.stride,
            l.res,
            s * 1e3,
            flop / s / 1e9
        );
        let e = by_kind.entry(l.kind()).or_default();
        e.0 += s * *n as f64;
        e.1 += flop * *n as f64;
        conv_total += s * *n as f64;
    }
    println!("\n| kind | ms per forward | share of convs | GFLOP/s |");
    println!("|---|---:|---:|---:|");
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    for (k, (s, f)) in kinds {
        println!("| {k} | {:.1} | {:.0}% | {:.0} |", s * 1e3, 100.0 * s / conv_total, f / s / 1e9);
    }
    let flop: f64 = all.iter().map(|l| l.flop()).sum::<f64>() * batch as f64;
    println!(
        "\nall convolutions, timed alone: {:.1} ms ({:.0} GFLOP/s)",
        conv_total * 1e3,
        flop / conv_total / 1e9
    );

    let pixels: Vec<f32> = (0..batch * 64 * 64 * 3).map(|i| ((i * 7919) % 256) as f32).collect();
    let images = ImageBatch::new(&[batch, 64, 64, 3], pixels).unwrap();
    let s = median_secs(3, 10, 0.5, || {
        preprocess(&images, InputConvention::TfReference, &dev).unwrap();
    });
    println!("resize 64x64 -> 299x299: {:.1} ms", s * 1e3);
    let wm = WeightMap::from_tensors("synthetic", synthetic_state_dict(true).unwrap()).unwrap();
    let mut net = InceptionV3::load(&wm, &dev).unwrap();
    net.set_policy(common::policy());
    let ex = InceptionExtractor::new(net, Default::default());
    let s = median_secs(2, 5, 0.5, || {
        ex.extract(&images).unwrap();
    });
    println!(
        "whole extraction (resize, network, features): {:.1} ms = {:.2} images/s ({:.0} GFLOP/s)",
        s * 1e3,
        batch as f64 / s,
        flop / s / 1e9
    );
}
