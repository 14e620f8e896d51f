//! The forward pass, with TransformerLens's semantics, recording what the path expansion freezes
//! (attention patterns, LayerNorm scales) and the pieces the logits are a sum of (each head's
//! result, each MLP's output).

use super::{EvalError, Matrix, MlpWeights, NormWeights, Params, Row};
use crate::graph::Source;
use crate::linalg::{finite, NonFinite};
use crate::model::Activation;

/// A forward pass: the logits and everything recorded on the way.
#[derive(Debug, Clone)]
pub struct Forward {
    pub tokens: Vec<usize>,
    /// `[n, d_vocab_out]`.
    pub logits: Matrix,
    /// The key mask the pass ran with (TransformerLens's `attention_mask`), if any.
    pub attention_mask: Option<Vec<bool>>,
    /// `patterns[l][h]`: `[n, n]` (query, key), softmax over the keys the causal mask (in a
    /// causal layer) and the attention mask keep.
    pub patterns: Vec<Vec<Matrix>>,
    /// `scores[l][h]`: `[n, n]` pre-softmax scores `q·k / attn_scale` (queries and keys rotated
    /// in a rotary layer), without any mask.
    pub scores: Vec<Vec<Matrix>>,
    /// `resid_pre[l]`: `[n, d_model]`, the residual stream entering layer `l`.
    pub resid_pre: Vec<Matrix>,
    /// `[n, d_model]`, after the last layer (before `ln_final`).
    pub resid_final: Matrix,
    /// Norm scales per position, as recorded (TransformerLens `hook_scale`: σ = sqrt(var + eps),
    /// or the RMS for an RMSNorm): `scale_attn[l]` of `ln1`, `scale_mlp[l]` of the norm the MLP
    /// reads (`ln2`, or `ln1` when shared); `None` without that norm.
    pub scale_attn: Vec<Option<Vec<f64>>>,
    pub scale_mlp: Vec<Option<Vec<f64>>>,
    /// `ln_final`'s scale per position; `None` without a final LayerNorm.
    pub scale_final: Option<Vec<f64>>,
    /// `head_results[l][h]`: `[n, d_model]`, the head's result `pattern · v · W_O` (including
    /// `b_V`, excluding `b_O`, which belongs to the layer, not to a head).
    pub head_results: Vec<Vec<Matrix>>,
    /// `mlp_pre[l]`: `[n, d_mlp]`, the MLP's pre-activation (including `b_in`; a gated MLP's gate
    /// input `x·W_gate`, TransformerLens's `hook_pre`); `None` without an MLP.
    pub mlp_pre: Vec<Option<Matrix>>,
    /// `mlp_linear[l]`: `[n, d_mlp]`, a gated MLP's linear input `x·W_in` (TransformerLens's
    /// `hook_pre_linear`); `None` otherwise.
    pub mlp_linear: Vec<Option<Matrix>>,
    /// `mlp_out[l]`: `[n, d_model]`, the MLP's output without `b_out`; `None` without an MLP.
    pub mlp_out: Vec<Option<Matrix>>,
    /// `resid_mid[l]`: `[n, d_model]`, the residual stream after layer `l`'s attention, before its
    /// MLP.
    pub resid_mid: Vec<Matrix>,
}

/// Which keys query `q` may attend to: every key `k` with `mask[k]` (all without a mask), and
/// with a causal mask only `k ≤ q`.
pub(crate) fn attended(q: usize, n: usize, causal: bool, mask: Option<&[bool]>) -> impl Iterator<Item = usize> + '_ {
    let last = if causal { q + 1 } else { n };
    (0..last).filter(move |&k| mask.is_none_or(|m| m[k]))
}

/// Softmax over each row (query) of `scores`, over the keys it may attend to
/// ([`attended`]); the other keys get weight 0.
fn masked_softmax(scores: &Matrix, causal: bool, mask: Option<&[bool]>) -> Matrix {
    let n = scores.nrows();
    let mut pattern = Matrix::zeros(n, n);
    for q in 0..n {
        let max = attended(q, n, causal, mask).map(|k| scores[(q, k)]).fold(f64::NEG_INFINITY, f64::max);
        let mut total = 0.0;
        for k in attended(q, n, causal, mask) {
            let e = (scores[(q, k)] - max).exp();
            pattern[(q, k)] = e;
            total += e;
        }
        for k in attended(q, n, causal, mask) {
            pattern[(q, k)] /= total;
        }
    }
    pattern
}

