//! Direct logit attribution: each path's contribution to the logit of one target token per
//! position, without the vocabulary-wide unembedding.
//!
//! A path's logits are `N_final · X · W_U'` (`[n, d_vocab]`); its contribution to the logit of
//! token `t` at position `p` is `(X[p, :] · W_U'[:, t]) / σ_final[p]`, one dot product of length
//! d_model. So only the columns of `W_U'` of the target tokens are needed (gathered and folded
//! column by column, bit for bit as [`Params::fold_layer_norm`] folds them), and the product stays
//! factored: no `[n, d_vocab]` matrix is formed.
//!
//! A path's last head is folded into the target too: with `V = N_l · X · W_V'` (`[n, d_head]`) and
//! `G = W_O · U` (`[d_head, targets]`, once per head), the contribution at position `p` is
//! `Σ_q A[p, q] (V · G)[q, p] / σ_final[p]`, so a path's own cost is one `[n, d_model] · [d_model,
//! d_head]` product and a `[n, d_head] · [d_head, targets]` one. Its prefix (the residual after
//! the heads before the last) comes from the same prefix stack as [`PathEvaluator`](super::PathEvaluator)'s,
//! computed once for all the paths that share it.

use std::borrow::Cow;

use super::paths::{head_values, heads_of, FoldedValues, Origin, PrefixStack, Stream};
use super::{EvalError, Forward, Matrix, Params, Row};
use crate::graph::Source;
use crate::linalg::{finite, NonFinite};
use crate::paths::{Path, Side};

/// Which logit a path's contribution is taken of, at each position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The same token at every position.
    Token(usize),
    /// The next token of the sequence: at position `p`, `tokens[p + 1]` (what the model should
    /// predict there). The last position has none.
    Next,
}

impl std::str::FromStr for Target {
    type Err = String;

    /// `next` or a token id.
    fn from_str(s: &str) -> Result<Target, String> {
        match s {
            "next" => Ok(Target::Next),
            _ => s.parse().map(Target::Token).map_err(|_| format!("expected a token id or `next`, not `{s}`")),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Token(t) => write!(f, "{t}"),
            Target::Next => f.write_str("next"),
        }
    }
}

/// The (position, target token) pairs a [`Target`] resolves to on a token sequence: what a row
/// of contributions is indexed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    /// The positions, increasing.
    pub positions: Vec<usize>,
    /// The target token at each of them.
    pub tokens: Vec<usize>,
}

impl Targets {
    /// `target` at `position` of `tokens`, or at every position when `None`. With
    /// [`Target::Next`] every position but the last (which has no next token): asking for the
    /// last position, or for any with a single token, is an error, as is a token ≥ `d_vocab` or a
    /// position out of range.
    pub fn resolve(
        target: Target,
        tokens: &[usize],
        d_vocab: usize,
        position: Option<usize>,
    ) -> Result<Targets, EvalError> {
        let n = tokens.len();
        if n == 0 {
            return Err(EvalError::NoTokens);
        }
        if let Some(p) = position.filter(|&p| p >= n) {
            return Err(EvalError::PositionOutOfRange { position: p, n_tokens: n });
        }
        let positions: Vec<usize> = match (target, position) {
            (Target::Next, _) if n == 1 => return Err(EvalError::NextNeedsTwoTokens),
            (Target::Next, Some(p)) if p == n - 1 => return Err(EvalError::NoNextToken { position: p, n_tokens: n }),
            (_, Some(p)) => vec![p],
            (Target::Next, None) => (0..n - 1).collect(),
            (Target::Token(_), None) => (0..n).collect(),
        };
        let tokens: Vec<usize> = match target {
            Target::Token(t) if t >= d_vocab => return Err(EvalError::TargetOutOfRange { token: t, d_vocab }),
            Target::Token(t) => vec![t; positions.len()],
            Target::Next => positions.iter().map(|&p| tokens[p + 1]).collect(),
        };
        Ok(Targets { positions, tokens })
    }

    /// [`Targets::resolve`] on a model's outputs: a token target must be below `d_vocab_out`,
    /// and [`Target::Next`] needs the outputs to be the vocabulary (a model with its own
    /// `d_vocab_out` predicts something else than the next token).
    pub fn for_params(
        target: Target,
        tokens: &[usize],
        params: &Params,
        position: Option<usize>,
    ) -> Result<Targets, EvalError> {
        if target == Target::Next && params.d_vocab_out() != params.d_vocab() {
            return Err(EvalError::NextNeedsVocabOutputs {
                d_vocab: params.d_vocab(),
                d_vocab_out: params.d_vocab_out(),
            });
        }
        Targets::resolve(target, tokens, params.d_vocab_out(), position)
    }

