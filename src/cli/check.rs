//! `pathc check`: the sum of every path, attention patterns frozen, against the forward pass.

use std::io::{self, Write};
use std::path::PathBuf;

use super::failure::Failure;
use super::output::TextOrJson;
use super::run::{dataset_failure, evaluate, load, RunArgs};

// (`//`, not `///`: see the module docs of `cli`.)
#[derive(clap::Args)]
pub struct Args {
    model: PathBuf,
    #[command(flatten)]
    run: RunArgs,
    /// Largest acceptable maximum absolute error; above it the exit code is 1.
    #[arg(long, default_value_t = 1e-9, value_parser = super::parse::parse_tolerance)]
    tol: f64,
    #[arg(long, value_enum, default_value_t = TextOrJson::Text)]
    format: TextOrJson,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let Args { model, run, tol, format } = args;
    if let Some(dataset) = run.dataset_input()? {
        let (expansion, params) = load(&model, &run, false)?;
        let result = pathc::aggregate::dataset_check(
            &expansion,
            &params,
            &dataset.path,
            dataset.inputs(),
            &super::progress::TerminalProgress::new(),
        )
        .map_err(dataset_failure)?;
        let mut out = io::stdout().lock();
        match format {
            TextOrJson::Json => {
                let mut value = serde_json::to_value(&result).expect("plain data");
                value["dataset"] = serde_json::json!(dataset.path.display().to_string());
                writeln!(out, "{}", serde_json::to_string_pretty(&value).expect("plain data"))?
            }
            TextOrJson::Text => {
                pathc::emit::dataset::write_check_text(&mut out, &expansion.model.name, &dataset.path, &result)?
            }
        }
        return finish(&mut out, result.max_abs_error, tol, format);
    }
    let input = run.input()?;
    let evaluation = evaluate(&model, &run, input.ids(), false)?;
    let labels = input.labels();
    let report = pathc::eval::check(
        &evaluation.expansion,
        &evaluation.params,
        &evaluation.forward,
        &super::progress::TerminalProgress::new(),
    )
    .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
    let mut out = io::stdout().lock();
    match format {
        TextOrJson::Json => {
            // With a tokenizer, the tokens, their strings and the text (`numbers::input_json`).
            let mut value = serde_json::to_value(&report).expect("plain data");
            let fields = pathc::emit::numbers::input_json(labels);
            if let (serde_json::Value::Object(map), false) = (&mut value, fields.is_empty()) {
                map.insert("tokens".to_string(), serde_json::json!(input.ids()));
                map.extend(fields);
            }
            writeln!(out, "{}", serde_json::to_string_pretty(&value).expect("plain data"))?
        }
        TextOrJson::Text => {
            let scope = match report.max_order {
                Some(k) => format!("{} paths of order ≤ {k}", report.paths),
                None => format!("{} paths (every order)", report.paths),
            };
            writeln!(out, "model {}, {} tokens, {scope}", evaluation.expansion.model.name, input.ids().len())?;
            pathc::emit::numbers::write_input_text(&mut out, labels)?;
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
    finish(&mut out, report.max_abs_error, tol, format)
}

/// The verdict: exit 1 above the tolerance (or on NaN), else `ok` in text.
fn finish(out: &mut dyn Write, max_abs_error: f64, tol: f64, format: TextOrJson) -> Result<(), Failure> {
    if max_abs_error.is_nan() || max_abs_error > tol {
        writeln!(out, "FAILED: above --tol {tol:e}")?;
        out.flush()?;
        return Err(Failure::Check);
    }
    if let TextOrJson::Text = format {
        writeln!(out, "ok: within --tol {tol:e}")?;
    }
    Ok(())
}
