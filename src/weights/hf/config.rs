//! A HuggingFace folder's `config.json`, read into the architecture TransformerLens's
//! `loading_from_pretrained` derives from it: sizes, norms, positions, biases, tying.
//!
//! `save_pretrained` writes only the keys that differ from the config class's defaults (and a few
//! more), so every key has its default here, transformers 4.57's for that family. A key that
//! changes the computation in a way pathc does not model (`rope_scaling`, cross-attention, a
//! sliding window shorter than the context, an activation pathc lacks, ...) is an error naming it:
//! reading past it would describe a different model. Keys that change nothing pathc computes
//! (dropout, token ids, generation settings, `dtype`) are ignored.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Map, Value};
use thiserror::Error;

/// The model families pathc reads (`model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `gpt2`: GPT-2 (`Conv1D` weights `[in, out]`, fused `c_attn`).
    Gpt2,
    /// `gpt_neox`: GPT-NeoX, Pythia (fused `query_key_value`, interleaved per head).
    GptNeox,
    /// `gptj`: GPT-J (parallel layers sharing one norm, adjacent-pair rotary).
    Gptj,
    /// `llama`.
    Llama,
    /// `mistral`.
    Mistral,
    /// `qwen2`.
    Qwen2,
}

impl Family {
    pub const ALL: [Family; 6] =
        [Family::Gpt2, Family::GptNeox, Family::Gptj, Family::Llama, Family::Mistral, Family::Qwen2];

    /// The `model_type` of `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Gpt2 => "gpt2",
            Family::GptNeox => "gpt_neox",
            Family::Gptj => "gptj",
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
        }
    }

    /// The prefix of the base model's tensors (`transformer.h.0...`); older checkpoints saved
    /// from the base model leave it out.
    pub fn prefix(self) -> &'static str {
        match self {
            Family::Gpt2 | Family::Gptj => "transformer.",
            Family::GptNeox => "gpt_neox.",
            Family::Llama | Family::Mistral | Family::Qwen2 => "model.",
        }
    }

    /// The known `model_type`s, for messages.
    pub fn known() -> String {
        Family::ALL.iter().map(|f| format!("`{}`", f.model_type())).collect::<Vec<_>>().join(", ")
    }
}

/// LayerNorm (weight and bias) or RMSNorm (weight only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfNorm {
    LayerNorm,
    Rms,
}

/// Rotary positions on each head's first `dim` dimensions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HfRotary {
    pub dim: usize,
    pub base: f64,
    /// GPT-J's adjacent pairs (`2i`, `2i+1`); otherwise NeoX/Llama halves (`i`, `i + dim/2`).
    pub adjacent_pairs: bool,
}

/// The architecture a `config.json` describes, in TransformerLens's terms, and the choices made
/// reading it (for `pathc import`'s header).
#[derive(Debug, Clone)]
pub struct HfConfig {
    pub family: Family,
    /// `architectures[0]`, when given (`GPT2LMHeadModel`, ...).
    pub architecture: Option<String>,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads (= `n_heads` without grouped-query attention).
    pub kv_heads: usize,
    pub d_head: usize,
    pub d_mlp: usize,
    pub d_vocab: usize,
    /// `n_positions` / `max_position_embeddings`.
    pub n_ctx: usize,
    pub norm: HfNorm,
    pub eps: f64,
    /// pathc's (TransformerLens's) name of the MLP activation.
    pub act: &'static str,
    /// A gated MLP (`gate_proj`, `up_proj`, `down_proj`).
    pub gated: bool,
    /// Learned absolute positions (GPT-2's `wpe`).
    pub learned_positions: bool,
    pub rotary: Option<HfRotary>,
    /// Attention and MLP read the same stream.
    pub parallel: bool,
    /// A parallel layer's MLP reads the attention's norm (GPT-J): no `ln2`.
    pub shared_norm: bool,
    /// Query/key/value biases.
    pub qkv_bias: bool,
    /// The output projection's bias is in the file (Qwen2 has q/k/v biases but none on `o_proj`:
    /// TransformerLens's `b_O` is zero).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// `b_U` (GPT-J's `lm_head.bias`).
    pub unembed_bias: bool,
    /// Scores divided by 1 instead of `sqrt(d_head)` (GPT-2 `scale_attn_weights: false`).
    pub unscaled: bool,
    /// `tie_word_embeddings`: `W_U` is the token embedding transposed.
    pub tied: bool,
    /// One line per decision: the config key, its value, what it became.
    pub choices: Vec<String>,
}

