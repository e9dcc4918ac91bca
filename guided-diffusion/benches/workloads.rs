//! Side-by-side workloads: the same networks, shapes and steps that `bench/pytorch_reference.py`
//! times with the reference's PyTorch code, timed here with our implementation (fast CPU
//! kernels on, as by default), so `bench/compare.sh` can put the two next to each other.
//!
//! Workloads (random seeded weights; the 64x64 ones only with `GD_BENCH_BIG=1`):
//! - `unet_fwd_small`: forward of the small Fashion-MNIST UNet (`common::small_flags`), batch 32;
//! - `train_step_small`: one training step of it (loss, backward, AdamW, EMA), batch 32;
//! - `unet_fwd_64`: forward of the released 64x64 ImageNet UNet (`common::imagenet64_flags`), batch 1;
//! - `clf_grad_64`: the released 64x64 classifier (`create_classifier`, depth 4) forward plus the
//!   gradient of log p(y|x) w.r.t. the input (`classifier_sample.py`'s `cond_fn`), batch 1;
//! - `guided_ddim_step_64`: one classifier-guided DDIM step (UNet forward, classifier gradient,
//!   DDIM update) of a `ddim25` cosine process, batch 1;
//! - `train_step_64`: one training step of the 64x64 UNet, batch 2;
//! - `inception_fid_64`: `gdiff eval`'s Inception-v3 (pytorch-fid's FID network, synthetic
//!   weights) on 64x64 RGB images: resize to 299x299, forward to pool_3, the 17x17x7 spatial
//!   features and the logits, batch 64 (the reference evaluator's batch size).
//!
//! Each is timed as the median of `GD_BENCH_REPS` (default 3) calls after one warm-up call.
//! `GD_WORKLOADS=unet_fwd_small,train_step_small` picks workloads. Every workload prints a
//! human-readable line and one `RESULT {json}` line (`"impl":"rust"`). `gflops` is the achieved
//! rate of the convolution and matrix-product FLOPs the workload needs (2 per multiply-add),
//! counted analytically from the network config (backward: 2x forward per weighted layer, 1x
//! where only the weight or only the input gradient is needed); the count is checked against
//! the built network's parameter count and omitted if they disagree. `peak_rss_mib` is the
//! process's peak resident memory while the workload ran (VmHWM, reset before each workload).
//! `GD_BENCH_DRY=1` only builds the networks and prints the FLOP counts. `GD_PRECISION=bf16`
//! gives every network a bf16 kernel policy (`kernels::bf16`: convolution forwards and stride-1
//! input gradients with bf16 inputs and weights, on AMX where the CPU has it), as `gdiff
//! sample/train --precision bf16` do; the other `GD_*` switches as for `gdiff`. The inference
//! networks are frozen (their weights' derived forms kept across calls), as a loaded
//! checkpoint is.
//! Run with `cargo bench -p guided-diffusion --bench workloads`.
mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use guided_diffusion::data::Batch;
use guided_diffusion::diffusion::{
    create_named_schedule_sampler, DiffusionConfig, NoiseSchedule, SeededNoise,
};
use guided_diffusion::guidance::{classifier_log_prob_grad, ClassifierFn, ClassifierGuidance};
use guided_diffusion::models::init::seeded_var_builder;
use guided_diffusion::models::{
    ClassifierFlags, EncoderConfig, ModelFlags, Net, NetConfig, Pool, UNetConfig,
};
use guided_diffusion::samplers::SampleOptions;
use guided_diffusion::train::{DiffusionObjective, Logger, ParamSet, TrainConfig, TrainLoop};
use guided_diffusion::Result;

/// (name, needs GD_BENCH_BIG), in running order: small first, so that the peak memory of a
/// small workload is not inflated by what a big one left resident.
const WORKLOADS: [(&str, bool); 7] = [
    ("unet_fwd_small", false),
    ("train_step_small", false),
    ("unet_fwd_64", true),
    ("clf_grad_64", true),
    ("guided_ddim_step_64", true),
    ("train_step_64", true),
    ("inception_fid_64", true),
];

/// The label every workload conditions on / guides towards.
const LABEL: u32 = 1;

