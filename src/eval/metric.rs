//! Metrics: linear functions of the logits (a logit, a logit difference, the next token's logit
//! averaged over positions) and of one head's attention scores (a score difference between two
//! keys), and each path's — or score term's — exact contribution to them.
//!
//! A logit metric is `Σ_j w_j · logit[p_j, t_j]`: `logit[T] − logit[U]` at one position is two
//! terms with weights `+1` and `−1`; the next token's logit over `m` positions is `m` terms of
//! weight `1/m`. Since every path's logits are linear in nothing but the frozen patterns and
//! scales, a path's contribution is the same weighted sum of its target contributions
//! ([`TargetEvaluator`]), and the contributions of all paths (of every order) sum to the metric.
//! Log-probabilities and the loss are not linear in the logits and are not offered.
//!
//! A score difference `s[q, K] − s[q, K']` of one head is linear in its score terms in the same
//! way. Its effect on the attention *probability* is not: [`ScoreDifference`] also gives each
//! term's first-order effect on `p[q, K]` (the softmax's Jacobian at the recorded scores applied
//! to the term's scores, `p_K (t_K − Σ_j p_j t_j)`), a linearisation, beside the exact change of
//! `p[q, K]` when the term is removed from the scores (`p_K(s) − p_K(s − t)`).

use std::borrow::Cow;

use super::paths::FoldedValues;
use super::{EvalError, Forward, Params, ScoreEvaluator, Target, TargetEvaluator, Targets};
use crate::linalg::NonFinite;
use crate::paths::{self, HeadRef, IndexVar, Path, Side};

/// A linear function of the logits, `Σ_j weights[j] · logit[targets.positions[j], targets.tokens[j]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub targets: Targets,
    pub weights: Vec<f64>,
}

impl Metric {
    /// The logit of `target` at `position` — with `None`, the mean over every position it
    /// resolves to ([`Targets::for_params`]: all, or all but the last for [`Target::Next`]) —
    /// minus, with `against`, the logit of `against` taken the same way.
    pub fn new(
        target: Target,
        against: Option<Target>,
        tokens: &[usize],
        params: &Params,
        position: Option<usize>,
    ) -> Result<Metric, EvalError> {
        let plus = Targets::for_params(target, tokens, params, position)?;
        let minus = against.map(|a| Targets::for_params(a, tokens, params, position)).transpose()?;
        let mut weights = vec![1.0 / plus.len() as f64; plus.len()];
        let mut targets = plus;
        if let Some(minus) = minus {
            weights.extend(std::iter::repeat_n(-1.0 / minus.len() as f64, minus.len()));
            targets.positions.extend(minus.positions);
            targets.tokens.extend(minus.tokens);
        }
        Ok(Metric { targets, weights })
    }

    /// The metric of a forward pass: what the contributions of all paths sum to.
    pub fn value(&self, forward: &Forward) -> f64 {
        let logits = self.targets.forward_logits(forward);
        logits.iter().zip(&self.weights).map(|(l, w)| l * w).sum()
    }

    /// [`Metric::value`] of any forward pass, one without its logits too
    /// ([`forward_without_logits`](super::forward_without_logits)): each target logit by
    /// [`Forward::logit`].
    pub fn value_in(&self, params: &Params, forward: &Forward) -> f64 {
        let targets = self.targets.positions.iter().zip(&self.targets.tokens);
        targets.zip(&self.weights).map(|((&p, &t), w)| forward.logit(params, p, t) * w).sum()
    }
}

/// Evaluates every logit path's contribution to a [`Metric`], prompt after prompt, with what does
/// not depend on the prompt (the value weights with `ln1` folded in) computed once. It is `Sync`:
/// one evaluator serves every worker thread.
pub struct MetricEvaluator<'a> {
    params: &'a Params,
    values: Vec<FoldedValues>,
}

impl<'a> MetricEvaluator<'a> {
    pub fn new(params: &'a Params) -> MetricEvaluator<'a> {
        MetricEvaluator { params, values: FoldedValues::of(params) }
    }

    /// Each logit path's contribution to `metric` on `forward`'s tokens, in path order (`visit`
    /// gets the path's index and its contribution). Fails on a non-finite contribution, naming
    /// the path.
    pub fn contributions(
        &self,
        expansion: &crate::Expansion,
        forward: &Forward,
        metric: &Metric,
        mut visit: impl FnMut(usize, f64),
    ) -> Result<(), NonFinite> {
        let mut evaluator = TargetEvaluator::with_values(self.params, &self.values, forward, &metric.targets);
        let mut index = 0;
        let mut bad = None;
        paths::for_each_path(&expansion.logits, &expansion.heads_per_layer(), None, |p| {
            let parts = evaluator.contributions(&p);
            let value: f64 = parts.iter().zip(&metric.weights).map(|(c, w)| c * w).sum();
            if !value.is_finite() && bad.is_none() {
                bad = Some(NonFinite { at: format!("the contribution of {} to the metric", p.name()), value });
            }
            visit(index, value);
            index += 1;
        });
        bad.map_or(Ok(()), Err)
    }
}

/// One head's score difference `s[query, key] − s[query, against_key]` (scores before the
/// softmax, divided by the attention scale), and the attention probability `p[query, key]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreDifference {
    pub layer: usize,
    pub head: usize,
    pub query: usize,
    pub key: usize,
    pub against_key: usize,
}