    /// How many (position, token) pairs.
    /// Where the contribution of `name` to target `j` is, in words (for [`NonFinite`]).
    pub fn describe(&self, name: &str, j: usize) -> String {
        format!("the contribution of {name} to the logit of token {} at position {}", self.tokens[j], self.positions[j])
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// The forward pass's logit of each target: what the contributions of all paths (of every
    /// order) sum to.
    pub fn forward_logits(&self, forward: &Forward) -> Vec<f64> {
        self.positions.iter().zip(&self.tokens).map(|(&p, &t)| forward.logits[(p, t)]).collect()
    }
}

/// Evaluates logit paths' contributions to the target logits, `[targets]` per path, with the
/// product kept factored (see the module documentation). Paths should come in enumeration order,
/// so that their prefixes are shared.
pub struct TargetEvaluator<'a> {
    params: &'a Params,
    forward: &'a Forward,
    /// `W_V'`, `b_V'` per layer (ln1 folded): all the stream needs folded.
    values: Cow<'a, [FoldedValues]>,
    /// Each target's position, and its column in `unembed`.
    positions: Vec<usize>,
    columns: Vec<usize>,
    /// The folded `W_U'` columns of the distinct target tokens, `[d_model, m]`.
    unembed: Matrix,
    /// `b_U'` of the distinct target tokens, `[m]`.
    bias: Row,
    /// `1 / σ_final` at each target's position (1 without a final LayerNorm).
    inv_sigma: Vec<f64>,
    /// `W_O^{l,h} · unembed`, `[d_head, m]`, per layer and head, made at first use.
    through: Vec<Vec<Option<Matrix>>>,
    stack: PrefixStack,
}

impl<'a> TargetEvaluator<'a> {
    /// `targets` must be resolved on `forward`'s tokens ([`Targets::resolve`]).
    pub fn new(params: &'a Params, forward: &'a Forward, targets: &Targets) -> TargetEvaluator<'a> {
        TargetEvaluator::with(params, Cow::Owned(FoldedValues::of(params)), forward, targets)
    }

    /// [`TargetEvaluator::new`] with the value weights folded once for many prompts (`values` is
    /// `FoldedValues::of(params)`).
    pub(super) fn with_values(
        params: &'a Params,
        values: &'a [FoldedValues],
        forward: &'a Forward,
        targets: &Targets,
    ) -> TargetEvaluator<'a> {
        TargetEvaluator::with(params, Cow::Borrowed(values), forward, targets)
    }

    fn with(
        params: &'a Params,
        values: Cow<'a, [FoldedValues]>,
        forward: &'a Forward,
        targets: &Targets,
    ) -> TargetEvaluator<'a> {
        let mut distinct: Vec<usize> = targets.tokens.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let columns = targets.tokens.iter().map(|t| distinct.binary_search(t).expect("a target token")).collect();
        let d_model = params.w_u.nrows();
        let mut unembed = Matrix::from_fn(d_model, distinct.len(), |i, c| params.w_u[(i, distinct[c])]);
        let mut bias = Row::from_fn(distinct.len(), |_, c| params.b_u[distinct[c]]);
        if let Some(ln) = &params.ln_final {
            super::params::fold_into_reader(ln, &mut unembed, &mut bias);
        }
        let inv_sigma = targets
            .positions
            .iter()
            .map(|&p| forward.scale_final.as_ref().map_or(1.0, |sigma| 1.0 / sigma[p]))
            .collect();
        let through = params.layers.iter().map(|l| vec![None; l.attn.w_o.len()]).collect();
        TargetEvaluator {
            params,
            forward,
            values,
            positions: targets.positions.clone(),
            columns,
            unembed,
            bias,
            inv_sigma,
            through,
            stack: PrefixStack::default(),
        }
    }

    /// The path's contribution to each target logit (`[targets]`, in the order of
    /// [`Targets::positions`]): the column of its logits `N_final · X · W_U'` at each (position,
    /// token), or `b_U'` of the token for the constant path.
    pub fn contributions(&mut self, path: &Path<'_>) -> Vec<f64> {
        let origin = Origin::of(path, Side::Head);
        if origin.source == Source::BiasU {
            return self.columns.iter().map(|&c| self.bias[c]).collect();
        }
        let heads = heads_of(path, Side::Head);
        let stream = Stream { params: self.params, values: Some(&self.values) };
        let forward = self.forward;
        let Some((&last, before)) = heads.split_last() else {
            // No head: the origin's rows dotted with the target columns.
            let x = self.stack.residual(stream, forward, origin, &[]);
            return (self.columns.iter().zip(&self.inv_sigma).enumerate())
                .map(|(i, (&c, s))| {
                    let column = self.unembed.column(c);
                    x.row(self.positions[i]).iter().zip(column.iter()).map(|(a, b)| a * b).sum::<f64>() * s
                })
                .collect();
        };
        let (l, h) = last;
        if self.through[l][h].is_none() {
            self.through[l][h] = Some(&self.params.layers[l].attn.w_o[h] * &self.unembed);
        }
        let through = self.through[l][h].as_ref().expect("made above");
        let x = self.stack.residual(stream, forward, origin, before);
        // `[n, m]`: each position's value vector through W_O into each target column.
        let reads = head_values(stream, forward, x, last) * through;
        let pattern = &forward.patterns[l][h];
        // The keys a query may attend to: up to itself in a causal layer, all of them otherwise
        // (masked keys have weight 0 in the pattern).
        let causal = self.params.layers[l].attn.causal;
        (self.columns.iter().zip(&self.inv_sigma).enumerate())
            .map(|(i, (&c, s))| {
                let p = self.positions[i];
                let keys = if causal { p + 1 } else { pattern.ncols() };
                (0..keys).map(|k| pattern[(p, k)] * reads[(k, c)]).sum::<f64>() * s
            })
            .collect()
    }
}