// ---------------------------------------------------------------------------------------------
// Analytic FLOP count

/// Convolution and matrix-product FLOPs (2 per multiply-add) of one network call for one image,
/// split by how backward passes treat them, and the parameter count the same walk implies
/// (compared with the built network, which validates the walk).
#[derive(Default, Clone, Copy, Debug)]
struct Cost {
    params: usize,
    /// Convolutions / linears on the image path, except the input convolution.
    w: f64,
    /// The input convolution (in training its input, x_t, needs no gradient).
    first: f64,
    /// Linears on the timestep-embedding path (independent of the image), except the first.
    emb: f64,
    /// The first time-embedding linear (its input, the sinusoidal embedding, needs no gradient).
    emb0: f64,
    /// Activation-by-activation products (attention's QK^T and AV); no weights.
    mm: f64,
}

impl Cost {
    fn forward(&self) -> f64 {
        self.w + self.first + self.emb + self.emb0 + self.mm
    }

    /// Forward + backward for training: input and weight gradients of every weighted layer,
    /// only the weight gradient of the input conv and the first embedding linear, both operand
    /// gradients of the attention products.
    fn train(&self) -> f64 {
        self.forward() + 2.0 * self.w + self.first + 2.0 * self.emb + self.emb0 + 2.0 * self.mm
    }

    /// Forward + the gradient w.r.t. the input image only (classifier guidance): input
    /// gradients along the image path, nothing for weights or the embedding path.
    fn input_grad(&self) -> f64 {
        self.forward() + self.w + self.first + 2.0 * self.mm
    }

    fn conv(&mut self, cin: usize, cout: usize, k: usize, positions: usize) {
        self.params += cout * cin * k * k + cout;
        self.w += 2.0 * (cin * cout * k * k * positions) as f64;
    }

    fn emb_linear(&mut self, cin: usize, cout: usize) {
        self.params += cin * cout + cout;
        self.emb += 2.0 * (cin * cout) as f64;
    }

    fn norm(&mut self, c: usize) {
        self.params += 2 * c;
    }

    /// `AttentionBlock` over `t` positions (heads do not change the count).
    fn attention(&mut self, c: usize, t: usize) {
        self.norm(c);
        self.conv(c, 3 * c, 1, t);
        self.mm += 4.0 * (t * t * c) as f64;
        self.conv(c, c, 1, t);
    }

    /// `ResBlock` from `res x res` (output at `res`, `res / 2` or `2 res`).
    fn resblock(
        &mut self,
        cin: usize,
        cout: usize,
        res: usize,
        resample: i32,
        emb_dim: usize,
        scale_shift: bool,
    ) {
        let r = match resample {
            0 => res,
            -1 => res / 2,
            _ => res * 2,
        };
        self.norm(cin);
        self.conv(cin, cout, 3, r * r);
        self.emb_linear(emb_dim, if scale_shift { 2 * cout } else { cout });
        self.norm(cout);
        self.conv(cout, cout, 3, r * r);
        if cin != cout {
            self.conv(cin, cout, 1, r * r);
        }
    }

    fn time_embed(&mut self, mc: usize) {
        self.params += mc * 4 * mc + 4 * mc;
        self.emb0 += 2.0 * (mc * 4 * mc) as f64;
        self.emb_linear(4 * mc, 4 * mc);
    }
}

/// The structural arguments the UNet and the encoder share.
struct Trunk<'a> {
    image_size: usize,
    in_channels: usize,
    mc: usize,
    mult: &'a [f64],
    nrb: usize,
    attn: &'a [usize],
    conv_resample: bool,
    scale_shift: bool,
    updown: bool,
}

