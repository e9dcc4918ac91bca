//! `gdiff guidance-sweep`: the paper's guidance trade-off (its Table 4 and Figure 4) measured on
//! our own models, for classifier guidance, classifier-free guidance, both, and either limited
//! to an interval of timesteps. For every model, sampler, guidance kind and scale it samples a
//! class-balanced set (the same x_T per sample index in every setting), lets an independent
//! clean classifier (the judge) say which class each sample shows and where it lies in the
//! judge's feature space, and reports: accuracy on the asked class, Fréchet distance to the
//! reference set, k-NN precision and recall (k = 3) against an equally large reference subset,
//! and the cost (network evaluations per sample, classifier evaluations, seconds). A row for
//! held-out real images (left out of the reference statistics) shows what "perfect" looks like
//! at this sample size. Writes results.md
//! / .csv / .json, one grid per setting, tradeoff.png (metrics against the scale), cost.png
//! (against the sampling time) and steps.png (against the number of network evaluations);
//! `--append` extends an earlier sweep in the same folder.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use guided_diffusion::checkpoint::write_atomic;
use guided_diffusion::data::{open_dataset, rng};
use guided_diffusion::eval::judge::score;
use guided_diffusion::eval::{FeatureMatrix, FidStatistics, Judge, JudgedMetrics};
use guided_diffusion::load::Checkpoint;
use guided_diffusion::models::Net;
use guided_diffusion::sample::{
    self, Classes, ClassifierFreeSettings, GuidanceSettings, Request, Sampling,
};
use guided_diffusion::samplers::SamplerSpec;
use guided_diffusion::train::logger::format_g;
use rand::seq::SliceRandom;

use crate::cli::plot::{write_panels, Panel, Series};
use crate::cli::sampler::{parse_interval, BUILTIN_SAMPLER};
use crate::cli::{env, output};
use crate::commands::sample::builtin_model;

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct SweepArgs {
    /// A diffusion model to sweep as NAME=PATH (repeat the flag for several)
    /// [default: the built-in Fashion-MNIST model]
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Noise-aware classifier that guides [default: the built-in one]
    #[arg(long)]
    pub classifier_path: Option<PathBuf>,
    /// Clean classifier that judges the samples; not the guiding one [default: the built-in judge]
    #[arg(long)]
    pub judge_path: Option<PathBuf>,
    /// Classifier scales to sweep (0 = no guidance)
    #[arg(long, default_value = "0,0.5,1,2,4,8")]
    pub scales: String,
    /// Samplers as specs (ddim25, ddpm250, dpm-solver++20, "dpm-solver++ steps=10 order=3"),
    /// comma-separated (";"-separated when a spec holds a comma) [default: the built-in model's,
    /// "sde-dpm-solver++20 clip_denoised=true"]
    #[arg(long, default_value = BUILTIN_SAMPLER, hide_default_value = true)]
    pub samplers: String,
    /// Guidance kinds, comma-separated: classifier (classifier guidance of the model as
    /// trained), classifier-uncond (classifier guidance of the null-class branch of a
    /// classifier-free model), cfg (classifier-free guidance), cfg+classifier (both at the
    /// same scale). The scale is the classifier scale, the cfg scale, or both
    #[arg(long, default_value = "classifier")]
    pub guidance: String,
    /// Also run every guidance kind limited to the timesteps [LO, HI] (e.g. 0,700); several
    /// intervals separated by ";" ("0,400;0,500;0,600") sweep the interval too
    #[arg(long)]
    pub guidance_interval: Option<String>,
    /// Samples per setting (classes cycled, so balanced)
    #[arg(long, default_value_t = 500)]
    pub num_samples: usize,
    /// Images per model call
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Seed of x_T and of the reference subsets
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Reference images: fashion-mnist:test or a folder with labelled file names
    #[arg(long, default_value = "fashion-mnist:test")]
    pub reference: String,
    /// Use the first N reference images (all when not given); the FD statistics come from them
    #[arg(long)]
    pub reference_images: Option<usize>,
    /// Where the tables, grids and plot go (created if missing)
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Keep the settings already measured in --out_dir (same --num_samples, --seed and
    /// --reference) and add these: extends a sweep with more scales, samplers or models
    #[arg(long)]
    pub append: bool,
    /// No progress lines
    #[arg(long)]
    pub quiet: bool,
    /// cpu, or cuda / cuda:N (with the cuda build feature)
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// A sampler of the sweep: its spec as written (the table's name) and parsed.
#[derive(Debug, Clone)]
struct SweepSampler {
    name: String,
    spec: SamplerSpec,
}

fn parse_samplers(list: &str) -> Result<Vec<SweepSampler>> {
    let sep = if list.contains(';') { ';' } else { ',' };
    list.split(sep)
        .map(|s| {
            let spec: SamplerSpec = s.parse().with_context(|| format!("--samplers {s:?}"))?;
            Ok(SweepSampler { name: spec.to_string(), spec })
        })
        .collect()
}

/// A guidance kind of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Classifier,
    ClassifierUncond,
    Cfg,
    CfgAndClassifier,
}

impl Kind {
    const ALL: [(&'static str, Kind); 4] = [
        ("classifier", Kind::Classifier),
        ("classifier-uncond", Kind::ClassifierUncond),
        ("cfg", Kind::Cfg),
        ("cfg+classifier", Kind::CfgAndClassifier),
    ];

    fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, k)| *k == self).map(|(n, _)| *n).unwrap_or("?")
    }

    fn needs_null_class(self) -> bool {
        self != Kind::Classifier
    }

    fn parse_list(s: &str) -> Result<Vec<Kind>> {
        s.split(',')
            .map(|w| {
                let w = w.trim();
                Self::ALL.iter().find(|(n, _)| *n == w).map(|(_, k)| *k).with_context(|| {
                    let names: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                    format!("--guidance {w:?}: expected one of {}", names.join(", "))
                })
            })
            .collect()
    }
}

