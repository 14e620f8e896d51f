//! The expansion checked term for term against the paper's equations (Elhage et al. 2021,
//! DESIGN.md §1), written out here directly from the formulas — no e-graph, no templates — and
//! the exact counts checked against enumeration.

use std::collections::BTreeMap;

use pathc::{ExpandOptions, Expansion};

/// A model file for an attention-only model with the given heads per layer.
fn model(heads: &[usize], positional: bool) -> String {
    let mut s = String::from("model m\ndim d_model = 8\ndim d_vocab = 5\ndim n_ctx = 4\ndim d_head = 2\nembed\n");
    if positional {
        s.push_str("pos_embed\n");
    }
    for h in heads {
        s.push_str(&format!("layer {{ attn(heads = {h}) }}\n"));
    }
    s.push_str("unembed\n");
    s
}

fn expand(heads: &[usize], positional: bool, max_order: Option<u32>, qk: bool) -> Expansion {
    let options = ExpandOptions { max_order, qk, ..ExpandOptions::default() };
    pathc::expand(&model(heads, positional), &options).expect("expands")
}

/// A path written from the formula: source, and (layer, head) in increasing layer.
#[derive(Clone)]
struct RefPath {
    source: &'static str,
    heads: Vec<(usize, usize)>,
}

impl RefPath {
    fn name(&self) -> String {
        let mut n = self.source.to_string();
        for (l, h) in &self.heads {
            n.push_str(&format!("/L{l}H{h}"));
        }
        n
    }

    /// The attention patterns, latest first: A^{l_k.h}·…·A^{l_1.h}, or Id.
    fn patterns(&self) -> Vec<String> {
        self.heads.iter().rev().map(|(l, h)| format!("A^{{{l}.{h}}}")).collect()
    }

    /// W_OV^{l_k}·…·W_OV^{l_1}·W_s: the residual map from the source to the end of the path.
    fn residual(&self) -> Vec<String> {
        let mut w: Vec<String> = self.heads.iter().rev().map(|(l, h)| format!("W_OV^{{{l}.{h}}}")).collect();
        w.push(format!("W_{}", self.source));
        w
    }
}

