//! Semantic checks: [`ast::File`] → [`Model`], collecting every error rather than stopping at
//! the first.

use std::collections::BTreeMap;

use super::ast::{self, Arg, Component, ComponentKind, Item, Value};
use std::borrow::Cow;

use crate::diag::{Diagnostic, LineIndex, Span};
use crate::model::{
    Activation, Attn, Layer, Mlp, Model, Norm, NormKind, PosEmbed, Real, Rotary, RotaryStyle, Size, Unembed, NORM_EPS,
};

/// Bounds that keep the term graph and the e-graph small enough to build. Far above any real
/// model (GPT-3 has 96 layers × 96 heads).
pub const MAX_LAYERS: u64 = 4096;
pub const MAX_HEADS: u64 = 4096;
/// Heads of all layers together: each is a node of the term graph, so this bounds its size
/// (4096 layers of 4096 heads would be 16.8 million nodes and take seconds to build for nothing).
pub const MAX_TOTAL_HEADS: u64 = 1 << 20;

pub fn check(file: &ast::File, source: &str) -> Result<Model, Vec<Diagnostic>> {
    let mut cx = Checker { lines: LineIndex::new(source), errors: Vec::new(), dims: BTreeMap::new() };
    cx.declare_dims(file);
    let model = cx.check_items(file);
    if cx.errors.is_empty() {
        Ok(model.expect("a model is built whenever no error was reported"))
    } else {
        cx.errors.sort_by_key(|d| d.span.start);
        Err(cx.errors)
    }
}

struct Checker {
    /// For "first declared on line N" in O(log n), however many duplicates there are.
    lines: LineIndex,
    errors: Vec<Diagnostic>,
    dims: BTreeMap<String, (Size, Span)>,
}

/// Where the top-level items have got to, to catch components out of order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Start,
    Embedded,
    Layers,
    FinalNorm,
    Unembedded,
}

impl Checker {
    fn error(&mut self, d: Diagnostic) {
        self.errors.push(d);
    }

    fn line_of(&self, span: Span) -> usize {
        self.lines.line(span.start)
    }

    fn declare_dims(&mut self, file: &ast::File) {
        for item in &file.items {
            let Item::Dim(decl) = item else { continue };
            let name = &decl.name.text;
            if let Some((_, first)) = self.dims.get(name) {
                let first_line = self.line_of(*first);
                let shown = short(name);
                self.error(
                    Diagnostic::new(decl.name.span, format!("duplicate dimension `{shown}`"), "declared twice")
                        .with_help(format!("`{shown}` is first declared on line {first_line}")),
                );
                continue;
            }
            let size = match decl.value {
                Some(n) if n.value == 0 => {
                    self.error(Diagnostic::new(
                        n.span,
                        format!("dimension `{}` is zero", short(name)),
                        "must be at least 1",
                    ));
                    Size::Known(1)
                }
                Some(n) => Size::Known(n.value),
                None => Size::Symbolic(name.clone()),
            };
            self.dims.insert(name.clone(), (size, decl.name.span));
        }
    }

    fn required_dim(&mut self, name: &str, why: &str, at: Span) -> Size {
        match self.dims.get(name) {
            Some((size, _)) => size.clone(),
            None => {
                self.error(
                    Diagnostic::new(at, format!("missing dimension `{name}`"), why.to_string())
                        .with_help(format!("declare it with `dim {name} = N` (or `dim {name}` to keep it symbolic)")),
                );
                Size::Symbolic(name.to_string())
            }
        }
    }