/// Checks an attention mask against the tokens and the layers' causal masks: one entry per
/// token, and every query of every layer attends to at least one key.
fn check_mask(params: &Params, n: usize, mask: &[bool]) -> Result<(), EvalError> {
    if mask.len() != n {
        return Err(EvalError::MaskLength { found: mask.len(), n_tokens: n });
    }
    let causal = params.layers.iter().any(|l| l.attn.causal);
    let bidirectional = params.layers.iter().any(|l| !l.attn.causal);
    for (causal, present) in [(true, causal), (false, bidirectional)] {
        if let Some(position) = (0..n).find(|&q| present && attended(q, n, causal, Some(mask)).next().is_none()) {
            return Err(EvalError::EveryKeyMasked { position, causal });
        }
    }
    Ok(())
}

/// `Ok` if every row (position) of `m` is finite; else where the first non-finite value is:
/// `what` at its position.
fn at_positions(m: &Matrix, what: impl FnOnce() -> String) -> Result<(), NonFinite> {
    finite(m, |p, _| format!("{} at position {p}", what()))
}

/// `m` with `bias` added to every row (position).
fn plus_row(mut m: Matrix, bias: &Row) -> Matrix {
    for mut row in m.row_iter_mut() {
        row += bias;
    }
    m
}

/// A norm as TransformerLens computes it, on every row of `x`, and each row's scale (what the
/// expansion freezes): `LN` centres, divides by `σ = sqrt(mean(c²) + eps)`, then `· w + b`;
/// `LNPre` without `w`, `b`; `RMS` divides by `sqrt(mean(x²) + eps)` without centring, then `· w`;
/// `RMSPre` without `w`. `x` unchanged (and no scale) without a norm.
pub(crate) fn normalise(x: &Matrix, norm: Option<&NormWeights>) -> (Matrix, Option<Vec<f64>>) {
    let Some(norm) = norm else { return (x.clone(), None) };
    let mut out = x.clone();
    let mut scales = Vec::with_capacity(x.nrows());
    for mut row in out.row_iter_mut() {
        if norm.kind.centres() {
            let mean = row.mean();
            row.add_scalar_mut(-mean);
        }
        let scale = (row.norm_squared() / row.len() as f64 + norm.eps).sqrt();
        row /= scale;
        row.component_mul_assign(&norm.w);
        row += &norm.b;
        scales.push(scale);
    }
    (out, Some(scales))
}

