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

use nalgebra::DMatrix;
use thiserror::Error;

use crate::diag::Diagnostic;
use crate::graph::Source;
use crate::model::{Model, Size};
use crate::paths::{FactorKind, Path, Side};
use crate::weights::{WeightError, Weights};

pub type Matrix = DMatrix<f64>;

#[derive(Debug, Error)]
pub enum EvalError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("dimension `{0}` is symbolic; evaluating the model needs a number (`dim {0} = N`)")]
    Symbolic(String),
    #[error("{}", .0.first().map_or("", |d| d.message.as_str()))]
    Unsupported(Vec<Diagnostic>),
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
}

/// A model expanded, its weights loaded, and a forward pass run: what every numeric report needs.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub expansion: crate::Expansion,
    pub params: Params,
    pub forward: Forward,
}

/// One attention layer's weights, per head, in TransformerLens's layout.
#[derive(Debug, Clone)]
pub struct AttnWeights {
    /// `[d_model, d_head]` per head.
    pub w_q: Vec<Matrix>,
    pub w_k: Vec<Matrix>,
    pub w_v: Vec<Matrix>,
    /// `[d_head, d_model]` per head.
    pub w_o: Vec<Matrix>,
    /// `sqrt(d_head)`, TransformerLens's `attn_scale`.
    pub attn_scale: f64,
}

/// The weights a model's expansion needs, checked against its dimensions.
#[derive(Debug, Clone)]
pub struct Params {
    /// `[d_vocab, d_model]`.
    pub w_e: Matrix,
    /// `[n_ctx, d_model]`, when the model has a positional embedding.
    pub w_pos: Option<Matrix>,
    pub layers: Vec<AttnWeights>,
    /// `[d_model, d_vocab]`.
    pub w_u: Matrix,
}

fn known(name: &str, size: &Size) -> Result<usize, EvalError> {
    match size {
        Size::Known(n) => usize::try_from(*n).map_err(|_| EvalError::Symbolic(name.to_string())),
        Size::Symbolic(_) => Err(EvalError::Symbolic(name.to_string())),
    }
}

/// Where each TransformerLens name is found in a weight file: under that name by default;
/// `TL=FILE` pairs rename, with `{l}` standing for the layer number on both sides
/// (`blocks.{l}.attn.W_Q=layers.{l}.wq`). Tensors keep TransformerLens's layout and shapes.
#[derive(Debug, Clone, Default)]
pub struct NameMap {
    renames: Vec<(String, String)>,
}

impl NameMap {
    pub fn parse(pairs: &[String]) -> Result<NameMap, EvalError> {
        let mut renames = Vec::new();
        for pair in pairs {
            let bad = |why: &str| EvalError::NameMap(format!("`{pair}`: {why}"));
            let (from, to) = pair.split_once('=').ok_or_else(|| bad("expected TL_NAME=FILE_NAME"))?;
            if from.is_empty() || to.is_empty() {
                return Err(bad("both names are needed"));
            }
            if from.matches("{l}").count() > 1 || from.contains("{l}") != to.contains("{l}") {
                return Err(bad("`{l}` must appear once on both sides or on neither"));
            }
            renames.push((from.to_string(), to.to_string()));
        }
        Ok(NameMap { renames })
    }

    /// The file's name for the TransformerLens tensor `tl`.
    pub fn resolve(&self, tl: &str) -> String {
        for (from, to) in &self.renames {
            match from.split_once("{l}") {
                None if from == tl => return to.clone(),
                None => {}
                Some((prefix, suffix)) => {
                    let layer = tl.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(suffix));
                    if let Some(layer) = layer.filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit())) {
                        return to.replace("{l}", layer);
                    }
                }
            }
        }
        tl.to_string()
    }
}

fn matrix(weights: &Weights, name: &str, rows: usize, cols: usize) -> Result<Matrix, EvalError> {
    let t = weights.get(name, &[rows, cols])?;
    Ok(Matrix::from_row_slice(rows, cols, &t.data))
}

