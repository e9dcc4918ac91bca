//! Model descriptions: `{"builder": ..., "kwargs": {...}}`, the reference's way of naming a
//! network (the golden `model_<name>.json` files, `--model_config`, the config embedded in our
//! checkpoints), parsed into a [`NetConfig`]. The builder is a network constructor (whose
//! kwargs are a config, [`super::config`]) or a script builder (whose kwargs are flags,
//! [`super::flags`]); this module sits above both.
use serde::Serialize;

use super::config::{NetConfig, TrunkConfig};
use super::flags::{ClassifierFlags, ModelFlags};
use crate::{bail, Result};

impl NetConfig {
    /// Builds a config from a constructor name and its keyword arguments. Accepts the direct
    /// constructors (`unet.UNetModel`, `unet.SuperResModel`, `unet.EncoderUNetModel`, with or
    /// without the `unet.` prefix) and the script builders (`script_util.create_model`,
    /// `script_util.create_classifier`, `script_util.sr_create_model`), which take the
    /// reference's command-line flags.
    pub fn from_builder(builder: &str, kwargs: &serde_json::Value) -> Result<Self> {
        let name = builder.rsplit('.').next().unwrap_or(builder);
        let what = format!("kwargs of {builder}");
        Ok(match name {
            "UNetModel" => NetConfig::UNet(config_from_kwargs(kwargs, &what)?),
            "SuperResModel" => NetConfig::SuperRes(config_from_kwargs(kwargs, &what)?),
            "EncoderUNetModel" => NetConfig::Classifier(config_from_kwargs(kwargs, &what)?),
            "create_model" => {
                let f: ModelFlags = from_kwargs(kwargs, &what)?;
                not_taken(
                    &what,
                    &[
                        ("large_size", f.large_size.is_some()),
                        ("small_size", f.small_size.is_some()),
                    ],
                )?;
                NetConfig::UNet(f.create_model()?)
            }
            "create_classifier" => {
                let f: ClassifierFlags = from_kwargs(kwargs, &what)?;
                NetConfig::Classifier(f.create_classifier()?)
            }
            "sr_create_model" => {
                let f: ModelFlags = from_kwargs(kwargs, &what)?;
                not_taken(
                    &what,
                    &[
                        ("image_size", f.image_size.is_some()),
                        ("use_new_attention_order", f.use_new_attention_order.is_some()),
                    ],
                )?;
                NetConfig::SuperRes(f.sr_create_model()?)
            }
            _ => bail!(
                "unknown model builder {builder:?}: expected unet.UNetModel, unet.SuperResModel, \
                 unet.EncoderUNetModel, script_util.create_model, script_util.create_classifier \
                 or script_util.sr_create_model"
            ),
        })
    }

    /// Parses `{"builder": ..., "kwargs": {...}}` (extra keys such as the golden files' key
    /// lists are ignored).
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let builder = v.get("builder").and_then(|b| b.as_str()).ok_or_else(|| {
            crate::Error::msg("model description has no \"builder\" string".to_string())
        })?;
        let kwargs = v
            .get("kwargs")
            .ok_or_else(|| crate::Error::msg("model description has no \"kwargs\" object"))?;
        Self::from_builder(builder, kwargs)
    }

    /// Reads a model description file (`{"builder", "kwargs"}` JSON).
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| crate::Error::msg(format!("{}: not valid JSON: {e}", path.display())))?;
        Self::from_json(&v).map_err(|e| crate::Error::msg(format!("{}: {e}", path.display())))
    }
}

/// `T` from a kwargs object (the flag structs refuse unknown keys themselves); errors name the
/// key at fault (serde alone says only "invalid type: null, expected f64").
fn from_kwargs<T: serde::de::DeserializeOwned>(v: &serde_json::Value, what: &str) -> Result<T> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            crate::Error::msg(format!("{what}: {}", e.inner()))
        } else {
            crate::Error::msg(format!("{what}: key {path}: {}", e.inner()))
        }
    })
}

/// A network config from a kwargs object, refusing keys it does not have: serde's
/// `deny_unknown_fields` does not work through the flattened trunk, so the keys are checked
/// against the ones the config writes back (all of its fields). Nor does the key path of an
/// error: a flattened field's error carries none, so the trunk's own parse names the key.
fn config_from_kwargs<T: serde::de::DeserializeOwned + Serialize>(
    v: &serde_json::Value,
    what: &str,
) -> Result<T> {
    let t: T = from_kwargs(v, what).map_err(|e| match from_kwargs::<TrunkConfig>(v, what) {
        Err(trunk) => trunk,
        Ok(_) => e,
    })?;
    let known = serde_json::to_value(&t).map_err(|e| crate::Error::msg(format!("{what}: {e}")))?;
    if let (Some(given), Some(known)) = (v.as_object(), known.as_object()) {
        if let Some(k) = given.keys().find(|k| !known.contains_key(*k)) {
            let mut names: Vec<&str> = known.keys().map(String::as_str).collect();
            names.sort();
            bail!("{what}: unknown field `{k}`, expected one of {}", names.join(", "));
        }
    }
    Ok(t)
}

/// Refuses kwargs a builder does not take (present in the shared flag struct for another).
fn not_taken(what: &str, given: &[(&str, bool)]) -> Result<()> {
    match given.iter().find(|(_, present)| *present) {
        Some((k, _)) => bail!("{what}: unknown field `{k}`"),
        None => Ok(()),
    }
}
