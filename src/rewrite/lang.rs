//! The e-graph language of the tensor-product algebra, and the analysis every e-class carries.
//!
//! **Head sums are implicit in the indices.** A layer's heads enter as one term with a symbolic
//! index, `A^{h1} ⊗ W_O^{h1}·W_V^{h1}`, meaning `Σ_{h1∈H1}` of it — the summation convention,
//! applied per monomial: a monomial stands for the sum over every head index it contains. This is
//! sound here because an index names its layer (and side), so it is introduced by exactly one
//! factor of the product: distributing copies it into each new monomial, the mixed product keeps
//! it, and no rule merges monomials with different indices. It is what lets the e-graph hold one
//! term per choice of layers and never one per head, without binders to move around.

use egg::{define_language, Analysis, DidMerge, EGraph, Id};

pub use crate::graph::NormSite;
pub use crate::paths::{IndexVar, Side};

define_language! {
    /// Terms over (positions) ⊗ (residual space), matrices acting on column vectors.
    pub enum Tensor {
        "+" = Add([Id; 2]),
        // Composition (matrix product), applied right to left.
        "*" = Mul([Id; 2]),
        // Tensor product: position side ⊗ residual side.
        "kron" = Kron([Id; 2]),
        // `(trunc k x)`: the terms of x of order at most k.
        "trunc" = Trunc([Id; 2]),
        // Attention pattern of the head `i` (a symbolic head index: summed over, see above).
        "A" = Pattern(Id),
        // The frozen LayerNorm scale diag(1/σ) at a site (position side).
        "N" = Scale(Id),
        "O" = WO(Id),
        "V" = WV(Id),
        "OV" = WOV(Id),
        "Q" = WQ(Id),
        "K" = WK(Id),
        // A layer's MLP: its input weight, and its output as an opaque source.
        "W_in" = WIn(Id),
        "W_gate" = WGate(Id),
        "M" = MlpOut(Id),
        // Bias vectors: of a head (indexed) or of a layer (numbered); `b_U` of the logits.
        "b_V" = BiasV(Id),
        "b_Q" = BiasQ(Id),
        "b_K" = BiasK(Id),
        "b_O" = BiasO(Id),
        "b_in" = BiasIn(Id),
        "b_gate" = BiasGate(Id),
        "b_out" = BiasOut(Id),
        "b_U" = BiasU,
        "W_E" = Embed,
        "W_P" = PosEmbed,
        "W_U" = Unembed,
        "I" = Identity,
        "0" = Zero,
        Num(i64),
        Index(IndexVar),
        Site(NormSite),
    }
}

/// What every e-class knows about the terms it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Bounds `(min, max)` on the order (number of attention patterns) of the class's terms;
    /// `None` when the class is the zero tensor. Truncation by order is decided on these.
    pub order: Option<(i64, i64)>,
    /// The value of a `Num` leaf.
    pub num: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct TensorAnalysis;

fn hull(a: Option<(i64, i64)>, b: Option<(i64, i64)>) -> Option<(i64, i64)> {
    match (a, b) {
        (Some((a0, a1)), Some((b0, b1))) => Some((a0.min(b0), a1.max(b1))),
        (x, None) | (None, x) => x,
    }
}

fn product(parts: &[Option<(i64, i64)>]) -> Option<(i64, i64)> {
    parts.iter().try_fold((0, 0), |(lo, hi), p| p.map(|(a, b)| (lo + a, hi + b)))
}

impl Analysis<Tensor> for TensorAnalysis {
    type Data = Facts;

    fn make(egraph: &mut EGraph<Tensor, Self>, enode: &Tensor, _id: Id) -> Facts {
        let facts = |id: &Id| &egraph[*id].data;
        let order = |id: &Id| facts(id).order;
        let mut num = None;
        let order = match enode {
            Tensor::Add([a, b]) => hull(order(a), order(b)),
            Tensor::Mul([a, b]) | Tensor::Kron([a, b]) => product(&[order(a), order(b)]),
            Tensor::Trunc([k, body]) => {
                let k = facts(k).num.unwrap_or(i64::MAX);
                match order(body) {
                    Some((lo, hi)) if lo <= k => Some((lo, hi.min(k))),
                    _ => None,
                }
            }
            Tensor::Pattern(_) => Some((1, 1)),
            Tensor::WO(_)
            | Tensor::WV(_)
            | Tensor::WOV(_)
            | Tensor::WQ(_)
            | Tensor::WK(_)
            | Tensor::Scale(_)
            | Tensor::WIn(_)
            | Tensor::WGate(_)
            | Tensor::BiasGate(_)
            | Tensor::MlpOut(_)
            | Tensor::BiasV(_)
            | Tensor::BiasQ(_)
            | Tensor::BiasK(_)
            | Tensor::BiasO(_)
            | Tensor::BiasIn(_)
            | Tensor::BiasOut(_) => Some((0, 0)),
            Tensor::Embed | Tensor::PosEmbed | Tensor::Unembed | Tensor::BiasU | Tensor::Identity => Some((0, 0)),
            Tensor::Zero => None,
            Tensor::Num(n) => {
                num = Some(*n);
                Some((0, 0))
            }
            Tensor::Index(_) | Tensor::Site(_) => Some((0, 0)),
        };
        Facts { order, num }
    }

    fn merge(&mut self, to: &mut Facts, from: Facts) -> DidMerge {
        // Both describe the same tensor, so the tighter of two true facts is true.
        let order = match (to.order, from.order) {
            (Some((a0, a1)), Some((b0, b1))) if a0.max(b0) <= a1.min(b1) => Some((a0.max(b0), a1.min(b1))),
            _ => None,
        };
        let merged = Facts { order, num: to.num.or(from.num) };
        let changed_to = merged != *to;
        let changed_from = merged != from;
        *to = merged;
        DidMerge(changed_to, changed_from)
    }

    /// A class with no terms of any order is the zero tensor: this one hook is every zero law
    /// (`0·x = 0`, `0 ⊗ x = 0`, `Σ 0 = 0`, a truncation that drops everything, ...).
    fn modify(egraph: &mut EGraph<Tensor, Self>, id: Id) {
        if egraph[id].data.order.is_none() {
            let zero = egraph.add(Tensor::Zero);
            egraph.union(id, zero);
        }
    }
}
