//! The term graph (petgraph): a model as the residual stream's reads and writes.
//!
//! Nodes are the residual stream's successive states and the components that read from and
//! write to it: sources (token and positional embedding), constant biases, LayerNorms, heads,
//! MLPs and the unembedding. Edges say who reads what and who writes where; a `Skip` edge carries
//! the residual stream past a block. The expansion is derived from this graph (not from the
//! syntax), so that one walk serves every later stage.
//!
//! Invariant: `resid[0]` is written only by sources; `resid[i+1]` is `resid[i]` (skip) plus the
//! writes of exactly one block (one layer's heads and `b_O`, or one MLP); the unembedding reads
//! the last residual state (through the final LayerNorm when there is one).

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::diag::Span;
use crate::model::Model;

/// Where a path starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Source {
    /// Token embedding `W_E`.
    E,
    /// Positional embedding `W_P`.
    P,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::E => "E",
            Source::P => "P",
        }
    }

    /// The weight the path ends in (read right to left, it is applied first).
    pub fn weight(self) -> &'static str {
        match self {
            Source::E => "W_E",
            Source::P => "W_P",
        }
    }
}

/// Which LayerNorm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NormSite {
    /// `blocks.{l}.ln1`, before attention.
    Attn(usize),
    /// `blocks.{l}.ln2`, before the MLP.
    Mlp(usize),
    /// `ln_final`.
    Final,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Node {
    Source(Source),
    /// A constant added to the residual stream, e.g. `b_O` of layer 0.
    Bias {
        name: &'static str,
        layer: Option<usize>,
    },
    /// The residual stream after `index` blocks have written to it.
    Resid(usize),
    Norm(NormSite),
    Head {
        layer: usize,
        head: usize,
    },
    Mlp {
        layer: usize,
    },
    Unembed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Edge {
    Read,
    Write,
    Skip,
}

#[derive(Debug, Clone)]
pub struct NodeData {
    pub node: Node,
    /// The model-file text that declared it.
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct TermGraph {
    pub graph: DiGraph<NodeData, Edge>,
    /// The residual stream's states in order.
    pub resid: Vec<NodeIndex>,
    /// Each layer's head nodes, in head order.
    pub heads: Vec<Vec<NodeIndex>>,
    pub unembed: NodeIndex,
}

impl TermGraph {
    pub fn build(model: &Model) -> TermGraph {
        let mut b = Builder { graph: DiGraph::new() };
        let mut resid = vec![b.node(Node::Resid(0), model.embed)];
        let mut heads = Vec::with_capacity(model.layers.len());
        let src = b.node(Node::Source(Source::E), model.embed);
        b.edge(src, resid[0], Edge::Write);
        if let Some(span) = model.pos_embed {
            let pos = b.node(Node::Source(Source::P), span);
            b.edge(pos, resid[0], Edge::Write);
        }
        for (layer_idx, layer) in model.layers.iter().enumerate() {
            // Attention block.
            let before = *resid.last().expect("resid starts non-empty");
            let after = b.node(Node::Resid(resid.len()), layer.attn.span);
            b.edge(before, after, Edge::Skip);
            let input = match layer.attn.ln {
                Some(ln) => b.reader(before, Node::Norm(NormSite::Attn(layer_idx)), ln.span),
                None => before,
            };
            let layer_heads: Vec<NodeIndex> = (0..layer.attn.n_heads)
                .map(|head_idx| {
                    let head = b.node(Node::Head { layer: layer_idx, head: head_idx }, layer.attn.span);
                    b.edge(input, head, Edge::Read);
                    b.edge(head, after, Edge::Write);
                    head
                })
                .collect();
            heads.push(layer_heads);
            if layer.attn.bias {
                let bias = b.node(Node::Bias { name: "b_O", layer: Some(layer_idx) }, layer.attn.span);
                b.edge(bias, after, Edge::Write);
            }
            resid.push(after);
            // MLP block.
            if let Some(mlp) = &layer.mlp {
                let before = after;
                let after = b.node(Node::Resid(resid.len()), mlp.span);
                b.edge(before, after, Edge::Skip);
                let input = match mlp.ln {
                    Some(ln) => b.reader(before, Node::Norm(NormSite::Mlp(layer_idx)), ln.span),
                    None => before,
                };
                let node = b.node(Node::Mlp { layer: layer_idx }, mlp.span);
                b.edge(input, node, Edge::Read);
                b.edge(node, after, Edge::Write);
                if mlp.bias {
                    let bias = b.node(Node::Bias { name: "b_out", layer: Some(layer_idx) }, mlp.span);
                    b.edge(bias, after, Edge::Write);
                }
                resid.push(after);
            }
        }
        let last = *resid.last().expect("resid starts non-empty");
        let input = match model.ln_final {
            Some(ln) => b.reader(last, Node::Norm(NormSite::Final), ln.span),
            None => last,
        };
        let unembed = b.node(Node::Unembed, model.unembed.span);
        b.edge(input, unembed, Edge::Read);
        if model.unembed.bias {
            let bias = b.node(Node::Bias { name: "b_U", layer: None }, model.unembed.span);
            b.edge(bias, unembed, Edge::Write);
        }
        TermGraph { graph: b.graph, resid, heads, unembed }
    }

    pub fn node(&self, idx: NodeIndex) -> &NodeData {
        &self.graph[idx]
    }

    /// The nodes with an edge of `kind` into `idx`, in insertion order.
    pub fn inputs(&self, idx: NodeIndex, kind: Edge) -> Vec<NodeIndex> {
        let mut found: Vec<NodeIndex> = self
            .graph
            .edges_directed(idx, Direction::Incoming)
            .filter(|e| *e.weight() == kind)
            .map(|e| e.source())
            .collect();
        found.sort();
        found
    }
}

struct Builder {
    graph: DiGraph<NodeData, Edge>,
}

impl Builder {
    fn node(&mut self, node: Node, span: Span) -> NodeIndex {
        self.graph.add_node(NodeData { node, span })
    }

    fn edge(&mut self, from: NodeIndex, to: NodeIndex, edge: Edge) {
        self.graph.add_edge(from, to, edge);
    }

    /// Adds `node` reading from `from`, returning it.
    fn reader(&mut self, from: NodeIndex, node: Node, span: Span) -> NodeIndex {
        let idx = self.node(node, span);
        self.edge(from, idx, Edge::Read);
        idx
    }
}
