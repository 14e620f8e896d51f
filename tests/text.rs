//! `pathc::text` against the Python tokenizers library, transformers and TransformerLens
//! (`tests/fixtures/make_text_fixtures.py` wrote their results into
//! `tests/fixtures/text/encodings.json`): the ids of every sentence with and without the BOS, the
//! token strings, one-token targets and the pieces of the others, which token is the BOS and
//! whether it is prepended by default; TransformerLens's logits on a text; bad tokenizer files.

use std::path::{Path, PathBuf};

use pathc::text::{BosSource, PrependBosWhy, TextError, Tokenizer};
use serde_json::Value;

const DIR: &str = "tests/fixtures/text";

fn encodings() -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/encodings.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn strings(v: &Value) -> Vec<Option<String>> {
    v.as_array().unwrap().iter().map(|x| Some(x.as_str().unwrap().to_string())).collect()
}

fn load(path: &str) -> Tokenizer {
    Tokenizer::load(Path::new(path)).unwrap()
}

/// A fresh directory under the system's temporary one.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pathc-text-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_sentence_encodes_as_the_tokenizers_library_and_transformer_lens_encode_it() {
    let e = encodings();
    let base = load(&format!("{DIR}/tokenizer.json"));
    let template = load(&format!("{DIR}/bos_template/tokenizer.json"));
    let sentences = e["sentences"].as_array().unwrap();
    assert!(sentences.len() >= 20);
    for s in sentences {
        let text = s["text"].as_str().unwrap();
        let tl = &s["tl"];
        // The library's own encode (add_special_tokens=True; this tokenizer adds nothing).
        assert_eq!(base.encode(text, false).unwrap(), ids(&s["ids"]), "{text:?}");
        assert_eq!(base.encode(text, false).unwrap(), ids(&tl["to_tokens_no_bos"]), "{text:?}");
        assert_eq!(base.encode(text, true).unwrap(), ids(&tl["to_tokens_bos"]), "{text:?} with the BOS");
        // Each id decoded alone, by transformers and by TransformerLens's to_str_tokens.
        let str_tokens = base.str_tokens(&ids(&s["ids"]));
        assert_eq!(str_tokens, strings(&s["decoded"]), "{text:?}");
        assert_eq!(str_tokens, strings(&tl["to_str_tokens_no_bos"]), "{text:?}");
        let prompt = base.tokenize(text, None).unwrap();
        assert_eq!(prompt.ids, ids(&tl["to_tokens_bos"]), "{text:?}");
        assert_eq!(prompt.str_tokens, strings(&tl["to_str_tokens_bos"]), "{text:?}");
        let prompt = base.tokenize(text, Some(false)).unwrap();
        assert_eq!(prompt.str_tokens, strings(&tl["to_str_tokens_no_bos"]), "{text:?}");

        // A tokenizer that prepends its BOS itself: never a second one, and removed when asked.
        let t = &s["bos_template"];
        assert_eq!(template.encode(text, true).unwrap(), ids(&t["ids"]), "{text:?}");
        assert_eq!(template.encode(text, true).unwrap(), ids(&t["tl"]["to_tokens_bos"]), "{text:?}");
        assert_eq!(template.encode(text, false).unwrap(), ids(&t["tl"]["to_tokens_no_bos"]), "{text:?}");
        let prompt = template.tokenize(text, None).unwrap();
        assert_eq!(prompt.str_tokens, strings(&t["tl"]["to_str_tokens_bos"]), "{text:?}");
    }
    // The hard cases are there: the empty text, newlines, emoji split inside a character.
    let texts: Vec<&str> = sentences.iter().map(|s| s["text"].as_str().unwrap()).collect();
    assert!(texts.contains(&"") && texts.iter().any(|t| t.contains('\n')) && texts.iter().any(|t| t.contains('🎉')));
    assert!(base.str_tokens(&base.encode("🎉", false).unwrap()).contains(&Some("�".to_string())));
}

