//! Bad input to the numeric commands: each is a clear error naming what is wrong (tensor,
//! expected, found), exit code 2, nothing on stdout, no panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

const ATTN1_TOKENS: &str = "3,7,1,19,3,7,2,0,11,3";

fn pathc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pathc")).args(args).output().expect("pathc runs")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pathc-bad-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// The fixture's tensors with `edit` applied to each (name, dtype, shape, bytes); `None` drops
/// the tensor.
fn edited(fixture: &str, path: &Path, edit: impl Fn(Entry) -> Option<Entry>) {
    let bytes = std::fs::read(format!("tests/fixtures/{fixture}/model.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let owned: Vec<Entry> = file
        .tensors()
        .into_iter()
        .filter_map(|(name, view)| edit((name, view.dtype(), view.shape().to_vec(), view.data().to_vec())))
        .collect();
    let views: Vec<(String, TensorView<'_>)> =
        owned.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn assert_bad(out: &Output, expected: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert!(!err.contains("panicked"), "{err}");
    for e in expected {
        assert!(err.contains(e), "expected {e:?} in: {err}");
    }
}

fn check(weights: &Path, tokens: &str) -> Output {
    pathc(&["check", "examples/attn1.tf", "--weights", weights.to_str().unwrap(), "--tokens", tokens])
}

#[test]
fn missing_tensor() {
    let dir = temp_dir("missing");
    let file = dir.join("w.safetensors");
    edited("attn1", &file, |entry| (entry.0 != "unembed.W_U").then_some(entry));
    assert_bad(&check(&file, ATTN1_TOKENS), &["tensor `unembed.W_U` is missing"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn wrong_shape_names_expected_and_found() {
    let out = pathc(&[
        "check",
        "examples/attn2.tf",
        "--weights",
        "tests/fixtures/attn1/model.safetensors",
        "--tokens",
        "1,2",
    ]);
    assert_bad(&out, &["tensor `embed.W_E` has shape [20, 16], expected [50, 32]"]);
}

#[test]
fn wrong_dtype() {
    let dir = temp_dir("dtype");
    let file = dir.join("w.safetensors");
    edited("attn1", &file, |(name, d, s, b)| {
        if name == "embed.W_E" {
            let n: usize = s.iter().product();
            Some((name, Dtype::BOOL, s, vec![1u8; n]))
        } else {
            Some((name, d, s, b))
        }
    });
    assert_bad(&check(&file, ATTN1_TOKENS), &["tensor `embed.W_E` has dtype BOOL"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn nan_and_infinity() {
    for (tag, value) in [("nan", f32::NAN), ("inf", f32::INFINITY)] {
        let dir = temp_dir(tag);
        let file = dir.join("w.safetensors");
        edited("attn1", &file, |(name, d, s, mut b)| {
            if name == "blocks.0.attn.W_V" {
                b[4..8].copy_from_slice(&value.to_le_bytes());
            }
            Some((name, d, s, b))
        });
        let shown = if value.is_nan() { "NaN" } else { "inf" };
        assert_bad(&check(&file, ATTN1_TOKENS), &["tensor `blocks.0.attn.W_V` holds", shown, "[0, 0, 1]"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn stats_reports_a_nan_in_a_matrix_it_streams() {
    // `pathc stats` reads W_E and W_U a chunk at a time and never converts them whole: the
    // check for NaN happens chunk by chunk and still names the tensor and the element.
    let dir = temp_dir("stats-nan");
    let file = dir.join("w.safetensors");
    edited("attn1", &file, |(name, d, s, mut b)| {
        if name == "unembed.W_U" {
            let at = (2 * s[1] + 5) * 4;
            b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
        Some((name, d, s, b))
    });
    let out = pathc(&["stats", "examples/attn1.tf", "--weights", file.to_str().unwrap()]);
    assert_bad(&out, &["tensor `unembed.W_U` holds NaN at [2, 5]"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn truncated_and_corrupt_files() {
    let dir = temp_dir("truncated");
    let bytes = std::fs::read("tests/fixtures/attn1/model.safetensors").unwrap();
    let file = dir.join("w.safetensors");
    for cut in [4, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&file, &bytes[..cut]).unwrap();
        assert_bad(&check(&file, ATTN1_TOKENS), &["is truncated"]);
    }
    std::fs::write(&file, b"this is not a weights file at all").unwrap();
    assert_bad(&check(&file, ATTN1_TOKENS), &["is not a valid weights file"]);
    assert_bad(
        &check(Path::new("no/such/weights.safetensors"), ATTN1_TOKENS),
        &["cannot read no/such/weights.safetensors"],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_tokens_and_positions() {
    let w = Path::new("tests/fixtures/attn1/model.safetensors");
    assert_bad(&check(w, "3,20,1"), &["token 20 at position 1 is out of range: d_vocab is 20"]);
    assert_bad(&check(w, "1,2,3,4,5,6,7,8,9,10,11,12,13"), &["13 tokens are more than the context length n_ctx = 12"]);
    let base = ["examples/attn1.tf", "--weights", "tests/fixtures/attn1/model.safetensors", "--tokens"];
    let run = |command: &str, tokens: &str, extra: &[&str]| pathc(&[&[command][..], &base, &[tokens], extra].concat());
    assert_bad(&run("paths", "1,2", &["--pos", "2"]), &["position 2 is out of range for 2 tokens"]);
    assert_bad(&run("paths", "1,2", &["--target", "20"]), &["--target 20 is out of range: d_vocab is 20"]);
    let out = run("check", "1,x", &[]);
    assert_eq!(out.status.code(), Some(2), "clap rejects a non-number");
}

const FULL2_WEIGHTS: &str = "tests/fixtures/full2/model.safetensors";

/// `pathc check` of `examples/full2.tf` with `from` replaced by `to` (written into `dir`) against
/// `weights`; also the edited model's path and text.
fn check_edited_full2(dir: &Path, from: &str, to: &str, weights: &str) -> (Output, PathBuf, String) {
    let source = std::fs::read_to_string("examples/full2.tf").unwrap();
    assert!(source.contains(from), "examples/full2.tf no longer holds {from:?}");
    let edited = source.replacen(from, to, 1);
    let model = dir.join("model.tf");
    std::fs::write(&model, &edited).unwrap();
    let out = pathc(&["check", model.to_str().unwrap(), "--weights", weights, "--tokens", "1,2,3"]);
    (out, model, edited)
}

/// How the CLI shows a diagnostic at the first `needle` in `source`: `file:line:col`, and the
/// carets under it.
fn pointed_at(model: &Path, source: &str, needle: &str) -> [String; 2] {
    let offset = source.find(needle).unwrap_or_else(|| panic!("{needle:?} is not in the model"));
    let line_start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = source[..offset].matches('\n').count() + 1;
    let col = source[line_start..offset].chars().count() + 1;
    let carets = format!("| {}{} ", " ".repeat(col - 1), "^".repeat(needle.chars().count()));
    [format!("{}:{line}:{col}", model.display()), carets]
}

/// Full models load: every tensor of the full2 fixture is read and checked.
#[test]
fn full_models_load() {
    let out = pathc(&["stats", "examples/full2.tf", "--weights", FULL2_WEIGHTS, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A tensor in the weights that the model file does not declare (a LayerNorm, an MLP, a nonzero
/// bias) would be silently left out of every number: refused with exit 2, naming the tensor, with
/// `file:line:col` and a caret at the declaration to change, and what to write there.
#[test]
fn tensors_the_model_does_not_declare() {
    struct Case {
        /// Replace `.0` by `.1` in examples/full2.tf.
        edit: (&'static str, &'static str),
        message: &'static str,
        /// The declaration the caret is under, in the edited file.
        at: &'static str,
        help: &'static str,
    }
    let cases = [
        Case {
            edit: ("    layernorm\n    attn(", "    attn("),
            message: "the weights have `blocks.0.ln1.w` but layer 0 declares no norm before attention",
            at: "attn(heads = 4, bias)",
            help: "add `layernorm` before `attn(...)`",
        },
        Case {
            edit: ("    layernorm\n    mlp(", "    mlp("),
            message: "the weights have `blocks.0.ln2.w` but layer 0 declares no norm before the MLP",
            at: "mlp(act = gelu_new, bias)",
            help: "add `layernorm` before `mlp(...)`",
        },
        Case {
            edit: ("\nlayernorm\nunembed", "\nunembed"),
            message: "the weights have `ln_final.w` but the model declares no final norm",
            at: "unembed(bias)",
            help: "add `layernorm` before `unembed`",
        },
        Case {
            edit: ("    layernorm\n    mlp(act = gelu_new, bias)\n", ""),
            message: "the weights have `blocks.0.mlp.W_in` but layer 0 declares no MLP",
            at: "layer {",
            help: "add `layernorm` then `mlp(act = ...)` after `attn(...)`",
        },
        Case {
            edit: ("attn(heads = 4, bias)", "attn(heads = 4)"),
            message: "the weights have a nonzero `blocks.0.attn.b_Q` but layer 0's attention declares no bias",
            at: "attn(heads = 4)",
            help: "add `bias` to `attn(...)`: `attn(heads = 4, bias)`",
        },
        Case {
            edit: ("mlp(act = gelu_new, bias)", "mlp(act = gelu_new)"),
            message: "the weights have a nonzero `blocks.0.mlp.b_in` but layer 0's MLP declares no bias",
            at: "mlp(act = gelu_new)",
            help: "add `bias` to `mlp(...)`: `mlp(act = gelu_new, bias)`",
        },
        Case {
            edit: ("unembed(bias)", "unembed"),
            message: "the weights have a nonzero `unembed.b_U` but the unembedding declares no bias",
            at: "unembed",
            help: "write `unembed(bias)`",
        },
        // Issue 12: a norm tensor the declared kind has not.
        Case {
            edit: ("    layernorm\n    attn(", "    rmsnorm\n    attn("),
            message: "the weights have `blocks.0.ln1.b` but this norm is `rmsnorm`, which has no bias",
            at: "rmsnorm",
            help: "declare the norm the weights are for, e.g. `layernorm` (TransformerLens LN)",
        },
        Case {
            edit: ("    layernorm\n    mlp(", "    layernorm(pre)\n    mlp("),
            message: "the weights have `blocks.0.ln2.w` but this norm is `layernorm(pre)`, which has no weight",
            at: "layernorm(pre)",
            help: "declare the norm the weights are for, e.g. `layernorm`",
        },
        // Issue 17 (2): whole layers and embeddings the model leaves out.
        Case {
            edit: ("repeat 2 {", "repeat 1 {"),
            message: "the weights have `blocks.1.attn.W_Q` (layer 1) but the model declares 1 layer",
            at: "layer {",
            help: "the weights hold 2 layers: declare all of them (`repeat 2 { layer { ... } }`)",
        },
        Case {
            edit: ("pos_embed\n", ""),
            message: "the weights have `pos_embed.W_pos` but the model declares no positional embedding",
            at: "embed",
            help: "add `pos_embed` after `embed` (with `dim n_ctx = N`)",
        },
    ];
    let dir = temp_dir("undeclared");
    for case in cases {
        let (out, model, source) = check_edited_full2(&dir, case.edit.0, case.edit.1, FULL2_WEIGHTS);
        let [location, carets] = pointed_at(&model, &source, case.at);
        let help = format!("= help: {}", case.help);
        assert_bad(&out, &[&format!("error: {}\n", case.message), &location, &carets, &help]);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// TransformerLens stores all-zero biases for models without them: those load (attn1 and attn2
/// hold zero `b_Q` ... `b_U`), but one nonzero element is refused.
#[test]
fn an_undeclared_bias_may_only_be_zero() {
    assert_eq!(check(Path::new("tests/fixtures/attn1/model.safetensors"), ATTN1_TOKENS).status.code(), Some(0));
    let dir = temp_dir("nonzero-bias");
    let file = dir.join("w.safetensors");
    edited("attn1", &file, |(name, d, s, mut b)| {
        if name == "blocks.0.attn.b_O" {
            b[8..12].copy_from_slice(&1e-6f32.to_le_bytes());
        }
        Some((name, d, s, b))
    });
    let [location, carets] = pointed_at(
        Path::new("examples/attn1.tf"),
        &std::fs::read_to_string("examples/attn1.tf").unwrap(),
        "attn(heads = 2)",
    );
    assert_bad(
        &check(&file, ATTN1_TOKENS),
        &["a nonzero `blocks.0.attn.b_O` but layer 0's attention declares no bias", &location, &carets],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Declared but wrong: a shape against the model's `d_mlp`, a LayerNorm missing from the file.
#[test]
fn full_model_tensors_of_the_wrong_shape_or_missing() {
    let dir = temp_dir("full2-shapes");
    let (out, ..) = check_edited_full2(&dir, "dim d_mlp   = 64", "dim d_mlp   = 48", FULL2_WEIGHTS);
    assert_bad(&out, &["tensor `blocks.0.mlp.W_in` has shape [32, 64], expected [32, 48]"]);
    let file = dir.join("w.safetensors");
    edited("full2", &file, |entry| (entry.0 != "blocks.1.ln2.w").then_some(entry));
    let out = pathc(&["check", "examples/full2.tf", "--weights", file.to_str().unwrap(), "--tokens", "1,2,3"]);
    assert_bad(&out, &["tensor `blocks.1.ln2.w` is missing from", "similar names:", "`blocks.1.ln2.b`"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn symbolic_dimensions_cannot_be_evaluated() {
    let out = pathc(&[
        "check",
        "examples/attn-only-2l.tf",
        "--weights",
        "tests/fixtures/attn2/model.safetensors",
        "--tokens",
        "1",
    ]);
    assert_bad(&out, &["dimension `d_model` is symbolic"]);
}

#[test]
fn check_passes_and_fails_by_tolerance() {
    let args = [
        "check",
        "examples/attn2.tf",
        "--weights",
        "tests/fixtures/attn2/model.safetensors",
        "--tokens",
        "5,17,42,8,5,17,42,8,30,1,5,17",
    ];
    let ok = pathc(&args);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(text.contains("50 paths (every order)") && text.contains("ok: within --tol"), "{text}");
    // A tolerance this floating-point sum does not meet (its error is 2.2e-15): the check runs and
    // fails with exit 1.
    let strict = pathc(&[&args[..], &["--tol=0"]].concat());
    assert_eq!(strict.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&strict.stdout).contains("FAILED: above --tol"));
    // Issue 17 (3): a tolerance every comparison fails (NaN) or none can pass (negative, infinite)
    // is refused before anything runs.
    for bad in ["--tol=NaN", "--tol=-1", "--tol=-0.5e-9", "--tol=inf", "--tol=x"] {
        let out = pathc(&[&args[..], &[bad]].concat());
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(out.stdout.is_empty(), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value"), "{bad}");
    }
}

#[test]
fn scores_command_reports_its_sum() {
    let base =
        ["scores", "examples/attn2.tf", "--weights", "tests/fixtures/attn2/model.safetensors", "--tokens", "5,17,42,8"];
    let out = pathc(&[&base[..], &["--head", "L1H2", "--format", "json"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["terms"].as_array().unwrap().len(), 100);
    assert!(json["max_abs_error"].as_f64().unwrap() < 1e-12);
    assert_eq!(json["terms"][0]["scores"].as_array().unwrap().len(), 4);
    assert_bad(&pathc(&[&base[..], &["--head", "L2H0"]].concat()), &["--head L2H0 is not a head of this model"]);
    // Issue 17 (11): a well-formed head out of range says the range; a malformed one how to write it.
    let cases = [
        ("L9H9", "--head L9H9 is not a head of this model: the model has 2 layers (L0 to L1)"),
        ("L1H9", "--head L1H9 is not a head of this model: layer 1 has 4 heads (H0 to H3)"),
        ("1.2", "--head 1.2: write a head as L1H2 (layer 1, head 2)"),
    ];
    for (head, message) in cases {
        assert_bad(&pathc(&[&base[..], &["--head", head]].concat()), &[message]);
    }
}

/// Issue 17 (11): `plot --target next` is the token after the plotted position (it used to say
/// "invalid digit found in string"); at the last position, which has none, an error saying so.
#[test]
fn plot_target_next_is_the_next_token() {
    let dir = temp_dir("plot-next");
    let svg = dir.join("p.svg");
    let base = [
        "plot",
        "examples/attn2.tf",
        "--weights",
        "tests/fixtures/attn2/model.safetensors",
        "--tokens",
        "5,17,42,8",
        "--what",
        "paths",
        "--target",
        "next",
        "-o",
        svg.to_str().unwrap(),
    ];
    let out = pathc(&[&base[..], &["--pos", "1"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("logit[42]") && text.contains("next token there"), "{text}");
    std::fs::remove_file(&svg).unwrap();
    let last = pathc(&base);
    assert_bad(&last, &["--target next: position 3 is the last of the 4 tokens", "give --pos a position before 3"]);
    assert!(!svg.exists());
    std::fs::remove_dir_all(dir).unwrap();
}

/// Weights under other names are read through `--name` mappings, `{l}` standing for the layer.
#[test]
fn renamed_tensors_through_name_mappings() {
    let dir = temp_dir("renamed");
    let file = dir.join("w.safetensors");
    edited("attn1", &file, |(name, d, s, b)| {
        let renamed = name.replace("blocks.0.attn.", "layers.0.").replace("embed.W_E", "tok_embeddings");
        Some((renamed, d, s, b))
    });
    let w = file.to_str().unwrap();
    let base = ["check", "examples/attn1.tf", "--weights", w, "--tokens", ATTN1_TOKENS];
    assert_bad(&pathc(&base), &["tensor `embed.W_E` is missing"]);
    let mapped = pathc(
        &[&base[..], &["--name", "embed.W_E=tok_embeddings", "--name", "blocks.{l}.attn.W_Q=layers.{l}.W_Q"]].concat(),
    );
    assert_bad(&mapped, &["tensor `blocks.0.attn.W_K` is missing"]);
    let all = ["W_Q", "W_K", "W_V", "W_O"].map(|w| format!("blocks.{{l}}.attn.{w}=layers.{{l}}.{w}"));
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--name", "embed.W_E=tok_embeddings"]);
    for a in &all {
        args.extend(["--name", a.as_str()]);
    }
    let ok = pathc(&args);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_bad(&pathc(&[&base[..], &["--name", "embed.W_E"]].concat()), &["bad --name mapping `embed.W_E`"]);
    // Issue 17 (3): a mapping that matches nothing, or a name mapped twice, is never ignored.
    for command in ["check", "stats"] {
        let mut unused = args.clone();
        unused[0] = command;
        if command == "stats" {
            unused.drain(4..6);
        }
        unused.extend(["--name", "foo=bar"]);
        assert_bad(&pathc(&unused), &["bad --name mapping `foo=bar`: this model reads no tensor `foo`"]);
    }
    let twice = [&base[..], &["--name", "embed.W_E=tok_embeddings", "--name", "embed.W_E=other"]].concat();
    assert_bad(
        &pathc(&twice),
        &["bad --name mapping `embed.W_E=other`: `embed.W_E` is mapped twice (first to `tok_embeddings`)"],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn stats_json_has_the_documented_keys() {
    let out = pathc(&[
        "stats",
        "examples/attn2.tf",
        "--weights",
        "tests/fixtures/attn2/model.safetensors",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["ov_copying", "qk_copying", "ov_frobenius", "qk_frobenius"] {
        let rows = json[key].as_array().unwrap_or_else(|| panic!("{key}"));
        assert_eq!((rows.len(), rows[0].as_array().unwrap().len()), (2, 4), "{key} is [L][H]");
    }
    for key in ["comp_q", "comp_k", "comp_v"] {
        assert_eq!(json[key][0][1][1].as_array().unwrap().len(), 4, "{key} is [L][H][L][H]");
        assert_eq!(json[key][1][0][0][0], 0.0, "{key}: zero unless layer_left < layer_right");
    }
    let out = pathc(&["stats", "examples/attn2.tf", "--weights", "tests/fixtures/attn1/model.safetensors"]);
    assert_bad(&out, &["tensor `embed.W_E` has shape [20, 16], expected [50, 32]"]);
}

/// Issue 17 (1): weights that are finite but huge (every `W_*` of attn2 at 1e38 in f32) overflow
/// f64 in the computation. Every command that computes numbers stops with exit 2 and says where
/// the first non-finite value arose; `check` never says ok, nothing prints `inf` or `NaN`.
#[test]
fn values_that_overflow_in_the_computation_are_errors_naming_where() {
    let dir = temp_dir("overflow");
    let file = dir.join("w.safetensors");
    edited("attn2", &file, |(name, d, s, b)| {
        let huge = if name.contains(".W_") { b.chunks(4).flat_map(|_| 1e38f32.to_le_bytes()).collect() } else { b };
        Some((name, d, s, huge))
    });
    let w = file.to_str().unwrap();
    let tokens = "5,17,42,8,5,17,42,8,30,1,5,17";
    // The second layer's scores are the first to overflow: (1e38⁴ · d_model)² is past f64.
    let forward = ["arose in the attention scores of L1H0 at query position 0, key position 0", "overflows f64"];
    for args in [
        &["check", "examples/attn2.tf", "--weights", w, "--tokens", tokens][..],
        &["check", "examples/attn2.tf", "--weights", w, "--tokens", tokens, "--format", "json"],
        &["paths", "examples/attn2.tf", "--weights", w, "--tokens", tokens, "--target", "42"],
        &["paths", "examples/attn2.tf", "--weights", w, "--tokens", tokens, "--group", "head"],
        &["scores", "examples/attn2.tf", "--weights", w, "--tokens", tokens, "--head", "L1H2"],
        &["plot", "examples/attn2.tf", "--weights", w, "--tokens", tokens, "--what", "paths", "-o", "/dev/null"],
    ] {
        let out = pathc(args);
        assert_bad(&out, &forward);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("ok"), "{args:?}: {err}");
    }
    // The statistics never run the model: their own products overflow, named by statistic and head.
    for args in [
        &["stats", "examples/attn2.tf", "--weights", w][..],
        &["stats", "examples/attn2.tf", "--weights", w, "--format", "json"],
        &["plot", "examples/attn2.tf", "--weights", w, "--what", "comp-q", "-o", "/dev/null"],
    ] {
        assert_bad(&pathc(args), &["arose in the", "of head L0H0", "overflows f64"]);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Within one layer, the first non-finite value is reported at its earliest position; a NaN in
/// the sum of paths can never be a passing `check` (its maximum used to skip NaN).
#[test]
fn check_cannot_pass_on_a_non_finite_error() {
    use pathc::linalg::{max_abs, NonFinite};
    assert!(max_abs([1.0, f64::NAN, 3.0].iter()).is_nan());
    assert!(max_abs([f64::NAN].iter()).is_nan());
    assert_eq!(max_abs([-4.0, 3.0].iter()), 4.0);
    let m = pathc::eval::Matrix::from_row_slice(2, 3, &[1.0, 2.0, 3.0, f64::INFINITY, 5.0, f64::NAN]);
    let e = pathc::linalg::finite(&m, |i, j| format!("m at {i}, {j}")).unwrap_err();
    assert_eq!(e, NonFinite { value: f64::INFINITY, at: "m at 1, 0".into() });
    let m = pathc::eval::Matrix::from_row_slice(2, 2, &[1.0, f64::NAN, f64::INFINITY, 0.0]);
    assert_eq!(pathc::linalg::finite(&m, |i, j| format!("{i},{j}")).unwrap_err().at, "0,1");
}

/// Issue 17 (11): a safetensors header that names a tensor twice is refused as such (a JSON
/// parser keeps one of the two, which would silently drop the other and then report its bytes as
/// a gap between the tensors).
#[test]
fn a_tensor_named_twice_in_a_safetensors_header_is_refused() {
    let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&[0; 8]);
    let error =
        pathc::weights::Weights::from_bytes(&file, "twice.safetensors").map(|_| ()).expect_err("refused").to_string();
    assert!(error.contains("names tensor `a` twice"), "{error}");
    let dir = temp_dir("named-twice");
    let path = dir.join("w.safetensors");
    std::fs::write(&path, &file).unwrap();
    let error = pathc::weights::Weights::load(&path).map(|_| ()).expect_err("refused").to_string();
    assert!(error.contains("names tensor `a` twice"), "{error}");
    std::fs::remove_dir_all(dir).unwrap();
}
