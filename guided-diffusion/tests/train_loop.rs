//! The generic training loop on a toy problem (linear regression, candle_nn::Linear, made-up
//! data through the real threaded loader): the loss falls; an interrupted and resumed run ends
//! bit-identical to an uninterrupted one; non-finite steps are skipped and repeated ones stop
//! the run; micro-batch scaling follows the reference; checkpoints and logs are as specified.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use guided_diffusion::data::rng::StreamRng;
use guided_diffusion::data::{Batch, ClassList, Dataset, Item, Loader, LoaderConfig};
use guided_diffusion::train::ckpt::{self, meta};
use guided_diffusion::train::logger::{format_g, timestamp_dir_name};
use guided_diffusion::train::{
    randn, Logger, Losses, MicroScaling, Objective, ParamSet, StepContext, StepOutcome,
    TrainConfig, TrainLoop,
};
use rand::Rng;

const D: usize = 4;
const W_TRUE: [f32; D] = [0.5, -1.0, 2.0, 0.25];
const B_TRUE: f32 = 0.3;

/// 64 made-up input vectors, served as [4, 1, 1] "images" with made-up class labels.
struct ToyData {
    xs: Vec<[f32; D]>,
    classes: ClassList,
}

impl ToyData {
    fn shared() -> Arc<dyn Dataset> {
        let mut rng = guided_diffusion::data::rng::stream(99, 0, 0);
        let xs = (0..64).map(|_| std::array::from_fn(|_| rng.gen_range(-1.0f32..1.0))).collect();
        Arc::new(Self { xs, classes: ClassList::new(vec!["a".into(), "b".into()]) })
    }
}

impl Dataset for ToyData {
    fn len(&self) -> usize {
        self.xs.len()
    }
    fn channels(&self) -> usize {
        D
    }
    fn image_size(&self) -> usize {
        1
    }
    fn classes(&self) -> Option<&ClassList> {
        Some(&self.classes)
    }
    fn get(&self, index: usize, _rng: &mut StreamRng) -> guided_diffusion::Result<Item> {
        Ok(Item { pixels: self.xs[index].to_vec(), label: Some((index % 2) as u32) })
    }
}

/// Squared error of a Linear(4 -> 1) against W_TRUE x + B_TRUE + noise from the step's stream.
/// Keeps a call counter as resumable objective state; can be told to return NaN.
struct ToyObjective {
    model: candle_nn::Linear,
    calls: u64,
    nan_at_steps: Vec<u64>,
    noise_scale: f64,
}

impl Objective for ToyObjective {
    fn losses(
        &mut self,
        batch: &Batch,
        ctx: &mut StepContext<'_>,
    ) -> guided_diffusion::Result<Losses> {
        self.calls += 1;
        let n = batch.len();
        let x = batch.images.flatten_from(1)?;
        let w = Tensor::new(&W_TRUE, ctx.device)?.reshape((D, 1))?;
        let noise = (randn(ctx.rng, &[n, 1], ctx.device)? * self.noise_scale)?;
        let y = ((x.matmul(&w)? + B_TRUE as f64)? + noise)?;
        let pred = self.model.forward(&x)?;
        let mut loss = (pred - y)?.sqr()?.sum(1)?;
        if self.nan_at_steps.contains(&ctx.step) {
            loss = (loss * f64::NAN)?;
        }
        let ts: Vec<i64> = (0..n).map(|_| ctx.rng.gen_range(0..1000)).collect();
        Ok(Losses {
            loss: loss.clone(),
            weights: None,
            terms: vec![("loss".into(), loss)],
            timesteps: Some((ts, 1000)),
        })
    }
    fn state(&self) -> guided_diffusion::Result<Vec<(String, Tensor)>> {
        Ok(vec![("calls".into(), Tensor::new(&[self.calls as i64], &Device::Cpu)?)])
    }
    fn load_state(&mut self, s: &HashMap<String, Tensor>) -> guided_diffusion::Result<()> {
        self.calls = s["calls"].to_vec1::<i64>()?[0] as u64;
        Ok(())
    }
}

