//! `pathc count`: paths (and attention-score terms) by order, counted without enumerating them.

use std::io::{self, Write};
use std::path::PathBuf;

use pathc::emit;

use super::failure::{read_model, render, Failure};
use super::output::TextOrJson;

// (`//`, not `///`: see the module docs of `cli`.)
#[derive(clap::Args)]
pub struct Args {
    model: PathBuf,
    #[arg(long, value_name = "K")]
    max_order: Option<u32>,
    /// Also count attention-score terms.
    #[arg(long)]
    qk: bool,
    #[arg(long, value_enum, default_value_t = TextOrJson::Text)]
    format: TextOrJson,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let Args { model, max_order, qk, format } = args;
    let source = read_model(&model)?;
    let compiled = pathc::compile(&source).map_err(|e| render(&model, &source, &e))?;
    let mut out = io::stdout().lock();
    let pathc::paths::TermCounts { logits, mlp_inputs, mlp_gates, scores } = compiled.counts(max_order, qk);
    match format {
        TextOrJson::Text => {
            writeln!(out, "{}", emit::count::text("paths", &logits))?;
            for block in emit::count::mlp_inputs_text(&mlp_inputs, &mlp_gates) {
                writeln!(out, "{block}")?;
            }
            if let Some(s) = &scores {
                writeln!(out, "{}", emit::count::text("attention-score terms", s))?;
            }
        }
        TextOrJson::Json => writeln!(
            out,
            "{}",
            emit::count::json(&compiled.model.name, max_order, &logits, &mlp_inputs, &mlp_gates, scores.as_ref())
        )?,
    }
    Ok(())
}