/// Time embedding, input blocks and middle block (as `UNetModel.__init__` builds them); returns
/// the per-level channels, the skip channels, the bottom channels, resolution and ds.
fn trunk_cost(c: &mut Cost, t: &Trunk) -> (Vec<usize>, Vec<usize>, usize, usize, usize) {
    let emb_dim = 4 * t.mc;
    c.time_embed(t.mc);
    let level: Vec<usize> = t.mult.iter().map(|m| (m * t.mc as f64) as usize).collect();
    let s = t.image_size;
    let mut ch = level[0];
    c.params += ch * t.in_channels * 9 + ch;
    c.first += 2.0 * (t.in_channels * ch * 9 * s * s) as f64;
    let mut chans = vec![ch];
    let (mut ds, mut res) = (1, s);
    for (i, &out) in level.iter().enumerate() {
        for _ in 0..t.nrb {
            c.resblock(ch, out, res, 0, emb_dim, t.scale_shift);
            ch = out;
            if t.attn.contains(&ds) {
                c.attention(ch, res * res);
            }
            chans.push(ch);
        }
        if i + 1 != level.len() {
            if t.updown {
                c.resblock(ch, ch, res, -1, emb_dim, t.scale_shift);
            } else if t.conv_resample {
                c.conv(ch, ch, 3, (res / 2) * (res / 2));
            }
            chans.push(ch);
            ds *= 2;
            res /= 2;
        }
    }
    c.resblock(ch, ch, res, 0, emb_dim, t.scale_shift);
    c.attention(ch, res * res);
    c.resblock(ch, ch, res, 0, emb_dim, t.scale_shift);
    (level, chans, ch, res, ds)
}

fn unet_cost(u: &UNetConfig) -> Cost {
    let mut c = Cost::default();
    let t = Trunk {
        image_size: u.trunk.image_size,
        in_channels: u.trunk.in_channels,
        mc: u.trunk.model_channels,
        mult: &u.trunk.channel_mult,
        nrb: u.trunk.num_res_blocks,
        attn: &u.trunk.attention_resolutions,
        conv_resample: u.trunk.conv_resample,
        scale_shift: u.trunk.use_scale_shift_norm,
        updown: u.trunk.resblock_updown,
    };
    let emb_dim = 4 * u.trunk.model_channels;
    if let Some(n) = u.num_classes {
        c.params += n * emb_dim;
    }
    let (level, mut chans, mut ch, mut res, mut ds) = trunk_cost(&mut c, &t);
    for l in (0..level.len()).rev() {
        for i in 0..=u.trunk.num_res_blocks {
            let ich = chans.pop().expect("one skip per output block");
            c.resblock(ch + ich, level[l], res, 0, emb_dim, t.scale_shift);
            ch = level[l];
            if u.trunk.attention_resolutions.contains(&ds) {
                c.attention(ch, res * res);
            }
            if l > 0 && i == u.trunk.num_res_blocks {
                if t.updown {
                    c.resblock(ch, ch, res, 1, emb_dim, t.scale_shift);
                } else if t.conv_resample {
                    c.conv(ch, ch, 3, 4 * res * res);
                }
                ds /= 2;
                res *= 2;
            }
        }
    }
    c.norm(ch);
    c.conv(level[0], u.trunk.out_channels, 3, u.trunk.image_size * u.trunk.image_size);
    c
}

/// The classifier; `None` for the spatial heads (not counted here).
fn encoder_cost(e: &EncoderConfig) -> Option<Cost> {
    let mut c = Cost::default();
    let t = Trunk {
        image_size: e.trunk.image_size,
        in_channels: e.trunk.in_channels,
        mc: e.trunk.model_channels,
        mult: &e.trunk.channel_mult,
        nrb: e.trunk.num_res_blocks,
        attn: &e.trunk.attention_resolutions,
        conv_resample: e.trunk.conv_resample,
        scale_shift: e.trunk.use_scale_shift_norm,
        updown: e.trunk.resblock_updown,
    };
    let (_, _, ch, res, _) = trunk_cost(&mut c, &t);
    match e.pool {
        Pool::Attention => {
            // GN, then AttentionPool2d: mean token + res^2 tokens, qkv, attention, c_proj on
            // every token (the reference keeps token 0 afterwards).
            c.norm(ch);
            let tokens = res * res + 1;
            c.params += ch * tokens;
            c.conv(ch, 3 * ch, 1, tokens);
            c.mm += 4.0 * (tokens * tokens * ch) as f64;
            c.conv(ch, e.trunk.out_channels, 1, tokens);
        }
        Pool::Adaptive => {
            c.norm(ch);
            c.conv(ch, e.trunk.out_channels, 1, 1);
        }
        Pool::Spatial | Pool::SpatialV2 => return None,
    }
    Some(c)
}

