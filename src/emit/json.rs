//! The stable JSON schema of `pathc expand --format json` (documented in the README).
//!
//! Counts are decimal strings: they exceed 2^64 for large models and JSON numbers lose
//! precision past 2^53.

use std::io::{self, Write};

use serde::Serialize;

use super::notation::{Heads, Notation};
use super::{for_each_score_term, Buffered};
use crate::graph::{push_usize, Source};
use crate::paths::{self, Composition, Counts, HeadRef, IndexVar, Path, Side, Template};
use crate::Expansion;

pub const SCHEMA: &str = "pathc.expand/1";

const N: Notation = Notation::Text;

#[derive(Serialize)]
struct CountsJson {
    total: String,
    by_order: Vec<String>,
}

impl From<&Counts> for CountsJson {
    fn from(c: &Counts) -> CountsJson {
        CountsJson { total: c.total().to_string(), by_order: c.by_order.iter().map(ToString::to_string).collect() }
    }
}

#[derive(Serialize)]
struct TemplateJson {
    order: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<Vec<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    composition: Option<Composition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<SideJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<SideJson>,
    term: String,
    count: String,
}

/// A layer's attention where it is not GPT-2's (in `"attention"`, present when any layer's is
/// not).
#[derive(Serialize)]
struct AttentionJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    kv_heads: Option<usize>,
    causal: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    scale: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotary: Option<RotaryJson>,
}

#[derive(Serialize)]
struct RotaryJson {
    dim: u64,
    base: f64,
    style: &'static str,
}

impl AttentionJson {
    fn of(a: &crate::model::Attn) -> AttentionJson {
        AttentionJson {
            kv_heads: (a.kv_heads != a.n_heads).then_some(a.kv_heads),
            causal: a.causal,
            scale: a.scale.map(|s| s.0),
            rotary: a.rotary.map(|r| RotaryJson { dim: r.dim, base: r.base.0, style: r.style.name() }),
        }
    }
}

#[derive(Serialize)]
struct SideJson {
    source: String,
    layers: Vec<usize>,
}

/// Appends `[["A^{0.1}", ...]` style lists: factor strings need no escaping (they are made of
/// ASCII letters, digits, `^{}._()`, `ᵀ` and `Δ`).
fn push_factors(out: &mut String, chain: &[paths::Factor], p: &Path<'_>) {
    out.push('[');
    for (i, f) in chain.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        N.write_factor(out, *f, Heads::Concrete(p));
        out.push('"');
    }
    out.push(']');
}

fn push_heads(out: &mut String, p: &Path<'_>, side: Side) {
    out.push('[');
    let mut first = true;
    for (b, head) in p.template.binders.iter().zip(p.assignment) {
        if b.side == side {
            if !first {
                out.push(',');
            }
            first = false;
            out.push('[');
            push_usize(out, b.layer);
            out.push(',');
            push_usize(out, *head);
            out.push(']');
        }
    }
    out.push(']');
}

/// One logit path as a JSON object on one line.
fn push_path(out: &mut String, p: &Path<'_>) {
    out.push_str("{\"name\":\"");
    p.write_name(out);
    out.push_str("\",\"order\":");
    push_usize(out, p.template.order());
    out.push_str(",\"source\":\"");
    Source::write_name_of(p.template.source(), out);
    out.push_str("\",\"heads\":");
    push_heads(out, p, Side::Head);
    out.push_str(",\"position\":");
    push_factors(out, &p.template.position[0], p);
    out.push_str(",\"weights\":");
    push_factors(out, &p.template.weights, p);
    out.push('}');
}

/// One attention-score term as a JSON object on one line, written in place (millions of them).
fn push_score_term(out: &mut String, target: HeadRef, p: &Path<'_>) {
    out.push_str("{\"name\":\"");
    p.write_score_name(target, out);
    out.push_str("\",\"head\":[");
    push_usize(out, target.layer);
    out.push(',');
    push_usize(out, target.head);
    out.push_str("],\"order\":");
    push_usize(out, p.template.order());
    out.push_str(",\"composition\":\"");
    out.push_str(Composition::of(p.template).name());
    out.push_str("\",\"query\":{\"source\":\"");
    Source::write_name_of(p.template.query_source(), out);
    out.push_str("\",\"heads\":");
    push_heads(out, p, Side::Query);
    out.push_str("},\"key\":{\"source\":\"");
    Source::write_name_of(p.template.source(), out);
    out.push_str("\",\"heads\":");
    push_heads(out, p, Side::Key);
    out.push_str("},\"query_position\":");
    push_factors(out, &p.template.position[0], p);
    out.push_str(",\"key_position\":");
    push_factors(out, &p.template.position[1], p);
    out.push_str(",\"weights\":");
    push_factors(out, &p.template.weights, p);
    out.push('}');
}

fn source_name(t: &Template) -> String {
    t.source().map_or("?".to_string(), |s| s.name())
}

/// `  "name": value,` on one line.
fn field(out: &mut dyn Write, name: &str, value: &impl Serialize) -> io::Result<()> {
    writeln!(out, "  \"{name}\": {},", serde_json::to_string(value)?)
}

