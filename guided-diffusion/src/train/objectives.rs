//! The two objectives the reference trains: the diffusion loss (`training_losses` with a
//! schedule sampler, for the UNet and the super-resolution UNet) and the noisy-image
//! classifier's cross-entropy (`classifier_train.py`). Both draw every random number from the
//! step's stream, so a resumed run continues identically.
use std::collections::HashMap;

use candle_core::{DType, Tensor, D};

use super::objective::{randn, Losses, Objective, StepContext};
use crate::data::Batch;
use crate::diffusion::{GaussianDiffusion, ScheduleSampler};
use crate::models::Net;
use crate::{bail, Result};

const SAMPLER_STATE: &str = "schedule_sampler";

fn sampler_state(s: &dyn ScheduleSampler) -> Result<Vec<(String, Tensor)>> {
    let v = s.state();
    if v.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![(SAMPLER_STATE.to_string(), Tensor::new(v, &candle_core::Device::Cpu)?)])
}

fn load_sampler_state(s: &mut dyn ScheduleSampler, state: &HashMap<String, Tensor>) -> Result<()> {
    match state.get(SAMPLER_STATE) {
        Some(t) => s.load_state(&t.to_dtype(DType::F64)?.to_vec1::<f64>()?),
        None => Ok(()),
    }
}

/// `[n]` f32 tensor of `values` on the batch's device.
fn vec_tensor(values: &[f32], like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::new(values, like.device())?)
}

/// Every rank's timesteps and losses of the micro-batch, in rank order (the reference's
/// `update_with_local_losses` all-gather), so that a loss-aware schedule sampler has the same
/// history on every rank. One process: its own.
fn gather_losses(
    dist: &dyn crate::dist::Distributed,
    t: &[usize],
    losses: &[f64],
) -> Result<(Vec<usize>, Vec<f64>)> {
    if dist.world_size() == 1 {
        return Ok((t.to_vec(), losses.to_vec()));
    }
    let mine: Vec<f64> = t.iter().map(|&v| v as f64).chain(losses.iter().copied()).collect();
    let (mut t_all, mut l_all) = (Vec::new(), Vec::new());
    for part in dist.all_gather_bytes(&crate::dist::f64s_to_bytes(&mine))? {
        let v = crate::dist::bytes_to_f64s(&part)?;
        let n = v.len() / 2;
        t_all.extend(v[..n].iter().map(|&x| x as usize));
        l_all.extend_from_slice(&v[n..]);
    }
    Ok((t_all, l_all))
}

/// Label dropout for classifier-free guidance (Ho & Salimans 2022), in DiT's convention
/// (`LabelEmbedder.token_drop`): each training sample's label is replaced by the null class
/// with probability `prob`. The null class is the last row of the label embedding, so a model
/// trained on K classes has `num_classes = K + 1` and `null_class = K`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelDropout {
    pub prob: f64,
    pub null_class: usize,
}

/// What [`per_row_draws`] draws for each sample.
struct RowDraws {
    t: Vec<usize>,
    weights: Vec<f32>,
    noise: Tensor,
    /// Samples whose label is replaced by the null class (all false without label dropout).
    dropped: Vec<bool>,
}

/// Timestep, importance weight, noise and (with label dropout) the drop decision of every
/// sample of `x0`, each sample drawn from its own [`StepContext::row_rng`] in that order, so
/// the draws do not depend on the rank / micro-batch split. Without dropout nothing more is
/// drawn, so runs without it are unchanged.
fn per_row_draws(
    sampler: &dyn ScheduleSampler,
    ctx: &StepContext<'_>,
    x0: &Tensor,
    dropout: Option<LabelDropout>,
) -> Result<RowDraws> {
    let n = x0.dims()[0];
    let row_shape: Vec<usize> = std::iter::once(1).chain(x0.dims()[1..].iter().copied()).collect();
    let (mut t, mut weights, mut noise, mut dropped) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), vec![false; n]);
    for (i, drop) in dropped.iter_mut().enumerate() {
        let mut rng = ctx.row_rng(i);
        let (ti, wi) = sampler.sample(1, &mut rng);
        t.extend(ti);
        weights.extend(wi);
        noise.push(randn(&mut rng, &row_shape, &candle_core::Device::Cpu)?);
        if let Some(d) = dropout {
            // `torch.rand(n) < dropout_prob`.
            *drop = rand::Rng::gen::<f64>(&mut rng) < d.prob;
        }
    }
    let noise = Tensor::cat(&noise, 0)?.to_device(x0.device())?;
    Ok(RowDraws { t, weights, noise, dropped })
}