impl HfConfig {
    /// Whether grouped-query attention (TransformerLens's `_W_K`, `_W_V`, ...).
    pub fn grouped(&self) -> bool {
        self.kv_heads != self.n_heads
    }
}

/// Why a `config.json` cannot be read as a model pathc computes exactly.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not valid JSON: {detail}")]
    Json { path: String, detail: String },
    #[error("{path} is not a JSON object")]
    NotObject { path: String },
    #[error("{path} has no `model_type`: pathc reads {}", Family::known())]
    NoModelType { path: String },
    #[error("{path}: model_type `{found}` is not supported: pathc reads {}", Family::known())]
    UnknownModelType { path: String, found: String },
    #[error("{path}: `{key}` is {value}, expected {expected}")]
    BadValue { path: String, key: String, value: String, expected: String },
    #[error("{path}: `{key}` = {value} is not supported: {why}")]
    Unsupported { path: String, key: String, value: String, why: String },
}

/// Reads and interprets `dir/config.json`.
pub fn read(dir: &Path) -> Result<HfConfig, ConfigError> {
    let file = dir.join("config.json");
    let path = file.display().to_string();
    // A config.json is a few kB; a huge one is not a config (bounded before parsing).
    const MAX_CONFIG: u64 = 4 << 20;
    let io = |source| ConfigError::Io { path: path.clone(), source };
    let meta = std::fs::metadata(&file).map_err(io)?;
    if meta.len() > MAX_CONFIG {
        return Err(ConfigError::Json { path, detail: format!("{} bytes, more than {MAX_CONFIG}", meta.len()) });
    }
    let text = std::fs::read_to_string(&file).map_err(io)?;
    parse(&text, &path)
}

/// Interprets the text of a `config.json`; `path` names it in messages.
pub fn parse(text: &str, path: &str) -> Result<HfConfig, ConfigError> {
    let json: Value =
        serde_json::from_str(text).map_err(|e| ConfigError::Json { path: path.to_string(), detail: e.to_string() })?;
    let Value::Object(map) = json else { return Err(ConfigError::NotObject { path: path.to_string() }) };
    let keys = Keys { map: &map, path };
    let model_type = match map.get("model_type") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(keys.bad("model_type", other, "a string")),
        None => return Err(ConfigError::NoModelType { path: path.to_string() }),
    };
    let family = Family::ALL
        .into_iter()
        .find(|f| f.model_type() == model_type)
        .ok_or_else(|| ConfigError::UnknownModelType { path: path.to_string(), found: model_type.clone() })?;
    keys.common_refusals(family)?;
    let architecture = match map.get("architectures") {
        Some(Value::Array(a)) => a.first().and_then(Value::as_str).map(str::to_string),
        _ => None,
    };
    let mut c = match family {
        Family::Gpt2 => gpt2(&keys)?,
        Family::GptNeox => neox(&keys)?,
        Family::Gptj => gptj(&keys)?,
        Family::Llama | Family::Mistral | Family::Qwen2 => llama_like(&keys, family)?,
    };
    c.architecture = architecture;
    if c.d_model == 0 || c.n_heads == 0 || c.n_layers == 0 || c.d_vocab == 0 {
        // Caught by `size` already; kept as a guard for the arithmetic below.
        return Err(keys.bad_text("num_hidden_layers", "0", "a positive number"));
    }
    // Every tensor's element count must be addressable (sizes come from a file).
    let tensors: [(&str, &[usize]); 5] = [
        ("vocab_size", &[c.d_vocab, c.d_model]),
        ("max_position_embeddings", &[c.n_ctx, c.d_model]),
        ("num_attention_heads", &[3, c.n_heads, c.d_head, c.d_model]),
        ("intermediate_size", &[c.d_mlp, c.d_model]),
        ("num_hidden_layers", &[c.n_layers, 16, c.d_model]),
    ];
    for (key, dims) in tensors {
        if dims.iter().try_fold(8usize, |n, &d| n.checked_mul(d)).is_none() {
            let value = keys.map.get(key).map_or_else(|| "(default)".to_string(), Value::to_string);
            return Err(keys.bad_text(key, &value, "sizes whose tensors fit in memory"));
        }
    }
    if c.kv_heads == 0 || c.n_heads % c.kv_heads != 0 {
        return Err(keys.bad_text(
            "num_key_value_heads",
            &c.kv_heads.to_string(),
            &format!("a divisor of num_attention_heads ({})", c.n_heads),
        ));
    }
    Ok(c)
}