    fn check_items(&mut self, file: &ast::File) -> Option<Model> {
        let mut stage = Stage::Start;
        let mut embed = None;
        let mut pos_embed = None;
        let mut layers = Vec::new();
        let mut ln_final = None;
        let mut unembed = None;
        let mut n_layers: u64 = 0;
        let mut n_heads: u64 = 0;
        let mut misplaced_embed = false;
        for item in &file.items {
            if stage == Stage::Unembedded && !matches!(item, Item::Dim(_)) {
                let span = item_span(item);
                self.error(
                    Diagnostic::new(span, "nothing may follow the unembedding", "after `unembed`")
                        .with_help("`unembed` is the model's last component"),
                );
                continue;
            }
            match item {
                Item::Dim(_) => {}
                Item::Component(c) => match c.kind {
                    ComponentKind::Embed | ComponentKind::PosEmbed => {
                        let shortformer = if c.kind == ComponentKind::Embed {
                            self.no_args(c);
                            false
                        } else {
                            self.component_args(c, &[("shortformer", ArgKind::Bool)]).bool("shortformer")
                        };
                        let slot = if c.kind == ComponentKind::Embed { &mut embed } else { &mut pos_embed };
                        if let Some((first, _)) = *slot {
                            let line = self.line_of(first);
                            self.error(
                                Diagnostic::new(
                                    c.keyword_span,
                                    format!("duplicate `{}`", c.kind.keyword()),
                                    "declared twice",
                                )
                                .with_help(format!("first declared on line {line}")),
                            );
                        } else if stage > Stage::Embedded {
                            misplaced_embed |= c.kind == ComponentKind::Embed;
                            self.error(Diagnostic::new(
                                c.keyword_span,
                                format!("`{}` after the layers", c.kind.keyword()),
                                "embeddings come before the first layer",
                            ));
                        } else {
                            *slot = Some((c.span, shortformer));
                            stage = Stage::Embedded;
                        }
                    }
                    ComponentKind::LayerNorm | ComponentKind::RmsNorm => {
                        let norm = self.norm(c);
                        if stage == Stage::FinalNorm {
                            self.error(Diagnostic::new(
                                c.keyword_span,
                                format!("duplicate final `{}`", c.kind.keyword()),
                                "a second final norm",
                            ));
                        } else {
                            ln_final = norm;
                            stage = Stage::FinalNorm;
                        }
                    }
                    ComponentKind::Layer => unreachable!("a layer's header is not a component"),
                    ComponentKind::Attn | ComponentKind::Mlp => {
                        self.error(
                            Diagnostic::new(
                                c.keyword_span,
                                format!("`{}` outside a layer", c.kind.keyword()),
                                "not inside `layer { ... }`",
                            )
                            .with_help(format!("write `layer {{ {}(...) }}`", c.kind.keyword())),
                        );
                    }
                    ComponentKind::Unembed => {
                        let args = self.component_args(c, &[("bias", ArgKind::Bool), ("d_vocab_out", ArgKind::Size)]);
                        let d_vocab_out = match args.size("d_vocab_out") {
                            Some((Size::Known(0), span)) => {
                                self.error(Diagnostic::new(span, "`d_vocab_out` is zero", "must be at least 1"));
                                None
                            }
                            other => other.map(|(size, _)| size),
                        };
                        unembed = Some(Unembed { bias: args.bool("bias"), d_vocab_out, span: c.span });
                        stage = Stage::Unembedded;
                    }
                },
                Item::Layer(_) | Item::Repeat(_) => {
                    if stage == Stage::FinalNorm {
                        self.error(
                            Diagnostic::new(
                                item_span(item),
                                "a layer after the final `layernorm`",
                                "after the final LayerNorm",
                            )
                            .with_help("a `layernorm` outside a layer is the final one; put layers before it"),
                        );
                        continue;
                    }
                    let (body, times) = match item {
                        Item::Layer(l) => (std::slice::from_ref(l), 1),
                        Item::Repeat(r) => {
                            if r.count.value == 0 {
                                self.error(Diagnostic::new(r.count.span, "`repeat 0`", "must repeat at least once"));
                            }
                            if r.layers.is_empty() {
                                self.error(Diagnostic::new(r.span, "empty `repeat`", "holds no `layer { ... }`"));
                            }
                            (r.layers.as_slice(), r.count.value)
                        }
                        _ => unreachable!(),
                    };
                    let checked: Vec<Option<Layer>> = body.iter().map(|l| self.layer(l)).collect();
                    n_layers = n_layers.saturating_add(times.saturating_mul(body.len() as u64));
                    if n_layers > MAX_LAYERS {
                        if n_layers - times.saturating_mul(body.len() as u64) <= MAX_LAYERS {
                            self.error(Diagnostic::new(
                                item_span(item),
                                format!("too many layers (more than {MAX_LAYERS})"),
                                "the model grows past the limit here",
                            ));
                        }
                        continue;
                    }
                    let body_heads: u64 = checked.iter().flatten().map(|l| l.attn.n_heads as u64).sum();
                    let before = n_heads;
                    n_heads = n_heads.saturating_add(times.saturating_mul(body_heads));
                    if n_heads > MAX_TOTAL_HEADS {
                        if before <= MAX_TOTAL_HEADS {
                            self.error(
                                Diagnostic::new(
                                    item_span(item),
                                    format!("too many heads in all (more than {MAX_TOTAL_HEADS})"),
                                    "the model grows past the limit here",
                                )
                                .with_help("every head is a node of the term graph: GPT-3 has 9,216"),
                            );
                        }
                        continue;
                    }
                    for _ in 0..times {
                        layers.extend(checked.iter().flatten().cloned());
                    }
                    stage = Stage::Layers;
                }
            }
        }
        let header_span = file.name.span;
        if embed.is_none() && !misplaced_embed {
            self.error(
                Diagnostic::new(header_span, "the model has no token embedding", "no `embed` in this model")
                    .with_help("add `embed` before the first layer"),
            );
        }
        if unembed.is_none() {
            self.error(
                Diagnostic::new(header_span, "the model has no unembedding", "no `unembed` in this model")
                    .with_help("add `unembed` as the last component"),
            );
        }
        let d_model = self.required_dim("d_model", "every model needs its residual width", header_span);
        let d_vocab =
            self.required_dim("d_vocab", "the embedding and unembedding need the vocabulary size", header_span);
        if let Some((span, shortformer)) = pos_embed {
            self.required_dim("n_ctx", "`pos_embed` needs the context length", span);
            // One kind of positions per model, as TransformerLens's `positional_embedding_type`.
            if let Some(attn) = layers.iter().map(|l: &Layer| &l.attn).find(|a| a.rotary.is_some()) {
                let kind = if shortformer { "`pos_embed(shortformer)`" } else { "`pos_embed`" };
                self.error(
                    Diagnostic::new(attn.span, format!("rotary attention in a model with {kind}"), "rotary here")
                        .with_help(
                            "a model has one kind of positions (standard, shortformer or rotary): \
                             remove `pos_embed` for a rotary model",
                        ),
                );
            }
        }
        Some(Model {
            name: file.name.text.clone(),
            dims: self.dims.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect(),
            d_model,
            d_vocab,
            embed: embed?.0,
            pos_embed: pos_embed.map(|(span, shortformer)| PosEmbed { shortformer, span }),
            layers,
            ln_final,
            unembed: unembed?,
        })
    }

