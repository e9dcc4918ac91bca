//! Where the time goes in one training step of the small Fashion-MNIST UNet (32x32, 32 channels,
//! channel_mult 1,2,2, one res block, attention at 8x8, batch 32): every op kind of the model,
//! timed in isolation on the model's shapes and multiplied by how often the model calls it,
//! forward and backward (autograd of the op alone), with candle's conv and with the fast conv.
//! The remainder of the measured model step is shown as "rest" (adds, embedding MLP, loss...).
//! `cargo bench -p guided-diffusion --bench profile` (`GD_PROFILE_BATCH` changes the batch).
mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::median_secs;
use guided_diffusion::kernels::{self, KernelPolicy};
use guided_diffusion::models::attention::{qkv_attention, HeadOrder};
use guided_diffusion::models::layers::{Conv1x1, Exec, GroupNorm32};
use guided_diffusion::models::resblock::{avg_pool2x, upsample_nearest2x};
use guided_diffusion::models::{Net, NetConfig};

/// One op kind at one shape, called `count` times per model forward.
struct Op {
    kind: &'static str,
    shape: String,
    count: usize,
    /// builds inputs (as variables) and returns the op's output, computed as the call says
    run: Box<dyn Fn(&Exec) -> Tensor>,
}

/// (forward s, backward s) of one call: backward = median(fwd + bwd) - median(fwd).
fn time_op(op: &Op, ex: &Exec) -> (f64, f64) {
    let fwd = median_secs(3, 20, 0.3, || {
        (op.run)(ex);
    });
    let both = median_secs(3, 20, 0.3, || {
        (op.run)(ex).backward().unwrap();
    });
    (fwd, (both - fwd).max(0.0))
}

fn var(shape: &[usize]) -> Var {
    Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()).unwrap()
}

fn conv_op(b: usize, cin: usize, hw: usize, cout: usize, count: usize, input_is_var: bool) -> Op {
    let x = var(&[b, cin, hw, hw]);
    let w = var(&[cout, cin, 3, 3]);
    let bias = var(&[cout]);
    Op {
        kind: "conv3x3",
        shape: format!("{cin}->{cout} {hw}x{hw}"),
        count,
        run: Box::new(move |ex| {
            let xt = if input_is_var { x.as_tensor().clone() } else { x.as_tensor().detach() };
            kernels::conv2d(&ex.policy, &xt, &w, Some(&bias), 1, 1, None).unwrap()
        }),
    }
}

fn gn_op(b: usize, c: usize, hw: usize, count: usize, kind: &'static str) -> Op {
    let vm = VarMap::new();
    let gn = GroupNorm32::new(c, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let x = var(&[b, c, hw, hw]);
    let scale = var(&[b, c, 1, 1]);
    let shift = var(&[b, c, 1, 1]);
    Op {
        kind,
        shape: format!("{c} {hw}x{hw}"),
        count,
        run: Box::new(move |ex| match kind {
            "GN+SiLU" => gn.forward_silu(ex, &x).unwrap(),
            "GN+scale/shift+SiLU" => {
                gn.forward_scale_shift(ex, &x, &scale, &shift).unwrap().silu().unwrap()
            }
            _ => gn.forward(ex, &x.reshape((b, c, hw * hw)).unwrap()).unwrap(),
        }),
    }
}

fn conv1x1_op(
    b: usize,
    cin: usize,
    tokens: usize,
    cout: usize,
    count: usize,
    kind: &'static str,
) -> Op {
    let vm = VarMap::new();
    let conv =
        Conv1x1::new(cin, cout, 1, false, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))
            .unwrap();
    let x = var(&[b, cin, tokens]);
    Op {
        kind,
        shape: format!("{cin}->{cout} x{tokens}"),
        count,
        run: Box::new(move |ex| conv.forward(ex, &x).unwrap()),
    }
}

