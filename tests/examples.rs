//! The shipped examples: e-graph sizes pinned (growth is noticed), term graphs and one JSON
//! expansion snapshotted, full models compiled.

use pathc::{emit, ExpandOptions};

fn read(example: &str) -> String {
    std::fs::read_to_string(format!("examples/{example}")).expect("example")
}

/// E-graph work per expansion: saturation runs, e-nodes summed and largest, iterations. A change
/// to the rules or the term construction that grows the e-graph shows up here.
#[test]
fn egraph_sizes_are_pinned() {
    let mut table = String::from("example                     max-order  qk  runs  e-nodes  largest  iterations\n");
    for (example, max_order, qk) in [
        ("attn1.tf", None, true),
        ("attn2.tf", None, true),
        ("attn-only-2l.tf", None, true),
        ("attn-only-4l.tf", None, false),
        ("attn-only-4l.tf", Some(2), true),
        ("attn-only-12l.tf", Some(1), true),
        ("attn-only-12l.tf", Some(3), false),
        ("full2.tf", None, true),
        ("gpt2-small.tf", Some(2), false),
        ("attn-only-2l-demo.tf", None, true),
        ("redwood_attn_2l.tf", Some(1), true),
        ("../tests/models/pass/rotary_qk.tf", None, true),
        ("transformer-lens/pythia-70m.tf", Some(1), true),
        ("transformer-lens/gpt-j-6b.tf", Some(1), false),
        ("transformer-lens/mistral-7b.tf", Some(1), false),
    ] {
        // Only the symbolic expansion is measured: no enumeration limit.
        let options = ExpandOptions { max_order, qk, limit: u64::MAX, ..ExpandOptions::default() };
        let e = pathc::expand(&read(example), &options).expect("expands");
        for (side, stats) in [("logits", Some(&e.logit_stats)), ("scores", e.score_stats.as_ref())] {
            let Some(s) = stats else { continue };
            let order = max_order.map_or("-".to_string(), |k| k.to_string());
            table.push_str(&format!(
                "{:<27} {order:>9}  {:<3} {:>5} {:>8} {:>8} {:>11}  {side}\n",
                example,
                if qk { "yes" } else { "no" },
                s.runs,
                s.e_nodes,
                s.max_e_nodes,
                s.iterations
            ));
        }
    }
    insta::assert_snapshot!(table);
}

#[test]
fn term_graphs_render_as_dot() {
    for example in ["attn2.tf", "full2.tf"] {
        let compiled = pathc::compile(&read(example)).expect("compiles");
        insta::assert_snapshot!(example, emit::dot::write(&compiled.graph, &compiled.model.name));
    }
}

#[test]
fn json_expansion_of_attn1_with_qk() {
    let options = ExpandOptions { qk: true, ..ExpandOptions::default() };
    let e = pathc::expand(&read("attn1.tf"), &options).expect("expands");
    let mut out = Vec::new();
    emit::json::write(&e, &mut out).expect("in memory");
    let value: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
    insta::assert_json_snapshot!(value);
}

/// Full models parse, check and build their term graph (expansion through MLPs, LayerNorm and
/// biases is refused with diagnostics, tested in `tests/models/fail`).
#[test]
fn full_models_compile() {
    for (example, layers, heads, mlps) in [("full2.tf", 2, 4, 2), ("gpt2-small.tf", 12, 12, 12)] {
        let compiled = pathc::compile(&read(example)).expect("compiles");
        assert_eq!(compiled.model.n_layers(), layers);
        assert!(compiled.model.layers.iter().all(|l| l.attn.n_heads == heads && l.attn.ln.is_some()));
        assert_eq!(compiled.model.layers.iter().filter(|l| l.mlp.is_some()).count(), mlps);
        assert!(compiled.model.ln_final.is_some());
        assert_eq!(compiled.graph.heads.iter().map(Vec::len).sum::<usize>(), layers * heads);
        assert_eq!(compiled.graph.resid.len(), 1 + layers + mlps);
    }
}

/// The examples that mirror the fixtures have the fixtures' shapes (read from `meta.json`).
#[test]
fn fixture_examples_match_the_fixture_configs() {
    for name in ["attn1", "attn2", "full2"] {
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("tests/fixtures/{name}/meta.json")).unwrap())
                .unwrap();
        let cfg = &meta["config"];
        let model = pathc::compile(&read(&format!("{name}.tf"))).expect("compiles").model;
        let dim = |k: &str| model.dims.get(k).map(|s| s.to_string());
        for key in ["d_model", "d_vocab", "n_ctx", "d_head"] {
            assert_eq!(dim(key), Some(cfg[key].to_string()), "{name}: {key}");
        }
        assert_eq!(model.n_layers() as u64, cfg["n_layers"].as_u64().unwrap(), "{name}");
        assert!(model.layers.iter().all(|l| l.attn.n_heads as u64 == cfg["n_heads"].as_u64().unwrap()));
        assert_eq!(model.layers.iter().all(|l| l.mlp.is_none()), cfg["attn_only"].as_bool().unwrap(), "{name}");
        assert_eq!(model.ln_final.is_some(), cfg["normalization_type"] == "LN", "{name}");
        if let Some(d_mlp) = cfg["d_mlp"].as_u64() {
            assert_eq!(dim("d_mlp"), Some(d_mlp.to_string()));
            assert!(model.layers.iter().all(|l| l.mlp.as_ref().is_some_and(|m| m.act.name() == cfg["act_fn"])));
        }
        assert!(model.pos_embed.is_some(), "{name}: standard positional embedding");
    }
}

