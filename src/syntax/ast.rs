//! The syntax tree of a model file: what was written, with spans, before any checking.

use crate::diag::Span;
pub use crate::model::Real;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident {
    pub text: String,
    pub span: Span,
}

/// A whole model file: `model NAME` followed by items in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub name: Ident,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Dim(DimDecl),
    Component(Component),
    Layer(Layer),
    Repeat(Repeat),
}

/// `dim d_model = 768`, or `dim d_model` for a symbolic dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimDecl {
    pub name: Ident,
    pub value: Option<Number>,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Number {
    pub value: u64,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ComponentKind {
    Embed,
    PosEmbed,
    LayerNorm,
    RmsNorm,
    Attn,
    Mlp,
    Unembed,
    /// `layer(...)`'s header, whose arguments are checked as a component's (never parsed as a
    /// component: the grammar's `layer` rule makes it).
    Layer,
}

impl ComponentKind {
    pub fn keyword(self) -> &'static str {
        match self {
            ComponentKind::Embed => "embed",
            ComponentKind::PosEmbed => "pos_embed",
            ComponentKind::LayerNorm => "layernorm",
            ComponentKind::RmsNorm => "rmsnorm",
            ComponentKind::Attn => "attn",
            ComponentKind::Mlp => "mlp",
            ComponentKind::Unembed => "unembed",
            ComponentKind::Layer => "layer",
        }
    }

    pub(crate) fn from_keyword(text: &str) -> Option<ComponentKind> {
        Some(match text {
            "embed" => ComponentKind::Embed,
            "pos_embed" => ComponentKind::PosEmbed,
            "layernorm" => ComponentKind::LayerNorm,
            "rmsnorm" => ComponentKind::RmsNorm,
            "attn" => ComponentKind::Attn,
            "mlp" => ComponentKind::Mlp,
            "unembed" => ComponentKind::Unembed,
            _ => return None,
        })
    }
}

/// `attn(heads = 12, d_head = d_head, bias)` and its kin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub kind: ComponentKind,
    pub keyword_span: Span,
    pub args: Vec<Arg>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    pub name: Ident,
    pub value: Value,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A bare argument name, `bias`, meaning `bias = true`.
    Flag,
    Int(Number),
    /// A decimal number (`2.5`, `1e-6`), always finite.
    Real(Real, Span),
    Bool(bool, Span),
    Name(Ident),
}

/// `layer { ... }` or `layer(parallel) { ... }`: one residual block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// `layer`'s own arguments (`parallel`), as a component's; `keyword_span` is `layer`'s.
    pub header: Component,
    pub components: Vec<Component>,
    pub span: Span,
}

/// `repeat N { layer {...} ... }`: the layers inside, N times over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repeat {
    pub count: Number,
    pub layers: Vec<Layer>,
    pub span: Span,
}
