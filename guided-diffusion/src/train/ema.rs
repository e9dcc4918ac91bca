//! Exponential moving averages of the parameters, one per `--ema_rate`
//! (`ema <- rate * ema + (1 - rate) * param` after every optimizer step that was taken, as the
//! reference's `update_ema`: `targ.mul_(rate).add_(src, alpha=1 - rate)`).
use candle_core::Tensor;

use super::params::ParamSet;
use crate::kernels::{self, KernelPolicy};
use crate::{bail, Result};

pub struct Ema {
    pub rate: f64,
    /// In [`ParamSet`] order; on the CPU updated in place (clones share the update, so a
    /// network built on them must not be frozen: `models::Net::freeze`).
    pub params: Vec<Tensor>,
    /// Whether the update is the in-place kernel (`policy.fast`; the same bits).
    pub policy: KernelPolicy,
}

impl Ema {
    /// Starts as a copy of the current parameters (the reference's `copy.deepcopy`).
    pub fn new(rate: f64, params: &ParamSet) -> Result<Self> {
        let params = params
            .tensors()
            .iter()
            .map(|t| t.detach().copy())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { rate, params, policy: KernelPolicy::default() })
    }

    pub fn update(&mut self, params: &ParamSet) -> Result<()> {
        for (i, p) in params.vars().iter().enumerate() {
            self.update_param(i, p.as_tensor())?;
        }
        Ok(())
    }

    /// The update of parameter `i` (in [`ParamSet`] order) from its current value `p`.
    pub fn update_param(&mut self, i: usize, p: &Tensor) -> Result<()> {
        let Some(e) = self.params.get_mut(i) else {
            bail!("EMA: no average for parameter {i} of {}", self.params.len());
        };
        if kernels::update::applies(&self.policy, &[e, p]) {
            // The same f32 operations as below, in one in-place pass.
            let op = kernels::update::EmaStep {
                rate: self.rate as f32,
                one_minus_rate: (1.0 - self.rate) as f32,
            };
            e.inplace_op2(p, &op)?;
            return Ok(());
        }
        // Detached: an op on a variable records its inputs for backprop, and an average that
        // remembers its previous value would keep every step's tensors alive.
        *e = (e.affine(self.rate, 0.0)? + p.detach().affine(1.0 - self.rate, 0.0)?)?.detach();
        Ok(())
    }

    /// The rate as it appears in file names (`ema_0.9999_000500`), Python's `str(float)`.
    pub fn rate_str(&self) -> String {
        format!("{}", self.rate)
    }
}

/// Parses `--ema_rate` (`"0.9999"` or `"0.9999,0.999"`); an empty string means no EMA.
pub fn parse_ema_rates(s: &str) -> Result<Vec<f64>> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(vec![]);
    }
    s.split(',')
        .map(|x| {
            let v: f64 = x
                .trim()
                .parse()
                .map_err(|_| crate::Error::msg(format!("--ema_rate: {x:?} is not a number")))?;
            if !(0.0..=1.0).contains(&v) {
                bail!("--ema_rate: {v} is outside [0, 1]");
            }
            Ok(v)
        })
        .collect()
}
