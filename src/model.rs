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
    /// TransformerLens `solu_ln`: `x · softmax(x)` over the MLP's neurons, then the MLP's own
    /// LayerNorm ([`Mlp::inner_norm`]).
    SoluLn,
    GeluFast,
    GeluPytorchTanh,
}

impl Activation {
    pub const ALL: [Activation; 7] = [
        Activation::Relu,
        Activation::Gelu,
        Activation::GeluNew,
        Activation::Silu,
        Activation::SoluLn,
        Activation::GeluFast,
        Activation::GeluPytorchTanh,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::GeluNew => "gelu_new",
            Activation::Silu => "silu",
            Activation::SoluLn => "solu_ln",
            Activation::GeluFast => "gelu_fast",
            Activation::GeluPytorchTanh => "gelu_pytorch_tanh",
        }
    }

    /// The activations' names, for diagnostics: `relu, gelu, …`.
    pub fn known() -> String {
        Activation::ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
    }
}

/// A finite decimal number from a model file (an attention scale, a rotary base), compared by
/// its bits so that a [`Model`] stays `Eq`.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(transparent)]
pub struct Real(pub f64);

impl PartialEq for Real {
    fn eq(&self, other: &Real) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Real {}

impl fmt::Display for Real {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which pairs of a head's first `dim` dimensions rotary embeddings rotate together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RotaryStyle {
    /// Dimension `i` with `i + dim/2` (GPT-NeoX, Pythia, Llama; TransformerLens's default).
    Neox,
    /// Dimension `2i` with `2i + 1` (GPT-J; TransformerLens `rotary_adjacent_pairs`).
    Gptj,
}

impl RotaryStyle {
    pub const ALL: [RotaryStyle; 2] = [RotaryStyle::Neox, RotaryStyle::Gptj];

    pub fn name(self) -> &'static str {
        match self {
            RotaryStyle::Neox => "neox",
            RotaryStyle::Gptj => "gptj",
        }
    }
}

/// Rotary positional embeddings on a head's queries and keys (TransformerLens
/// `positional_embedding_type = "rotary"`): the first `dim` dimensions of every query and key are
/// rotated by an angle proportional to the position, pair `i` at frequency `base^(−2i/dim)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotary {
    /// `rotary_dim`: even, at most `d_head`.
    pub dim: u64,
    /// `rotary_base` (10000 by default).
    pub base: Real,
    pub style: RotaryStyle,
}

/// Which normalisation: TransformerLens's `normalization_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// `LN`: `(x − mean x) / σ · w + b`, `σ = sqrt(var x + eps)` (`layernorm`).
    LayerNorm,
    /// `LNPre`: `(x − mean x) / σ`, no weight or bias (`layernorm(pre)`; what folding leaves).
    LayerNormPre,
    /// `RMS`: `x / rms · w`, `rms = sqrt(mean x² + eps)`, no centring, no bias (`rmsnorm`).
    Rms,
    /// `RMSPre`: `x / rms` (`rmsnorm(pre)`).
    RmsPre,
}

impl NormKind {
    /// Whether it subtracts the mean (LayerNorm) or not (RMSNorm).
    pub fn centres(self) -> bool {
        matches!(self, NormKind::LayerNorm | NormKind::LayerNormPre)
    }

    /// Whether it has a weight `w` (and, for LayerNorm, a bias `b`).
    pub fn has_weight(self) -> bool {
        matches!(self, NormKind::LayerNorm | NormKind::Rms)
    }

    pub fn has_bias(self) -> bool {
        self == NormKind::LayerNorm
    }

    /// What is left once its weight (and bias) are folded into its readers.
    pub fn folded(self) -> NormKind {
        if self.centres() {
            NormKind::LayerNormPre
        } else {
            NormKind::RmsPre
        }
    }

    /// As written in a model file.
    pub fn syntax(self) -> &'static str {
        match self {
            NormKind::LayerNorm => "layernorm",
            NormKind::LayerNormPre => "layernorm(pre)",
            NormKind::Rms => "rmsnorm",
            NormKind::RmsPre => "rmsnorm(pre)",
        }
    }
}

/// The default `eps` of every norm, TransformerLens's `cfg.eps`.
pub const NORM_EPS: f64 = 1e-5;