/// Every rule in the table is needed: each one fires while expanding the examples.
#[test]
fn every_rule_fires() {
    let mut fired = std::collections::BTreeSet::new();
    for (example, max_order) in
        [("attn2.tf", None), ("attn2.tf", Some(1)), ("attn-only-4l.tf", Some(2)), ("full2.tf", Some(1))]
            .into_iter()
            .chain([("../tests/models/pass/rotary_qk.tf", Some(1))])
    {
        let options = ExpandOptions { max_order, qk: true, ..ExpandOptions::default() };
        let e = pathc::expand(&read(example), &options).expect("expands");
        for stats in [&e.logit_stats, e.score_stats.as_ref().expect("qk")] {
            fired.extend(stats.rules_applied.iter().filter(|(_, &n)| n > 0).map(|(r, _)| r.clone()));
        }
    }
    let table: Vec<String> = pathc::rewrite::rules::rules().iter().map(|r| r.name.to_string()).collect();
    let unused: Vec<&String> = table.iter().filter(|r| !fired.contains(*r)).collect();
    assert!(unused.is_empty(), "rules that never fire: {unused:?}");
}

/// A saturation run that hits a limit is an error naming the limit, never a partial expansion.
#[test]
fn runner_limits_are_errors() {
    use pathc::rewrite::Limits;
    use std::time::Duration;
    let source = read("attn2.tf");
    // A node limit below the predicted e-graphs is refused before any run (tests/limits.rs).
    let small = ExpandOptions { rewrite_limits: Limits { nodes: 60, ..Limits::default() }, ..ExpandOptions::default() };
    let message = pathc::expand(&source, &small).expect_err("refused").to_string();
    assert!(message.contains("more than the node limit of 60 e-nodes a run"), "{message}");
    for (limits, named) in [
        (Limits { iterations: 2, ..Limits::default() }, "the iteration limit (2)"),
        (Limits { time: Duration::ZERO, ..Limits::default() }, "the time limit"),
    ] {
        let options = ExpandOptions { rewrite_limits: limits, ..ExpandOptions::default() };
        let error = pathc::expand(&source, &options).expect_err("a limit stops the expansion");
        let message = error.to_string();
        assert!(message.starts_with("the e-graph stopped before saturating: "), "{message}");
        assert!(message.contains(named), "{message}");
        assert!(message.ends_with("the expansion would be incomplete"), "{message}");
        // The attention scores' two chains of runs (query side, key side) stop the same way.
        let graph = pathc::compile(&source).unwrap().graph;
        let error = pathc::rewrite::expand_scores(&graph, None, limits, &pathc::progress::Silent)
            .expect_err("a limit stops the scores' expansion");
        assert!(error.to_string().contains(named), "{error}");
    }
}

/// Full models in every notation: every kind of term (LayerNorm scales, MLP sources and inputs,
/// biases, b_Q/b_K in the scores) as a user sees it.
#[test]
fn full_model_expansions() {
    let expand = |example: &str, max_order, qk| {
        let options = ExpandOptions { max_order, qk, limit: u64::MAX, ..ExpandOptions::default() };
        pathc::expand(&read(example), &options).expect("expands")
    };
    let text = |e: &pathc::Expansion, templates_only| {
        let mut out = Vec::new();
        emit::text::write(e, templates_only, &mut out).expect("in memory");
        String::from_utf8(out).expect("UTF-8")
    };
    insta::assert_snapshot!("full2_text", text(&expand("full2.tf", None, false), false));
    insta::assert_snapshot!("full2_qk_templates_order_1", text(&expand("full2.tf", Some(1), true), true));
    let mut latex = Vec::new();
    emit::latex::write(&expand("full2.tf", Some(1), false), false, &mut latex).expect("in memory");
    insta::assert_snapshot!("full2_latex_order_1", String::from_utf8(latex).expect("UTF-8"));
    let mut json = Vec::new();
    emit::json::write(&expand("full2.tf", Some(1), false), &mut json).expect("in memory");
    let json = String::from_utf8(json).expect("UTF-8");
    serde_json::from_str::<serde_json::Value>(&json).expect("valid JSON");
    insta::assert_snapshot!("full2_json_order_1", json);
    insta::assert_snapshot!("gpt2_small_templates_order_1", text(&expand("gpt2-small.tf", Some(1), false), true));
}

