//! `pathc scores`: every (query path, key path) term's contribution to one head's attention scores.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use pathc::emit::numbers;

use super::failure::Failure;
use super::output::TextOrJson;
use super::parse::{parse_head_of, parse_position};
use super::run::{evaluate, RunArgs};

// (`//`, not `///`: see the module docs of `cli`.)
#[derive(clap::Args)]
pub struct Args {
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
    #[arg(long, value_enum, default_value_t = TextOrJson::Text)]
    format: TextOrJson,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let Args { model, run, head, pos, top, format } = args;
    let input = run.input()?;
    let evaluation = evaluate(&model, &run, input.ids(), true)?;
    let labels = input.labels();
    let position = parse_position(&pos, input.ids().len())?;
    let heads = evaluation.expansion.heads_per_layer();
    let (layer, head) = parse_head_of(&head, "head", &heads)?;
    let report = numbers::score_table(&evaluation, layer, head, position, top)?;
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
