//! `pathc paths`: every path's contribution to the logits at a position, whole rows or one target
//! token's logit, path by path or summed by group.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use clap::ValueEnum;

use pathc::emit::numbers;
use pathc::eval::Target;

use super::failure::Failure;
use super::output::TextOrJson;
use super::parse::{parse_position, parse_target, TargetArg};
use super::progress::TerminalProgress;
use super::run::{evaluate, resolve_target, resolve_targets, RunArgs};

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
    #[arg(long, value_enum, default_value_t = TextOrJson::Text)]
    format: TextOrJson,
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
    let Args { model, run, pos, top, target, group, format } = args;
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
        let table = numbers::target_table(&evaluation, &targets, group.map(Into::into), top, rank)?;
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
