//! AdamW exactly as PyTorch's `torch.optim.AdamW` (single-tensor path, no amsgrad), the
//! optimizer of the reference's `TrainLoop` and `classifier_train.py`.
//!
//! Per parameter with a gradient `g` (its own step counter `t`, incremented first):
//! ```text
//! p   <- p * (1 - lr * weight_decay)                  (decoupled weight decay)
//! m   <- m + (1 - beta1) * (g - m)                    (torch's lerp, weight < 0.5 branch)
//! v   <- v * beta2 + ((1 - beta2) * g) * g            (addcmul)
//! den <- sqrt(v) / sqrt(1 - beta2^t) + eps
//! p   <- p - (lr / (1 - beta1^t)) * (m / den)         (addcdiv)
//! ```
//! Parameters without a gradient are left alone and keep their step count, as PyTorch.
//!
//! Why not `candle_nn::AdamW`: it computes the same quantity but in another order
//! (`m_hat / (sqrt(v_hat) + eps)` with `v_hat = v / (1 - beta2^t)`, multiplication by reciprocals,
//! one global step counter), which rounds differently, and its moments are private so they
//! cannot be saved for a resume. Defaults are PyTorch's (lr 1e-3, betas (0.9, 0.999), eps 1e-8,
//! weight_decay 1e-2); the reference passes its own `--lr` and `--weight_decay` (default 0.0).
use std::collections::HashMap;

use candle_core::{Tensor, Var};

use super::params::{Grads, ParamSet};
use crate::kernels::{self, update};
use crate::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

/// Moments of one parameter. On the CPU they are updated in place (clones share the update).
#[derive(Debug, Clone)]
pub struct AdamState {
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    pub step: u64,
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// Whether the updates are the fused in-place kernels (`policy.fast`; the same bits).
    pub policy: kernels::KernelPolicy,
    /// In [`ParamSet`] order.
    state: Vec<AdamState>,
}

