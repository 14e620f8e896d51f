//! Text ⇄ token ids, as TransformerLens's `to_tokens` and `to_str_tokens` make them: a
//! HuggingFace `tokenizer.json` read by the `tokenizers` crate (the library transformers' fast
//! tokenizers run), and the beginning-of-sequence token TransformerLens puts in front.
//!
//! **Prepending the BOS.** TransformerLens prepends a BOS token to a text unless told not to
//! (`default_prepend_bos`: true, except for the architectures in [`NO_BOS_ARCHITECTURES`]), and never
//! twice: a tokenizer whose post-processor puts a token in front of every text by itself (it
//! encodes the empty text as one token, TransformerLens's `tokenizer_prepends_bos`) is left to do
//! so, and with `prepend_bos = false` that first token is removed. Otherwise TransformerLens
//! prepends the BOS token's text to the text (`bos_token + text`) before encoding; so does
//! [`Tokenizer::encode`] when the BOS is one of the tokenizer's added tokens (it is then split off
//! as itself), and puts the BOS id in front of the text's ids when it is not.
//!
//! **Which token is the BOS**, in this order ([`BosSource`]):
//! 1. the token the tokenizer prepends itself, if it does;
//! 2. `bos_token` of the `tokenizer_config.json` beside `tokenizer.json` (what transformers'
//!    `tokenizer.bos_token` is), else its `eos_token` (TransformerLens's `set_tokenizer` uses the
//!    EOS where a tokenizer has no BOS);
//! 3. `bos_token_id` of the `config.json` beside it (a HuggingFace model folder's);
//! 4. the tokenizer's only special token, if it has exactly one (GPT-2's `<|endoftext|>`).
//!
//! Otherwise there is no BOS ([`TextError::NoBos`]): the text can still be encoded without one.
//!
//! **Token strings** are each id decoded on its own, special tokens kept (TransformerLens's
//! `to_str_tokens`): a byte-level piece that is part of a longer UTF-8 character decodes to `�`.
//!
//! ```
//! use pathc::text::Tokenizer;
//!
//! let tokenizer = Tokenizer::load("tests/fixtures/text/tokenizer.json".as_ref()).unwrap();
//! let prompt = tokenizer.tokenize("When Mary and John went to the store, John gave a drink to", None).unwrap();
//! let prepend = prompt.prepend_bos.unwrap();
//! assert!(prepend.value); // TransformerLens's default
//! assert_eq!(prepend.to_string(), "true (TransformerLens's default)");
//! assert_eq!(prompt.ids[0], 0); // <|endoftext|>, GPT-2's BOS
//! assert_eq!(prompt.str_tokens[..3], [Some("<|endoftext|>".into()), Some("When".into()), Some(" Mary".into())]);
//! let mary = tokenizer.single_token(" Mary").unwrap();
//! assert_eq!(prompt.ids[2], mary);
//! let err = tokenizer.single_token(" Mary Ann").unwrap_err();
//! assert_eq!(err.to_string(), r#"" Mary Ann" is not one token: it splits into 2 tokens: 373 " Mary", 383 " Ann""#);
//! ```

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The architectures (`config.json`'s `architectures`) for which TransformerLens's
/// `default_prepend_bos` is false (its `loading_from_pretrained.py`); true for every other.
pub const NO_BOS_ARCHITECTURES: &[&str] =
    &["BloomForCausalLM", "QWenLMHeadModel", "Qwen2ForCausalLM", "Qwen3ForCausalLM"];

/// The largest `tokenizer.json` read (Llama 3's is 9 MB, Gemma 3's 33 MB); only this much is read.
pub const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

/// The largest `tokenizer_config.json` or `config.json` read.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// What went wrong reading a tokenizer or turning text into tokens.
#[derive(Debug, Error)]
pub enum TextError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is larger than {limit} bytes: not a tokenizer.json", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{} is not a tokenizer.json the tokenizers library can load: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// A `tokenizer_config.json` or `config.json` beside the tokenizer that cannot be used.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// No tokenizer to encode text with.
    #[error("{}", no_tokenizer(weights))]
    NoTokenizer { weights: Option<PathBuf> },
    /// Nothing says which token is the BOS (see the module documentation).
    #[error(
        "no BOS token to prepend: {} {} and no tokenizer_config.json (bos_token) or config.json (bos_token_id) beside it names one; pass --prepend-bos false, or put a tokenizer_config.json with \"bos_token\" beside it",
        path.display(),
        match special.len() { 0 => "has no special token".to_string(), n => format!("has {n} special tokens ({})", special.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")) }
    )]
    NoBos { path: PathBuf, special: Vec<String> },
    /// The BOS a config names is not a token of the tokenizer.
    #[error("{}: the BOS token {} is not a token of {}", config.display(), quote(token), tokenizer.display())]
    UnknownBos { config: PathBuf, token: String, tokenizer: PathBuf },
    /// `config.json`'s `bos_token_id` is not an id of the tokenizer.
    #[error("{}: bos_token_id {id} is not an id of {} ({size} tokens)", config.display(), tokenizer.display())]
    BosIdOutOfRange { config: PathBuf, id: u64, tokenizer: PathBuf, size: usize },
    /// A text asked to be one token (`--target " Mary"`) that is several.
    #[error("{} is not one token: it splits into {} tokens: {}", quote(text), pieces.len(), pieces.iter().map(|(id, s)| format!("{id} {}", s.as_deref().map_or("(no string)".to_string(), quote))).collect::<Vec<_>>().join(", "))]
    NotOneToken { text: String, pieces: Vec<(usize, Option<String>)> },
    /// A text asked to be one token that is none (the empty text).
    #[error("{} is no token at all: the tokenizer encodes it as nothing", quote(text))]
    NoToken { text: String },
    #[error("the tokenizer cannot encode the text: {message}")]
    Encode { message: String },
}

