//! The environment variables that stand in for settings the library takes as values: the
//! library reads no environment, so gdiff reads these here and passes what they say.
//!
//! - `OPENAI_LOGDIR`: the log directory when `--log_dir` is not given (the reference's logger).
//! - `FASHION_MNIST_DIR`: where Fashion-MNIST's files are, when not in Debian's place.
//! - `OMPI_COMM_WORLD_SIZE`, `PMI_SIZE`, `PMIX_SIZE`: the world size an MPI launcher announced
//!   (OpenMPI, MPICH/PMI, PMIx), for `guided_diffusion::dist::init`.
//!
//! The kernel switches (`GD_*`) are read in [`super::policy`].
use std::path::{Path, PathBuf};

use guided_diffusion::data::{fashion_mnist, DataSpec};
use guided_diffusion::train::resolve_log_dir;

/// The reference's variable for the log directory.
pub const LOG_DIR_ENV: &str = "OPENAI_LOGDIR";

/// `--log_dir`, else a non-empty `$OPENAI_LOGDIR`, else `<tmp>/openai-<UTC stamp>`.
pub fn log_dir(flag: Option<&str>) -> PathBuf {
    let env = std::env::var_os(LOG_DIR_ENV).map(PathBuf::from);
    resolve_log_dir(flag.map(Path::new), env.as_deref())
}

/// `DataSpec::new(data_dir, image_size)` with Fashion-MNIST's directory from
/// `$FASHION_MNIST_DIR`, if set (else the library's [`fashion_mnist::DEFAULT_DIR`]).
pub fn data_spec(data_dir: &str, image_size: usize) -> DataSpec {
    let mut spec = DataSpec::new(data_dir, image_size);
    spec.fashion_mnist_dir = std::env::var_os(fashion_mnist::DIR_ENV).map(PathBuf::from);
    spec
}

/// The world size an MPI launcher announced in the environment, if any.
pub fn launcher_world_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok().and_then(|v| v.trim().parse().ok()))
}
