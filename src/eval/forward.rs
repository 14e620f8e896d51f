//! The forward pass that records what the expansion freezes: attention patterns (and scores).

use super::{EvalError, Matrix, Params};
use crate::graph::Source;

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
