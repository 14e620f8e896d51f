//! The rule table: one named rule a line. Every rule is an identity of the tensor-product
//! algebra, so rewriting never changes the tensor a term denotes (head sums are implicit in the
//! indices, see `lang.rs`).

use egg::{rewrite as rw, Applier, EGraph, Id, Pattern, PatternAst, Rewrite, Subst, Symbol, Var};

use super::lang::{Tensor, TensorAnalysis};

pub type Rule = Rewrite<Tensor, TensorAnalysis>;
type Graph = EGraph<Tensor, TensorAnalysis>;

/// The rule table, built once: parsing and compiling the patterns costs as much as a small
/// saturation run.
pub fn rules() -> &'static [Rule] {
    static RULES: std::sync::OnceLock<Vec<Rule>> = std::sync::OnceLock::new();
    RULES.get_or_init(table)
}

fn table() -> Vec<Rule> {
    vec![
        // The tensor-product algebra.
        rw!("mixed-product"; "(* (kron ?a ?b) (kron ?c ?d))" => "(kron (* ?a ?c) (* ?b ?d))"),
        rw!("distribute-left"; "(* ?a (+ ?b ?c))" => "(+ (* ?a ?b) (* ?a ?c))"),
        rw!("identity-left"; "(* I ?a)" => "?a"),
        rw!("identity-right"; "(* ?a I)" => "?a"),
        rw!("zero-add-right"; "(+ ?a 0)" => "?a"),
        // A head's weights.
        rw!("ov-fuse"; "(* (O ?i) (V ?i))" => "(OV ?i)"),
        rw!("qk-fuse"; "(* (T (Q ?i)) (* (K ?i) ?r))" => "(* (QK ?i) ?r)"),
        rw!("qk-fuse-rotary"; "(* (T (Q ?i)) (* (R ?l) (* (K ?i) ?r)))" => "(* (QKR ?i) ?r)"),
        // Truncation by order, inside the algebra: the analysis bounds every class's orders;
        // a bilinear form whose query side has a fixed order d keeps only the key terms of order
        // ≤ k - d, so high orders are never built. (The logit side is truncated layer by layer
        // in graded form, see `build.rs`.)
        rw!("trunc-add"; "(trunc ?k (+ ?a ?b))" => "(+ (trunc ?k ?a) (trunc ?k ?b))"),
        rw!("trunc-keep"; "(trunc ?k ?a)" => "?a" if max_order_within("?a", "?k")),
        rw!("trunc-bilin"; "(trunc ?k (bilin ?a ?w ?b))" => { TruncRest::new("(bilin ?a ?w (trunc ?k ?b))", "?a") }),
        // The QK side: the bilinear form of an attention score over two expansions.
        rw!("bilin-split-query"; "(bilin (+ ?a ?b) ?w ?c)" => "(+ (bilin ?a ?w ?c) (bilin ?b ?w ?c))"),
        rw!("bilin-split-key"; "(bilin ?a ?w (+ ?b ?c))" => "(+ (bilin ?a ?w ?b) (bilin ?a ?w ?c))"),
        rw!("bilin-mixed"; "(bilin (kron ?p ?m) (kron I ?w) (kron ?q ?n))" => "(kron (kron ?p ?q) (tmul ?m (* ?w ?n)))"),
        // Transposition of products: (a·b)ᵀ·r = bᵀ·(aᵀ·r).
        rw!("transpose-product"; "(tmul (* ?a ?b) ?r)" => "(tmul ?b (* (T ?a) ?r))"),
        rw!("transpose-atom"; "(tmul ?a ?r)" => "(* (T ?a) ?r)" if is_atom("?a")),
        // Without it, a class that holds `(* I x)` (an identity multiplied away) feeds
        // `transpose-product` a new `(* (T I) r)` on every iteration.
        rw!("transpose-identity"; "(T I)" => "I"),
    ]
}

fn var(name: &str) -> Var {
    name.parse().expect("rule variables are well formed")
}

/// Every term of `term` has order at most `k`.
fn max_order_within(term: &str, k: &str) -> impl Fn(&mut Graph, Id, &Subst) -> bool {
    let (term, k) = (var(term), var(k));
    move |egraph, _, subst| match (egraph[subst[term]].data.order, egraph[subst[k]].data.num) {
        (Some((_, hi)), Some(k)) => hi <= k,
        _ => false,
    }
}

fn is_atom(term: &str) -> impl Fn(&mut Graph, Id, &Subst) -> bool {
    let term = var(term);
    move |egraph, _, subst| egraph[subst[term]].data.atom
}

/// Applies `target` with `?k` lowered by the order of `fixed`, when `fixed` has one order.
struct TruncRest {
    target: Pattern<Tensor>,
    fixed: Var,
}

impl TruncRest {
    fn new(target: &str, fixed: &str) -> TruncRest {
        TruncRest { target: target.parse().expect("rule patterns are well formed"), fixed: var(fixed) }
    }
}

impl Applier<Tensor, TensorAnalysis> for TruncRest {
    fn apply_one(
        &self,
        egraph: &mut Graph,
        eclass: Id,
        subst: &Subst,
        searcher_ast: Option<&PatternAst<Tensor>>,
        rule_name: Symbol,
    ) -> Vec<Id> {
        let k = var("?k");
        let (Some((lo, hi)), Some(k_value)) = (egraph[subst[self.fixed]].data.order, egraph[subst[k]].data.num) else {
            return vec![];
        };
        // Only a factor of one fixed order d lowers the bound, and only while k - d ≥ 0: below
        // that the analysis already knows the truncation is zero (and lowering again and again
        // through the zero class would never end).
        if lo != hi || k_value < lo || egraph[eclass].data.order.is_none() {
            return vec![];
        }
        let mut lowered = subst.clone();
        lowered.insert(k, egraph.add(Tensor::Num(k_value - lo)));
        self.target.apply_one(egraph, eclass, &lowered, searcher_ast, rule_name)
    }
}
