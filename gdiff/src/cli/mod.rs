//! Command-line plumbing shared by the subcommands: the reference's flags, presets, turning
//! flags into configs, output files and progress — no math.
pub mod args;
pub mod output;
pub mod presets;
pub mod resolve;
