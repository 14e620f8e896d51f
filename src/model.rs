//! The checked architecture: what `syntax` hands to every later stage.
//!
//! Invariant: a [`Model`] is well formed. It has an embedding, an unembedding, at least zero
//! layers each with exactly one attention block, at least one head per attention block, and every
//! size that must be a number is one. Later stages rely on this and never re-check it.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::diag::Span;

/// A dimension: a number, or a name kept symbolic (enough for expansion, not for numbers).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum Size {
    Known(u64),
    Symbolic(String),
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Known(n) => write!(f, "{n}"),
            Size::Symbolic(name) => f.write_str(name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    Gelu,
    GeluNew,
    Silu,
}

impl Activation {
    pub const ALL: [Activation; 4] = [Activation::Relu, Activation::Gelu, Activation::GeluNew, Activation::Silu];

    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::GeluNew => "gelu_new",
            Activation::Silu => "silu",
        }
    }
}

/// A LayerNorm (weight and bias, as TransformerLens's `LN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerNorm {
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attn {
    pub n_heads: usize,
    pub d_head: Size,
    /// `b_Q`, `b_K`, `b_V`, `b_O`.
    pub bias: bool,
    /// The LayerNorm applied to the residual stream before attention (`ln1`).
    pub ln: Option<LayerNorm>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mlp {
    pub d_mlp: Size,
    pub act: Activation,
    /// `b_in`, `b_out`.
    pub bias: bool,
    /// The LayerNorm before the MLP (`ln2`).
    pub ln: Option<LayerNorm>,
    pub span: Span,
}

/// One residual block: attention, then optionally an MLP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub attn: Attn,
    pub mlp: Option<Mlp>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unembed {
    /// `b_U`.
    pub bias: bool,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub name: String,
    /// Every declared dimension by name, in name order.
    pub dims: BTreeMap<String, Size>,
    pub d_model: Size,
    pub d_vocab: Size,
    /// Token embedding `W_E`.
    pub embed: Span,
    /// Positional embedding `W_P`, when the model has one.
    pub pos_embed: Option<Span>,
    pub layers: Vec<Layer>,
    pub ln_final: Option<LayerNorm>,
    pub unembed: Unembed,
}

impl Model {
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Heads per layer, in layer order.
    pub fn heads_per_layer(&self) -> Vec<usize> {
        self.layers.iter().map(|l| l.attn.n_heads).collect()
    }
}