/// `[n_heads, rows, cols]` as one matrix per head.
fn per_head(weights: &Weights, name: &str, n_heads: usize, rows: usize, cols: usize) -> Result<Vec<Matrix>, EvalError> {
    let t = weights.get(name, &[n_heads, rows, cols])?;
    Ok(t.data.chunks_exact(rows * cols).map(|chunk| Matrix::from_row_slice(rows, cols, chunk)).collect())
}

impl Params {
    /// Reads TransformerLens's names (`embed.W_E`, `blocks.{l}.attn.W_Q`, ...), renamed by
    /// `names`, and checks every shape against the model before any computation. Other tensors
    /// in the file (buffers such as `attn.mask`) are ignored.
    pub fn from_weights(model: &Model, weights: &Weights, names: &NameMap) -> Result<Params, EvalError> {
        let d_model = known("d_model", &model.d_model)?;
        let d_vocab = known("d_vocab", &model.d_vocab)?;
        let matrix = |name: &str, rows, cols| matrix(weights, &names.resolve(name), rows, cols);
        let per_head = |name: &str, h, rows, cols| per_head(weights, &names.resolve(name), h, rows, cols);
        let w_e = matrix("embed.W_E", d_vocab, d_model)?;
        let w_pos = match model.pos_embed {
            Some(_) => {
                let n_ctx = model.dims.get("n_ctx").ok_or_else(|| EvalError::Symbolic("n_ctx".to_string()))?;
                let n_ctx = known("n_ctx", n_ctx)?;
                Some(matrix("pos_embed.W_pos", n_ctx, d_model)?)
            }
            None => None,
        };
        let mut layers = Vec::with_capacity(model.layers.len());
        for (l, layer) in model.layers.iter().enumerate() {
            let h = layer.attn.n_heads;
            let d_head = known("d_head", &layer.attn.d_head)?;
            let name = |w: &str| format!("blocks.{l}.attn.{w}");
            layers.push(AttnWeights {
                w_q: per_head(&name("W_Q"), h, d_model, d_head)?,
                w_k: per_head(&name("W_K"), h, d_model, d_head)?,
                w_v: per_head(&name("W_V"), h, d_model, d_head)?,
                w_o: per_head(&name("W_O"), h, d_head, d_model)?,
                attn_scale: (d_head as f64).sqrt(),
            });
        }
        let w_u = matrix("unembed.W_U", d_model, d_vocab)?;
        Ok(Params { w_e, w_pos, layers, w_u })
    }

    pub fn d_vocab(&self) -> usize {
        self.w_e.nrows()
    }

    /// Checks a token sequence against the vocabulary and the context length.
    pub fn check_tokens(&self, tokens: &[usize]) -> Result<(), EvalError> {
        if tokens.is_empty() {
            return Err(EvalError::NoTokens);
        }
        if let Some(w_pos) = &self.w_pos {
            if tokens.len() > w_pos.nrows() {
                return Err(EvalError::TooManyTokens { n_tokens: tokens.len(), n_ctx: w_pos.nrows() });
            }
        }
        let d_vocab = self.d_vocab();
        match tokens.iter().enumerate().find(|(_, &t)| t >= d_vocab) {
            Some((position, &token)) => Err(EvalError::TokenOutOfRange { token, position, d_vocab }),
            None => Ok(()),
        }
    }

    /// The source's rows: `W_E[tokens]` or `W_pos[..n]`, `[n, d_model]`.
    pub fn source_rows(&self, source: Source, tokens: &[usize]) -> Matrix {
        match source {
            Source::E => Matrix::from_fn(tokens.len(), self.w_e.ncols(), |i, j| self.w_e[(tokens[i], j)]),
            Source::P => {
                let w_pos = self.w_pos.as_ref().expect("a P path exists only with a positional embedding");
                w_pos.rows(0, tokens.len()).into_owned()
            }
        }
    }
}

