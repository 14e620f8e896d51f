//! Path and attention-score terms evaluated with the recorded patterns and LayerNorm scales
//! frozen.
//!
//! A path's residual-side product is evaluated from its origin (the source's rows, `[n, d_model]`)
//! through its heads: each head `(l, h)` maps `X ↦ A^{l,h} · N_l · X · W_V'^{l,h} W_O^{l,h}`, with
//! `N_l = diag(1/σ)` of the LayerNorm before layer `l`'s attention (when there is one) and `W_V'`
//! folded (`Params::fold_layer_norm`). The logits of a path are `N_final · X · W_U'`; the constant
//! `b_U'` is a path of its own. So every term here is linear in its source, and the terms sum
//! exactly to the forward pass.

use std::borrow::Cow;

use super::{EvalError, Forward, Matrix, Params, Row};
use crate::graph::Source;
use crate::linalg::{finite, max_abs};
use crate::paths::{FactorKind, Path, Side};
use crate::progress::Progress;

/// The parameters with every LayerNorm folded into the weights that read it: path terms use
/// folded weights (centring included), so a model with a LayerNorm is folded once here.
pub(super) fn folded(params: &Params) -> Cow<'_, Params> {
    let has_norm = params.ln_final.is_some() || params.layers.iter().any(|l| l.ln1.is_some() || l.ln2.is_some());
    if has_norm {
        Cow::Owned(params.fold_layer_norm())
    } else {
        Cow::Borrowed(params)
    }
}

/// `n` copies of `row`: a constant source at every position.
fn broadcast(n: usize, row: &Row) -> Matrix {
    Matrix::from_fn(n, row.len(), |_, j| row[j])
}

/// `diag(1/σ) · m`: a LayerNorm's frozen scale on the position side (`m` itself without one).
fn scaled(m: &Matrix, sigma: Option<&Vec<f64>>) -> Matrix {
    match sigma {
        Some(sigma) => Matrix::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] / sigma[i]),
        None => m.clone(),
    }
}

/// Where a path's residual starts: its source, and for a value bias the head it enters through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub source: Source,
    pub head: Option<usize>,
}

impl Origin {
    /// The origin of `path` on `side` (the query or key side of a score term, or `Side::Head`).
    pub(super) fn of(path: &Path<'_>, side: Side) -> Origin {
        let template = path.template;
        let source = match side {
            Side::Query => template.query_source(),
            Side::Head | Side::Key => template.source(),
        };
        let head = template
            .weights
            .iter()
            .find(|f| f.kind == FactorKind::BiasV && f.index.is_some_and(|i| i.side == side))
            .and_then(|f| f.index)
            .map(|i| path.head_of(i));
        Origin { source: source.expect("every term ends in a source"), head }
    }
}

/// The heads a path passes after its origin on `side`, read from its template's factors (the
/// factors, not the name, drive the evaluation): the OV factors indexed on that side, in order
/// of application.
pub(super) fn heads_of(path: &Path<'_>, side: Side) -> Vec<(usize, usize)> {
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

/// What the residual side of a path reads: the embeddings, `W_O`, `b_O` and `b_out` (which no
/// LayerNorm folding changes) from `params`, and the value weights `W_V'`, `b_V'` with the
/// LayerNorm before their layer folded in: from `values` when given, else from `params` (then
/// folded as a whole).
#[derive(Clone, Copy)]
pub(super) struct Stream<'p> {
    pub params: &'p Params,
    pub values: Option<&'p [FoldedValues]>,
}

/// One layer's value weights and biases with its `ln1` folded in, per key/value head: what a
/// path through its heads reads, without folding (and copying) the rest of the parameters.
#[derive(Clone)]
pub(super) struct FoldedValues {
    pub w_v: Vec<Matrix>,
    pub b_v: Vec<Row>,
    /// Query heads per key/value head (1 without grouped-query attention).
    pub group: usize,
}

impl FoldedValues {
    /// Every layer's `W_V'`, `b_V'`, exactly as [`Params::fold_layer_norm`] folds them.
    pub fn of(params: &Params) -> Vec<FoldedValues> {
        params
            .layers
            .iter()
            .map(|layer| {
                let (mut w_v, mut b_v) = (layer.attn.w_v_kv.clone(), layer.attn.b_v_kv.clone());
                if let Some(ln) = &layer.ln1 {
                    for (w, b) in w_v.iter_mut().zip(&mut b_v) {
                        super::params::fold_into_reader(ln, w, b);
                    }
                }
                let group = layer.attn.n_heads() / w_v.len();
                FoldedValues { w_v, b_v, group }
            })
            .collect()
    }
}

