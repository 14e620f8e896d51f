//! The rule table: one named rule a line. Every rule is an identity of the tensor-product
//! algebra, so rewriting never changes the tensor a term denotes (head sums are implicit in the
//! indices, see `lang.rs`).

use egg::{rewrite as rw, EGraph, Id, Rewrite, Subst, Var};

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
        // Truncation by order, inside the algebra: the analysis bounds every class's orders.
        // (The streams are truncated layer by layer in graded form, see `build.rs`; an
        // attention score's pairs within the order are formed outside the e-graph, `pair.rs`.)
        rw!("trunc-add"; "(trunc ?k (+ ?a ?b))" => "(+ (trunc ?k ?a) (trunc ?k ?b))"),
        rw!("trunc-keep"; "(trunc ?k ?a)" => "?a" if max_order_within("?a", "?k")),
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