/// `labels` with the dropped samples' labels replaced by the null class.
fn drop_labels(labels: &Tensor, dropped: &[bool], null_class: usize) -> Result<Tensor> {
    if !dropped.iter().any(|&d| d) {
        return Ok(labels.clone());
    }
    let ys: Vec<i64> = labels.to_dtype(DType::I64)?.to_vec1()?;
    if ys.len() != dropped.len() {
        bail!("{} labels for a batch of {}", ys.len(), dropped.len());
    }
    let ys: Vec<i64> =
        ys.iter().zip(dropped).map(|(&y, &d)| if d { null_class as i64 } else { y }).collect();
    Ok(Tensor::new(ys, labels.device())?.to_dtype(labels.dtype())?)
}

/// The diffusion training objective: `t ~ schedule sampler`, `noise ~ N(0, I)`,
/// `training_losses(model, x_0, t, noise)`; loss-aware samplers are fed the per-t losses.
pub struct DiffusionObjective {
    pub net: Net,
    pub diffusion: GaussianDiffusion,
    pub sampler: Box<dyn ScheduleSampler>,
    /// Super-resolution: the low-resolution side; the conditioning image is the batch
    /// area-downsampled to it (`F.interpolate(mode="area")`, as `super_res_train.py`).
    pub small_size: Option<usize>,
    /// Classifier-free guidance training: labels replaced by the null class at random.
    pub label_dropout: Option<LabelDropout>,
}

impl Objective for DiffusionObjective {
    fn losses(&mut self, batch: &Batch, ctx: &mut StepContext<'_>) -> Result<Losses> {
        let x0 = &batch.images;
        let RowDraws { t, weights, noise, dropped } =
            per_row_draws(self.sampler.as_ref(), ctx, x0, self.label_dropout)?;
        let y = if self.net.takes_labels() {
            match (&batch.labels, self.label_dropout) {
                (Some(l), Some(d)) => Some(drop_labels(l, &dropped, d.null_class)?),
                (Some(l), None) => Some(l.clone()),
                (None, _) => bail!("the model is class-conditional but the data has no labels (file names need a class prefix)"),
            }
        } else {
            None
        };
        let low_res = match self.small_size {
            Some(s) => {
                let (_, _, h, _) = x0.dims4()?;
                if s == 0 || h % s != 0 {
                    bail!("--small_size {s} must divide --large_size {h}");
                }
                Some(x0.avg_pool2d(h / s)?)
            }
            None => None,
        };
        self.net.set_training(ctx.train);
        let net = &self.net;
        let model = |x: &Tensor, tt: &Tensor| net.forward(x, tt, y.as_ref(), low_res.as_ref());
        let tl = self.diffusion.training_losses(&model, x0, &t, &noise)?;
        self.net.set_training(false);
        if ctx.train {
            let losses: Vec<f64> = tl.loss.to_dtype(DType::F64)?.to_vec1()?;
            let (t_all, l_all) = gather_losses(ctx.dist, &t, &losses)?;
            self.sampler.update_with_losses(&t_all, &l_all)?;
        }
        let mut terms = vec![("loss".to_string(), tl.loss.detach())];
        if let Some(m) = &tl.mse {
            terms.push(("mse".into(), m.detach()));
        }
        if let Some(v) = &tl.vb {
            terms.push(("vb".into(), v.detach()));
        }
        Ok(Losses {
            weights: Some(vec_tensor(&weights, x0)?),
            loss: tl.loss,
            terms,
            timesteps: Some((
                t.iter().map(|&v| v as i64).collect(),
                self.diffusion.num_timesteps(),
            )),
        })
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        sampler_state(self.sampler.as_ref())
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        load_sampler_state(self.sampler.as_mut(), state)
    }
}

/// The noisy classifier's objective: with `noised`, `t ~ schedule sampler` and
/// `x_t = q_sample(x_0, t)`; cross-entropy of `classifier(x_t, t)` against the labels, and
/// top-1 / top-5 accuracy (`{train,val}_loss`, `_acc@1`, `_acc@5`).
pub struct ClassifierObjective {
    pub net: Net,
    pub diffusion: GaussianDiffusion,
    pub sampler: Box<dyn ScheduleSampler>,
    pub noised: bool,
}

