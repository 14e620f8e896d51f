//! Numbers against the TransformerLens fixtures (`tests/fixtures/{attn1,attn2,full2}`, computed in f64
//! from the stored f32 weights): forward pass, attention patterns and scores, every path, each
//! head's share of the logits, and the check of the sum of paths. Tolerance 1e-9 absolute.

use pathc::eval::{self, Matrix, PathEvaluator};
use pathc::paths::{self, Side};
use pathc::weights::Weights;
use pathc::ExpandOptions;

const TOL: f64 = 1e-9;

/// Every fixture: the first three from `make_fixtures.py` (their models in `examples/`), the rest
/// from `make_arch_fixtures.py` and `make_block_fixtures.py` (their models beside them,
/// `model.tf`): other output vocabularies, bidirectional attention, key masks, other scales,
/// shortformer and rotary positions, grouped-query attention; LNPre, RMS and RMSPre norms, gated
/// and SoLU MLPs, the other GELUs, parallel blocks, a model after TransformerLens's weight
/// processing; and HuggingFace GPT-NeoX (sequential and parallel), Llama and GPT-J (two norms and
/// one) converted as TransformerLens converts them.
const ALL: [&str; 30] = [
    "attn1",
    "attn2",
    "full2",
    "vocab_out",
    "bidir_mask",
    "causal_mask",
    "scale",
    "scale_custom",
    "shortformer",
    "shortformer_plain",
    "rotary_neox",
    "rotary_gptj",
    "rotary_gqa",
    "hf_neox",
    "lnpre",
    "rms",
    "rmspre_attn",
    "gated_ln",
    "solu",
    "solu_pre",
    "act_gelu_fast",
    "act_gelu_pytorch_tanh",
    "parallel",
    "unprocessed",
    "processed",
    "processed_fold_ln_only",
    "hf_neox_parallel",
    "hf_gptj_shared",
    "hf_llama",
    "hf_gptj",
];

/// The fixtures made by HuggingFace `transformers` itself (`hf_logits`, `hf_pattern.{l}`).
const HUGGINGFACE: [&str; 5] = ["hf_neox", "hf_neox_parallel", "hf_llama", "hf_gptj", "hf_gptj_shared"];

/// The fixtures with a reference for every path (attention-only, no LayerNorm, no biases).
const WITH_PATHS: [&str; 10] = [
    "attn1",
    "attn2",
    "vocab_out",
    "bidir_mask",
    "scale",
    "scale_custom",
    "shortformer_plain",
    "rotary_neox",
    "rotary_gptj",
    "rmspre_attn",
];

struct Fixture {
    name: &'static str,
    meta: serde_json::Value,
    source: String,
    reference: Weights,
    expansion: pathc::Expansion,
    params: eval::Params,
    forward: eval::Forward,
}

/// The model file of a fixture: `examples/{name}.tf`, or the fixture's own `model.tf`.
fn model_source(name: &str) -> String {
    std::fs::read_to_string(format!("examples/{name}.tf"))
        .or_else(|_| std::fs::read_to_string(format!("tests/fixtures/{name}/model.tf")))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn fixture(name: &'static str) -> Fixture {
    let dir = format!("tests/fixtures/{name}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/meta.json")).unwrap()).unwrap();
    let numbers = |key: &str| -> Option<Vec<u64>> {
        meta[key].as_array().map(|a| a.iter().map(|t| t.as_u64().unwrap()).collect())
    };
    let tokens: Vec<usize> = numbers("tokens").unwrap().into_iter().map(|t| t as usize).collect();
    let mask: Option<Vec<bool>> = numbers("attention_mask").map(|m| m.into_iter().map(|b| b == 1).collect());
    let source = model_source(name);
    let compiled = pathc::compile(&source).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    let names = eval::NameMap::default();
    let params = pathc::load_params(&compiled, format!("{dir}/model.safetensors").as_ref(), &names)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let forward = eval::forward_masked(&params, &tokens, mask.as_deref()).unwrap();
    let expansion = pathc::expand_compiled(compiled, &ExpandOptions::default()).unwrap();
    let reference = Weights::load(format!("{dir}/reference.safetensors").as_ref()).unwrap();
    Fixture { name, meta, source, reference, expansion, params, forward }
}

impl Fixture {
    fn n(&self) -> usize {
        self.forward.tokens.len()
    }

