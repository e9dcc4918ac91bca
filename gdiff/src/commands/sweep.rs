//! `gdiff guidance-sweep`: the paper's guidance trade-off (its Table 4 and Figure 4) measured on
//! our own models. For every model, sampler and classifier scale it samples a class-balanced set
//! (the same x_T per sample index in every setting), lets an independent clean classifier (the
//! judge) say which class each sample shows and where it lies in the judge's feature space, and
//! reports: accuracy on the asked class, Fréchet distance to the reference set, k-NN precision
//! and recall (k = 3) against an equally large reference subset. A row for held-out real images
//! shows what "perfect" looks like at this sample size. Writes results.md / .csv / .json, one
//! grid per setting and tradeoff.png; `--append` extends an earlier sweep in the same folder.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use guided_diffusion::checkpoint::write_atomic;
use guided_diffusion::data::{open_dataset, rng, DataSpec};
use guided_diffusion::eval::judge::score;
use guided_diffusion::eval::{FeatureMatrix, FidStatistics, Judge, JudgedMetrics};
use guided_diffusion::models::Net;
use guided_diffusion::sample::{self, Classes, Method, Request, Sampling};
use rand::seq::SliceRandom;

use crate::cli::plot::{write_panels, Panel, Series};
use crate::cli::{output, resolve};
use crate::commands::sample::builtin_model;

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct SweepArgs {
    /// A diffusion model to sweep as NAME=PATH (repeat the flag for several)
    /// [default: the built-in conditional and unconditional Fashion-MNIST models]
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
    /// Samplers: ddimN (DDIM, eta 0, N steps) and ddpmN (ancestral, N steps), comma-separated
    #[arg(long, default_value = "ddim25")]
    pub samplers: String,
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

/// A sampler of the sweep, parsed from `ddim25` / `ddpm250`.
#[derive(Debug, Clone)]
struct SamplerSpec {
    name: String,
    respacing: String,
    method: Method,
}

fn parse_sampler(s: &str) -> Result<SamplerSpec> {
    let s = s.trim();
    let steps = |rest: &str| -> Result<usize> {
        rest.parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("--samplers: {s:?} is not ddimN or ddpmN with N > 0"))
    };
    if let Some(rest) = s.strip_prefix("ddim") {
        let n = steps(rest)?;
        Ok(SamplerSpec {
            name: s.into(),
            respacing: format!("ddim{n}"),
            method: Method::Ddim { eta: 0.0 },
        })
    } else if let Some(rest) = s.strip_prefix("ddpm") {
        let n = steps(rest)?;
        Ok(SamplerSpec { name: s.into(), respacing: n.to_string(), method: Method::Ddpm })
    } else {
        bail!("--samplers: {s:?} is not ddimN or ddpmN (e.g. ddim25, ddpm250)")
    }
}

