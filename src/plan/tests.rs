//! The rule table's semantics: what may and may not rotate.

use egg::{EGraph, Runner};

use super::lang::{rules, Plan, ShapeAnalysis};
use super::Dims;

/// Whether `a` and `b` end up in one e-class after saturating both.
fn equal_after_rewriting(a: &str, b: &str) -> bool {
    let dims = Dims { d_vocab: 11, d_vocab_out: 11, d_model: 7, d_head: 3 };
    let mut egraph: EGraph<Plan, ShapeAnalysis> = EGraph::new(ShapeAnalysis { dims });
    let (a, b) = (egraph.add_expr(&a.parse().unwrap()), egraph.add_expr(&b.parse().unwrap()));
    let runner: Runner<Plan, ShapeAnalysis> =
        Runner::new(ShapeAnalysis { dims }).with_egraph(egraph).with_iter_limit(30).run(rules());
    runner.egraph.find(a) == runner.egraph.find(b)
}

#[test]
fn a_product_rotates_under_an_eigenvalue_computation_and_a_trace_but_not_under_a_norm() {
    // W_V W_O is d_model × d_model, W_O W_V d_head × d_head: both square, so all three are
    // well typed; only the norm differs in value.
    assert!(equal_after_rewriting("(copying (* W_V[h] W_O[h]))", "(copying (* W_O[h] W_V[h]))"));
    assert!(equal_after_rewriting("(tr (* W_V[h] W_O[h]))", "(tr (* W_O[h] W_V[h]))"));
    assert!(!equal_after_rewriting("(fro (* W_V[h] W_O[h]))", "(fro (* W_O[h] W_V[h]))"));
}

#[test]
fn a_norm_becomes_the_trace_of_a_gram_product() {
    // ‖A B‖² = tr(Bᵀ Aᵀ A B) = ⟨Aᵀ A, B Bᵀ⟩.
    assert!(equal_after_rewriting(
        "(fro (* W_V[h] W_O[h]))",
        "(sqrt (dot (* (T W_V[h]) W_V[h]) (* W_O[h] (T W_O[h]))))"
    ));
}

#[test]
fn shapes_and_rank_bounds() {
    let dims = Dims { d_vocab: 50, d_vocab_out: 50, d_model: 8, d_head: 2 };
    let mut egraph: EGraph<Plan, ShapeAnalysis> = EGraph::new(ShapeAnalysis { dims });
    let ov = egraph.add_expr(&"(* (* (* W_E W_V[h]) W_O[h]) W_U)".parse().unwrap());
    let shape = egraph[ov].data;
    assert_eq!((shape.rows, shape.cols, shape.rank), (50, 50, 2));
    let pair = egraph.add_expr(&"(* (* W_V[h] W_O[h]) W_Q[r])".parse().unwrap());
    assert_eq!(egraph[pair].data.deps, super::Deps::PAIR);
}

#[test]
fn another_output_vocabulary_shapes_w_u_and_leaves_the_ov_copying_score_out() {
    let dims = Dims { d_vocab: 50, d_vocab_out: 3, d_model: 8, d_head: 2 };
    let mut egraph: EGraph<Plan, ShapeAnalysis> = EGraph::new(ShapeAnalysis { dims });
    let ov = egraph.add_expr(&"(* (* (* W_E W_V[h]) W_O[h]) W_U)".parse().unwrap());
    assert_eq!((egraph[ov].data.rows, egraph[ov].data.cols, egraph[ov].data.rank), (50, 3, 2));
    assert!(!super::Stat::defined(dims).contains(&super::Stat::OvCopying));
    assert_eq!(super::Stat::defined(dims).len(), super::Stat::ALL.len() - 1);
    let square = Dims { d_vocab_out: 50, ..dims };
    assert_eq!(super::Stat::defined(square), super::Stat::ALL);
    let plans = super::plan(dims, super::Counts::from_heads_per_layer(&[2, 2]));
    for plan in [&plans.chosen, &plans.naive] {
        for step in plan.step_ids() {
            assert_ne!(plan.describe(step), "W_U · W_E", "needs d_vocab_out = d_vocab");
        }
    }
}