/// A forward pass: the logits and everything recorded on the way.
#[derive(Debug, Clone)]
pub struct Forward {
    pub tokens: Vec<usize>,
    /// `[n, d_vocab]`.
    pub logits: Matrix,
    /// `patterns[l][h]`: `[n, n]` (query, key), causal softmax.
    pub patterns: Vec<Vec<Matrix>>,
    /// `scores[l][h]`: `[n, n]` pre-softmax scores `q·k / attn_scale`, without the causal mask.
    pub scores: Vec<Vec<Matrix>>,
    /// `resid_pre[l]`: `[n, d_model]`, the residual stream entering layer `l`.
    pub resid_pre: Vec<Matrix>,
    /// `[n, d_model]`, after the last layer.
    pub resid_final: Matrix,
}

/// Causal softmax over each row (query) of `scores`, keys after the query masked out.
fn causal_softmax(scores: &Matrix) -> Matrix {
    let n = scores.nrows();
    let mut pattern = Matrix::zeros(n, n);
    for q in 0..n {
        let max = (0..=q).map(|k| scores[(q, k)]).fold(f64::NEG_INFINITY, f64::max);
        let mut total = 0.0;
        for k in 0..=q {
            let e = (scores[(q, k)] - max).exp();
            pattern[(q, k)] = e;
            total += e;
        }
        for k in 0..=q {
            pattern[(q, k)] /= total;
        }
    }
    pattern
}

/// Runs the model on `tokens`, recording every attention pattern: this is what freezes `A`.
pub fn forward(params: &Params, tokens: &[usize]) -> Result<Forward, EvalError> {
    params.check_tokens(tokens)?;
    let mut resid = params.source_rows(Source::E, tokens);
    if params.w_pos.is_some() {
        resid += params.source_rows(Source::P, tokens);
    }
    let mut patterns = Vec::with_capacity(params.layers.len());
    let mut scores = Vec::with_capacity(params.layers.len());
    let mut resid_pre = Vec::with_capacity(params.layers.len());
    for layer in &params.layers {
        resid_pre.push(resid.clone());
        let mut out = Matrix::zeros(resid.nrows(), resid.ncols());
        let (mut layer_patterns, mut layer_scores) = (Vec::new(), Vec::new());
        for h in 0..layer.w_q.len() {
            let q = &resid * &layer.w_q[h];
            let k = &resid * &layer.w_k[h];
            let v = &resid * &layer.w_v[h];
            let s = (&q * k.transpose()) / layer.attn_scale;
            let pattern = causal_softmax(&s);
            out += &pattern * (v * &layer.w_o[h]);
            layer_patterns.push(pattern);
            layer_scores.push(s);
        }
        resid += out;
        patterns.push(layer_patterns);
        scores.push(layer_scores);
    }
    let logits = &resid * &params.w_u;
    Ok(Forward { tokens: tokens.to_vec(), logits, patterns, scores, resid_pre, resid_final: resid })
}

/// The residual-stream contribution `[n, d_model]` of a path given by its source and heads,
/// `A^{l_k,h_k} ⋯ (A^{l_1,h_1} · X_s · W_V W_O) ⋯ W_V W_O`, with the products of shared prefixes
/// kept on a stack: paths come in enumeration order (earliest layer slowest), so consecutive
/// paths share prefixes and only what differs is recomputed.
pub struct ResidualCache<'a> {
    params: &'a Params,
    forward: &'a Forward,
    stack: Vec<Prefix>,
}

/// A path prefix and the residual after it.
struct Prefix {
    source: Source,
    heads: Vec<(usize, usize)>,
    resid: Matrix,
}