/// The analytic cost of `cfg`, if the walk's parameter count matches the built network's.
fn checked_cost(cfg: &NetConfig, actual_params: usize) -> Option<Cost> {
    let (what, cost) = match cfg {
        NetConfig::UNet(u) => ("UNet", Some(unet_cost(u))),
        NetConfig::Classifier(e) => ("classifier", encoder_cost(e)),
        NetConfig::SuperRes(_) => ("super-res", None),
    };
    let cost = cost?;
    if cost.params != actual_params {
        eprintln!(
            "warning: FLOP count of the {what} disagrees with the network ({} parameters counted, {actual_params} built); gflops omitted",
            cost.params
        );
        return None;
    }
    Some(cost)
}

// ---------------------------------------------------------------------------------------------
// Networks and measurement

/// A network with seeded random weights as trainable variables (for training).
fn trainable(cfg: &NetConfig, seed: u64) -> Result<(Net, VarMap, usize)> {
    let vm = VarMap::new();
    let net =
        Net::new(cfg, seeded_var_builder(&vm, seed, &Device::Cpu))?.with_policy(common::policy());
    let params = vm.all_vars().iter().map(|v| v.elem_count()).sum();
    Ok((net, vm, params))
}

/// A network with seeded random weights as constant tensors, frozen, as a loaded checkpoint is
/// (for inference: no autograd bookkeeping on the weights, their derived forms kept).
fn frozen(cfg: &NetConfig, seed: u64) -> Result<(Net, usize)> {
    let (_, vm, params) = trainable(cfg, seed)?;
    let tensors: HashMap<String, Tensor> = vm
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let mut net = Net::from_tensors(cfg, tensors, "seeded initialisation", &Device::Cpu)?;
    net.set_policy(common::policy());
    net.freeze();
    Ok((net, params))
}

fn unet_cfg(flags: &ModelFlags) -> Result<NetConfig> {
    Ok(NetConfig::UNet(flags.to_config()?))
}

/// The released 64x64 classifier: `create_classifier` with classifier_depth 4 (width 128,
/// attention 32,16,8, attention pool, resblock_updown, scale-shift norm: the defaults).
fn classifier64_cfg() -> Result<NetConfig> {
    let mut f = ClassifierFlags::script_defaults();
    f.image_size = Some(64);
    f.classifier_depth = Some(4);
    Ok(NetConfig::Classifier(f.to_config()?))
}

/// What one workload measured.
struct Measured {
    batch: usize,
    seconds: f64,
    /// FLOPs of one call, when counted.
    flop: Option<f64>,
    params: usize,
}

