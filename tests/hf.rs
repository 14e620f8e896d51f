//! HuggingFace model folders (`--weights DIR`) and `pathc import`, against HuggingFace's own
//! forward pass (`tests/fixtures/make_hf_fixtures.py`: float64, eager attention, HF's float32
//! internals replaced by float64 ones). Per folder: the imported model file (snapshotted), which
//! compiles; pathc's forward pass on the folder's weights (logits, every head's pattern) and the
//! sum of every path (the library, and `pathc check` on the folder) against HF's within 1e-9.
//! Then every refusal: an unknown `model_type`, each unsupported config key, a missing,
//! mis-shaped or unexpected tensor (named, expected and found), a bad index — each exit 2 on the
//! command line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pathc::eval::{self, Matrix, NameMap, PathEvaluator};
use pathc::weights::{WeightError, Weights};
use pathc::ExpandOptions;

const TOL: f64 = 1e-9;

/// Folders read by the safetensors reader (single file and sharded).
const SAFETENSORS: [&str; 7] =
    ["gpt2", "pythia", "neox_sequential_sharded", "gptj", "llama_sharded", "mistral", "qwen2"];
/// Folders holding `pytorch_model.bin` (a torch.save zip).
const BIN: [&str; 2] = ["gpt2_untied_bin", "llama_tied_bin"];

fn dir(name: &str) -> PathBuf {
    PathBuf::from(format!("tests/fixtures/hf/{name}"))
}

fn tokens(name: &str) -> Vec<usize> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir(name).join("meta.json")).unwrap()).unwrap();
    meta["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as usize).collect()
}

fn pathc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pathc")).args(args).output().expect("pathc runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pathc-hf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn max_diff(a: &Matrix, b: &Matrix) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b.iter()).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}

/// Imports, compiles, loads and runs one folder; compares with HF's reference. Returns the
/// largest errors (logits, patterns, sum of paths).
fn against_hf(name: &str) -> (f64, f64, f64) {
    let folder = dir(name);
    let text = pathc::import::import(&folder).unwrap();
    insta::assert_snapshot!(format!("import_{name}"), text);
    let compiled = pathc::compile(&text).unwrap_or_else(|e| panic!("{name}: the imported model compiles: {e:?}"));
    let params = pathc::load_params(&compiled, &folder, &NameMap::default()).unwrap();
    let tokens = tokens(name);
    let n = tokens.len();
    let forward = eval::forward(&params, &tokens).unwrap();
    let reference = Weights::load(&folder.join("reference.safetensors")).unwrap();
    let d_vocab = params.d_vocab_out();
    let logits = Matrix::from_row_slice(n, d_vocab, &reference.get("logits", &[n, d_vocab]).unwrap().data);
    let d_logits = max_diff(&forward.logits, &logits);
    let mut d_pattern: f64 = 0.0;
    for (l, heads) in forward.patterns.iter().enumerate() {
        let h = heads.len();
        let want = &reference.get(&format!("pattern.{l}"), &[h, n, n]).unwrap().data;
        for (i, got) in heads.iter().enumerate() {
            d_pattern = d_pattern.max(max_diff(got, &Matrix::from_row_slice(n, n, &want[i * n * n..(i + 1) * n * n])));
        }
    }
    // Every path, summed: HF's logits again.
    let expansion = pathc::expand_compiled(compiled, &ExpandOptions::default()).unwrap();
    let mut evaluator = PathEvaluator::new(&params, &forward);
    let mut total = Matrix::zeros(n, d_vocab);
    let mut count = 0usize;
    pathc::paths::for_each_path(&expansion.logits, &expansion.heads_per_layer(), None, |p| {
        total += evaluator.logits(&p);
        count += 1;
    });
    let d_paths = max_diff(&total, &logits);
    eprintln!("{name}: |pathc − HF| logits {d_logits:.2e}, patterns {d_pattern:.2e}, Σ {count} paths {d_paths:.2e}");
    assert!(d_logits <= TOL && d_pattern <= TOL && d_paths <= TOL, "{name}: {d_logits} {d_pattern} {d_paths}");
    (d_logits, d_pattern, d_paths)
}

#[test]
fn every_safetensors_folder_matches_huggingface() {
    for name in SAFETENSORS {
        against_hf(name);
    }
}