/// The guidance of one setting at `scale`.
fn settings<'a>(
    kind: Kind,
    scale: f64,
    classifier: &'a Net,
    null_class: Option<usize>,
    interval: Option<(f64, f64)>,
) -> GuidanceSettings<'a> {
    let clf = (scale > 0.0).then_some((classifier, scale));
    let cfg = null_class.map(|null| ClassifierFreeSettings { scale, null_class: null });
    let mut g = match kind {
        Kind::Classifier => GuidanceSettings { classifier: clf, ..Default::default() },
        Kind::ClassifierUncond => {
            GuidanceSettings { classifier: clf, null_branch: null_class, ..Default::default() }
        }
        Kind::Cfg => GuidanceSettings { classifier_free: cfg, ..Default::default() },
        Kind::CfgAndClassifier => {
            GuidanceSettings { classifier: clf, classifier_free: cfg, ..Default::default() }
        }
    };
    g.interval = interval;
    g
}

fn parse_models(specs: &[String]) -> Result<Vec<(String, PathBuf)>> {
    if specs.is_empty() {
        let dir = builtin_model()
            .context("no --model given and no built-in models found (models/fashion-mnist)")?;
        // Its unconditional model is its null class: `--guidance classifier-uncond`.
        return Ok(vec![("builtin".to_string(), dir.join("model.safetensors"))]);
    }
    let mut seen = HashSet::new();
    specs
        .iter()
        .map(|s| {
            let (name, path) =
                s.split_once('=').with_context(|| format!("--model {s:?}: expected NAME=PATH"))?;
            if name.is_empty() || !seen.insert(name.to_string()) {
                bail!("--model {s:?}: names must be non-empty and different");
            }
            Ok((name.to_string(), PathBuf::from(path)))
        })
        .collect()
}

fn builtin_file(given: &Option<PathBuf>, file: &str, flag: &str) -> Result<PathBuf> {
    let p = match given {
        Some(p) => p.clone(),
        None => builtin_model()
            .map(|d| d.join(file))
            .with_context(|| format!("no {flag} given and no built-in models found"))?,
    };
    if !p.exists() {
        bail!("{flag} {}: no such file", p.display());
    }
    Ok(p)
}

/// One measured setting.
struct Row {
    model: String,
    sampler: String,
    /// The guidance kind, with its interval if limited (`cfg [0,700]`).
    guidance: String,
    scale: Option<f64>,
    metrics: JudgedMetrics,
    /// Sampling and judging.
    seconds: f64,
    /// Sampling alone.
    sample_seconds: f64,
    /// Solver steps' network evaluations per sample (NFE of the sampler).
    nfe: f64,
    /// Images the diffusion network processed per sample (2 NFE where classifier-free
    /// guidance runs its double batch).
    model_evals: f64,
    /// Images the classifier processed (forward and backward) per sample.
    classifier_evals: f64,
}

