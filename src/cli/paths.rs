//! `pathc paths`: every path's contribution to the logits at a position, whole rows or one target
//! token's logit, path by path or summed by group.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use clap::ValueEnum;

use pathc::emit::numbers;
use pathc::eval::Target;

use super::failure::Failure;
use super::output::{dataset_rank, RankArg, TextJsonCsv, TextOrJson};
use super::parse::{parse_position, parse_target, TargetArg};
use super::progress::TerminalProgress;
use super::run::{dataset_failure, evaluate, load, logit_question, resolve_target, resolve_targets, RunArgs};

// (`//`, not `///`: see the module docs of `cli`.)
#[derive(clap::Args)]
pub struct Args {
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
    /// every path's whole logit row, ranked by its norm. A token is an id (only digits), or a text
    /// that is one token with the tokenizer (`' Mary'`; in double quotes a JSON string: `'"42"'`).
    #[arg(long, value_name = "TOKEN|next", value_parser = parse_target, allow_hyphen_values = true)]
    target: Option<TargetArg>,
    /// Sum the paths by group: the last head they pass (`head`), the residual component they
    /// end in (`component`, TransformerLens's decompose_resid labels), `source` or `order`.
    #[arg(long, value_enum)]
    group: Option<GroupArg>,
    /// With --dataset: subtract this token's logit (the logit difference `--target T --against U`,
    /// the IOI metric); a prompt's own "against" field overrides it.
    #[arg(long, value_name = "TOKEN", value_parser = parse_target, allow_hyphen_values = true)]
    against: Option<TargetArg>,
    /// With --dataset: rank by |mean| (default), the mean |contribution| (`abs`) or `std`.
    #[arg(long, value_enum)]
    rank: Option<RankArg>,
    /// With --dataset: every prompt's contributions too (JSON Lines with --format json: a header,
    /// one line a prompt, the summary last; CSV: one row per path × prompt).
    #[arg(long)]
    per_prompt: bool,
    /// `text`, `json`, or with --dataset `csv`.
    #[arg(long, value_enum, default_value_t = TextJsonCsv::Text)]
    format: TextJsonCsv,
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

pub fn run(args: Args) -> Result<(), Failure> {
    if run_dataset(&args)? {
        return Ok(());
    }
    let Args { model, run, pos, top, target, group, format, against, rank, per_prompt } = args;
    for (given, flag) in [(against.is_some(), "--against"), (rank.is_some(), "--rank"), (per_prompt, "--per-prompt")] {
        if given {
            return Err(Failure::BadInput(format!(
                "error: {flag} applies to --dataset (a dataset of one prompt is a one-line .jsonl file)"
            )));
        }
    }
    let format = format.single()?;
    let input = run.input()?;
    let target = target.map(|t| resolve_target(&t, &input)).transpose()?;
    let evaluation = evaluate(&model, &run, input.ids(), false)?;
    let labels = input.labels();
    // The next token's logit is asked at every position by default: the last has none.
    let pos = pos.as_deref().unwrap_or(if target == Some(Target::Next) { "all" } else { "last" });
    let position = parse_position(pos, input.ids().len())?;
    // The text table ranks paths; JSON keeps path order unless asked to rank.
    let rank = matches!(format, TextOrJson::Text) || top.is_some() || target.is_some();
    if let Some(target) = target {
        let targets = resolve_targets(&evaluation, target, position, true)?;
        let table =
            numbers::target_table(&evaluation, &targets, group.map(Into::into), top, rank, &TerminalProgress::new())?;
        let mut out = BufWriter::new(io::stdout().lock());
        match format {
            TextOrJson::Json => {
                numbers::write_target_json(&mut out, &evaluation, target, &targets, position, &table, labels)?
            }
            TextOrJson::Text => {
                numbers::write_target_text(&mut out, &evaluation, target, &targets, position, &table, labels)?
            }
        }
        return Ok(out.flush()?);
    }
    let table = match group {
        Some(group) => {
            numbers::group_table(&evaluation, group.into(), position, None, top, rank, &TerminalProgress::new())
        }
        None => numbers::path_table(&evaluation, position, None, top, rank, &TerminalProgress::new()),
    }?;
    let mut out = BufWriter::new(io::stdout().lock());
    match format {
        TextOrJson::Json => numbers::write_paths_json(&mut out, &evaluation, position, &table, labels)?,
        TextOrJson::Text => numbers::write_paths_text(&mut out, &evaluation, position, None, &table, labels)?,
    }
    Ok(out.flush()?)
}

/// `paths --dataset`: each path's (or group's) contribution to the metric over the prompts. Returns
/// whether there was a dataset.
fn run_dataset(args: &Args) -> Result<bool, Failure> {
    use pathc::aggregate;
    use pathc::emit::dataset as report;
    let Some(dataset) = args.run.dataset_input()? else { return Ok(false) };
    let question =
        logit_question(args.target.as_ref(), args.against.as_ref(), args.pos.as_deref(), dataset.tokenizer.as_ref())?;
    let (expansion, params) = load(&args.model, &args.run, false)?;
    let grouping = args.group.map(Into::into);
    let model = expansion.model.name.clone();
    let (names, orders) = aggregate::path_rows(&expansion, grouping);
    let mut out = BufWriter::new(io::stdout().lock());
    let per_prompt = args.per_prompt;
    // The per-prompt rows are written as they come; the first pass has checked every prompt.
    let mut header = false;
    let result = aggregate::dataset_paths(
        &expansion,
        &params,
        &dataset.path,
        dataset.inputs(),
        question,
        grouping,
        &TerminalProgress::new(),
        |prompt| {
            if !per_prompt {
                return Ok(());
            }
            match args.format {
                TextJsonCsv::Csv => {
                    if !std::mem::replace(&mut header, true) {
                        report::write_prompt_paths_csv_header(&mut out)?;
                    }
                    report::write_prompt_paths_csv(&mut out, &names, &orders, prompt)
                }
                TextJsonCsv::Json => {
                    if !std::mem::replace(&mut header, true) {
                        report::write_prompt_paths_jsonl_header(&mut out, &names, &orders)?;
                    }
                    report::write_prompt_paths_jsonl(&mut out, prompt)
                }
                TextJsonCsv::Text => {
                    if !std::mem::replace(&mut header, true) {
                        writeln!(out, "line\tmetric\t{}", names.join("\t"))?;
                    }
                    let values: Vec<String> = prompt.values.iter().map(|v| format!("{v:.6}")).collect();
                    writeln!(out, "{}\t{:.6}\t{}", prompt.line, prompt.metric, values.join("\t"))
                }
            }
        },
    )
    .map_err(dataset_failure)?;
    let rank = dataset_rank(args.rank, args.format, args.top);
    let rows = report::ranked_paths(&result.rows, rank, args.top);
    match (args.format, per_prompt) {
        (TextJsonCsv::Csv, true) => {}
        (TextJsonCsv::Csv, false) => report::write_paths_csv(&mut out, &rows)?,
        (TextJsonCsv::Json, true) => {
            report::write_paths_jsonl_summary(&mut out, &model, &dataset.path, &question, &result, &rows)?
        }
        (TextJsonCsv::Json, false) => {
            report::write_paths_json(&mut out, &model, &dataset.path, &question, &result, &rows)?
        }
        (TextJsonCsv::Text, _) => {
            if per_prompt {
                writeln!(out)?;
            }
            report::write_paths_text(&mut out, &model, &dataset.path, &question, &result, &rows, rank)?
        }
    }
    out.flush()?;
    Ok(true)
}
