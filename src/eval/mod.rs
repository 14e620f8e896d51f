//! Numbers: a model's weights, its forward pass with the attention patterns recorded, and every
//! path's contribution with those patterns frozen.
//!
//! Everything is f64 and in TransformerLens's row-vector layout (`x @ W`), which is how the
//! weights are stored: a path term `P ⊗ M` of the paper (column convention) contributes
//! `P · X_s · Mᵀ` to the logits, where `X_s` holds the source's rows (`W_E[tokens]` or
//! `W_pos[..n]`) and `Mᵀ = W_V W_O ⋯ W_U` in TransformerLens's matrices.
//!
//! Invariants: no vocab × vocab matrix is ever built (a path's logits are `[n, d_vocab]` rows);
//! paths are evaluated in enumeration order with a cache of the residual-side products of their
//! common prefixes, so each prefix is computed once.

mod forward;
mod metric;
mod params;
mod paths;
pub mod rotary;
mod target;

pub(crate) use forward::attended;
pub use forward::{activate, activation, forward, forward_masked, forward_without_logits, Forward};
pub use metric::{
    score_attribution, score_params, Metric, MetricEvaluator, ScoreAttribution, ScoreDifference, ScoreDifferenceError,
    TermEffect,
};
pub use params::{
    AttnWeights, Gate, LayerParams, MlpWeights, NameMap, NormWeights, Params, Processing, StatsParams, LN_EPS,
};
pub use paths::{check, logits_by_order, CheckReport, Origin, PathEvaluator, ResidualCache, ScoreEvaluator};
pub use target::{target_logits, Target, TargetEvaluator, TargetLogits, Targets};

use thiserror::Error;

use crate::diag::Diagnostic;
use crate::linalg::NonFinite;
pub use crate::linalg::{Matrix, Row};
use crate::weights::WeightError;

#[derive(Debug, Error)]
pub enum EvalError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("dimension `{0}` is symbolic; evaluating the model needs a number (`dim {0} = N`)")]
    Symbolic(String),
    /// The weights hold a tensor the model file does not declare (a LayerNorm, an MLP, a nonzero
    /// bias): the diagnostic points at the declaration to change.
    #[error("{}", .0.message)]
    Undeclared(Diagnostic),
    /// A weight-processing step that would compute another model here.
    #[error("cannot apply {0}")]
    Processing(String),
    #[error("bad --name mapping {0}")]
    NameMap(String),
    #[error("no tokens given")]
    NoTokens,
    #[error("token {token} at position {position} is out of range: d_vocab is {d_vocab}")]
    TokenOutOfRange { token: usize, position: usize, d_vocab: usize },
    #[error("{n_tokens} tokens are more than the context length n_ctx = {n_ctx}")]
    TooManyTokens { n_tokens: usize, n_ctx: usize },
    #[error("position {position} is out of range for {n_tokens} tokens")]
    PositionOutOfRange { position: usize, n_tokens: usize },
    #[error("target token {token} is out of range: d_vocab is {d_vocab}")]
    TargetOutOfRange { token: usize, d_vocab: usize },
    /// The next-token target at the last position, which has no next token.
    #[error("position {position} is the last of the {n_tokens} tokens: it has no next token to take as the target")]
    NoNextToken { position: usize, n_tokens: usize },
    #[error("the attention mask has {found} entries for {n_tokens} tokens: give one 0 or 1 per token")]
    MaskLength { found: usize, n_tokens: usize },
    /// A query position every key of which is masked (by the attention mask, with the causal
    /// mask where there is one): its softmax would divide by zero.
    #[error("query position {position} attends to no key: the attention mask masks every key it may see{}", if *.causal { " (keys 0 to the query itself, causal)" } else { "" })]
    EveryKeyMasked { position: usize, causal: bool },
    #[error("the next token is not an output: the unembedding has d_vocab_out = {d_vocab_out} outputs, not the d_vocab = {d_vocab} tokens; give --target an output index")]
    NextNeedsVocabOutputs { d_vocab: usize, d_vocab_out: usize },
    #[error("a single token has no next token: the next-token target needs at least 2 tokens")]
    NextNeedsTwoTokens,
    /// A computed value is NaN or infinite (the forward pass, a path, a check): reported with
    /// where it arose, never printed as a number.
    #[error(transparent)]
    NonFinite(#[from] NonFinite),
    /// The caller asked the job to stop ([`crate::progress::Progress::cancelled`]).
    #[error(transparent)]
    Cancelled(#[from] crate::progress::Cancelled),
}

/// A model expanded, its weights loaded, and a forward pass run: what every numeric report needs.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub expansion: crate::Expansion,
    pub params: Params,
    pub forward: Forward,
}
