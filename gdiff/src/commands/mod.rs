//! One module per subcommand.
pub mod convert;
pub mod convert_inception;
pub mod eval;
pub mod inspect;
pub mod nll;
pub mod sample;
pub mod super_res;
pub mod sweep;
pub mod train;
