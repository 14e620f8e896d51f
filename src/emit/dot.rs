//! Graphviz DOT of the term graph: residual states as boxes along a spine, components around it.

use std::fmt::Write as _;

use petgraph::visit::EdgeRef;

use crate::graph::{Edge, Node, NormSite, TermGraph};

pub fn write(graph: &TermGraph, model_name: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", model_name.replace(['"', '\\'], "_"));
    let _ = writeln!(out, "  rankdir=BT;\n  node [fontname=\"Helvetica\"];");
    for idx in graph.graph.node_indices() {
        let (label, shape) = match &graph.node(idx).node {
            Node::Source(s) => (format!("{} ({})", s.name(), s.weight()), "invhouse"),
            Node::Bias { name, layer: Some(l) } => (format!("{name} (layer {l})"), "diamond"),
            Node::Bias { name, layer: None } => (name.to_string(), "diamond"),
            Node::Resid(i) => (format!("resid {i}"), "box"),
            Node::Norm(NormSite::Attn(l)) => (format!("ln1 (layer {l})"), "hexagon"),
            Node::Norm(NormSite::Mlp(l)) => (format!("ln2 (layer {l})"), "hexagon"),
            Node::Norm(NormSite::Final) => ("ln_final".to_string(), "hexagon"),
            Node::Head { layer, head } => (format!("L{layer}H{head}"), "ellipse"),
            Node::Mlp { layer } => (format!("MLP (layer {layer})"), "octagon"),
            Node::Unembed => ("unembed (W_U)".to_string(), "house"),
        };
        let _ = writeln!(out, "  n{} [label=\"{label}\", shape={shape}];", idx.index());
    }
    for e in graph.graph.edge_references() {
        let style = match e.weight() {
            Edge::Read => "color=\"#1f77b4\", label=\"read\"",
            Edge::Write => "color=\"#d62728\", label=\"write\"",
            Edge::Skip => "style=bold",
        };
        let _ = writeln!(out, "  n{} -> n{} [{style}];", e.source().index(), e.target().index());
    }
    out.push_str("}\n");
    out
}
