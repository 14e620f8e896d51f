//! The arguments every numeric command shares ([`RunArgs`]: weights, tokens, the expansion's
//! options) and [`evaluate`], which turns them into an expansion, its weights and a forward pass.

use std::path::{Path, PathBuf};

use pathc::eval::{EvalError, Evaluation, Target, Targets};
use pathc::text::{Labels, TokenText, Tokenizer};
use pathc::ExpandOptions;

use super::failure::{read_model, render, Failure};

// What every numeric command needs: weights, tokens, and the expansion's options. (A `//`
// comment: see the module docs of `cli`.)
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["tokens", "text", "dataset"])))]
pub struct RunArgs {
    /// A TransformerLens state_dict (f16, bf16, f32, f64): safetensors, npz, or a torch.save
    /// checkpoint (.pt/.pth/.bin, PyTorch >= 1.6; read without running its pickle); or a
    /// HuggingFace model folder (config.json with model.safetensors, shards or pytorch_model.bin).
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// Token ids, comma-separated: `--tokens 3,7,1` (or `--text`).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub tokens: Vec<usize>,
    /// The text to run the model on, tokenized as TransformerLens's to_tokens does (or `--tokens`).
    #[arg(long, value_name = "TEXT")]
    pub text: Option<String>,
    /// A dataset of prompts (`paths`, `scores` and `check`; or `--tokens`, `--text`): JSON Lines
    /// (.jsonl), one `{"tokens": [...]}` or `{"text": "..."}` a line with optional per-prompt
    /// `"target"`, `"against"`, `"position"`, `"key"`, `"against_key"`, or a text file with one
    /// prompt a line. Each prompt is its own forward pass; the report aggregates over them.
    #[arg(long, value_name = "FILE")]
    pub dataset: Option<PathBuf>,
    /// A HuggingFace tokenizer.json for `--text` and the token strings (default: the
    /// tokenizer.json of a --weights folder); its folder's tokenizer_config.json and config.json
    /// say which token is the BOS.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Put the BOS token before `--text` (default: TransformerLens's default_prepend_bos for the
    /// model, true but for Bloom and Qwen; never twice when the tokenizer adds one itself).
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub prepend_bos: Option<bool>,
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

/// The tokens to run the model on and, when a tokenizer is known (`--tokenizer`, or the
/// tokenizer.json of a --weights folder), their strings: `--text` tokenized, or `--tokens`.
pub struct Input {
    pub tokens: TokenText,
    pub tokenizer: Option<Tokenizer>,
}

impl Input {
    /// The token strings for the reports, if there is a tokenizer.
    pub fn labels(&self) -> Option<Labels<'_>> {
        self.tokenizer.as_ref().map(|tokenizer| Labels { tokenizer, input: &self.tokens })
    }

    pub fn ids(&self) -> &[usize] {
        &self.tokens.ids
    }
}

/// `--text` (tokenized) or `--tokens`, with the tokenizer if there is one.
pub fn input(
    tokens: &[usize],
    text: Option<&str>,
    tokenizer: Option<&Path>,
    prepend_bos: Option<bool>,
    weights: &Path,
) -> Result<Input, Failure> {
    let fail = |e: pathc::text::TextError| Failure::BadInput(format!("error: {e}"));
    if let (Some(value), None) = (prepend_bos, text) {
        return Err(Failure::BadInput(format!(
            "error: --prepend-bos {value} applies to --text: the ids of --tokens are used as they are"
        )));
    }
    match text {
        Some(text) => {
            let tokenizer = Tokenizer::require(tokenizer, Some(weights)).map_err(fail)?;
            let tokens = tokenizer.tokenize(text, prepend_bos).map_err(fail)?;
            if tokens.ids.is_empty() {
                return Err(Failure::BadInput(format!(
                    "error: --text {} is no token at all{}",
                    pathc::text::quote(text),
                    if prepend_bos == Some(false) { " (and --prepend-bos false adds no BOS)" } else { "" }
                )));
            }
            Ok(Input { tokens, tokenizer: Some(tokenizer) })
        }
        None => {
            let tokenizer = Tokenizer::find(tokenizer, Some(weights)).map_err(fail)?;
            let tokens = match &tokenizer {
                Some(t) => t.label(tokens),
                None => TokenText { ids: tokens.to_vec(), str_tokens: Vec::new(), text: None, prepend_bos: None },
            };
            Ok(Input { tokens, tokenizer })
        }
    }
}

impl RunArgs {
    /// [`input`] of these arguments.
    pub fn input(&self) -> Result<Input, Failure> {
        input(&self.tokens, self.text.as_deref(), self.tokenizer.as_deref(), self.prepend_bos, &self.weights)
    }
}

/// `--target`: a token id, `next`, or a text that is one token (`" Mary"`), resolved with the
/// tokenizer (an error without one, or when the text is several tokens).
pub fn resolve_target(target: &super::parse::TargetArg, input: &Input) -> Result<Target, Failure> {
    resolve_target_with(target, input.tokenizer.as_ref(), "--target")
}