/// Why a [`ScoreDifference`] cannot be taken on a prompt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScoreDifferenceError {
    #[error("the {what} position {position} is out of range for {n_tokens} tokens")]
    OutOfRange { what: &'static str, position: usize, n_tokens: usize },
    #[error("the key position {key} comes after the query position {query}: a causal head never attends to it")]
    AfterQuery { key: usize, query: usize },
    #[error("the key and the key it is compared against are the same position {0}: the difference is 0 by definition")]
    SameKey(usize),
}

impl ScoreDifference {
    /// Checks the positions against `n_tokens` (and the causal mask of the head's layer).
    pub fn check(&self, n_tokens: usize, causal: bool) -> Result<(), ScoreDifferenceError> {
        for (what, position) in [("query", self.query), ("key", self.key), ("against-key", self.against_key)] {
            if position >= n_tokens {
                return Err(ScoreDifferenceError::OutOfRange { what, position, n_tokens });
            }
        }
        for key in [self.key, self.against_key] {
            if causal && key > self.query {
                return Err(ScoreDifferenceError::AfterQuery { key, query: self.query });
            }
        }
        if self.key == self.against_key {
            return Err(ScoreDifferenceError::SameKey(self.key));
        }
        Ok(())
    }
}

/// One score term's part in a [`ScoreDifference`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TermEffect {
    /// Its contribution to `s[q, K] − s[q, K']`: exact, the terms sum to the difference.
    pub difference: f64,
    /// The first-order change of `p[q, K]` it makes (the softmax's Jacobian at the recorded
    /// scores times the term's scores): a linearisation.
    pub prob_linear: f64,
    /// The real change of `p[q, K]` it makes: `p_K(s) − p_K(s − t)`, the pattern with the term
    /// removed from the scores recomputed by the softmax.
    pub prob_removed: f64,
}

/// A [`ScoreDifference`] on one prompt: the forward pass's numbers and each term's effect.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreAttribution {
    /// `s[q, K] − s[q, K']` of the forward pass.
    pub difference: f64,
    /// `p[q, K]` and `p[q, K']` of the forward pass.
    pub prob_key: f64,
    pub prob_against_key: f64,
    /// Every score term of the head, in path order.
    pub terms: Vec<TermEffect>,
}

/// The parameters score terms are evaluated with ([`ScoreEvaluator`]: every norm folded), made
/// once and shared by every prompt.
pub fn score_params(params: &Params) -> Cow<'_, Params> {
    super::paths::folded(params)
}

/// Each score term's part in `difference` on `forward`'s tokens (see [`TermEffect`]). `folded`
/// is [`score_params`] of the parameters `forward` ran with; the positions must have passed
/// [`ScoreDifference::check`].
pub fn score_attribution(
    expansion: &crate::Expansion,
    folded: &Params,
    forward: &Forward,
    difference: ScoreDifference,
) -> Result<ScoreAttribution, NonFinite> {
    let ScoreDifference { layer, head, query: q, key, against_key } = difference;
    let templates = &expansion.scores.as_ref().expect("expanded with qk")[layer];
    let causal = folded.layers[layer].attn.causal;
    let n = forward.tokens.len();
    let keys: Vec<usize> = super::forward::attended(q, n, causal, forward.attention_mask.as_deref()).collect();
    let scores = &forward.scores[layer][head];
    let pattern = &forward.patterns[layer][head];
    let p: Vec<f64> = keys.iter().map(|&j| pattern[(q, j)]).collect();
    let at_key = keys.iter().position(|&j| j == key).expect("the key is attended (checked)");
    let s: Vec<f64> = keys.iter().map(|&j| scores[(q, j)]).collect();
    let mut evaluator = ScoreEvaluator::prefolded(folded, forward);
    let fixed = (IndexVar { side: Side::Head, layer }, head);
    let target = HeadRef { layer, head };
    let mut terms = Vec::new();
    let mut bad: Option<NonFinite> = None;
    paths::for_each_path(templates, &expansion.heads_per_layer(), Some(fixed), |path: Path<'_>| {
        let t_all = evaluator.scores(&path, layer, head);
        let t: Vec<f64> = keys.iter().map(|&j| t_all[(q, j)]).collect();
        let mean: f64 = p.iter().zip(&t).map(|(p, t)| p * t).sum();
        let prob_linear = p[at_key] * (t[at_key] - mean);
        let removed: Vec<f64> = s.iter().zip(&t).map(|(s, t)| s - t).collect();
        let prob_removed = p[at_key] - softmax_at(&removed, at_key);
        let effect = TermEffect { difference: t_all[(q, key)] - t_all[(q, against_key)], prob_linear, prob_removed };
        if bad.is_none() {
            for (what, value) in [
                ("score difference", effect.difference),
                ("first-order probability", effect.prob_linear),
                ("probability when removed", effect.prob_removed),
            ] {
                if !value.is_finite() {
                    bad = Some(NonFinite {
                        at: format!("the {what} of the score term {}", path.score_name(target)),
                        value,
                    });
                    break;
                }
            }
        }
        terms.push(effect);
    });
    if let Some(e) = bad {
        return Err(e);
    }
    Ok(ScoreAttribution {
        difference: scores[(q, key)] - scores[(q, against_key)],
        prob_key: pattern[(q, key)],
        prob_against_key: pattern[(q, against_key)],
        terms,
    })
}

/// `softmax(s)[i]`, shifted by the maximum as the forward pass's softmax is.
fn softmax_at(s: &[f64], i: usize) -> f64 {
    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = s.iter().map(|x| (x - max).exp()).sum();
    (s[i] - max).exp() / total
}
