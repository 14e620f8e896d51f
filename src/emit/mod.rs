//! Emitters: an [`Expansion`] as text, LaTeX, JSON or DOT; numeric reports; SVG plots.
//!
//! Invariant: output is a pure function of the expansion (ordered iteration only), so the same
//! input gives byte-identical output. Emitters stream: memory does not grow with the number of
//! paths written.

pub mod count;
pub mod dataset;
pub mod dot;
pub mod json;
pub mod latex;
pub mod notation;
pub mod numbers;
pub mod plot;
pub mod report;
pub mod text;

use crate::paths::{self, HeadRef, IndexVar, Path, Side, Template};
use crate::Expansion;

/// Calls `visit(target head, term)` for every attention-score term, head by head, in order.
pub(crate) fn for_each_score_term(
    exp: &Expansion,
    layer: usize,
    templates: &[Template],
    mut visit: impl FnMut(HeadRef, Path<'_>),
) {
    let heads = exp.heads_per_layer();
    for head in 0..heads[layer] {
        let target = HeadRef { layer, head };
        paths::for_each_path(templates, &heads, Some((IndexVar { side: Side::Head, layer }, head)), |p| {
            visit(target, p)
        });
    }
}

/// "2 layers × 4 heads" or "3 layers (heads 4, 2, 8)".
pub(crate) fn shape_summary(exp: &Expansion) -> String {
    let heads = exp.heads_per_layer();
    let layers = match heads.len() {
        1 => "1 layer".to_string(),
        n => format!("{n} layers"),
    };
    match heads.first() {
        None => "0 layers".to_string(),
        Some(&h) if heads.iter().all(|&x| x == h) => {
            format!("{layers} × {h} head{}", if h == 1 { "" } else { "s" })
        }
        Some(_) => format!("{layers} (heads {})", heads.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// The names of the logits' sources in stream order: `E`, `P`, then per layer `bV`, `bO0`,
/// `M0`, `bout0`, and `bU` last.
pub(crate) fn sources(exp: &Expansion) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for entry in exp.graph.entries() {
        let name = entry.source.name();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if exp.graph.logit_bias {
        names.push(crate::graph::Source::BiasU.name());
    }
    names
}

pub(crate) fn plural(n: &impl std::fmt::Display, one: &str, many: &str) -> String {
    let text = n.to_string();
    if text == "1" {
        format!("1 {one}")
    } else {
        format!("{text} {many}")
    }
}

/// Output assembled in a reused buffer and written in large blocks, keeping the first I/O error:
/// formatting a million paths through `write!` on the sink would dominate the run time.
pub(crate) struct Buffered<'a> {
    out: &'a mut dyn std::io::Write,
    buf: String,
    result: std::io::Result<()>,
}

impl<'a> Buffered<'a> {
    pub(crate) fn new(out: &'a mut dyn std::io::Write) -> Buffered<'a> {
        Buffered { out, buf: String::with_capacity(1 << 16), result: Ok(()) }
    }

    pub(crate) fn push(&mut self, fill: impl FnOnce(&mut String)) {
        fill(&mut self.buf);
        if self.buf.len() >= 1 << 15 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.result.is_ok() {
            self.result = self.out.write_all(self.buf.as_bytes());
        }
        self.buf.clear();
    }

    pub(crate) fn finish(mut self) -> std::io::Result<()> {
        self.flush();
        self.result
    }
}