/// Typed access to the keys of one config, each with its class default.
struct Keys<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

impl Keys<'_> {
    fn bad(&self, key: &str, value: &Value, expected: &str) -> ConfigError {
        self.bad_text(key, &value.to_string(), expected)
    }

    fn bad_text(&self, key: &str, value: &str, expected: &str) -> ConfigError {
        ConfigError::BadValue {
            path: self.path.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }

    fn unsupported(&self, key: &str, why: &str) -> ConfigError {
        let value = self.map.get(key).map_or_else(|| "(default)".to_string(), Value::to_string);
        ConfigError::Unsupported { path: self.path.to_string(), key: key.to_string(), value, why: why.to_string() }
    }

    /// The key's value, `None` when absent or null.
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A positive whole number; `default` when absent or null (an error then if `None`).
    fn size_or(&self, key: &str, default: Option<usize>) -> Result<Option<usize>, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                // Sizes of real models are far below this; a larger one is a corrupt config, and
                // bounding it keeps every product below overflow.
                Some(n) if n > 0 && n <= 1 << 32 => Ok(Some(n)),
                _ => Err(self.bad(key, v, "a positive whole number (at most 2^32)")),
            },
        }
    }

    fn size(&self, key: &str, default: usize) -> Result<usize, ConfigError> {
        Ok(self.size_or(key, Some(default))?.unwrap_or(default))
    }

    fn number(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| self.bad(key, v, "a number")),
        }
    }

    fn positive(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        let x = self.number(key, default)?;
        if x > 0.0 {
            Ok(x)
        } else {
            Err(self.bad_text(key, &x.to_string(), "a positive number"))
        }
    }

    fn flag(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.bad(key, v, "true or false")),
        }
    }

    fn text(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(self.bad(key, v, "a string")),
        }
    }

    /// How a key's value reads in the header: as written, or `(default) X`.
    fn shown(&self, key: &str, default: &str) -> String {
        match self.map.get(key) {
            Some(v) => v.to_string(),
            None => format!("{default} (default)"),
        }
    }

    /// Keys every family refuses when set: they change the computation in ways pathc does not
    /// model.
    fn common_refusals(&self, family: Family) -> Result<(), ConfigError> {
        let set = |key: &str| match self.get(key) {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Object(m)) => !m.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        let refusals: &[(&str, &str)] = &[
            ("rope_scaling", "pathc's rotary positions are unscaled (position · base^(−2i/D))"),
            ("rope_parameters", "pathc's rotary positions are unscaled (position · base^(−2i/D))"),
            ("add_cross_attention", "cross-attention reads an encoder's states, which pathc does not model"),
            ("is_encoder_decoder", "pathc models decoder-only transformers"),
            ("pruned_heads", "pruned heads leave layers with different head counts"),
            ("quantization_config", "pathc reads float weights (F16, BF16, F32, F64), not quantized ones"),
            ("qk_layernorm", "a norm on the queries and keys is not part of pathc's attention"),
            ("use_qk_norm", "a norm on the queries and keys is not part of pathc's attention"),
            ("attn_logit_softcapping", "softcapped scores are not part of pathc's attention"),
            ("final_logit_softcapping", "softcapped logits are not part of pathc's unembedding"),
        ];
        for (key, why) in refusals {
            if set(key) {
                return Err(self.unsupported(key, why));
            }
        }
        if family == Family::Gpt2 && self.flag("scale_attn_by_inverse_layer_idx", false)? {
            return Err(self.unsupported(
                "scale_attn_by_inverse_layer_idx",
                "the scores of layer l would be divided by sqrt(d_head)·(l+1); pathc imports one scale for every layer",
            ));
        }
        Ok(())
    }

    /// `hidden_act` / `activation_function` as pathc's activation (HF's `ACT2FN` names).
    fn activation(&self, key: &str, default: &str, choices: &mut Vec<String>) -> Result<&'static str, ConfigError> {
        let name = self.text(key, default)?;
        let act = match name.as_str() {
            "gelu" => "gelu",
            "gelu_new" => "gelu_new",
            "gelu_fast" => "gelu_fast",
            "gelu_pytorch_tanh" => "gelu_pytorch_tanh",
            "relu" => "relu",
            "silu" | "swish" => "silu",
            _ => {
                return Err(self.unsupported(
                    key,
                    "pathc's activations are gelu (exact), gelu_new, gelu_fast, gelu_pytorch_tanh, relu and silu",
                ))
            }
        };
        choices.push(format!("{key} {} → mlp(act = {act})", self.shown(key, default)));
        Ok(act)
    }

    fn tied(
        &self,
        default: bool,
        embedding: &str,
        unembedding: &str,
        choices: &mut Vec<String>,
    ) -> Result<bool, ConfigError> {
        let tied = self.flag("tie_word_embeddings", default)?;
        let shown = self.shown("tie_word_embeddings", &default.to_string());
        choices.push(if tied {
            format!("tie_word_embeddings {shown}: W_U is {embedding} transposed")
        } else {
            format!("tie_word_embeddings {shown}: W_U is {unembedding} transposed")
        });
        Ok(tied)
    }
}