/// A fresh model with fixed initial weights, its objective and parameters.
fn toy_model() -> (ToyObjective, ParamSet) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let model = candle_nn::linear(D, 1, vb.pp("lin")).unwrap();
    let params = ParamSet::from_varmap(&vm);
    let init: HashMap<String, Tensor> = [
        (
            "lin.weight".to_string(),
            Tensor::new(&[[0.1f32, 0.2, -0.3, 0.05]], &Device::Cpu).unwrap(),
        ),
        ("lin.bias".to_string(), Tensor::new(&[0.0f32], &Device::Cpu).unwrap()),
    ]
    .into_iter()
    .collect();
    params.load_from(&init, "init").unwrap();
    (ToyObjective { model, calls: 0, nan_at_steps: vec![], noise_scale: 0.01 }, params)
}

fn config(dir: &Path, max_steps: u64) -> TrainConfig {
    let mut cfg = TrainConfig::new(4, 0.05, dir);
    cfg.microbatch = 2;
    cfg.max_steps = Some(max_steps);
    cfg.anneal_steps = 20;
    cfg.ema_rates = vec![0.9999, 0.99];
    cfg.log_interval = 5;
    cfg.save_interval = 5;
    cfg.seed = 1234;
    cfg.config_json = r#"{"toy":true}"#.into();
    cfg
}

fn loader(seed: u64) -> Loader {
    let mut lc = LoaderConfig::new(4, seed);
    lc.workers = 2;
    Loader::new(ToyData::shared(), lc).unwrap()
}

fn new_loop(dir: &Path, max_steps: u64) -> TrainLoop<ToyObjective> {
    let (obj, params) = toy_model();
    let mut logger = Logger::open(dir, 0).unwrap();
    logger.progress_line = false;
    TrainLoop::new(config(dir, max_steps), params, obj, logger).unwrap()
}

fn bits(ts: &[Tensor]) -> Vec<u32> {
    ts.iter()
        .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .map(f32::to_bits)
        .collect()
}

fn snapshot(l: &TrainLoop<ToyObjective>) -> (Vec<u32>, Vec<Vec<u32>>, Vec<u32>, Vec<u64>) {
    let opt: Vec<Tensor> =
        l.opt.state().iter().flat_map(|s| [s.exp_avg.clone(), s.exp_avg_sq.clone()]).collect();
    (
        bits(&l.params.tensors()),
        l.emas.iter().map(|e| bits(&e.params)).collect(),
        bits(&opt),
        l.opt.state().iter().map(|s| s.step).collect(),
    )
}

#[test]
fn train_loop_loss_falls_on_toy_regression() {
    let tmp = tempfile::tempdir().unwrap();
    let (obj, params) = toy_model();
    let mut cfg = config(tmp.path(), 60);
    cfg.anneal_steps = 0;
    cfg.save_interval = 1000;
    let mut lp = TrainLoop::new(cfg, params, obj, Logger::null()).unwrap();
    let mut data = loader(5);
    let mut losses = Vec::new();
    use guided_diffusion::data::BatchSource;
    for _ in 0..60 {
        match lp.run_step(&data.next_batch().unwrap()).unwrap() {
            StepOutcome::Taken { loss, .. } => losses.push(loss),
            StepOutcome::Skipped => panic!("no step should be skipped"),
        }
    }
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[55..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.05 * first, "loss did not fall: first {first}, last {last}");
}