/// Every path through at most `max_order` of the layers `0..layers` of `heads`.
fn all_paths(heads: &[usize], layers: usize, sources: &[&'static str], max_order: usize) -> Vec<RefPath> {
    let mut out = Vec::new();
    for subset in 0u32..(1 << layers) {
        let chosen: Vec<usize> = (0..layers).filter(|l| subset & (1 << l) != 0).collect();
        if chosen.len() > max_order {
            continue;
        }
        let mut assignments: Vec<Vec<(usize, usize)>> = vec![vec![]];
        for &l in &chosen {
            assignments = assignments
                .into_iter()
                .flat_map(|a| (0..heads[l]).map(move |h| [a.clone(), vec![(l, h)]].concat()))
                .collect();
        }
        for a in assignments {
            for &source in sources {
                out.push(RefPath { source, heads: a.clone() });
            }
        }
    }
    out
}

fn product(factors: &[String]) -> String {
    if factors.is_empty() {
        "Id".to_string()
    } else {
        factors.join("·")
    }
}

/// `P ⊗ W` with the paper's parentheses once the position side is a product.
fn term(position: &[Vec<String>], residual: &[String]) -> String {
    let wrap = position.iter().any(|p| p.len() > 1);
    let side = |f: &[String]| if wrap && f.len() > 1 { format!("({})", product(f)) } else { product(f) };
    let mut parts: Vec<String> = position.iter().map(|p| side(p)).collect();
    parts.push(side(residual));
    parts.join(" ⊗ ")
}

/// `T = (Id⊗W_U) Π_l (Id + Σ_h A^{l,h}⊗W_OV^{l,h}) (Id⊗W_s)` expanded by hand.
fn reference_logits(heads: &[usize], sources: &[&'static str], max_order: usize) -> BTreeMap<String, String> {
    all_paths(heads, heads.len(), sources, max_order)
        .into_iter()
        .map(|p| {
            let mut residual = vec!["W_U".to_string()];
            residual.extend(p.residual());
            (p.name(), term(&[p.patterns()], &residual))
        })
        .collect()
}

/// Each head's score x_qᵀ W_QK x_k with x = Σ paths into its layer, expanded by hand:
/// (query patterns) ⊗ (key patterns) ⊗ (M_qᵀ·W_QK·M_k), orders adding up to at most `max_order`.
fn reference_scores(heads: &[usize], sources: &[&'static str], max_order: usize) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (layer, &n) in heads.iter().enumerate() {
        let into_layer = all_paths(heads, layer, sources, max_order);
        for head in 0..n {
            for q in &into_layer {
                for k in &into_layer {
                    if q.heads.len() + k.heads.len() > max_order {
                        continue;
                    }
                    let mut residual: Vec<String> = q.residual().iter().rev().map(|f| format!("{f}ᵀ")).collect();
                    residual.push(format!("W_QK^{{{layer}.{head}}}"));
                    residual.extend(k.residual());
                    let name = format!("L{layer}H{head}[q={},k={}]", q.name(), k.name());
                    out.insert(name, term(&[q.patterns(), k.patterns()], &residual));
                }
            }
        }
    }
    out
}

fn logits_of(e: &Expansion) -> BTreeMap<String, String> {
    let list: Vec<(String, String)> = e.logit_paths().map(|p| (p.name, p.term)).collect();
    let map: BTreeMap<String, String> = list.iter().cloned().collect();
    assert_eq!(map.len(), list.len(), "path names are unique");
    map
}

fn scores_of(e: &Expansion) -> BTreeMap<String, String> {
    let list: Vec<(String, String)> = e.score_terms().map(|t| (t.name, t.term)).collect();
    let map: BTreeMap<String, String> = list.iter().cloned().collect();
    assert_eq!(map.len(), list.len(), "score term names are unique");
    map
}

const SHAPES: &[&[usize]] = &[&[], &[3], &[2, 2], &[2, 1, 3], &[1, 2, 1, 2]];

#[test]
fn logits_are_the_papers_sum_of_paths() {
    for heads in SHAPES {
        for positional in [false, true] {
            let sources: &[&str] = if positional { &["E", "P"] } else { &["E"] };
            for max_order in [None, Some(0), Some(1), Some(2)] {
                let e = expand(heads, positional, max_order, false);
                let k = max_order.map_or(heads.len(), |k| k as usize);
                assert_eq!(
                    logits_of(&e),
                    reference_logits(heads, sources, k),
                    "heads {heads:?}, order ≤ {max_order:?}"
                );
            }
        }
    }
}

#[test]
fn scores_are_the_papers_qk_expansion() {
    for heads in SHAPES {
        for positional in [false, true] {
            let sources: &[&str] = if positional { &["E", "P"] } else { &["E"] };
            for max_order in [None, Some(0), Some(1), Some(3)] {
                let e = expand(heads, positional, max_order, true);
                let k = max_order.map_or(2 * heads.len(), |k| k as usize);
                assert_eq!(
                    scores_of(&e),
                    reference_scores(heads, sources, k),
                    "heads {heads:?}, order ≤ {max_order:?}"
                );
            }
        }
    }
}

/// The second-layer head's four kinds of term, as DESIGN.md §1 writes them.
#[test]
fn two_layer_qk_terms_match_the_design_notes() {
    let e = expand(&[1, 1], false, None, true);
    let scores = scores_of(&e);
    assert_eq!(scores["L1H0[q=E,k=E]"], "Id ⊗ Id ⊗ W_Eᵀ·W_QK^{1.0}·W_E");
    assert_eq!(scores["L1H0[q=E/L0H0,k=E]"], "A^{0.0} ⊗ Id ⊗ W_Eᵀ·W_OV^{0.0}ᵀ·W_QK^{1.0}·W_E");
    assert_eq!(scores["L1H0[q=E,k=E/L0H0]"], "Id ⊗ A^{0.0} ⊗ W_Eᵀ·W_QK^{1.0}·W_OV^{0.0}·W_E");
    assert_eq!(scores["L1H0[q=E/L0H0,k=E/L0H0]"], "A^{0.0} ⊗ A^{0.0} ⊗ W_Eᵀ·W_OV^{0.0}ᵀ·W_QK^{1.0}·W_OV^{0.0}·W_E");
    assert_eq!(scores.len(), 4 + 1, "four terms for the layer-1 head, one for the layer-0 head");
}

/// The documented path order is the fixtures' order (TransformerLens `path_names`).
#[test]
fn path_order_matches_the_fixtures() {
    for (fixture, example) in [("attn1", "attn1.tf"), ("attn2", "attn2.tf")] {
        let meta = std::fs::read_to_string(format!("tests/fixtures/{fixture}/meta.json")).expect("fixture");
        let meta: serde_json::Value = serde_json::from_str(&meta).expect("JSON");
        let expected: Vec<String> = meta["path_names"]
            .as_array()
            .expect("names")
            .iter()
            .map(|n| n.as_str().expect("a name").to_string())
            .collect();
        let source = std::fs::read_to_string(format!("examples/{example}")).expect("example");
        let e = pathc::expand(&source, &ExpandOptions::default()).expect("expands");
        let names: Vec<String> = e.logit_paths().map(|p| p.name).collect();
        assert_eq!(names, expected, "{fixture}");
    }
}

/// Counting (from the architecture, never enumerating) equals enumeration, order by order, for
/// every shape and every truncation; for the attention scores too.
#[test]
fn counts_equal_enumeration() {
    let mut shapes: Vec<(Vec<usize>, bool)> = SHAPES.iter().map(|s| (s.to_vec(), true)).collect();
    shapes.push((vec![4, 4], true));
    shapes.push((vec![12, 12], true));
    // Deeper models: the score expansion grows as the square of the paths, so logits only.
    shapes.push((vec![3; 5], false));
    shapes.push((vec![2; 7], false));
    for (heads, qk) in &shapes {
        for positional in [false, true] {
            let orders = (0..=2 * heads.len() as u32).map(Some).chain([None]);
            for max_order in orders {
                let e = expand(heads, positional, max_order, *qk);
                let mut logits_by_order = vec![0u64; e.logit_counts.by_order.len()];
                for p in e.logit_paths() {
                    logits_by_order[p.order] += 1;
                }
                let counted: Vec<u64> = e.logit_counts.by_order.iter().map(|c| c.try_into().expect("small")).collect();
                assert_eq!(counted, logits_by_order, "logits, heads {heads:?}, order ≤ {max_order:?}");
                let Some(score_counts) = e.score_counts.as_ref() else { continue };
                let mut scores_by_order = vec![0u64; score_counts.by_order.len().max(1)];
                for t in e.score_terms() {
                    scores_by_order[t.order] += 1;
                }
                let counted: Vec<u64> = score_counts.by_order.iter().map(|c| c.try_into().expect("small")).collect();
                assert_eq!(counted, scores_by_order, "scores, heads {heads:?}, order ≤ {max_order:?}");
            }
        }
    }
}

/// The examples: every `--max-order` that fits the default limit enumerates exactly its count.
#[test]
fn example_counts_equal_enumeration() {
    for (example, orders) in [
        ("attn1.tf", 0..=1),
        ("attn2.tf", 0..=2),
        ("attn-only-2l.tf", 0..=2),
        ("attn-only-4l.tf", 0..=4),
        ("attn-only-12l.tf", 0..=3),
    ] {
        let source = std::fs::read_to_string(format!("examples/{example}")).expect("example");
        for k in orders {
            let options = ExpandOptions { max_order: Some(k), ..ExpandOptions::default() };
            let e = pathc::expand(&source, &options).expect("expands");
            let total: u64 = e.logit_counts.total().try_into().expect("small");
            assert_eq!(e.logit_paths().count() as u64, total, "{example} --max-order {k}");
        }
    }
}