fn parse_models(specs: &[String]) -> Result<Vec<(String, PathBuf)>> {
    if specs.is_empty() {
        let dir = builtin_model()
            .context("no --model given and no built-in models found (models/fashion-mnist)")?;
        return Ok(vec![
            ("conditional".into(), dir.join("model.safetensors")),
            ("unconditional".into(), dir.join("unconditional.safetensors")),
        ]);
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
    scale: Option<f64>,
    metrics: JudgedMetrics,
    seconds: f64,
}

/// The reference set as the judge sees it.
struct Reference {
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
    let mut ds = DataSpec::new(spec, size);
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
    let stats = FidStatistics::from_features(&verdict.features)?;
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

fn write_tables(out: &Path, rows: &[Row], reference: &Reference, args: &SweepArgs) -> Result<()> {
    let mut md = String::new();
    md.push_str(&format!(
        "{} samples per setting (classes cycled); reference: {} ({} images; the judge is {:.1}% accurate on it).\n\
         FD: Fréchet distance in the judge's feature space to the whole reference set; precision and recall: k-NN manifolds (k = 3) \
         against {} reference images.\n\n",
        args.num_samples,
        args.reference,
        reference.len,
        100.0 * reference.judge_accuracy,
        args.num_samples
    ));
    md.push_str("| model | sampler | scale | accuracy | FD | precision | recall | seconds |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
    let mut csv = String::from("model,sampler,scale,accuracy,fd,precision,recall,seconds\n");
    let mut json = Vec::new();
    for r in rows {
        let m = &r.metrics;
        md.push_str(&format!(
            "| {} | {} | {} | {:.1}% | {:.3} | {:.3} | {:.3} | {:.0} |\n",
            r.model,
            r.sampler,
            fmt_scale(r.scale),
            100.0 * m.accuracy,
            m.fd,
            m.precision,
            m.recall,
            r.seconds
        ));
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{:.1}\n",
            r.model,
            r.sampler,
            fmt_scale(r.scale),
            m.accuracy,
            m.fd,
            m.precision,
            m.recall,
            r.seconds
        ));
        json.push(serde_json::json!({
            "model": r.model, "sampler": r.sampler, "scale": r.scale, "accuracy": m.accuracy,
            "fd": m.fd, "precision": m.precision, "recall": m.recall, "seconds": r.seconds,
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

/// The rows of an earlier sweep in `out` (for `--append`), checked to be comparable.
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
            Ok(Row {
                model: r["model"].as_str().unwrap_or_default().to_string(),
                sampler: r["sampler"].as_str().unwrap_or_default().to_string(),
                scale: Some(num("scale")?),
                metrics: JudgedMetrics {
                    accuracy: num("accuracy")?,
                    fd: num("fd")?,
                    precision: num("precision")?,
                    recall: num("recall")?,
                },
                seconds: num("seconds")?,
            })
        })
        .collect()
}

/// Adds `row`, replacing an earlier measurement of the same setting, and keeps the table
/// ordered: real images first, then by model and sampler (in order of appearance), then scale.
fn insert_row(rows: &mut Vec<Row>, row: Row) {
    rows.retain(|r| !(r.model == row.model && r.sampler == row.sampler && r.scale == row.scale));
    rows.push(row);
    let mut order: Vec<(String, String)> = Vec::new();
    for r in rows.iter() {
        let k = (r.model.clone(), r.sampler.clone());
        if !order.contains(&k) {
            order.push(k);
        }
    }
    let rank = |r: &Row| {
        (r.scale.is_some(), order.iter().position(|k| k.0 == r.model && k.1 == r.sampler))
    };
    rows.sort_by(|x, y| {
        rank(x).cmp(&rank(y)).then(x.scale.unwrap_or(-1.0).total_cmp(&y.scale.unwrap_or(-1.0)))
    });
}

fn write_plot(out: &Path, rows: &[Row]) -> Result<()> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in rows.iter().filter(|r| r.scale.is_some()) {
        let k = (r.model.clone(), r.sampler.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let metric = |title: &str, y: &str, fraction: bool, f: fn(&JudgedMetrics) -> f64| Panel {
        title: title.into(),
        y_label: y.into(),
        y_range: fraction.then_some((0.0, 1.02)),
        legend: title.starts_with("Judge"),
        series: keys
            .iter()
            .map(|(m, s)| Series {
                name: format!("{m} {s}"),
                points: rows
                    .iter()
                    .filter(|r| &r.model == m && &r.sampler == s)
                    .filter_map(|r| Some((r.scale?, f(&r.metrics))))
                    .collect(),
            })
            .collect(),
    };
    let panels = [
        metric("Judge accuracy on the asked class", "accuracy", true, |m| m.accuracy),
        metric("Fréchet distance (judge features)", "FD", false, |m| m.fd),
        metric("Precision (k = 3)", "precision", true, |m| m.precision),
        metric("Recall (k = 3)", "recall", true, |m| m.recall),
    ];
    write_panels(&out.join("tradeoff.png"), &panels, "classifier scale", 2, (560, 400))
}

pub fn run(a: &SweepArgs) -> Result<()> {
    let device = output::device(&a.device)?;
    let models = parse_models(&a.models)?;
    let scales: Vec<f64> = guided_diffusion::models::flags::parse_list::<f64>(&a.scales, "scales")?;
    if scales.is_empty() || scales.iter().any(|s| !s.is_finite() || *s < 0.0) {
        bail!("--scales {:?}: expected non-negative numbers, e.g. 0,1,2,4", a.scales);
    }
    let samplers = a.samplers.split(',').map(parse_sampler).collect::<Result<Vec<_>>>()?;
    if a.num_samples == 0 || a.batch_size == 0 {
        bail!("--num_samples and --batch_size must be positive");
    }
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
        let net = Net::load_embedded(path, &device)
            .map(prepare)
            .with_context(|| format!("--model {name}={}", path.display()))?;
        let Net::UNet(u) = &net else {
            bail!("--model {name}={}: not a diffusion UNet", path.display())
        };
        let ucfg = u.config().clone();
        if ucfg.image_size != judge.image_size() {
            bail!(
                "--model {name}: {0}x{0} images, but the judge takes {1}x{1}",
                ucfg.image_size,
                judge.image_size()
            );
        }
        if let Some(k) = ucfg.num_classes {
            if k != num_classes {
                bail!("--model {name}: {k} classes, the classifier has {num_classes}");
            }
        }
        let (_, emb) = resolve::embedded(path)?;
        let base = emb.with_context(|| {
            format!(
                "--model {name}={}: no embedded diffusion config (convert it with gdiff convert)",
                path.display()
            )
        })?;
        loaded.push((name.clone(), net, base, ucfg));
    }

    let t0 = Instant::now();
    let channels = loaded.first().map(|l| l.3.in_channels).unwrap_or(1);
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
                scale: None,
                metrics,
                seconds: 0.0,
            },
        );
    }
    for (name, net, base, ucfg) in &loaded {
        for sp in &samplers {
            let mut dcfg = base.clone();
            dcfg.timestep_respacing = sp.respacing.clone();
            let diffusion =
                dcfg.build().map_err(|e| anyhow::anyhow!("--samplers {}: {e}", sp.name))?;
            for &scale in &scales {
                let t = Instant::now();
                let s = Sampling {
                    model: net,
                    diffusion: &diffusion,
                    classifier: (scale > 0.0).then_some((&classifier, scale)),
                    method: sp.method,
                    clip_denoised: true,
                    shape: [ucfg.in_channels, ucfg.image_size, ucfg.image_size],
                    num_classes: Some(num_classes),
                    device: device.clone(),
                };
                let req = Request {
                    num_samples: a.num_samples,
                    batch_size: a.batch_size,
                    classes: Classes::Cycle((0..num_classes).collect()),
                    seed: a.seed,
                    init_noise: None,
                    low_res: None,
                };
                let out = s.run(&req, &mut |_| {})?;
                let verdict = judge.judge(&out.images, a.batch_size)?;
                let metrics =
                    score(&verdict, &asked, &reference.stats, &reference.pr_subset, &device)?;
                let grid_n = (num_classes * 10).min(a.num_samples);
                let grid = a.out_dir.join(format!("{name}_{}_scale{scale}.png", sp.name));
                sample::images::write_grid(
                    &grid,
                    &out.images.narrow(0, 0, grid_n)?,
                    num_classes.min(grid_n),
                )?;
                let seconds = t.elapsed().as_secs_f64();
                log(format!(
                    "{name} {} scale {scale}: accuracy {:.1}%, FD {:.3}, precision {:.3}, recall {:.3} ({seconds:.0} s)",
                    sp.name,
                    100.0 * metrics.accuracy,
                    metrics.fd,
                    metrics.precision,
                    metrics.recall
                ));
                insert_row(
                    &mut rows,
                    Row {
                        model: name.clone(),
                        sampler: sp.name.clone(),
                        scale: Some(scale),
                        metrics,
                        seconds,
                    },
                );
                // Keep what is measured so far, so an interrupted sweep loses nothing.
                write_tables(&a.out_dir, &rows, &reference, a)?;
            }
        }
    }
    write_plot(&a.out_dir, &rows)?;
    log(format!(
        "wrote {}/results.md, results.csv, results.json and tradeoff.png",
        a.out_dir.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samplers_parse_and_reject() {
        let d = parse_sampler("ddim25").unwrap();
        assert_eq!(d.respacing, "ddim25");
        assert!(matches!(d.method, Method::Ddim { eta } if eta == 0.0));
        let p = parse_sampler("ddpm250").unwrap();
        assert_eq!(p.respacing, "250");
        assert!(matches!(p.method, Method::Ddpm));
        for bad in ["ddim", "ddim0", "plms10", "ddpm-3"] {
            assert!(parse_sampler(bad).unwrap_err().to_string().contains("--samplers"), "{bad}");
        }
    }

    #[test]
    fn rows_stay_ordered_and_replace_remeasured_settings() {
        let m = |acc: f64| JudgedMetrics { accuracy: acc, fd: 0.0, precision: 0.0, recall: 0.0 };
        let row = |model: &str, scale: Option<f64>, acc: f64| Row {
            model: model.into(),
            sampler: "ddim25".into(),
            scale,
            metrics: m(acc),
            seconds: 0.0,
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