/// The reference set as the judge sees it.
struct Reference {
    /// Of the reference set less the held-out images.
    stats: FidStatistics,
    /// Equal-size subset for precision/recall.
    pr_subset: FeatureMatrix,
    /// A disjoint equal-size subset scored like a sample set (the "real images" row).
    held_out: (FeatureMatrix, Vec<usize>, Vec<usize>),
    /// The judge's accuracy on the whole reference set.
    judge_accuracy: f64,
    len: usize,
}

fn load_reference(
    spec: &str,
    limit: Option<usize>,
    judge: &Judge,
    channels: usize,
    n: usize,
    seed: u64,
    batch: usize,
) -> Result<Reference> {
    let size = judge.image_size();
    let mut ds = env::data_spec(spec, size);
    ds.class_cond = true;
    ds.random_flip = false;
    ds.channels = channels;
    let data = open_dataset(&ds).with_context(|| format!("--reference {spec}"))?;
    let len = limit.map_or(data.len(), |l| l.min(data.len()));
    if len < 2 * n {
        bail!("--reference {spec}: {len} images, but --num_samples {n} needs at least {} (two disjoint subsets)", 2 * n);
    }
    let mut r = rng::stream(seed, rng::domain::SWEEP_REFERENCE, 0);
    let mut pixels = Vec::with_capacity(len * channels * size * size);
    let mut labels = Vec::with_capacity(len);
    for i in 0..len {
        let item = data.get(i, &mut r)?;
        pixels.extend_from_slice(&item.pixels);
        labels.push(
            item.label.with_context(|| format!("--reference {spec}: item {i} has no label"))?
                as usize,
        );
    }
    let x = Tensor::from_vec(pixels, (len, channels, size, size), &Device::Cpu)?;
    let verdict = judge.judge_scaled(&x, batch)?;
    let judge_accuracy = verdict.accuracy(&labels)?;
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut r);
    let pick = |idx: &[usize]| -> Result<FeatureMatrix> {
        let mut m = FeatureMatrix::empty(verdict.features.cols);
        for &i in idx {
            m.append(&verdict.features.slice_rows(i, i + 1))?;
        }
        Ok(m)
    };
    let held = &order[n..2 * n];
    // The statistics leave the held-out images out: the real row is then scored against images
    // it is not part of, as every sample set is (with them in, the built-in judge's real row
    // at 1,000 of the 10,000 Fashion-MNIST test images had FD 0.0014; without, 0.0017).
    let mut rest = [&order[..n], &order[2 * n..]].concat();
    rest.sort_unstable();
    let stats = FidStatistics::from_features(&pick(&rest)?)?;
    Ok(Reference {
        stats,
        pr_subset: pick(&order[..n])?,
        held_out: (
            pick(held)?,
            held.iter().map(|&i| verdict.predicted[i]).collect(),
            held.iter().map(|&i| labels[i]).collect(),
        ),
        judge_accuracy,
        len,
    })
}

fn fmt_scale(s: Option<f64>) -> String {
    s.map(|v| format!("{v}")).unwrap_or_else(|| "-".into())
}

const COLUMNS: &str = "model,sampler,guidance,scale,accuracy,fd,precision,recall,nfe,model_evals,classifier_evals,sample_seconds,seconds";