/// [`resolve_target`] with the tokenizer there is (`flag` names the option in messages).
pub fn resolve_target_with(
    target: &super::parse::TargetArg,
    tokenizer: Option<&Tokenizer>,
    flag: &str,
) -> Result<Target, Failure> {
    use super::parse::TargetArg;
    match target {
        TargetArg::Id(t) => Ok(Target::Token(*t)),
        TargetArg::Next => Ok(Target::Next),
        TargetArg::Text(text) => match tokenizer {
            Some(tokenizer) => tokenizer
                .single_token(text)
                .map(Target::Token)
                .map_err(|e| Failure::BadInput(format!("error: {flag} {}: {e}", pathc::text::quote(text)))),
            None => Err(Failure::BadInput(format!(
                "error: {flag} {}: expected a token id or `next`, not `{text}` (a text target needs a tokenizer: --tokenizer tokenizer.json)",
                pathc::text::quote(text)
            ))),
        },
    }
}

/// Expands the model, loads its weights and runs the forward pass on `tokens`.
pub fn evaluate(model: &Path, run: &RunArgs, tokens: &[usize], qk: bool) -> Result<Evaluation, Failure> {
    let (expansion, params) = load(model, run, qk)?;
    let forward = pathc::eval::forward_masked(&params, tokens, run.attention_mask.as_deref())
        .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
    Ok(Evaluation { expansion, params, forward })
}

/// A `--dataset` run's inputs: the dataset, and the tokenizer (`--tokenizer`, or a --weights
/// folder's) with `--prepend-bos` for its texts. `--attention-mask` is refused: it is one
/// prompt's.
pub struct DatasetInput {
    pub path: PathBuf,
    pub tokenizer: Option<Tokenizer>,
    pub prepend_bos: Option<bool>,
}

impl DatasetInput {
    pub fn inputs(&self) -> pathc::aggregate::Inputs<'_> {
        pathc::aggregate::Inputs { tokenizer: self.tokenizer.as_ref(), prepend_bos: self.prepend_bos }
    }
}

impl RunArgs {
    /// `--dataset` with its tokenizer, if given.
    pub fn dataset_input(&self) -> Result<Option<DatasetInput>, Failure> {
        let Some(path) = &self.dataset else { return Ok(None) };
        if self.attention_mask.is_some() {
            return Err(Failure::BadInput(
                "error: --attention-mask is one prompt's key mask: it does not apply to --dataset".to_string(),
            ));
        }
        let tokenizer = Tokenizer::find(self.tokenizer.as_deref(), Some(&self.weights))
            .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
        Ok(Some(DatasetInput { path: path.clone(), tokenizer, prepend_bos: self.prepend_bos }))
    }
}

/// The logit question of a `--dataset` run (`paths`, `plot --what paths`): `--target`,
/// `--against` (a token, never `next`) and `--pos` (a number, `last` or `all`), the defaults a
/// prompt's own fields override.
pub fn logit_question(
    target: Option<&super::parse::TargetArg>,
    against: Option<&super::parse::TargetArg>,
    pos: Option<&str>,
    tokenizer: Option<&Tokenizer>,
) -> Result<pathc::aggregate::LogitQuestion, Failure> {
    use pathc::aggregate::{LogitQuestion, Position};
    let target = target.map(|t| resolve_target_with(t, tokenizer, "--target")).transpose()?;
    let against = against.map(|t| resolve_target_with(t, tokenizer, "--against")).transpose()?;
    if against == Some(Target::Next) {
        return Err(Failure::BadInput("error: --against takes a token: `next` is a target".to_string()));
    }
    let position = match pos {
        None => None,
        Some("last") => Some(Position::Last),
        Some("all") => Some(Position::All),
        Some(p) => Some(Position::At(
            p.parse()
                .map_err(|_| Failure::BadInput(format!("error: --pos takes a number, `last` or `all`, not `{p}`")))?,
        )),
    };
    Ok(LogitQuestion { target, against, position })
}

/// A dataset error (a prompt's line, the file) as the terminal shows it.
pub fn dataset_failure(e: pathc::aggregate::AggregateError) -> Failure {
    match e {
        pathc::aggregate::AggregateError::Output(e) => Failure::Io(e),
        other => Failure::BadInput(format!("error: {other}")),
    }
}

/// Expands the model and loads its weights (processed as asked): all but the forward pass.
pub fn load(model: &Path, run: &RunArgs, qk: bool) -> Result<(pathc::Expansion, pathc::eval::Params), Failure> {
    let source = read_model(model)?;
    let fail = |e: pathc::Error| render(model, &source, &e);
    let compiled = pathc::compile(&source).map_err(fail)?;
    let names = pathc::eval::NameMap::parse(&run.names).map_err(|e| fail(e.into()))?;
    let params = pathc::load_params(&compiled, &run.weights, &names).map_err(fail)?;
    let processing = run.processing.processing();
    let params = params.process(processing).map_err(|e| fail(e.into()))?;
    let compiled = compiled.processed(processing);
    let options = ExpandOptions { max_order: run.max_order, limit: run.limit, qk, ..ExpandOptions::default() };
    let expansion = pathc::expand_compiled(compiled, &options).map_err(fail)?;
    Ok((expansion, params))
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

/// The token whose logit a one-position report explains: `--target` at `position` (a token, or
/// the next token there), else the model's top prediction there; with why, in words.
pub fn target_at(
    evaluation: &Evaluation,
    target: Option<Target>,
    position: usize,
) -> Result<(usize, &'static str), Failure> {
    if let Some(target) = target {
        // The command line's messages for a target out of range or without a next token.
        resolve_targets(evaluation, target, Some(position), false)?;
    }
    pathc::emit::report::target_token(evaluation, target, position)
        .map_err(|e| Failure::BadInput(format!("error: {e}")))
}