impl<'p> Stream<'p> {
    /// Parameters folded as a whole ([`folded`]).
    pub fn folded(params: &'p Params) -> Stream<'p> {
        Stream { params, values: None }
    }

    pub fn w_v(&self, l: usize, h: usize) -> &'p Matrix {
        match self.values {
            Some(values) => &values[l].w_v[h / values[l].group],
            None => self.params.layers[l].attn.w_v(h),
        }
    }

    fn b_v(&self, l: usize, h: usize) -> &'p Row {
        match self.values {
            Some(values) => &values[l].b_v[h / values[l].group],
            None => self.params.layers[l].attn.b_v(h),
        }
    }
}

/// `N_l · X · W_V'^{l,h}` (`[n, d_head]`): what head `(l, h)` reads from a residual `X`, with `N_l`
/// (ln1's frozen scale) applied to the product's rows, which is cheaper than to `X`'s and the same.
pub(super) fn head_values(stream: Stream<'_>, forward: &Forward, x: &Matrix, (l, h): (usize, usize)) -> Matrix {
    let values = x * stream.w_v(l, h);
    match forward.scale_attn[l].as_ref() {
        Some(sigma) => Matrix::from_fn(values.nrows(), values.ncols(), |i, j| values[(i, j)] / sigma[i]),
        None => values,
    }
}

/// The residual-side products of path prefixes, kept on a stack: paths come in enumeration
/// order (earliest layer slowest), so consecutive paths share prefixes and only what differs is
/// recomputed.
#[derive(Default)]
pub(super) struct PrefixStack {
    stack: Vec<Prefix>,
}

/// A path prefix and the residual after it.
struct Prefix {
    origin: Origin,
    heads: Vec<(usize, usize)>,
    resid: Matrix,
}

impl PrefixStack {
    /// The residual `[n, d_model]` of the path from `origin` through `heads` (`(layer, head)`, in
    /// order). Each head maps `X ↦ A · (N · X · W_V') · W_O`, associated so that the intermediate
    /// is `[n, d_head]`: no `[d_model, d_model]` product, and `A` multiplies `d_head` columns.
    pub fn residual(
        &mut self,
        stream: Stream<'_>,
        forward: &Forward,
        origin: Origin,
        heads: &[(usize, usize)],
    ) -> &Matrix {
        let shared = self.stack.iter().take_while(|p| p.origin == origin && heads.starts_with(&p.heads)).count();
        self.stack.truncate(shared);
        if self.stack.is_empty() {
            let resid = origin_rows(stream, forward, origin);
            self.stack.push(Prefix { origin, heads: Vec::new(), resid });
        }
        while self.stack.len() <= heads.len() {
            let top = self.stack.last().expect("non-empty");
            let (l, h) = heads[top.heads.len()];
            let values = head_values(stream, forward, &top.resid, (l, h));
            let resid = (&forward.patterns[l][h] * values) * &stream.params.layers[l].attn.w_o[h];
            let prefix = heads[..=top.heads.len()].to_vec();
            self.stack.push(Prefix { origin, heads: prefix, resid });
        }
        &self.stack[heads.len()].resid
    }
}

/// The rows `[n, d_model]` a source writes to the residual stream.
fn origin_rows(stream: Stream<'_>, forward: &Forward, origin: Origin) -> Matrix {
    let n = forward.tokens.len();
    let params = stream.params;
    match origin.source {
        Source::E | Source::P => params.source_rows(origin.source, &forward.tokens),
        Source::BiasO(l) => broadcast(n, &params.layers[l].attn.b_o),
        Source::Mlp(l) => forward.mlp_out[l].clone().expect("an MLP source exists only with an MLP"),
        Source::BiasOut(l) => broadcast(n, &params.layers[l].mlp.as_ref().expect("an MLP").b_out),
        Source::BiasV(l) => {
            let h = origin.head.expect("a value bias enters through a head");
            let attn = &params.layers[l].attn;
            &forward.patterns[l][h] * broadcast(n, &(stream.b_v(l, h) * &attn.w_o[h]))
        }
        Source::BiasU | Source::BiasQ(_) | Source::BiasK(_) | Source::BiasIn(_) | Source::BiasGate(_) => {
            unreachable!("{:?} never enters the residual stream", origin.source)
        }
    }
}

/// The residual-side contribution of paths to the stream, shared by the evaluators.
pub struct ResidualCache<'a> {
    params: Cow<'a, Params>,
    forward: &'a Forward,
    stack: PrefixStack,
}

