//! Path and attention-score terms evaluated with the recorded patterns frozen.

use super::{Forward, Matrix, Params};
use crate::graph::Source;
use crate::paths::{FactorKind, Path, Side};

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
            let layer = &self.params.layers[l].attn;
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
    for (l, layer) in params.layers.iter().map(|layer| &layer.attn).enumerate() {
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
        let weights = &self.params.layers[layer].attn;
        let q = self.query.residual(query_source, &heads_of(path, Side::Query)) * &weights.w_q[head];
        let k = self.key.residual(key_source, &heads_of(path, Side::Key)) * &weights.w_k[head];
        (q * k.transpose()) / weights.attn_scale
    }
}
