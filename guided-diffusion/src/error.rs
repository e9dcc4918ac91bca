//! The crate's error type: every user-facing failure names the file, key or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The OS error is part of the message and deliberately not a `source()`: anyhow's `{:#}`
    /// would print it a second time ("failed to fill whole buffer: failed to fill whole buffer").
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{0}")]
    Msg(String),
}

impl Error {
    pub fn msg(s: impl Into<String>) -> Self {
        Error::Msg(s.into())
    }
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), error: source }
    }
}

/// `bail!("...")`-style early return with an [`Error::Msg`].
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::error::Error::Msg(format!($($arg)*))) };
}

pub type Result<T> = std::result::Result<T, Error>;