    fn no_args(&mut self, c: &Component) {
        self.component_args(c, &[]);
    }

    /// A norm: `layernorm`, `layernorm(pre)`, `rmsnorm`, `rmsnorm(pre)`, each with `eps`.
    /// `None` when an argument is wrong (reported).
    fn norm(&mut self, c: &Component) -> Option<Norm> {
        let args = self.component_args(c, &[("pre", ArgKind::Bool), ("eps", ArgKind::Number)]);
        let eps = self.positive(&args, "eps", "added to the variance before the square root");
        let pre = args.bool("pre");
        let kind = match (c.kind, pre) {
            (ComponentKind::LayerNorm, false) => NormKind::LayerNorm,
            (ComponentKind::LayerNorm, true) => NormKind::LayerNormPre,
            (_, false) => NormKind::Rms,
            (_, true) => NormKind::RmsPre,
        };
        Some(Norm { kind, eps: eps?.unwrap_or(Real(NORM_EPS)), span: c.span })
    }

    /// One layer: `[norm] attn [[norm] mlp]`, `parallel` or in sequence.
    fn layer(&mut self, layer: &ast::Layer) -> Option<Layer> {
        let mut attn: Option<Attn> = None;
        let mut mlp: Option<Mlp> = None;
        let mut pending_ln: Option<Norm> = None;
        let mut ok = true;
        let parallel = self.component_args(&layer.header, &[("parallel", ArgKind::Bool)]).bool("parallel");
        for c in &layer.components {
            match c.kind {
                ComponentKind::LayerNorm | ComponentKind::RmsNorm => {
                    let norm = self.norm(c);
                    if pending_ln.is_some() {
                        self.error(Diagnostic::new(
                            c.keyword_span,
                            "two norms in a row",
                            "a norm applies to the next `attn` or `mlp` only",
                        ));
                        ok = false;
                    }
                    ok &= norm.is_some();
                    pending_ln = norm.or(Some(Norm { kind: NormKind::LayerNorm, eps: Real(NORM_EPS), span: c.span }));
                }
                ComponentKind::Attn => {
                    let checked = self.attn(c, pending_ln.take());
                    if attn.is_some() {
                        self.error(
                            Diagnostic::new(
                                c.keyword_span,
                                "a second `attn` in one layer",
                                "one attention block per layer",
                            )
                            .with_help("start a new `layer { ... }`"),
                        );
                        ok = false;
                    } else if mlp.is_some() {
                        self.error(Diagnostic::new(
                            c.keyword_span,
                            "`attn` after `mlp`",
                            "attention comes before the MLP in a layer",
                        ));
                        ok = false;
                    }
                    attn = attn.or(checked);
                    ok &= attn.is_some();
                }
                ComponentKind::Mlp => {
                    let checked = self.mlp(c, pending_ln.take());
                    if mlp.is_some() {
                        self.error(Diagnostic::new(c.keyword_span, "a second `mlp` in one layer", "one MLP per layer"));
                        ok = false;
                    }
                    mlp = mlp.or(checked);
                    ok &= mlp.is_some();
                }
                ComponentKind::Embed | ComponentKind::PosEmbed | ComponentKind::Unembed | ComponentKind::Layer => {
                    self.error(Diagnostic::new(
                        c.keyword_span,
                        format!("`{}` inside a layer", c.kind.keyword()),
                        "only a norm (layernorm, rmsnorm), attn and mlp belong in a layer",
                    ));
                    ok = false;
                }
            }
        }
        if let Some(ln) = pending_ln {
            self.error(Diagnostic::new(
                ln.span,
                format!("`{}` at the end of a layer", ln.kind.syntax()),
                "normalises nothing: no `attn` or `mlp` follows",
            ));
            ok = false;
        }
        if parallel && mlp.is_none() && ok {
            self.error(
                Diagnostic::new(layer.header.span, "a parallel layer without an MLP", "`parallel` here")
                    .with_help("a parallel layer's attention and MLP read the same stream: add `mlp(act = ...)`, or drop `parallel`"),
            );
            ok = false;
        }
        if attn.is_none() && ok {
            self.error(
                Diagnostic::new(layer.span, "a layer without attention", "no `attn` in this layer")
                    .with_help("every layer has one `attn(heads = N)`"),
            );
            ok = false;
        }
        let attn = attn?;
        ok.then_some(Layer { attn, mlp, parallel, span: layer.span })
    }

