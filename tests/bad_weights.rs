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

/// The attn1 fixture's tensors with `edit` applied to each (name, dtype, shape, bytes); `None`
/// drops the tensor.
fn edited_attn1(path: &Path, edit: impl Fn(Entry) -> Option<Entry>) {
    let bytes = std::fs::read("tests/fixtures/attn1/model.safetensors").unwrap();
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
    edited_attn1(&file, |entry| (entry.0 != "unembed.W_U").then_some(entry));
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
    edited_attn1(&file, |(name, d, s, b)| {
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
        edited_attn1(&file, |(name, d, s, mut b)| {
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

#[test]
fn full_models_are_refused_before_reading_weights() {
    let out = pathc(&[
        "check",
        "examples/full2.tf",
        "--weights",
        "tests/fixtures/full2/model.safetensors",
        "--tokens",
        "1,2",
    ]);
    assert_bad(&out, &["pathc cannot expand the LayerNorm before attention in layer 0 yet"]);
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
    // A tolerance no floating-point sum can meet: the check runs and fails with exit 1.
    let strict = pathc(&[&args[..], &["--tol=-1"]].concat());
    assert_eq!(strict.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&strict.stdout).contains("FAILED: above --tol"));
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
}

/// Weights under other names are read through `--name` mappings, `{l}` standing for the layer.
#[test]
fn renamed_tensors_through_name_mappings() {
    let dir = temp_dir("renamed");
    let file = dir.join("w.safetensors");
    edited_attn1(&file, |(name, d, s, b)| {
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
