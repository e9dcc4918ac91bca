//! The reference's logger (`logger.py`, from OpenAI baselines) for training runs: key/value
//! diagnostics accumulated per log interval (`logkv` keeps the last value, `logkv_mean` a running
//! mean), written on `dumpkvs` as a table to `log.txt` and as a row of `progress.csv`; free-text
//! lines via `log`. Only rank 0 writes files; other ranks write `log-rank00N.txt`.
//!
//! Differences from the reference, on purpose: files are appended to (a resumed run in the same
//! directory keeps its history; the reference truncates), the default directory's time stamp is
//! UTC, and the table goes to stdout only when asked (a one-line summary goes to stderr).
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::data::files::write_atomic;
use crate::{Error, Result};

/// The run's directory: `explicit` (`--log_dir`), else `default` (the reference's logger reads
/// `$OPENAI_LOGDIR`; a program passes it here, the library reads no environment), else
/// `<tmp>/openai-YYYY-MM-DD-HH-MM-SS-ffffff`. An empty path counts as none.
pub fn resolve_log_dir(explicit: Option<&Path>, default: Option<&Path>) -> PathBuf {
    match [explicit, default].into_iter().flatten().find(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => std::env::temp_dir().join(timestamp_dir_name(std::time::SystemTime::now())),
    }
}

/// `openai-%Y-%m-%d-%H-%M-%S-%f` (UTC).
pub fn timestamp_dir_name(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "openai-{year:04}-{month:02}-{day:02}-{:02}-{:02}-{:02}-{:06}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        d.subsec_micros()
    )
}

/// C's `%-8.3g`-style rendering used in the table (`%g` with 3 significant digits).
pub fn format_g(v: f64, precision: usize) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !v.is_finite() {
        return if v.is_nan() {
            "nan".into()
        } else if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let p = precision.max(1);
    let sci = format!("{:.*e}", p - 1, v);
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if exp < -4 || exp >= p as i32 {
        let mant = strip_zeros(mant);
        format!("{mant}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    } else {
        let decimals = (p as i32 - 1 - exp).max(0) as usize;
        strip_zeros(&format!("{v:.decimals$}")).to_string()
    }
}

fn strip_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// `progress.csv`: a header of all keys seen so far, one row per dump; when new keys appear the
/// file is rewritten with the wider header and old rows padded (the reference's behaviour).
struct CsvOut {
    path: PathBuf,
    keys: Vec<String>,
    rows: usize,
}

impl CsvOut {
    fn open(path: PathBuf) -> Result<Self> {
        let (keys, rows) = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut lines = text.lines();
                let keys = lines
                    .next()
                    .map(|h| h.split(',').map(String::from).collect())
                    .unwrap_or_default();
                (keys, lines.count())
            }
            Err(_) => (Vec::new(), 0),
        };
        Ok(Self { path, keys, rows })
    }

    /// Drops the rows whose `step` is after `step` (logged by a run killed after its last
    /// checkpoint; the resumed run logs those steps again). Returns how many were dropped.
    fn truncate_after(&mut self, step: u64) -> Result<usize> {
        let Some(col) = self.keys.iter().position(|k| k == "step") else { return Ok(0) };
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(&self.path, e)),
        };
        let mut lines = text.lines();
        let mut out = lines.next().map(|h| format!("{h}\n")).unwrap_or_default();
        let (mut kept, mut dropped) = (0, 0);
        for line in lines {
            let s = line.split(',').nth(col).and_then(|v| v.parse::<f64>().ok());
            if s.is_some_and(|s| s > step as f64) {
                dropped += 1;
            } else {
                out.push_str(line);
                out.push('\n');
                kept += 1;
            }
        }
        if dropped > 0 {
            write_atomic(&self.path, out.as_bytes())?;
        }
        self.rows = kept;
        Ok(dropped)
    }

    fn write(&mut self, kvs: &BTreeMap<String, f64>) -> Result<()> {
        let extra: Vec<String> = kvs.keys().filter(|k| !self.keys.contains(k)).cloned().collect();
        if !extra.is_empty() {
            let old = std::fs::read_to_string(&self.path).unwrap_or_default();
            self.keys.extend(extra.iter().cloned());
            let mut text = self.keys.join(",");
            text.push('\n');
            for line in old.lines().skip(1) {
                text.push_str(line);
                text.push_str(&",".repeat(extra.len()));
                text.push('\n');
            }
            write_atomic(&self.path, text.as_bytes())?;
        }
        let row: Vec<String> = self
            .keys
            .iter()
            .map(|k| kvs.get(k).map(|v| format!("{v}")).unwrap_or_default())
            .collect();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        writeln!(f, "{}", row.join(",")).map_err(|e| Error::io(&self.path, e))?;
        self.rows += 1;
        Ok(())
    }
}

pub struct Logger {
    dir: PathBuf,
    log_file: Option<(PathBuf, File)>,
    csv: Option<CsvOut>,
    name2val: BTreeMap<String, f64>,
    name2cnt: BTreeMap<String, u64>,
    /// Also print the table to stdout (the reference's `stdout` format).
    pub echo_stdout: bool,
    /// Print a one-line summary to stderr on every dump.
    pub progress_line: bool,
}

