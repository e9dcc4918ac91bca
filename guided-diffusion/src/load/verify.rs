//! Building a network against a state dict, with a clear report when they do not match.
//!
//! [`build_checked`] runs a network constructor on a `VarBuilder` whose backend hands out the
//! state dict's tensors and records every request: names the network asks for that the file
//! lacks (missing), names the file has that nobody asked for (unexpected) and shape mismatches.
//! Missing or mis-shaped parameters get zero-sized broadcast placeholders so that construction
//! runs to the end and the report lists *all* problems at once; the report then names the
//! flag that most likely differs.
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::{Error, Result};

#[derive(Default)]
struct Record {
    used: BTreeSet<String>,
    missing: Vec<(String, Vec<usize>)>,
    mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

struct CheckingBackend {
    tensors: HashMap<String, Tensor>,
    record: Mutex<Record>,
}

fn placeholder(s: &Shape, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::zeros((), dtype, dev)?.broadcast_as(s.clone())
}

impl candle_nn::var_builder::SimpleBackend for CheckingBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut rec = self.record.lock().expect("record lock");
        rec.used.insert(name.to_string());
        match self.tensors.get(name) {
            None => {
                rec.missing.push((name.to_string(), s.dims().to_vec()));
                placeholder(&s, dtype, dev)
            }
            Some(t) if t.shape() != &s => {
                rec.mismatched.push((name.to_string(), t.dims().to_vec(), s.dims().to_vec()));
                placeholder(&s, dtype, dev)
            }
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.record.lock().expect("record lock").used.insert(name.to_string());
        match self.tensors.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => candle_core::bail!("missing tensor {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Runs `build` on the tensors of a checkpoint (`source` names it in errors). Fails with a
/// report of every missing, unexpected and mis-shaped key and the likely flag.
pub fn build_checked<T>(
    tensors: HashMap<String, Tensor>,
    source: &str,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> Result<T>,
) -> Result<T> {
    let all: BTreeSet<String> = tensors.keys().cloned().collect();
    let backend =
        std::sync::Arc::new(CheckingBackend { tensors, record: Mutex::new(Record::default()) });
    let boxed: Box<dyn candle_nn::var_builder::SimpleBackend> =
        Box::new(ArcBackend(backend.clone()));
    let vb = VarBuilder::from_backend(boxed, DType::F32, device.clone());
    let built = build(vb);
    let rec = std::mem::take(&mut *backend.record.lock().expect("record lock"));
    let unexpected: Vec<String> = all.difference(&rec.used).cloned().collect();
    if rec.missing.is_empty() && rec.mismatched.is_empty() && unexpected.is_empty() {
        return built;
    }
    Err(Error::msg(mismatch_report(source, &rec.missing, &unexpected, &rec.mismatched)))
}

struct ArcBackend(std::sync::Arc<CheckingBackend>);

impl candle_nn::var_builder::SimpleBackend for ArcBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(s, name, h, dtype, dev)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, dtype, dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}

fn list<T>(items: &[T], show: impl Fn(&T) -> String) -> String {
    const MAX: usize = 8;
    let mut s: Vec<String> = items.iter().take(MAX).map(show).collect();
    if items.len() > MAX {
        s.push(format!("... and {} more", items.len() - MAX));
    }
    s.join(", ")
}

/// The human-readable mismatch report.
pub fn mismatch_report(
    source: &str,
    missing: &[(String, Vec<usize>)],
    unexpected: &[String],
    mismatched: &[(String, Vec<usize>, Vec<usize>)],
) -> String {
    let mut parts = Vec::new();
    if !mismatched.is_empty() {
        parts.push(format!(
            "{} shape mismatch(es): {}",
            mismatched.len(),
            list(mismatched, |(n, file, model)| format!(
                "{n} is {file:?} in the file but {model:?} in the model"
            ))
        ));
    }
    if !missing.is_empty() {
        parts.push(format!(
            "{} key(s) missing from the file: {}",
            missing.len(),
            list(missing, |(n, s)| format!("{n} {s:?}"))
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "{} unexpected key(s) in the file: {}",
            unexpected.len(),
            list(unexpected, |n| n.clone())
        ));
    }
    let flags = likely_flags(missing, unexpected, mismatched);
    let hint = if flags.is_empty() {
        String::new()
    } else {
        format!("; the flag(s) that probably differ: {}", flags.join(", "))
    };
    format!("{source} does not match the model config: {}{hint}", parts.join("; "))
}

/// Guesses which script flags explain the mismatching keys.
fn likely_flags(
    missing: &[(String, Vec<usize>)],
    unexpected: &[String],
    mismatched: &[(String, Vec<usize>, Vec<usize>)],
) -> Vec<&'static str> {
    let mut flags: Vec<&'static str> = Vec::new();
    let mut add = |f: &'static str| {
        if !flags.contains(&f) {
            flags.push(f)
        }
    };
    let absent =
        missing.iter().map(|(n, _)| n.as_str()).chain(unexpected.iter().map(String::as_str));
    for n in absent {
        if n.starts_with("label_emb") {
            add("--class_cond");
        } else if n.contains(".qkv.") || n.contains(".proj_out.") || n.contains(".norm.") {
            add("--attention_resolutions");
        } else if n.contains(".op.") || n.ends_with(".conv.weight") || n.ends_with(".conv.bias") {
            add("--resblock_updown");
        } else if n.starts_with("out.") {
            add("--classifier_pool");
        } else if n.contains("skip_connection") {
            add("--channel_mult");
        } else if n.starts_with("input_blocks.") || n.starts_with("output_blocks.") {
            add("--num_res_blocks");
            add("--channel_mult");
        }
    }
    for (n, file, model) in mismatched {
        if n.starts_with("label_emb") {
            add("--num_classes");
        } else if n.contains("emb_layers.1")
            && file.len() == model.len()
            && (file[0] * 2 == model[0] || model[0] * 2 == file[0])
        {
            add("--use_scale_shift_norm");
        } else if (n == "out.2.weight" || n == "out.2.bias") && file.first() != model.first() {
            add("--learn_sigma");
        } else if n.starts_with("out.") && file.first() != model.first() {
            add("--num_classes");
        } else if n == "input_blocks.0.0.weight"
            && file.get(1) != model.get(1)
            && file[0] == model[0]
        {
            add("--in_channels");
        } else if n.contains("positional_embedding") {
            add("--image_size");
        } else if n.starts_with("time_embed") {
            add("--num_channels");
        } else {
            add("--num_channels");
            add("--channel_mult");
        }
    }
    flags
}

/// Config fields that differ between two configs of the same builder, as `name: a vs b`.
pub fn config_differences(saved: &serde_json::Value, given: &serde_json::Value) -> Vec<String> {
    let (Some(a), Some(b)) = (saved.as_object(), given.as_object()) else {
        return vec![];
    };
    let mut out = Vec::new();
    for (k, va) in a {
        if let Some(vb) = b.get(k) {
            if !json_eq(va, vb) {
                out.push(format!("{k}: {va} in the checkpoint vs {vb} given"));
            }
        }
    }
    out
}

fn json_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => match (a.as_array(), b.as_array()) {
            (Some(x), Some(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q)),
            _ => a == b,
        },
    }
}
