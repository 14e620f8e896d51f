//! `pathc codegen`: standalone analysis code, one function per path family and per statistic.

use std::path::PathBuf;

use clap::ValueEnum;

use pathc::ExpandOptions;

use super::failure::{read_model, render, Failure};
use super::output;
use super::parse::parse_head;

// (`//`, not `///`: see the module docs of `cli`.)
#[derive(clap::Args)]
pub struct Args {
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
}

#[derive(Clone, Copy, ValueEnum)]
enum Lang {
    Python,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let Args { model, lang, max_order, through, limit, output } = args;
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
    // Written once the code is complete.
    output::write(output.as_deref(), code.as_bytes())
}
