//! `pathc codegen --lang python`: the generated module's structure (always), and its numbers
//! against pathc and the TransformerLens fixtures (with Python and NumPy: the interpreter from
//! `PATHC_PYTHON`; without it these tests are skipped with a note, unless `PATHC_REQUIRE_PYTHON=1`
//! makes a missing interpreter a failure, as in `.ci/run`).

use std::path::PathBuf;
use std::process::{Command, Output};

use pathc::codegen::{self, python, CodegenError, Options};
use pathc::paths::HeadRef;
use pathc::weights::Weights;
use pathc::ExpandOptions;

const TOL: f64 = 1e-9;

fn expand(example: &str, max_order: Option<u32>) -> pathc::Expansion {
    let source = std::fs::read_to_string(format!("examples/{example}.tf")).unwrap();
    pathc::expand(&source, &ExpandOptions { max_order, ..ExpandOptions::default() }).unwrap()
}

fn head(layer: usize, head: usize) -> HeadRef {
    HeadRef { layer, head }
}

/// The `def paths_…` functions of a module, in order.
fn family_functions(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|l| l.strip_prefix("def paths_").map(|rest| format!("paths_{}", rest.split('(').next().unwrap())))
        .collect()
}

/// The generated function name of a path's family: its source and the layers it passes.
fn family_of(path: &pathc::PathTerm) -> String {
    let mut name = format!("paths_{}", path.source.name());
    for h in &path.heads {
        name.push_str(&format!("_L{}", h.layer));
    }
    name
}

#[test]
fn every_family_is_one_function_with_its_formula() {
    let cases = [
        ("attn1", None),
        ("attn2", None),
        ("full2", None),
        ("attn-only-2l", None),
        ("attn-only-4l", Some(2)),
        ("gpt2-small", Some(1)),
    ];
    for (example, max_order) in cases {
        let exp = expand(example, max_order);
        let code = python::generate(&exp, &Options::default()).unwrap();
        assert_eq!(code, python::generate(&exp, &Options::default()).unwrap(), "{example}: deterministic");
        let functions = family_functions(&code);
        assert_eq!(functions.len(), exp.logits.len(), "{example}: one function per template");
        for (template, function) in exp.logits.iter().zip(&functions) {
            let formula = format!(
                "{}{}",
                pathc::emit::notation::Notation::Text.sums(&template.binders, None),
                pathc::emit::notation::Notation::Text.term(
                    &template.position,
                    &template.weights,
                    pathc::emit::notation::Heads::Symbolic
                )
            );
            let body = code.split(&format!("def {function}(w, f):\n")).nth(1).expect("the function");
            let docstring = body.split("\"\"\"").nth(1).expect("a docstring");
            assert!(docstring.contains(&format!("\n        {formula}\n")), "{example} {function}: {docstring}");
        }
        let listed: Vec<&str> =
            code.split("FAMILIES = [\n").nth(1).unwrap().split(']').next().unwrap().lines().collect();
        assert_eq!(listed.len(), functions.len(), "{example}: every family is run");
        // The families follow the expansion's path order, so the path names do too.
        let names = codegen::selected_paths(&exp, &Options::default()).unwrap();
        let expected: Vec<String> = exp.logit_paths().map(|p| p.name).collect();
        assert_eq!(names, expected, "{example}");
    }
}

#[test]
fn selections_keep_exactly_the_paths_through_the_heads() {
    for example in ["attn2", "full2"] {
        let exp = expand(example, None);
        let options = Options { max_order: Some(1), through: vec![head(1, 3)] };
        let expected: Vec<pathc::PathTerm> =
            exp.logit_paths().filter(|p| p.order <= 1 && p.heads.contains(&head(1, 3))).collect();
        assert!(!expected.is_empty());
        let names: Vec<String> = expected.iter().map(|p| p.name.clone()).collect();
        assert_eq!(codegen::selected_paths(&exp, &options).unwrap(), names, "{example}");
        let mut families: Vec<String> = expected.iter().map(family_of).collect();
        families.dedup();
        let code = python::generate(&exp, &options).unwrap();
        assert_eq!(family_functions(&code), families, "{example}");
        assert!(code.contains("for h1 in (3,):"), "{example}: the head is pinned");
        assert!(!code.contains("_L0_L1("), "{example}: no order-2 family");
        assert!(code.contains("MAX_ORDER = 1\n"), "{example}");

        // Through two heads: only the order-2 paths through both.
        let both = Options { max_order: None, through: vec![head(0, 1), head(1, 3)] };
        let names = codegen::selected_paths(&exp, &both).unwrap();
        let expected: Vec<String> = exp
            .logit_paths()
            .filter(|p| p.heads.contains(&head(0, 1)) && p.heads.contains(&head(1, 3)))
            .map(|p| p.name)
            .collect();
        assert_eq!(names, expected, "{example}");
        // Two heads of one layer: no path passes both.
        let none = Options { max_order: None, through: vec![head(1, 0), head(1, 3)] };
        assert!(codegen::selected_paths(&exp, &none).unwrap().is_empty());
    }
}

