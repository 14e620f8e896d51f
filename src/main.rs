//! The `pathc` command line. The only place that renders diagnostics for a terminal.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use pathc::{diag, emit, ExpandOptions};

#[derive(Parser)]
#[command(name = "pathc", version, about = "Symbolic path expansion of transformers (Elhage et al. 2021)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Expand a model into its sum of paths.
    Expand {
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
    },
    /// Count paths by order without enumerating them (exact at any size).
    Count {
        model: PathBuf,
        #[arg(long, value_name = "K")]
        max_order: Option<u32>,
        /// Also count attention-score terms.
        #[arg(long)]
        qk: bool,
        #[arg(long, value_enum, default_value_t = CountFormat::Text)]
        format: CountFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Latex,
    Json,
    Dot,
}

#[derive(Clone, Copy, ValueEnum)]
enum CountFormat {
    Text,
    Json,
}

/// Exit codes: 0 success, 1 a check that failed, 2 bad input.
const BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadInput(message)) => {
            eprint!("{message}");
            if !message.ends_with('\n') {
                eprintln!();
            }
            ExitCode::from(BAD_INPUT)
        }
        Err(Failure::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Io(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(BAD_INPUT)
        }
    }
}

enum Failure {
    BadInput(String),
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

fn read_model(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::BadInput(format!("error: cannot read {}: {e}", path.display())))
}

/// Renders a library error for the terminal: diagnostics with `file:line:col` and a caret.
fn render(path: &Path, source: &str, error: &pathc::Error) -> Failure {
    let diagnostics = error.diagnostics();
    let text = if diagnostics.is_empty() {
        format!("error: {error}")
    } else {
        diag::render(&path.display().to_string(), source, diagnostics)
    };
    Failure::BadInput(text)
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Expand { model, max_order, qk, format, templates, limit, output, egraph_stats } => {
            let source = read_model(&model)?;
            let mut sink: Box<dyn Write> = match &output {
                Some(path) => Box::new(BufWriter::new(
                    std::fs::File::create(path)
                        .map_err(|e| Failure::BadInput(format!("error: cannot write {}: {e}", path.display())))?,
                )),
                None => Box::new(BufWriter::with_capacity(1 << 16, io::stdout().lock())),
            };
            if let Format::Dot = format {
                let compiled = pathc::compile(&source).map_err(|e| render(&model, &source, &e))?;
                sink.write_all(emit::dot::write(&compiled.graph, &compiled.model.name).as_bytes())?;
                return Ok(sink.flush()?);
            }
            let options = ExpandOptions { max_order, qk, limit, ..ExpandOptions::default() };
            let expansion = pathc::expand(&source, &options).map_err(|e| render(&model, &source, &e))?;
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
            match format {
                Format::Text => emit::text::write(&expansion, templates, &mut sink)?,
                Format::Latex => emit::latex::write(&expansion, templates, &mut sink)?,
                Format::Json => emit::json::write(&expansion, &mut sink)?,
                Format::Dot => unreachable!("handled above"),
            }
            Ok(sink.flush()?)
        }
        Command::Count { model, max_order, qk, format } => {
            let source = read_model(&model)?;
            let compiled = pathc::compile(&source).map_err(|e| render(&model, &source, &e))?;
            let mut out = io::stdout().lock();
            let logits = compiled.logit_counts(max_order);
            let scores = qk.then(|| compiled.score_counts(max_order));
            match format {
                CountFormat::Text => {
                    writeln!(out, "{}", emit::count::text("paths", &logits))?;
                    if let Some(s) = &scores {
                        writeln!(out, "{}", emit::count::text("attention-score terms", s))?;
                    }
                }
                CountFormat::Json => {
                    writeln!(out, "{}", emit::count::json(&compiled.model.name, max_order, &logits, scores.as_ref()))?
                }
            }
            Ok(())
        }
    }
}