    fn attn(&mut self, c: &Component, ln: Option<Norm>) -> Option<Attn> {
        let args = self.component_args(
            c,
            &[
                ("heads", ArgKind::Size),
                ("d_head", ArgKind::Size),
                ("bias", ArgKind::Bool),
                ("kv_heads", ArgKind::Size),
                ("causal", ArgKind::Bool),
                ("scale", ArgKind::Number),
                ("rotary", ArgKind::Size),
                ("rotary_base", ArgKind::Number),
                ("rotary_style", ArgKind::Name),
            ],
        );
        let bias = args.bool("bias");
        let heads = args.size("heads");
        let d_head = self.width(&args, "d_head", c)?;
        let causal = args.bool_or("causal", true);
        let scale = self.positive(&args, "scale", "the scores are divided by it");
        let rotary = self.rotary(&args, &d_head, c);
        let n_heads = match heads {
            None if args.given("heads") => return None,
            None => {
                self.error(
                    Diagnostic::new(c.keyword_span, "`attn` without `heads`", "how many heads?")
                        .with_help("write `attn(heads = 12)`"),
                );
                return None;
            }
            Some((Size::Symbolic(name), span)) => {
                let name = short(&name);
                self.error(
                    Diagnostic::new(span, "the number of heads must be a number", format!("`{name}` is symbolic"))
                        .with_help(format!("give it a value: `dim {name} = 12`")),
                );
                return None;
            }
            Some((Size::Known(0), span)) => {
                self.error(Diagnostic::new(span, "zero heads", "an attention block needs at least one head"));
                return None;
            }
            Some((Size::Known(n), span)) if n > MAX_HEADS => {
                self.error(Diagnostic::new(span, format!("too many heads (more than {MAX_HEADS})"), "too many"));
                return None;
            }
            Some((Size::Known(n), _)) => n as usize,
        };
        let kv_heads = match args.size("kv_heads") {
            None => n_heads,
            Some((Size::Symbolic(name), span)) => {
                let name = short(&name);
                self.error(
                    Diagnostic::new(
                        span,
                        "the number of key/value heads must be a number",
                        format!("`{name}` is symbolic"),
                    )
                    .with_help(format!("give it a value: `dim {name} = 4`")),
                );
                return None;
            }
            Some((Size::Known(0), span)) => {
                self.error(Diagnostic::new(span, "zero key/value heads", "grouped-query attention needs at least one"));
                return None;
            }
            Some((Size::Known(k), span)) if n_heads as u64 % k != 0 => {
                self.error(
                    Diagnostic::new(
                        span,
                        format!("{n_heads} heads are not a multiple of {k} key/value heads"),
                        "must divide `heads`",
                    )
                    .with_help("each key/value head serves the same number of query heads: `heads = kv_heads × group`"),
                );
                return None;
            }
            Some((Size::Known(k), _)) => k as usize,
        };
        let (scale, rotary) = (scale?, rotary?);
        Some(Attn { n_heads, kv_heads, d_head, causal, scale, rotary, bias, ln, span: c.span })
    }