#[test]
fn train_loop_resume_is_bit_identical() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();

    // Uninterrupted: 20 steps.
    let mut a = new_loop(a_dir.path(), 20);
    a.run(&mut loader(7), None).unwrap();
    assert_eq!(a.step(), 20);

    // Interrupted after 10 steps (checkpoint at 10), then a new process resumes from the log dir.
    let mut b = new_loop(b_dir.path(), 10);
    b.run(&mut loader(7), None).unwrap();
    drop(b);
    let mut b2 = new_loop(b_dir.path(), 20);
    let from = b2.resume(None).unwrap().expect("a checkpoint to resume from");
    assert_eq!(from.file_name().unwrap(), "model000010.safetensors");
    assert_eq!(b2.step(), 10);
    assert_eq!(b2.objective.calls, 20, "objective state restored (2 micro-batches x 10 steps)");
    b2.run(&mut loader(7), None).unwrap();

    assert_eq!(b2.step(), 20);
    assert_eq!(b2.objective.calls, a.objective.calls);
    let (pa, ea, oa, sa) = snapshot(&a);
    let (pb, eb, ob, sb) = snapshot(&b2);
    assert_eq!(pa, pb, "parameters differ after resume");
    assert_eq!(ea, eb, "EMA parameters differ after resume");
    assert_eq!(oa, ob, "optimizer moments differ after resume");
    assert_eq!(sa, sb);
    // And the checkpoint files of the two runs hold identical tensors and metadata at step 20.
    for name in [
        "model000020.safetensors",
        "ema_0.9999_000020.safetensors",
        "ema_0.99_000020.safetensors",
        "opt000020.safetensors",
    ] {
        let (x, mx) = ckpt::load_safetensors(&a_dir.path().join(name), &Device::Cpu).unwrap();
        let (y, my) = ckpt::load_safetensors(&b_dir.path().join(name), &Device::Cpu).unwrap();
        assert_eq!(mx, my, "{name}: metadata differs");
        let mut keys: Vec<_> = x.keys().collect();
        keys.sort();
        for k in keys {
            let (a, b) = (x[k].flatten_all().unwrap(), y[k].flatten_all().unwrap());
            let eq = a
                .eq(&b)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(eq as usize, a.elem_count(), "{name}: {k} differs");
        }
    }
    // Training changed the parameters, and the two EMA rates differ from each other.
    assert_ne!(pa, bits(&toy_model().1.tensors()));
    assert_ne!(ea[0], ea[1]);
}

#[test]
fn train_loop_skips_non_finite_steps_and_stops_after_repeats() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut obj, params) = toy_model();
    obj.nan_at_steps = vec![2];
    let mut cfg = config(tmp.path(), 100);
    cfg.max_consecutive_nonfinite = 3;
    let mut lp = TrainLoop::new(cfg, params, obj, Logger::null()).unwrap();
    let mut data = loader(3);
    use guided_diffusion::data::BatchSource;
    for _ in 0..2 {
        assert!(matches!(
            lp.run_step(&data.next_batch().unwrap()).unwrap(),
            StepOutcome::Taken { .. }
        ));
    }
    let before = snapshot(&lp);
    assert_eq!(lp.run_step(&data.next_batch().unwrap()).unwrap(), StepOutcome::Skipped);
    assert_eq!(snapshot(&lp), before, "a skipped step must not touch parameters, EMA or optimizer");
    assert_eq!(lp.step(), 3);
    assert_eq!(lp.skipped_total(), 1);
    assert!(matches!(lp.run_step(&data.next_batch().unwrap()).unwrap(), StepOutcome::Taken { .. }));
    let p = bits(&lp.params.tensors());
    assert!(p.iter().all(|b| f32::from_bits(*b).is_finite()));

    // Every step NaN: the third in a row stops the run with a clear error; a checkpoint written
    // meanwhile (step 5) holds the last good, finite parameters.
    lp.objective.nan_at_steps = (0..1000).collect();
    let err = lp.run(&mut data, None).unwrap_err().to_string();
    assert!(err.contains("3 consecutive steps") && err.contains("non-finite"), "{err}");
    assert_eq!(lp.step(), 7);
    let saved = ckpt::find_latest_checkpoint(tmp.path()).unwrap().unwrap();
    let (t, _) = ckpt::load_safetensors(&saved, &Device::Cpu).unwrap();
    assert_eq!(bits(&[t["lin.bias"].clone(), t["lin.weight"].clone()]), p); // ParamSet order: by name
    for f in std::fs::read_dir(tmp.path()).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }

    // Parameters that went NaN are never saved.
    lp.params.vars()[0].set(&Tensor::new(&[f32::NAN], &Device::Cpu).unwrap()).unwrap();
    let err = lp.save().unwrap_err().to_string();
    assert!(err.contains("not finite"), "{err}");
    assert!(std::fs::read_dir(tmp.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("model")));
}