impl Logger {
    /// Creates `dir` and opens `log.txt` / `progress.csv` there (rank 0) or `log-rank00N.txt`.
    pub fn open(dir: impl AsRef<Path>, rank: usize) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let log_name =
            if rank == 0 { "log.txt".to_string() } else { format!("log-rank{rank:03}.txt") };
        let log_path = dir.join(log_name);
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(&log_path, e))?;
        let csv = if rank == 0 { Some(CsvOut::open(dir.join("progress.csv"))?) } else { None };
        let mut l = Self {
            dir,
            log_file: Some((log_path, f)),
            csv,
            name2val: BTreeMap::new(),
            name2cnt: BTreeMap::new(),
            echo_stdout: false,
            progress_line: true,
        };
        l.log(&format!("Logging to {}", l.dir.display()));
        Ok(l)
    }

    /// A logger that writes nothing (tests, non-zero ranks that should stay silent).
    pub fn null() -> Self {
        Self {
            dir: PathBuf::new(),
            log_file: None,
            csv: None,
            name2val: BTreeMap::new(),
            name2cnt: BTreeMap::new(),
            echo_stdout: false,
            progress_line: false,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// On resume from `step`: drops the `progress.csv` rows of later steps, which the
    /// interrupted run logged after its last checkpoint and the resumed run will log again.
    pub fn truncate_progress_after(&mut self, step: u64) -> Result<()> {
        if let Some(csv) = &mut self.csv {
            let n = csv.truncate_after(step)?;
            if n > 0 {
                self.log(&format!(
                    "progress.csv: dropped {n} row(s) after step {step}, logged after the last \
                     checkpoint by the interrupted run"
                ));
            }
        }
        Ok(())
    }

    pub fn logkv(&mut self, key: &str, val: f64) {
        self.name2val.insert(key.to_string(), val);
    }

    /// Running mean, computed as the reference: `old * n / (n + 1) + v / (n + 1)`.
    pub fn logkv_mean(&mut self, key: &str, val: f64) {
        let old = self.name2val.get(key).copied().unwrap_or(0.0);
        let cnt = self.name2cnt.get(key).copied().unwrap_or(0) as f64;
        self.name2val.insert(key.to_string(), old * cnt / (cnt + 1.0) + val / (cnt + 1.0));
        *self.name2cnt.entry(key.to_string()).or_insert(0) += 1;
    }

    pub fn current(&self) -> &BTreeMap<String, f64> {
        &self.name2val
    }

    /// Writes and clears the accumulated values; returns them.
    pub fn dumpkvs(&mut self) -> Result<BTreeMap<String, f64>> {
        let kvs = std::mem::take(&mut self.name2val);
        self.name2cnt.clear();
        if kvs.is_empty() {
            return Ok(kvs);
        }
        let table = render_table(&kvs);
        if let Some((path, f)) = &mut self.log_file {
            f.write_all(table.as_bytes())
                .and_then(|_| f.flush())
                .map_err(|e| Error::io(&*path, e))?;
        }
        if self.echo_stdout {
            print!("{table}");
        }
        if let Some(csv) = &mut self.csv {
            csv.write(&kvs)?;
        }
        if self.progress_line {
            eprintln!("{}", progress_line(&kvs));
        }
        Ok(kvs)
    }

    /// A free-text line in `log.txt` (and on stderr).
    pub fn log(&mut self, msg: &str) {
        if let Some((_, f)) = &mut self.log_file {
            let _ = writeln!(f, "{msg}").and_then(|_| f.flush());
        }
        if self.progress_line || self.echo_stdout {
            eprintln!("{msg}");
        }
    }
}

/// The reference's `HumanOutputFormat` table.
pub fn render_table(kvs: &BTreeMap<String, f64>) -> String {
    let trunc = |s: String| {
        if s.chars().count() > 30 {
            format!("{}...", s.chars().take(27).collect::<String>())
        } else {
            s
        }
    };
    let mut rows: Vec<(String, String)> =
        kvs.iter().map(|(k, v)| (trunc(k.clone()), trunc(format_g(*v, 3)))).collect();
    rows.sort_by_key(|(k, _)| k.to_lowercase());
    let kw = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    let vw = rows.iter().map(|(_, v)| v.chars().count()).max().unwrap_or(0).max(8);
    let dashes = "-".repeat(kw + vw + 7);
    let mut out = format!("{dashes}\n");
    for (k, v) in rows {
        out.push_str(&format!("| {k:<kw$} | {v:<vw$} |\n"));
    }
    out.push_str(&dashes);
    out.push('\n');
    out
}

fn progress_line(kvs: &BTreeMap<String, f64>) -> String {
    let mut parts = Vec::new();
    for key in
        ["step", "samples", "loss", "train_loss", "val_loss", "grad_norm", "lr", "steps_per_sec"]
    {
        if let Some(v) = kvs.get(key) {
            parts.push(format!("{key} {}", format_g(*v, 4)));
        }
    }
    parts.join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_log_dir_takes_explicit_then_default_then_a_stamped_temp_dir() {
        let (a, b, empty) = (Path::new("runs/a"), Path::new("runs/b"), Path::new(""));
        assert_eq!(resolve_log_dir(Some(a), Some(b)), a);
        assert_eq!(resolve_log_dir(None, Some(b)), b);
        assert_eq!(resolve_log_dir(Some(empty), Some(b)), b, "an empty --log_dir is none");
        let tmp = resolve_log_dir(Some(empty), Some(empty));
        assert_eq!(tmp.parent(), Some(std::env::temp_dir().as_path()));
        assert!(tmp.file_name().unwrap().to_string_lossy().starts_with("openai-"), "{tmp:?}");
    }
}