    /// A positive decimal argument, if given; `Some(None)` when absent, `None` when wrong
    /// (reported).
    fn positive(&mut self, args: &CheckedArgs, name: &str, why: &str) -> Option<Option<Real>> {
        match args.number(name) {
            Some((x, span)) if x <= 0.0 => {
                self.error(Diagnostic::new(span, format!("`{name}` must be positive"), why.to_string()));
                None
            }
            Some((x, _)) => Some(Some(Real(x))),
            None if args.given(name) => None,
            None => Some(None),
        }
    }

    /// `rotary = D` with its `rotary_base` and `rotary_style`; `Some(None)` without rotary,
    /// `None` when wrong (reported).
    fn rotary(&mut self, args: &CheckedArgs, d_head: &Size, c: &Component) -> Option<Option<Rotary>> {
        let base = self.positive(args, "rotary_base", "rotations are by `position · base^(−2i/D)`");
        let style = match args.name("rotary_style") {
            None => Some(RotaryStyle::Neox),
            Some(name) => match RotaryStyle::ALL.iter().find(|s| s.name() == name.text) {
                Some(style) => Some(*style),
                None => {
                    self.error(
                        Diagnostic::new(
                            name.span,
                            format!("unknown rotary style `{}`", short(&name.text)),
                            "not a rotary style",
                        )
                        .with_help("known: neox (rotate halves: GPT-NeoX, Llama), gptj (adjacent pairs: GPT-J)"),
                    );
                    None
                }
            },
        };
        let Some((dim, span)) = args.size("rotary") else {
            if !args.given("rotary") {
                for extra in ["rotary_base", "rotary_style"] {
                    if let Some(arg) = c.args.iter().find(|a| a.name.text == extra) {
                        self.error(
                            Diagnostic::new(arg.name.span, format!("`{extra}` without `rotary`"), "rotates nothing")
                                .with_help("add `rotary = D`, the number of dimensions of each head to rotate"),
                        );
                    }
                }
                return if args.given("rotary_base") || args.given("rotary_style") { None } else { Some(None) };
            }
            return None;
        };
        let dim = match dim {
            Size::Symbolic(name) => {
                let name = short(&name);
                self.error(
                    Diagnostic::new(span, "the rotary dimension must be a number", format!("`{name}` is symbolic"))
                        .with_help(format!("give it a value: `dim {name} = 16`")),
                );
                return None;
            }
            Size::Known(d) if d == 0 || d % 2 == 1 => {
                self.error(
                    Diagnostic::new(span, format!("rotary dimension {d} is not a positive even number"), "odd or zero")
                        .with_help("rotary embeddings rotate pairs of dimensions"),
                );
                return None;
            }
            Size::Known(d) => d,
        };
        if let Size::Known(d_head) = *d_head {
            if dim > d_head {
                self.error(
                    Diagnostic::new(span, format!("rotary dimension {dim} exceeds d_head = {d_head}"), "too large")
                        .with_help("at most every dimension of a head is rotated: `rotary ≤ d_head`"),
                );
                return None;
            }
        }
        Some(Some(Rotary { dim, base: base?.unwrap_or(Real(10000.0)), style: style? }))
    }