fn small_model_ops(b: usize) -> Vec<Op> {
    let mut ops = vec![conv_op(b, 1, 32, 32, 1, false)];
    // (cin, hw, cout, count) from the model's call trace.
    for &(cin, hw, cout, n) in &[
        (32, 32, 32, 4),
        (64, 32, 64, 2),
        (64, 32, 32, 1),
        (96, 32, 32, 1),
        (32, 16, 32, 2),
        (32, 16, 64, 1),
        (64, 16, 64, 5),
        (96, 16, 64, 1),
        (128, 16, 64, 1),
        (64, 8, 64, 10),
        (128, 8, 64, 2),
        (32, 32, 2, 1),
    ] {
        ops.push(conv_op(b, cin, hw, cout, n, true));
    }
    for &(c, hw, n) in &[
        (32, 32, 3),
        (32, 16, 1),
        (64, 16, 2),
        (64, 8, 4),
        (128, 8, 2),
        (128, 16, 1),
        (96, 16, 1),
        (96, 32, 1),
        (64, 32, 1),
    ] {
        ops.push(gn_op(b, c, hw, n, "GN+SiLU"));
    }
    for &(c, hw, n) in &[(32, 32, 3), (32, 16, 1), (64, 16, 4), (64, 8, 6), (64, 32, 1)] {
        ops.push(gn_op(b, c, hw, n, "GN+scale/shift+SiLU"));
    }
    ops.push(gn_op(b, 64, 8, 4, "GN (attention)"));
    ops.push(conv1x1_op(b, 64, 64, 192, 4, "attn qkv 1x1"));
    ops.push(conv1x1_op(b, 64, 64, 64, 4, "attn proj 1x1"));
    let qkv = var(&[b, 192, 64]);
    ops.push(Op {
        kind: "attn core (QK, softmax, AV)",
        shape: "2 heads x32, 64 tok".into(),
        count: 4,
        run: Box::new(move |ex| qkv_attention(&ex.policy, &qkv, 2, HeadOrder::Legacy).unwrap()),
    });
    for &(cin, tok, cout, n) in &[
        (128, 256, 64, 1),
        (128, 64, 64, 2),
        (32, 256, 64, 1),
        (64, 1024, 32, 1),
        (96, 1024, 32, 1),
        (96, 256, 64, 1),
    ] {
        ops.push(conv1x1_op(b, cin, tok, cout, n, "skip 1x1"));
    }
    for &(c, hw, n) in &[(64, 8, 2), (64, 16, 2)] {
        let x = var(&[b, c, hw, hw]);
        ops.push(Op {
            kind: "upsample",
            shape: format!("{c} {hw}x{hw}"),
            count: n,
            run: Box::new(move |ex| upsample_nearest2x(ex, &x).unwrap()),
        });
    }
    for &(c, hw, n) in &[(32, 32, 2), (64, 16, 2)] {
        let x = var(&[b, c, hw, hw]);
        ops.push(Op {
            kind: "avgpool",
            shape: format!("{c} {hw}x{hw}"),
            count: n,
            run: Box::new(move |_| avg_pool2x(&x).unwrap()),
        });
    }
    for &(c1, c2, hw, n) in
        &[(64, 64, 8, 2), (64, 64, 16, 1), (64, 32, 16, 1), (64, 32, 32, 1), (32, 32, 32, 1)]
    {
        let (x1, x2) = (var(&[b, c1, hw, hw]), var(&[b, c2, hw, hw]));
        ops.push(Op {
            kind: "cat (skip)",
            shape: format!("{c1}+{c2} {hw}x{hw}"),
            count: n,
            run: Box::new(move |_| Tensor::cat(&[x1.as_tensor(), x2.as_tensor()], 1).unwrap()),
        });
    }
    ops
}

fn small_net() -> (Net, usize) {
    let f = common::small_flags();
    let vm = VarMap::new();
    let net = Net::new(
        &NetConfig::UNet(f.to_config().unwrap()),
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )
    .unwrap();
    // Keep the parameters alive as variables (the VarMap owns them).
    std::mem::forget(vm);
    (net, 1)
}

