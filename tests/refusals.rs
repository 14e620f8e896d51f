//! Bounded work on any input (issue 17): counts by the polynomial recursion at thousands of
//! layers, refusals decided from the counts and the predicted e-graph work before any
//! saturation run, and suggestions that succeed.

use num_bigint::BigUint;
use pathc::rewrite::{for_each_run, Limits, RunKind, RUN_BASE_E_NODES};
use pathc::ExpandOptions;

/// A model with `layers` identical layers.
fn model(layers: usize, heads: usize, bias: bool, norm: bool, mlp: bool, pos: bool) -> String {
    let b = if bias { ", bias" } else { "" };
    let ln = if norm { "layernorm\n" } else { "" };
    let mlp = if mlp { format!("{ln}mlp(d_mlp = 8, act = relu{b})\n") } else { String::new() };
    let pos = if pos { "pos_embed\n" } else { "" };
    format!(
        "model m\ndim d_model = 8\ndim d_vocab = 10\ndim n_ctx = 6\nembed\n{pos}repeat {layers} {{ layer {{ {ln}attn(heads = {heads}, d_head = 2{b})\n{mlp} }} }}\n{ln}unembed{}\n",
        if bias { "(bias)" } else { "" }
    )
}

fn generous() -> ExpandOptions {
    ExpandOptions {
        limit: u64::MAX,
        rewrite_limits: Limits { nodes: usize::MAX, total_nodes: u64::MAX, ..Limits::default() },
        ..ExpandOptions::default()
    }
}

/// The prediction of every run's e-graph (templates × a per-kind bound + a base) bounds the
/// e-graph the run builds, on every mix of biases, LayerNorms, MLPs and positional embeddings,
/// every truncation, with and without scores: what makes a suggested truncation sound.
#[test]
fn predicted_e_graphs_bound_the_runs() {
    let mut worst = [0.0f64; 3];
    // The issue 11 and 12 architectures too: gated MLPs (two input runs), parallel layers (an MLP
    // reading the stream before its attention), every norm kind, shortformer and rotary scores.
    let variants: Vec<String> =
        ["norms_gated_parallel", "rotary_qk", "shortformer_qk", "output_vocabulary", "bidirectional_scale"]
            .iter()
            .map(|name| std::fs::read_to_string(format!("tests/models/pass/{name}.tf")).unwrap())
            .collect();
    let shapes = (1..=4).flat_map(|layers| {
        [(false, false, false, false), (true, false, false, true), (false, true, true, false), (true, true, true, true)]
            .into_iter()
            .map(move |(bias, norm, mlp, pos)| model(layers, 2, bias, norm, mlp, pos))
    });
    for source in shapes.chain(variants) {
        {
            for max_order in [None, Some(0), Some(1), Some(2)] {
                for qk in [false, true] {
                    let options = ExpandOptions { max_order, qk, ..generous() };
                    let e = pathc::expand(&source, &options).expect("expands");
                    let compiled = pathc::compile(&source).unwrap();
                    let mut predicted = Vec::new();
                    for_each_run(&compiled.graph, max_order, qk, |kind, by_order| {
                        predicted.push((kind, by_order.iter().sum::<BigUint>()))
                    });
                    let mut actual = e.logit_stats.run_e_nodes.clone();
                    actual.extend(e.score_stats.iter().flat_map(|s| s.run_e_nodes.iter().copied()));
                    assert_eq!(predicted.len(), actual.len(), "runs of {source}");
                    for ((kind, templates), nodes) in predicted.iter().zip(&actual) {
                        let templates: u64 = templates.try_into().unwrap();
                        let bound = RUN_BASE_E_NODES + kind.e_nodes_per_template() * templates;
                        let slot = match kind {
                            RunKind::Stream => 0,
                            RunKind::MlpInput => 1,
                            RunKind::ScoreSide => 2,
                        };
                        let ratio = nodes.saturating_sub(RUN_BASE_E_NODES as usize) as f64 / templates as f64;
                        worst[slot] = worst[slot].max(ratio);
                        assert!(
                            *nodes as u64 <= bound,
                            "{kind:?}: {nodes} e-nodes > predicted {bound} ({templates} templates), order {max_order:?} qk {qk} of\n{source}"
                        );
                    }
                }
            }
        }
    }
    eprintln!("worst e-nodes per template (stream, MLP input, score side): {worst:?}");
}