#[test]
fn bos_and_its_default_are_transformer_lens_s() {
    let e = encodings();
    let base = load(&format!("{DIR}/tokenizer.json"));
    let template = load(&format!("{DIR}/bos_template/tokenizer.json"));
    assert_eq!(base.prepends_bos(), e["tokenizer_prepends_bos"]["tokenizer.json"].as_bool().unwrap());
    assert_eq!(template.prepends_bos(), e["tokenizer_prepends_bos"]["bos_template/tokenizer.json"].as_bool().unwrap());
    let bos = base.bos().unwrap();
    assert_eq!(bos.id as u64, e["bos_token_id"]["tokenizer.json"].as_u64().unwrap());
    assert_eq!(bos.token, "<|endoftext|>");
    assert_eq!(bos.from, BosSource::TokenizerConfig(PathBuf::from(format!("{DIR}/tokenizer_config.json"))));
    let bos = template.bos().unwrap();
    assert_eq!(bos.id as u64, e["bos_token_id"]["bos_template/tokenizer.json"].as_u64().unwrap());
    assert_eq!(bos.from, BosSource::Tokenizer);
    let default = base.default_prepend_bos();
    assert_eq!(default.value, e["default_prepend_bos"].as_bool().unwrap());
    assert_eq!(default.why, PrependBosWhy::TransformerLensDefault);
    assert_eq!(base.vocab_size(), e["vocab_size"].as_u64().unwrap() as usize);
}

