//! The e-graph language of evaluation plans, the shape analysis every e-class carries, and the
//! rule table.
//!
//! A plan term is a statistic of one head (or of one pair of heads) written over symbolic
//! weight matrices: `(copying (* (* (* W_E W_V[h]) W_O[h]) W_U))` is the OV copying score of "a
//! head h". Every head instantiates the same term, so one e-graph plans all of them; what differs
//! between the terms' sub-products is *how many instances* each has, which the analysis records
//! as the head indices a class depends on ([`Deps`]): `W_U W_E` depends on none (computed once),
//! `W_O[h] (W_U W_E)` on `h` (once per head), `W_O[h] W_Q[r]` on both (once per composing pair).

use egg::{define_language, rewrite as rw, Analysis, DidMerge, EGraph, Id, Rewrite, Symbol};

define_language! {
    /// Matrices and the scalars computed from them (row-vector convention, `x · W`).
    pub enum Plan {
        // Matrix product.
        "*" = Mul([Id; 2]),
        "T" = Transpose(Id),
        "tr" = Trace(Id),
        // ⟨X, Y⟩ = Σ_ij X_ij Y_ij = tr(Xᵀ Y), of two matrices of the same shape.
        "dot" = Dot([Id; 2]),
        "sqrt" = Sqrt(Id),
        // Σ Re λ / Σ |λ| over the eigenvalues of a square matrix (0 if all are 0).
        "copying" = Copying(Id),
        // The Frobenius norm.
        "fro" = Frobenius(Id),
        // A square root `R` of a symmetric positive semi-definite `G` (a Gram matrix): `Rᵀ R = G`,
        // `R` upper triangular (Cholesky) where `G` is definite.
        "root" = GramRoot(Id),
        Weight(Symbol),
    }
}

/// Which head indices a class depends on: `h` (the head, or the left head of a composition
/// score) and `r` (the right head). A class with more indices has more instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Deps(u8);

impl Deps {
    pub const NONE: Deps = Deps(0);
    pub const HEAD: Deps = Deps(1);
    pub const RIGHT: Deps = Deps(2);
    pub const PAIR: Deps = Deps(3);

    pub fn union(self, other: Deps) -> Deps {
        Deps(self.0 | other.0)
    }

    pub fn label(self) -> &'static str {
        match self.0 {
            0 => "once",
            1 => "per head",
            2 => "per head (right)",
            _ => "per pair",
        }
    }
}

/// The dimensions a plan is made for: `W_E` is `d_vocab × d_model`, `W_U` `d_model ×
/// d_vocab_out` (`d_vocab_out = d_vocab` unless the model declares another output vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub d_vocab: usize,
    pub d_vocab_out: usize,
    pub d_model: usize,
    pub d_head: usize,
}

impl Dims {
    /// Whether the full OV circuit `W_E W_V W_O W_U` (`d_vocab × d_vocab_out`) is square, so that
    /// it has eigenvalues.
    pub fn ov_square(&self) -> bool {
        self.d_vocab == self.d_vocab_out
    }
}

/// What every e-class knows: its shape, an upper bound on its rank, and its head indices.
/// Scalars are 1 × 1 with `scalar` set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub rows: usize,
    pub cols: usize,
    pub rank: usize,
    pub deps: Deps,
    pub scalar: bool,
}

impl Shape {
    fn matrix(rows: usize, cols: usize, deps: Deps) -> Shape {
        Shape { rows, cols, rank: rows.min(cols), deps, scalar: false }
    }

    fn scalar(deps: Deps) -> Shape {
        Shape { rows: 1, cols: 1, rank: 1, deps, scalar: true }
    }

    /// Entries of the matrix (1 for a scalar).
    /// `rows × cols`, saturating (sizes may be as large as the model file writes them).
    pub fn entries(&self) -> usize {
        self.rows.saturating_mul(self.cols)
    }

    /// `rows × cols` as a float, exact to 53 bits: what FLOP and memory estimates use.
    pub fn size(&self) -> f64 {
        self.rows as f64 * self.cols as f64
    }
}

/// The weight symbols: `W_E`, `W_U`, and a head's `W_Q`, `W_K`, `W_V`, `W_O` indexed `[h]` or `[r]`.
pub fn weight_shape(name: &str, dims: Dims) -> Option<Shape> {
    let Dims { d_vocab, d_vocab_out, d_model, d_head } = dims;
    let (matrix, index) = match name.split_once('[') {
        Some((matrix, index)) => (matrix, Some(index.strip_suffix(']')?)),
        None => (name, None),
    };
    let deps = match index {
        None => Deps::NONE,
        Some("h") => Deps::HEAD,
        Some("r") => Deps::RIGHT,
        Some(_) => return None,
    };
    let (rows, cols) = match (matrix, index) {
        ("W_E", None) => (d_vocab, d_model),
        ("W_U", None) => (d_model, d_vocab_out),
        ("W_Q" | "W_K" | "W_V", Some(_)) => (d_model, d_head),
        ("W_O", Some(_)) => (d_head, d_model),
        _ => return None,
    };
    Some(Shape::matrix(rows, cols, deps))
}

/// The shape analysis. Every rule keeps a term's shape, so merged classes agree; the rank bound
/// is the smaller of the two.
#[derive(Debug, Clone)]
pub struct ShapeAnalysis {
    pub dims: Dims,
}