/// A normalisation: its frozen per-position scale is `N` in the expansion; its weight (and
/// bias) fold into whatever reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Norm {
    pub kind: NormKind,
    /// Added to the variance (or the mean square) before the square root.
    pub eps: Real,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attn {
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention): query head `h` reads the keys and values of
    /// group `h / (n_heads / kv_heads)`. Equal to `n_heads` without grouping; always divides it.
    pub kv_heads: usize,
    pub d_head: Size,
    /// Whether a query attends only to itself and earlier keys (`causal = false`:
    /// TransformerLens `attention_dir = "bidirectional"`).
    pub causal: bool,
    /// What the scores `q·k` are divided by, when it is not `sqrt(d_head)` (`scale = 1`:
    /// TransformerLens `use_attn_scale = false`).
    pub scale: Option<Real>,
    /// Rotary positions on the queries and keys.
    pub rotary: Option<Rotary>,
    /// `b_Q`, `b_K`, `b_V`, `b_O`.
    pub bias: bool,
    /// The norm applied to the residual stream before attention (`ln1`).
    pub ln: Option<Norm>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mlp {
    pub d_mlp: Size,
    pub act: Activation,
    /// `b_in`, `b_out`.
    pub bias: bool,
    /// The norm before the MLP (`ln2`). In a parallel layer without one, the MLP reads the
    /// attention's normalised input (GPT-J's one norm): see [`Layer::mlp_norm`].
    pub ln: Option<Norm>,
    /// A gated MLP (TransformerLens `gated_mlp`): `(act(x·W_gate) ⊙ (x·W_in) + b_in)·W_out + b_out`.
    pub gated: bool,
    /// `solu_ln`'s own LayerNorm over the neurons, after the activation: `LN` (weights
    /// `mlp.ln.w`, `mlp.ln.b`) or `LNPre`. `None` for every other activation.
    pub inner_norm: Option<NormKind>,
    pub span: Span,
}

/// One residual block: attention, then optionally an MLP; or, `parallel`, both reading the
/// same residual stream (GPT-NeoX, GPT-J: `x + Attn(N₁x) + MLP(N₂x)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub attn: Attn,
    pub mlp: Option<Mlp>,
    pub parallel: bool,
    pub span: Span,
}

/// Which norm an MLP's input goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpNorm {
    /// None: the MLP reads the residual stream as it is.
    None,
    /// Its own (`ln2`).
    Own(Norm),
    /// The attention's (`ln1`), in a parallel layer with one norm (GPT-J).
    Shared(Norm),
}

impl Layer {
    /// The norm the MLP's input goes through (see [`MlpNorm`]).
    pub fn mlp_norm(&self) -> MlpNorm {
        let Some(mlp) = &self.mlp else { return MlpNorm::None };
        match (mlp.ln, self.parallel, self.attn.ln) {
            (Some(own), _, _) => MlpNorm::Own(own),
            (None, true, Some(shared)) => MlpNorm::Shared(shared),
            _ => MlpNorm::None,
        }
    }
}

/// A learned positional embedding `W_P` (`[n_ctx, d_model]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PosEmbed {
    /// Shortformer (TransformerLens `positional_embedding_type = "shortformer"`): `W_P` is added
    /// to every attention layer's query and key inputs (after its LayerNorm), never to the
    /// residual stream.
    pub shortformer: bool,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unembed {
    /// `b_U`.
    pub bias: bool,
    /// The number of outputs when it is not `d_vocab` (TransformerLens `d_vocab_out`).
    pub d_vocab_out: Option<Size>,
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
    pub pos_embed: Option<PosEmbed>,
    pub layers: Vec<Layer>,
    pub ln_final: Option<Norm>,
    pub unembed: Unembed,
}

impl Model {
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// The unembedding's output size: `d_vocab_out` when declared, else `d_vocab`.
    pub fn d_vocab_out(&self) -> &Size {
        self.unembed.d_vocab_out.as_ref().unwrap_or(&self.d_vocab)
    }

    /// Whether the positional embedding enters the residual stream (it has one, not shortformer).
    pub fn pos_in_stream(&self) -> bool {
        self.pos_embed.is_some_and(|p| !p.shortformer)
    }

    /// Whether `W_P` is added to the attention layers' query and key inputs (shortformer).
    pub fn shortformer(&self) -> bool {
        self.pos_embed.is_some_and(|p| p.shortformer)
    }

    /// Heads per layer, in layer order.
    pub fn heads_per_layer(&self) -> Vec<usize> {
        self.layers.iter().map(|l| l.attn.n_heads).collect()
    }
}
