//! The `pathc` command line. The only place that renders diagnostics for a terminal.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use pathc::emit::numbers;
use pathc::emit::plot::StatsPlot;
use pathc::eval::{Evaluation, Target, Targets};
use pathc::stats::WeightProcessing;
use pathc::{diag, emit, ExpandOptions};

#[derive(Parser)]
#[command(name = "pathc", version, about = "Symbolic path expansion of transformers (Elhage et al. 2021)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum GroupArg {
    Head,
    Component,
    Source,
    Order,
}

impl From<GroupArg> for numbers::Grouping {
    fn from(group: GroupArg) -> numbers::Grouping {
        match group {
            GroupArg::Head => numbers::Grouping::Head,
            GroupArg::Component => numbers::Grouping::Component,
            GroupArg::Source => numbers::Grouping::Source,
            GroupArg::Order => numbers::Grouping::Order,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum PlotWhat {
    /// Q-composition scores, (layers·heads) × (layers·heads).
    CompQ,
    /// K-composition scores.
    CompK,
    /// V-composition scores.
    CompV,
    /// OV copying scores, layers × heads.
    OvCopying,
    /// QK copying scores, layers × heads.
    QkCopying,
    /// The largest path contributions to one token's logit (needs --tokens).
    Paths,
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
    /// Sum every path with the attention patterns frozen and compare with the forward pass.
    Check {
        model: PathBuf,
        #[command(flatten)]
        run: RunArgs,
        /// Largest acceptable maximum absolute error; above it the exit code is 1.
        #[arg(long, default_value_t = 1e-9)]
        tol: f64,
        #[arg(long, value_enum, default_value_t = CountFormat::Text)]
        format: CountFormat,
    },
    /// Every path's contribution to the logits at a position.
    Paths {
        model: PathBuf,
        #[command(flatten)]
        run: RunArgs,
        /// The position: a number, `last` or `all` (default: `last`; `all` with `--target next`).
        #[arg(long)]
        pos: Option<String>,
        /// Only the N largest paths.
        #[arg(long, value_name = "N")]
        top: Option<usize>,
        /// Report each path's contribution to the logit of this token only (direct logit
        /// attribution), or with `next` to the logit of the next token of the sequence at each
        /// position (the last position has none and is left out); ranked by its size. Without it,
        /// every path's whole logit row, ranked by its norm.
        #[arg(long, value_name = "TOKEN|next")]
        target: Option<Target>,
        /// Sum the paths by group: the last head they pass (`head`), the residual component they
        /// end in (`component`, TransformerLens's decompose_resid labels), `source` or `order`.
        #[arg(long, value_enum)]
        group: Option<GroupArg>,
        #[arg(long, value_enum, default_value_t = CountFormat::Text)]
        format: CountFormat,
    },
    /// Every (query path, key path) term's contribution to one head's attention scores.
    Scores {
        model: PathBuf,
        #[command(flatten)]
        run: RunArgs,
        /// The head, as `L1H2`.
        #[arg(long)]
        head: String,
        /// The query position: a number, `last` (the default) or `all`.
        #[arg(long, default_value = "last")]
        pos: String,
        /// Only the N largest terms.
        #[arg(long, value_name = "N")]
        top: Option<usize>,
        #[arg(long, value_enum, default_value_t = CountFormat::Text)]
        format: CountFormat,
    },
    /// Per-head circuit statistics: copying scores, Frobenius norms, composition scores.
    Stats {
        model: PathBuf,
        /// A TransformerLens state_dict: safetensors (f16, bf16, f32, f64) or npz.
        #[arg(long, value_name = "FILE")]
        weights: PathBuf,
        /// Read a TransformerLens tensor under another name (see `check --help`).
        #[arg(long = "name", value_name = "TL=FILE")]
        names: Vec<String>,
        /// Fold the LayerNorm weights into W_Q, W_K, W_V and W_U (and centre them) first, as
        /// TransformerLens's `fold_ln` does; by default the weights are used as given.
        #[arg(long)]
        fold_ln: bool,
        #[arg(long, value_enum, default_value_t = CountFormat::Text)]
        format: CountFormat,
    },
    /// The evaluation plan of the statistics the e-graph chooses, against the naive one: every
    /// step with its shape, rank bound, instances and FLOPs, and each plan's peak memory.
    Plan {
        model: PathBuf,
        /// Take the sizes from these weights (needed when the model file leaves one symbolic).
        #[arg(long, value_name = "FILE")]
        weights: Option<PathBuf>,
        #[arg(long = "name", value_name = "TL=FILE")]
        names: Vec<String>,
        #[arg(long, value_enum, default_value_t = CountFormat::Text)]
        format: CountFormat,
    },
    /// Generate standalone analysis code: one function per path family and per statistic.
    Codegen {
        model: PathBuf,
        /// The language of the generated code.
        #[arg(long, value_enum)]
        lang: Lang,
        /// Keep only paths through at most K heads.
        #[arg(long, value_name = "K")]
        max_order: Option<u32>,
        /// Keep only paths through this head (`L1H3`; repeatable: through all of them).
        #[arg(long, value_name = "HEAD", num_args = 1..)]
        through: Vec<String>,
        /// Refuse to expand more paths than this.
        #[arg(long, value_name = "N", default_value_t = pathc::DEFAULT_ENUMERATION_LIMIT)]
        limit: u64,
        /// Write to FILE instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Plot statistics (heatmaps) or path contributions (a bar chart) as SVG.
    Plot {
        model: PathBuf,
        /// A TransformerLens state_dict: safetensors (f16, bf16, f32, f64) or npz.
        #[arg(long, value_name = "FILE")]
        weights: PathBuf,
        /// What to plot.
        #[arg(long, value_enum)]
        what: PlotWhat,
        /// Token ids, comma-separated (`--what paths` only, where they are required).
        #[arg(long, value_delimiter = ',', num_args = 1..)]
        tokens: Vec<usize>,
        /// The position (`--what paths`): a number or `last` (the default).
        #[arg(long)]
        pos: Option<String>,
        /// The token whose logit the paths are ranked by (`--what paths`; default: the model's
        /// top prediction at the position).
        #[arg(long, value_name = "TOKEN")]
        target: Option<usize>,
        /// How many paths (`--what paths`; default 20).
        #[arg(long, value_name = "N")]
        top: Option<usize>,
        /// Statistics of LayerNorm-folded weights (statistics plots; see `stats --help`).
        #[arg(long)]
        fold_ln: bool,
        /// Keep only paths through at most K heads (`--what paths`).
        #[arg(long, value_name = "K")]
        max_order: Option<u32>,
        /// Refuse to enumerate more paths than this (`--what paths`).
        #[arg(long, value_name = "N", default_value_t = pathc::DEFAULT_ENUMERATION_LIMIT)]
        limit: u64,
        /// Read a TransformerLens tensor under another name (see `check --help`).
        #[arg(long = "name", value_name = "TL=FILE")]
        names: Vec<String>,
        /// The SVG file to write (replaced only once the plot is complete).
        #[arg(short, long, value_name = "FILE", required = true)]
        output: PathBuf,
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

/// What every numeric command needs: weights, tokens, and the expansion's options.
#[derive(clap::Args)]
struct RunArgs {
    /// A TransformerLens state_dict: safetensors (f16, bf16, f32, f64) or npz.
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Token ids, comma-separated: `--tokens 3,7,1`.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    tokens: Vec<usize>,
    /// Keep only paths through at most K heads.
    #[arg(long, value_name = "K")]
    max_order: Option<u32>,
    /// Refuse to enumerate more paths than this.
    #[arg(long, value_name = "N", default_value_t = pathc::DEFAULT_ENUMERATION_LIMIT)]
    limit: u64,
    /// Read a TransformerLens tensor under another name: `--name 'blocks.{l}.attn.W_Q=layers.{l}.wq'`
    /// (`{l}` is the layer; repeatable). Tensors keep TransformerLens's layout.
    #[arg(long = "name", value_name = "TL=FILE")]
    names: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Latex,
    Json,
    Dot,
}

#[derive(Clone, Copy, ValueEnum)]
enum Lang {
    Python,
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
        Err(Failure::Check) => ExitCode::from(1),
        Err(Failure::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Io(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(BAD_INPUT)
        }
    }
}

enum Failure {
    BadInput(String),
    /// A check that ran and failed: exit 1, its report already printed.
    Check,
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
                let dot = pathc::dot(&source, limit).map_err(|e| render(&model, &source, &e))?;
                sink.write_all(dot.as_bytes())?;
                return Ok(sink.flush()?);
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
            match format {
                Format::Text => emit::text::write(&expansion, templates, &mut sink)?,
                Format::Latex => emit::latex::write(&expansion, templates, &mut sink)?,
                Format::Json => emit::json::write(&expansion, &mut sink)?,
                Format::Dot => unreachable!("handled above"),
            }
            Ok(sink.flush()?)
        }
        Command::Check { model, run, tol, format } => {
            let evaluation = evaluate(&model, &run, false)?;
            let report = pathc::eval::check(&evaluation.expansion, &evaluation.params, &evaluation.forward);
            let mut out = io::stdout().lock();
            match format {
                CountFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report).expect("plain data"))?,
                CountFormat::Text => {
                    let scope = match report.max_order {
                        Some(k) => format!("{} paths of order ≤ {k}", report.paths),
                        None => format!("{} paths (every order)", report.paths),
                    };
                    writeln!(out, "model {}, {} tokens, {scope}", evaluation.expansion.model.name, run.tokens.len())?;
                    if report.max_order.is_some() {
                        writeln!(
                            out,
                            "the omitted orders contribute up to {:.6} to a logit (computed by the graded recursion and added back)",
                            report.omitted_max_abs
                        )?;
                    }
                    writeln!(
                        out,
                        "max |Σ paths − logits| = {:.3e} (relative {:.3e}; max |logit| = {:.3})",
                        report.max_abs_error, report.max_rel_error, report.max_abs_logit
                    )?;
                }
            }
            if report.max_abs_error.is_nan() || report.max_abs_error > tol {
                writeln!(out, "FAILED: above --tol {tol:e}")?;
                out.flush()?;
                return Err(Failure::Check);
            }
            if let CountFormat::Text = format {
                writeln!(out, "ok: within --tol {tol:e}")?;
            }
            Ok(())
        }
        Command::Paths { model, run, pos, top, target, group, format } => {
            let evaluation = evaluate(&model, &run, false)?;
            // The next token's logit is asked at every position by default: the last has none.
            let pos = pos.as_deref().unwrap_or(if target == Some(Target::Next) { "all" } else { "last" });
            let position = parse_position(pos, run.tokens.len())?;
            // The text table ranks paths; JSON keeps path order unless asked to rank.
            let rank = matches!(format, CountFormat::Text) || top.is_some() || target.is_some();
            if let Some(target) = target {
                let d_vocab = evaluation.params.d_vocab();
                let targets = Targets::resolve(target, &evaluation.forward.tokens, d_vocab, position).map_err(|e| {
                    Failure::BadInput(match e {
                        pathc::eval::EvalError::TargetOutOfRange { token, d_vocab } => {
                            format!("error: --target {token} is out of range: d_vocab is {d_vocab}")
                        }
                        pathc::eval::EvalError::NoNextToken { .. } => format!(
                            "error: --target next: {e}; ask for every other position with --pos all (the default with --target next) or a position before {}",
                            run.tokens.len() - 1
                        ),
                        other => format!("error: --target {target}: {other}"),
                    })
                })?;
                let table = numbers::target_table(&evaluation, &targets, group.map(Into::into), top, rank);
                let mut out = BufWriter::new(io::stdout().lock());
                match format {
                    CountFormat::Json => {
                        numbers::write_target_json(&mut out, &evaluation, target, &targets, position, &table)?
                    }
                    CountFormat::Text => {
                        numbers::write_target_text(&mut out, &evaluation, target, &targets, position, &table)?
                    }
                }
                return Ok(out.flush()?);
            }
            let table = match group {
                Some(group) => {
                    numbers::group_table(&evaluation, group.into(), position, None, top, rank, &TerminalProgress::new())
                }
                None => numbers::path_table(&evaluation, position, None, top, rank, &TerminalProgress::new()),
            };
            let mut out = BufWriter::new(io::stdout().lock());
            match format {
                CountFormat::Json => numbers::write_paths_json(&mut out, &evaluation, position, &table)?,
                CountFormat::Text => numbers::write_paths_text(&mut out, &evaluation, position, None, &table)?,
            }
            Ok(out.flush()?)
        }
        Command::Scores { model, run, head, pos, top, format } => {
            let evaluation = evaluate(&model, &run, true)?;
            let position = parse_position(&pos, run.tokens.len())?;
            let heads = evaluation.expansion.heads_per_layer();
            let (layer, head) =
                parse_head(&head).filter(|&(l, h)| l < heads.len() && h < heads[l]).ok_or_else(|| {
                    Failure::BadInput(format!("error: --head {head} is not a head of this model (write it as L1H2)"))
                })?;
            let report = numbers::score_table(&evaluation, layer, head, position, top);
            let mut out = BufWriter::new(io::stdout().lock());
            match format {
                CountFormat::Json => {
                    numbers::write_scores_json(&mut out, &evaluation, (layer, head), position, &report)?
                }
                CountFormat::Text => {
                    numbers::write_scores_text(&mut out, &evaluation, (layer, head), position, &report)?
                }
            }
            Ok(out.flush()?)
        }
        Command::Stats { model, weights, names, fold_ln, format } => {
            let source = read_model(&model)?;
            let fail = |e: pathc::Error| render(&model, &source, &e);
            let compiled = pathc::compile(&source).map_err(fail)?;
            let names = pathc::eval::NameMap::parse(&names).map_err(|e| fail(e.into()))?;
            let weights = pathc::load_weights(&weights).map_err(fail)?;
            let params = pathc::eval::StatsParams::from_weights(&compiled.model, &weights, &names)
                .map_err(|e| fail(e.into()))?;
            let processing = if fold_ln { WeightProcessing::FoldLn } else { WeightProcessing::AsGiven };
            let stats = pathc::stats::stats_streamed(params, processing, &TerminalProgress::new())
                .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
            let mut out = BufWriter::new(io::stdout().lock());
            match format {
                CountFormat::Json => {
                    serde_json::to_writer_pretty(&mut out, &stats).map_err(io::Error::from)?;
                    writeln!(out)?;
                }
                CountFormat::Text => numbers::write_stats_text(&mut out, &compiled.model.name, &stats)?,
            }
            Ok(out.flush()?)
        }
        Command::Plan { model, weights, names, format } => {
            let source = read_model(&model)?;
            let fail = |e: pathc::Error| render(&model, &source, &e);
            let compiled = pathc::compile(&source).map_err(fail)?;
            let plans = match weights {
                Some(weights) => {
                    let names = pathc::eval::NameMap::parse(&names).map_err(|e| fail(e.into()))?;
                    let weights = pathc::load_weights(&weights).map_err(fail)?;
                    pathc::plan_stats_from_weights(&compiled.model, &weights, &names).map_err(fail)?
                }
                None => pathc::plan_stats(&compiled.model).map_err(|e| {
                    let hint = "; give --weights to take the sizes from a weights file";
                    Failure::BadInput(format!("error: {e}{hint}"))
                })?,
            };
            let threads = pathc::parallel::threads();
            let mut out = BufWriter::new(io::stdout().lock());
            match format {
                CountFormat::Text => out.write_all(plans.render(&compiled.model.name, threads).as_bytes())?,
                CountFormat::Json => {
                    serde_json::to_writer_pretty(&mut out, &plans.to_json(&compiled.model.name, threads))
                        .map_err(io::Error::from)?;
                    writeln!(out)?;
                }
            }
            Ok(out.flush()?)
        }
        Command::Codegen { model, lang, max_order, through, limit, output } => {
            let source = read_model(&model)?;
            let mut heads = Vec::new();
            for text in &through {
                let (layer, head) = parse_head(text).ok_or_else(|| {
                    Failure::BadInput(format!("error: --through {text}: write a head as L1H2 (layer 1, head 2)"))
                })?;
                heads.push(pathc::paths::HeadRef { layer, head });
            }
            let options = ExpandOptions { max_order, limit, ..ExpandOptions::default() };
            let expansion = pathc::expand(&source, &options).map_err(|e| render(&model, &source, &e))?;
            let selection = pathc::codegen::Options { max_order: None, through: heads };
            let code = match lang {
                Lang::Python => pathc::codegen::python::generate(&expansion, &selection),
            }
            .map_err(|e| match e {
                pathc::codegen::CodegenError::UnknownHead { .. } => Failure::BadInput(format!("error: --through {e}")),
                other => Failure::BadInput(format!("error: {other}")),
            })?;
            match &output {
                Some(path) => std::fs::write(path, code)
                    .map_err(|e| Failure::BadInput(format!("error: cannot write {}: {e}", path.display())))?,
                None => io::stdout().lock().write_all(code.as_bytes())?,
            }
            Ok(())
        }
        Command::Plot { model, weights, what, tokens, pos, target, top, fold_ln, max_order, limit, names, output } => {
            let stats_plot = match what {
                PlotWhat::CompQ => Some(StatsPlot::CompQ),
                PlotWhat::CompK => Some(StatsPlot::CompK),
                PlotWhat::CompV => Some(StatsPlot::CompV),
                PlotWhat::OvCopying => Some(StatsPlot::OvCopying),
                PlotWhat::QkCopying => Some(StatsPlot::QkCopying),
                PlotWhat::Paths => None,
            };
            let svg = if let Some(plot) = stats_plot {
                let misplaced = [
                    (!tokens.is_empty(), "--tokens"),
                    (pos.is_some(), "--pos"),
                    (target.is_some(), "--target"),
                    (top.is_some(), "--top"),
                    (max_order.is_some(), "--max-order"),
                ];
                if let Some((_, flag)) = misplaced.iter().find(|(given, _)| *given) {
                    return Err(Failure::BadInput(format!(
                        "error: {flag} applies only to --what paths (statistics come from the weights alone)"
                    )));
                }
                let source = read_model(&model)?;
                let fail = |e: pathc::Error| render(&model, &source, &e);
                let compiled = pathc::compile(&source).map_err(fail)?;
                let names = pathc::eval::NameMap::parse(&names).map_err(|e| fail(e.into()))?;
                let params = pathc::load_params(&compiled, &weights, &names).map_err(fail)?;
                let processing = if fold_ln { WeightProcessing::FoldLn } else { WeightProcessing::AsGiven };
                let stats = pathc::stats::stats_processed(&params, processing)
                    .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
                pathc::emit::plot::stats_heatmap(&compiled.model.name, &stats, plot)
            } else {
                if tokens.is_empty() {
                    return Err(Failure::BadInput(
                        "error: --what paths needs --tokens (the token ids to run the model on, e.g. --tokens 3,7,1)"
                            .to_string(),
                    ));
                }
                if fold_ln {
                    return Err(Failure::BadInput(
                        "error: --fold-ln applies to the statistics plots; path contributions always use the folded weights with the LayerNorm scales frozen".to_string(),
                    ));
                }
                let run = RunArgs { weights, tokens, max_order, limit, names };
                let evaluation = evaluate(&model, &run, false)?;
                let position = match parse_position(pos.as_deref().unwrap_or("last"), run.tokens.len())? {
                    Some(p) => p,
                    None => {
                        return Err(Failure::BadInput(
                            "error: --what paths plots one position: give a number or `last`, not `all`".to_string(),
                        ))
                    }
                };
                let d_vocab = evaluation.params.d_vocab();
                let (target, chosen) = match target {
                    Some(t) if t >= d_vocab => {
                        return Err(Failure::BadInput(format!(
                            "error: --target {t} is out of range: d_vocab is {d_vocab}"
                        )))
                    }
                    Some(t) => (t, "given by --target"),
                    None => {
                        let row = evaluation.forward.logits.row(position);
                        // The first of equal maxima, as argmax.
                        let best = (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b });
                        (best, "= the model's top prediction there")
                    }
                };
                pathc::emit::plot::paths_chart(&evaluation, position, target, chosen, top.unwrap_or(20))
            };
            let svg = svg.map_err(|e| Failure::BadInput(format!("error: {e}")))?;
            write_atomically(&output, svg.as_bytes())
        }
        Command::Count { model, max_order, qk, format } => {
            let source = read_model(&model)?;
            let compiled = pathc::compile(&source).map_err(|e| render(&model, &source, &e))?;
            let mut out = io::stdout().lock();
            let pathc::paths::TermCounts { logits, mlp_inputs, scores } = compiled.counts(max_order, qk);
            match format {
                CountFormat::Text => {
                    writeln!(out, "{}", emit::count::text("paths", &logits))?;
                    for block in emit::count::mlp_inputs_text(&mlp_inputs) {
                        writeln!(out, "{block}")?;
                    }
                    if let Some(s) = &scores {
                        writeln!(out, "{}", emit::count::text("attention-score terms", s))?;
                    }
                }
                CountFormat::Json => writeln!(
                    out,
                    "{}",
                    emit::count::json(&compiled.model.name, max_order, &logits, &mlp_inputs, scores.as_ref())
                )?,
            }
            Ok(())
        }
    }
}

/// Expands the model, loads its weights and runs the forward pass on the tokens.
fn evaluate(model: &Path, run: &RunArgs, qk: bool) -> Result<Evaluation, Failure> {
    let source = read_model(model)?;
    let fail = |e: pathc::Error| render(model, &source, &e);
    let compiled = pathc::compile(&source).map_err(fail)?;
    let names = pathc::eval::NameMap::parse(&run.names).map_err(|e| fail(e.into()))?;
    let params = pathc::load_params(&compiled, &run.weights, &names).map_err(fail)?;
    let forward = pathc::eval::forward(&params, &run.tokens).map_err(|e| fail(e.into()))?;
    let options = ExpandOptions { max_order: run.max_order, limit: run.limit, qk, ..ExpandOptions::default() };
    let expansion = pathc::expand_compiled(compiled, &options).map_err(fail)?;
    Ok(Evaluation { expansion, params, forward })
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`: `path` is either
/// untouched or complete, and no temporary file is left behind on error.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let cannot = |e: io::Error| Failure::BadInput(format!("error: cannot write {}: {e}", path.display()));
    let name = path.file_name().ok_or_else(|| cannot(io::Error::other("not a file name")))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let written = std::fs::File::create(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&temp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(cannot(e))
        }
    }
}

fn parse_position(pos: &str, n: usize) -> Result<Option<usize>, Failure> {
    match pos {
        "all" => Ok(None),
        "last" => Ok(Some(n - 1)),
        p => match p.parse::<usize>() {
            Ok(p) if p < n => Ok(Some(p)),
            Ok(p) => Err(Failure::BadInput(format!("error: position {p} is out of range for {n} tokens"))),
            Err(_) => Err(Failure::BadInput(format!("error: --pos takes a number, `last` or `all`, not `{p}`"))),
        },
    }
}

/// `L1H2` → (1, 2).
fn parse_head(text: &str) -> Option<(usize, usize)> {
    let (layer, head) = text.strip_prefix('L')?.split_once('H')?;
    Some((layer.parse().ok()?, head.parse().ok()?))
}

/// A progress bar on standard error, drawn only when standard error is a terminal and only once
/// the job has run for [`TerminalProgress::AFTER`] (`PATHC_PROGRESS_AFTER_MS` overrides it):
/// short jobs and redirected output stay silent.
struct TerminalProgress {
    bar: indicatif::ProgressBar,
    started: std::time::Instant,
    after: std::time::Duration,
    shown: std::sync::atomic::AtomicBool,
}

impl TerminalProgress {
    const AFTER: std::time::Duration = std::time::Duration::from_secs(1);

    fn new() -> TerminalProgress {
        let after = std::env::var("PATHC_PROGRESS_AFTER_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(Self::AFTER, std::time::Duration::from_millis);
        TerminalProgress {
            bar: indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::hidden()),
            started: std::time::Instant::now(),
            after,
            shown: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl pathc::progress::Progress for TerminalProgress {
    fn start(&self, what: &str, total: u64) {
        self.bar.set_length(total);
        self.bar.set_message(what.to_string());
        let style = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({elapsed}, {eta} left)");
        if let Ok(style) = style {
            self.bar.set_style(style.progress_chars("=> "));
        }
    }

    fn advance(&self, units: u64) {
        use std::io::IsTerminal;
        use std::sync::atomic::Ordering;
        if !self.shown.load(Ordering::Relaxed) && self.started.elapsed() >= self.after && io::stderr().is_terminal() {
            self.shown.store(true, Ordering::Relaxed);
            self.bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        self.bar.inc(units);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