#[test]
fn unknown_heads_are_refused() {
    let exp = expand("attn2", None);
    for bad in [head(2, 0), head(1, 4)] {
        let options = Options { max_order: None, through: vec![bad] };
        assert!(matches!(python::generate(&exp, &options), Err(CodegenError::UnknownHead { .. })), "{bad}");
    }
    for args in [&["--through", "L1H4"][..], &["--through", "1.2"], &["--lang", "rust"]] {
        let out = pathc(&[&["codegen", "examples/attn2.tf", "--lang", "python"][..], args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(out.stdout.is_empty() && err.contains("error"), "{args:?}: {err}");
    }
}

#[test]
fn attn1_module_snapshot() {
    let code = python::generate(&expand("attn1", None), &Options::default()).unwrap();
    insta::assert_snapshot!("codegen_attn1_python", code);
}

#[test]
fn the_model_literal_carries_every_architecture_option() {
    let literal = |source: &str| -> String {
        let exp = pathc::expand(source, &ExpandOptions::default()).unwrap();
        let code = python::generate(&exp, &Options::default()).unwrap();
        code.split("\nMODEL = {\n").nth(1).unwrap().split("\n}\n").next().unwrap().to_string()
    };
    let fixture = |name: &str| literal(&std::fs::read_to_string(format!("tests/fixtures/{name}/model.tf")).unwrap());
    let cases: [(&str, &[&str]); 7] = [
        ("vocab_out", &["\"d_vocab\": 33,", "\"d_vocab_out\": 2,", "\"pos_embed\": \"standard\","]),
        ("bidir_mask", &["\"d_vocab_out\": 5,", "\"causal\": False,"]),
        ("scale", &["\"scale\": 1.0,", "\"d_vocab_out\": 33,"]),
        ("scale_custom", &["\"scale\": 2.5,", "\"causal\": True,"]),
        ("shortformer", &["\"pos_embed\": \"shortformer\",", "\"scale\": None,"]),
        ("rotary_gptj", &["\"pos_embed\": None,", "\"rotary\": {\"dim\": 8, \"base\": 1000.0, \"style\": \"gptj\"},"]),
        (
            "rotary_gqa",
            &["\"heads\": 4, \"kv_heads\": 2,", "\"rotary\": {\"dim\": 8, \"base\": 10000.0, \"style\": \"neox\"},"],
        ),
    ];
    // The block options: every norm's kind and eps, gated MLPs, solu_ln's inner norm, parallel
    // layers with two norms or one shared.
    let blocks: [(&str, &[&str]); 7] = [
        (
            "rms",
            &[
                "\"ln1\": {\"kind\": \"rmsnorm\", \"eps\": 1e-6},",
                "\"ln2\": {\"kind\": \"rmsnorm\", \"eps\": 1e-6},",
                "\"gated\": True,",
                "\"ln_final\": {\"kind\": \"rmsnorm\", \"eps\": 1e-6},",
            ],
        ),
        ("rmspre_attn", &["\"ln1\": {\"kind\": \"rmsnorm(pre)\", \"eps\": 1e-5},", "\"mlp\": None},"]),
        ("lnpre", &["\"ln2\": {\"kind\": \"layernorm(pre)\", \"eps\": 1e-5},", "\"inner_norm\": None}"]),
        ("solu", &["\"act\": \"solu_ln\",", "\"inner_norm\": {\"kind\": \"layernorm\", \"eps\": 1e-5}}"]),
        ("solu_pre", &["\"inner_norm\": {\"kind\": \"layernorm(pre)\", \"eps\": 1e-5}}"]),
        ("parallel", &["\"parallel\": True, \"shared_norm\": False,", "\"ln2\": {\"kind\": \"layernorm\""]),
        ("hf_gptj_shared", &["\"parallel\": True, \"shared_norm\": True,", "\"ln2\": None,", "\"gated\": False,"]),
    ];
    for (name, expected) in cases.into_iter().chain(blocks) {
        let model = fixture(name);
        for want in expected {
            assert!(model.contains(want), "{name}: no `{want}` in\n{model}");
        }
    }
    assert!(fixture("gated_ln").contains("\"parallel\": False, \"shared_norm\": False,"));
    // Symbolic sizes: the outputs are the tokens, or a size of their own read from W_U.
    let symbolic = |unembed: &str| {
        literal(&format!(
            "model m\ndim d_model\ndim d_vocab\ndim d_out\ndim d_head\nembed\nlayer {{ attn(heads = 2) }}\n{unembed}\n"
        ))
    };
    assert!(symbolic("unembed").contains("\"d_vocab_out\": \"d_vocab\","));
    assert!(symbolic("unembed(d_vocab_out = d_vocab)").contains("\"d_vocab_out\": \"d_vocab\","));
    assert!(symbolic("unembed(d_vocab_out = d_out)").contains("\"d_vocab_out\": None,"));
}

// ------------------------------------------------------------------ with Python and NumPy

fn pathc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pathc")).args(args).output().expect("pathc runs")
}

/// The interpreter from `PATHC_PYTHON` if it has NumPy; `None` (a note printed) when unset,
/// unless `PATHC_REQUIRE_PYTHON=1`.
fn python_interpreter() -> Option<String> {
    let required = std::env::var("PATHC_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    let Some(python) = std::env::var("PATHC_PYTHON").ok().filter(|p| !p.is_empty()) else {
        assert!(!required, "PATHC_REQUIRE_PYTHON=1 but PATHC_PYTHON is not set");
        eprintln!("note: PATHC_PYTHON is not set; skipping the generated Python's numbers");
        return None;
    };
    let ok = Command::new(&python).args(["-c", "import numpy"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!required, "PATHC_REQUIRE_PYTHON=1 but `{python} -c 'import numpy'` fails");
        eprintln!("note: `{python}` cannot import numpy; skipping the generated Python's numbers");
        return None;
    }
    Some(python)
}

struct Fixture {
    tokens: String,
    n: usize,
    weights: String,
    reference: Weights,
}

fn fixture(name: &'static str) -> Fixture {
    let dir = format!("tests/fixtures/{name}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/meta.json")).unwrap()).unwrap();
    let tokens: Vec<String> = meta["tokens"].as_array().unwrap().iter().map(|t| t.to_string()).collect();
    Fixture {
        n: tokens.len(),
        tokens: tokens.join(","),
        weights: format!("{dir}/model.safetensors"),
        reference: Weights::load(format!("{dir}/reference.safetensors").as_ref()).unwrap(),
    }
}