impl<'a> ResidualCache<'a> {
    pub fn new(params: &'a Params, forward: &'a Forward) -> ResidualCache<'a> {
        ResidualCache { params: folded(params), forward, stack: PrefixStack::default() }
    }

    /// The residual `[n, d_model]` of the path from `origin` through `heads`.
    pub fn residual(&mut self, origin: Origin, heads: &[(usize, usize)]) -> &Matrix {
        self.stack.residual(Stream::folded(&self.params), self.forward, origin, heads)
    }

    /// The parameters the residuals are computed with (LayerNorms folded).
    pub fn params(&self) -> &Params {
        &self.params
    }
}

/// Evaluates logit paths (and MLP-input terms) with the residual side from a [`ResidualCache`].
pub struct PathEvaluator<'a> {
    cache: ResidualCache<'a>,
}

impl<'a> PathEvaluator<'a> {
    pub fn new(params: &'a Params, forward: &'a Forward) -> PathEvaluator<'a> {
        PathEvaluator { cache: ResidualCache::new(params, forward) }
    }

    /// The residual-stream contribution `[n, d_model]` of a path (before the final LayerNorm and
    /// `W_U`); `None` for the constant `b_U`, which is not in the stream.
    pub fn residual(&mut self, path: &Path<'_>) -> Option<&Matrix> {
        let origin = Origin::of(path, Side::Head);
        if origin.source == Source::BiasU {
            return None;
        }
        Some(self.cache.residual(origin, &heads_of(path, Side::Head)))
    }

    /// The path's logits `[n, d_vocab]`: `N_final · X · W_U'`, or `b_U'` at every position.
    pub fn logits(&mut self, path: &Path<'_>) -> Matrix {
        let n = self.cache.forward.tokens.len();
        self.logit_rows(path, 0, n)
    }

    /// The path's logits at one position, a `[1, d_vocab]` row.
    pub fn logits_at(&mut self, path: &Path<'_>, position: usize) -> Matrix {
        self.logit_rows(path, position, 1)
    }

    fn logit_rows(&mut self, path: &Path<'_>, start: usize, rows: usize) -> Matrix {
        if Origin::of(path, Side::Head).source == Source::BiasU {
            return self.constant_logits(rows);
        }
        let input = self.unembedding_rows(path, start, rows);
        self.unembed(&input)
    }

    /// What `W_U'` multiplies for a stream path: its residual rows `start..start + rows` through
    /// the final LayerNorm's frozen scale.
    fn unembedding_rows(&mut self, path: &Path<'_>, start: usize, rows: usize) -> Matrix {
        let forward = self.cache.forward;
        let resid = self.residual(path).expect("a stream path").rows(start, rows).into_owned();
        let sigma = forward.scale_final.as_ref().map(|s| s[start..start + rows].to_vec());
        scaled(&resid, sigma.as_ref())
    }

    /// The path's unembedding input at `position` (`[1, d_model]`, see [`PathEvaluator::unembed`]),
    /// or `None` for the constant `b_U`: rows of many paths can then share one product with `W_U'`.
    pub fn unembedding_input(&mut self, path: &Path<'_>, position: usize) -> Option<Row> {
        if Origin::of(path, Side::Head).source == Source::BiasU {
            return None;
        }
        Some(self.unembedding_rows(path, position, 1).row(0).into_owned())
    }

    /// Unembedding inputs `[k, d_model]` times `W_U'`: their logits `[k, d_vocab]`.
    pub fn unembed(&self, inputs: &Matrix) -> Matrix {
        inputs * &self.cache.params().w_u
    }

    /// The constant `b_U'` path's logits at `rows` positions.
    pub fn constant_logits(&self, rows: usize) -> Matrix {
        broadcast(rows, &self.cache.params().b_u)
    }

    /// A term of layer `layer`'s MLP input `[n, d_mlp]`: `N · X · W_in'`, or `b_in'` at every
    /// position (`N` the frozen scale of the norm the MLP reads). Over all terms these sum to the
    /// MLP's pre-activation; for a gated MLP to its linear input `x·W_in` (whose constant is the
    /// norm's bias through `W_in`: TransformerLens adds `b_in` after the product).
    pub fn mlp_input(&mut self, path: &Path<'_>, layer: usize) -> Matrix {
        self.mlp_term(path, layer, false)
    }

    /// A term of a gated MLP's gate input `[n, d_mlp]`: `N · X · W_gate'`, or `b_gate'`. Over all
    /// terms these sum to the gate input `x·W_gate` (TransformerLens's `hook_pre`).
    pub fn mlp_gate_input(&mut self, path: &Path<'_>, layer: usize) -> Matrix {
        self.mlp_term(path, layer, true)
    }

    fn mlp_term(&mut self, path: &Path<'_>, layer: usize, gate_side: bool) -> Matrix {
        let forward = self.cache.forward;
        let n = forward.tokens.len();
        let origin = Origin::of(path, Side::Head);
        let heads = heads_of(path, Side::Head);
        let params: &Params = &self.cache.params;
        let mlp = params.layers[layer].mlp.as_ref().expect("an MLP-input term of a layer with an MLP");
        let (weight, constant) = match (&mlp.gate, gate_side) {
            (None, _) => (&mlp.w_in, &mlp.b_in),
            (Some(gate), false) => (&mlp.w_in, &gate.b_lin),
            (Some(gate), true) => (&gate.w_gate, &gate.b_gate),
        };
        if matches!(origin.source, Source::BiasIn(_) | Source::BiasGate(_)) {
            return broadcast(n, constant);
        }
        let resid = self.cache.stack.residual(Stream::folded(params), forward, origin, &heads);
        scaled(resid, forward.scale_mlp[layer].as_ref()) * weight
    }
}