/// d_model / n_heads, which must divide.
fn head_size(keys: &Keys<'_>, d_model: usize, n_heads: usize, heads_key: &str) -> Result<usize, ConfigError> {
    if d_model % n_heads != 0 {
        return Err(keys.bad_text(heads_key, &n_heads.to_string(), &format!("a divisor of the width {d_model}")));
    }
    Ok(d_model / n_heads)
}

fn base_config(family: Family) -> HfConfig {
    HfConfig {
        family,
        architecture: None,
        d_model: 0,
        n_layers: 0,
        n_heads: 0,
        kv_heads: 0,
        d_head: 0,
        d_mlp: 0,
        d_vocab: 0,
        n_ctx: 0,
        norm: HfNorm::LayerNorm,
        eps: 1e-5,
        act: "gelu",
        gated: false,
        learned_positions: false,
        rotary: None,
        parallel: false,
        shared_norm: false,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        unembed_bias: false,
        unscaled: false,
        tied: false,
        choices: Vec::new(),
    }
}

/// What GPT-2 and GPT-J's configs share, under the same keys: the sizes (defaults `[vocab_size,
/// n_positions, n_embd, n_layer, n_head]`, each class's own), `n_inner`, `layer_norm_epsilon` and
/// `activation_function`.
fn gpt_sizes(k: &Keys<'_>, family: Family, defaults: [usize; 5]) -> Result<HfConfig, ConfigError> {
    let [vocab, positions, embd, layers, heads] = defaults;
    let mut c = base_config(family);
    c.d_vocab = k.size("vocab_size", vocab)?;
    c.n_ctx = k.size("n_positions", positions)?;
    c.d_model = k.size("n_embd", embd)?;
    c.n_layers = k.size("n_layer", layers)?;
    c.n_heads = k.size("n_head", heads)?;
    c.kv_heads = c.n_heads;
    c.d_head = head_size(k, c.d_model, c.n_heads, "n_head")?;
    c.d_mlp = k.size_or("n_inner", None)?.unwrap_or(4 * c.d_model);
    if k.get("n_inner").is_none() {
        c.choices.push(format!("n_inner null → d_mlp = 4 · n_embd = {}", c.d_mlp));
    }
    c.eps = k.positive("layer_norm_epsilon", 1e-5)?;
    c.choices.push(format!(
        "layer_norm_epsilon {} → layernorm(eps = {})",
        k.shown("layer_norm_epsilon", "1e-5"),
        fmt_real(c.eps)
    ));
    c.act = k.activation("activation_function", "gelu_new", &mut c.choices)?;
    Ok(c)
}

