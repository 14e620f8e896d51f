//! `pathc plan`: the evaluation plan of the statistics the e-graph chooses, against the naive one.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use super::failure::{read_model, render, Failure};
use super::output::{self, TextOrJson};

// (`//`, not `///`: see the module docs of `cli`.)
#[derive(clap::Args)]
pub struct Args {
    model: PathBuf,
    /// Take the sizes from these weights (a file or a HuggingFace folder; needed when the model
    /// file leaves one symbolic).
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    #[arg(long = "name", value_name = "TL=FILE")]
    names: Vec<String>,
    #[arg(long, value_enum, default_value_t = TextOrJson::Text)]
    format: TextOrJson,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let Args { model, weights, names, format } = args;
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
        TextOrJson::Text => out.write_all(plans.render(&compiled.model.name, threads).as_bytes())?,
        TextOrJson::Json => output::write_json(&mut out, &plans.to_json(&compiled.model.name, threads))?,
    }
    Ok(out.flush()?)
}
