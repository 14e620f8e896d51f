//! The `pathc` command line: parsing, dispatch to each subcommand's module in [`cli`], and the
//! exit code. The binary (this file and `cli/`) is the only place that renders diagnostics for a
//! terminal; the library returns them.

mod cli;

use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::failure::Failure;
use cli::{check, codegen, count, expand, import, paths, plan, plot, report, scores, stats};

#[derive(Parser)]
#[command(name = "pathc", version, about = "Symbolic path expansion of transformers (Elhage et al. 2021)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// A variant's doc comment is its subcommand's about text; the variants' order is the help's.
#[derive(Subcommand)]
enum Command {
    /// Expand a model into its sum of paths.
    Expand(expand::Args),
    /// Sum every path with the attention patterns frozen and compare with the forward pass.
    Check(check::Args),
    /// Every path's contribution to the logits at a position.
    Paths(paths::Args),
    /// Every (query path, key path) term's contribution to one head's attention scores.
    Scores(scores::Args),
    /// Per-head circuit statistics: copying scores, Frobenius norms, composition scores.
    Stats(stats::Args),
    /// The evaluation plan of the statistics the e-graph chooses, against the naive one: every
    /// step with its shape, rank bound, instances and FLOPs, and each plan's peak memory.
    Plan(plan::Args),
    /// Generate standalone analysis code: one function per path family and per statistic.
    Codegen(codegen::Args),
    /// Plot statistics (heatmaps) or path contributions (a bar chart) as SVG.
    Plot(plot::Args),
    /// One self-contained HTML page to explore a prompt: its paths as a tree, each head's
    /// attention with the score terms of a selected cell, the circuit statistics and the check.
    Report(report::Args),
    /// Count paths by order without enumerating them (exact at any size).
    Count(count::Args),
    /// Write the model file of a HuggingFace model folder (config.json), as TransformerLens
    /// converts it; use the folder itself as --weights.
    Import(import::Args),
}

/// Exit codes: 0 success, 1 a check that failed, 2 bad input.
const BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadInput(message)) => {
            eprint!("{message}");
            if !message.ends_with('\n') {
                eprintln!();
            }
            ExitCode::from(BAD_INPUT)
        }
        Err(Failure::Check) => ExitCode::from(1),
        Err(Failure::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Io(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(BAD_INPUT)
        }
    }
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Expand(args) => expand::run(args),
        Command::Check(args) => check::run(args),
        Command::Paths(args) => paths::run(args),
        Command::Scores(args) => scores::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Codegen(args) => codegen::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Report(args) => report::run(args),
        Command::Count(args) => count::run(args),
        Command::Import(args) => import::run(args),
    }
}