fn no_tokenizer(weights: &Option<PathBuf>) -> String {
    let base = "--text needs a tokenizer: pass --tokenizer tokenizer.json (HuggingFace's format)";
    match weights {
        Some(w) => format!("{base}; the --weights folder {} has no tokenizer.json", w.display()),
        None => format!("{base}, or give --weights a model folder that has one"),
    }
}

/// `s` in double quotes, with `\`, `"` and control characters escaped (`\n`, `\t`, `\r`, else
/// `\u{..}`); everything else as it is. How text outputs show a token's string.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether a BOS is prepended, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrependBos {
    pub value: bool,
    pub why: PrependBosWhy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrependBosWhy {
    /// Asked for (`--prepend-bos`).
    Given,
    /// TransformerLens's `default_prepend_bos` (true).
    TransformerLensDefault,
    /// TransformerLens's `default_prepend_bos` for this architecture (false: [`NO_BOS_ARCHITECTURES`]).
    TransformerLensDefaultFor(String),
}

impl fmt::Display for PrependBosWhy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrependBosWhy::Given => f.write_str("--prepend-bos"),
            PrependBosWhy::TransformerLensDefault => f.write_str("TransformerLens's default"),
            PrependBosWhy::TransformerLensDefaultFor(a) => write!(f, "TransformerLens's default for {a}"),
        }
    }
}

impl fmt::Display for PrependBos {
    /// `true (TransformerLens's default)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.value, self.why)
    }
}

/// Where the BOS token was found (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BosSource {
    /// The tokenizer's post-processor prepends it to every text.
    Tokenizer,
    /// `bos_token` of `tokenizer_config.json` (or its `eos_token`, when it names no BOS).
    TokenizerConfig(PathBuf),
    /// `bos_token_id` of `config.json`.
    ModelConfig(PathBuf),
    /// The tokenizer's only special token.
    OnlySpecialToken,
}

/// The beginning-of-sequence token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bos {
    pub id: usize,
    /// The token as the tokenizer writes it (`<|endoftext|>`).
    pub token: String,
    pub from: BosSource,
}