fn gpt2(k: &Keys<'_>) -> Result<HfConfig, ConfigError> {
    let mut c = gpt_sizes(k, Family::Gpt2, [50257, 1024, 768, 12, 12])?;
    c.learned_positions = true;
    c.choices.push(format!("n_positions {} → pos_embed (wpe), n_ctx = {}", c.n_ctx, c.n_ctx));
    c.qkv_bias = true;
    c.o_bias = true;
    c.mlp_bias = true;
    c.unscaled = !k.flag("scale_attn_weights", true)?;
    if c.unscaled {
        c.choices.push("scale_attn_weights false → attn(scale = 1)".to_string());
    }
    if k.flag("reorder_and_upcast_attn", false)? {
        c.choices.push(
            "reorder_and_upcast_attn true: only where HF rounds (its scores in float32); the same function".to_string(),
        );
    }
    c.choices.push("Conv1D weights [in, out]: c_attn split into W_Q, W_K, W_V by columns".to_string());
    c.tied = k.tied(true, "wte.weight", "lm_head.weight", &mut c.choices)?;
    Ok(c)
}

fn neox(k: &Keys<'_>) -> Result<HfConfig, ConfigError> {
    let mut c = base_config(Family::GptNeox);
    c.d_vocab = k.size("vocab_size", 50432)?;
    c.n_ctx = k.size("max_position_embeddings", 2048)?;
    c.d_model = k.size("hidden_size", 6144)?;
    c.n_layers = k.size("num_hidden_layers", 44)?;
    c.n_heads = k.size("num_attention_heads", 64)?;
    c.kv_heads = c.n_heads;
    c.d_head = head_size(k, c.d_model, c.n_heads, "num_attention_heads")?;
    c.d_mlp = k.size("intermediate_size", 24576)?;
    c.eps = k.positive("layer_norm_eps", 1e-5)?;
    c.choices.push(format!(
        "layer_norm_eps {} → layernorm(eps = {})",
        k.shown("layer_norm_eps", "1e-5"),
        fmt_real(c.eps)
    ));
    c.act = k.activation("hidden_act", "gelu", &mut c.choices)?;
    let pct = k.number("rotary_pct", 0.25)?;
    // transformers 4.57 writes the same fraction as `partial_rotary_factor` too; HF's rotary
    // embedding reads that one.
    let factor = k.number("partial_rotary_factor", pct)?;
    if factor != pct {
        return Err(k.unsupported(
            "partial_rotary_factor",
            &format!("it disagrees with rotary_pct {pct}; which one HF uses depends on its version"),
        ));
    }
    let dim = (c.d_head as f64 * pct) as usize;
    if !(0.0..=1.0).contains(&pct) || dim == 0 || dim % 2 != 0 {
        return Err(k.bad_text(
            "rotary_pct",
            &pct.to_string(),
            &format!("a fraction of d_head {} that is a positive even number of dimensions", c.d_head),
        ));
    }
    let base = k.positive("rotary_emb_base", 10000.0)?;
    let theta = k.positive("rope_theta", base)?;
    if theta != base {
        return Err(k.unsupported(
            "rope_theta",
            &format!("it disagrees with rotary_emb_base {base}; which one HF uses depends on its version"),
        ));
    }
    c.rotary = Some(HfRotary { dim, base, adjacent_pairs: false });
    c.choices.push(format!(
        "rotary_pct {} → rotary = {dim} of d_head {} (NeoX halves), rotary_emb_base {} → rotary_base = {}",
        k.shown("rotary_pct", "0.25"),
        c.d_head,
        k.shown("rotary_emb_base", "10000"),
        fmt_real(base)
    ));
    c.parallel = k.flag("use_parallel_residual", true)?;
    c.choices.push(if c.parallel {
        format!(
            "use_parallel_residual {} → layer(parallel): attention and MLP read the same stream, each through its own LayerNorm",
            k.shown("use_parallel_residual", "true")
        )
    } else {
        "use_parallel_residual false → sequential layers".to_string()
    });
    let bias = k.flag("attention_bias", true)?;
    c.qkv_bias = bias;
    c.o_bias = bias;
    c.mlp_bias = true;
    c.choices.push(format!(
        "attention_bias {} → {}",
        k.shown("attention_bias", "true"),
        if bias { "attn(bias)" } else { "attention without biases" }
    ));
    c.choices.push("query_key_value interleaved per head: (head, q/k/v, d_head) rows".to_string());
    c.tied = k.tied(false, "embed_in.weight", "embed_out.weight", &mut c.choices)?;
    Ok(c)
}

