//! Parsing the positions (`--pos`), heads (`--head`, `--through`) and targets (`--target`) given on the command line,
//! and checking `--rotary-offset` against the model.

use super::failure::Failure;

/// A position among `n` tokens: a number, `last`, or `all` (`None`).
pub fn parse_position(pos: &str, n: usize) -> Result<Option<usize>, Failure> {
    match pos {
        "all" => Ok(None),
        "last" => Ok(Some(n - 1)),
        p => match p.parse::<usize>() {
            Ok(p) if p < n => Ok(Some(p)),
            Ok(p) => Err(Failure::BadInput(format!("error: position {p} is out of range for {n} tokens"))),
            Err(_) => Err(Failure::BadInput(format!("error: --pos takes a number, `last` or `all`, not `{p}`"))),
        },
    }
}

/// `--target` as given: a token id, `next`, or a text that must be one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetArg {
    Id(usize),
    Next,
    Text(String),
}

/// `--target`: only digits are a token id (`42`), `next` the next token, anything else a text
/// that must be one token (`' Mary'`); a text in double quotes is a JSON string, which is how to
/// give the text `42` (`'"42"'`), the word `next` (`'"next"'`) or escapes (`'"\n"'`).
pub fn parse_target(text: &str) -> Result<TargetArg, String> {
    if text == "next" {
        return Ok(TargetArg::Next);
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map(TargetArg::Id).map_err(|_| format!("the token id {text} is too large"));
    }
    if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') {
        return serde_json::from_str::<String>(text)
            .map(TargetArg::Text)
            .map_err(|e| format!("a --target in double quotes is a JSON string: {e}"));
    }
    Ok(TargetArg::Text(text.to_string()))
}

/// One entry of `--attention-mask`: `1` keeps a key, `0` masks it.
pub fn parse_mask_bit(text: &str) -> Result<bool, String> {
    match text.trim() {
        "1" => Ok(true),
        "0" => Ok(false),
        other => Err(format!("an attention mask entry is 0 or 1, not `{other}`")),
    }
}

/// A tolerance (`check --tol`): a finite number ≥ 0. NaN would make every comparison false and a
/// negative one could never pass, so both are refused when the arguments are parsed.
pub fn parse_tolerance(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        Ok(t) => Err(format!("a tolerance is a finite number ≥ 0, not {t}")),
        Err(e) => Err(e.to_string()),
    }
}

/// `--{flag} L1H2` as a head of a model with `heads_per_layer`: written wrong, or out of range
/// (saying which layers and heads there are).
pub fn parse_head_of(text: &str, flag: &str, heads_per_layer: &[usize]) -> Result<(usize, usize), Failure> {
    let (layer, head) = parse_head(text)
        .ok_or_else(|| Failure::BadInput(format!("error: --{flag} {text}: write a head as L1H2 (layer 1, head 2)")))?;
    let n = heads_per_layer.len();
    let why = match heads_per_layer.get(layer) {
        None => format!("the model has {n} layer{} (L0 to L{})", if n == 1 { "" } else { "s" }, n.saturating_sub(1)),
        Some(&h) if head >= h => {
            format!("layer {layer} has {h} head{} (H0 to H{})", if h == 1 { "" } else { "s" }, h - 1)
        }
        Some(_) => return Ok((layer, head)),
    };
    Err(Failure::BadInput(format!("error: --{flag} {text} is not a head of this model: {why}")))
}

/// `L1H2` → (1, 2).
pub fn parse_head(text: &str) -> Option<(usize, usize)> {
    let (layer, head) = text.strip_prefix('L')?.split_once('H')?;
    Some((layer.parse().ok()?, head.parse().ok()?))
}

/// `--rotary-offset` on a model without rotary layers is bad input (`stats` and the statistics
/// plots): said before any weight is read.
pub fn check_rotary_offset(model: &pathc::model::Model, offset: Option<i64>) -> Result<(), Failure> {
    match offset {
        Some(offset) if !model.layers.iter().any(|layer| layer.attn.rotary.is_some()) => Err(Failure::BadInput(format!(
            "error: --rotary-offset {offset}: model `{}` has no rotary layer (attn(..., rotary = D)), so its QK circuits do not depend on positions and there is no offset to choose",
            model.name
        ))),
        _ => Ok(()),
    }
}

/// `--precision`: what the statistics' matrix products run in (sums over the vocabulary, norms
/// and eigenvalues are f64 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    F32,
    F64,
}

impl From<PrecisionArg> for pathc::stats::Precision {
    fn from(p: PrecisionArg) -> pathc::stats::Precision {
        match p {
            PrecisionArg::F32 => pathc::stats::Precision::F32,
            PrecisionArg::F64 => pathc::stats::Precision::F64,
        }
    }
}