/// Token ids with their strings, and, when they were made from a text, the text and whether a BOS
/// was prepended: what the reports show beside positions and tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenText {
    pub ids: Vec<usize>,
    /// Each id decoded on its own; `None` for an id the tokenizer does not have.
    pub str_tokens: Vec<Option<String>>,
    /// The text the ids were made from (`None` for ids given as numbers).
    pub text: Option<String>,
    /// Whether a BOS was prepended to the text (`None` for ids given as numbers).
    pub prepend_bos: Option<PrependBos>,
}

impl TokenText {
    /// The string of the token at `position`, quoted ([`quote`]), or `None`.
    pub fn quoted(&self, position: usize) -> Option<String> {
        self.str_tokens.get(position).and_then(|s| s.as_deref().map(quote))
    }
}

/// What the reports show of tokens: the input's ids with their strings, and the tokenizer for
/// the strings of other ids (targets, top predictions).
#[derive(Clone, Copy)]
pub struct Labels<'a> {
    pub tokenizer: &'a Tokenizer,
    pub input: &'a TokenText,
}

impl Labels<'_> {
    /// Token `id` with its string: `373 " Mary"`, or just `373` when the tokenizer has no such id.
    pub fn id(&self, id: usize) -> String {
        match self.tokenizer.str_token(id) {
            Some(s) => format!("{id} {}", quote(&s)),
            None => id.to_string(),
        }
    }

    /// The quoted string of token `id` (`"\" Mary\""`), `?` when the tokenizer has no such id.
    pub fn string(&self, id: usize) -> String {
        self.tokenizer.str_token(id).map_or_else(|| "?".to_string(), |s| quote(&s))
    }

    /// The input as `position:"string"` pairs, `0:"<|endoftext|>" 1:"When" …`.
    pub fn positions(&self) -> String {
        let cells: Vec<String> = (0..self.input.ids.len())
            .map(|p| format!("{p}:{}", self.input.quoted(p).unwrap_or_else(|| "?".to_string())))
            .collect();
        cells.join(" ")
    }
}

/// A HuggingFace tokenizer with what TransformerLens needs beside it: its BOS and its default
/// for prepending one.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// The id the post-processor prepends to every text (TransformerLens's `tokenizer_prepends_bos`).
    prepends: Option<usize>,
    bos: Option<Bos>,
    /// The special tokens (for [`TextError::NoBos`]), in id order.
    special: Vec<String>,
    /// The first of `config.json`'s `architectures`, if any.
    architecture: Option<String>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("prepends", &self.prepends)
            .field("bos", &self.bos)
            .field("architecture", &self.architecture)
            .finish_non_exhaustive()
    }
}

/// `f()`, or the message of its panic (the tokenizers crate has `expect`s on malformed input).
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the tokenizers library failed".to_string());
        format!("the tokenizers library failed: {message}")
    })
}

/// Reads at most `limit` bytes of `path`, or `None` when it does not exist and is `optional`.
fn read_capped(path: &Path, limit: u64, optional: bool) -> Result<Option<Vec<u8>>, TextError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(TextError::Read { path: path.to_path_buf(), source }),
    };
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| TextError::Read { path: path.to_path_buf(), source })?;
    if bytes.len() as u64 > limit {
        return Err(TextError::TooLarge { path: path.to_path_buf(), limit });
    }
    Ok(Some(bytes))
}

/// A JSON object file beside the tokenizer, if there is one.
fn read_json(path: &Path) -> Result<Option<serde_json::Map<String, serde_json::Value>>, TextError> {
    let Some(bytes) = read_capped(path, MAX_CONFIG_BYTES, true)? else { return Ok(None) };
    let config = |message: String| TextError::Config { path: path.to_path_buf(), message };
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(config("not a JSON object".to_string())),
        Err(e) => Err(config(format!("not valid JSON: {e}"))),
    }
}

