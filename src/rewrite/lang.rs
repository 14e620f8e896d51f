//! The e-graph language of the tensor-product algebra, and the analysis every e-class carries.

use egg::{define_language, Analysis, DidMerge, EGraph, Id};

pub use crate::paths::{IndexVar, Side};

define_language! {
    /// Terms over (positions) ⊗ (residual space), matrices acting on column vectors.
    pub enum Tensor {
        "+" = Add([Id; 2]),
        // Composition (matrix product), applied right to left.
        "*" = Mul([Id; 2]),
        // Tensor product: position side ⊗ residual side.
        "kron" = Kron([Id; 2]),
        "T" = Transpose(Id),
        // `(tmul m r)` = mᵀ·r, the transpose of a product folded onto what follows it, so that
        // transposing a chain never builds left-nested products.
        "tmul" = TMul([Id; 2]),
        // `(bilin x w y)`: the bilinear form xᵀ·w·y of an attention score, x and y expansions of
        // the residual stream on the query and key side.
        "bilin" = Bilin([Id; 3]),
        // `(sum i body)`: Σ over the heads of index `i`'s layer.
        "sum" = Sum([Id; 2]),
        // `(trunc k x)`: the terms of x of order at most k.
        "trunc" = Trunc([Id; 2]),
        // Attention pattern of the head `i`.
        "A" = Pattern(Id),
        "O" = WO(Id),
        "V" = WV(Id),
        "OV" = WOV(Id),
        "Q" = WQ(Id),
        "K" = WK(Id),
        "QK" = WQK(Id),
        "W_E" = Embed,
        "W_P" = PosEmbed,
        "W_U" = Unembed,
        "I" = Identity,
        "0" = Zero,
        Num(i64),
        Index(IndexVar),
    }
}

/// What every e-class knows about the terms it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Bounds `(min, max)` on the order (number of attention patterns) of the class's terms;
    /// `None` when the class is the zero tensor. Truncation by order is decided on these.
    pub order: Option<(i64, i64)>,
    /// Head indices occurring free; `sum` may move past a term only if its index is not free there.
    pub free: FreeIndices,
    /// The class is a single weight or pattern symbol (what `tmul-atom` may transpose).
    pub atom: bool,
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
        let mut free = FreeIndices::default();
        for child in egg::Language::children(enode) {
            free.union_with(&facts(child).free);
        }
        let mut atom = false;
        let mut num = None;
        let order = match enode {
            Tensor::Add([a, b]) => hull(order(a), order(b)),
            Tensor::Mul([a, b]) | Tensor::Kron([a, b]) | Tensor::TMul([a, b]) => product(&[order(a), order(b)]),
            Tensor::Bilin([x, w, y]) => product(&[order(x), order(w), order(y)]),
            Tensor::Transpose(a) => order(a),
            Tensor::Sum([index, body]) => {
                if let Some(Tensor::Index(var)) = egraph[*index].nodes.first() {
                    free.remove(var);
                }
                order(body)
            }
            Tensor::Trunc([k, body]) => {
                let k = facts(k).num.unwrap_or(i64::MAX);
                match order(body) {
                    Some((lo, hi)) if lo <= k => Some((lo, hi.min(k))),
                    _ => None,
                }
            }
            Tensor::Pattern(_) => {
                atom = true;
                Some((1, 1))
            }
            Tensor::WO(_) | Tensor::WV(_) | Tensor::WOV(_) | Tensor::WQ(_) | Tensor::WK(_) | Tensor::WQK(_) => {
                atom = true;
                Some((0, 0))
            }
            Tensor::Embed | Tensor::PosEmbed | Tensor::Unembed | Tensor::Identity => {
                atom = true;
                Some((0, 0))
            }
            Tensor::Zero => None,
            Tensor::Num(n) => {
                num = Some(*n);
                Some((0, 0))
            }
            Tensor::Index(var) => {
                free.insert(*var);
                Some((0, 0))
            }
        };
        Facts { order, free, atom, num }
    }

    fn merge(&mut self, to: &mut Facts, from: Facts) -> DidMerge {
        // Both describe the same tensor, so the tighter of two true facts is true.
        let order = match (to.order, from.order) {
            (Some((a0, a1)), Some((b0, b1))) if a0.max(b0) <= a1.min(b1) => Some((a0.max(b0), a1.min(b1))),
            _ => None,
        };
        let free = to.free.intersection(&from.free);
        let merged = Facts { order, free, atom: to.atom || from.atom, num: to.num.or(from.num) };
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

/// A small sorted set of index variables, stored inline: terms mention a handful of head indices,
/// and every e-node's analysis builds one, so a heap-allocated set would dominate the run time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreeIndices(smallvec::SmallVec<[IndexVar; 8]>);

impl FreeIndices {
    pub fn contains(&self, var: &IndexVar) -> bool {
        self.0.binary_search(var).is_ok()
    }

    pub fn insert(&mut self, var: IndexVar) {
        if let Err(at) = self.0.binary_search(&var) {
            self.0.insert(at, var);
        }
    }

    pub fn remove(&mut self, var: &IndexVar) {
        if let Ok(at) = self.0.binary_search(var) {
            self.0.remove(at);
        }
    }

    pub fn union_with(&mut self, other: &FreeIndices) {
        for var in &other.0 {
            self.insert(*var);
        }
    }

    pub fn intersection(&self, other: &FreeIndices) -> FreeIndices {
        FreeIndices(self.0.iter().copied().filter(|v| other.contains(v)).collect())
    }
}