fn json(out: Output, what: &str) -> serde_json::Value {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Generates the module of `examples/{example}.tf` with `pathc codegen` into a temporary file.
fn generate_module(example: &str, extra: &[&str]) -> PathBuf {
    generate_module_of(&format!("examples/{example}.tf"), example, extra)
}

/// Generates the module of the model file `model` into a temporary file named after `tag`.
fn generate_module_of(model: &str, tag: &str, extra: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pathc-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{tag}{}.py", extra.join("").replace('-', "_")));
    let mut args = vec!["codegen", model, "--lang", "python", "-o", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = pathc(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    file
}

fn run_python(python: &str, module: &PathBuf, args: &[&str]) -> serde_json::Value {
    let out = Command::new(python).arg(module).args(args).output().expect("python runs");
    json(out, &format!("{} {args:?}", module.display()))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOL * b.abs().max(1.0)
}

/// The largest difference between two JSON values of the same shape (keys, lengths, strings
/// and integers equal), relative where |b| > 1.
fn json_diff(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> f64 {
    use serde_json::Value::*;
    match (a, b) {
        (Object(x), Object(y)) => {
            let (kx, ky): (Vec<_>, Vec<_>) = (x.keys().collect(), y.keys().collect());
            assert_eq!(kx, ky, "{at}: keys");
            x.iter().map(|(k, v)| json_diff(v, &y[k], &format!("{at}/{k}"))).fold(0.0, f64::max)
        }
        (Array(x), Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: length");
            x.iter().zip(y).enumerate().map(|(i, (p, q))| json_diff(p, q, &format!("{at}[{i}]"))).fold(0.0, f64::max)
        }
        (Number(x), Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            let d = (x - y).abs() / y.abs().max(1.0);
            assert!(close(x, y), "{at}: {x} vs {y}");
            d
        }
        _ => {
            assert_eq!(a, b, "{at}");
            0.0
        }
    }
}

fn rows(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap())).collect()
}

#[test]
fn generated_paths_match_pathc_and_the_fixtures() {
    let Some(python) = python_interpreter() else { return };
    for name in ["attn1", "attn2", "full2"] {
        let f = fixture(name);
        let module = generate_module(name, &[]);
        let ours = run_python(&python, &module, &[&f.weights, "--tokens", &f.tokens, "--pos", "all"]);
        let model = format!("examples/{name}.tf");
        let args =
            ["paths", &model, "--weights", &f.weights, "--tokens", &f.tokens, "--pos", "all", "--format", "json"];
        let theirs = json(pathc(&args), "pathc paths");
        let vs_pathc = json_diff(&ours, &theirs, name);

        let d_vocab = ours["paths"][0]["logits"][0].as_array().unwrap().len();
        let expected = f.reference.get("logits", &[f.n, d_vocab]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut total = vec![0.0; f.n * d_vocab];
        let mut vs_fixture: f64 = 0.0;
        for path in ours["paths"].as_array().unwrap() {
            let values = rows(&path["logits"]);
            total.iter_mut().zip(&values).for_each(|(t, v)| *t += v);
            let pname = path["name"].as_str().unwrap();
            if name != "full2" {
                let reference = f.reference.get(&format!("path/{pname}"), &[f.n, d_vocab]).unwrap();
                for (a, b) in values.iter().zip(&reference.data) {
                    assert!(close(*a, *b), "{name} {pname}: {a} vs {b}");
                    vs_fixture = vs_fixture.max((a - b).abs() / b.abs().max(1.0));
                }
            }
        }
        let mut sum_error: f64 = 0.0;
        for (a, b) in total.iter().zip(&expected.data) {
            assert!(close(*a, *b), "{name}: Σ paths {a} vs logits {b}");
            sum_error = sum_error.max((a - b).abs());
        }
        eprintln!(
            "{name}: paths vs pathc {vs_pathc:.2e}, vs fixture paths {vs_fixture:.2e}, Σ paths vs logits {sum_error:.2e}"
        );
    }
}

#[test]
fn generated_statistics_match_pathc_and_the_fixtures() {
    let Some(python) = python_interpreter() else { return };
    for name in ["attn1", "attn2", "full2"] {
        let f = fixture(name);
        let module = generate_module(name, &[]);
        let model = format!("examples/{name}.tf");
        for fold in [&[][..], &["--fold-ln"]] {
            let ours = run_python(&python, &module, &[&[&f.weights[..], "--stats"][..], fold].concat());
            let theirs = json(
                pathc(
                    &[&["stats", &model, "--weights", &f.weights, "--format", "json", "--precision", "f64"][..], fold]
                        .concat(),
                ),
                "pathc stats",
            );
            let d = json_diff(&ours, &theirs, name);
            eprintln!("{name} {fold:?}: statistics vs pathc {d:.2e}");
            if !fold.is_empty() {
                continue;
            }
            let mut vs_fixture: f64 = 0.0;
            for stat in ["comp_q", "comp_k", "comp_v", "ov_copying", "qk_copying", "ov_frobenius", "qk_frobenius"] {
                let values: Vec<f64> = flatten(&ours[stat]);
                let shape: Vec<usize> = shape_of(&ours[stat]);
                let expected = &f.reference.get(stat, &shape).unwrap().data;
                assert_eq!(values.len(), expected.len());
                for (a, b) in values.iter().zip(expected) {
                    assert!(close(*a, *b), "{name} {stat}: {a} vs {b}");
                    vs_fixture = vs_fixture.max((a - b).abs() / b.abs().max(1.0));
                }
            }
            eprintln!("{name}: statistics vs fixture {vs_fixture:.2e}");
        }
    }
}

fn flatten(v: &serde_json::Value) -> Vec<f64> {
    match v {
        serde_json::Value::Array(items) => items.iter().flat_map(flatten).collect(),
        x => vec![x.as_f64().unwrap()],
    }
}

fn shape_of(v: &serde_json::Value) -> Vec<usize> {
    match v {
        serde_json::Value::Array(items) => {
            let mut shape = vec![items.len()];
            shape.extend(items.first().map_or(Vec::new(), shape_of));
            shape
        }
        _ => Vec::new(),
    }
}

#[test]
fn generated_subset_matches_pathc_filtered() {
    let Some(python) = python_interpreter() else { return };
    let f = fixture("attn2");
    let module = generate_module("attn2", &["--max-order", "1", "--through", "L1H2"]);
    for pos in ["all", "last", "3"] {
        let ours = run_python(&python, &module, &[&f.weights, "--tokens", &f.tokens, "--pos", pos]);
        let args = ["paths", "examples/attn2.tf", "--weights", &f.weights, "--tokens", &f.tokens];
        let mut theirs =
            json(pathc(&[&args[..], &["--pos", pos, "--max-order", "1", "--format", "json"]].concat()), "pathc");
        let kept: Vec<serde_json::Value> = theirs["paths"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"].as_str().unwrap().split('/').any(|h| h == "L1H2"))
            .cloned()
            .collect();
        let names: Vec<&str> = kept.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["E/L1H2", "P/L1H2"]);
        theirs["paths"] = serde_json::Value::Array(kept);
        let d = json_diff(&ours, &theirs, "attn2 subset");
        eprintln!("attn2 --max-order 1 --through L1H2 --pos {pos}: vs pathc {d:.2e}");
    }
}

// ------------------------------------------- the architecture options, against their fixtures

/// The fixtures of the model language's architecture options (TransformerLens 2.18 and
/// HuggingFace, `tests/fixtures/make_arch_fixtures.py`).
const ARCH_FIXTURES: [&str; 11] = [
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
];

/// The fixtures of the block options (`tests/fixtures/make_block_fixtures.py`): norms of every
/// kind, gated MLPs, solu_ln, the other GELUs, parallel layers (two norms or one shared), and the
/// processed and unprocessed twins; the `hf_*` ones with HuggingFace's own logits and patterns.
const BLOCK_FIXTURES: [&str; 16] = [
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
    "hf_llama",
    "hf_gptj",
    "hf_gptj_shared",
];

/// Every fixture the generated module is compared with, architecture options then blocks.
fn numeric_fixtures() -> impl Iterator<Item = &'static str> {
    ARCH_FIXTURES.into_iter().chain(BLOCK_FIXTURES)
}

/// An architecture fixture: its model file, tokens, attention mask, sizes and reference.
struct ArchFixture {
    name: &'static str,
    model: String,
    weights: String,
    tokens: Vec<u64>,
    mask: Option<Vec<u64>>,
    heads: Vec<usize>,
    d_model: usize,
    d_head: usize,
    d_vocab: usize,
    d_vocab_out: usize,
    path_names: Option<Vec<String>>,
    /// What each `component_logits` row is (`embed`, `0_attn_out`, `0_mlp_out`, ...).
    component_labels: Option<Vec<String>>,
    reference: Weights,
}

impl ArchFixture {
    fn load(name: &'static str) -> ArchFixture {
        let dir = format!("tests/fixtures/{name}");
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{dir}/meta.json")).unwrap()).unwrap();
        let ints =
            |v: &serde_json::Value| v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect::<Vec<_>>();
        let config = &meta["config"];
        let size = |key: &str| config[key].as_u64().unwrap() as usize;
        ArchFixture {
            name,
            model: format!("{dir}/model.tf"),
            weights: format!("{dir}/model.safetensors"),
            tokens: ints(&meta["tokens"]),
            mask: meta.get("attention_mask").map(ints),
            heads: vec![size("n_heads"); size("n_layers")],
            d_model: size("d_model"),
            d_head: size("d_head"),
            d_vocab: size("d_vocab"),
            d_vocab_out: size("d_vocab_out"),
            path_names: meta["path_names"]
                .as_array()
                .map(|names| names.iter().map(|n| n.as_str().unwrap().to_string()).collect()),
            component_labels: meta["component_logits_labels"]
                .as_array()
                .map(|names| names.iter().map(|n| n.as_str().unwrap().to_string()).collect()),
            reference: Weights::load(format!("{dir}/reference.safetensors").as_ref()).unwrap(),
        }
    }

    fn n(&self) -> usize {
        self.tokens.len()
    }

    fn list(values: &[u64]) -> String {
        values.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
    }

    /// `--tokens T --pos all [--attention-mask M]`, as both the module and `pathc paths` take them.
    fn run_args(&self) -> Vec<String> {
        let mut args = vec!["--tokens".to_string(), Self::list(&self.tokens), "--pos".into(), "all".into()];
        if let Some(mask) = &self.mask {
            args.extend(["--attention-mask".to_string(), Self::list(mask)]);
        }
        args
    }

    fn reference(&self, name: &str, shape: &[usize]) -> &[f64] {
        &self.reference.get(name, shape).unwrap_or_else(|e| panic!("{}: {e}", self.name)).data
    }
}

/// The largest difference of `ours` from `reference`, relative where |reference| > 1; fails
/// above [`TOL`].
fn max_error(ours: &[f64], reference: &[f64], what: &str) -> f64 {
    assert_eq!(ours.len(), reference.len(), "{what}: sizes");
    let mut worst: f64 = 0.0;
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert!(close(*a, *b), "{what}[{i}]: {a} vs {b}");
        worst = worst.max((a - b).abs() / b.abs().max(1.0));
    }
    worst
}

/// Runs the generated module's own forward pass (imported, not run as a script) on the weights as
/// loaded and norm-folded: logits, patterns, scores and MLP outputs (with `b_out`, TransformerLens's
/// `hook_mlp_out`) of each.
const FORWARD_SCRIPT: &str = r#"
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("generated", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
w = m.load_weights(sys.argv[2])
tokens, mask = json.loads(sys.argv[3]), json.loads(sys.argv[4])
out = {}
for key, weights in (("as_given", w), ("folded", m.fold_layer_norm(w))):
    f = m.forward(weights, tokens, mask)
    mlp_out = [None if o is None else (o + weights[f"blocks.{l}.mlp.b_out"]).tolist() for l, o in enumerate(f.mlp_out)]
    out[key] = {"logits": f.logits.tolist(), "patterns": [p.tolist() for p in f.patterns], "scores": [s.tolist() for s in f.scores], "mlp_out": mlp_out}
json.dump(out, sys.stdout)
"#;

#[test]
fn generated_paths_match_the_architecture_fixtures() {
    let Some(python) = python_interpreter() else { return };
    for name in numeric_fixtures() {
        let f = ArchFixture::load(name);
        let (n, out) = (f.n(), f.d_vocab_out);
        let module = generate_module_of(&f.model, name, &[]);
        let run = f.run_args();
        let run: Vec<&str> = run.iter().map(String::as_str).collect();

        // The contract: what `pathc paths --format json` prints.
        let ours = run_python(&python, &module, &[&[&f.weights[..]][..], &run].concat());
        let theirs = json(
            pathc(&[&["paths", &f.model, "--weights", &f.weights][..], &run, &["--format", "json"]].concat()),
            "pathc paths",
        );
        let vs_pathc = json_diff(&ours, &theirs, name);

        // The module's forward pass: logits, patterns and scores, as given and folded.
        let mask = f.mask.as_ref().map_or("null".to_string(), |m| format!("[{}]", ArchFixture::list(m)));
        let tokens = format!("[{}]", ArchFixture::list(&f.tokens));
        let output = Command::new(&python)
            .args(["-c", FORWARD_SCRIPT, module.to_str().unwrap(), &f.weights, &tokens, &mask])
            .output()
            .expect("python runs");
        let forward = json(output, &format!("{name}: the module's forward pass"));
        let mut vs_logits: f64 = 0.0;
        let mut vs_patterns: f64 = 0.0;
        let mut vs_scores: f64 = 0.0;
        let mut vs_mlp: Option<f64> = None;
        let mut vs_hf: Option<f64> = None;
        for key in ["as_given", "folded"] {
            let run = &forward[key];
            let what = format!("{name} ({key})");
            let logits = rows(&run["logits"]);
            vs_logits = vs_logits.max(max_error(&logits, f.reference("logits", &[n, out]), &format!("{what} logits")));
            // HuggingFace's own logits and patterns (its float32 steps made float64).
            if f.reference.contains("hf_logits") {
                let d = max_error(&logits, f.reference("hf_logits", &[n, out]), &format!("{what} hf_logits"));
                vs_hf = Some(vs_hf.unwrap_or(0.0).max(d));
            }
            for (l, &h) in f.heads.iter().enumerate() {
                let ours = flatten(&run["patterns"][l]);
                let pattern = f.reference(&format!("pattern.{l}"), &[h, n, n]);
                vs_patterns = vs_patterns.max(max_error(&ours, pattern, &format!("{what} pattern.{l}")));
                if f.reference.contains(&format!("hf_pattern.{l}")) {
                    let hf = f.reference(&format!("hf_pattern.{l}"), &[h, n, n]);
                    let d = max_error(&ours, hf, &format!("{what} hf_pattern.{l}"));
                    vs_hf = Some(vs_hf.unwrap_or(0.0).max(d));
                }
                let scores = f.reference(&format!("scores.{l}"), &[h, n, n]);
                vs_scores =
                    vs_scores.max(max_error(&flatten(&run["scores"][l]), scores, &format!("{what} scores.{l}")));
                // The MLP's output (gated, solu_ln, parallel), TransformerLens's hook_mlp_out.
                let mlp = format!("mlp_out.{l}");
                if f.reference.contains(&mlp) {
                    let ours = rows(&run["mlp_out"][l]);
                    let d = max_error(&ours, f.reference(&mlp, &[n, f.d_model]), &format!("{what} {mlp}"));
                    vs_mlp = Some(vs_mlp.unwrap_or(0.0).max(d));
                }
            }
        }

        // The paths: each against the fixture's where it has them, grouped by their last head
        // against `head_logits`, and their sum against the logits.
        let paths = ours["paths"].as_array().unwrap();
        let names: Vec<&str> = paths.iter().map(|p| p["name"].as_str().unwrap()).collect();
        if let Some(expected) = &f.path_names {
            assert_eq!(names, *expected, "{name}: the fixture's paths");
        }
        let layers = f.heads.len();
        let mut total = vec![0.0; n * out];
        let mut by_head = vec![vec![vec![0.0; n * out]; f.heads[0]]; layers];
        let mut vs_paths: f64 = 0.0;
        for path in paths {
            let values = rows(&path["logits"]);
            let pname = path["name"].as_str().unwrap();
            total.iter_mut().zip(&values).for_each(|(t, v)| *t += v);
            if let Some(last) = pname.rsplit('/').next().and_then(|h| h.strip_prefix('L')) {
                let (l, h) = last.split_once('H').unwrap();
                let sum = &mut by_head[l.parse::<usize>().unwrap()][h.parse::<usize>().unwrap()];
                sum.iter_mut().zip(&values).for_each(|(t, v)| *t += v);
            }
            if f.path_names.is_some() {
                let reference = f.reference(&format!("path/{pname}"), &[n, out]);
                vs_paths = vs_paths.max(max_error(&values, reference, &format!("{name} path {pname}")));
            }
        }
        let by_head: Vec<f64> = by_head.into_iter().flatten().flatten().collect();
        let vs_heads = max_error(&by_head, f.reference("head_logits", &[layers, f.heads[0], n, out]), name);
        let sum_error = max_error(&total, f.reference("logits", &[n, out]), &format!("{name}: Σ paths"));
        let mut vs_sum_hf = None;
        if f.reference.contains("hf_logits") {
            vs_sum_hf = Some(max_error(&total, f.reference("hf_logits", &[n, out]), &format!("{name}: Σ paths vs HF")));
        }
        // The MLP outputs are sources: the order-0 paths `M{l}` and `bout{l}` are the MLP's direct
        // share of the logits, `component_logits`' `{l}_mlp_out`, and `E` that of `embed`.
        let mut vs_components = None;
        if let Some(labels) = &f.component_labels {
            let components = f.reference("component_logits", &[labels.len(), n, out]);
            for (i, label) in labels.iter().enumerate() {
                let sources: Vec<String> = match label.strip_suffix("_mlp_out") {
                    Some(l) => vec![format!("M{l}"), format!("bout{l}")],
                    None if label == "embed" => vec!["E".to_string()],
                    None => continue,
                };
                let mut sum = vec![0.0; n * out];
                for path in paths.iter().filter(|p| sources.iter().any(|s| p["name"] == s.as_str())) {
                    sum.iter_mut().zip(rows(&path["logits"])).for_each(|(t, v)| *t += v);
                }
                let reference = &components[i * n * out..(i + 1) * n * out];
                let d = max_error(&sum, reference, &format!("{name}: {sources:?} vs component {label}"));
                vs_components = Some(vs_components.unwrap_or(0.0f64).max(d));
            }
        }
        let or_none = |x: Option<f64>| x.map_or("(none)".to_string(), |x| format!("{x:.1e}"));
        eprintln!(
            "{name}: {} paths; vs pathc {vs_pathc:.1e}; vs fixture: logits {vs_logits:.1e}, patterns {vs_patterns:.1e}, \
             scores {vs_scores:.1e}, mlp_out {}, paths {}, head_logits {vs_heads:.1e}, components {}, \
             Σ paths − logits {sum_error:.1e}; vs HuggingFace: logits and patterns {}, Σ paths {}",
            paths.len(),
            or_none(vs_mlp),
            or_none(f.path_names.is_some().then_some(vs_paths)),
            or_none(vs_components),
            or_none(vs_hf),
            or_none(vs_sum_hf),
        );
    }
}

/// `‖W_E·W_V·W_O·W_U‖_F` of every head, from the weights directly, in layer then head order.
fn ov_frobenius_directly(f: &ArchFixture) -> Vec<f64> {
    use pathc::eval::Matrix;
    let weights = Weights::load(f.weights.as_ref()).unwrap();
    let (d_model, d_head, out) = (f.d_model, f.d_head, f.d_vocab_out);
    let matrix = |name: &str, rows: usize, cols: usize| {
        Matrix::from_row_slice(rows, cols, &weights.get(name, &[rows, cols]).unwrap().data)
    };
    let (w_e, w_u) = (matrix("embed.W_E", f.d_vocab, d_model), matrix("unembed.W_U", d_model, out));
    let mut norms = Vec::new();
    for (l, &h) in f.heads.iter().enumerate() {
        let w_v = &weights.get(&format!("blocks.{l}.attn.W_V"), &[h, d_model, d_head]).unwrap().data;
        let w_o = &weights.get(&format!("blocks.{l}.attn.W_O"), &[h, d_head, d_model]).unwrap().data;
        let size = d_model * d_head;
        for i in 0..h {
            let v = Matrix::from_row_slice(d_model, d_head, &w_v[i * size..(i + 1) * size]);
            let o = Matrix::from_row_slice(d_head, d_model, &w_o[i * size..(i + 1) * size]);
            norms.push((&w_e * v * o * &w_u).norm());
        }
    }
    norms
}

#[test]
fn generated_statistics_match_the_architecture_fixtures() {
    let Some(python) = python_interpreter() else { return };
    for name in numeric_fixtures() {
        let f = ArchFixture::load(name);
        let module = generate_module_of(&f.model, name, &[]);
        let square = f.d_vocab_out == f.d_vocab;
        for fold in [&[][..], &["--fold-ln"]] {
            let mut ours = run_python(&python, &module, &[&[&f.weights[..], "--stats"][..], fold].concat());
            let mut theirs = json(
                pathc(
                    &[
                        &["stats", &f.model, "--weights", &f.weights, "--format", "json", "--precision", "f64"][..],
                        fold,
                    ]
                    .concat(),
                ),
                "pathc stats",
            );
            if !square {
                // The full OV circuit is d_vocab × d_vocab_out: no eigenvalues, no copying score.
                assert!(ours.get("ov_copying").is_none(), "{name}");
                let reason = ours["not_defined"]["ov_copying"].as_str().unwrap();
                assert!(reason.contains("not square"), "{name}: {reason}");
                // Its Frobenius norm is defined; `pathc stats` is compared on it only once it says
                // what is not defined, as the generated module does.
                let direct = ov_frobenius_directly(&f);
                let d = max_error(&flatten(&ours["ov_frobenius"]), &direct, &format!("{name} ov_frobenius"));
                eprintln!("{name} {fold:?}: ov_frobenius vs W_E·W_V·W_O·W_U directly {d:.1e}");
                if theirs.get("not_defined").is_none() {
                    eprintln!("note: `pathc stats` on {name} gives no `not_defined`: ov_copying and ov_frobenius not compared");
                    for x in [&mut ours, &mut theirs] {
                        let x = x.as_object_mut().unwrap();
                        for key in ["ov_copying", "ov_frobenius", "not_defined"] {
                            x.remove(key);
                        }
                    }
                }
            }
            let d = json_diff(&ours, &theirs, name);
            if !fold.is_empty() {
                eprintln!("{name} {fold:?}: statistics vs pathc {d:.1e}");
                continue;
            }
            let mut vs_fixture: f64 = 0.0;
            let mut stats = vec!["comp_q", "comp_k", "comp_v", "qk_copying", "qk_frobenius"];
            if square {
                stats.extend(["ov_copying", "ov_frobenius"]);
            }
            for stat in stats {
                let shape = shape_of(&ours[stat]);
                let values = flatten(&ours[stat]);
                vs_fixture = vs_fixture.max(max_error(&values, f.reference(stat, &shape), &format!("{name} {stat}")));
                // A rotary head's position-free QK statistics are those at offset 0.
                let at_0 = format!("{stat}@0");
                if f.reference.contains(&at_0) {
                    vs_fixture =
                        vs_fixture.max(max_error(&values, f.reference(&at_0, &shape), &format!("{name} {at_0}")));
                }
            }
            eprintln!("{name}: statistics vs pathc {d:.1e}, vs fixture {vs_fixture:.1e}");
        }
    }
}

#[test]
fn generated_module_refuses_attention_masks_as_pathc_does() {
    let Some(python) = python_interpreter() else { return };
    for (name, mask) in [
        ("causal_mask", "1,1,1"),
        ("causal_mask", "0,1,1,1,1,1,1,1,1,1"),
        ("bidir_mask", "0,0,0,0,0,0,0,0,0,0"),
        ("bidir_mask", "1,1,1,2,1,1,1,1,1,1"),
    ] {
        let f = ArchFixture::load(name);
        let module = generate_module_of(&f.model, name, &[]);
        let tokens = ArchFixture::list(&f.tokens);
        let args = ["--tokens", &tokens, "--attention-mask", mask];
        let ours = Command::new(&python).arg(&module).arg(&f.weights).args(args).output().unwrap();
        let theirs = pathc(&[&["paths", &f.model, "--weights", &f.weights][..], &args].concat());
        assert!(!ours.status.success() && !theirs.status.success(), "{name} {mask}");
        let (ours, theirs) = (String::from_utf8_lossy(&ours.stderr), String::from_utf8_lossy(&theirs.stderr));
        let message = |text: &str| -> String {
            let line = text.lines().find(|l| l.starts_with("error")).unwrap_or_default().to_string();
            // clap's wording around a bad value differs; what is wrong with it does not.
            line.rsplit(": ").next().unwrap_or_default().to_string()
        };
        assert_eq!(message(&ours), message(&theirs), "{name} {mask}: {ours} / {theirs}");
        eprintln!("{name} --attention-mask {mask}: {}", ours.trim());
    }
}

// ------------------------------------------------- TransformerLens's weight processing, refusals

/// `logits` with each position's mean over the outputs subtracted: what `center_unembed` makes of
/// them.
fn centred_rows(logits: &[f64], out: usize) -> Vec<f64> {
    logits
        .chunks(out)
        .flat_map(|row| {
            let mean = row.iter().sum::<f64>() / out as f64;
            row.iter().map(move |x| x - mean)
        })
        .collect()
}

#[test]
fn generated_module_processes_weights_as_pathc_does() {
    let Some(python) = python_interpreter() else { return };
    let cases: [(&str, &[&str]); 12] = [
        ("unprocessed", &["--fold-ln"]),
        ("unprocessed", &["--center-writing-weights"]),
        ("unprocessed", &["--center-unembed"]),
        ("unprocessed", &["--fold-value-biases"]),
        ("unprocessed", &["--fold-ln", "--fold-value-biases"]),
        ("unprocessed", &["--process-weights"]),
        ("gated_ln", &["--process-weights"]),
        ("solu", &["--process-weights"]),
        ("parallel", &["--process-weights"]),
        // Not fold_value_biases: GPT-J's attention declares no bias, so the expansion has no `bO`
        // path for the value biases (ln1's bias folded) to move into, in pathc as here.
        ("hf_gptj_shared", &["--fold-ln", "--center-writing-weights", "--center-unembed"]),
        ("rms", &["--fold-ln", "--center-unembed", "--fold-value-biases"]),
        ("rmspre_attn", &["--fold-ln", "--center-unembed"]),
    ];
    for (name, flags) in cases {
        let f = ArchFixture::load(name);
        let (n, out) = (f.n(), f.d_vocab_out);
        let module = generate_module_of(&f.model, name, &[]);
        let run = f.run_args();
        let run: Vec<&str> = run.iter().map(String::as_str).collect();
        let ours = run_python(&python, &module, &[&[&f.weights[..]][..], &run, flags].concat());
        let theirs = json(
            pathc(&[&["paths", &f.model, "--weights", &f.weights][..], &run, flags, &["--format", "json"]].concat()),
            "pathc paths",
        );
        let vs_pathc = json_diff(&ours, &theirs, &format!("{name} {flags:?}"));
        let mut total = vec![0.0; n * out];
        for path in ours["paths"].as_array().unwrap() {
            total.iter_mut().zip(rows(&path["logits"])).for_each(|(t, v)| *t += v);
        }
        // The processed model's logits: the same, but for center_unembed's shift of each position.
        let all = flags.contains(&"--process-weights");
        let logits = f.reference("logits", &[n, out]);
        let expected =
            if all || flags.contains(&"--center-unembed") { centred_rows(logits, out) } else { logits.to_vec() };
        let what = format!("{name} {flags:?}: Σ paths");
        let vs_logits = max_error(&total, &expected, &what);
        // TransformerLens's own processing of the same weights (in float64).
        let twin = match (name, flags) {
            ("unprocessed", ["--process-weights"]) => Some("processed"),
            ("unprocessed", ["--fold-ln"]) => Some("processed_fold_ln_only"),
            _ => None,
        };
        let mut vs_twin = String::new();
        if let Some(twin) = twin {
            let t = ArchFixture::load(twin);
            let d = max_error(&total, t.reference("logits_exact_processing", &[n, out]), &format!("{what} vs {twin}"));
            vs_twin = format!(", vs {twin}'s logits_exact_processing {d:.1e}");
        }
        eprintln!(
            "{name} {flags:?}: vs pathc {vs_pathc:.1e}, Σ paths vs the (centred) logits {vs_logits:.1e}{vs_twin}"
        );
    }
}

/// The `error: ...` line of a failed run.
fn error_line(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines().find(|l| l.starts_with("error")).unwrap_or_default().to_string()
}

#[test]
fn generated_module_refuses_processing_as_pathc_does() {
    let Some(python) = python_interpreter() else { return };
    let cases: [(&str, &[&str], &str); 4] = [
        ("rms", &["--center-writing-weights"], "it needs a LayerNorm (layernorm or layernorm(pre)) before every"),
        ("rmspre_attn", &["--process-weights"], "it needs a LayerNorm"),
        ("hf_llama", &["--process-weights"], "it needs a LayerNorm"),
        ("shortformer", &["--process-weights"], "it would centre a shortformer's W_pos"),
    ];
    for (name, flags, says) in cases {
        let f = ArchFixture::load(name);
        let module = generate_module_of(&f.model, name, &[]);
        let run = f.run_args();
        let run: Vec<&str> = run.iter().map(String::as_str).collect();
        let ours = Command::new(&python).arg(&module).arg(&f.weights).args(&run).args(flags).output().unwrap();
        let theirs = pathc(&[&["paths", &f.model, "--weights", &f.weights][..], &run, flags].concat());
        assert!(!ours.status.success() && !theirs.status.success(), "{name} {flags:?}");
        let line = error_line(&ours);
        assert_eq!(line, error_line(&theirs), "{name} {flags:?}");
        assert!(line.starts_with("error: cannot apply center_writing_weights: ") && line.contains(says), "{line}");
        eprintln!("{name} {flags:?}: {line}");
    }
    // The module's --stats takes only --fold-ln (`pathc stats` takes every step) and says so.
    let f = ArchFixture::load("unprocessed");
    let module = generate_module_of(&f.model, "unprocessed", &[]);
    for flag in ["--center-unembed", "--process-weights"] {
        let ours = Command::new(&python).arg(&module).args([&f.weights, "--stats", flag]).output().unwrap();
        assert!(!ours.status.success(), "--stats {flag}");
        assert!(error_line(&ours).contains("--stats takes only --fold-ln"), "{}", error_line(&ours));
    }
}

#[test]
fn generated_module_refuses_norm_and_mlp_tensors_as_pathc_does() {
    let Some(python) = python_interpreter() else { return };
    // (fixture, edit of its model file, what both say about its weights)
    let cases: [(&str, (&str, &str), &str); 8] = [
        (
            "gated_ln",
            ("    layernorm\n    attn(", "    rmsnorm\n    attn("),
            "the weights have `blocks.0.ln1.b` but this norm is `rmsnorm`, which has no bias",
        ),
        (
            "unprocessed",
            ("    layernorm\n    mlp(", "    layernorm(pre)\n    mlp("),
            "the weights have `blocks.0.ln2.w` but this norm is `layernorm(pre)`, which has no weight",
        ),
        (
            "rms",
            ("rmsnorm(eps = 1e-6)\n    attn(", "rmsnorm(pre, eps = 1e-6)\n    attn("),
            "the weights have `blocks.0.ln1.w` but this norm is `rmsnorm(pre)`, which has no weight",
        ),
        (
            "rms",
            ("mlp(act = silu, gated)", "mlp(act = silu)"),
            "the weights have `blocks.0.mlp.W_gate` but layer 0's MLP is not gated",
        ),
        (
            "solu",
            ("mlp(act = solu_ln, bias)", "mlp(act = gelu, bias)"),
            "the weights have `blocks.0.mlp.ln.w` but layer 0's MLP has no norm inside",
        ),
        (
            "hf_gptj",
            ("    layernorm\n    mlp(", "    mlp("),
            "the weights have `blocks.0.ln2.w` but layer 0 declares no norm before the MLP",
        ),
        (
            "gated_ln",
            ("layernorm\nunembed", "unembed"),
            "the weights have `ln_final.w` but the model declares no final norm",
        ),
        (
            "gated_ln",
            ("    layernorm\n    attn(heads = 4, bias)", "    attn(heads = 4, bias)"),
            "the weights have `blocks.0.ln1.w` but layer 0 declares no norm before attention",
        ),
    ];
    let dir = std::env::temp_dir().join(format!("pathc-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (name, (from, to), says)) in cases.into_iter().enumerate() {
        let f = ArchFixture::load(name);
        let source = std::fs::read_to_string(&f.model).unwrap();
        assert!(source.contains(from), "{name}: no `{from}`");
        let model = dir.join(format!("edited_{i}_{name}.tf"));
        std::fs::write(&model, source.replacen(from, to, 1)).unwrap();
        let model = model.to_str().unwrap();
        let module = generate_module_of(model, &format!("edited_{i}_{name}"), &[]);
        let run = f.run_args();
        let ours = Command::new(&python).arg(&module).arg(&f.weights).args(&run).output().unwrap();
        let theirs = pathc(
            &[&["paths", model, "--weights", &f.weights][..], &run.iter().map(String::as_str).collect::<Vec<_>>()]
                .concat(),
        );
        assert!(!ours.status.success() && !theirs.status.success(), "{name} {to:?}");
        let want = format!("error: {says}");
        assert_eq!(error_line(&ours), want, "{name} {to:?}: the module");
        assert_eq!(error_line(&theirs), want, "{name} {to:?}: pathc");
    }
}