fn write_tables(out: &Path, rows: &[Row], reference: &Reference, args: &SweepArgs) -> Result<()> {
    let mut md = String::new();
    md.push_str(&format!(
        "{} samples per setting (classes cycled); reference: {} ({} images; the judge is {:.1}% accurate on it).\n\
         FD: Fréchet distance in the judge's feature space to the reference set less the real images' row; precision and recall: k-NN manifolds (k = 3) \
         against {} reference images. Scale: the classifier scale (classifier, classifier-uncond), the classifier-free scale \
         (cfg; 1 = conditional) or both (cfg+classifier). NFE: the sampler's network evaluations per sample; model evals: \
         images through the diffusion network per sample (classifier-free guidance runs a double batch); classifier evals: \
         images through the classifier (forward and backward). Seconds: sampling (and judging) on this machine.\n\n",
        args.num_samples,
        args.reference,
        reference.len,
        100.0 * reference.judge_accuracy,
        args.num_samples
    ));
    md.push_str("| model | sampler | guidance | scale | accuracy | FD | precision | recall | NFE | model evals | classifier evals | sampling s | seconds |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut csv = format!("{COLUMNS}\n");
    let mut json = Vec::new();
    for r in rows {
        let m = &r.metrics;
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.1}% | {} | {:.3} | {:.3} | {} | {} | {} | {:.0} | {:.0} |\n",
            r.model,
            r.sampler,
            r.guidance,
            fmt_scale(r.scale),
            100.0 * m.accuracy,
            // Three significant digits: the real row's FD is a few thousandths.
            format_g(m.fd, 3),
            m.precision,
            m.recall,
            format_g(r.nfe, 4),
            format_g(r.model_evals, 4),
            format_g(r.classifier_evals, 4),
            r.sample_seconds,
            r.seconds
        ));
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{:.1},{:.1}\n",
            csv_field(&r.model),
            csv_field(&r.sampler),
            csv_field(&r.guidance),
            fmt_scale(r.scale),
            m.accuracy,
            m.fd,
            m.precision,
            m.recall,
            r.nfe,
            r.model_evals,
            r.classifier_evals,
            r.sample_seconds,
            r.seconds
        ));
        json.push(serde_json::json!({
            "model": r.model, "sampler": r.sampler, "guidance": r.guidance, "scale": r.scale,
            "accuracy": m.accuracy, "fd": m.fd, "precision": m.precision, "recall": m.recall,
            "nfe": r.nfe, "model_evals": r.model_evals, "classifier_evals": r.classifier_evals,
            "sample_seconds": r.sample_seconds, "seconds": r.seconds,
        }));
    }
    let json = serde_json::json!({
        "num_samples": args.num_samples, "seed": args.seed, "reference": args.reference,
        "reference_images": reference.len, "judge_accuracy_on_reference": reference.judge_accuracy, "rows": json,
    });
    write_atomic(&out.join("results.md"), md.as_bytes())?;
    write_atomic(&out.join("results.csv"), csv.as_bytes())?;
    write_atomic(&out.join("results.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    Ok(())
}

/// A CSV field as RFC 4180 writes it: quoted when it holds a comma, a quote or a line break
/// (an interval's label, `cfg [0,500]`, or a sampler spec), its quotes doubled.
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

/// The rows of an earlier sweep in `out` (for `--append`), checked to be comparable. Rows of
/// sweeps from before the guidance kinds are classifier guidance.
fn earlier_rows(out: &Path, a: &SweepArgs) -> Result<Vec<Row>> {
    let path = out.join("results.json");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--append: reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("--append: {} is not valid JSON", path.display()))?;
    let same = v["num_samples"].as_u64() == Some(a.num_samples as u64)
        && v["seed"].as_u64() == Some(a.seed)
        && v["reference"].as_str() == Some(a.reference.as_str());
    if !same {
        bail!(
            "--append: {} was measured with --num_samples {} --seed {} --reference {}; give the same to extend it",
            path.display(),
            v["num_samples"],
            v["seed"],
            v["reference"]
        );
    }
    let rows = v["rows"]
        .as_array()
        .with_context(|| format!("--append: {} has no rows", path.display()))?;
    rows.iter()
        .filter(|r| !r["scale"].is_null())
        .map(|r| {
            let num = |k: &str| {
                r[k].as_f64()
                    .with_context(|| format!("--append: {}: a row without {k}", path.display()))
            };
            let opt = |k: &str| r[k].as_f64().unwrap_or(0.0);
            Ok(Row {
                model: r["model"].as_str().unwrap_or_default().to_string(),
                sampler: r["sampler"].as_str().unwrap_or_default().to_string(),
                guidance: r["guidance"].as_str().unwrap_or("classifier").to_string(),
                scale: Some(num("scale")?),
                metrics: JudgedMetrics {
                    accuracy: num("accuracy")?,
                    fd: num("fd")?,
                    precision: num("precision")?,
                    recall: num("recall")?,
                },
                seconds: num("seconds")?,
                sample_seconds: opt("sample_seconds"),
                nfe: opt("nfe"),
                model_evals: opt("model_evals"),
                classifier_evals: opt("classifier_evals"),
            })
        })
        .collect()
}

