//! The trainable parameters as an ordered list of named `Var`s, and gradients accumulated over
//! micro-batches in the same order.
//!
//! Why a list sorted by name: the optimizer state, the EMA copies and every checkpoint file
//! refer to parameters by name, and a fixed order makes norms and updates deterministic.
use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use crate::kernels::KernelPolicy;
use crate::{bail, Result};

/// Named trainable tensors, sorted by name.
#[derive(Clone)]
pub struct ParamSet {
    names: Vec<String>,
    vars: Vec<Var>,
}

impl ParamSet {
    /// All variables of a `VarMap` (what `VarBuilder::from_varmap` created while building a model).
    pub fn from_varmap(vm: &VarMap) -> Self {
        let data = vm.data().lock().unwrap_or_else(|p| p.into_inner());
        let mut named: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        drop(data);
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, vars) = named.into_iter().unzip();
        Self { names, vars }
    }

    /// From explicit `(name, var)` pairs; names must be unique.
    pub fn new(mut named: Vec<(String, Var)>) -> Result<Self> {
        named.sort_by(|a, b| a.0.cmp(&b.0));
        for w in named.windows(2) {
            if w[0].0 == w[1].0 {
                bail!("parameter name {} appears twice", w[0].0);
            }
        }
        let (names, vars) = named.into_iter().unzip();
        Ok(Self { names, vars })
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }
    pub fn names(&self) -> &[String] {
        &self.names
    }
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }
    /// Current values (cheap clones sharing storage with the vars at this moment).
    pub fn tensors(&self) -> Vec<Tensor> {
        self.vars.iter().map(|v| v.as_tensor().clone()).collect()
    }
    /// `(name, value)` pairs, e.g. for a checkpoint.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.names.iter().cloned().zip(self.tensors()).collect()
    }

    /// Sets every parameter from `values` (by name); `source` names the file in errors.
    /// Missing keys, extra keys and shape mismatches are errors.
    pub fn load_from(&self, values: &HashMap<String, Tensor>, source: &str) -> Result<()> {
        for (name, var) in self.names.iter().zip(&self.vars) {
            let Some(t) = values.get(name) else {
                bail!("{source}: missing parameter {name}");
            };
            if t.dims() != var.dims() {
                bail!(
                    "{source}: parameter {name} has shape {:?}, the model expects {:?}",
                    t.dims(),
                    var.dims()
                );
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        if let Some(extra) = values.keys().find(|k| !self.names.contains(k)) {
            bail!("{source}: unexpected parameter {extra} (not in the model)");
        }
        Ok(())
    }

    /// Squared L2 norm over all parameters (f32 sums per tensor, added in f64).
    pub fn sq_norm(&self, policy: &KernelPolicy) -> Result<f64> {
        sq_norm(policy, self.vars.iter().map(|v| v.as_tensor()))
    }
}

/// Sum of squares of tensors, each reduced on its device in f32 and added up in f64 (on the CPU
/// with the fast kernels in one pass with f32 partial sums per block, see
/// `kernels::update::sum_sq`).
pub fn sq_norm<'a>(policy: &KernelPolicy, ts: impl Iterator<Item = &'a Tensor>) -> Result<f64> {
    let mut acc = 0f64;
    for t in ts {
        acc += match crate::kernels::update::sum_sq(policy, t) {
            Some(s) => s,
            None => {
                t.to_dtype(candle_core::DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64
            }
        };
    }
    Ok(acc)
}

/// Gradients in [`ParamSet`] order; `None` where a parameter got no gradient.
#[derive(Clone)]
pub struct Grads {
    pub grads: Vec<Option<Tensor>>,
}

impl Grads {
    pub fn empty(n: usize) -> Self {
        Self { grads: vec![None; n] }
    }

    /// Adds the gradients of one backward pass.
    pub fn accumulate(&mut self, params: &ParamSet, store: &GradStore) -> Result<()> {
        for (slot, var) in self.grads.iter_mut().zip(params.vars()) {
            if let Some(g) = store.get(var.as_tensor()) {
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g.clone(),
                });
            }
        }
        Ok(())
    }

    /// Squared L2 norm of all present gradients.
    pub fn sq_norm(&self, policy: &KernelPolicy) -> Result<f64> {
        sq_norm(policy, self.grads.iter().flatten())
    }
}
