//! An attention score's expansion as the product of two expansions, formed outside equality
//! saturation.
//!
//! A layer's score is the bilinear form `trunc_K(qᵀ·F·k)`: `q = (Id⊗W_Q)(N⊗Id)x_q (+ Id⊗b_Q)`
//! and `k` alike (shortformer adds `Id⊗W_P` to what the weights read), `F` the identity or, in a
//! rotary layer, `Id⊗R_Δ`. Each side is expanded by saturation on its own (as an MLP's input
//! is), into monomials `p ⊗ m`. The form is bilinear, so the score is the sum over pairs of them,
//! `(p ⊗ m, p' ⊗ m')` with `order(p) + order(p') ≤ K`, of `(p ⊗ p') ⊗ mᵀ·F·m'`: `mᵀ` is `m`'s
//! factors reversed and transposed, and where `W_Qᵀ` meets `W_K` (with `R_Δ` between them in a
//! rotary layer) they fuse into `W_QK` (`W_QK(Δ)`), as the paper writes the score. Pairing the
//! monomials inside the e-graph instead built every pair's terms as e-nodes: 39 s for GPT-2
//! small's 22k score templates at order 1, against milliseconds here.
//!
//! Invariant: the templates are those of the bilinear form expanded by the tensor-product
//! algebra, one per pair within the truncation; `paths::sort_score_templates` orders them.

use crate::paths::{Factor, FactorKind, Template};

/// Every (query term, key term) pair of one layer's score within `max_order`: `rotary` is the
/// layer's number when its scores rotate (`R_Δ` between the sides), `None` otherwise.
pub fn pair(query: &[Template], key: &[Template], rotary: Option<usize>, max_order: Option<u32>) -> Vec<Template> {
    let key_orders: Vec<usize> = key.iter().map(Template::order).collect();
    let budget = max_order.map(|k| k as usize);
    let mut out = Vec::new();
    for q in query {
        let q_order = q.order();
        if budget.is_some_and(|k| q_order > k) {
            continue;
        }
        let transposed: Vec<Factor> = q.weights.iter().rev().map(|f| f.transposed()).collect();
        for (k, &k_order) in key.iter().zip(&key_orders) {
            if budget.is_some_and(|budget| q_order + k_order > budget) {
                continue;
            }
            out.push(pair_one(q, &transposed, k, rotary));
        }
    }
    out
}

/// The template of `qᵀ·F·k`, `transposed` being `q.weights` reversed and transposed.
fn pair_one(q: &Template, transposed: &[Factor], k: &Template, rotary: Option<usize>) -> Template {
    let mut weights = Vec::with_capacity(transposed.len() + k.weights.len() + 1);
    weights.extend_from_slice(transposed);
    let fused = match (weights.last(), k.weights.first()) {
        (Some(&wq), Some(&wk))
            if is_wq_transposed(wq) && wk.kind == FactorKind::K && !wk.transposed && wq.index == wk.index =>
        {
            let index = wq.index.expect("W_Q is indexed");
            weights.pop();
            weights.push(Factor::indexed(if rotary.is_some() { FactorKind::QKRot } else { FactorKind::QK }, index));
            true
        }
        _ => false,
    };
    if !fused {
        if let Some(layer) = rotary {
            weights.push(Factor::plain(FactorKind::Rot(layer)));
        }
    }
    weights.extend_from_slice(if fused { &k.weights[1..] } else { &k.weights });
    let mut binders: Vec<_> = q.binders.iter().chain(&k.binders).copied().collect();
    binders.sort();
    binders.dedup();
    let side = |t: &Template| t.position.first().cloned().unwrap_or_default();
    Template { binders, position: vec![side(q), side(k)], weights }
}

fn is_wq_transposed(f: Factor) -> bool {
    f.kind == FactorKind::Q && f.transposed
}