/// The real dimensions of TransformerLens's models (`examples/transformer-lens/`): every one
/// parses, and its exact counts by order are pinned (paths, MLP-input and gate-input terms at
/// every order and at most 2 heads; score terms at most 1), from the counting recursion. The
/// attention-only ones are also checked against the closed form: with `b` sources entering at
/// the start (`E`, `P`, none else) and per layer `H` heads, a value bias and `b_O`, the order-k
/// paths of L layers are `C(L,k)·(2·H^k) + Σ_l C(l,k−1)·H^k` (value biases, which pass their own
/// layer's head) `+ C(l,k)·H^k` (each `b_O` through later heads), plus `b_U`.
#[test]
fn transformer_lens_examples_counts_are_pinned() {
    let mut names: Vec<String> = std::fs::read_dir("examples/transformer-lens")
        .expect("folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut table = String::new();
    for name in &names {
        let compiled = pathc::compile(&read(&format!("transformer-lens/{name}"))).expect("parses");
        // Every order for the small ones; the 28- and 32-layer ones have 29 and 33 orders.
        let orders: &[Option<u32>] = if compiled.model.n_layers() <= 6 { &[None, Some(2)] } else { &[Some(2)] };
        for &max_order in orders {
            let counts = compiled.counts(max_order, max_order.is_some());
            let show =
                |c: &pathc::paths::Counts| c.by_order.iter().map(ToString::to_string).collect::<Vec<_>>().join(" + ");
            let order = max_order.map_or("all".to_string(), |k| format!("≤{k}"));
            table.push_str(&format!("{name:<22} {order:>4}  paths {}\n", show(&counts.logits)));
            for (layer, c) in counts.mlp_inputs.iter().enumerate().filter_map(|(l, c)| Some((l, c.as_ref()?))) {
                if layer == 0 || layer + 1 == counts.mlp_inputs.len() {
                    table.push_str(&format!("{:<28}MLP {layer} input {}\n", "", show(c)));
                }
            }
            for (layer, c) in counts.mlp_gates.iter().enumerate().filter_map(|(l, c)| Some((l, c.as_ref()?))) {
                if layer == 0 || layer + 1 == counts.mlp_gates.len() {
                    table.push_str(&format!("{:<28}MLP {layer} gate {}\n", "", show(c)));
                }
            }
            if let Some(scores) = &counts.scores {
                table.push_str(&format!("{:<28}scores {}\n", "", show(scores)));
            }
        }
        if let Some(n) = name.strip_prefix("attn-only-").and_then(|r| r.strip_suffix("l.tf")) {
            let (layers, h) = (n.parse::<u32>().unwrap(), 8u128);
            let binomial = |n: u32, k: u32| -> u128 {
                if k > n {
                    return 0;
                }
                (0..k).fold(1u128, |acc, i| acc * (n - i) as u128 / (i + 1) as u128)
            };
            let closed: Vec<u128> = (0..=layers)
                .map(|k| {
                    let sources = 2 * binomial(layers, k) * h.pow(k);
                    let biases: u128 = (0..layers)
                        .map(|l| {
                            let later = layers - 1 - l;
                            let value = if k >= 1 { binomial(later, k - 1) * h.pow(k) } else { 0 };
                            value + binomial(later, k) * h.pow(k)
                        })
                        .sum();
                    sources + biases + u128::from(k == 0)
                })
                .collect();
            let counted: Vec<u128> =
                compiled.counts(None, false).logits.by_order.iter().map(|c| c.to_string().parse().unwrap()).collect();
            assert_eq!(counted, closed, "{name}");
        }
    }
    insta::assert_snapshot!(table);
}

/// The JSON schema's optional architecture fields (`d_vocab_out`, `positions`, `attention`) and
/// the rotary circuit's factors, on a small rotary, grouped-query model.
#[test]
fn json_expansion_of_a_rotary_grouped_model() {
    let options = ExpandOptions { qk: true, max_order: Some(0), ..ExpandOptions::default() };
    let e = pathc::expand(&read("../tests/models/pass/rotary_qk.tf"), &options).expect("expands");
    let mut out = Vec::new();
    emit::json::write(&e, &mut out).expect("in memory");
    let value: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
    assert_eq!(value["positions"], "rotary");
    assert_eq!(value["attention"][0]["kv_heads"], 2);
    assert_eq!(value["attention"][1]["rotary"]["style"], "gptj");
    insta::assert_json_snapshot!(value);
    let shortformer = pathc::expand(&read("../tests/models/pass/shortformer_qk.tf"), &options).expect("expands");
    let mut out = Vec::new();
    emit::json::write(&shortformer, &mut out).expect("in memory");
    let value: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
    assert_eq!(value["positions"], "shortformer");
    assert!(value.get("attention").is_none(), "GPT-2 attention: no per-layer fields");
}
