//! Model parity with the reference: every golden network case (both UNets, super-res, the three
//! classifier pools with logits, log-probs and the guidance gradient), weights loaded from both
//! the `.pt` and the `.safetensors` file.
mod support;

use candle_core::{DType, Device, Tensor, Var, D};
use guided_diffusion::models::Net;
use support::{assert_close, golden, Case};

#[derive(Clone, Copy, Debug)]
enum Fmt {
    Pt,
    Safetensors,
}

fn load(model: &str, fmt: Fmt) -> Net {
    let ext = match fmt {
        Fmt::Pt => "pt",
        Fmt::Safetensors => "safetensors",
    };
    Net::load(
        golden(&format!("model_{model}.json")),
        golden(&format!("model_{model}.{ext}")),
        &Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("loading {model}.{ext}: {e}"))
    .with_policy(support::policy())
}

fn timesteps(case: &Case) -> Tensor {
    case.get("in.timesteps").to_dtype(DType::F32).unwrap()
}

fn unet_forward(case_name: &str, model: &str, fmt: Fmt) {
    let case = Case::load(case_name);
    let net = load(model, fmt);
    let y = case.tensors.get("in.y").cloned();
    let low_res = case.tensors.get("in.low_res").cloned();
    let out =
        net.forward(case.get("in.x"), &timesteps(&case), y.as_ref(), low_res.as_ref()).unwrap();
    assert_close(
        &format!("{case_name} ({fmt:?}) out"),
        &out,
        case.get("out.out"),
        case.atol("out"),
    );
}

#[test]
fn parity_unet_a_forward_pt() {
    unet_forward("unet_a_forward", "unet_a", Fmt::Pt);
}

#[test]
fn parity_unet_a_forward_safetensors() {
    unet_forward("unet_a_forward", "unet_a", Fmt::Safetensors);
}

#[test]
fn parity_unet_b_forward_pt() {
    unet_forward("unet_b_forward", "unet_b", Fmt::Pt);
}

#[test]
fn parity_unet_b_forward_safetensors() {
    unet_forward("unet_b_forward", "unet_b", Fmt::Safetensors);
}

#[test]
fn parity_super_res_forward_pt() {
    unet_forward("sr_forward", "sr", Fmt::Pt);
}

#[test]
fn parity_super_res_forward_safetensors() {
    unet_forward("sr_forward", "sr", Fmt::Safetensors);
}

#[test]
fn parity_super_res_bilinear_upsampling() {
    let case = Case::load("sr_forward");
    let up =
        guided_diffusion::models::unet::upsample_bilinear(case.get("in.low_res"), 32, 32).unwrap();
    assert_close(
        "sr upsampled low_res",
        &up,
        case.get("out.debug_upsampled_low_res"),
        case.atol("debug_upsampled_low_res"),
    );
}

/// logits, log_softmax and `d/dx sum_i log_softmax(logits)[i, y_i] * scale`.
fn classifier_case(case_name: &str, model: &str, fmt: Fmt) {
    let case = Case::load(case_name);
    let net = load(model, fmt);
    let x = case.get("in.x");
    let t = timesteps(&case);
    let logits = net.forward(x, &t, None, None).unwrap();
    assert_close(
        &format!("{case_name} ({fmt:?}) logits"),
        &logits,
        case.get("out.logits"),
        case.atol("logits"),
    );
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    assert_close(
        &format!("{case_name} ({fmt:?}) log_probs"),
        &log_probs,
        case.get("out.log_probs"),
        case.atol("log_probs"),
    );

    let scale = case.params()["classifier_scale"].as_f64().unwrap();
    let xv = Var::from_tensor(x).unwrap();
    let logits = net.forward(xv.as_tensor(), &t, None, None).unwrap();
    let lp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let y = case.get("in.y").to_dtype(DType::U32).unwrap().unsqueeze(1).unwrap();
    let selected = lp.gather(&y, 1).unwrap().sum_all().unwrap();
    let grads = selected.backward().unwrap();
    let g = (grads.get(xv.as_tensor()).unwrap() * scale).unwrap();
    assert_close(
        &format!("{case_name} ({fmt:?}) grad"),
        &g,
        case.get("out.grad"),
        case.atol("grad"),
    );
}

#[test]
fn parity_classifier_adaptive_pt() {
    classifier_case("classifier_adaptive", "clf_adaptive", Fmt::Pt);
}

#[test]
fn parity_classifier_adaptive_safetensors() {
    classifier_case("classifier_adaptive", "clf_adaptive", Fmt::Safetensors);
}

#[test]
fn parity_classifier_attention_pt() {
    classifier_case("classifier_attention", "clf_attn", Fmt::Pt);
}

#[test]
fn parity_classifier_attention_safetensors() {
    classifier_case("classifier_attention", "clf_attn", Fmt::Safetensors);
}

#[test]
fn parity_classifier_spatial_pt() {
    classifier_case("classifier_spatial", "clf_spatial", Fmt::Pt);
}

#[test]
fn parity_classifier_spatial_safetensors() {
    classifier_case("classifier_spatial", "clf_spatial", Fmt::Safetensors);
}