/// The logits split by order, `[n, d_vocab]` each: the sum of all paths of each order, computed
/// without enumerating them by the graded recursion over blocks (`S[j]`: the stream's order-`j`
/// part; an attention block adds `Σ_h A^h·N·S[j-1]·W_V'W_O` to `S[j]`, its value biases to
/// `S[1]` and `b_O` to `S[0]`; an MLP adds its output and `b_out` to `S[0]`), so that a truncated
/// expansion can be checked against the forward pass and the omitted orders measured.
pub fn logits_by_order(params: &Params, forward: &Forward) -> Vec<Matrix> {
    logits_by_order_folded(&folded(params), forward)
}

/// [`logits_by_order`] of parameters already folded.
fn logits_by_order_folded(params: &Params, forward: &Forward) -> Vec<Matrix> {
    let n = forward.tokens.len();
    let mut stream = params.source_rows(Source::E, &forward.tokens);
    if params.pos_in_stream() {
        stream += params.source_rows(Source::P, &forward.tokens);
    }
    let mut by_order = vec![stream];
    for (l, layer) in params.layers.iter().enumerate() {
        let attn = &layer.attn;
        let mut next: Vec<Matrix> = by_order.clone();
        next.push(Matrix::zeros(n, by_order[0].ncols()));
        for (j, part) in by_order.iter().enumerate() {
            let read = scaled(part, forward.scale_attn[l].as_ref());
            for h in 0..attn.n_heads() {
                next[j + 1] += &forward.patterns[l][h] * ((&read * attn.w_v(h)) * &attn.w_o[h]);
            }
        }
        for h in 0..attn.n_heads() {
            next[1] += &forward.patterns[l][h] * broadcast(n, &(attn.b_v(h) * &attn.w_o[h]));
        }
        next[0] += broadcast(n, &attn.b_o);
        if let (Some(mlp), Some(out)) = (&layer.mlp, &forward.mlp_out[l]) {
            next[0] += out + broadcast(n, &mlp.b_out);
        }
        by_order = next;
    }
    let mut logits: Vec<Matrix> =
        by_order.iter().map(|r| scaled(r, forward.scale_final.as_ref()) * &params.w_u).collect();
    logits[0] += broadcast(n, &params.b_u);
    logits
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

/// Sums every path of the expansion and compares with the forward pass. A path whose logits are
/// not finite is an error naming it (the sum could not be compared with anything).
///
/// `progress` is told of every path, and asked after each whether to stop
/// ([`EvalError::Cancelled`]).
pub fn check(
    expansion: &crate::Expansion,
    params: &Params,
    forward: &Forward,
    progress: &dyn Progress,
) -> Result<CheckReport, EvalError> {
    let mut total = Matrix::zeros(forward.logits.nrows(), forward.logits.ncols());
    let mut evaluator = PathEvaluator::new(params, forward);
    let mut paths = 0u64;
    let mut stopped: Option<EvalError> = None;
    progress.start("checking the paths", u64::try_from(&expansion.logit_counts.total()).unwrap_or(u64::MAX));
    crate::paths::for_each_path(&expansion.logits, &expansion.heads_per_layer(), None, |p| {
        if stopped.is_some() {
            return;
        }
        let logits = evaluator.logits(&p);
        match finite(&logits, |q, t| format!("the logits of path {} at position {q}, token {t}", p.name())) {
            Ok(()) => total += logits,
            Err(e) => stopped = Some(e.into()),
        }
        paths += 1;
        progress.advance(1);
        if let Err(e) = progress.check() {
            stopped.get_or_insert(e.into());
        }
    });
    progress.finish();
    if let Some(e) = stopped {
        return Err(e);
    }
    // The evaluator's parameters are folded already: folding copies W_E and W_U.
    let by_order = logits_by_order_folded(evaluator.cache.params(), forward);
    let kept = expansion.max_order.map_or(by_order.len(), |k| (k as usize + 1).min(by_order.len()));
    let mut omitted = Matrix::zeros(total.nrows(), total.ncols());
    for part in &by_order[kept..] {
        omitted += part;
    }
    finite(&omitted, |q, t| format!("the orders above the truncation at position {q}, token {t}"))?;
    let error = &total + &omitted - &forward.logits;
    finite(&error, |q, t| format!("the sum of the paths at position {q}, token {t}"))?;
    let max_abs_error = max_abs(error.iter());
    let max_abs_logit = max_abs(forward.logits.iter());
    Ok(CheckReport {
        paths,
        max_order: expansion.max_order,
        max_abs_error,
        max_rel_error: if max_abs_logit > 0.0 { max_abs_error / max_abs_logit } else { max_abs_error },
        max_abs_logit,
        omitted_max_abs: max_abs(omitted.iter()),
    })
}

/// Evaluates attention-score terms: the term with query side `q_p` and key side `k_p'`
/// contributes `q_p k_p'ᵀ / attn_scale` (`[n, n]`, queries × keys, before any mask and the
/// softmax) to its head's scores, where a side is `N · R_p · W_Q'` for a path `p`, the constant
/// `b_Q'` (`b_K'` on the key side), or for shortformer `W_pos · W_Q` (the stored `W_Q`: the
/// positions are added after the LayerNorm); in a rotary layer each side's row at position `i` is
/// rotated by `Rot(i)`, which makes the term `q_i Rot(i − j) k_jᵀ`. Over all terms these sum to
/// the scores.
pub struct ScoreEvaluator<'a> {
    params: Cow<'a, Params>,
    forward: &'a Forward,
    query: PrefixStack,
    key: PrefixStack,
}

