//! [`SamplerSpec`]: a sampler as text, the one way every command and the library name one.
//!
//! The form is `NAME[STEPS] [KEY=VALUE ...]`, e.g. `ddpm`, `ddpm250`, `ddim25`,
//! `ddim25 eta=0.5`, `dpm-solver++20`, `dpm-solver++ steps=20 order=3 skip_type=logSNR`.
//! A spec is normalised when parsed: its sampler's kind checks every key and value, and keeps
//! only the values that differ from the defaults, in a canonical spelling; so two specs are
//! equal when they describe the same sampler, and `Display` prints a string that parses back
//! to the same spec.
//!
//! The registry ([`kinds`]) is the list of samplers: adding one is one line there.
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::Sampler;
use crate::diffusion::DiffusionConfig;
use crate::{bail, Error, Result};

/// The parameters of a spec, by key.
pub type Params = BTreeMap<String, String>;

/// One kind of sampler: its name, its parameters, and how it is built.
pub trait SamplerKind: Sync {
    /// The name specs use (`ddim`, `dpm-solver++`).
    fn name(&self) -> &'static str;
    /// One line on what it is.
    fn about(&self) -> &'static str;
    /// The keys it takes, each with a short description and its default.
    fn keys(&self) -> &'static [(&'static str, &'static str)];
    /// Checks `params` (every key is one of [`Self::keys`]) and returns them normalised:
    /// values parsed and printed canonically, defaults dropped.
    fn normalize(&self, params: &Params) -> Result<Params>;
    /// The sampler for a model trained with `diffusion` (the process of training, with the
    /// user's `timestep_respacing` if any).
    fn build(&self, params: &Params, diffusion: &DiffusionConfig) -> Result<Box<dyn Sampler>>;
}

/// Every sampler, in the order `--help` lists them. Add new ones here.
static KINDS: &[&dyn SamplerKind] = &[
    &super::ddpm::KIND,
    &super::ddim::KIND,
    &super::dpm_solver::DPM_SOLVER,
    &super::dpm_solver::DPM_SOLVER_PP,
    &super::sde_dpm_solver::SDE_DPM_SOLVER_PP,
];

/// The registry: every kind of sampler.
pub fn kinds() -> &'static [&'static dyn SamplerKind] {
    KINDS
}

/// The kind named `name`.
pub fn kind(name: &str) -> Result<&'static dyn SamplerKind> {
    kinds().iter().copied().find(|k| k.name() == name).ok_or_else(|| {
        let names: Vec<&str> = kinds().iter().map(|k| k.name()).collect();
        Error::msg(format!("unknown sampler {name:?} (known: {})", names.join(", ")))
    })
}

/// A sampler by name and normalised parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplerSpec {
    name: String,
    params: Params,
}

impl SamplerSpec {
    /// A spec from a kind's name and raw parameters (checked and normalised).
    pub fn new(name: &str, params: Params) -> Result<Self> {
        let k = kind(name)?;
        let params = k.normalize(&params).map_err(|e| Error::msg(format!("{name}: {e}")))?;
        Ok(Self { name: name.to_string(), params })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The normalised parameters (defaults left out).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// A parameter's canonical value, if it differs from the default.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// Whether the sampler named `name` takes the parameter `key`.
    pub fn accepts(name: &str, key: &str) -> Result<bool> {
        Ok(kind(name)?.keys().iter().any(|(k, _)| *k == key))
    }

    /// Builds the sampler for a model trained with `diffusion`.
    pub fn build(&self, diffusion: &DiffusionConfig) -> Result<Box<dyn Sampler>> {
        kind(&self.name)?.build(&self.params, diffusion)
    }
}

impl SamplerSpec {
    /// Splits spec text into its sampler name and raw parameters (`NAME[STEPS] KEY=VALUE ...`),
    /// without checking them: for callers that add parameters of their own before
    /// [`SamplerSpec::new`] normalises them.
    pub fn parse_raw(s: &str) -> Result<(String, Params)> {
        let mut words = s.split_whitespace();
        let Some(head) = words.next() else {
            bail!("empty sampler spec (expected e.g. ddim25 or \"dpm-solver++ steps=20\")");
        };
        // NAME[STEPS]: trailing digits of the first word are the step count.
        let name_len = head.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (name, digits) = head.split_at(name_len);
        let mut params = Params::new();
        if !digits.is_empty() {
            params.insert("steps".into(), digits.into());
        }
        for w in words {
            let Some((k, v)) = w.split_once('=') else {
                bail!("sampler spec {s:?}: {w:?} is not KEY=VALUE");
            };
            if k.is_empty() || v.is_empty() {
                bail!("sampler spec {s:?}: {w:?} is not KEY=VALUE");
            }
            if params.insert(k.to_string(), v.to_string()).is_some() {
                bail!("sampler spec {s:?}: {k} is given twice");
            }
        }
        Ok((name.to_string(), params))
    }
}

impl FromStr for SamplerSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (name, params) = Self::parse_raw(s)?;
        Self::new(&name, params).map_err(|e| Error::msg(format!("sampler spec {s:?}: {e}")))
    }
}