/// The series a row belongs to: model, sampler and guidance.
fn series_key(r: &Row) -> (String, String, String) {
    (r.model.clone(), r.sampler.clone(), r.guidance.clone())
}

/// Adds `row`, replacing an earlier measurement of the same setting, and keeps the table
/// ordered: real images first, then by series (in order of appearance), then scale.
fn insert_row(rows: &mut Vec<Row>, row: Row) {
    rows.retain(|r| !(series_key(r) == series_key(&row) && r.scale == row.scale));
    rows.push(row);
    let mut order: Vec<(String, String, String)> = Vec::new();
    for r in rows.iter() {
        if !order.contains(&series_key(r)) {
            order.push(series_key(r));
        }
    }
    let rank = |r: &Row| (r.scale.is_some(), order.iter().position(|k| *k == series_key(r)));
    rows.sort_by(|x, y| {
        rank(x).cmp(&rank(y)).then(x.scale.unwrap_or(-1.0).total_cmp(&y.scale.unwrap_or(-1.0)))
    });
}

/// tradeoff.png (metrics against the scale), cost.png (accuracy and FD against the sampling
/// seconds per 100 samples) and steps.png (accuracy and FD against the sampler's NFE).
fn write_plots(out: &Path, rows: &[Row], num_samples: usize) -> Result<()> {
    let mut keys: Vec<(String, String, String)> = Vec::new();
    for r in rows.iter().filter(|r| r.scale.is_some()) {
        if !keys.contains(&series_key(r)) {
            keys.push(series_key(r));
        }
    }
    let name = |(m, s, g): &(String, String, String)| format!("{m} {s} {g}");
    let panel = |title: &str,
                 y: &str,
                 fraction: bool,
                 x: &dyn Fn(&Row) -> f64,
                 f: fn(&JudgedMetrics) -> f64| Panel {
        title: title.into(),
        y_label: y.into(),
        y_range: fraction.then_some((0.0, 1.02)),
        legend: title.starts_with("Judge"),
        series: keys
            .iter()
            .map(|k| Series {
                name: name(k),
                points: rows
                    .iter()
                    .filter(|r| series_key(r) == *k && r.scale.is_some())
                    .map(|r| (x(r), f(&r.metrics)))
                    .collect(),
            })
            .collect(),
    };
    let by_scale = |r: &Row| r.scale.unwrap_or(0.0);
    let panels = [
        panel("Judge accuracy on the asked class", "accuracy", true, &by_scale, |m| m.accuracy),
        panel("Fréchet distance (judge features)", "FD", false, &by_scale, |m| m.fd),
        panel("Precision (k = 3)", "precision", true, &by_scale, |m| m.precision),
        panel("Recall (k = 3)", "recall", true, &by_scale, |m| m.recall),
    ];
    write_panels(&out.join("tradeoff.png"), &panels, "guidance scale", 2, (560, 400))?;
    let per_100 = |r: &Row| r.sample_seconds * 100.0 / num_samples as f64;
    let panels = [
        panel("Judge accuracy against sampling time", "accuracy", true, &per_100, |m| m.accuracy),
        panel("Fréchet distance against sampling time", "FD", false, &per_100, |m| m.fd),
    ];
    write_panels(&out.join("cost.png"), &panels, "seconds per 100 samples", 2, (560, 400))?;
    // Against the number of network evaluations: one line per sampler family (its spec
    // without the step count), guidance and scale, across the step counts swept.
    let family = |r: &Row| -> String {
        match SamplerSpec::parse_raw(&r.sampler) {
            Ok((name, mut params)) => {
                params.remove("steps");
                let rest: Vec<String> = params.iter().map(|(k, v)| format!(" {k}={v}")).collect();
                format!("{name}{}", rest.concat())
            }
            Err(_) => r.sampler.clone(),
        }
    };
    let mut lines: Vec<(String, String, String, u64)> = Vec::new();
    for r in rows.iter().filter(|r| r.scale.is_some() && r.nfe > 0.0) {
        let k = (r.model.clone(), family(r), r.guidance.clone(), r.scale.unwrap_or(0.0).to_bits());
        if !lines.contains(&k) {
            lines.push(k);
        }
    }
    let panel = |title: &str, y: &str, fraction: bool, f: fn(&JudgedMetrics) -> f64| Panel {
        title: title.into(),
        y_label: y.into(),
        y_range: fraction.then_some((0.0, 1.02)),
        legend: title.starts_with("Judge"),
        series: lines
            .iter()
            .map(|(m, fam, g, sc)| Series {
                name: format!("{m} {fam} {g} scale {}", f64::from_bits(*sc)),
                points: {
                    let mut p: Vec<(f64, f64)> = rows
                        .iter()
                        .filter(|r| {
                            &r.model == m
                                && family(r) == *fam
                                && &r.guidance == g
                                && r.scale.map(f64::to_bits) == Some(*sc)
                        })
                        .map(|r| (r.nfe, f(&r.metrics)))
                        .collect();
                    p.sort_by(|a, b| a.0.total_cmp(&b.0));
                    p
                },
            })
            .collect(),
    };
    let panels = [
        panel("Judge accuracy against network evaluations", "accuracy", true, |m| m.accuracy),
        panel("Fréchet distance against network evaluations", "FD", false, |m| m.fd),
    ];
    write_panels(&out.join("steps.png"), &panels, "network evaluations (NFE)", 2, (560, 400))
}

