//! What the weights alone say about a network: the constructor arguments that parameter names
//! and shapes determine. Head counts, the QKV order and a UNet's image size leave no trace in
//! the weights and are reported as unknown, as is a classifier's depth (a BigGAN down block
//! looks like any other residual block without attention).
use std::collections::{BTreeMap, HashMap};

use candle_core::Tensor;

/// The inferred arguments as `(name, value)`, plus the ones the weights cannot tell.
#[derive(Debug, Clone, Default)]
pub struct Inferred {
    pub builder: &'static str,
    pub known: Vec<(&'static str, String)>,
    pub unknown: Vec<&'static str>,
}

struct Keys<'a> {
    t: &'a HashMap<String, Tensor>,
    /// (is output block, index) -> sub-keys
    blocks: BTreeMap<(bool, usize), Vec<&'a str>>,
}

impl<'a> Keys<'a> {
    fn new(t: &'a HashMap<String, Tensor>) -> Self {
        let mut blocks: BTreeMap<(bool, usize), Vec<&str>> = BTreeMap::new();
        for k in t.keys() {
            for (prefix, is_out) in [("input_blocks.", false), ("output_blocks.", true)] {
                if let Some((i, rest)) = k.strip_prefix(prefix).and_then(|r| r.split_once('.')) {
                    if let Ok(i) = i.parse() {
                        blocks.entry((is_out, i)).or_default().push(rest);
                    }
                }
            }
        }
        Keys { t, blocks }
    }
    fn shape(&self, k: &str) -> Option<&'a [usize]> {
        self.t.get(k).map(|x| x.dims())
    }
    /// Dimension `i` of tensor `k`, if it has one (files may hold tensors of any rank).
    fn dim(&self, k: &str, i: usize) -> Option<usize> {
        self.shape(k)?.get(i).copied()
    }
    fn has(&self, out: bool, i: usize, prefix: &str) -> bool {
        self.blocks.get(&(out, i)).is_some_and(|v| v.iter().any(|r| r.starts_with(prefix)))
    }
    fn count(&self, out: bool) -> usize {
        self.blocks.keys().filter(|(o, _)| *o == out).count()
    }
    /// An up layer (Upsample conv or up ResBlock) at sub-index 1 or 2 of output block `i`.
    fn up_layer(&self, i: usize) -> Option<bool> {
        for j in ["1.", "2."] {
            if self.has(true, i, &format!("{j}conv.")) {
                return Some(false);
            }
            if self.has(true, i, &format!("{j}in_layers")) {
                return Some(true);
            }
        }
        None
    }
}

/// Infers what it can; `None` if the keys are not those of an ADM network.
pub fn infer(t: &HashMap<String, Tensor>) -> Option<Inferred> {
    let k = Keys::new(t);
    let mc = k.dim("time_embed.0.weight", 1).filter(|&m| m > 0)?;
    let in_ch = k.dim("input_blocks.0.0.weight", 1)?;
    let mut known = vec![("model_channels", mc.to_string())];
    let mut unknown = vec!["num_heads", "num_head_channels", "use_new_attention_order"];
    if let (Some(e), Some(o)) = (
        k.dim("input_blocks.1.0.emb_layers.1.weight", 0),
        k.dim("input_blocks.1.0.in_layers.2.weight", 0),
    ) {
        known.push(("use_scale_shift_norm", (e == 2 * o).to_string()));
    }
    let n_out = k.count(true);
    if n_out == 0 {
        return Some(infer_classifier(&k, in_ch, known, unknown));
    }
    // The first output block with an up layer closes the deepest level after num_res_blocks + 1.
    let up_at = (0..n_out).find(|&i| k.up_layer(i).is_some());
    let nrb = up_at.unwrap_or(n_out - 1);
    let levels = (n_out / (nrb + 1)).min(64);
    known.push(("num_res_blocks", nrb.to_string()));
    let mult: Vec<String> = (0..levels)
        .filter_map(|l| {
            k.dim(
                &format!("output_blocks.{}.0.in_layers.2.weight", (levels - 1 - l) * (nrb + 1)),
                0,
            )
        })
        .map(|s| format!("{}", s as f64 / mc as f64))
        .collect();
    known.push(("channel_mult", format!("[{}]", mult.join(", "))));
    known.push(("resblock_updown", up_at.and_then(|i| k.up_layer(i)).unwrap_or(false).to_string()));
    let mut ds = Vec::new();
    let mut i = 1;
    for level in 0..levels {
        for _ in 0..nrb {
            if k.has(false, i, "1.qkv") && !ds.contains(&(1 << level)) {
                ds.push(1usize << level);
            }
            i += 1;
        }
        i += 1; // the down block
    }
    known.push(("attention_resolutions (downsample factors)", format!("{ds:?}")));
    let out = k.dim("out.2.weight", 0).unwrap_or(0);
    known.push(("out_channels", out.to_string()));
    let builder = if out == 2 * in_ch {
        known.push(("in_channels", in_ch.to_string()));
        known.push(("learn_sigma", "true".into()));
        "unet.UNetModel"
    } else if 2 * out == in_ch {
        known.push(("in_channels (x and the upsampled low-res image)", in_ch.to_string()));
        known.push(("learn_sigma", "false".into()));
        "unet.SuperResModel"
    } else {
        known.push(("in_channels", in_ch.to_string()));
        "unet.UNetModel (eps only) or unet.SuperResModel (learn_sigma)"
    };
    known.push((
        "num_classes",
        k.dim("label_emb.weight", 0)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "None (unconditional)".into()),
    ));
    unknown.push("image_size");
    Some(Inferred { builder, known, unknown })
}

fn infer_classifier(
    k: &Keys,
    in_ch: usize,
    mut known: Vec<(&'static str, String)>,
    mut unknown: Vec<&'static str>,
) -> Inferred {
    known.push(("in_channels", in_ch.to_string()));
    let (pool, out_key) = if k.t.contains_key("out.2.positional_embedding") {
        ("attention", "out.2.c_proj.bias")
    } else if k.shape("out.3.weight").is_some_and(|s| s.len() == 4) {
        ("adaptive", "out.3.bias")
    } else if k.t.contains_key("out.1.weight") {
        ("spatial_v2", "out.3.bias")
    } else {
        ("spatial", "out.2.bias")
    };
    known.push(("pool", pool.into()));
    if let Some(s) = k.dim(out_key, 0) {
        known.push(("out_channels", s.to_string()));
    }
    if let Some(p) = k.dim("out.2.positional_embedding", 1) {
        let side = (p.saturating_sub(1) as f64).sqrt() as usize;
        known.push(("image_size / 2^(levels-1)", side.to_string()));
    }
    unknown.extend(["image_size", "num_res_blocks", "channel_mult", "attention_resolutions"]);
    Inferred { builder: "unet.EncoderUNetModel", known, unknown }
}
