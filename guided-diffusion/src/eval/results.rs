//! The five numbers of an evaluation with what is needed to trust them, printed in the
//! reference's format (`Inception Score: …`, `FID: …`, …; floats as Python's `repr`) and
//! written as JSON through a temporary file renamed into place.
use crate::{Error, Result};
use serde::Serialize;
use std::path::Path;

/// Results of one evaluation. `None` metrics are unavailable, with the reason in `details`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalResults {
    pub inception_score: Option<f64>,
    pub fid: f64,
    pub sfid: Option<f64>,
    pub precision: f64,
    pub recall: f64,
    pub details: EvalDetails,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct EvalDetails {
    pub reference_batch: String,
    pub sample_batch: String,
    pub num_reference: usize,
    pub num_samples: usize,
    pub extractor: String,
    /// "precomputed (mu, sigma)" or "computed"
    pub reference_statistics: String,
    pub sample_statistics: String,
    pub fid_eps_fallback: bool,
    pub sfid_eps_fallback: bool,
    pub is_split_size: usize,
    pub pr_distance: String,
    pub sqrtm: String,
    /// Why `inception_score` is `None`.
    pub inception_score_unavailable: Option<String>,
    /// Why `sfid` is `None`.
    pub sfid_unavailable: Option<String>,
}

/// Formats like Python's `repr(float)`: shortest round-trip digits, scientific notation below
/// 1e-4 and from 1e16 on (`1e-05`, `1.5e+16`), a trailing `.0` on integral values.
pub fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    let sci = format!("{x:e}"); // e.g. "-1.2345e-7", shortest round-trip digits
    let (mant, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (sign, mant) = mant.strip_prefix('-').map_or(("", mant), |m| ("-", m));
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    if !(-4..16).contains(&exp) {
        let m =
            if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        let es = if exp < 0 { "-" } else { "+" };
        return format!("{sign}{m}e{es}{:02}", exp.abs());
    }
    let point = exp + 1; // digits before the decimal point
    let s = if point <= 0 {
        format!("0.{}{}", "0".repeat((-point) as usize), digits)
    } else if (point as usize) >= digits.len() {
        format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
    } else {
        format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
    };
    format!("{sign}{s}")
}

impl EvalResults {
    /// The reference's closing lines.
    pub fn report(&self) -> String {
        let opt = |v: Option<f64>, why: &Option<String>| match v {
            Some(v) => py_float(v),
            None => format!("unavailable ({})", why.as_deref().unwrap_or("not computed")),
        };
        format!(
            "Inception Score: {}\nFID: {}\nsFID: {}\nPrecision: {}\nRecall: {}\n",
            opt(self.inception_score, &self.details.inception_score_unavailable),
            py_float(self.fid),
            opt(self.sfid, &self.details.sfid_unavailable),
            py_float(self.precision),
            py_float(self.recall)
        )
    }

    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::msg(format!("results JSON: {e}")))
    }

    /// Writes the JSON to `path` atomically (temporary file in the same folder, then rename).
    pub fn write_json(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::checkpoint::write_atomic(path.as_ref(), format!("{}\n", self.to_json()?).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::py_float;

    #[test]
    fn python_float_repr() {
        for (x, s) in [
            (2.0, "2.0"),
            (0.5, "0.5"),
            (2.71, "2.71"),
            (1e-5, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456.789, "123456.789"),
            (1e16, "1e+16"),
            (1.2345e17, "1.2345e+17"),
            (-0.25, "-0.25"),
            (0.1 + 0.2, "0.30000000000000004"),
            (100.0, "100.0"),
            (0.0, "0.0"),
        ] {
            assert_eq!(py_float(x), s, "{x}");
        }
    }
}
