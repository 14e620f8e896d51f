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

/// Generates the module with `pathc codegen` into a temporary file.
fn generate_module(example: &str, extra: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pathc-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{example}{}.py", extra.join("").replace('-', "_")));
    let model = format!("examples/{example}.tf");
    let mut args = vec!["codegen", &model, "--lang", "python", "-o", file.to_str().unwrap()];
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
                pathc(&[&["stats", &model, "--weights", &f.weights, "--format", "json"][..], fold].concat()),
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
