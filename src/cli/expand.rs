//! `pathc expand`: a model's sum of paths as text, LaTeX, JSON or DOT.

use std::path::PathBuf;

use clap::ValueEnum;

use pathc::{emit, ExpandOptions};

use super::failure::{read_model, render, Failure};
use super::output;
use super::progress::TerminalProgress;

// (`//`, not `///`: see the module docs of `cli`.)
#[derive(clap::Args)]
pub struct Args {
    /// The model file (`*.tf`).
    model: PathBuf,
    /// Keep only paths through at most K heads.
    #[arg(long, value_name = "K")]
    max_order: Option<u32>,
    /// Also expand each head's attention scores into (query path, key path) terms.
    #[arg(long)]
    qk: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Print only the symbolic templates (Σ over heads), not every concrete path (text, latex).
    #[arg(long)]
    templates: bool,
    /// Refuse to enumerate more terms than this.
    #[arg(long, value_name = "N", default_value_t = pathc::DEFAULT_ENUMERATION_LIMIT)]
    limit: u64,
    /// Write to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Report the e-graph's size (e-nodes, e-classes, iterations) on standard error.
    #[arg(long)]
    egraph_stats: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Latex,
    Json,
    Dot,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let Args { model, max_order, qk, format, templates, limit, output, egraph_stats } = args;
    let source = read_model(&model)?;
    if let Format::Dot = format {
        let dot = pathc::dot(&source, limit).map_err(|e| render(&model, &source, &e))?;
        return output::write(output.as_deref(), dot.as_bytes());
    }
    // Templates alone enumerate nothing, so the enumeration limit does not apply to them.
    let templates_only = templates && matches!(format, Format::Text | Format::Latex);
    let options = ExpandOptions { max_order, qk, limit, templates_only, ..ExpandOptions::default() };
    let compiled = pathc::compile(&source).map_err(|e| render(&model, &source, &e))?;
    let expansion = pathc::expand_with_progress(compiled, &options, &TerminalProgress::new())
        .map_err(|e| render(&model, &source, &e))?;
    if egraph_stats {
        let s = &expansion.logit_stats;
        eprintln!(
            "logits: {} saturation runs, {} e-nodes in all (largest {}), {} iterations",
            s.runs, s.e_nodes, s.max_e_nodes, s.iterations
        );
        if let Some(s) = &expansion.score_stats {
            eprintln!(
                "scores: {} saturation runs, {} e-nodes in all (largest {}), {} iterations",
                s.runs, s.e_nodes, s.max_e_nodes, s.iterations
            );
        }
    }
    // Opened only now that the expansion exists: a refusal leaves `-o FILE` untouched.
    let mut sink = output::Sink::open(output.as_deref())?;
    match format {
        Format::Text => emit::text::write(&expansion, templates, &mut sink)?,
        Format::Latex => emit::latex::write(&expansion, templates, &mut sink)?,
        Format::Json => emit::json::write(&expansion, &mut sink)?,
        Format::Dot => unreachable!("handled above"),
    }
    sink.finish()
}
