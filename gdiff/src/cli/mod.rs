//! Command-line plumbing shared by the subcommands: the reference's flags, presets, turning
//! flags into configs, output files, progress and plots — no math.
pub mod args;
pub mod env;
pub mod output;
pub mod plot;
pub mod policy;
pub mod presets;
pub mod resolve;
pub mod sampler;
pub mod shard;