    /// A component's width argument (`d_head`, `d_mlp`): given, else the dimension of that name.
    /// `None` when it is wrong (already reported).
    fn width(&mut self, args: &CheckedArgs, name: &str, c: &Component) -> Option<Size> {
        match args.size(name) {
            Some((Size::Known(0), span)) => {
                self.error(Diagnostic::new(span, format!("`{name}` is zero"), "must be at least 1"));
                None
            }
            Some((size, _)) => Some(size),
            None if args.given(name) => None,
            None => {
                let why = format!("`{}` needs `{name} = N` or a declared `dim {name}`", c.kind.keyword());
                Some(self.required_dim(name, &why, c.keyword_span))
            }
        }
    }

    fn mlp(&mut self, c: &Component, ln: Option<Norm>) -> Option<Mlp> {
        let args = self.component_args(
            c,
            &[
                ("d_mlp", ArgKind::Size),
                ("act", ArgKind::Name),
                ("bias", ArgKind::Bool),
                ("gated", ArgKind::Bool),
                ("ln", ArgKind::Name),
            ],
        );
        let bias = args.bool("bias");
        let gated = args.bool("gated");
        let d_mlp = self.width(&args, "d_mlp", c)?;
        let act = match args.name("act") {
            None if args.given("act") => return None,
            None => {
                self.error(
                    Diagnostic::new(c.keyword_span, "`mlp` without `act`", "which activation?")
                        .with_help(format!("write `mlp(act = gelu_new)`; known: {}", Activation::known())),
                );
                return None;
            }
            Some(name) => match Activation::ALL.iter().find(|a| a.name() == name.text) {
                Some(a) => *a,
                None => {
                    self.error(
                        Diagnostic::new(
                            name.span,
                            format!("unknown activation `{}`", short(&name.text)),
                            "not an activation pathc knows",
                        )
                        .with_help(format!("known: {}", Activation::known())),
                    );
                    return None;
                }
            },
        };
        if gated && act == Activation::SoluLn {
            let at = c.args.iter().find(|a| a.name.text == "gated").map_or(c.keyword_span, |a| a.span);
            self.error(Diagnostic::new(at, "`solu_ln` cannot gate", "`gated` with `act = solu_ln`").with_help(
                "a gated MLP multiplies an elementwise activation of x·W_gate by x·W_in: use silu, gelu, gelu_new, …",
            ));
            return None;
        }
        let inner_norm = match (act, args.name("ln")) {
            (Activation::SoluLn, None) => Some(NormKind::LayerNorm),
            (Activation::SoluLn, Some(name)) if name.text == "pre" => Some(NormKind::LayerNormPre),
            (Activation::SoluLn, Some(name)) => {
                self.error(
                    Diagnostic::new(name.span, format!("unknown inner norm `{}`", short(&name.text)), "not `pre`")
                        .with_help("`solu_ln`'s own LayerNorm has weights (the default) or is `ln = pre` (LNPre)"),
                );
                return None;
            }
            (_, Some(name)) => {
                self.error(
                    Diagnostic::new(name.span, "`ln` without `act = solu_ln`", "only solu_ln has a norm of its own")
                        .with_help("the norm before an MLP is written before it: `layernorm` then `mlp(...)`"),
                );
                return None;
            }
            (_, None) => None,
        };
        Some(Mlp { d_mlp, act, bias, ln, gated, inner_norm, span: c.span })
    }

