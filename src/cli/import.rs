//! `pathc import`: the model file of a HuggingFace folder, from its `config.json`.

use std::path::PathBuf;

use super::failure::Failure;
use super::output;

// (`//`, not `///`: see the module docs of `cli`.)
#[derive(clap::Args)]
pub struct Args {
    // The folder: config.json beside model.safetensors, sharded safetensors or pytorch_model.bin.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Write the model file to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let Args { dir, output } = args;
    let text = pathc::import::import(&dir).map_err(|e| Failure::BadInput(format!("error: {e}")))?;
    // Written once the text is complete (OutputFile: atomically, or not at all).
    output::write(output.as_deref(), text.as_bytes())
}
