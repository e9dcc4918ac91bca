//! AdamW against PyTorch's formula: a numpy float32 re-enactment of torch's op sequence
//! (tools/make_adamw_fixture.py) and a hand-computed first step; EMA updates by hand; state
//! round trip; `--ema_rate` parsing.
use candle_core::{Device, Tensor, Var};
use guided_diffusion::train::params::{Grads, ParamSet};
use guided_diffusion::train::{parse_ema_rates, AdamW, AdamWConfig, Ema};

fn one_param(values: &[f32]) -> ParamSet {
    let v = Var::from_tensor(&Tensor::new(values, &Device::Cpu).unwrap()).unwrap();
    ParamSet::new(vec![("w".into(), v)]).unwrap()
}

fn grads_of(g: &[f32]) -> Grads {
    Grads { grads: vec![Some(Tensor::new(g, &Device::Cpu).unwrap())] }
}

fn vec_of(t: &Tensor) -> Vec<f32> {
    t.to_vec1::<f32>().unwrap()
}

fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn train_adamw_matches_pytorch_formula_fixture() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/adamw/adamw_steps.json");
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in fx["cases"].as_array().unwrap() {
        let params = one_param(&f32s(&case["param0"]));
        let cfg = AdamWConfig {
            lr: case["lr"].as_f64().unwrap(),
            weight_decay: case["weight_decay"].as_f64().unwrap(),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        };
        let mut opt = AdamW::new(&params, cfg).unwrap();
        for (i, (g, want)) in case["grads"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case["steps"].as_array().unwrap())
            .enumerate()
        {
            opt.step(&params, &grads_of(&f32s(g))).unwrap();
            let got = vec_of(params.vars()[0].as_tensor());
            let exp = f32s(&want["param"]);
            for (a, b) in got.iter().zip(&exp) {
                // Same IEEE float32 operations in the same order: bit-identical.
                assert_eq!(a.to_bits(), b.to_bits(), "lr {} step {i}: {got:?} vs {exp:?}", cfg.lr);
            }
            assert_eq!(vec_of(&opt.state()[0].exp_avg), f32s(&want["exp_avg"]));
            assert_eq!(opt.state()[0].step, i as u64 + 1);
        }
    }
}

#[test]
fn train_adamw_first_step_by_hand() {
    // Step 1, no decay: m_hat = g, v_hat = g^2, so p1 = p0 - lr * g / (|g| + eps) ~ p0 - lr * sign(g).
    let params = one_param(&[1.0, -2.0, 0.5]);
    let mut opt =
        AdamW::new(&params, AdamWConfig { lr: 0.1, weight_decay: 0.0, ..Default::default() })
            .unwrap();
    opt.step(&params, &grads_of(&[0.3, -4.0, 0.0])).unwrap();
    let p = vec_of(params.vars()[0].as_tensor());
    assert!((p[0] - 0.9).abs() < 1e-6 && (p[1] + 1.9).abs() < 1e-6 && p[2] == 0.5, "{p:?}");
    // Decoupled decay: with a zero gradient only p *= (1 - lr * wd).
    let params = one_param(&[2.0]);
    let mut opt =
        AdamW::new(&params, AdamWConfig { lr: 0.1, weight_decay: 0.5, ..Default::default() })
            .unwrap();
    opt.step(&params, &grads_of(&[0.0])).unwrap();
    assert!((vec_of(params.vars()[0].as_tensor())[0] - 1.9).abs() < 1e-6);
    // No gradient: untouched, step count unchanged (as PyTorch).
    opt.step(&params, &Grads { grads: vec![None] }).unwrap();
    assert_eq!(opt.state()[0].step, 1);
}

#[test]
fn train_adamw_state_round_trip() {
    let params = one_param(&[0.1, 0.2]);
    let mut a = AdamW::new(&params, AdamWConfig::default()).unwrap();
    a.step(&params, &grads_of(&[1.0, -1.0])).unwrap();
    let saved: std::collections::HashMap<_, _> =
        a.state_tensors(&params).unwrap().into_iter().collect();
    let mut b = AdamW::new(&params, AdamWConfig::default()).unwrap();
    b.load_state_tensors(&params, &saved, "test").unwrap();
    assert_eq!(b.state()[0].step, 1);
    assert_eq!(vec_of(&b.state()[0].exp_avg_sq), vec_of(&a.state()[0].exp_avg_sq));
    let mut missing = saved.clone();
    missing.remove("exp_avg.w");
    let e =
        b.load_state_tensors(&params, &missing, "opt000001.safetensors").err().unwrap().to_string();
    assert!(e.contains("opt000001.safetensors") && e.contains("exp_avg.w"), "{e}");
}