fn gptj(k: &Keys<'_>) -> Result<HfConfig, ConfigError> {
    let mut c = gpt_sizes(k, Family::Gptj, [50400, 2048, 4096, 28, 16])?;
    // `rotary_dim: null` rotates the whole head.
    let dim = match k.map.get("rotary_dim") {
        Some(Value::Null) => c.d_head,
        _ => k.size("rotary_dim", 64)?,
    };
    if dim > c.d_head || dim % 2 != 0 {
        return Err(k.bad_text(
            "rotary_dim",
            &dim.to_string(),
            &format!("an even number of dimensions, at most d_head {}", c.d_head),
        ));
    }
    c.rotary = Some(HfRotary { dim, base: 10000.0, adjacent_pairs: true });
    c.choices.push(format!(
        "rotary_dim {} → rotary = {dim} of d_head {} (GPT-J adjacent pairs), base 10000 (GPT-J's, fixed)",
        k.shown("rotary_dim", "64"),
        c.d_head
    ));
    c.parallel = true;
    c.shared_norm = true;
    c.choices
        .push("GPT-J → layer(parallel) with one LayerNorm (ln_1) read by both attention and MLP; no ln2".to_string());
    c.mlp_bias = true;
    c.unembed_bias = true;
    c.choices.push("attention without biases; lm_head.bias → unembed(bias)".to_string());
    c.tied = k.tied(false, "wte.weight", "lm_head.weight", &mut c.choices)?;
    Ok(c)
}