impl AdamW {
    pub fn new(params: &ParamSet, config: AdamWConfig) -> Result<Self> {
        let state = params
            .vars()
            .iter()
            .map(|v| {
                Ok(AdamState {
                    exp_avg: v.as_tensor().zeros_like()?,
                    exp_avg_sq: v.as_tensor().zeros_like()?,
                    step: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { config, policy: kernels::KernelPolicy::default(), state })
    }

    pub fn lr(&self) -> f64 {
        self.config.lr
    }
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }
    pub fn state(&self) -> &[AdamState] {
        &self.state
    }

    /// One update of every parameter that has a gradient.
    pub fn step(&mut self, params: &ParamSet, grads: &Grads) -> Result<()> {
        self.check(params, grads)?;
        for (i, (var, g)) in params.vars().iter().zip(&grads.grads).enumerate() {
            if let Some(g) = g {
                self.step_param(i, var, g)?;
            }
        }
        Ok(())
    }

    /// Fails unless there is one gradient slot and one state per parameter.
    pub fn check(&self, params: &ParamSet, grads: &Grads) -> Result<()> {
        if grads.grads.len() != params.len() || self.state.len() != params.len() {
            bail!(
                "optimizer: {} gradients / {} states for {} parameters",
                grads.grads.len(),
                self.state.len(),
                params.len()
            );
        }
        Ok(())
    }

    /// [`step_param`](Self::step_param) fused with the EMA updates `emas` (`(average, rate,
    /// 1 - rate)` of this parameter) and the parameter's sum of squares before the update, in
    /// one pass over the values (`kernels::update::adamw_ema_step`; the same bits as the
    /// three separately). Returns the sum of squares, or `None` with nothing done where the
    /// fast kernels do not apply.
    pub fn step_param_fused(
        &mut self,
        i: usize,
        var: &Var,
        g: &Tensor,
        emas: &[(&Tensor, f32, f32)],
    ) -> Result<Option<f64>> {
        let c = self.config;
        let Some(st) = self.state.get_mut(i) else {
            bail!("optimizer: no state for parameter {i} of {}", self.state.len());
        };
        let t = (st.step + 1) as i32;
        let bias_correction1 = 1.0 - c.beta1.powi(t);
        let bias_correction2 = 1.0 - c.beta2.powi(t);
        let consts = update::AdamConsts {
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            step: update::AdamStep {
                decay: (c.weight_decay != 0.0).then_some((1.0 - c.lr * c.weight_decay) as f32),
                bc2_sqrt: bias_correction2.sqrt() as f32,
                eps: c.eps as f32,
                step_size: (c.lr / bias_correction1) as f32,
            },
        };
        let done = update::adamw_ema_step(
            &self.policy,
            var.as_tensor(),
            &g.detach(),
            &st.exp_avg,
            &st.exp_avg_sq,
            emas,
            consts,
        )?;
        if done.is_some() {
            st.step += 1;
        }
        Ok(done)
    }

    /// The update of parameter `i` (`var`, in [`ParamSet`] order) with its gradient `g`: what
    /// [`AdamW::step`] does for each parameter, so that a caller can interleave other passes
    /// over the same parameter while it is in cache (the trainer's EMA and norm).
    pub fn step_param(&mut self, i: usize, var: &Var, g: &Tensor) -> Result<()> {
        let (c, policy) = (self.config, self.policy);
        let Some(st) = self.state.get_mut(i) else {
            bail!("optimizer: no state for parameter {i} of {}", self.state.len());
        };
        // Everything detached: gradients record the forward graph they came from, and a
        // moment estimate that recorded its inputs would keep every step's graph alive.
        let g = &g.detach();
        st.step += 1;
        let t = st.step as i32;
        let bias_correction1 = 1.0 - c.beta1.powi(t);
        let bias_correction2 = 1.0 - c.beta2.powi(t);
        let step_size = c.lr / bias_correction1;
        if kernels::update::applies(&policy, &[var.as_tensor(), g, &st.exp_avg, &st.exp_avg_sq]) {
            // The same f32 operations as below, in one in-place pass per tensor.
            st.exp_avg
                .inplace_op2(g, &update::FirstMoment { one_minus_beta1: (1.0 - c.beta1) as f32 })?;
            st.exp_avg_sq.inplace_op2(
                g,
                &update::SecondMoment {
                    beta2: c.beta2 as f32,
                    one_minus_beta2: (1.0 - c.beta2) as f32,
                },
            )?;
            let step = update::AdamStep {
                decay: (c.weight_decay != 0.0).then_some((1.0 - c.lr * c.weight_decay) as f32),
                bc2_sqrt: bias_correction2.sqrt() as f32,
                eps: c.eps as f32,
                step_size: step_size as f32,
            };
            var.as_tensor().inplace_op3(&st.exp_avg, &st.exp_avg_sq, &step)?;
            return Ok(());
        }
        let mut p = var.as_tensor().detach();
        if c.weight_decay != 0.0 {
            p = p.affine(1.0 - c.lr * c.weight_decay, 0.0)?;
        }
        let m = (&st.exp_avg + (g - &st.exp_avg)?.affine(1.0 - c.beta1, 0.0)?)?;
        let v = (st.exp_avg_sq.affine(c.beta2, 0.0)? + (g.affine(1.0 - c.beta2, 0.0)? * g)?)?;
        let bc2_sqrt =
            Tensor::new(bias_correction2.sqrt() as f32, v.device())?.to_dtype(v.dtype())?;
        let denom = v.sqrt()?.broadcast_div(&bc2_sqrt)?.affine(1.0, c.eps)?;
        let p = (p - (&m / &denom)?.affine(step_size, 0.0)?)?;
        var.set(&p)?;
        st.exp_avg = m.detach();
        st.exp_avg_sq = v.detach();
        Ok(())
    }

    /// `exp_avg.NAME`, `exp_avg_sq.NAME`, `step.NAME` (i64 scalar) tensors for a checkpoint.
    pub fn state_tensors(&self, params: &ParamSet) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(3 * self.state.len());
        for (name, st) in params.names().iter().zip(&self.state) {
            out.push((format!("exp_avg.{name}"), st.exp_avg.clone()));
            out.push((format!("exp_avg_sq.{name}"), st.exp_avg_sq.clone()));
            out.push((
                format!("step.{name}"),
                Tensor::new(&[st.step as i64], &candle_core::Device::Cpu)?,
            ));
        }
        Ok(out)
    }

    /// Restores what [`AdamW::state_tensors`] wrote; `source` names the file in errors.
    pub fn load_state_tensors(
        &mut self,
        params: &ParamSet,
        t: &HashMap<String, Tensor>,
        source: &str,
    ) -> Result<()> {
        let mut state = Vec::with_capacity(params.len());
        for (name, var) in params.names().iter().zip(params.vars()) {
            let get = |k: String| -> Result<Tensor> {
                match t.get(&k) {
                    Some(v) => Ok(v.clone()),
                    None => bail!("{source}: missing optimizer tensor {k}"),
                }
            };
            let m = get(format!("exp_avg.{name}"))?;
            let v = get(format!("exp_avg_sq.{name}"))?;
            if m.dims() != var.dims() || v.dims() != var.dims() {
                bail!(
                    "{source}: optimizer state of {name} has shape {:?}, parameter {:?}",
                    m.dims(),
                    var.dims()
                );
            }
            let step = get(format!("step.{name}"))?.flatten_all()?.to_vec1::<i64>()?;
            let step = match step.as_slice() {
                [s] if *s >= 0 => *s as u64,
                _ => bail!("{source}: step.{name} must hold one non-negative integer"),
            };
            // Own copies: the moments are updated in place.
            state.push(AdamState {
                exp_avg: m.to_dtype(var.dtype())?.to_device(var.device())?.copy()?,
                exp_avg_sq: v.to_dtype(var.dtype())?.to_device(var.device())?.copy()?,
                step,
            });
        }
        self.state = state;
        Ok(())
    }
}