/// Every logit path's contribution to the target logits: row `i` of `values` is path `i`'s (in
/// path order, named `names[i]`), column `j` the target at `targets.positions[j]`.
#[derive(Debug, Clone)]
pub struct TargetLogits {
    pub names: Vec<String>,
    pub orders: Vec<usize>,
    /// `[paths, targets]`.
    pub values: Matrix,
}

/// Direct logit attribution for every logit path of `expansion`: `[paths × targets]`, the
/// contribution of each path to the logit of each target (position, token), e.g. of the next
/// token at every position ([`Target::Next`]). Over all paths (of every order) a column sums to
/// the forward pass's logit ([`Targets::forward_logits`]).
///
/// Fast because nothing vocabulary-wide is computed: only the target columns of `W_U'` are
/// gathered and folded, each path's residual prefix is computed once for all the paths that
/// extend it (paths are visited in enumeration order through a prefix stack), and a path's last
/// head is applied as `A · (N·X·W_V') · (W_O·U)` with `d_head`-sized intermediates, never through
/// `[n, d_vocab]` or `[d_model, d_model]` products. At GPT-2 width this is the cost of about one
/// forward pass for all 549 paths of order ≤ 2 of a 2-layer model (README, Performance), where
/// the full logit rows are hundreds of forward passes.
///
/// ```
/// use pathc::eval::{self, Target, Targets};
///
/// let source = std::fs::read_to_string("examples/attn2.tf").unwrap();
/// let compiled = pathc::compile(&source).unwrap();
/// let weights = std::path::Path::new("tests/fixtures/attn2/model.safetensors");
/// let params = pathc::load_params(&compiled, weights, &eval::NameMap::default()).unwrap();
/// let tokens = [5, 17, 42, 8, 5, 17];
/// let forward = eval::forward(&params, &tokens).unwrap();
/// let expansion = pathc::expand_compiled(compiled, &pathc::ExpandOptions::default()).unwrap();
///
/// // The next token's logit at positions 0..=4 (position 5, the last, has no next token).
/// let targets = Targets::resolve(Target::Next, &tokens, params.d_vocab(), None).unwrap();
/// assert_eq!(targets.tokens, [17, 42, 8, 5, 17]);
/// let dla = eval::target_logits(&expansion, &params, &forward, &targets).unwrap();
/// assert_eq!(dla.values.shape(), (50, 5)); // [paths × positions]
/// let row = dla.names.iter().position(|n| n == "E/L0H1/L1H2").unwrap();
/// println!("L0H1 → L1H2 adds {:.4} to the logit of token 42 at position 1", dla.values[(row, 1)]);
/// for (j, logit) in targets.forward_logits(&forward).iter().enumerate() {
///     assert!((dla.values.column(j).sum() - logit).abs() < 1e-9); // the 50 paths sum to it
/// }
/// ```
pub fn target_logits(
    expansion: &crate::Expansion,
    params: &Params,
    forward: &Forward,
    targets: &Targets,
) -> Result<TargetLogits, NonFinite> {
    let mut evaluator = TargetEvaluator::new(params, forward, targets);
    let (mut names, mut orders, mut data) = (Vec::new(), Vec::new(), Vec::new());
    crate::paths::for_each_path(&expansion.logits, &expansion.heads_per_layer(), None, |p| {
        names.push(p.name());
        orders.push(p.template.order());
        data.extend(evaluator.contributions(&p));
    });
    let values = Matrix::from_row_slice(names.len(), targets.len(), &data);
    finite(&values, |i, j| targets.describe(&names[i], j))?;
    Ok(TargetLogits { names, orders, values })
}