/// Without a tokenizer_config.json, config.json's bos_token_id, else the only special token,
/// else an error naming the special tokens; an architecture TransformerLens gives no BOS.
#[test]
fn bos_from_each_place_in_order() {
    let tokenizer = std::fs::read(format!("{DIR}/tokenizer.json")).unwrap();
    let alone = temp_dir("alone");
    std::fs::write(alone.join("tokenizer.json"), &tokenizer).unwrap();
    let t = Tokenizer::load(&alone.join("tokenizer.json")).unwrap();
    assert_eq!(t.bos().unwrap().from, BosSource::OnlySpecialToken);
    assert_eq!(t.bos().unwrap().id, 0);

    std::fs::write(alone.join("config.json"), r#"{"architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 12}"#)
        .unwrap();
    let t = Tokenizer::load(&alone.join("tokenizer.json")).unwrap();
    assert_eq!(t.bos().unwrap().from, BosSource::ModelConfig(alone.join("config.json")));
    assert_eq!((t.bos().unwrap().id, t.bos().unwrap().token.as_str()), (12, ","));
    assert_eq!(t.encode(" Mary", true).unwrap(), [12, 373]);
    assert!(t.default_prepend_bos().value);

    std::fs::write(alone.join("config.json"), r#"{"architectures": ["Qwen2ForCausalLM"], "bos_token_id": null}"#)
        .unwrap();
    let t = Tokenizer::load(&alone.join("tokenizer.json")).unwrap();
    let default = t.default_prepend_bos();
    assert_eq!(default.to_string(), "false (TransformerLens's default for Qwen2ForCausalLM)");
    let prompt = t.tokenize(" Mary", None).unwrap();
    assert_eq!(prompt.ids, [373]);

    // A tokenizer_config.json without a BOS: its EOS, as TransformerLens's set_tokenizer.
    std::fs::write(
        alone.join("tokenizer_config.json"),
        r#"{"bos_token": null, "eos_token": {"content": "<|endoftext|>"}}"#,
    )
    .unwrap();
    let t = Tokenizer::load(&alone.join("tokenizer.json")).unwrap();
    assert_eq!(t.bos().unwrap().from, BosSource::TokenizerConfig(alone.join("tokenizer_config.json")));

    std::fs::write(alone.join("tokenizer_config.json"), r#"{"bos_token": "<s>"}"#).unwrap();
    let err = Tokenizer::load(&alone.join("tokenizer.json")).unwrap_err();
    assert!(matches!(err, TextError::UnknownBos { .. }), "{err}");
    assert!(
        err.to_string()
            .ends_with(&format!("the BOS token \"<s>\" is not a token of {}", alone.join("tokenizer.json").display())),
        "{err}"
    );
    std::fs::write(alone.join("tokenizer_config.json"), "{").unwrap();
    let err = Tokenizer::load(&alone.join("tokenizer.json")).unwrap_err();
    assert!(err.to_string().contains("tokenizer_config.json: not valid JSON"), "{err}");
    std::fs::remove_file(alone.join("tokenizer_config.json")).unwrap();
    std::fs::write(alone.join("config.json"), r#"{"bos_token_id": 100000}"#).unwrap();
    let err = Tokenizer::load(&alone.join("tokenizer.json")).unwrap_err();
    let want = format!("bos_token_id 100000 is not an id of {} (400 tokens)", alone.join("tokenizer.json").display());
    assert!(err.to_string().ends_with(&want), "{err}");
    std::fs::write(alone.join("config.json"), r#"{"bos_token_id": "zero"}"#).unwrap();
    let err = Tokenizer::load(&alone.join("tokenizer.json")).unwrap_err();
    assert!(err.to_string().ends_with("\"bos_token_id\" is \"zero\", not a token id"), "{err}");
    std::fs::remove_dir_all(&alone).unwrap();

    // Two special tokens and nothing beside the tokenizer: no BOS, but text without one works.
    let t = load(&format!("{DIR}/two_specials/tokenizer.json"));
    let err = t.tokenize(" Mary", None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no BOS token to prepend: tests/fixtures/text/two_specials/tokenizer.json has 2 special tokens \
         (\"<|endoftext|>\", \"<|pad|>\") and no tokenizer_config.json (bos_token) or config.json (bos_token_id) \
         beside it names one; pass --prepend-bos false, or put a tokenizer_config.json with \"bos_token\" beside it"
    );
    assert_eq!(t.tokenize(" Mary", Some(false)).unwrap().ids, [373]);
}

#[test]
fn single_tokens_and_the_pieces_of_the_others() {
    let e = encodings();
    let base = load(&format!("{DIR}/tokenizer.json"));
    for (text, id) in e["single_tokens"].as_object().unwrap() {
        assert_eq!(base.single_token(text).unwrap() as u64, id.as_u64().unwrap(), "{text:?}");
    }
    for (text, split) in e["multi_tokens"].as_object().unwrap() {
        match base.single_token(text).unwrap_err() {
            TextError::NotOneToken { text: t, pieces } => {
                assert_eq!(&t, text);
                assert_eq!(pieces.iter().map(|p| p.0).collect::<Vec<_>>(), ids(&split["ids"]));
                assert_eq!(pieces.iter().map(|p| p.1.clone()).collect::<Vec<_>>(), strings(&split["str_tokens"]));
            }
            other => panic!("{text:?}: {other}"),
        }
    }
    assert_eq!(
        base.single_token("").unwrap_err().to_string(),
        "\"\" is no token at all: the tokenizer encodes it as nothing"
    );
    // Ids the tokenizer does not have (the model's d_vocab is larger) have no string.
    assert_eq!(base.str_token(401), None);
    assert_eq!(base.str_token(usize::MAX), None);
}

/// The text through the model: pathc's ids and forward pass against TransformerLens's
/// `to_tokens(text)` and its float64 logits.
#[test]
fn the_model_on_a_text_gives_transformer_lens_s_logits() {
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/meta.json")).unwrap()).unwrap();
    let tokenizer = load(&format!("{DIR}/tokenizer.json"));
    let prompt = tokenizer.tokenize(meta["text"].as_str().unwrap(), None).unwrap();
    assert_eq!(prompt.ids, ids(&meta["tokens"]));
    assert_eq!(prompt.str_tokens, strings(&meta["str_tokens"]));
    let compiled = pathc::compile(&std::fs::read_to_string(format!("{DIR}/model.tf")).unwrap()).unwrap();
    let params =
        pathc::load_params(&compiled, format!("{DIR}/model.safetensors").as_ref(), &Default::default()).unwrap();
    let forward = pathc::eval::forward(&params, &prompt.ids).unwrap();
    let reference = pathc::weights::Weights::load(format!("{DIR}/reference.safetensors").as_ref()).unwrap();
    let n = prompt.ids.len();
    let logits = reference.get("logits", &[n, 402]).unwrap();
    let mut worst = 0.0f64;
    for p in 0..n {
        for t in 0..402 {
            worst = worst.max((forward.logits[(p, t)] - logits.data[p * 402 + t]).abs());
        }
    }
    assert!(worst < 1e-9, "max |pathc − TransformerLens| = {worst:e}");
}

/// Bad tokenizer files are errors naming the file, never panics: missing, a directory, empty,
/// not JSON, JSON of another shape, and every 97th prefix of the fixture's tokenizer.json.
#[test]
fn bad_tokenizer_files_are_errors() {
    let dir = temp_dir("bad");
    let err = Tokenizer::load(&dir.join("missing.json")).unwrap_err();
    assert!(err.to_string().starts_with(&format!("cannot read {}", dir.join("missing.json").display())), "{err}");
    let err = Tokenizer::load(&dir).unwrap_err();
    assert!(matches!(err, TextError::Read { .. }), "{err}");
    for (name, bytes) in [
        ("empty.json", &b""[..]),
        ("text.json", b"hello"),
        ("array.json", b"[1, 2, 3]"),
        ("object.json", b"{\"model\": {\"type\": \"BPE\", \"vocab\": 3}}"),
        ("binary.json", b"\xff\xfe\x00\x01"),
    ] {
        std::fs::write(dir.join(name), bytes).unwrap();
        let err = Tokenizer::load(&dir.join(name)).unwrap_err();
        assert!(matches!(err, TextError::Parse { .. }), "{name}: {err}");
        assert!(err.to_string().contains(&format!("{} is not a tokenizer.json", dir.join(name).display())), "{err}");
    }
    let good = std::fs::read(format!("{DIR}/tokenizer.json")).unwrap();
    let path = dir.join("tokenizer.json");
    for cut in (0..good.len()).step_by(97) {
        let result = Tokenizer::from_parts(&good[..cut], &path, None, None);
        assert!(matches!(result, Err(TextError::Parse { .. })), "prefix of {cut} bytes");
    }
    assert!(Tokenizer::from_parts(&good, &path, None, None).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The default tokenizer: the --weights folder's tokenizer.json; none for a file or a folder
/// without one, and then an error saying to pass --tokenizer.
#[test]
fn the_tokenizer_of_a_weights_folder() {
    let dir = temp_dir("folder");
    assert_eq!(Tokenizer::beside_weights(&dir), None);
    let err = Tokenizer::require(None, Some(&dir)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "--text needs a tokenizer: pass --tokenizer tokenizer.json (HuggingFace's format); the --weights folder {} has no tokenizer.json",
            dir.display()
        )
    );
    let weights_file = Path::new("tests/fixtures/text/model.safetensors");
    assert_eq!(Tokenizer::beside_weights(weights_file), None);
    let err = Tokenizer::require(None, Some(weights_file)).unwrap_err();
    assert!(err.to_string().ends_with("or give --weights a model folder that has one"), "{err}");
    std::fs::copy(format!("{DIR}/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    assert_eq!(Tokenizer::beside_weights(&dir), Some(dir.join("tokenizer.json")));
    let t = Tokenizer::require(None, Some(&dir)).unwrap();
    assert_eq!(t.path(), dir.join("tokenizer.json"));
    // An explicit --tokenizer wins.
    let t = Tokenizer::require(Some(Path::new("tests/fixtures/text/bos_template/tokenizer.json")), Some(&dir)).unwrap();
    assert!(t.prepends_bos());
    std::fs::remove_dir_all(&dir).unwrap();
}