impl Objective for ClassifierObjective {
    fn losses(&mut self, batch: &Batch, ctx: &mut StepContext<'_>) -> Result<Losses> {
        let Some(labels) = &batch.labels else {
            bail!("classifier training needs labels (file names need a class prefix before '_')");
        };
        let n = batch.len();
        let (x, t) = if self.noised {
            let RowDraws { t, noise, .. } =
                per_row_draws(self.sampler.as_ref(), ctx, &batch.images, None)?;
            (self.diffusion.q_sample(&batch.images, &t, &noise)?, t)
        } else {
            (batch.images.clone(), vec![0; n])
        };
        // classifier_train.py passes the raw timesteps (no respacing map, no rescaling).
        let t_model = Tensor::from_iter(t.iter().map(|&v| v as f32), x.device())?;
        self.net.set_training(ctx.train);
        let logits = self.net.forward(&x, &t_model, None, None);
        self.net.set_training(false);
        let logits = logits?;
        let labels = labels.to_dtype(DType::U32)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let loss = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
        let prefix = if ctx.train { "train" } else { "val" };
        let mut terms = vec![(format!("{prefix}_loss"), loss.detach())];
        for k in [1usize, 5] {
            terms.push((format!("{prefix}_acc@{k}"), top_k_hits(&logits, &labels, k)?));
        }
        Ok(Losses {
            loss,
            weights: None,
            terms,
            timesteps: self
                .noised
                .then(|| (t.iter().map(|&v| v as i64).collect(), self.diffusion.num_timesteps())),
        })
    }
}

/// 1.0 where the label is among the `k` largest logits, else 0.0 (`compute_top_k`).
pub fn top_k_hits(logits: &Tensor, labels: &Tensor, k: usize) -> Result<Tensor> {
    let l: Vec<Vec<f32>> = logits.detach().to_dtype(DType::F32)?.to_vec2()?;
    let y: Vec<u32> = labels.to_vec1()?;
    let hits: Vec<f32> = l
        .iter()
        .zip(&y)
        .map(|(row, &c)| {
            let target = row[c as usize];
            // Rank = number of logits strictly above the target's.
            let above = row.iter().filter(|&&v| v > target).count();
            if above < k {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    vec_tensor(&hits, logits)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::diffusion::UniformSampler;

    fn draws(step: u64, dropout: Option<LabelDropout>) -> RowDraws {
        let mut rng = crate::data::rng::stream(5, crate::data::rng::domain::STEP, step);
        let ctx = StepContext {
            step,
            rng: &mut rng,
            train: true,
            device: &Device::Cpu,
            row_key: super::super::objective::row_key(5, crate::data::rng::domain::STEP, step),
            first_row: 0,
            dist: &crate::dist::SingleProcess,
        };
        let x0 = Tensor::zeros((16, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
        per_row_draws(&UniformSampler::new(1000), &ctx, &x0, dropout).unwrap()
    }

    /// The dropped fraction matches P, the draws are a function of (seed, step, row) only, and
    /// dropout draws nothing the runs without it would see.
    #[test]
    fn label_dropout_fraction_and_determinism() {
        let d = LabelDropout { prob: 0.1, null_class: 10 };
        let mut dropped = 0usize;
        let mut total = 0usize;
        for step in 0..500 {
            let a = draws(step, Some(d));
            let b = draws(step, Some(d));
            assert_eq!(a.dropped, b.dropped);
            let plain = draws(step, None);
            assert_eq!(a.t, plain.t, "timesteps unchanged by dropout");
            let same = (&a.noise - &plain.noise).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(same.to_scalar::<f32>().unwrap(), 0.0, "noise unchanged by dropout");
            assert!(!plain.dropped.iter().any(|&x| x));
            dropped += a.dropped.iter().filter(|&&x| x).count();
            total += a.dropped.len();
        }
        // 8000 draws of p = 0.1: standard deviation 0.0034.
        let frac = dropped as f64 / total as f64;
        assert!((frac - 0.1).abs() < 0.015, "dropped fraction {frac}");
        let labels = Tensor::new(&[1u32, 2, 3], &Device::Cpu).unwrap();
        let out = drop_labels(&labels, &[false, true, false], 10).unwrap();
        assert_eq!(out.to_vec1::<u32>().unwrap(), vec![1, 10, 3]);
    }
}