fn reps() -> usize {
    std::env::var("GD_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(3)
}

/// `GD_BENCH_DRY=1`: build every selected workload's networks and print the analytic FLOP
/// counts (checked against the parameter counts) without timing anything.
fn dry() -> bool {
    common::flag("GD_BENCH_DRY")
}

fn time<F: FnMut() -> Result<()>>(mut f: F) -> Result<f64> {
    if dry() {
        return Ok(f64::NAN);
    }
    let mut err = None;
    let n = reps();
    let s = common::median_secs(n, n, 0.0, || {
        if err.is_none() {
            if let Err(e) = f() {
                err = Some(e);
            }
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok(s),
    }
}

fn unet_forward(flags: &ModelFlags, batch: usize) -> Result<Measured> {
    let dev = Device::Cpu;
    let cfg = unet_cfg(flags)?;
    let (net, params) = frozen(&cfg, 0)?;
    let u = flags.to_config()?;
    let (c, s) = (u.trunk.in_channels, u.trunk.image_size);
    let x = Tensor::randn(0f32, 1.0, (batch, c, s, s), &dev)?;
    let t = Tensor::new(vec![500f32; batch], &dev)?;
    let y = Tensor::new(vec![LABEL; batch], &dev)?;
    let seconds = time(|| {
        net.forward(&x, &t, Some(&y), None)?;
        Ok(())
    })?;
    let flop = checked_cost(&cfg, params).map(|c| c.forward() * batch as f64);
    Ok(Measured { batch, seconds, flop, params })
}

fn classifier_grad(batch: usize) -> Result<Measured> {
    let dev = Device::Cpu;
    let cfg = classifier64_cfg()?;
    let (clf, params) = frozen(&cfg, 1)?;
    let x = Tensor::randn(0f32, 1.0, (batch, 3, 64, 64), &dev)?;
    let t = Tensor::new(vec![500f32; batch], &dev)?;
    let labels = vec![LABEL as usize; batch];
    let clf_fn = |x: &Tensor, t: &Tensor| clf.forward(x, t, None, None);
    let seconds = time(|| {
        classifier_log_prob_grad(&clf_fn, &x, &t, &labels, 1.0)?;
        Ok(())
    })?;
    let flop = checked_cost(&cfg, params).map(|c| c.input_grad() * batch as f64);
    Ok(Measured { batch, seconds, flop, params })
}

fn guided_ddim_step(batch: usize) -> Result<Measured> {
    let dev = Device::Cpu;
    let flags = common::imagenet64_flags();
    let ucfg = unet_cfg(&flags)?;
    let (model, uparams) = frozen(&ucfg, 0)?;
    let ccfg = classifier64_cfg()?;
    let (clf, cparams) = frozen(&ccfg, 1)?;
    let d = DiffusionConfig {
        learn_sigma: true,
        noise_schedule: NoiseSchedule::Cosine,
        timestep_respacing: "ddim25".into(),
        ..Default::default()
    }
    .build()?;
    let y = Tensor::new(vec![LABEL; batch], &dev)?;
    let model_fn = |x: &Tensor, t: &Tensor| model.forward(x, t, Some(&y), None);
    let clf_fn = |x: &Tensor, t: &Tensor| clf.forward(x, t, None, None);
    let clf_ref: &ClassifierFn = &clf_fn;
    let guidance = ClassifierGuidance::new(clf_ref, vec![LABEL as usize; batch], 1.0);
    let opts = SampleOptions { clip_denoised: true, denoised_fn: None, guidance: &guidance };
    let x = Tensor::randn(0f32, 1.0, (batch, 3, 64, 64), &dev)?;
    // The middle step of the 25 (index 12 of the respaced process); every step costs the same.
    let t = vec![12usize; batch];
    let mut noise = SeededNoise::new(0);
    let seconds = time(|| {
        d.ddim_sample(&model_fn, &x, &t, &opts, 0.0, &mut noise)?;
        Ok(())
    })?;
    let flop = match (checked_cost(&ucfg, uparams), checked_cost(&ccfg, cparams)) {
        (Some(u), Some(c)) => Some((u.forward() + c.input_grad()) * batch as f64),
        _ => None,
    };
    Ok(Measured { batch, seconds, flop, params: uparams + cparams })
}

/// One full training step as `benches/train.rs` (and the reference's `TrainLoop.run_step`):
/// cosine schedule, uniform timestep sampler, loss, backward, AdamW (lr 1e-4), EMA 0.9999.
fn train_step(flags: &ModelFlags, batch: usize) -> Result<Measured> {
    let dev = Device::Cpu;
    let cfg = unet_cfg(flags)?;
    let (net, vm, params) = trainable(&cfg, 0)?;
    let diffusion = DiffusionConfig {
        learn_sigma: flags.to_config()?.learns_sigma(),
        noise_schedule: NoiseSchedule::Cosine,
        ..Default::default()
    }
    .build()?;
    let sampler = create_named_schedule_sampler("uniform", 1000)?;
    let obj = DiffusionObjective { net, diffusion, sampler, small_size: None, label_dropout: None };
    let dir = std::env::temp_dir().join(format!("gd-bench-workloads-{}", std::process::id()));
    let mut tc = TrainConfig::new(batch, 1e-4, &dir);
    tc.save_interval = u64::MAX;
    tc.log_interval = u64::MAX;
    tc.policy = common::policy();
    let mut lp = TrainLoop::new(tc, ParamSet::from_varmap(&vm), obj, Logger::null())?;
    let u = flags.to_config()?;
    let (c, s) = (u.trunk.in_channels, u.trunk.image_size);
    let images = Tensor::rand(-1f32, 1.0, (batch, c, s, s), &dev)?;
    let labels =
        u.num_classes.is_some().then(|| Tensor::new(vec![LABEL; batch], &dev)).transpose()?;
    let b = Batch { images, labels, index: 0 };
    let seconds = time(|| {
        lp.run_step(&b)?;
        Ok(())
    })?;
    let flop = checked_cost(&cfg, params).map(|c| c.train() * batch as f64);
    Ok(Measured { batch, seconds, flop, params })
}

fn run(name: &str) -> Result<Measured> {
    match name {
        "unet_fwd_small" => unet_forward(&common::small_flags(), 32),
        "train_step_small" => train_step(&common::small_flags(), 32),
        "unet_fwd_64" => unet_forward(&common::imagenet64_flags(), 1),
        "clf_grad_64" => classifier_grad(1),
        "guided_ddim_step_64" => guided_ddim_step(1),
        "train_step_64" => train_step(&common::imagenet64_flags(), 2),
        "inception_fid_64" => inception_fid(64, 64),
        _ => unreachable!("checked against WORKLOADS"),
    }
}

/// Convolution and matrix-product FLOPs of one image through the FID Inception at 299x299 (the
/// logits' product included), from the weights' shapes and each layer's output size.
fn inception_flop(sd: &HashMap<String, Tensor>) -> Result<f64> {
    let mut flop = 2.0 * (2048 * 1008) as f64;
    for (k, t) in sd {
        let Some(layer) = k.strip_suffix(".conv.weight") else { continue };
        let (co, ci, kh, kw) = t.dims4()?;
        let (block, branch) = layer.split_once('.').unwrap_or((layer, ""));
        let res = match block {
            "Conv2d_1a_3x3" => 149,
            "Conv2d_2a_3x3" | "Conv2d_2b_3x3" => 147,
            "Conv2d_3b_1x1" => 73,
            "Conv2d_4a_3x3" => 71,
            "Mixed_6a" if matches!(branch, "branch3x3" | "branch3x3dbl_3") => 17,
            "Mixed_7a" if matches!(branch, "branch3x3_2" | "branch7x7x3_4") => 8,
            "Mixed_6a" => 35,
            "Mixed_7a" => 17,
            b if b.starts_with("Mixed_5") => 35,
            b if b.starts_with("Mixed_6") => 17,
            _ => 8,
        };
        flop += 2.0 * (co * ci * kh * kw * res * res) as f64;
    }
    Ok(flop)
}

/// `gdiff eval`'s feature extraction: uint8-valued `size`x`size` RGB images through
/// `InceptionExtractor::extract` (resize, network, pool / spatial / logits to feature matrices).
fn inception_fid(batch: usize, size: usize) -> Result<Measured> {
    use guided_diffusion::eval::inception::synthetic::{synthetic_state_dict, uniforms};
    use guided_diffusion::eval::inception::{InceptionExtractor, InceptionV3, WeightMap};
    use guided_diffusion::eval::{FeatureExtractor, ImageBatch};
    let sd = synthetic_state_dict(true)?;
    // as torch's parameters(): the batch norms' running statistics are buffers
    let params = sd
        .iter()
        .filter(|(k, _)| !k.ends_with(".running_mean") && !k.ends_with(".running_var"))
        .map(|(_, t)| t.elem_count())
        .sum();
    let flop = inception_flop(&sd)? * batch as f64;
    let w = WeightMap::from_tensors("synthetic", sd)?;
    // Loaded weights are frozen (their Winograd transforms kept across calls), as in gdiff eval.
    let mut net = InceptionV3::load(&w, &Device::Cpu)?;
    net.set_policy(common::policy());
    let ex = InceptionExtractor::new(net, Default::default());
    let pixels = uniforms("bench_images", batch * size * size * 3);
    let images = ImageBatch::new(
        &[batch, size, size, 3],
        pixels.iter().map(|u| (u * 256.0).floor() as f32).collect(),
    )?;
    let seconds = time(|| {
        ex.extract(&images)?;
        Ok(())
    })?;
    Ok(Measured { batch, seconds, flop: Some(flop), params })
}

/// The workloads to run: `GD_WORKLOADS` (comma list) or all, the 64x64 ones only with
/// `GD_BENCH_BIG=1`. Exits with status 2 on an unknown name.
fn selection(big: bool) -> Vec<&'static str> {
    let asked: Option<Vec<String>> = std::env::var("GD_WORKLOADS")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
    if let Some(a) = &asked {
        let unknown: Vec<&String> =
            a.iter().filter(|n| !WORKLOADS.iter().any(|(w, _)| w == n)).collect();
        if !unknown.is_empty() {
            let known: Vec<&str> = WORKLOADS.iter().map(|(w, _)| *w).collect();
            eprintln!("GD_WORKLOADS: unknown workload(s) {unknown:?}; known: {}", known.join(","));
            std::process::exit(2);
        }
    }
    let mut out = Vec::new();
    for (w, needs_big) in WORKLOADS {
        if asked.as_ref().is_some_and(|a| !a.iter().any(|n| n == w)) {
            continue;
        }
        if needs_big && !big {
            if asked.is_some() {
                println!("# {w}: skipped (a 64x64 workload: set GD_BENCH_BIG=1)");
            }
            continue;
        }
        out.push(w);
    }
    if asked.is_none() && !big {
        println!(
            "# 64x64 workloads skipped (set GD_BENCH_BIG=1 to run them; seconds to minutes each)"
        );
    }
    out
}

fn main() {
    common::tune_process();
    let big = common::flag("GD_BENCH_BIG");
    let threads = rayon::current_num_threads();
    let policy = common::policy();
    let kernels_on = policy.fast;
    println!(
        "# ours (guided-diffusion, candle), {threads} threads, fast kernels {}, inference in {}, median of {} after 1 warm-up",
        if kernels_on { "on" } else { "off" },
        if policy.bf16() {
            match policy.bf16_unit() {
                guided_diffusion::kernels::Bf16Unit::Amx => "bf16 (AMX)",
                guided_diffusion::kernels::Bf16Unit::Avx512Bf16 => "bf16 (AVX512_BF16)",
                guided_diffusion::kernels::Bf16Unit::Rounding => "bf16 (no bf16 unit: rounded f32)",
            }
        } else {
            "f32"
        },
        reps()
    );
    let mut failed = false;
    for name in selection(big) {
        common::reset_peak_rss();
        let m = match run(name) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{name}: failed: {e}");
                failed = true;
                continue;
            }
        };
        if dry() {
            println!(
                "{name:<20} batch {:>3}  params {:>10}  {} (dry run: not timed)",
                m.batch,
                m.params,
                m.flop.map_or("FLOPs not counted".to_string(), |f| format!(
                    "{:.3} GFLOP per call",
                    f / 1e9
                ))
            );
            continue;
        }
        let rss = common::peak_rss_mib();
        let ips = m.batch as f64 / m.seconds;
        let gflops = m.flop.map(|f| f / m.seconds / 1e9);
        println!(
            "{name:<20} batch {:>3}  {:>10.1} ms  {:>8.2} img/s  {}  params {:>10}  peak RSS {:>6.0} MiB",
            m.batch,
            m.seconds * 1e3,
            ips,
            gflops.map_or("   -- GFLOP/s".to_string(), |g| format!("{g:>6.1} GFLOP/s")),
            m.params,
            rss
        );
        let mut j = serde_json::json!({
            "impl": "rust",
            "workload": name,
            "batch": m.batch,
            "threads": threads,
            "kernels": kernels_on,
            "precision": if policy.bf16() { "bf16" } else { "f32" },
            "reps": reps(),
            "seconds": m.seconds,
            "images_per_s": ips,
            "params": m.params,
            "peak_rss_mib": if rss.is_finite() { serde_json::json!(rss) } else { serde_json::Value::Null },
        });
        if let (Some(f), Some(g)) = (m.flop, gflops) {
            j["gflop_per_call"] = serde_json::json!(f / 1e9);
            j["gflops"] = serde_json::json!(g);
            j["flops_source"] = serde_json::json!("analytic (conv + matmul)");
        }
        println!("RESULT {j}");
    }
    if failed {
        std::process::exit(1);
    }
}