fn llama_like(k: &Keys<'_>, family: Family) -> Result<HfConfig, ConfigError> {
    let mut c = base_config(family);
    let (vocab, hidden, inter, heads, kv, n_pos) = match family {
        Family::Llama => (32000, 4096, 11008, 32, None, 2048),
        Family::Mistral => (32000, 4096, 14336, 32, Some(8), 131072),
        _ => (151936, 4096, 22016, 32, Some(32), 32768),
    };
    c.d_vocab = k.size("vocab_size", vocab)?;
    c.d_model = k.size("hidden_size", hidden)?;
    c.d_mlp = k.size("intermediate_size", inter)?;
    c.n_layers = k.size("num_hidden_layers", 32)?;
    c.n_heads = k.size("num_attention_heads", heads)?;
    c.kv_heads = k.size_or("num_key_value_heads", kv)?.unwrap_or(c.n_heads);
    c.n_ctx = k.size("max_position_embeddings", n_pos)?;
    c.d_head = match k.size_or("head_dim", None)? {
        Some(d) => d,
        None => head_size(k, c.d_model, c.n_heads, "num_attention_heads")?,
    };
    if c.grouped() {
        c.choices.push(format!(
            "num_key_value_heads {} of num_attention_heads {} → attn(kv_heads = {}): grouped-query attention (_W_K, _W_V)",
            c.kv_heads, c.n_heads, c.kv_heads
        ));
    }
    c.norm = HfNorm::Rms;
    c.eps = k.positive("rms_norm_eps", 1e-6)?;
    c.choices.push(format!("rms_norm_eps {} → rmsnorm(eps = {})", k.shown("rms_norm_eps", "1e-6"), fmt_real(c.eps)));
    c.act = k.activation("hidden_act", "silu", &mut c.choices)?;
    c.gated = true;
    c.choices.push("gate_proj, up_proj, down_proj → mlp(gated): W_gate, W_in, W_out".to_string());
    let factor = k.number("partial_rotary_factor", 1.0)?;
    if factor != 1.0 {
        return Err(k.unsupported("partial_rotary_factor", "pathc imports rotary positions on the whole head here"));
    }
    let base = k.positive("rope_theta", 10000.0)?;
    c.rotary = Some(HfRotary { dim: c.d_head, base, adjacent_pairs: false });
    c.choices.push(format!(
        "rope_theta {} → rotary = {} (the whole head, NeoX halves), rotary_base = {}",
        k.shown("rope_theta", "10000"),
        c.d_head,
        fmt_real(base)
    ));
    match family {
        Family::Llama => {
            if k.flag("mlp_bias", false)? {
                return Err(k.unsupported(
                    "mlp_bias",
                    "a bias on gate_proj has no place in TransformerLens's gated MLP (act(x·W_gate) ⊙ (x·W_in))",
                ));
            }
            let bias = k.flag("attention_bias", false)?;
            c.qkv_bias = bias;
            c.o_bias = bias;
            if bias {
                c.choices.push("attention_bias true → attn(bias): q/k/v/o_proj biases".to_string());
            }
        }
        Family::Mistral => {
            // A window at least as long as the context never masks anything.
            if let Some(window) = k.size_or("sliding_window", Some(4096))? {
                if window < c.n_ctx {
                    return Err(k.unsupported(
                        "sliding_window",
                        &format!(
                            "keys more than {window} positions back are masked, and pathc's attention is plainly causal \
                             (it would differ from HF on sequences longer than the window, up to max_position_embeddings {})",
                            c.n_ctx
                        ),
                    ));
                }
                c.choices.push(format!(
                    "sliding_window {window} ≥ max_position_embeddings {}: plain causal attention",
                    c.n_ctx
                ));
            } else {
                c.choices.push("sliding_window null: plain causal attention".to_string());
            }
        }
        _ => {
            if k.flag("use_sliding_window", false)? {
                return Err(
                    k.unsupported("use_sliding_window", "sliding-window attention is not pathc's causal attention")
                );
            }
            if let Some(Value::Array(types)) = k.get("layer_types") {
                if let Some(other) = types.iter().find(|t| t.as_str() != Some("full_attention")) {
                    return Err(k.unsupported(
                        "layer_types",
                        &format!("a layer of type {other}: pathc's attention is full causal attention"),
                    ));
                }
            }
            c.qkv_bias = true;
            c.o_bias = false;
            c.choices.push("q/k/v_proj biases → attn(bias); o_proj has none: b_O is zero".to_string());
        }
    }
    c.tied = k.tied(false, "embed_tokens.weight", "lm_head.weight", &mut c.choices)?;
    Ok(c)
}

/// A real number as the model language writes it: whole numbers without a point, others in
/// Rust's shortest round-trip decimal form.
pub fn fmt_real(x: f64) -> String {
    let mut s = String::new();
    if x.fract() == 0.0 && x.abs() < 1e15 {
        let _ = write!(s, "{}", x as i64);
    } else {
        let _ = write!(s, "{x}");
    }
    s
}
