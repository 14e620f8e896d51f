//! `pathc import`: a model file (`*.tf`) from a HuggingFace folder's `config.json`, the
//! architecture TransformerLens's conversion gives that model (read by
//! [`weights::hf::config`](crate::weights::hf::config), which refuses every key that would make
//! it another model).
//!
//! The file starts with a comment naming its source (the folder, `model_type`, the
//! architecture) and every choice made reading the config, one a line; then the dimensions, the
//! layers (written once under `repeat`: every layer of these families is alike) and the final
//! norm and unembedding. Its weights are the folder itself: `--weights DIR` presents them under
//! TransformerLens's names ([`weights::hf`](crate::weights::hf)). Output is a function of the
//! config and the folder's name alone.

use std::fmt::Write as _;
use std::path::Path;

use thiserror::Error;

use crate::weights::hf::config::{self, fmt_real, ConfigError, HfConfig, HfNorm};

/// Why a folder cannot be imported.
#[derive(Debug, Error)]
pub enum ImportError {
    #[error("{path} is not a HuggingFace model folder: it has no config.json")]
    NotAFolder { path: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The model file for the HuggingFace folder `dir`.
pub fn import(dir: &Path) -> Result<String, ImportError> {
    if !dir.join("config.json").is_file() {
        return Err(ImportError::NotAFolder { path: dir.display().to_string() });
    }
    let config = config::read(dir)?;
    Ok(model_text(&config, dir))
}

/// The folder's name as a model name: letters, digits and `_` (others become `_`), not starting
/// with a digit.
fn model_name(dir: &Path) -> String {
    let base = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| dir.canonicalize().ok()?.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let mut name: String = base.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert_str(0, "hf_");
    }
    name
}

/// The model file's text for `config`, read from `dir`.
pub fn model_text(c: &HfConfig, dir: &Path) -> String {
    let mut out = String::new();
    let arch = c.architecture.as_deref().map(|a| format!(", {a}")).unwrap_or_default();
    let _ = writeln!(
        out,
        "# Imported by `pathc import` from {}/config.json (model_type {}{arch}),",
        dir.display(),
        c.family.model_type()
    );
    let _ =
        writeln!(out, "# as TransformerLens converts it; the weights are the folder (`--weights {}`).", dir.display());
    let _ = writeln!(out, "# Read from the config:");
    for choice in &c.choices {
        let _ = writeln!(out, "# - {choice}");
    }
    let _ = writeln!(out, "model {}", model_name(dir));
    out.push('\n');
    let _ = writeln!(out, "dim d_model = {}", c.d_model);
    let _ = writeln!(out, "dim d_vocab = {}", c.d_vocab);
    let _ = writeln!(out, "dim n_ctx   = {}", c.n_ctx);
    let _ = writeln!(out, "dim d_head  = {}", c.d_head);
    let _ = writeln!(out, "dim d_mlp   = {}", c.d_mlp);
    out.push('\n');
    let norm = match c.norm {
        HfNorm::LayerNorm => format!("layernorm(eps = {})", fmt_real(c.eps)),
        HfNorm::Rms => format!("rmsnorm(eps = {})", fmt_real(c.eps)),
    };
    let _ = writeln!(out, "embed");
    if c.learned_positions {
        let _ = writeln!(out, "pos_embed");
    }
    let _ = writeln!(out, "repeat {} {{", c.n_layers);
    let _ = writeln!(out, "  layer{} {{", if c.parallel { "(parallel)" } else { "" });
    let _ = writeln!(out, "    {norm}");
    let mut attn = vec![format!("heads = {}", c.n_heads)];
    if c.grouped() {
        attn.push(format!("kv_heads = {}", c.kv_heads));
    }
    if c.qkv_bias {
        attn.push("bias".to_string());
    }
    if c.unscaled {
        attn.push("scale = 1".to_string());
    }
    if let Some(r) = c.rotary {
        attn.push(format!("rotary = {}", r.dim));
        attn.push(format!("rotary_base = {}", fmt_real(r.base)));
        attn.push(format!("rotary_style = {}", if r.adjacent_pairs { "gptj" } else { "neox" }));
    }
    let _ = writeln!(out, "    attn({})", attn.join(", "));
    if !c.shared_norm {
        let _ = writeln!(out, "    {norm}");
    }
    let mut mlp = vec![format!("act = {}", c.act)];
    if c.gated {
        mlp.push("gated".to_string());
    }
    if c.mlp_bias {
        mlp.push("bias".to_string());
    }
    let _ = writeln!(out, "    mlp({})", mlp.join(", "));
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "}}");
    let _ = writeln!(out, "{norm}");
    let _ = writeln!(out, "{}", if c.unembed_bias { "unembed(bias)" } else { "unembed" });
    out
}