#[test]
fn train_loop_microbatch_scaling_follows_the_reference() {
    let grad_norm = |microbatch: usize, scaling: MicroScaling| {
        let (mut obj, params) = toy_model();
        obj.noise_scale = 0.0; // same targets however the batch is split
        let mut cfg = config(Path::new("/nonexistent"), 1);
        cfg.microbatch = microbatch;
        cfg.micro_scaling = scaling;
        let mut lp = TrainLoop::new(cfg, params, obj, Logger::null()).unwrap();
        use guided_diffusion::data::BatchSource;
        let batch = loader(11).next_batch().unwrap();
        match lp.run_step(&batch).unwrap() {
            StepOutcome::Taken { grad_norm, .. } => grad_norm,
            StepOutcome::Skipped => panic!(),
        }
    };
    let whole = grad_norm(0, MicroScaling::SumOfMicroMeans);
    // image_train.py: two micro-batch means summed -> twice the batch-mean gradient.
    let summed = grad_norm(2, MicroScaling::SumOfMicroMeans);
    // classifier_train.py: weighted by len(micro) / len(batch) -> the batch-mean gradient.
    let weighted = grad_norm(2, MicroScaling::BatchMean);
    assert!((summed - 2.0 * whole).abs() < 1e-5 * whole, "{summed} vs 2 x {whole}");
    assert!((weighted - whole).abs() < 1e-5 * whole, "{weighted} vs {whole}");
}

#[test]
fn train_checkpoints_and_logs_are_as_specified() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut lp = new_loop(dir, 12);
    lp.run(&mut loader(1), None).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for want in [
        "classes.json",
        "ema_0.99_000005.safetensors",
        "ema_0.9999_000010.safetensors",
        "ema_0.9999_000012.safetensors",
        "log.txt",
        "model000005.safetensors",
        "model000010.safetensors",
        "model000012.safetensors",
        "opt000012.safetensors",
        "progress.csv",
    ] {
        assert!(names.contains(&want.to_string()), "{want} missing from {names:?}");
    }
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "temp files left: {names:?}");
    let latest = ckpt::find_latest_checkpoint(dir).unwrap().unwrap();
    assert_eq!(ckpt::parse_step_from_filename(&latest), Some(12));
    let (tensors, md) = ckpt::load_safetensors(&latest, &Device::Cpu).unwrap();
    assert_eq!(tensors.len(), 2);
    assert_eq!(md[meta::STEP], "12");
    assert_eq!(md[meta::KIND], "model");
    assert_eq!(md[meta::CONFIG], r#"{"toy":true}"#);
    assert_eq!(md[meta::CLASSES], r#"["a","b"]"#);
    assert_eq!(ClassList::load(dir.join("classes.json")).unwrap().names, ["a", "b"]);
    let (_, emd) =
        ckpt::load_safetensors(&dir.join("ema_0.99_000012.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(emd[meta::EMA_RATE], "0.99");

    let csv = std::fs::read_to_string(dir.join("progress.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    for key in [
        "grad_norm",
        "loss",
        "loss_q0",
        "loss_q3",
        "lr",
        "param_norm",
        "samples",
        "step",
        "steps_per_sec",
    ] {
        assert!(header.contains(&key), "{key} missing from progress.csv header {header:?}");
    }
    assert_eq!(csv.lines().count(), 1 + 2, "two dumps (steps 5 and 10)");
    let row: Vec<&str> = csv.lines().nth(2).unwrap().split(',').collect();
    let col = |k: &str| row[header.iter().position(|h| *h == k).unwrap()];
    assert_eq!(col("step"), "10");
    assert_eq!(col("samples"), "40");
    let log = std::fs::read_to_string(dir.join("log.txt")).unwrap();
    assert!(log.contains("| loss") && log.contains("saving model"), "{log}");

    // `%g` as the reference's table, and the reference's default directory name.
    assert_eq!(format_g(0.000123456, 3), "0.000123");
    assert_eq!(format_g(1234.5, 3), "1.23e+03");
    assert_eq!(format_g(12.0, 3), "12");
    assert_eq!(format_g(0.5, 3), "0.5");
    assert_eq!(format_g(1e-5, 3), "1e-05");
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_620_000_000_000_042);
    assert_eq!(timestamp_dir_name(t), "openai-2021-05-03-00-00-00-000042");
}