/// (forward s, backward s) of the whole model at batch `b`.
fn model_times(net: &Net, c: usize, b: usize) -> (f64, f64) {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (b, c, 32, 32), &dev).unwrap();
    let t = Tensor::new(vec![500f32; b], &dev).unwrap();
    let y = Tensor::new(vec![1u32; b], &dev).unwrap();
    let fwd = median_secs(3, 10, 2.0, || {
        net.forward(&x, &t, Some(&y), None).unwrap();
    });
    let both = median_secs(3, 10, 2.0, || {
        net.forward(&x, &t, Some(&y), None).unwrap().backward().unwrap();
    });
    (fwd, both - fwd)
}

fn main() {
    common::tune_process();
    let b: usize =
        std::env::var("GD_PROFILE_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let ops = small_model_ops(b);
    let (mut net, c) = small_net();
    // [candle, fast] x (fwd, bwd) per op, times the call count.
    let mut rows = Vec::new();
    let mut model = Vec::new();
    for on in [false, true] {
        let policy = if on { KernelPolicy::default() } else { KernelPolicy::candle() };
        net.set_policy(policy);
        let ex = Exec::new(policy);
        let t: Vec<(f64, f64)> = ops
            .iter()
            .map(|op| {
                let (f, bw) = time_op(op, &ex);
                (f * op.count as f64, bw * op.count as f64)
            })
            .collect();
        rows.push(t);
        model.push(model_times(&net, c, b));
    }
    println!(
        "small model, batch {b}, {} threads; ms per model step (op time x calls), medians",
        rayon::current_num_threads()
    );
    println!(
        "{:<28} {:<22} {:>5} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6}",
        "op", "shape", "calls", "candle f", "candle b", "%", "fast f", "fast b", "%"
    );
    let (mc, mf) = (model[0].0 + model[0].1, model[1].0 + model[1].1);
    for (i, op) in ops.iter().enumerate() {
        let (cf, cb) = rows[0][i];
        let (ff, fb) = rows[1][i];
        println!(
            "{:<28} {:<22} {:>5} | {:>9.2} {:>9.2} {:>5.1}% | {:>9.2} {:>9.2} {:>5.1}%",
            op.kind,
            op.shape,
            op.count,
            cf * 1e3,
            cb * 1e3,
            100.0 * (cf + cb) / mc,
            ff * 1e3,
            fb * 1e3,
            100.0 * (ff + fb) / mf
        );
    }
    println!("--- by kind");
    let mut kinds: Vec<&str> = Vec::new();
    for op in &ops {
        if !kinds.contains(&op.kind) {
            kinds.push(op.kind);
        }
    }
    let mut sums = [[0.0f64; 2]; 2];
    for k in &kinds {
        let mut s = [[0.0f64; 2]; 2];
        for (i, _) in ops.iter().enumerate().filter(|(_, o)| o.kind == *k) {
            for p in 0..2 {
                s[p][0] += rows[p][i].0;
                s[p][1] += rows[p][i].1;
            }
        }
        for p in 0..2 {
            sums[p][0] += s[p][0];
            sums[p][1] += s[p][1];
        }
        println!(
            "{:<51} | {:>9.1} {:>9.1} {:>5.1}% | {:>9.1} {:>9.1} {:>5.1}%",
            k,
            s[0][0] * 1e3,
            s[0][1] * 1e3,
            100.0 * (s[0][0] + s[0][1]) / mc,
            s[1][0] * 1e3,
            s[1][1] * 1e3,
            100.0 * (s[1][0] + s[1][1]) / mf
        );
    }
    for (label, p) in [("rest (model - sum of ops)", None), ("model step (measured)", Some(()))] {
        let v = |q: usize| {
            if p.is_some() {
                model[q]
            } else {
                (model[q].0 - sums[q][0], model[q].1 - sums[q][1])
            }
        };
        let (c0, c1) = v(0);
        let (f0, f1) = v(1);
        println!(
            "{:<51} | {:>9.1} {:>9.1} {:>5.1}% | {:>9.1} {:>9.1} {:>5.1}%",
            label,
            c0 * 1e3,
            c1 * 1e3,
            100.0 * (c0 + c1) / mc,
            f0 * 1e3,
            f1 * 1e3,
            100.0 * (f0 + f1) / mf
        );
    }
}