fn binomial(n: u64, k: u64) -> BigUint {
    if k > n {
        return BigUint::ZERO;
    }
    (0..k).fold(BigUint::from(1u32), |acc, i| acc * (n - i) / (i + 1))
}

/// Counts how many saturation runs an expansion starts.
#[derive(Default)]
struct Runs(std::sync::atomic::AtomicU64);

impl pathc::progress::Progress for Runs {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, units: u64) {
        self.0.fetch_add(units, std::sync::atomic::Ordering::Relaxed);
    }
    fn finish(&self) {}
}

fn runs_of(source: &str, options: &ExpandOptions) -> (Result<pathc::Expansion, pathc::Error>, u64) {
    let runs = Runs::default();
    let result = pathc::expand_with_progress(pathc::compile(source).unwrap(), options, &runs);
    (result, runs.0.into_inner())
}

/// Item 6: 2000 layers × 1 head with biases count by the polynomial recursion, exactly, and
/// equal the closed form: `E` passes any k of the L layers, C(L, k); `b_O` of layer l passes
/// k of the L−1−l after it, Σ_m C(m, k) = C(L, k+1); a value bias first passes its own head,
/// C(L, k) at order k + 1 … summed the same way; and `b_U`.
#[test]
fn counts_of_2000_layers_equal_the_closed_form() {
    let layers = 2000u64;
    let source = model(layers as usize, 1, true, false, false, false);
    let compiled = pathc::compile(&source).unwrap();
    let counts = compiled.counts(None, false);
    assert_eq!(counts.logits.by_order.len(), layers as usize + 1);
    for (k, c) in counts.logits.by_order.iter().enumerate() {
        let k = k as u64;
        let mut expected = binomial(layers, k) + binomial(layers, k + 1);
        expected += if k == 0 { BigUint::from(1u32) } else { binomial(layers, k) };
        assert_eq!(*c, expected, "order {k}");
    }
    // Truncation keeps a prefix, and expansion refuses from the counts, before any run.
    let truncated = compiled.counts(Some(3), false);
    assert_eq!(truncated.logits.by_order[..], counts.logits.by_order[..4]);
    let (result, runs) = runs_of(&source, &ExpandOptions::default());
    assert!(matches!(result, Err(pathc::Error::TooLarge { .. })), "{:?}", result.err());
    assert_eq!(runs, 0, "refused before any saturation run");
}

/// Item 6 with `--qk`: the score terms by the squared recursion equal a direct convolution of
/// each layer's query and key terms (closed form per side), summed over the layers.
#[test]
fn score_counts_equal_the_convolution_of_the_sides() {
    let (layers, heads) = (40u64, 3u64);
    let source = model(layers as usize, heads as usize, true, false, false, false);
    let counts = pathc::compile(&source).unwrap().counts(None, true);
    let mut expected = vec![BigUint::ZERO; 2 * layers as usize + 1];
    for l in 0..layers {
        // resid before layer l: E through k of l layers; b_O of layer j through k of l−1−j;
        // b_V of layer j through its head and k of the l−1−j after; plus b_Q (b_K).
        let h = BigUint::from(heads);
        let side: Vec<BigUint> = (0..=l)
            .map(|k| {
                let power = h.pow(k as u32);
                let mut c = binomial(l, k) * &power + binomial(l, k + 1) * &power;
                if k >= 1 {
                    c += binomial(l, k) * &power;
                } else {
                    c += 1u32;
                }
                c
            })
            .collect();
        for (a, ca) in side.iter().enumerate() {
            for (b, cb) in side.iter().enumerate() {
                expected[a + b] += ca * cb * heads;
            }
        }
    }
    while expected.last().is_some_and(|c| *c == BigUint::ZERO) {
        expected.pop();
    }
    assert_eq!(counts.scores.unwrap().by_order, expected);
}