    /// Checks a component's arguments against what it accepts; reports unknown, duplicate and
    /// mistyped arguments, and returns the well-typed ones.
    fn component_args(&mut self, c: &Component, accepted: &[(&str, ArgKind)]) -> CheckedArgs {
        let mut out = CheckedArgs::default();
        let mut seen: BTreeMap<&str, Span> = BTreeMap::new();
        for arg in &c.args {
            let name = arg.name.text.as_str();
            let Some(&(_, kind)) = accepted.iter().find(|(n, _)| *n == name) else {
                let help = if accepted.is_empty() {
                    format!("`{}` takes no arguments", c.kind.keyword())
                } else {
                    let names: Vec<&str> = accepted.iter().map(|(n, _)| *n).collect();
                    format!("`{}` accepts: {}", c.kind.keyword(), names.join(", "))
                };
                self.error(
                    Diagnostic::new(
                        arg.name.span,
                        format!("unknown argument `{}`", short(name)),
                        format!("not an argument of `{}`", c.kind.keyword()),
                    )
                    .with_help(help),
                );
                continue;
            };
            if let Some(first) = seen.insert(name, arg.span) {
                let line = self.line_of(first);
                self.error(
                    Diagnostic::new(arg.name.span, format!("duplicate argument `{}`", short(name)), "given twice")
                        .with_help(format!("first given on line {line}")),
                );
                continue;
            }
            out.given.insert(name.to_string());
            self.typed_arg(arg, kind, &mut out);
        }
        out
    }

