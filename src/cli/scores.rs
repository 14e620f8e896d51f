//! `pathc scores`: every (query path, key path) term's contribution to one head's attention scores.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use pathc::emit::numbers;

use super::failure::Failure;
use super::output::{dataset_rank, RankArg, TextJsonCsv, TextOrJson};
use super::parse::{parse_head_of, parse_position};
use super::progress::TerminalProgress;
use super::run::{dataset_failure, evaluate, load, RunArgs};

// (`//`, not `///`: see the module docs of `cli`.)
#[derive(clap::Args)]
pub struct Args {
    model: PathBuf,
    #[command(flatten)]
    run: RunArgs,
    /// The head, as `L1H2`.
    #[arg(long)]
    head: String,
    /// The query position: a number, `last` (the default) or `all` (`all`: not with --dataset,
    /// where a prompt's "position" field overrides it).
    #[arg(long, default_value = "last")]
    pos: String,
    /// Only the N largest terms.
    #[arg(long, value_name = "N")]
    top: Option<usize>,
    /// With --dataset: the key position whose score is attributed, against `--against-key`: each
    /// term's contribution to the score difference s[query, key] − s[query, against-key], and its
    /// effect on the attention probability p[query, key]. A prompt's "key" field overrides it.
    #[arg(long, value_name = "K")]
    key: Option<usize>,
    /// With --dataset: the key position compared against (a prompt's "against_key" overrides it).
    #[arg(long, value_name = "K")]
    against_key: Option<usize>,
    /// With --dataset: rank by |mean| (default), the mean |contribution| (`abs`) or `std`.
    #[arg(long, value_enum)]
    rank: Option<RankArg>,
    /// With --dataset: every prompt's terms too (JSON Lines with --format json, or CSV).
    #[arg(long)]
    per_prompt: bool,
    /// `text`, `json`, or with --dataset `csv`.
    #[arg(long, value_enum, default_value_t = TextJsonCsv::Text)]
    format: TextJsonCsv,
}

pub fn run(args: Args) -> Result<(), Failure> {
    if run_dataset(&args)? {
        return Ok(());
    }
    let Args { model, run, head, pos, top, format, key, against_key, rank, per_prompt } = args;
    for (given, flag) in [
        (key.is_some(), "--key"),
        (against_key.is_some(), "--against-key"),
        (rank.is_some(), "--rank"),
        (per_prompt, "--per-prompt"),
    ] {
        if given {
            return Err(Failure::BadInput(format!(
                "error: {flag} applies to --dataset (a dataset of one prompt is a one-line .jsonl file)"
            )));
        }
    }
    let format = format.single()?;
    let input = run.input()?;
    let evaluation = evaluate(&model, &run, input.ids(), true)?;
    let labels = input.labels();
    let position = parse_position(&pos, input.ids().len())?;
    let heads = evaluation.expansion.heads_per_layer();
    let (layer, head) = parse_head_of(&head, "head", &heads)?;
    let report = numbers::score_table(&evaluation, layer, head, position, top, &TerminalProgress::new())?;
    let mut out = BufWriter::new(io::stdout().lock());
    match format {
        TextOrJson::Json => {
            numbers::write_scores_json(&mut out, &evaluation, (layer, head), position, &report, labels)?
        }
        TextOrJson::Text => {
            numbers::write_scores_text(&mut out, &evaluation, (layer, head), position, &report, labels)?
        }
    }
    Ok(out.flush()?)
}

/// `scores --dataset`: each score term's part in a score difference over the prompts. Returns
/// whether there was a dataset.
fn run_dataset(args: &Args) -> Result<bool, Failure> {
    use pathc::aggregate::{self, ScoreQuestion};
    use pathc::emit::dataset as report;
    let Some(dataset) = args.run.dataset_input()? else { return Ok(false) };
    let query =
        match args.pos.as_str() {
            "last" => None,
            "all" => return Err(Failure::BadInput(
                "error: --pos all: a score difference is taken at one query position (a number or `last`) per prompt"
                    .to_string(),
            )),
            p => Some(p.parse().map_err(|_| {
                Failure::BadInput(format!("error: --pos takes a number or `last` with --dataset, not `{p}`"))
            })?),
        };
    let (expansion, params) = load(&args.model, &args.run, true)?;
    let (layer, head) = parse_head_of(&args.head, "head", &expansion.heads_per_layer())?;
    let question = ScoreQuestion {
        head: pathc::paths::HeadRef { layer, head },
        query,
        key: args.key,
        against_key: args.against_key,
    };
    let model = expansion.model.name.clone();
    let (names, orders) = aggregate::score_terms(&expansion, question.head).map_err(dataset_failure)?;
    let mut out = BufWriter::new(io::stdout().lock());
    let per_prompt = args.per_prompt;
    let mut header = false;
    let result = aggregate::dataset_scores(
        &expansion,
        &params,
        &dataset.path,
        dataset.inputs(),
        question,
        &TerminalProgress::new(),
        |prompt| {
            if !per_prompt {
                return Ok(());
            }
            match args.format {
                TextJsonCsv::Csv => {
                    if !std::mem::replace(&mut header, true) {
                        report::write_prompt_scores_csv_header(&mut out)?;
                    }
                    report::write_prompt_scores_csv(&mut out, &names, &orders, prompt)
                }
                TextJsonCsv::Json => {
                    if !std::mem::replace(&mut header, true) {
                        report::write_prompt_scores_jsonl_header(&mut out, &names, &orders)?;
                    }
                    report::write_prompt_scores_jsonl(&mut out, prompt)
                }
                TextJsonCsv::Text => {
                    let p = prompt.positions;
                    writeln!(
                        out,
                        "line {}: query {}, key {} against {}: score difference {:.6}, p[key] {:.6}, p[against] {:.6}",
                        prompt.line,
                        p.query,
                        p.key,
                        p.against_key,
                        prompt.difference,
                        prompt.prob_key,
                        prompt.prob_against_key
                    )
                }
            }
        },
    )
    .map_err(dataset_failure)?;
    let rank = dataset_rank(args.rank, args.format, args.top);
    let terms = report::ranked_terms(&result.terms, rank, args.top);
    match (args.format, per_prompt) {
        (TextJsonCsv::Csv, true) => {}
        (TextJsonCsv::Csv, false) => report::write_scores_csv(&mut out, &terms)?,
        (TextJsonCsv::Json, true) => {
            report::write_scores_jsonl_summary(&mut out, &model, &dataset.path, &question, &result, &terms)?
        }
        (TextJsonCsv::Json, false) => {
            report::write_scores_json(&mut out, &model, &dataset.path, &question, &result, &terms)?
        }
        (TextJsonCsv::Text, _) => {
            if per_prompt {
                writeln!(out)?;
            }
            report::write_scores_text(&mut out, &model, &dataset.path, &question, &result, &terms, rank)?
        }
    }
    out.flush()?;
    Ok(true)
}