#[test]
fn train_ema_update_by_hand() {
    let params = one_param(&[1.0, 2.0]);
    let mut ema = Ema::new(0.9, &params).unwrap();
    params.vars()[0].set(&Tensor::new(&[3.0f32, 0.0], &Device::Cpu).unwrap()).unwrap();
    ema.update(&params).unwrap();
    // 0.9 * 1 + 0.1 * 3 = 1.2; 0.9 * 2 + 0.1 * 0 = 1.8
    let v = vec_of(&ema.params[0]);
    assert!((v[0] - 1.2).abs() < 1e-6 && (v[1] - 1.8).abs() < 1e-6, "{v:?}");
    ema.update(&params).unwrap();
    let v = vec_of(&ema.params[0]);
    assert!((v[0] - 1.38).abs() < 1e-6 && (v[1] - 1.62).abs() < 1e-6, "{v:?}");
    assert_eq!(Ema::new(0.9999, &params).unwrap().rate_str(), "0.9999");
    assert_eq!(parse_ema_rates("0.9999,0.999").unwrap(), [0.9999, 0.999]);
    assert_eq!(parse_ema_rates("").unwrap(), Vec::<f64>::new());
    assert!(parse_ema_rates("0.9,x").unwrap_err().to_string().contains("--ema_rate"));
    assert!(parse_ema_rates("1.5").is_err());
}

#[test]
fn train_optimizer_and_ema_state_keep_no_graph() {
    // Gradients come out of backprop recording the forward graph; a moment estimate or an
    // average that recorded its inputs would keep every step's activations alive (this leaked
    // ~140 MB per step on the small Fashion-MNIST UNet until the state was detached).
    let params = one_param(&[0.5, -1.0]);
    let w = params.vars()[0].as_tensor();
    let loss = (w * w).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap().get(w).unwrap().clone();
    assert!(g.track_op(), "a gradient records its graph (else this test proves nothing)");
    let mut opt =
        AdamW::new(&params, AdamWConfig { weight_decay: 0.1, ..Default::default() }).unwrap();
    let mut ema = Ema::new(0.99, &params).unwrap();
    for _ in 0..3 {
        opt.step(&params, &Grads { grads: vec![Some(g.clone())] }).unwrap();
        ema.update(&params).unwrap();
    }
    let st = &opt.state()[0];
    assert!(
        !st.exp_avg.track_op() && !st.exp_avg_sq.track_op(),
        "optimizer moments record a graph"
    );
    assert!(!ema.params[0].track_op(), "the EMA records a graph");
}

/// The fused in-place CPU updates (`kernels::update`) give bit for bit what the candle
/// expressions give: AdamW with and without weight decay over several steps, and two EMAs, on
/// tensors large enough to be split into parallel chunks; one op per update, or the whole
/// update of a parameter in one pass (`AdamW::step_param_fused`, which also returns the
/// parameter's sum of squares before the step).
#[test]
fn train_fused_updates_match_candle_ops_bitwise() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    // mode 0: candle ops; 1: one fused op per update; 2: one pass per parameter.
    type Final = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);
    let run = |mode: u8, wd: f64| -> Final {
        let policy = guided_diffusion::kernels::KernelPolicy {
            fast: mode > 0,
            ..guided_diffusion::kernels::KernelPolicy::default()
        };
        let mut rng = StdRng::seed_from_u64(5);
        let n = 200_003;
        let p0: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let params = one_param(&p0);
        let mut opt =
            AdamW::new(&params, AdamWConfig { lr: 3e-3, weight_decay: wd, ..Default::default() })
                .unwrap();
        opt.policy = policy;
        let mut emas = [0.999, 0.9].map(|r| Ema { policy, ..Ema::new(r, &params).unwrap() });
        let mut sqs = Vec::new();
        for _ in 0..4 {
            let g: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            let var = &params.vars()[0];
            sqs.push(
                guided_diffusion::train::params::sq_norm(&policy, std::iter::once(var.as_tensor()))
                    .unwrap(),
            );
            if mode == 2 {
                let g = Tensor::new(g.as_slice(), &Device::Cpu).unwrap();
                let targets: Vec<(&Tensor, f32, f32)> = emas
                    .iter()
                    .map(|e| (&e.params[0], e.rate as f32, (1.0 - e.rate) as f32))
                    .collect();
                let sq = opt
                    .step_param_fused(0, var, &g, &targets)
                    .unwrap()
                    .expect("the one-pass update applies");
                assert_eq!(sq, *sqs.last().unwrap(), "sum of squares before the step");
            } else {
                opt.step(&params, &grads_of(&g)).unwrap();
                for e in emas.iter_mut() {
                    e.update(&params).unwrap();
                }
            }
        }
        let st = &opt.state()[0];
        (
            vec_of(params.vars()[0].as_tensor()),
            vec_of(&st.exp_avg),
            vec_of(&st.exp_avg_sq),
            vec_of(&emas[0].params[0]),
            vec_of(&emas[1].params[0]),
        )
    };
    for wd in [0.0, 0.05] {
        let want = run(0, wd);
        for mode in [1, 2] {
            let got = run(mode, wd);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let pairs = [
                ("param", &got.0, &want.0),
                ("exp_avg", &got.1, &want.1),
                ("exp_avg_sq", &got.2, &want.2),
                ("ema 0.999", &got.3, &want.3),
                ("ema 0.9", &got.4, &want.4),
            ];
            for (what, x, y) in pairs {
                assert!(
                    bits(x) == bits(y),
                    "weight decay {wd}, mode {mode}: {what} differs from candle's ops"
                );
            }
        }
    }
}