pub fn write(exp: &Expansion, out: &mut dyn Write) -> io::Result<()> {
    let heads = exp.heads_per_layer();
    out.write_all(b"{\n")?;
    field(out, "schema", &SCHEMA)?;
    field(out, "model", &exp.model.name)?;
    field(out, "n_layers", &exp.model.n_layers())?;
    field(out, "heads_per_layer", &heads)?;
    field(out, "sources", &super::sources(exp))?;
    // Optional fields, present only where the architecture differs from GPT-2's.
    if let Some(n) = &exp.model.unembed.d_vocab_out {
        field(out, "d_vocab_out", n)?;
    }
    if exp.model.shortformer() {
        field(out, "positions", &"shortformer")?;
    } else if exp.model.layers.iter().any(|l| l.attn.rotary.is_some()) {
        field(out, "positions", &"rotary")?;
    }
    let attention: Vec<AttentionJson> = exp.model.layers.iter().map(|l| AttentionJson::of(&l.attn)).collect();
    if attention.iter().any(|a| a.kv_heads.is_some() || !a.causal || a.scale.is_some() || a.rotary.is_some()) {
        field(out, "attention", &attention)?;
    }
    field(out, "max_order", &exp.max_order)?;
    field(out, "counts", &CountsJson::from(&exp.logit_counts))?;
    write_paths(exp, &exp.logits, out)?;
    for (key, inputs, input_counts) in
        [("mlp_inputs", &exp.mlp_inputs, &exp.mlp_input_counts), ("mlp_gates", &exp.mlp_gates, &exp.mlp_gate_counts)]
    {
        if inputs.iter().all(Option::is_none) {
            continue;
        }
        write!(out, ",\n  \"{key}\": [")?;
        let mut first = true;
        for (layer, (templates, counts)) in inputs.iter().zip(input_counts).enumerate() {
            let (Some(templates), Some(counts)) = (templates, counts) else { continue };
            out.write_all(if first { b"\n" } else { b",\n" })?;
            first = false;
            writeln!(out, "  {{\n  \"layer\": {layer},")?;
            field(out, "counts", &CountsJson::from(counts))?;
            write_paths(exp, templates, out)?;
            out.write_all(b"\n  }")?;
        }
        out.write_all(b"\n  ]")?;
    }
    if let (Some(layers), Some(counts)) = (&exp.scores, &exp.score_counts) {
        write_scores(exp, layers, counts, out)?;
    }
    out.write_all(b"\n}\n")
}

/// `"templates": [...], "paths": [...]` of one sum of paths (the logits, or an MLP's input).
fn write_paths(exp: &Expansion, templates: &[Template], out: &mut dyn Write) -> io::Result<()> {
    let heads = exp.heads_per_layer();
    out.write_all(b"  \"templates\": [")?;
    let mut lines = LineWriter::new(out);
    for t in templates {
        let json = TemplateJson {
            order: t.order(),
            source: Some(source_name(t)),
            layers: Some(t.layers(Side::Head)),
            composition: None,
            query: None,
            key: None,
            term: format!("{}{}", N.sums(&t.binders, None), N.term(&t.position, &t.weights, Heads::Symbolic)),
            count: paths::count_templates(std::slice::from_ref(t), &heads, None).to_string(),
        };
        lines.item(|buf| buf.push_str(&serde_json::to_string(&json).expect("plain data serialises")));
    }
    lines.finish()?;
    out.write_all(b"\n  ],\n  \"paths\": [")?;
    let mut lines = LineWriter::new(out);
    paths::for_each_path(templates, &heads, None, |p| lines.item(|buf| push_path(buf, &p)));
    lines.finish()?;
    out.write_all(b"\n  ]")
}

/// List items one a line, comma-separated, through a [`Buffered`] writer.
struct LineWriter<'a> {
    out: Buffered<'a>,
    first: bool,
}

impl<'a> LineWriter<'a> {
    fn new(out: &'a mut dyn Write) -> LineWriter<'a> {
        LineWriter { out: Buffered::new(out), first: true }
    }

    fn item(&mut self, fill: impl FnOnce(&mut String)) {
        let separator = if self.first { "\n    " } else { ",\n    " };
        self.first = false;
        self.out.push(|buf| {
            buf.push_str(separator);
            fill(buf);
        });
    }

    fn finish(self) -> io::Result<()> {
        self.out.finish()
    }
}

fn write_scores(exp: &Expansion, layers: &[Vec<Template>], counts: &Counts, out: &mut dyn Write) -> io::Result<()> {
    let heads = exp.heads_per_layer();
    #[derive(Serialize)]
    struct LayerJson {
        layer: usize,
        templates: Vec<TemplateJson>,
    }
    let layer_json: Vec<LayerJson> = layers
        .iter()
        .enumerate()
        .map(|(layer, templates)| {
            let fixed = IndexVar { side: Side::Head, layer };
            LayerJson {
                layer,
                templates: templates
                    .iter()
                    .map(|t| TemplateJson {
                        order: t.order(),
                        source: None,
                        layers: None,
                        composition: Some(Composition::of(t)),
                        query: Some(SideJson {
                            source: t.query_source().map_or("?".to_string(), |s| s.name()),
                            layers: t.layers(Side::Query),
                        }),
                        key: Some(SideJson { source: source_name(t), layers: t.layers(Side::Key) }),
                        term: format!(
                            "{}{}",
                            N.sums(&t.binders, Some(fixed)),
                            N.term(&t.position, &t.weights, Heads::Symbolic)
                        ),
                        count: paths::count_templates(std::slice::from_ref(t), &heads, Some(fixed)).to_string(),
                    })
                    .collect(),
            }
        })
        .collect();
    out.write_all(b",\n  \"qk\": {\n    \"counts\": ")?;
    serde_json::to_writer(&mut *out, &CountsJson::from(counts))?;
    out.write_all(b",\n    \"layers\": ")?;
    serde_json::to_writer(&mut *out, &layer_json)?;
    out.write_all(b",\n    \"terms\": [")?;
    let mut lines = LineWriter::new(out);
    for (layer, templates) in layers.iter().enumerate() {
        for_each_score_term(exp, layer, templates, |target, p| lines.item(|buf| push_score_term(buf, target, &p)));
    }
    lines.finish()?;
    out.write_all(b"\n    ]\n  }")
}