impl<'a> ScoreEvaluator<'a> {
    pub fn new(params: &'a Params, forward: &'a Forward) -> ScoreEvaluator<'a> {
        ScoreEvaluator { params: folded(params), forward, query: PrefixStack::default(), key: PrefixStack::default() }
    }

    /// An evaluator on parameters already folded ([`folded`]'s result, made once for many
    /// prompts): `folded` must be what [`ScoreEvaluator::new`] would fold `forward`'s parameters to.
    pub(super) fn prefolded(folded: &'a Params, forward: &'a Forward) -> ScoreEvaluator<'a> {
        ScoreEvaluator {
            params: Cow::Borrowed(folded),
            forward,
            query: PrefixStack::default(),
            key: PrefixStack::default(),
        }
    }

    /// The contribution of one score term of the head `(layer, head)`.
    pub fn scores(&mut self, path: &Path<'_>, layer: usize, head: usize) -> Matrix {
        let (params, forward) = (&*self.params, self.forward);
        let attn = &params.layers[layer].attn;
        let n = forward.tokens.len();
        let sigma = forward.scale_attn[layer].as_ref();
        let side = |stack: &mut PrefixStack, side: Side, weight: &Matrix, bias: &Row, pos_reader: Option<&Matrix>| {
            let origin = Origin::of(path, side);
            let mut rows = match (origin.source, pos_reader) {
                (Source::BiasQ(_) | Source::BiasK(_), _) => broadcast(n, bias),
                (Source::P, Some(reader)) => params.source_rows(Source::P, &forward.tokens) * reader,
                _ => {
                    scaled(stack.residual(Stream::folded(params), forward, origin, &heads_of(path, side)), sigma)
                        * weight
                }
            };
            if let Some(rotary) = &attn.rotary {
                super::rotary::rotate_rows(&mut rows, rotary);
            }
            rows
        };
        let readers = attn.pos_readers(head);
        let q = side(&mut self.query, Side::Query, &attn.w_q[head], &attn.b_q[head], readers.map(|r| r.0));
        let k = side(&mut self.key, Side::Key, attn.w_k(head), attn.b_k(head), readers.map(|r| r.1));
        (q * k.transpose()) / attn.attn_scale
    }
}
