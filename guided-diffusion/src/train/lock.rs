//! One training run per log directory: [`RunLock`] holds an advisory lock (`flock`) on
//! `<log_dir>/.gdiff.lock` for the life of the run, and writes into it who holds it, so a
//! second run on the same directory stops at once with a message naming the running process
//! instead of interleaving its logs and checkpoints with the first one's.
//!
//! `flock` locks (`File::try_lock`) belong to the open file: the kernel drops them when the process ends however
//! it ends (kill -9 included), so a lock is never stale; the file itself stays behind and is
//! simply locked again by the next run.
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{bail, Error, Result};

/// The lock file's name inside the log directory.
pub const LOCK_FILE: &str = ".gdiff.lock";

/// Held for as long as the value lives.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Creates `dir` if needed and locks it for this process; `holder` describes the run (the
    /// command line) for the message another run will print. Fails, naming the running process,
    /// if another run holds the lock.
    pub fn acquire(dir: &Path, holder: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if !try_lock(&file).map_err(|e| Error::io(&path, e))? {
            let mut who = String::new();
            let _ = file.read_to_string(&mut who);
            let who = who.split_whitespace().collect::<Vec<_>>().join(" ");
            let who: String = who.chars().take(300).collect();
            bail!(
                "--log_dir {}: another training run is using it ({}); wait for it to finish, stop \
                 it, or give another --log_dir",
                dir.display(),
                if who.is_empty() { "its lock file is being written".to_string() } else { who }
            );
        }
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let text = format!(
            "pid {} started at unix time {started}: {}\n",
            std::process::id(),
            holder.chars().take(1000).collect::<String>()
        );
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(text.as_bytes()))
            .and_then(|_| file.flush())
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `Ok(false)` when another process holds the lock (`flock` on Unix, via the standard library).
fn try_lock(f: &File) -> std::io::Result<bool> {
    match f.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}