    fn reference(&self, name: &str, shape: &[usize]) -> Vec<f64> {
        self.reference.get(name, shape).unwrap_or_else(|e| panic!("{}: {e}", self.name)).data.clone()
    }

    fn reference_matrix(&self, name: &str, rows: usize, cols: usize) -> Matrix {
        Matrix::from_row_slice(rows, cols, &self.reference(name, &[rows, cols]))
    }
}

fn max_diff(a: &Matrix, b: &Matrix) -> f64 {
    assert_eq!(a.shape(), b.shape());
    (a - b).iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

#[test]
fn forward_pass_matches_transformer_lens() {
    for name in ALL {
        let f = fixture(name);
        let (n, d_vocab) = (f.n(), f.params.d_vocab_out());
        let d_model = f.params.w_e.ncols();
        let mut worst: f64 = max_diff(&f.forward.logits, &f.reference_matrix("logits", n, d_vocab));
        worst = worst.max(max_diff(&f.forward.resid_final, &f.reference_matrix("resid_final", n, d_model)));
        for (l, layer) in f.forward.patterns.iter().enumerate() {
            let h = layer.len();
            let patterns = f.reference(&format!("pattern.{l}"), &[h, n, n]);
            let scores = f.reference(&format!("scores.{l}"), &[h, n, n]);
            for head in 0..h {
                let slice = |v: &[f64]| Matrix::from_row_slice(n, n, &v[head * n * n..(head + 1) * n * n]);
                worst = worst.max(max_diff(&layer[head], &slice(&patterns)));
                worst = worst.max(max_diff(&f.forward.scores[l][head], &slice(&scores)));
            }
            worst = worst
                .max(max_diff(&f.forward.resid_pre[l], &f.reference_matrix(&format!("resid_pre.{l}"), n, d_model)));
        }
        eprintln!("{name}: forward pass, largest error {worst:.3e}");
        assert!(worst <= TOL, "{name}: {worst}");
    }
}

#[test]
fn every_path_matches_transformer_lens() {
    for name in WITH_PATHS {
        let f = fixture(name);
        let (n, d_vocab) = (f.n(), f.params.d_vocab_out());
        let expected_names: Vec<String> =
            f.meta["path_names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        let mut evaluator = PathEvaluator::new(&f.params, &f.forward);
        let mut names = Vec::new();
        let mut worst: f64 = 0.0;
        paths::for_each_path(&f.expansion.logits, &f.expansion.heads_per_layer(), None, |p| {
            let name = p.name();
            let expected = f.reference_matrix(&format!("path/{name}"), n, d_vocab);
            worst = worst.max(max_diff(&evaluator.logits(&p), &expected));
            names.push(name);
        });
        assert_eq!(names, expected_names);
        eprintln!("{name}: {} paths, largest error {worst:.3e}", names.len());
        assert!(worst <= TOL, "{name}: {worst}");
    }
}

/// The paths ending in a head sum to that head's share of the logits (`head_logits`); grouped
/// by the component they end in they give `component_logits` (a path's last head's layer, or the
/// component its source writes), and the constant `b_U` path is `constant_logits`.
#[test]
fn head_and_component_logits_match_transformer_lens() {
    for name in ALL {
        let f = fixture(name);
        let (n, d_vocab) = (f.n(), f.params.d_vocab_out());
        let heads = f.expansion.heads_per_layer();
        let (n_layers, n_heads) = (heads.len(), heads[0]);
        let labels: Vec<String> = f.meta["component_logits_labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let mut by_head = vec![Matrix::zeros(n, d_vocab); n_layers * n_heads];
        let mut by_component = vec![Matrix::zeros(n, d_vocab); labels.len()];
        let mut constant = Matrix::zeros(n, d_vocab);
        let mut evaluator = PathEvaluator::new(&f.params, &f.forward);
        paths::for_each_path(&f.expansion.logits, &heads, None, |p| {
            let logits = evaluator.logits(&p);
            let component = match p.heads(Side::Head).last() {
                Some(last) => {
                    by_head[last.layer * n_heads + last.head] += &logits;
                    Some(format!("{}_attn_out", last.layer))
                }
                None => p.template.source().and_then(pathc::graph::Source::component),
            };
            match component {
                Some(component) => {
                    let slot = labels.iter().position(|l| *l == component).expect("a known component");
                    by_component[slot] += &logits;
                }
                None => constant += &logits,
            }
        });
        let expected = f.reference("head_logits", &[n_layers, n_heads, n, d_vocab]);
        let mut worst: f64 = 0.0;
        for (i, got) in by_head.iter().enumerate() {
            let want = Matrix::from_row_slice(n, d_vocab, &expected[i * n * d_vocab..(i + 1) * n * d_vocab]);
            worst = worst.max(max_diff(got, &want));
        }
        let expected = f.reference("component_logits", &[labels.len(), n, d_vocab]);
        for (i, got) in by_component.iter().enumerate() {
            let want = Matrix::from_row_slice(n, d_vocab, &expected[i * n * d_vocab..(i + 1) * n * d_vocab]);
            worst = worst.max(max_diff(got, &want));
        }
        let want = f.reference("constant_logits", &[d_vocab]);
        for row in constant.row_iter() {
            worst = worst.max(row.iter().zip(&want).fold(0.0f64, |m, (a, b)| m.max((a - b).abs())));
        }
        eprintln!("{name}: head, component and constant logits, largest error {worst:.3e}");
        assert!(worst <= TOL, "{name}: {worst}");
    }
}

/// `pathc check`'s computation: the sum of paths (plus the omitted orders, when truncated)
/// reconstructs the logits, at every truncation.
#[test]
fn sum_of_paths_reconstructs_the_logits_at_every_order() {
    for name in ALL {
        let f = fixture(name);
        for max_order in [None, Some(0), Some(1), Some(2)] {
            let expansion = pathc::expand(&f.source, &ExpandOptions { max_order, ..ExpandOptions::default() }).unwrap();
            let report = eval::check(&expansion, &f.params, &f.forward, &pathc::progress::Silent).unwrap();
            assert!(report.max_abs_error <= TOL, "{name} order ≤ {max_order:?}: {report:?}");
            let complete = max_order.is_none_or(|k| k as usize >= f.expansion.heads_per_layer().len());
            assert_eq!(report.omitted_max_abs == 0.0, complete, "{name} order ≤ {max_order:?}: {report:?}");
        }
    }
}

/// Every head's (query path, key path) terms sum to its attention scores (TransformerLens's
/// `scores.{l}`, before the causal mask), at every truncation counted in full.
#[test]
fn score_terms_sum_to_the_scores() {
    for name in ALL {
        let f = fixture(name);
        let n = f.n();
        let e = pathc::expand(&f.source, &ExpandOptions { qk: true, ..ExpandOptions::default() }).unwrap();
        let heads = e.heads_per_layer();
        let mut evaluator = eval::ScoreEvaluator::new(&f.params, &f.forward);
        let mut worst: f64 = 0.0;
        let mut terms = 0;
        for (layer, templates) in e.scores.as_ref().unwrap().iter().enumerate() {
            let reference = f.reference(&format!("scores.{layer}"), &[heads[layer], n, n]);
            for head in 0..heads[layer] {
                let fixed = (paths::IndexVar { side: Side::Head, layer }, head);
                let mut total = Matrix::zeros(n, n);
                paths::for_each_path(templates, &heads, Some(fixed), |p| {
                    total += evaluator.scores(&p, layer, head);
                    terms += 1;
                });
                let want = Matrix::from_row_slice(n, n, &reference[head * n * n..(head + 1) * n * n]);
                worst = worst.max(max_diff(&total, &want));
            }
        }
        eprintln!("{name}: {terms} score terms, largest error of their sums {worst:.3e}");
        assert!(worst <= TOL, "{name}: {worst}");
    }
}

/// Each MLP's input terms sum to its pre-activation in the forward pass (which reproduces
/// TransformerLens's logits, `forward_pass_matches_transformer_lens`), at every truncation with
/// the omitted orders below the enumerated ones.
#[test]
fn mlp_input_terms_sum_to_the_pre_activation() {
    let f = fixture("full2");
    let mut evaluator = PathEvaluator::new(&f.params, &f.forward);
    let heads = f.expansion.heads_per_layer();
    let mut worst: f64 = 0.0;
    let mut terms = 0;
    for (layer, templates) in f.expansion.mlp_inputs.iter().enumerate() {
        let templates = templates.as_ref().expect("full2 has an MLP in every layer");
        let want = f.forward.mlp_pre[layer].as_ref().expect("recorded");
        let mut total = Matrix::zeros(want.nrows(), want.ncols());
        paths::for_each_path(templates, &heads, None, |p| {
            total += evaluator.mlp_input(&p, layer);
            terms += 1;
        });
        worst = worst.max(max_diff(&total, want));
    }
    // MLP 0: E, P, b_O0, b_in0, and E, P, b_V through a layer-0 head (3 × 4). MLP 1: E, P, b_O0,
    // M0, b_out0, b_O1, b_in1; E, P, b_V0 through layer 0 (12); E, P, b_O0, M0, b_out0, b_V1
    // through layer 1 (24); E, P, b_V0 through layer 0 then layer 1 (48).
    assert_eq!(terms, (4 + 12) + (7 + 12 + 24 + 48));
    eprintln!("full2: {terms} MLP-input terms, largest error of their sums {worst:.3e}");
    assert!(worst <= TOL, "{worst}");
}

/// `pathc paths --group component|head` from the command line: the groups are TransformerLens's
/// `component_logits` (with `constant` as `constant_logits`) and `head_logits`.
#[test]
fn grouped_paths_from_the_cli_are_component_and_head_logits() {
    let f = fixture("full2");
    let (n, d_vocab) = (f.n(), f.params.d_vocab());
    let tokens: Vec<String> = f.forward.tokens.iter().map(ToString::to_string).collect();
    let run = |group: &str| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pathc"))
            .args(["paths", "examples/full2.tf", "--weights", "tests/fixtures/full2/model.safetensors"])
            .args(["--tokens", &tokens.join(","), "--pos", "all", "--group", group, "--format", "json"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let as_matrix = |v: &serde_json::Value| {
        let rows: Vec<f64> =
            v.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()).map(|x| x.as_f64().unwrap()).collect();
        Matrix::from_row_slice(n, d_vocab, &rows)
    };
    let mut worst: f64 = 0.0;
    let components = run("component");
    let labels = f.meta["component_logits_labels"].as_array().unwrap();
    let expected = f.reference("component_logits", &[labels.len(), n, d_vocab]);
    let groups = components["paths"].as_array().unwrap();
    let names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
    let mut want_names: Vec<&str> = labels.iter().map(|l| l.as_str().unwrap()).collect();
    want_names.push("constant");
    assert_eq!(names, want_names, "groups in TransformerLens's component order");
    for (i, group) in groups.iter().take(labels.len()).enumerate() {
        let want = Matrix::from_row_slice(n, d_vocab, &expected[i * n * d_vocab..(i + 1) * n * d_vocab]);
        worst = worst.max(max_diff(&as_matrix(&group["logits"]), &want));
    }
    let constant = as_matrix(&groups[labels.len()]["logits"]);
    let want = f.reference("constant_logits", &[d_vocab]);
    worst = worst.max(max_diff(&constant, &Matrix::from_fn(n, d_vocab, |_, j| want[j])));
    let heads = run("head");
    let expected = f.reference("head_logits", &[2, 4, n, d_vocab]);
    for group in heads["paths"].as_array().unwrap() {
        let name = group["name"].as_str().unwrap();
        let Some(rest) = name.strip_prefix('L') else { continue };
        let (layer, head) = rest.split_once('H').unwrap();
        let i = layer.parse::<usize>().unwrap() * 4 + head.parse::<usize>().unwrap();
        let want = Matrix::from_row_slice(n, d_vocab, &expected[i * n * d_vocab..(i + 1) * n * d_vocab]);
        worst = worst.max(max_diff(&as_matrix(&group["logits"]), &want));
    }
    eprintln!("full2: grouped paths from the CLI, largest error {worst:.3e}");
    assert!(worst <= TOL, "{worst}");
}

/// The table at one position (paths unembedded in batches of 64, the constant `b_U` among them)
/// equals the rows of the table at every position, path by path: full2's 93 paths span two
/// batches.
#[test]
fn path_tables_at_one_position_are_rows_of_the_full_table() {
    let f = fixture("full2");
    let evaluation =
        eval::Evaluation { expansion: f.expansion.clone(), params: f.params.clone(), forward: f.forward.clone() };
    let all = pathc::emit::numbers::path_table(&evaluation, None, None, None, false, &pathc::progress::Silent).unwrap();
    assert_eq!(all.len(), 93);
    let mut worst: f64 = 0.0;
    for position in [0, 5, f.n() - 1] {
        let at =
            pathc::emit::numbers::path_table(&evaluation, Some(position), None, None, false, &pathc::progress::Silent)
                .unwrap();
        assert_eq!(at.iter().map(|r| &r.name).collect::<Vec<_>>(), all.iter().map(|r| &r.name).collect::<Vec<_>>());
        for (one, full) in at.iter().zip(&all) {
            worst = worst.max(max_diff(&one.logits, &full.logits.rows(position, 1).into_owned()));
        }
    }
    assert!(worst <= 1e-12, "{worst}");
}

/// The targets exercised on a fixture: the next token at every position, a fixed token at every
/// position, and each of those at single positions (the first, the last one each allows).
fn target_cases(f: &Fixture) -> Vec<(eval::Target, Option<usize>)> {
    let (n, d_vocab) = (f.n(), f.params.d_vocab());
    let fixed = eval::Target::Token(d_vocab - 3);
    vec![
        (eval::Target::Next, None),
        (eval::Target::Next, Some(0)),
        (eval::Target::Next, Some(n - 2)),
        (fixed, None),
        (fixed, Some(n - 1)),
        (eval::Target::Token(0), Some(3)),
    ]
}

/// Direct logit attribution: over every path (all orders), each target's contributions sum to
/// the forward pass's logit of that target at that position, on every fixture.
#[test]
fn target_contributions_sum_to_the_target_logits() {
    for name in ["attn1", "attn2", "full2"] {
        let f = fixture(name);
        let mut worst: f64 = 0.0;
        for (target, position) in target_cases(&f) {
            let targets = eval::Targets::resolve(target, &f.forward.tokens, f.params.d_vocab(), position).unwrap();
            let table = eval::target_logits(&f.expansion, &f.params, &f.forward, &targets).unwrap();
            assert_eq!(table.values.shape(), (table.names.len(), targets.len()));
            let expected = targets.forward_logits(&f.forward);
            for (j, (&p, &t)) in targets.positions.iter().zip(&targets.tokens).enumerate() {
                assert_eq!(expected[j], f.forward.logits[(p, t)]);
                worst = worst.max((table.values.column(j).sum() - expected[j]).abs());
            }
        }
        eprintln!("{name}: target contributions summed against the forward pass, largest error {worst:.3e}");
        assert!(worst <= TOL, "{name}: {worst}");
    }
}

/// The factored target contributions equal the full logit rows' entries (`PathEvaluator::logits`
/// at (position, target)), path by path, within 1e-9 absolute and 1e-12 relative to max(1, |logit|); and the next
/// token's targets are the tokens one position on.
#[test]
fn target_contributions_equal_the_full_rows() {
    for name in ["attn1", "attn2", "full2"] {
        let f = fixture(name);
        let heads = f.expansion.heads_per_layer();
        let mut full: Vec<Matrix> = Vec::new();
        let mut evaluator = PathEvaluator::new(&f.params, &f.forward);
        paths::for_each_path(&f.expansion.logits, &heads, None, |p| full.push(evaluator.logits(&p)));
        let mut worst: f64 = 0.0;
        for (target, position) in target_cases(&f) {
            let targets = eval::Targets::resolve(target, &f.forward.tokens, f.params.d_vocab(), position).unwrap();
            if target == eval::Target::Next {
                for (&p, &t) in targets.positions.iter().zip(&targets.tokens) {
                    assert_eq!(t, f.forward.tokens[p + 1]);
                }
            }
            let table = eval::target_logits(&f.expansion, &f.params, &f.forward, &targets).unwrap();
            assert_eq!(table.names.len(), full.len());
            for (i, logits) in full.iter().enumerate() {
                for (j, (&p, &t)) in targets.positions.iter().zip(&targets.tokens).enumerate() {
                    let (fast, slow) = (table.values[(i, j)], logits[(p, t)]);
                    let error = (fast - slow).abs();
                    let ok = error <= 1e-9 && error <= 1e-12 * slow.abs().max(1.0);
                    assert!(ok, "{name} {}: {fast} vs {slow}", table.names[i]);
                    worst = worst.max(error);
                }
            }
        }
        eprintln!(
            "{name}: {} paths' target contributions against their full rows, largest error {worst:.3e}",
            full.len()
        );
    }
}

/// Two evaluations give bit-identical contributions, and the paths are named in path order.
#[test]
fn target_contributions_are_deterministic() {
    let f = fixture("full2");
    let targets = eval::Targets::resolve(eval::Target::Next, &f.forward.tokens, f.params.d_vocab(), None).unwrap();
    let a = eval::target_logits(&f.expansion, &f.params, &f.forward, &targets).unwrap();
    let b = eval::target_logits(&f.expansion, &f.params, &f.forward, &targets).unwrap();
    assert!(a.values.iter().zip(b.values.iter()).all(|(x, y)| x.to_bits() == y.to_bits()));
    let mut names = Vec::new();
    paths::for_each_path(&f.expansion.logits, &f.expansion.heads_per_layer(), None, |p| names.push(p.name()));
    assert_eq!(a.names, names);
    assert_eq!(targets.positions, (0..f.n() - 1).collect::<Vec<_>>(), "every position but the last");
}

#[test]
fn targets_that_do_not_exist_are_errors() {
    use eval::{EvalError, Target, Targets};
    let tokens = [5, 17, 42];
    let resolve = |target, position| Targets::resolve(target, &tokens, 50, position);
    assert!(matches!(resolve(Target::Next, Some(2)), Err(EvalError::NoNextToken { position: 2, n_tokens: 3 })));
    assert!(matches!(Targets::resolve(Target::Next, &[5], 50, None), Err(EvalError::NextNeedsTwoTokens)));
    assert!(matches!(Targets::resolve(Target::Next, &[5], 50, Some(0)), Err(EvalError::NextNeedsTwoTokens)));
    assert!(matches!(resolve(Target::Token(50), None), Err(EvalError::TargetOutOfRange { token: 50, d_vocab: 50 })));
    assert!(matches!(resolve(Target::Token(1), Some(3)), Err(EvalError::PositionOutOfRange { position: 3, .. })));
    assert!(matches!(Targets::resolve(Target::Token(1), &[], 50, None), Err(EvalError::NoTokens)));
    let next = resolve(Target::Next, None).unwrap();
    assert_eq!((next.positions, next.tokens), (vec![0, 1], vec![17, 42]));
    let fixed = resolve(Target::Token(7), None).unwrap();
    assert_eq!((fixed.positions, fixed.tokens), (vec![0, 1, 2], vec![7, 7, 7]));
    assert_eq!("next".parse::<Target>(), Ok(Target::Next));
    assert_eq!("42".parse::<Target>(), Ok(Target::Token(42)));
    assert!("-1".parse::<Target>().is_err() && "nxt".parse::<Target>().is_err());
}

/// A HuggingFace model, run by HuggingFace `transformers` itself (float64, eager attention:
/// `hf_logits`, `hf_pattern.{l}` with `output_attentions=True`) and converted to TransformerLens's
/// names by TransformerLens's `convert_neox_weights`: pathc's forward pass on the converted
/// weights reproduces HuggingFace's logits and attention patterns (rotary positions on half of
/// each head, LayerNorms and biases everywhere).
#[test]
fn forward_pass_matches_huggingface() {
    for name in HUGGINGFACE {
        let f = fixture(name);
        let (n, d_vocab) = (f.n(), f.params.d_vocab_out());
        let mut worst = max_diff(&f.forward.logits, &f.reference_matrix("hf_logits", n, d_vocab));
        for (l, layer) in f.forward.patterns.iter().enumerate() {
            let h = layer.len();
            let patterns = f.reference(&format!("hf_pattern.{l}"), &[h, n, n]);
            for (head, pattern) in layer.iter().enumerate() {
                let want = Matrix::from_row_slice(n, n, &patterns[head * n * n..(head + 1) * n * n]);
                worst = worst.max(max_diff(pattern, &want));
            }
        }
        eprintln!("{name}: logits and patterns against HuggingFace, largest error {worst:.3e}");
        assert!(worst <= TOL, "{name}: {worst}");
    }
}

/// pathc's rotations are the RoPE equations' (the fixtures' `rotation.{p}`, computed in NumPy
/// and checked against TransformerLens's rotated queries and keys).
#[test]
fn rotations_match_the_rope_equations() {
    for name in ["rotary_neox", "rotary_gptj", "rotary_gqa", "hf_neox", "rms", "parallel", "hf_llama", "hf_gptj"] {
        let f = fixture(name);
        let attn = &f.params.layers[0].attn;
        let rotary = attn.rotary.expect("a rotary fixture");
        let d_head = attn.w_q[0].ncols();
        let mut worst: f64 = 0.0;
        for p in [0, 1, 3] {
            let want = f.reference_matrix(&format!("rotation.{p}"), d_head, d_head);
            worst = worst.max(max_diff(&eval::rotary::rotation(&rotary, d_head, p), &want));
        }
        eprintln!("{name}: rotations, largest error {worst:.3e}");
        assert!(worst <= 1e-13, "{name}: {worst}");
    }
}

/// Every norm's recorded scale (TransformerLens's `hook_scale`: σ of a LayerNorm, the RMS of an
/// RMSNorm) and every MLP's pre-activation (a gated MLP's gate input `hook_pre` and linear input
/// `hook_pre_linear`) and output, on the fixtures that record them.
#[test]
fn norm_scales_and_mlp_activations_match_transformer_lens() {
    for name in ALL {
        let f = fixture(name);
        let n = f.n();
        let has = |key: &str| f.reference.contains(key);
        let mut worst: f64 = 0.0;
        let mut compared = 0;
        let mut compare = |got: &Matrix, key: &str| {
            // A scale is stored as `[n]`, an activation as `[n, width]`.
            let shape: Vec<usize> = if got.ncols() == 1 { vec![got.nrows()] } else { vec![got.nrows(), got.ncols()] };
            let want = Matrix::from_row_slice(got.nrows(), got.ncols(), &f.reference(key, &shape));
            let error = max_diff(got, &want);
            if error > TOL {
                eprintln!("{name}: {key} differs by {error:.3e}");
            }
            worst = worst.max(error);
            compared += 1;
        };
        let column = |v: &[f64]| Matrix::from_column_slice(v.len(), 1, v);
        for l in 0..f.params.layers.len() {
            if let (Some(s), true) = (&f.forward.scale_attn[l], has(&format!("scale.ln1.{l}"))) {
                compare(&column(s), &format!("scale.ln1.{l}"));
            }
            if let (Some(s), true) = (&f.forward.scale_mlp[l], has(&format!("scale.ln2.{l}"))) {
                compare(&column(s), &format!("scale.ln2.{l}"));
            }
            // TransformerLens's `hook_mlp_out` includes `b_out`; pathc's MLP source does not.
            let with_bias = f.forward.mlp_out[l].as_ref().map(|out| {
                let b_out = &f.params.layers[l].mlp.as_ref().expect("an MLP").b_out;
                Matrix::from_fn(out.nrows(), out.ncols(), |i, j| out[(i, j)] + b_out[j])
            });
            for (recorded, key) in [
                (&f.forward.mlp_pre[l], format!("mlp_pre.{l}")),
                (&f.forward.mlp_linear[l], format!("mlp_pre_linear.{l}")),
                (&with_bias, format!("mlp_out.{l}")),
            ] {
                if let (Some(m), true) = (recorded, has(&key)) {
                    compare(m, &key);
                }
            }
        }
        if let (Some(s), true) = (&f.forward.scale_final, has("scale.final")) {
            compare(&column(s), "scale.final");
        }
        assert!(compared > 0 || !has("scale.final"), "{name}: nothing compared");
        if compared > 0 {
            eprintln!("{name}: {compared} norm scales and MLP activations, largest error {worst:.3e}");
        }
        assert!(worst <= TOL, "{name}: {worst} over {n} tokens");
    }
}

/// TransformerLens's weight processing (`from_pretrained`'s defaults: fold_ln,
/// center_writing_weights, center_unembed, fold_value_biases) applied by pathc to the unprocessed
/// weights gives the model TransformerLens's processing gives: its logits (`logits_exact_processing`,
/// TransformerLens's float64 processing of the same weights) within 1e-9, and its weights those
/// of the `processed` fixture (which are rounded to f32: within 1e-6). Each step alone is checked
/// against what it promises: fold_ln and center_writing_weights change no logit; center_unembed
/// shifts each position's logits by their mean; fold_value_biases changes no logit.
#[test]
fn weight_processing_is_transformer_lens_s() {
    let raw = fixture("unprocessed");
    let processed = fixture("processed");
    let n = raw.n();
    let d_vocab = raw.params.d_vocab_out();
    let all = raw.params.process(eval::Processing::TRANSFORMER_LENS).unwrap();
    let forward = eval::forward(&all, &raw.forward.tokens).unwrap();
    let want = processed.reference_matrix("logits_exact_processing", n, d_vocab);
    let error = max_diff(&forward.logits, &want);
    eprintln!("processed by pathc vs by TransformerLens: logits differ by {error:.3e}");
    assert!(error <= TOL, "{error}");
    let weights = [
        (&all.w_e, &processed.params.w_e),
        (&all.w_u, &processed.params.w_u),
        (&all.layers[1].attn.w_q[2], &processed.params.layers[1].attn.w_q[2]),
        (&all.layers[0].attn.w_o[1], &processed.params.layers[0].attn.w_o[1]),
        (&all.layers[1].mlp.as_ref().unwrap().w_in, &processed.params.layers[1].mlp.as_ref().unwrap().w_in),
    ];
    for (ours, theirs) in weights {
        assert!(max_diff(ours, theirs) <= 1e-6, "{}", max_diff(ours, theirs));
    }
    assert!((&all.layers[0].attn.b_o - &processed.params.layers[0].attn.b_o).amax() <= 1e-6);
    assert!(all.layers.iter().all(|l| l.attn.b_v_kv.iter().all(|b| b.iter().all(|&x| x == 0.0))));
    // One step at a time.
    let step =
        |p: eval::Processing| eval::forward(&raw.params.process(p).unwrap(), &raw.forward.tokens).unwrap().logits;
    let none = eval::Processing::default();
    for p in [
        eval::Processing { fold_ln: true, ..none },
        eval::Processing { fold_ln: true, center_writing_weights: true, ..none },
        eval::Processing { center_writing_weights: true, ..none },
        eval::Processing { fold_value_biases: true, ..none },
    ] {
        let error = max_diff(&step(p), &raw.forward.logits);
        assert!(error <= TOL, "{:?}: {error}", p.names());
    }
    let centred = step(eval::Processing { center_unembed: true, ..none });
    let shifted = Matrix::from_fn(n, d_vocab, |i, j| raw.forward.logits[(i, j)] - raw.forward.logits.row(i).mean());
    assert!(max_diff(&centred, &shifted) <= TOL);
}

/// Which paths processing changes (README, "Weight processing"): fold_ln and
/// center_writing_weights none (every path reads the stream through a centring LayerNorm whose
/// weights the evaluator folds anyway); center_unembed every path, by its own mean over the
/// outputs; fold_value_biases (after fold_ln, as TransformerLens orders them) the value-bias
/// paths, which become zero, and the `b_O` paths, which gain them. (Alone, it moves only the
/// `b_V` tensor: the LayerNorm bias's share through `W_V` stays a value-bias path.)
#[test]
fn processing_moves_only_the_documented_paths() {
    let raw = fixture("unprocessed");
    let (n, d_vocab) = (raw.n(), raw.params.d_vocab_out());
    let logits_of = |params: &eval::Params| {
        let forward = eval::forward(params, &raw.forward.tokens).unwrap();
        let mut evaluator = PathEvaluator::new(params, &forward);
        let mut out = Vec::new();
        paths::for_each_path(&raw.expansion.logits, &raw.expansion.heads_per_layer(), None, |p| {
            out.push((p.name(), evaluator.logits(&p)));
        });
        out
    };
    let before = logits_of(&raw.params);
    let none = eval::Processing::default();
    let same = logits_of(
        &raw.params.process(eval::Processing { fold_ln: true, center_writing_weights: true, ..none }).unwrap(),
    );
    for ((name, a), (_, b)) in before.iter().zip(&same) {
        assert!(max_diff(a, b) <= TOL, "{name} changed under fold_ln + center_writing_weights");
    }
    let centred = logits_of(&raw.params.process(eval::Processing { center_unembed: true, ..none }).unwrap());
    for ((name, a), (_, b)) in before.iter().zip(&centred) {
        let shifted = Matrix::from_fn(n, d_vocab, |i, j| a[(i, j)] - a.row(i).mean());
        assert!(max_diff(&shifted, b) <= TOL, "{name} under center_unembed");
    }
    let folded =
        logits_of(&raw.params.process(eval::Processing { fold_ln: true, fold_value_biases: true, ..none }).unwrap());
    let mut moved = 0;
    for ((name, a), (_, b)) in before.iter().zip(&folded) {
        if name.starts_with("bV") {
            assert_eq!(b.amax(), 0.0, "{name} is zero once folded");
        } else if name.starts_with("bO") {
            moved += 1;
        } else {
            assert!(max_diff(a, b) <= TOL, "{name} changed under fold_value_biases");
        }
    }
    assert!(moved > 0);
}
