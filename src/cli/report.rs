//! `pathc report`: one self-contained HTML page of a prompt's paths, attention patterns with their
//! score terms, the circuit statistics and the check.

use std::io::Write;
use std::path::PathBuf;

use pathc::emit::report::{self, ReportOptions};
use pathc::eval::Processing;

use super::failure::Failure;
use super::output::OutputFile;
use super::parse::{parse_position, parse_target, PrecisionArg, TargetArg};
use super::run::{evaluate, resolve_target, target_at, RunArgs};

// (`//`, not `///`: see the module docs of `cli`.)
#[derive(clap::Args)]
pub struct Args {
    model: PathBuf,
    #[command(flatten)]
    run: RunArgs,
    /// The position whose logit the paths explain: a number or `last` (the default).
    #[arg(long, default_value = "last")]
    pos: String,
    /// The token whose logit the paths make: a token id, `next` for the token after the
    /// position, or a text that is one token (see `paths --help`; default: the model's top
    /// prediction at the position).
    #[arg(long, value_name = "TOKEN|next", value_parser = parse_target, allow_hyphen_values = true)]
    target: Option<TargetArg>,
    /// How many paths the page names (the largest; the others are summed in the tree).
    #[arg(long, value_name = "N", default_value_t = ReportOptions::default().top_paths)]
    top: usize,
    /// How many (query path, key path) terms each attention score shows (the largest; the
    /// others are summed).
    #[arg(long, value_name = "N", default_value_t = ReportOptions::default().top_terms)]
    top_terms: usize,
    /// Leave out the circuit statistics (composition and copying scores), which multiply the
    /// vocabulary-wide matrices.
    #[arg(long)]
    no_stats: bool,
    /// The precision of the statistics' matrix products (as in `pathc stats`): f32 (twice the speed; within 1e-5
    /// relative of f64's numbers) or f64. Sums over the vocabulary, norms and eigenvalues are f64
    /// either way.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// Refuse to write a page larger than this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = ReportOptions::default().max_bytes)]
    max_bytes: usize,
    /// The HTML file to write (replaced only once the page is complete).
    #[arg(short, long, value_name = "FILE", required = true)]
    output: PathBuf,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let Args { model, run, pos, target, top, top_terms, no_stats, precision, max_bytes, output } = args;
    if run.dataset.is_some() {
        return Err(Failure::BadInput(
            "error: --dataset: a report is of one prompt (give --tokens or --text)".to_string(),
        ));
    }
    let input = run.input()?;
    let target = target.map(|t| resolve_target(&t, &input)).transpose()?;
    let evaluation = evaluate(&model, &run, input.ids(), true)?;
    let position = parse_position(&pos, input.ids().len())?.ok_or_else(|| {
        Failure::BadInput("error: --pos all: a report explains one position (a number or `last`)".to_string())
    })?;
    let (target, why) = target_at(&evaluation, target, position)?;
    let stats = if no_stats {
        Err("left out (--no-stats)".to_string())
    } else {
        // The weights are processed already (`evaluate`); the statistics record how.
        let stats = pathc::stats::stats_processed_with_progress(
            &evaluation.params,
            pathc::stats::StatsOptions { precision: precision.into(), ..Processing::NONE.into() },
            &super::progress::TerminalProgress::new(),
        )
        .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
        Ok(pathc::stats::Stats { weight_processing: run.processing.processing(), ..stats })
    };
    let options = ReportOptions { position, target, target_why: why.to_string(), top_paths: top, top_terms, max_bytes };
    let fail = |e: report::ReportError| Failure::BadInput(format!("error: {e}"));
    let report =
        report::report(&evaluation, stats, input.labels(), &options, &super::progress::TerminalProgress::new())
            .map_err(fail)?;
    let page = report::html(&report, max_bytes, top_terms).map_err(fail)?;
    let mut file = OutputFile::open(&output)?;
    file.write_all(page.as_bytes())?;
    file.commit()
}