/// `pathc import` reads only config.json: the `pytorch_model.bin` folders import (snapshotted)
/// and compile whatever reads their weights.
#[test]
fn pytorch_model_bin_folders_import() {
    for name in BIN {
        let text = pathc::import::import(&dir(name)).unwrap();
        insta::assert_snapshot!(format!("import_{name}"), text);
        pathc::compile(&text).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
}

#[test]
fn every_pytorch_model_bin_folder_matches_huggingface() {
    for name in BIN {
        against_hf(name);
    }
}

/// `pathc import -o` then `pathc check` on the folder, and `stats`, `paths` and `plan` with the
/// folder as `--weights`: the command line end to end.
#[test]
fn the_command_line_imports_and_checks_every_folder() {
    let out_dir = scratch("cli");
    for name in SAFETENSORS {
        let folder = dir(name);
        let model = out_dir.join(format!("{name}.tf"));
        let o = pathc(&["import", folder.to_str().unwrap(), "-o", model.to_str().unwrap()]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert_eq!(std::fs::read_to_string(&model).unwrap(), pathc::import::import(&folder).unwrap());
        let tokens: Vec<String> = tokens(name).iter().map(usize::to_string).collect();
        let tokens = tokens.join(",");
        let (m, w) = (model.to_str().unwrap(), folder.to_str().unwrap());
        let o = pathc(&["check", m, "--weights", w, "--tokens", &tokens, "--tol", "1e-9"]);
        assert!(o.status.success(), "{name}: check: {}", stderr(&o));
        for args in [
            vec!["paths", m, "--weights", w, "--tokens", &tokens],
            vec!["stats", m, "--weights", w],
            vec!["plan", m, "--weights", w],
        ] {
            let o = pathc(&args);
            assert!(o.status.success(), "{name}: {}: {}", args[0], stderr(&o));
        }
    }
    let _ = std::fs::remove_dir_all(&out_dir);
}

/// What the views present: TransformerLens's names and layouts, equal element for element to the
/// HF tensors transposed, split and reshaped by hand here.
#[test]
fn views_are_transformer_lens_layouts_of_the_hf_tensors() {
    // GPT-2: c_attn [d_model, 3·d_model] → W_K[h, m, j] = c_attn[m, d_model + h·d_head + j]; tied W_U.
    let w = Weights::load(&dir("gpt2")).unwrap();
    let raw = Weights::load(&dir("gpt2").join("model.safetensors")).unwrap();
    let c_attn = raw.get("transformer.h.1.attn.c_attn.weight", &[16, 48]).unwrap();
    let w_k = w.get("blocks.1.attn.W_K", &[4, 16, 4]).unwrap();
    for (h, m, j) in [(0, 0, 0), (3, 15, 3), (2, 7, 1)] {
        assert_eq!(w_k.data[(h * 16 + m) * 4 + j], c_attn.data[m * 48 + 16 + h * 4 + j]);
    }
    let wte = raw.get("transformer.wte.weight", &[23, 16]).unwrap();
    let w_u = w.get("unembed.W_U", &[16, 23]).unwrap();
    assert!((0..16).all(|m| (0..23).all(|v| w_u.data[m * 23 + v] == wte.data[v * 16 + m])));
    // A column block of W_U is read as a row block of the embedding, and equals the whole's.
    let block = w.columns("unembed.W_U", [16, 23], 5, 7).unwrap();
    assert!((0..16).all(|m| (0..7).all(|c| block[m * 7 + c] == w_u.data[m * 23 + 5 + c])));
    assert!(!w.contains("blocks.0.attn.W_gate") && w.contains("pos_embed.W_pos"));
    // NeoX: query_key_value rows (head, q/k/v, d_head) → W_V[h, m, j] = qkv[(3h + 2)·d_head + j, m].
    let w = Weights::load(&dir("pythia")).unwrap();
    let raw = Weights::load(&dir("pythia").join("model.safetensors")).unwrap();
    let qkv = raw.get("gpt_neox.layers.0.attention.query_key_value.weight", &[48, 16]).unwrap();
    let w_v = w.get("blocks.0.attn.W_V", &[4, 16, 4]).unwrap();
    for (h, m, j) in [(0, 0, 0), (3, 15, 3), (1, 9, 2)] {
        assert_eq!(w_v.data[(h * 16 + m) * 4 + j], qkv.data[((3 * h + 2) * 4 + j) * 16 + m]);
    }
    // Llama, sharded, grouped: _W_K [2, 16, 4] from k_proj [8, 16]; W_O[h, j, m] = o_proj[m, h·4 + j].
    let w = Weights::load(&dir("llama_sharded")).unwrap();
    assert!(w.contains("blocks.1.attn._W_K") && !w.contains("blocks.1.attn.W_K"));
    let o = w.get("blocks.1.attn.W_O", &[4, 4, 16]).unwrap().clone();
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir("llama_sharded").join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let shard = index["weight_map"]["model.layers.1.self_attn.o_proj.weight"].as_str().unwrap();
    let raw = Weights::load(&dir("llama_sharded").join(shard)).unwrap();
    let o_proj = raw.get("model.layers.1.self_attn.o_proj.weight", &[16, 16]).unwrap();
    assert!((0..4)
        .all(|h| (0..4).all(|j| (0..16).all(|m| o.data[(h * 4 + j) * 16 + m] == o_proj.data[m * 16 + h * 4 + j]))));
    // Qwen2: b_O is zero (o_proj has no bias), b_Q is q_proj.bias by head.
    let w = Weights::load(&dir("qwen2")).unwrap();
    assert!(w.get("blocks.0.attn.b_O", &[16]).unwrap().data.iter().all(|&x| x == 0.0));
    assert!(w.get("blocks.0.attn.b_Q", &[4, 4]).unwrap().data.iter().any(|&x| x != 0.0));
}

// ---------------------------------------------------------------------------------------------
// Refusals

/// A copy of fixture `name` (config, weights) in a scratch folder, `edit` applied to its config.
fn edited(name: &str, tag: &str, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> PathBuf {
    let d = scratch(tag);
    for entry in std::fs::read_dir(dir(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, d.join(path.file_name().unwrap())).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(d.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    d
}

/// Both the library's `import` and `load` refuse the folder (a bad config) with `needle` in the
/// message, and the command line (`import`, and `check` with the folder as weights) exits 2
/// saying it.
fn refused(folder: &Path, needle: &str) {
    let import = pathc::import::import(folder).unwrap_err().to_string();
    assert!(import.contains(needle), "import: {import}");
    let o = pathc(&["import", folder.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(needle), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    // `-o` is left as it was, and no temporary file stays behind.
    let out = folder.join("existing.tf");
    std::fs::write(&out, "kept\n").unwrap();
    let before = std::fs::read_dir(folder).unwrap().count();
    let o = pathc(&["import", folder.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "kept\n");
    assert_eq!(std::fs::read_dir(folder).unwrap().count(), before);
    weights_refused(folder, needle);
}

/// `Weights::load` refuses the folder with `needle` in the message, and `pathc check` with the
/// folder as weights exits 2 saying it. The folder is removed.
fn weights_refused(folder: &Path, needle: &str) {
    let load = Weights::load(folder).unwrap_err().to_string();
    assert!(load.contains(needle), "load: {load}");
    let o = pathc(&["check", "examples/attn1.tf", "--weights", folder.to_str().unwrap(), "--tokens", "1,2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(needle), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(folder);
}

#[test]
fn an_unknown_model_type_is_refused() {
    let d = edited("gpt2", "unknown", |c| {
        c.insert("model_type".into(), "bert".into());
    });
    refused(&d, "model_type `bert` is not supported");
    let d = edited("gpt2", "no-type", |c| {
        c.remove("model_type");
    });
    refused(&d, "has no `model_type`");
}

#[test]
fn config_keys_that_change_the_computation_are_refused() {
    let cases: Vec<(&str, &str, serde_json::Value, &str)> = vec![
        ("llama_sharded", "rope_scaling", serde_json::json!({"rope_type": "linear", "factor": 2.0}), "`rope_scaling`"),
        ("gpt2", "scale_attn_by_inverse_layer_idx", true.into(), "`scale_attn_by_inverse_layer_idx` = true"),
        ("gpt2", "add_cross_attention", true.into(), "`add_cross_attention` = true"),
        ("mistral", "sliding_window", 4.into(), "`sliding_window` = 4"),
        ("llama_sharded", "partial_rotary_factor", 0.5.into(), "`partial_rotary_factor` = 0.5"),
        ("llama_sharded", "hidden_act", "quick_gelu".into(), "`hidden_act` = \"quick_gelu\""),
        ("gpt2", "activation_function", "gelu_10".into(), "`activation_function` = \"gelu_10\""),
        ("llama_sharded", "mlp_bias", true.into(), "`mlp_bias` = true"),
        ("qwen2", "use_sliding_window", true.into(), "`use_sliding_window` = true"),
        ("pythia", "rope_theta", 500.into(), "`rope_theta` = 500"),
        ("mistral", "qk_layernorm", true.into(), "`qk_layernorm` = true"),
        ("gpt2", "n_head", 3.into(), "`n_head` is 3"),
        ("llama_sharded", "num_key_value_heads", 3.into(), "`num_key_value_heads` is 3"),
        ("gpt2", "n_embd", (-4).into(), "`n_embd` is -4"),
    ];
    for (i, (name, key, value, needle)) in cases.into_iter().enumerate() {
        let d = edited(name, &format!("key{i}"), |c| {
            c.insert(key.into(), value);
        });
        refused(&d, needle);
    }
    // Mistral's default window (4096, absent from the config) is shorter than its default
    // context (131072): refused too.
    let d = edited("mistral", "window-default", |c| {
        c.remove("sliding_window");
        c.remove("max_position_embeddings");
    });
    refused(&d, "`sliding_window` = (default)");
}

/// Rewrites the folder's `model.safetensors` with `edit` applied to its tensors (name → shape and
/// f32 data).
fn rewrite_tensors(folder: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) {
    let path = folder.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (name, view.shape().to_vec(), data)
        })
        .collect();
    edit(&mut tensors);
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.into_iter().map(|(n, s, d)| (n, s, d.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = raw
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn a_missing_tensor_is_named() {
    let d = edited("gpt2", "missing", |_| {});
    rewrite_tensors(&d, |t| t.retain(|(n, _, _)| n != "transformer.h.1.mlp.c_fc.bias"));
    let e = Weights::load(&d).unwrap_err();
    assert!(matches!(&e, WeightError::Missing { name, .. } if name == "transformer.h.1.mlp.c_fc.bias"), "{e}");
    weights_refused(&d, "tensor `transformer.h.1.mlp.c_fc.bias` is missing");
    // Untied without lm_head.weight.
    let d = edited("mistral", "no-lm-head", |_| {});
    rewrite_tensors(&d, |t| t.retain(|(n, _, _)| n != "lm_head.weight"));
    weights_refused(&d, "tensor `lm_head.weight` is missing");
}

#[test]
fn a_mis_shaped_tensor_is_named_with_both_shapes() {
    // The config says 24 tokens, the embedding has 23.
    let d = edited("gpt2", "vocab", |c| {
        c.insert("vocab_size".into(), 24.into());
    });
    let e = Weights::load(&d).unwrap_err().to_string();
    assert_eq!(e, "tensor `transformer.wte.weight` has shape [23, 16], expected [24, 16]");
    let o = pathc(&["check", "examples/attn1.tf", "--weights", d.to_str().unwrap(), "--tokens", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(&e), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&d);
    // One tensor cut short: k_proj of 2 key/value heads must have 8 rows.
    let d = edited("qwen2", "kproj", |_| {});
    rewrite_tensors(&d, |t| {
        let k = t.iter_mut().find(|(n, _, _)| n == "model.layers.1.self_attn.k_proj.weight").unwrap();
        k.1 = vec![4, 16];
        k.2.truncate(64);
    });
    let e = Weights::load(&d).unwrap_err().to_string();
    assert_eq!(e, "tensor `model.layers.1.self_attn.k_proj.weight` has shape [4, 16], expected [8, 16]");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn an_unexpected_tensor_is_an_error_but_hf_buffers_are_not() {
    let d = edited("mistral", "extra", |_| {});
    rewrite_tensors(&d, |t| t.push(("model.layers.0.self_attn.q_norm.weight".into(), vec![4], vec![1.0; 4])));
    weights_refused(&d, "holds tensor `model.layers.0.self_attn.q_norm.weight`, which a `mistral` model does not have");
    // GPT-2's causal-mask buffers (older checkpoints saved them), and an old checkpoint's names
    // without the `transformer.` prefix, load as HF loads them.
    let d = edited("gpt2", "buffers", |_| {});
    rewrite_tensors(&d, |t| {
        for (n, _, _) in t.iter_mut() {
            *n = n.trim_start_matches("transformer.").to_string();
        }
        t.push(("h.0.attn.bias".into(), vec![1, 1, 12, 12], vec![1.0; 144]));
        t.push(("h.0.attn.masked_bias".into(), vec![], vec![-1e4]));
    });
    let w = Weights::load(&d).unwrap();
    let ours = w.get("blocks.0.attn.W_Q", &[4, 16, 4]).unwrap().data.clone();
    let theirs = Weights::load(&dir("gpt2")).unwrap().get("blocks.0.attn.W_Q", &[4, 16, 4]).unwrap().data.clone();
    assert_eq!(ours, theirs);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_bad_index_is_refused() {
    let d = edited("llama_sharded", "index", |_| {});
    let index_path = d.join("model.safetensors.index.json");
    let mut index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors".into();
    std::fs::write(&index_path, index.to_string()).unwrap();
    let e = Weights::load(&d).unwrap_err().to_string();
    assert!(e.contains("maps to `../elsewhere.safetensors`, which is not a file name in the folder"), "{e}");
    // A tensor a shard holds that the index does not map there.
    index["weight_map"].as_object_mut().unwrap().remove("model.norm.weight");
    std::fs::write(&index_path, index.to_string()).unwrap();
    let e = Weights::load(&d).unwrap_err().to_string();
    assert!(e.contains("holds tensor `model.norm.weight`, which the index does not map to it"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
    // A folder without config.json is not a model folder; one without weights says what it lacks.
    let d = scratch("empty");
    assert!(Weights::load(&d).unwrap_err().to_string().contains("without a config.json"));
    assert!(pathc::import::import(&d).unwrap_err().to_string().contains("has no config.json"));
    std::fs::copy(dir("gpt2").join("config.json"), d.join("config.json")).unwrap();
    assert!(Weights::load(&d).unwrap_err().to_string().contains("no weights"));
    let _ = std::fs::remove_dir_all(&d);
}

/// A tied folder may still carry `lm_head.weight` (a torch.save of tied parameters stores both):
/// HF ties it to the embedding at load, and so does pathc; an untied one reads it.
#[test]
fn tied_and_untied_unembeddings() {
    let tied = Weights::load(&dir("qwen2")).unwrap();
    let raw = Weights::load(&dir("qwen2").join("model.safetensors")).unwrap();
    let e = raw.get("model.embed_tokens.weight", &[25, 16]).unwrap();
    let u = tied.get("unembed.W_U", &[16, 25]).unwrap();
    assert!((0..16).all(|m| (0..25).all(|v| u.data[m * 25 + v] == e.data[v * 16 + m])));
    let d = edited("qwen2", "tied-copy", |_| {});
    rewrite_tensors(&d, |t| {
        let (_, shape, data) = t.iter().find(|(n, _, _)| n == "model.embed_tokens.weight").unwrap().clone();
        t.push(("lm_head.weight".into(), shape, data.iter().map(|x| x + 1.0).collect()));
    });
    let w = Weights::load(&d).unwrap();
    assert_eq!(w.get("unembed.W_U", &[16, 25]).unwrap().data, u.data);
    let _ = std::fs::remove_dir_all(&d);
    let untied = Weights::load(&dir("mistral")).unwrap();
    let raw = Weights::load(&dir("mistral").join("model.safetensors")).unwrap();
    let lm = raw.get("lm_head.weight", &[27, 16]).unwrap();
    let e = raw.get("model.embed_tokens.weight", &[27, 16]).unwrap();
    let u = untied.get("unembed.W_U", &[16, 27]).unwrap();
    assert!((0..16).all(|m| (0..27).all(|v| u.data[m * 27 + v] == lm.data[v * 16 + m])));
    assert_ne!(lm.data, e.data);
}

/// Malformed configs are errors, never panics: every prefix of a real one, wrong types, sizes
/// too large to address.
#[test]
fn malformed_configs_are_errors() {
    use pathc::weights::hf::config::parse;
    let text = std::fs::read_to_string(dir("llama_sharded").join("config.json")).unwrap();
    for end in (0..text.len()).filter(|&i| text.is_char_boundary(i)) {
        let _ = parse(&text[..end], "config.json");
    }
    assert!(parse(&text, "config.json").is_ok());
    for (bad, needle) in [
        ("not json", "is not valid JSON"),
        ("[1, 2]", "is not a JSON object"),
        (r#"{"model_type": 3}"#, "`model_type` is 3, expected a string"),
        (r#"{"model_type": "gpt2", "n_embd": "16"}"#, "`n_embd` is \"16\", expected a positive whole number"),
        (r#"{"model_type": "gpt2", "n_embd": 16.5}"#, "`n_embd` is 16.5"),
        (
            r#"{"model_type": "gpt2", "layer_norm_epsilon": -1}"#,
            "`layer_norm_epsilon` is -1, expected a positive number",
        ),
        (
            r#"{"model_type": "gpt2", "tie_word_embeddings": "yes"}"#,
            "`tie_word_embeddings` is \"yes\", expected true or false",
        ),
        (
            r#"{"model_type": "llama", "vocab_size": 4294967296, "hidden_size": 4294967296}"#,
            "`vocab_size` is 4294967296, expected sizes whose tensors fit",
        ),
        (
            r#"{"model_type": "gpt_neox", "hidden_size": 16, "num_attention_heads": 4, "rotary_pct": 0.3}"#,
            "`rotary_pct` is 0.3",
        ),
        (r#"{"model_type": "gptj", "n_embd": 16, "n_head": 4, "rotary_dim": 6}"#, "`rotary_dim` is 6"),
    ] {
        let e = parse(bad, "config.json").unwrap_err().to_string();
        assert!(e.contains(needle), "{bad}: {e}");
    }
}