impl fmt::Display for SamplerSpec {
    /// `NAME[STEPS] KEY=VALUE ...`: parses back to the same spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(steps) = self.params.get("steps") {
            write!(f, "{steps}")?;
        }
        for (k, v) in self.params.iter().filter(|(k, _)| *k != "steps") {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// Parameter parsing helpers for the kinds: each takes the value out of `params` (so that what
/// is left at the end are unknown keys) and names the key in errors.
pub(crate) struct ParamReader {
    params: Params,
}

impl ParamReader {
    pub fn new(kind: &dyn SamplerKind, params: &Params) -> Result<Self> {
        if let Some(bad) = params.keys().find(|k| !kind.keys().iter().any(|(key, _)| key == k)) {
            let keys: Vec<&str> = kind.keys().iter().map(|(k, _)| *k).collect();
            bail!("{bad} does not apply to {} (it takes: {})", kind.name(), keys.join(", "));
        }
        Ok(Self { params: params.clone() })
    }

    fn take(&mut self, key: &str) -> Option<String> {
        self.params.remove(key)
    }

    /// A parsed value, or `default` when absent.
    pub fn value<T: FromStr>(&mut self, key: &str, default: T, what: &str) -> Result<T> {
        match self.take(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| Error::msg(format!("{key}={v}: expected {what}"))),
        }
    }

    /// An optional parsed value.
    pub fn opt<T: FromStr>(&mut self, key: &str, what: &str) -> Result<Option<T>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => {
                v.parse().map(Some).map_err(|_| Error::msg(format!("{key}={v}: expected {what}")))
            }
        }
    }

    /// A finite float within `[lo, hi]`.
    pub fn float(&mut self, key: &str, default: f64, lo: f64, hi: f64) -> Result<f64> {
        let v: f64 = self.value(key, default, "a number")?;
        if !v.is_finite() || v < lo || v > hi {
            bail!("{key}={v}: expected a finite number in [{lo}, {hi}]");
        }
        Ok(v)
    }

    /// A boolean (true/false, yes/no, 1/0, as the reference's `str2bool`).
    pub fn bool(&mut self, key: &str, default: bool) -> Result<bool> {
        match self.take(key) {
            None => Ok(default),
            Some(v) => crate::models::flags::parse_bool(&v, key),
        }
    }

    /// An optional boolean.
    pub fn opt_bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => crate::models::flags::parse_bool(&v, key).map(Some),
        }
    }

    /// One of `choices`.
    pub fn choice(
        &mut self,
        key: &str,
        default: &'static str,
        choices: &[&'static str],
    ) -> Result<&'static str> {
        match self.take(key) {
            None => Ok(default),
            Some(v) => choices.iter().copied().find(|c| *c == v).ok_or_else(|| {
                Error::msg(format!("{key}={v}: expected one of {}", choices.join(", ")))
            }),
        }
    }
}

/// Builds normalised parameters: values equal to the default are left out.
#[derive(Default)]
pub(crate) struct ParamWriter {
    params: Params,
}

impl ParamWriter {
    pub fn put<T: PartialEq + fmt::Display>(&mut self, key: &str, value: T, default: T) {
        if value != default {
            self.params.insert(key.to_string(), value.to_string());
        }
    }

    pub fn put_opt<T: fmt::Display>(&mut self, key: &str, value: Option<T>) {
        if let Some(v) = value {
            self.params.insert(key.to_string(), v.to_string());
        }
    }

    pub fn done(self) -> Params {
        self.params
    }
}