impl Analysis<Plan> for ShapeAnalysis {
    type Data = Shape;

    fn make(egraph: &mut EGraph<Plan, Self>, enode: &Plan, _id: Id) -> Shape {
        let shape = |id: &Id| egraph[*id].data;
        match enode {
            Plan::Weight(name) => weight_shape(name.as_str(), egraph.analysis.dims)
                .unwrap_or_else(|| panic!("plan terms use only known weights, not `{name}`")),
            Plan::Mul([a, b]) => {
                let (a, b) = (shape(a), shape(b));
                debug_assert_eq!(a.cols, b.rows, "a product of mismatched shapes");
                Shape { rank: a.rank.min(b.rank), ..Shape::matrix(a.rows, b.cols, a.deps.union(b.deps)) }
            }
            Plan::Transpose(a) => {
                let a = shape(a);
                Shape { rows: a.cols, cols: a.rows, ..a }
            }
            Plan::Trace(a) | Plan::Sqrt(a) | Plan::Copying(a) | Plan::Frobenius(a) => Shape::scalar(shape(a).deps),
            Plan::GramRoot(a) => shape(a),
            Plan::Dot([a, b]) => Shape::scalar(shape(a).deps.union(shape(b).deps)),
        }
    }

    fn merge(&mut self, to: &mut Shape, from: Shape) -> DidMerge {
        debug_assert_eq!((to.rows, to.cols, to.scalar), (from.rows, from.cols, from.scalar), "merged shapes differ");
        if from.rank < to.rank {
            to.rank = from.rank;
            DidMerge(true, false)
        } else {
            DidMerge(false, from.rank > to.rank)
        }
    }
}

pub type Rule = Rewrite<Plan, ShapeAnalysis>;

/// The rule table, one named rule a line. Each is an identity of the statistic it rewrites:
/// products re-associate and transpose anywhere; a cyclic rotation only directly under an
/// eigenvalue computation (`copying`: the nonzero eigenvalues of `AB` and `BA` agree, and zero
/// eigenvalues change neither sum) or a trace. There is deliberately no rotation under `fro`:
/// `‖AB‖_F ≠ ‖BA‖_F` in general; a norm reaches a trace only through `fro-gram`.
///
/// `gram-root` factors a per-head Gram matrix `xᵀ x` (x taller than wide, so the Gram is the
/// smaller) as `Rᵀ R` with `R = root(xᵀ x)`; `gram-root-outer` does the same for `x xᵀ`. With
/// the rotations, `⟨A, G₁ A G₂⟩ = ‖R₁ A R₂ᵀ‖²`: a composition score's trace becomes the
/// squared norm of one product of per-head factors, with no d_head³ product per pair. The
/// condition keeps the rule off the vocabulary-sized Grams (head-independent, streamed) and off
/// a square `x` (`Rᵀ R` itself), where it would only repeat.
pub fn rules() -> &'static [Rule] {
    static RULES: std::sync::OnceLock<Vec<Rule>> = std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        vec![
            rw!("assoc-left"; "(* ?a (* ?b ?c))" => "(* (* ?a ?b) ?c)"),
            rw!("assoc-right"; "(* (* ?a ?b) ?c)" => "(* ?a (* ?b ?c))"),
            rw!("transpose-product"; "(T (* ?a ?b))" => "(* (T ?b) (T ?a))"),
            rw!("transpose-transpose"; "(T (T ?a))" => "?a"),
            rw!("eigen-rotate"; "(copying (* ?a ?b))" => "(copying (* ?b ?a))"),
            rw!("trace-rotate"; "(tr (* ?a ?b))" => "(tr (* ?b ?a))"),
            rw!("trace-dot"; "(tr (* ?a ?b))" => "(dot (T ?a) ?b)"),
            rw!("dot-commute"; "(dot ?a ?b)" => "(dot ?b ?a)"),
            rw!("fro-gram"; "(fro ?a)" => "(sqrt (tr (* (T ?a) ?a)))"),
            rw!("gram-root"; "(* (T ?x) ?x)" => "(* (T (root (* (T ?x) ?x))) (root (* (T ?x) ?x)))" if tall_per_head("?x")),
            rw!("gram-root-outer"; "(* ?x (T ?x))" => "(* (T (root (* ?x (T ?x)))) (root (* ?x (T ?x))))" if wide_per_head("?x")),
        ]
    })
}

/// `?x` depends on a head and has more rows than columns: its Gram `xᵀ x` is smaller than it.
fn tall_per_head(var: &str) -> impl Fn(&mut EGraph<Plan, ShapeAnalysis>, Id, &egg::Subst) -> bool {
    let var: egg::Var = var.parse().expect("a pattern variable");
    move |egraph, _, subst| {
        let shape = egraph[subst[var]].data;
        shape.deps != Deps::NONE && !shape.scalar && shape.rows > shape.cols
    }
}

/// `?x` depends on a head and has more columns than rows: its Gram `x xᵀ` is smaller than it.
fn wide_per_head(var: &str) -> impl Fn(&mut EGraph<Plan, ShapeAnalysis>, Id, &egg::Subst) -> bool {
    let var: egg::Var = var.parse().expect("a pattern variable");
    move |egraph, _, subst| {
        let shape = egraph[subst[var]].data;
        shape.deps != Deps::NONE && !shape.scalar && shape.cols > shape.rows
    }
}