    fn typed_arg(&mut self, arg: &Arg, kind: ArgKind, out: &mut CheckedArgs) {
        let name = arg.name.text.clone();
        match (kind, &arg.value) {
            (ArgKind::Bool, Value::Flag) => {
                out.bools.insert(name, true);
            }
            (ArgKind::Bool, Value::Bool(b, _)) => {
                out.bools.insert(name, *b);
            }
            (ArgKind::Size, Value::Int(n)) => {
                out.sizes.insert(name, (Size::Known(n.value), n.span));
            }
            (ArgKind::Size, Value::Name(ident)) => match self.dims.get(&ident.text) {
                Some((size, _)) => {
                    out.sizes.insert(name, (size.clone(), ident.span));
                }
                None => {
                    let help = if self.dims.is_empty() {
                        "no dimensions are declared; add `dim NAME = N`".to_string()
                    } else {
                        // At most a few names, however many are declared.
                        let known: Vec<Cow<'_, str>> = self.dims.keys().take(MAX_LISTED).map(|k| short(k)).collect();
                        let more = self.dims.len() - known.len();
                        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
                        format!("declared dimensions: {}{more}", known.join(", "))
                    };
                    self.error(
                        Diagnostic::new(
                            ident.span,
                            format!("unknown dimension `{}`", short(&ident.text)),
                            "not declared with `dim`",
                        )
                        .with_help(help),
                    );
                }
            },
            (ArgKind::Name, Value::Name(ident)) => {
                out.names.insert(name, ident.clone());
            }
            (ArgKind::Number, Value::Int(n)) => {
                out.numbers.insert(name, (n.value as f64, n.span));
            }
            (ArgKind::Number, Value::Real(x, span)) => {
                out.numbers.insert(name, (x.0, *span));
            }
            (kind, value) => {
                let span = match value {
                    Value::Flag => arg.span,
                    Value::Int(n) => n.span,
                    Value::Bool(_, s) | Value::Real(_, s) => *s,
                    Value::Name(i) => i.span,
                };
                self.error(Diagnostic::new(
                    span,
                    format!("wrong value for `{name}`"),
                    format!("expected {}", kind.describe()),
                ));
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum ArgKind {
    Bool,
    Size,
    Name,
    /// A whole or decimal number.
    Number,
}

impl ArgKind {
    fn describe(self) -> &'static str {
        match self {
            ArgKind::Bool => "`true` or `false`",
            ArgKind::Size => "a number or a declared dimension",
            ArgKind::Name => "a name",
            ArgKind::Number => "a number",
        }
    }
}

#[derive(Default)]
struct CheckedArgs {
    /// Every accepted argument name that was written, well-typed or not: an error about its
    /// value is already reported, so "missing" would only echo it.
    given: std::collections::BTreeSet<String>,
    bools: BTreeMap<String, bool>,
    sizes: BTreeMap<String, (Size, Span)>,
    names: BTreeMap<String, ast::Ident>,
    numbers: BTreeMap<String, (f64, Span)>,
}

impl CheckedArgs {
    fn given(&self, name: &str) -> bool {
        self.given.contains(name)
    }
    fn bool(&self, name: &str) -> bool {
        self.bool_or(name, false)
    }
    fn bool_or(&self, name: &str, default: bool) -> bool {
        self.bools.get(name).copied().unwrap_or(default)
    }
    fn number(&self, name: &str) -> Option<(f64, Span)> {
        self.numbers.get(name).copied()
    }
    fn size(&self, name: &str) -> Option<(Size, Span)> {
        self.sizes.get(name).cloned()
    }
    fn name(&self, name: &str) -> Option<&ast::Ident> {
        self.names.get(name)
    }
}

/// Names listed in a help ("declared dimensions: …") before "and N more".
const MAX_LISTED: usize = 10;

/// Names longer than this many characters are cut (with `…`) in messages.
const MAX_NAME: usize = 40;

/// A name as a message shows it: cut to [`MAX_NAME`] characters, so that a message's size does
/// not grow with what was written.
fn short(name: &str) -> Cow<'_, str> {
    match name.char_indices().nth(MAX_NAME) {
        None => Cow::Borrowed(name),
        Some((i, _)) => Cow::Owned(format!("{}…", &name[..i])),
    }
}

fn item_span(item: &Item) -> Span {
    match item {
        Item::Dim(d) => d.span,
        Item::Component(c) => c.span,
        Item::Layer(l) => l.span,
        Item::Repeat(r) => r.span,
    }
}
