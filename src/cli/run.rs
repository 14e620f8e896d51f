//! The arguments every numeric command shares ([`RunArgs`]: weights, tokens, the expansion's
//! options) and [`evaluate`], which turns them into an expansion, its weights and a forward pass.

use std::path::{Path, PathBuf};

use pathc::eval::{EvalError, Evaluation, Target, Targets};
use pathc::ExpandOptions;

use super::failure::{read_model, render, Failure};

// What every numeric command needs: weights, tokens, and the expansion's options. (A `//`
// comment: see the module docs of `cli`.)
#[derive(clap::Args)]
pub struct RunArgs {
    /// A TransformerLens state_dict (f16, bf16, f32, f64): safetensors, npz, or a torch.save checkpoint
    /// (.pt/.pth/.bin, PyTorch >= 1.6; read without running its pickle).
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// Token ids, comma-separated: `--tokens 3,7,1`.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    pub tokens: Vec<usize>,
    /// Key mask, one 0 or 1 per token (TransformerLens's attention_mask): no query attends to a 0
    /// key; queries and positions are unchanged.
    #[arg(long, value_name = "0,1,...", value_delimiter = ',', num_args = 1.., value_parser = super::parse::parse_mask_bit)]
    pub attention_mask: Option<Vec<bool>>,
    /// Keep only paths through at most K heads.
    #[arg(long, value_name = "K")]
    pub max_order: Option<u32>,
    /// Refuse to enumerate more paths than this.
    #[arg(long, value_name = "N", default_value_t = pathc::DEFAULT_ENUMERATION_LIMIT)]
    pub limit: u64,
    /// Read a TransformerLens tensor under another name: `--name 'blocks.{l}.attn.W_Q=layers.{l}.wq'`
    /// (`{l}` is the layer; repeatable). Tensors keep TransformerLens's layout.
    #[arg(long = "name", value_name = "TL=FILE")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub processing: ProcessingArgs,
}

// TransformerLens's weight processing, step by step (`from_pretrained` applies all four).
#[derive(clap::Args, Clone, Copy, Default)]
pub struct ProcessingArgs {
    /// Fold every LayerNorm's weight and bias into what reads it (TransformerLens fold_ln).
    #[arg(long)]
    pub fold_ln: bool,
    /// Subtract the mean over d_model from everything that writes the residual stream
    /// (TransformerLens center_writing_weights; needs LayerNorms everywhere).
    #[arg(long)]
    pub center_writing_weights: bool,
    /// Subtract the mean over the outputs from W_U and b_U (TransformerLens center_unembed:
    /// every position's logits shift by a constant).
    #[arg(long)]
    pub center_unembed: bool,
    /// Move every head's b_V·W_O into b_O (TransformerLens fold_value_biases).
    #[arg(long)]
    pub fold_value_biases: bool,
    /// All four, as TransformerLens's from_pretrained does by default.
    #[arg(long)]
    pub process_weights: bool,
}

impl ProcessingArgs {
    pub fn processing(&self) -> pathc::eval::Processing {
        let all = self.process_weights;
        pathc::eval::Processing {
            fold_ln: all || self.fold_ln,
            center_writing_weights: all || self.center_writing_weights,
            center_unembed: all || self.center_unembed,
            fold_value_biases: all || self.fold_value_biases,
        }
    }
}

/// Expands the model, loads its weights and runs the forward pass on the tokens.
pub fn evaluate(model: &Path, run: &RunArgs, qk: bool) -> Result<Evaluation, Failure> {
    let source = read_model(model)?;
    let fail = |e: pathc::Error| render(model, &source, &e);
    let compiled = pathc::compile(&source).map_err(fail)?;
    let names = pathc::eval::NameMap::parse(&run.names).map_err(|e| fail(e.into()))?;
    let params = pathc::load_params(&compiled, &run.weights, &names).map_err(fail)?;
    let processing = run.processing.processing();
    let params = params.process(processing).map_err(|e| fail(e.into()))?;
    let compiled = compiled.processed(processing);
    let forward =
        pathc::eval::forward_masked(&params, &run.tokens, run.attention_mask.as_deref()).map_err(|e| fail(e.into()))?;
    let options = ExpandOptions { max_order: run.max_order, limit: run.limit, qk, ..ExpandOptions::default() };
    let expansion = pathc::expand_compiled(compiled, &options).map_err(fail)?;
    Ok(Evaluation { expansion, params, forward })
}

/// `--target TOKEN|next` at `position` (every position when `None`) of the evaluated tokens, or
/// the error to show: a token out of range, or `next` where there is no next token (`all`: whether
/// the command offers `--pos all`, the other way out).
pub fn resolve_targets(
    evaluation: &Evaluation,
    target: Target,
    position: Option<usize>,
    all: bool,
) -> Result<Targets, Failure> {
    let tokens = &evaluation.forward.tokens;
    let params = &evaluation.params;
    Targets::for_params(target, tokens, params, position).map_err(|e| {
        Failure::BadInput(match e {
            EvalError::TargetOutOfRange { token, d_vocab } if params.d_vocab_out() != params.d_vocab() => {
                format!("error: --target {token} is out of range: the unembedding has d_vocab_out = {d_vocab} outputs")
            }
            EvalError::TargetOutOfRange { token, d_vocab } => {
                format!("error: --target {token} is out of range: d_vocab is {d_vocab}")
            }
            EvalError::NoNextToken { .. } if all => format!(
                "error: --target next: {e}; ask for every other position with --pos all (the default with --target next) or a position before {}",
                tokens.len() - 1
            ),
            EvalError::NoNextToken { .. } => {
                format!("error: --target next: {e}; give --pos a position before {}", tokens.len() - 1)
            }
            other => format!("error: --target {target}: {other}"),
        })
    })
}