impl<'a> ResidualCache<'a> {
    pub fn new(params: &'a Params, forward: &'a Forward) -> ResidualCache<'a> {
        ResidualCache { params, forward, stack: Vec::new() }
    }

    /// The residual of the path from `source` through `heads` (`(layer, head)`, in order).
    pub fn residual(&mut self, source: Source, heads: &[(usize, usize)]) -> &Matrix {
        let shared = self.stack.iter().take_while(|p| p.source == source && heads.starts_with(&p.heads)).count();
        self.stack.truncate(shared);
        if self.stack.is_empty() {
            let resid = self.params.source_rows(source, &self.forward.tokens);
            self.stack.push(Prefix { source, heads: Vec::new(), resid });
        }
        while self.stack.len() <= heads.len() {
            let top = self.stack.last().expect("non-empty");
            let (l, h) = heads[top.heads.len()];
            let layer = &self.params.layers[l];
            let resid = &self.forward.patterns[l][h] * ((&top.resid * &layer.w_v[h]) * &layer.w_o[h]);
            let prefix = heads[..=top.heads.len()].to_vec();
            self.stack.push(Prefix { source, heads: prefix, resid });
        }
        &self.stack[heads.len()].resid
    }
}

/// The heads of a path on `side`, read from its template's factors (the factors, not the name,
/// drive the evaluation): the OV factors indexed on that side, in order of application.
fn heads_of(path: &Path<'_>, side: Side) -> Vec<(usize, usize)> {
    let mut heads: Vec<(usize, usize)> = path
        .template
        .weights
        .iter()
        .filter(|f| f.kind == FactorKind::OV)
        .filter_map(|f| f.index.filter(|i| i.side == side))
        .map(|i| (i.layer, path.head_of(i)))
        .collect();
    heads.sort();
    heads
}

/// Evaluates logit paths: `P · X_s · Mᵀ` with the residual side from a [`ResidualCache`].
pub struct PathEvaluator<'a> {
    cache: ResidualCache<'a>,
    w_u: &'a Matrix,
}

impl<'a> PathEvaluator<'a> {
    pub fn new(params: &'a Params, forward: &'a Forward) -> PathEvaluator<'a> {
        PathEvaluator { cache: ResidualCache::new(params, forward), w_u: &params.w_u }
    }

    /// The residual-stream contribution `[n, d_model]` of a logit path (before `W_U`).
    pub fn residual(&mut self, path: &Path<'_>) -> &Matrix {
        let source = path.template.source().expect("logit templates end in a source");
        self.cache.residual(source, &heads_of(path, Side::Head))
    }

    /// The path's logits `[n, d_vocab]`.
    pub fn logits(&mut self, path: &Path<'_>) -> Matrix {
        let w_u = self.w_u;
        self.residual(path) * w_u
    }

    /// The path's logits at one position, a `[1, d_vocab]` row.
    pub fn logits_at(&mut self, path: &Path<'_>, position: usize) -> Matrix {
        let w_u = self.w_u;
        self.residual(path).rows(position, 1) * w_u
    }
}

/// The logits split by order, `[n, d_vocab]` each, by the graded recursion
/// `S_l[j] = S_{l-1}[j] + Σ_h A^{l,h} · S_{l-1}[j-1] · W_V W_O`: the sum of all paths of each
/// order, computed without enumerating them (L² products), so that a truncated expansion can be
/// checked against the forward pass and the omitted orders measured.
pub fn logits_by_order(params: &Params, forward: &Forward) -> Vec<Matrix> {
    let mut stream = params.source_rows(Source::E, &forward.tokens);
    if params.w_pos.is_some() {
        stream += params.source_rows(Source::P, &forward.tokens);
    }
    let mut by_order = vec![stream];
    for (l, layer) in params.layers.iter().enumerate() {
        let mut next: Vec<Matrix> = by_order.clone();
        next.push(Matrix::zeros(by_order[0].nrows(), by_order[0].ncols()));
        for (j, part) in by_order.iter().enumerate() {
            for h in 0..layer.w_v.len() {
                next[j + 1] += &forward.patterns[l][h] * ((part * &layer.w_v[h]) * &layer.w_o[h]);
            }
        }
        by_order = next;
    }
    by_order.iter().map(|r| r * &params.w_u).collect()
}