pub fn run(a: &SweepArgs) -> Result<()> {
    let device = output::device(&a.device)?;
    let models = parse_models(&a.models)?;
    let scales: Vec<f64> = guided_diffusion::models::flags::parse_list::<f64>(&a.scales, "scales")?;
    if scales.is_empty() || scales.iter().any(|s| !s.is_finite() || *s < 0.0) {
        bail!("--scales {:?}: expected non-negative numbers, e.g. 0,1,2,4", a.scales);
    }
    let samplers = parse_samplers(&a.samplers)?;
    let kinds = Kind::parse_list(&a.guidance)?;
    let intervals: Vec<(f64, f64)> = match a.guidance_interval.as_deref() {
        None => Vec::new(),
        Some(list) => list.split(';').map(parse_interval).collect::<Result<_>>()?,
    };
    guided_diffusion::limits::check_num_samples("--num_samples", a.num_samples)?;
    guided_diffusion::limits::check_batch_size("--batch_size", a.batch_size)?;
    let clf_path = builtin_file(&a.classifier_path, "classifier.safetensors", "--classifier_path")?;
    let judge_path = builtin_file(&a.judge_path, "judge.safetensors", "--judge_path")?;
    if clf_path.canonicalize().ok() == judge_path.canonicalize().ok() {
        bail!(
            "--judge_path is the guidance classifier: the judge must be an independent classifier"
        );
    }
    let policy = crate::cli::policy::from_env();
    let prepare = |n| crate::cli::policy::prepare(n, policy);
    let classifier = Net::load_embedded(&clf_path, &device)
        .map(prepare)
        .with_context(|| format!("--classifier_path {}", clf_path.display()))?;
    let judge = Judge::new(
        Net::load_embedded(&judge_path, &device)
            .map(prepare)
            .with_context(|| format!("--judge_path {}", judge_path.display()))?,
        device.clone(),
    )
    .with_context(|| format!("--judge_path {}", judge_path.display()))?;
    let num_classes = classifier.num_classes().context("--classifier_path: not a classifier")?;
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("--out_dir {}", a.out_dir.display()))?;
    let log = |s: String| {
        if !a.quiet {
            eprintln!("{s}");
        }
    };

    let mut loaded = Vec::new();
    for (name, path) in &models {
        if !path.exists() {
            bail!("--model {name}={}: no such file", path.display());
        }
        let ckpt = Checkpoint::read(path, &device)
            .with_context(|| format!("--model {name}={}", path.display()))?;
        let info = ckpt.info.clone();
        let net = ckpt
            .into_embedded_network()
            .map(prepare)
            .with_context(|| format!("--model {name}={}", path.display()))?;
        let Net::UNet(u) = &net else {
            bail!("--model {name}={}: not a diffusion UNet", path.display())
        };
        let ucfg = u.config().clone();
        if ucfg.trunk.image_size != judge.image_size() {
            bail!(
                "--model {name}: {0}x{0} images, but the judge takes {1}x{1}",
                ucfg.trunk.image_size,
                judge.image_size()
            );
        }
        let null_class = info.null_class;
        if let Some(k) = ucfg.num_classes {
            let real = if null_class.is_some() { k - 1 } else { k };
            if real != num_classes {
                bail!("--model {name}: {real} classes, the classifier has {num_classes}");
            }
        }
        let base = info.diffusion.with_context(|| {
            format!(
                "--model {name}={}: no embedded diffusion config (convert it with gdiff convert)",
                path.display()
            )
        })?;
        loaded.push((name.clone(), net, base, ucfg, null_class));
    }

    let t0 = Instant::now();
    let channels = loaded.first().map(|l| l.3.trunk.in_channels).unwrap_or(1);
    let kinds_limits: Vec<(Kind, Option<(f64, f64)>)> = kinds
        .iter()
        .flat_map(|&k| {
            std::iter::once((k, None)).chain(intervals.iter().map(move |&i| (k, Some(i))))
        })
        .collect();
    let reference = load_reference(
        &a.reference,
        a.reference_images,
        &judge,
        channels,
        a.num_samples,
        a.seed,
        a.batch_size,
    )?;
    log(format!(
        "reference {}: {} images, judge accuracy {:.2}% ({:.0} s)",
        a.reference,
        reference.len,
        100.0 * reference.judge_accuracy,
        t0.elapsed().as_secs_f64()
    ));
    let asked: Vec<usize> = (0..a.num_samples).map(|i| i % num_classes).collect();
    let mut rows = if a.append { earlier_rows(&a.out_dir, a)? } else { Vec::new() };
    {
        let (f, predicted, labels) = &reference.held_out;
        let v =
            guided_diffusion::eval::Verdict { features: f.clone(), predicted: predicted.clone() };
        let metrics = score(&v, labels, &reference.stats, &reference.pr_subset, &device)?;
        insert_row(
            &mut rows,
            Row {
                model: "real test images".into(),
                sampler: "-".into(),
                guidance: "-".into(),
                scale: None,
                metrics,
                seconds: 0.0,
                sample_seconds: 0.0,
                nfe: 0.0,
                model_evals: 0.0,
                classifier_evals: 0.0,
            },
        );
    }
    for (name, net, base, ucfg, null_class) in &loaded {
        for sp in &samplers {
            // Checked once per sampler, before any setting runs.
            sp.spec.build(base).with_context(|| format!("--samplers {}", sp.name))?;
            for &(kind, limit) in &kinds_limits {
                if kind.needs_null_class() && null_class.is_none() {
                    log(format!("{name}: no null class (not trained with --class_dropout_prob); skipping guidance {}", kind.name()));
                    continue;
                }
                let guidance = match limit {
                    Some((lo, hi)) => format!("{} [{lo},{hi}]", kind.name()),
                    None => kind.name().to_string(),
                };
                for &scale in &scales {
                    let t = Instant::now();
                    let s = Sampling {
                        model: net,
                        diffusion: base,
                        sampler: &sp.spec,
                        guidance: settings(kind, scale, &classifier, *null_class, limit),
                        clip_denoised: true,
                        shape: [
                            ucfg.trunk.in_channels,
                            ucfg.trunk.image_size,
                            ucfg.trunk.image_size,
                        ],
                        num_classes: Some(num_classes),
                        null_class: None,
                        device: device.clone(),
                    };
                    let req = Request {
                        num_samples: a.num_samples,
                        batch_size: a.batch_size,
                        classes: Classes::Cycle((0..num_classes).collect()),
                        seed: a.seed,
                        init_noise: None,
                        keep_float: false,
                        shard: Default::default(),
                        low_res: None,
                    };
                    let out = s.run(&req, &mut |_| {})?;
                    let sample_seconds = t.elapsed().as_secs_f64();
                    let verdict = judge.judge(&out.images, a.batch_size)?;
                    let metrics =
                        score(&verdict, &asked, &reference.stats, &reference.pr_subset, &device)?;
                    let grid_n = (num_classes * 10).min(a.num_samples);
                    let file = format!("{name}_{}_{guidance}_scale{scale}.png", sp.name)
                        .replace(|c: char| !(c.is_ascii_alphanumeric() || "._-+".contains(c)), "_");
                    sample::images::write_grid(
                        &a.out_dir.join(file),
                        &out.images.narrow(0, 0, grid_n)?,
                        num_classes.min(grid_n),
                    )?;
                    let seconds = t.elapsed().as_secs_f64();
                    let nfe = out.nfe_per_batch.iter().sum::<usize>() as f64
                        / out.nfe_per_batch.len().max(1) as f64;
                    log(format!(
                        "{name} {} {guidance} scale {scale}: accuracy {:.1}%, FD {}, precision {:.3}, recall {:.3} ({sample_seconds:.0} s sampling, {seconds:.0} s)",
                        sp.name,
                        100.0 * metrics.accuracy,
                        format_g(metrics.fd, 3),
                        metrics.precision,
                        metrics.recall
                    ));
                    insert_row(
                        &mut rows,
                        Row {
                            model: name.clone(),
                            sampler: sp.name.clone(),
                            guidance: guidance.clone(),
                            scale: Some(scale),
                            metrics,
                            seconds,
                            sample_seconds,
                            nfe,
                            model_evals: out.model_evals,
                            classifier_evals: out.classifier_evals,
                        },
                    );
                    // Keep what is measured so far, so an interrupted sweep loses nothing.
                    write_tables(&a.out_dir, &rows, &reference, a)?;
                }
            }
        }
    }
    write_plots(&a.out_dir, &rows, a.num_samples)?;
    log(format!(
        "wrote {}/results.md, results.csv, results.json, tradeoff.png, cost.png and steps.png",
        a.out_dir.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samplers_and_kinds_parse_and_reject() {
        let v = parse_samplers("ddim25,dpm-solver++20").unwrap();
        assert_eq!(v[0].name, "ddim25");
        assert_eq!(v[1].name, "dpm-solver++20");
        let v = parse_samplers("ddpm respacing=10,15,20;ddim10").unwrap();
        assert_eq!(v.len(), 2);
        for bad in ["ddim0", "plms10", "ddpm-3", "dpm-solver++ order=7"] {
            assert!(parse_samplers(bad).unwrap_err().to_string().contains("--samplers"), "{bad}");
        }
        assert_eq!(Kind::parse_list("cfg,classifier").unwrap(), vec![Kind::Cfg, Kind::Classifier]);
        assert!(Kind::parse_list("cfg,nope").is_err());
    }

    #[test]
    fn rows_stay_ordered_and_replace_remeasured_settings() {
        let m = |acc: f64| JudgedMetrics { accuracy: acc, fd: 0.0, precision: 0.0, recall: 0.0 };
        let row = |model: &str, scale: Option<f64>, acc: f64| Row {
            model: model.into(),
            sampler: "ddim25".into(),
            guidance: "classifier".into(),
            scale,
            metrics: m(acc),
            seconds: 0.0,
            sample_seconds: 0.0,
            nfe: 0.0,
            model_evals: 0.0,
            classifier_evals: 0.0,
        };
        let mut rows = vec![
            row("cond", Some(0.0), 0.1),
            row("cond", Some(4.0), 0.2),
            row("uncond", Some(0.0), 0.3),
        ];
        insert_row(&mut rows, row("real", None, 0.9));
        insert_row(&mut rows, row("cond", Some(2.0), 0.4));
        insert_row(&mut rows, row("cond", Some(4.0), 0.5));
        let got: Vec<(String, Option<f64>, f64)> =
            rows.iter().map(|r| (r.model.clone(), r.scale, r.metrics.accuracy)).collect();
        let want = [
            ("real", None, 0.9),
            ("cond", Some(0.0), 0.1),
            ("cond", Some(2.0), 0.4),
            ("cond", Some(4.0), 0.5),
            ("uncond", Some(0.0), 0.3),
        ];
        assert_eq!(got, want.map(|(a, b, c)| (a.to_string(), b, c)));
    }

    #[test]
    fn models_need_distinct_names() {
        assert!(parse_models(&["a=x".into(), "a=y".into()]).is_err());
        assert!(parse_models(&["nopath".into()]).unwrap_err().to_string().contains("NAME=PATH"));
        assert_eq!(parse_models(&["a=x".into(), "b=y".into()]).unwrap().len(), 2);
    }
}