/// An elementwise MLP activation as TransformerLens computes it: `gelu` is PyTorch's exact
/// `F.gelu` (`0.5·x·(1 + erf(x/√2))`); `gelu_new` and `gelu_pytorch_tanh` the tanh approximation
/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`; `gelu_fast` its variant
/// `0.5·x·(1 + tanh(0.7978845608·x·(1 + 0.044715·x²)))`; `silu` is `x·sigmoid(x)`. `solu_ln` is not
/// elementwise (see [`activation`]); here it is `x`. (TransformerLens 2.18 has no `quick_gelu`.)
pub fn activate(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Relu => x.max(0.0),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Activation::GeluNew | Activation::GeluPytorchTanh => {
            let sqrt_2_over_pi = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (sqrt_2_over_pi * (x + 0.044715 * x.powi(3))).tanh())
        }
        Activation::GeluFast => 0.5 * x * (1.0 + (x * 0.7978845608 * (1.0 + 0.044715 * x * x)).tanh()),
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::SoluLn => x,
    }
}

/// An MLP's activation on its pre-activation rows `[n, d_mlp]`: elementwise ([`activate`]), or
/// for `solu_ln` `x ⊙ softmax(x)` over each row's neurons followed by the MLP's inner norm.
pub fn activation(mlp: &MlpWeights, pre: &Matrix) -> Matrix {
    if mlp.act != Activation::SoluLn {
        return pre.map(|x| activate(mlp.act, x));
    }
    let mut solu = pre.clone();
    for mut row in solu.row_iter_mut() {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = row.iter().map(|x| (x - max).exp()).sum();
        row.apply(|x| *x *= (*x - max).exp() / total);
    }
    normalise(&solu, mlp.inner_norm.as_ref()).0
}

/// An MLP on its (normalised) input `y`: its pre-activation `y·W_in + b_in` (a gated MLP's gate
/// input `y·W_gate + b_gate`, and its linear input `y·W_lin + b_lin`), and its output without
/// `b_out`.
fn run_mlp(mlp: &MlpWeights, y: &Matrix) -> (Matrix, Option<Matrix>, Matrix) {
    match &mlp.gate {
        None => {
            let pre = plus_row(y * &mlp.w_in, &mlp.b_in);
            let out = activation(mlp, &pre) * &mlp.w_out;
            (pre, None, out)
        }
        Some(gate) => {
            let pre = plus_row(y * &gate.w_gate, &gate.b_gate);
            let linear = plus_row(y * &mlp.w_in, &gate.b_lin);
            let post = plus_row(activation(mlp, &pre).component_mul(&linear), &mlp.b_in);
            let out = post * &mlp.w_out;
            (pre, Some(linear), out)
        }
    }
}

/// Runs the model on `tokens` as TransformerLens does, recording every attention pattern (this is
/// what freezes `A`), every LayerNorm scale, and each head's and MLP's output.
///
/// `resid = W_E[tokens] + W_pos[..n]` (no `W_pos` for shortformer); per layer `x = LN1(resid)`,
/// `q = x W_Q + b_Q` (`k`, `v` alike; for shortformer `q = x W_Q + b_Q + W_pos W_Q`, `k` alike,
/// `v` without; rotary queries and keys rotated by position), `pattern = softmax(q kᵀ /
/// attn_scale)` over the keys the causal mask keeps, `resid += Σ_h pattern · v · W_O + b_O`;
/// then, with an MLP, `y = LN2(resid)`, `resid += act(y W_in + b_in) W_out + b_out`; finally
/// `logits = LN_final(resid) W_U + b_U`. Absent LayerNorms are the identity.
pub fn forward(params: &Params, tokens: &[usize]) -> Result<Forward, EvalError> {
    forward_masked(params, tokens, None)
}

/// [`forward`] with a key mask (TransformerLens's `attention_mask`): a key whose entry is
/// `false` gets no attention from any query; queries and positions are unaffected. Its length
/// must be the number of tokens, and every query must keep a key.
pub fn forward_masked(params: &Params, tokens: &[usize], mask: Option<&[bool]>) -> Result<Forward, EvalError> {
    run(params, tokens, mask, true)
}

/// [`forward`] without the unembedding: every record the paths and score terms are evaluated
/// with (patterns, scores, norm scales, MLP outputs, the residual streams), and `logits` left
/// empty (`0 × 0`), since `[n, d_vocab]` is most of a forward pass at a real vocabulary and a
/// metric reads a few entries of it ([`Forward::logit`]). What a dataset run computes per prompt.
pub fn forward_without_logits(params: &Params, tokens: &[usize]) -> Result<Forward, EvalError> {
    run(params, tokens, None, false)
}

impl Forward {
    /// The logit of token `t` at position `p`: from `logits`, or for a pass without them
    /// ([`forward_without_logits`]) from the final residual stream, normalised by `ln_final` as
    /// the forward pass normalises it, times `W_U`'s column `t`, plus `b_U[t]` (the same number up
    /// to the order of the sums).
    pub fn logit(&self, params: &Params, p: usize, t: usize) -> f64 {
        if self.logits.ncols() > 0 {
            return self.logits[(p, t)];
        }
        let row = Matrix::from_fn(1, self.resid_final.ncols(), |_, j| self.resid_final[(p, j)]);
        let (normalised, _) = normalise(&row, params.ln_final.as_ref());
        normalised.row(0).iter().zip(params.w_u.column(t).iter()).map(|(x, w)| x * w).sum::<f64>() + params.b_u[t]
    }
}

fn run(params: &Params, tokens: &[usize], mask: Option<&[bool]>, with_logits: bool) -> Result<Forward, EvalError> {
    params.check_tokens(tokens)?;
    if let Some(mask) = mask {
        check_mask(params, tokens.len(), mask)?;
    }
    let mut resid = params.source_rows(Source::E, tokens);
    let positions = params.w_pos.as_ref().map(|_| params.source_rows(Source::P, tokens));
    if let (Some(p), false) = (&positions, params.shortformer) {
        resid += p;
    }
    at_positions(&resid, || "the embedded tokens".to_string())?;
    let n_layers = params.layers.len();
    let mut patterns = Vec::with_capacity(n_layers);
    let mut scores = Vec::with_capacity(n_layers);
    let mut resid_pre = Vec::with_capacity(n_layers);
    let mut resid_mid = Vec::with_capacity(n_layers);
    let mut scale_attn = Vec::with_capacity(n_layers);
    let mut scale_mlp = Vec::with_capacity(n_layers);
    let mut head_results = Vec::with_capacity(n_layers);
    let mut mlp_pre = Vec::with_capacity(n_layers);
    let mut mlp_linear = Vec::with_capacity(n_layers);
    let mut mlp_out = Vec::with_capacity(n_layers);
    let n = tokens.len();
    for (l, layer) in params.layers.iter().enumerate() {
        resid_pre.push(resid.clone());
        let (x, scale) = normalise(&resid, layer.ln1.as_ref());
        at_positions(&x, || format!("the input of layer {l}'s attention (after its LayerNorm)"))?;
        scale_attn.push(scale);
        let attn = &layer.attn;
        let (mut layer_patterns, mut layer_scores, mut results) = (Vec::new(), Vec::new(), Vec::new());
        for h in 0..attn.n_heads() {
            let mut q = plus_row(&x * &attn.w_q[h], &attn.b_q[h]);
            let mut k = plus_row(&x * attn.w_k(h), attn.b_k(h));
            let v = plus_row(&x * attn.w_v(h), attn.b_v(h));
            if let (Some((w_q, w_k)), Some(p)) = (attn.pos_readers(h), &positions) {
                q += p * w_q;
                k += p * w_k;
            }
            if let Some(rotary) = &attn.rotary {
                super::rotary::rotate_rows(&mut q, rotary);
                super::rotary::rotate_rows(&mut k, rotary);
            }
            let s = (&q * k.transpose()) / attn.attn_scale;
            // Only the scores the masks keep reach the pattern.
            if let Some((q, k)) = (0..n)
                .flat_map(|q| attended(q, n, attn.causal, mask).map(move |k| (q, k)))
                .find(|&qk| !s[qk].is_finite())
            {
                let at = format!("the attention scores of L{l}H{h} at query position {q}, key position {k}");
                return Err(NonFinite { value: s[(q, k)], at }.into());
            }
            let pattern = masked_softmax(&s, attn.causal, mask);
            let result = (&pattern * v) * &attn.w_o[h];
            at_positions(&result, || format!("the output of head L{l}H{h}"))?;
            results.push(result);
            layer_patterns.push(pattern);
            layer_scores.push(s);
        }
        for result in &results {
            resid += result;
        }
        resid = plus_row(resid, &attn.b_o);
        at_positions(&resid, || format!("the residual stream after layer {l}'s attention"))?;
        resid_mid.push(resid.clone());
        match &layer.mlp {
            Some(mlp) => {
                // A parallel layer's MLP reads what its attention read; with one norm, the
                // attention's normalised input itself.
                let (y, scale) = match (layer.parallel, layer.shared_norm) {
                    (_, true) => (x.clone(), scale_attn[l].clone()),
                    (true, false) => normalise(&resid_pre[l], layer.ln2.as_ref()),
                    (false, false) => normalise(&resid, layer.ln2.as_ref()),
                };
                scale_mlp.push(scale);
                let (pre, linear, out) = run_mlp(mlp, &y);
                at_positions(&pre, || format!("the input of layer {l}'s MLP"))?;
                if let Some(linear) = &linear {
                    at_positions(linear, || format!("the linear input of layer {l}'s gated MLP"))?;
                }
                at_positions(&out, || format!("the output of layer {l}'s MLP"))?;
                resid += &out;
                resid = plus_row(resid, &mlp.b_out);
                at_positions(&resid, || format!("the residual stream after layer {l}'s MLP"))?;
                mlp_pre.push(Some(pre));
                mlp_linear.push(linear);
                mlp_out.push(Some(out));
            }
            None => {
                scale_mlp.push(None);
                mlp_pre.push(None);
                mlp_linear.push(None);
                mlp_out.push(None);
            }
        }
        patterns.push(layer_patterns);
        scores.push(layer_scores);
        head_results.push(results);
    }
    let (normalised, scale_final) = normalise(&resid, params.ln_final.as_ref());
    let logits = if with_logits {
        let logits = plus_row(&normalised * &params.w_u, &params.b_u);
        finite(&logits, |p, t| format!("the logits at position {p}, token {t}"))?;
        logits
    } else {
        at_positions(&normalised, || "the final residual stream, normalised".to_string())?;
        Matrix::zeros(0, 0)
    };
    Ok(Forward {
        tokens: tokens.to_vec(),
        attention_mask: mask.map(<[bool]>::to_vec),
        logits,
        patterns,
        scores,
        resid_pre,
        resid_final: resid,
        scale_attn,
        scale_mlp,
        scale_final,
        head_results,
        mlp_pre,
        mlp_linear,
        mlp_out,
        resid_mid,
    })
}