/// Item 7: a refusal's suggestion succeeds. With the rewrite limits scaled down (so the test is
/// quick) the 30-layer, 1-head model with biases is refused from its predicted e-graphs, and
/// the suggested truncation expands under the same limits; with `--qk` the suggestion counts the
/// score terms (GPT-2 small: order 2 fits the paths, not the scores).
#[test]
fn suggested_truncations_succeed() {
    let small = Limits { nodes: 150_000, total_nodes: 600_000, ..Limits::default() };
    let cases = [
        (model(30, 1, true, false, false, false), None, false, small),
        (model(30, 1, true, false, false, false), Some(4), false, small),
        (model(8, 2, true, true, true, true), None, true, small),
        (std::fs::read_to_string("examples/gpt2-small.tf").unwrap(), None, true, Limits::default()),
    ];
    for (source, max_order, qk, limits) in cases {
        let options = ExpandOptions { max_order, qk, rewrite_limits: limits, ..ExpandOptions::default() };
        let (result, runs) = runs_of(&source, &options);
        let error = result.expect_err("refused");
        assert_eq!(runs, 0, "refused before any run: {error}");
        let fits = match &error {
            pathc::Error::TooLarge { fits, .. } | pathc::Error::RewriteTooLarge { fits, .. } => fits.clone(),
            other => panic!("{other}"),
        };
        let (k, count) = fits.expect("a truncation fits");
        let options = ExpandOptions { max_order: Some(k), ..options };
        let e =
            pathc::expand(&source, &options).unwrap_or_else(|e| panic!("--max-order {k} was suggested ({error}): {e}"));
        let mut total =
            e.logit_counts.total() + e.mlp_input_counts.iter().flatten().map(|c| c.total()).sum::<BigUint>();
        if let Some(s) = &e.score_counts {
            total += s.total();
        }
        assert_eq!(total, count, "the suggestion's count");
        // One more order would not have fitted.
        let next = ExpandOptions { max_order: Some(k + 1), ..options };
        let compiled = pathc::compile(&source).unwrap();
        let counts = compiled.counts(next.max_order, qk);
        assert!(compiled.check_limits(&counts, &next).is_err(), "--max-order {} fits too", k + 1);
    }
}

/// Item 7: templates are not bounded by the enumeration limit (12 layers × 4096 heads have
/// 4097^12 paths but 2^12 templates a source), and no message prints u64::MAX.
#[test]
fn templates_are_not_bounded_by_the_enumeration_limit() {
    let source = model(12, 4096, false, false, false, false);
    let options = ExpandOptions { templates_only: true, ..ExpandOptions::default() };
    let e = pathc::expand(&source, &options).expect("templates expand");
    assert_eq!(e.logits.len(), 1 << 12);
    let error = pathc::expand(&source, &ExpandOptions::default()).expect_err("too many paths").to_string();
    assert!(error.contains("enumeration limit of 1000000"), "{error}");
    // Templates of a model too large to rewrite are refused by the rewrite limits instead.
    let huge = model(1000, 1, true, false, false, false);
    let error = pathc::expand(&huge, &options).expect_err("too much rewriting").to_string();
    assert!(error.contains("e-nodes") && !error.contains(&u64::MAX.to_string()), "{error}");
}