/// What `pathc check` reports: the enumerated paths (plus, when truncated, the omitted orders
/// from [`logits_by_order`]) against the forward pass.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CheckReport {
    pub paths: u64,
    pub max_order: Option<u32>,
    /// `max |Σ paths + omitted − logits|`.
    pub max_abs_error: f64,
    /// `max_abs_error / max |logits|`.
    pub max_rel_error: f64,
    pub max_abs_logit: f64,
    /// `max |omitted|`: what the orders above `max_order` contribute (0 without truncation).
    pub omitted_max_abs: f64,
}

/// Sums every path of the expansion and compares with the forward pass.
pub fn check(expansion: &crate::Expansion, params: &Params, forward: &Forward) -> CheckReport {
    let mut total = Matrix::zeros(forward.logits.nrows(), forward.logits.ncols());
    let mut evaluator = PathEvaluator::new(params, forward);
    let mut paths = 0u64;
    crate::paths::for_each_path(&expansion.logits, &expansion.heads_per_layer(), None, |p| {
        total += evaluator.logits(&p);
        paths += 1;
    });
    let by_order = logits_by_order(params, forward);
    let kept = expansion.max_order.map_or(by_order.len(), |k| (k as usize + 1).min(by_order.len()));
    let mut omitted = Matrix::zeros(total.nrows(), total.ncols());
    for part in &by_order[kept..] {
        omitted += part;
    }
    let max_abs = |m: &Matrix| m.iter().fold(0.0f64, |acc, x| acc.max(x.abs()));
    let max_abs_error = max_abs(&(&total + &omitted - &forward.logits));
    let max_abs_logit = max_abs(&forward.logits);
    CheckReport {
        paths,
        max_order: expansion.max_order,
        max_abs_error,
        max_rel_error: if max_abs_logit > 0.0 { max_abs_error / max_abs_logit } else { max_abs_error },
        max_abs_logit,
        omitted_max_abs: max_abs(&omitted),
    }
}

/// Evaluates attention-score terms: the term with query path `p` and key path `p'` contributes
/// `(R_p W_Q)(R_{p'} W_K)ᵀ / attn_scale` (`[n, n]`, queries × keys, before the causal mask and
/// the softmax) to its head's scores; over all terms these sum to the scores.
pub struct ScoreEvaluator<'a> {
    params: &'a Params,
    query: ResidualCache<'a>,
    key: ResidualCache<'a>,
}

impl<'a> ScoreEvaluator<'a> {
    pub fn new(params: &'a Params, forward: &'a Forward) -> ScoreEvaluator<'a> {
        ScoreEvaluator { params, query: ResidualCache::new(params, forward), key: ResidualCache::new(params, forward) }
    }

    /// The contribution of one score term of the head `(layer, head)`.
    pub fn scores(&mut self, path: &Path<'_>, layer: usize, head: usize) -> Matrix {
        let template = path.template;
        let query_source = template.query_source().expect("score templates start with a source");
        let key_source = template.source().expect("score templates end in a source");
        let weights = &self.params.layers[layer];
        let q = self.query.residual(query_source, &heads_of(path, Side::Query)) * &weights.w_q[head];
        let k = self.key.residual(key_source, &heads_of(path, Side::Key)) * &weights.w_k[head];
        (q * k.transpose()) / weights.attn_scale
    }
}

#[cfg(test)]
mod tests {
    use super::NameMap;

    #[test]
    fn names_map_with_layer_placeholders() {
        let map = NameMap::parse(&["blocks.{l}.attn.W_Q=layers.{l}.wq".into(), "embed.W_E=tok".into()]).unwrap();
        assert_eq!(map.resolve("blocks.11.attn.W_Q"), "layers.11.wq");
        assert_eq!(map.resolve("blocks.x.attn.W_Q"), "blocks.x.attn.W_Q");
        assert_eq!(map.resolve("embed.W_E"), "tok");
        assert_eq!(map.resolve("unembed.W_U"), "unembed.W_U");
        for bad in ["nothing", "=x", "a{l}=b", "a{l}{l}=b{l}"] {
            assert!(NameMap::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