/// A token named in `tokenizer_config.json`: a string, or an added-token object with `content`;
/// `null` is none.
fn named_token(
    config: &Path,
    map: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Result<Option<String>, TextError> {
    match map.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Object(o)) => match o.get("content") {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(TextError::Config {
                path: config.to_path_buf(),
                message: format!("\"{key}\" is an object without a string \"content\""),
            }),
        },
        Some(_) => Err(TextError::Config {
            path: config.to_path_buf(),
            message: format!("\"{key}\" is neither a string nor an object with \"content\""),
        }),
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json`, and the `tokenizer_config.json` and `config.json` beside it if
    /// there are any (which BOS, which architecture: see the module documentation).
    pub fn load(path: &Path) -> Result<Tokenizer, TextError> {
        let bytes = read_capped(path, MAX_TOKENIZER_BYTES, false)?.unwrap_or_default();
        let dir = path.parent().unwrap_or(Path::new("."));
        let tokenizer_config = dir.join("tokenizer_config.json");
        let model_config = dir.join("config.json");
        Tokenizer::from_parts(
            &bytes,
            path,
            read_json(&tokenizer_config)?.map(|m| (tokenizer_config, m)),
            read_json(&model_config)?.map(|m| (model_config, m)),
        )
    }

    /// A tokenizer from the bytes of a `tokenizer.json` (`path` names it in errors) and, if given,
    /// the contents of its `tokenizer_config.json` and `config.json` (each with its path).
    pub fn from_parts(
        bytes: &[u8],
        path: &Path,
        tokenizer_config: Option<(PathBuf, serde_json::Map<String, serde_json::Value>)>,
        model_config: Option<(PathBuf, serde_json::Map<String, serde_json::Value>)>,
    ) -> Result<Tokenizer, TextError> {
        let parse = |message: String| TextError::Parse { path: path.to_path_buf(), message };
        // The tokenizers crate panics on some malformed files (a truncated decoder, for one): the
        // JSON is checked first, and a panic left is an error too.
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(|e| parse(format!("not valid JSON: {e}")))?;
        let inner =
            guarded(|| tokenizers::Tokenizer::from_bytes(bytes)).map_err(parse)?.map_err(|e| parse(e.to_string()))?;
        let size = inner.get_vocab_size(true);
        let empty = guarded(|| inner.encode("", true))
            .map_err(parse)?
            .map_err(|e| parse(format!("it cannot encode the empty text: {e}")))?;
        let prepends = empty.get_ids().first().map(|&id| id as usize);
        let mut added: Vec<(u32, tokenizers::AddedToken)> = inner.get_added_tokens_decoder().into_iter().collect();
        added.sort_by_key(|(id, _)| *id);
        let special: Vec<String> = added.iter().filter(|(_, t)| t.special).map(|(_, t)| t.content.clone()).collect();
        let architecture = match &model_config {
            Some((config, map)) => match map.get("architectures") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::Array(a)) => match a.first() {
                    None => None,
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(_) => {
                        return Err(TextError::Config {
                            path: config.clone(),
                            message: "\"architectures\" is not a list of strings".to_string(),
                        })
                    }
                },
                Some(_) => {
                    return Err(TextError::Config {
                        path: config.clone(),
                        message: "\"architectures\" is not a list of strings".to_string(),
                    })
                }
            },
            None => None,
        };
        let token_of = |id: usize| inner.id_to_token(id as u32).unwrap_or_default();
        let bos = if let Some(id) = prepends {
            Some(Bos { id, token: token_of(id), from: BosSource::Tokenizer })
        } else if let Some(found) = match &tokenizer_config {
            Some((config, map)) => match named_token(config, map, "bos_token")? {
                Some(t) => Some((config, t)),
                None => named_token(config, map, "eos_token")?.map(|t| (config, t)),
            },
            None => None,
        } {
            let (config, token) = found;
            let id = inner.token_to_id(&token).ok_or_else(|| TextError::UnknownBos {
                config: config.clone(),
                token: token.clone(),
                tokenizer: path.to_path_buf(),
            })?;
            Some(Bos { id: id as usize, token, from: BosSource::TokenizerConfig(config.clone()) })
        } else if let Some((config, id)) = match &model_config {
            Some((config, map)) => match map.get("bos_token_id") {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => match v.as_u64() {
                    Some(id) => Some((config, id)),
                    None => {
                        return Err(TextError::Config {
                            path: config.clone(),
                            message: format!("\"bos_token_id\" is {v}, not a token id"),
                        })
                    }
                },
            },
            None => None,
        } {
            match usize::try_from(id).ok().filter(|&i| i < size && inner.id_to_token(i as u32).is_some()) {
                Some(i) => Some(Bos { id: i, token: token_of(i), from: BosSource::ModelConfig(config.clone()) }),
                None => {
                    return Err(TextError::BosIdOutOfRange {
                        config: config.clone(),
                        id,
                        tokenizer: path.to_path_buf(),
                        size,
                    })
                }
            }
        } else {
            let mut specials = added.iter().filter(|(_, t)| t.special);
            match (specials.next(), specials.next()) {
                (Some((id, t)), None) => {
                    Some(Bos { id: *id as usize, token: t.content.clone(), from: BosSource::OnlySpecialToken })
                }
                _ => None,
            }
        };
        Ok(Tokenizer { inner, path: path.to_path_buf(), prepends, bos, special, architecture })
    }

    /// The `tokenizer.json` of a HuggingFace model folder given as `--weights`: `weights/tokenizer.json`
    /// when `weights` is a directory that has one.
    pub fn beside_weights(weights: &Path) -> Option<PathBuf> {
        let candidate = weights.join("tokenizer.json");
        (weights.is_dir() && candidate.is_file()).then_some(candidate)
    }

    /// The tokenizer to use: `explicit` if given, else [`Tokenizer::beside_weights`]; `Ok(None)`
    /// when there is neither.
    pub fn find(explicit: Option<&Path>, weights: Option<&Path>) -> Result<Option<Tokenizer>, TextError> {
        match explicit.map(Path::to_path_buf).or_else(|| weights.and_then(Tokenizer::beside_weights)) {
            Some(path) => Tokenizer::load(&path).map(Some),
            None => Ok(None),
        }
    }

    /// [`Tokenizer::find`], where a tokenizer is needed: [`TextError::NoTokenizer`] when there is none.
    pub fn require(explicit: Option<&Path>, weights: Option<&Path>) -> Result<Tokenizer, TextError> {
        Tokenizer::find(explicit, weights)?
            .ok_or_else(|| TextError::NoTokenizer { weights: weights.filter(|w| w.is_dir()).map(Path::to_path_buf) })
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many ids the tokenizer has (its vocabulary and added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether the tokenizer puts a token in front of every text itself (TransformerLens's
    /// `tokenizer_prepends_bos`: it encodes the empty text as a token).
    pub fn prepends_bos(&self) -> bool {
        self.prepends.is_some()
    }

    /// The BOS token, or why there is none.
    pub fn bos(&self) -> Result<&Bos, TextError> {
        self.bos.as_ref().ok_or_else(|| TextError::NoBos { path: self.path.clone(), special: self.special.clone() })
    }

    /// TransformerLens's `default_prepend_bos` for the model beside the tokenizer: false for
    /// [`NO_BOS_ARCHITECTURES`] (`config.json`'s `architectures`), else true.
    pub fn default_prepend_bos(&self) -> PrependBos {
        match &self.architecture {
            Some(a) if NO_BOS_ARCHITECTURES.contains(&a.as_str()) => {
                PrependBos { value: false, why: PrependBosWhy::TransformerLensDefaultFor(a.clone()) }
            }
            _ => PrependBos { value: true, why: PrependBosWhy::TransformerLensDefault },
        }
    }

    fn ids(&self, text: &str) -> Result<Vec<usize>, TextError> {
        let encoding = guarded(|| self.inner.encode(text, true))
            .map_err(|message| TextError::Encode { message })?
            .map_err(|e| TextError::Encode { message: e.to_string() })?;
        Ok(encoding.get_ids().iter().map(|&id| id as usize).collect())
    }

    /// The ids of `text`, with or without the BOS in front, as TransformerLens's `to_tokens` makes
    /// them (see the module documentation): never two BOS tokens of our making.
    pub fn encode(&self, text: &str, prepend_bos: bool) -> Result<Vec<usize>, TextError> {
        match (self.prepends.is_some(), prepend_bos) {
            // The tokenizer prepends it itself.
            (true, true) => self.ids(text),
            // TransformerLens's `get_tokens_with_bos_removed`: the first token goes.
            (true, false) => {
                let mut ids = self.ids(text)?;
                if !ids.is_empty() {
                    ids.remove(0);
                }
                Ok(ids)
            }
            (false, false) => self.ids(text),
            (false, true) => {
                let bos = self.bos()?;
                if self.inner.get_added_tokens_decoder().values().any(|t| t.content == bos.token) {
                    // TransformerLens's `get_input_with_manually_prepended_bos`: `bos_token + text`.
                    self.ids(&format!("{}{text}", bos.token))
                } else {
                    let mut ids = vec![bos.id];
                    ids.extend(self.ids(text)?);
                    Ok(ids)
                }
            }
        }
    }

    /// The string of token `id`, decoded on its own with special tokens kept (TransformerLens's
    /// `to_str_tokens`); `None` for an id the tokenizer does not have.
    pub fn str_token(&self, id: usize) -> Option<String> {
        let id = u32::try_from(id).ok()?;
        self.inner.id_to_token(id)?;
        self.inner.decode(&[id], false).ok()
    }

    /// [`Tokenizer::str_token`] of each id.
    pub fn str_tokens(&self, ids: &[usize]) -> Vec<Option<String>> {
        ids.iter().map(|&id| self.str_token(id)).collect()
    }

    /// The one token `text` is (TransformerLens's `to_single_token`: encoded without a BOS), or
    /// an error listing the tokens it splits into.
    pub fn single_token(&self, text: &str) -> Result<usize, TextError> {
        let ids = self.encode(text, false)?;
        match ids[..] {
            [id] => Ok(id),
            [] => Err(TextError::NoToken { text: text.to_string() }),
            _ => Err(TextError::NotOneToken {
                text: text.to_string(),
                pieces: ids.iter().map(|&id| (id, self.str_token(id))).collect(),
            }),
        }
    }

    /// `text` as ids with their strings; `prepend_bos` `None` is [`Tokenizer::default_prepend_bos`].
    pub fn tokenize(&self, text: &str, prepend_bos: Option<bool>) -> Result<TokenText, TextError> {
        let prepend = match prepend_bos {
            Some(value) => PrependBos { value, why: PrependBosWhy::Given },
            None => self.default_prepend_bos(),
        };
        let ids = self.encode(text, prepend.value)?;
        Ok(TokenText {
            str_tokens: self.str_tokens(&ids),
            ids,
            text: Some(text.to_string()),
            prepend_bos: Some(prepend),
        })
    }

    /// Ids given as numbers, with their strings.
    pub fn label(&self, ids: &[usize]) -> TokenText {
        TokenText { ids: ids.to_vec(), str_tokens: self.str_tokens(ids), text: None, prepend_bos: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_quotes_backslashes_and_control_characters_only() {
        assert_eq!(quote(" Mary"), "\" Mary\"");
        assert_eq!(quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(quote("\n\t\r\u{7}"), r#""\n\t\r\u{7}""#);
        assert_eq!(quote("café 🎉 �"), "\"café 🎉 �\"");
    }

    #[test]
    fn prepend_bos_says_why() {
        let given = PrependBos { value: false, why: PrependBosWhy::Given };
        assert_eq!(given.to_string(), "false (--prepend-bos)");
        let qwen =
            PrependBos { value: false, why: PrependBosWhy::TransformerLensDefaultFor("Qwen2ForCausalLM".into()) };
        assert_eq!(qwen.to_string(), "false (TransformerLens's default for Qwen2ForCausalLM)");
    }
}