/// Item 7: `--format dot` is bounded by `--limit` (one node a head), decided before the term
/// graph is built. (4096 layers × 4096 heads, 2.7 GB of DOT, is refused by the model's cap on
/// heads in all; 2000 × 512 is within it and above the limit.)
#[test]
fn dot_respects_the_limit() {
    let huge = model(2000, 512, false, false, false, false);
    let error = pathc::dot(&huge, pathc::DEFAULT_ENUMERATION_LIMIT).expect_err("refused");
    assert!(matches!(error, pathc::Error::GraphTooLarge { heads: 1_024_000, limit: 1_000_000 }), "{error}");
    let small = std::fs::read_to_string("examples/attn2.tf").unwrap();
    assert!(pathc::dot(&small, 8).unwrap().contains("L1H3"));
    assert!(matches!(pathc::dot(&small, 7), Err(pathc::Error::GraphTooLarge { heads: 8, limit: 7 })));
}

fn attention_model(layers: usize, heads: usize, d: u64) -> String {
    format!(
        "model k\ndim d_model = {d}\ndim d_vocab = {d}\nembed\nrepeat {layers} {{ layer {{ attn(heads = {heads}, d_head = {d}) }} }}\nunembed\n"
    )
}

/// Item 10: the chosen plan never costs more than the naive one (d_vocab = d_model = d_head =
/// 1000, 1 layer × 2 heads chose 92 GFLOP against the naive 80).
#[test]
fn chosen_plans_never_cost_more_than_naive() {
    for layers in 1..=3 {
        for heads in [1, 2, 4] {
            let compiled = pathc::compile(&attention_model(layers, heads, 1000)).unwrap();
            let plans = pathc::plan_stats(&compiled.model).unwrap();
            assert!(
                plans.chosen.flops() <= plans.naive.flops(),
                "{layers} × {heads}: chosen {} > naive {}",
                plans.chosen.flops(),
                plans.naive.flops()
            );
        }
    }
}

/// Item 10: sizes of 2^32 do not overflow the peak-memory estimate (it printed "0 kB").
#[test]
fn plan_estimates_do_not_overflow() {
    let compiled = pathc::compile(&attention_model(1, 2, 1 << 32)).unwrap();
    let plans = pathc::plan_stats(&compiled.model).unwrap();
    // At least W_E and W_U whole, or the heads' four weights: 2 × 4 × 2^64 bytes.
    assert!(
        plans.chosen.peak_bytes(1, pathc::plan::Precision::F32) >= 8.0 * 2f64.powi(64),
        "{}",
        plans.chosen.peak_bytes(1, pathc::plan::Precision::F32)
    );
    assert!(plans.naive.flops() >= 2f64.powi(96));
}

/// Item 10: `plan --weights` takes symbolic sizes from the weights file (it advised --weights and
/// then failed with "dimension `d_model` is symbolic"), and the plan equals the numeric model's.
#[test]
fn plan_with_weights_takes_symbolic_sizes_from_the_file() {
    let numeric = std::fs::read_to_string("examples/attn2.tf").unwrap();
    let symbolic: String = numeric
        .lines()
        .map(|l| {
            if l.starts_with("dim d_model") || l.starts_with("dim d_vocab") {
                l.split('=').next().unwrap().trim()
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let compiled = pathc::compile(&symbolic).unwrap();
    assert!(pathc::plan_stats(&compiled.model).is_err());
    let weights = pathc::load_weights(std::path::Path::new("tests/fixtures/attn2/model.safetensors")).unwrap();
    let names = pathc::eval::NameMap::default();
    let from_file = pathc::plan_stats_from_weights(&compiled.model, &weights, &names).expect("sizes from the file");
    let expected = pathc::plan_stats(&pathc::compile(&numeric).unwrap().model).unwrap();
    assert_eq!(from_file.chosen.flops(), expected.chosen.flops());
    assert_eq!(from_file.chosen.dims, expected.chosen.dims);
    // A number in the model file that the weights contradict is an error.
    let wrong = numeric.replace("dim d_model = 32", "dim d_model = 33");
    let compiled = pathc::compile(&wrong).unwrap();
    assert!(pathc::plan_stats_from_weights(&compiled.model, &weights, &names).is_err());
}
