//! Term graph → the e-graph's starting terms, written in the paper's product form:
//! `T = (Id⊗W_U) · Π_l (Id⊗Id + Σ_{h∈H_l} A^{l,h} ⊗ W_O^{l,h} W_V^{l,h}) · Σ_s (Id⊗W_s)`.
//!
//! Heads enter as one symbolic sum per layer (DESIGN.md §6): the e-graph then holds one term per
//! choice of layers, never one per concrete head. The product is built one factor at a time on
//! top of the already expanded stream (see `rewrite/mod.rs` for why).

use egg::{Id, Language, RecExpr};
use petgraph::graph::NodeIndex;

use super::lang::{IndexVar, Side, Tensor};
use crate::diag::Diagnostic;
use crate::graph::{Edge, Node, NormSite, Source, TermGraph};

pub struct TermBuilder {
    expr: RecExpr<Tensor>,
    max_order: Option<u32>,
}

impl TermBuilder {
    pub fn new(max_order: Option<u32>) -> TermBuilder {
        TermBuilder { expr: RecExpr::default(), max_order }
    }

    pub fn finish(self) -> RecExpr<Tensor> {
        self.expr
    }

    fn add(&mut self, node: Tensor) -> Id {
        self.expr.add(node)
    }

    fn kron(&mut self, pos: Id, res: Id) -> Id {
        self.add(Tensor::Kron([pos, res]))
    }

    fn mul(&mut self, a: Id, b: Id) -> Id {
        self.add(Tensor::Mul([a, b]))
    }

    fn truncate(&mut self, term: Id) -> Id {
        match self.max_order {
            Some(k) => self.truncate_to(term, k as i64),
            None => term,
        }
    }

    fn truncate_to(&mut self, term: Id, k: i64) -> Id {
        let k = self.add(Tensor::Num(k));
        self.add(Tensor::Trunc([k, term]))
    }

    /// Copies an already expanded term in, returning its root.
    pub fn embed(&mut self, term: &RecExpr<Tensor>) -> Id {
        // The summands of the top-level sum, and the `+` nodes joining them.
        let nodes = term.as_ref();
        let mut joins = vec![false; nodes.len()];
        let mut summands = Vec::new();
        let mut stack = vec![Id::from(nodes.len() - 1)];
        while let Some(id) = stack.pop() {
            match &term[id] {
                Tensor::Add([a, b]) => {
                    joins[usize::from(id)] = true;
                    stack.push(*b);
                    stack.push(*a);
                }
                _ => summands.push(id),
            }
        }
        let mut ids: Vec<Id> = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            // A joining `+` is rebuilt below; its placeholder is never read.
            let id = if joins[i] { Id::from(0) } else { self.add(node.clone().map_children(|c| ids[usize::from(c)])) };
            ids.push(id);
        }
        let summands: Vec<Id> = summands.iter().map(|s| ids[usize::from(*s)]).collect();
        self.balanced_sum(&summands)
    }

    /// A sum as a balanced tree: distributing a product over it then takes log(n) e-graph
    /// iterations instead of n (the extracted sum is a chain as long as the number of terms).
    fn balanced_sum(&mut self, terms: &[Id]) -> Id {
        match terms {
            [] => self.add(Tensor::Zero),
            [one] => *one,
            _ => {
                let (left, right) = terms.split_at(terms.len() / 2);
                let (left, right) = (self.balanced_sum(left), self.balanced_sum(right));
                self.add(Tensor::Add([left, right]))
            }
        }
    }

    /// The residual stream `resid[0]`: the sum of the sources, `Σ_s Id⊗W_s`.
    pub fn sources(&mut self, graph: &TermGraph) -> Result<Id, Diagnostic> {
        let identity = self.add(Tensor::Identity);
        let mut stream: Option<Id> = None;
        for writer in graph.inputs(graph.resid[0], Edge::Write) {
            let Node::Source(source) = graph.node(writer).node else {
                return Err(unsupported(graph, writer));
            };
            let weight = self.add(match source {
                Source::E => Tensor::Embed,
                Source::P => Tensor::PosEmbed,
            });
            let term = self.kron(identity, weight);
            stream = Some(match stream {
                Some(s) => self.add(Tensor::Add([s, term])),
                None => term,
            });
        }
        Ok(stream.expect("graph invariant: resid[0] has a source"))
    }

    /// `resid[step]` from `resid[step - 1]`: one more factor of the product,
    /// `trunc_K((Id⊗Id + Σ_{h∈H_l} A^h ⊗ W_O^h W_V^h) · stream)`, head indices on `side`.
    pub fn block(&mut self, graph: &TermGraph, step: usize, side: Side, stream: Id) -> Result<Id, Diagnostic> {
        let mut layer = None;
        for w in graph.inputs(graph.resid[step], Edge::Write) {
            let Node::Head { layer: l, .. } = graph.node(w).node else {
                return Err(unsupported(graph, w));
            };
            layer = Some(l);
            for reader in graph.inputs(w, Edge::Read) {
                if reader != graph.resid[step - 1] {
                    return Err(unsupported(graph, reader));
                }
            }
        }
        let layer = layer.expect("graph invariant: each block writes");
        let identity = self.add(Tensor::Identity);
        let index = self.add(Tensor::Index(IndexVar { side, layer }));
        let pattern = self.add(Tensor::Pattern(index));
        let w_o = self.add(Tensor::WO(index));
        let w_v = self.add(Tensor::WV(index));
        let ov = self.mul(w_o, w_v);
        let head = self.kron(pattern, ov);
        // Σ_h over the layer's heads is implicit in the index (see `lang.rs`).
        let heads = head;
        match self.max_order {
            // The graded form of a truncated step: the heads have order exactly 1, so
            // T_K((Id⊗Id + H)·R) = T_K(R) + H·T_{K-1}(R). Written this way the e-graph never
            // builds the order-(K+1) terms that truncation would then drop (measured: 3.5× the
            // needed work at layer 12 of 12 for K = 3).
            Some(k) => {
                let kept = self.truncate_to(stream, k as i64);
                let lowered = self.truncate_to(stream, k as i64 - 1);
                let through_heads = self.mul(heads, lowered);
                Ok(self.add(Tensor::Add([kept, through_heads])))
            }
            None => {
                let skip = self.kron(identity, identity);
                let block = self.add(Tensor::Add([skip, heads]));
                Ok(self.mul(block, stream))
            }
        }
    }

    /// The logits from the last residual state: `(Id⊗W_U) · stream`.
    pub fn logits(&mut self, graph: &TermGraph, stream: Id) -> Result<Id, Diagnostic> {
        for reader in graph.inputs(graph.unembed, Edge::Read) {
            if reader != *graph.resid.last().expect("resid is non-empty") {
                return Err(unsupported(graph, reader));
            }
        }
        if let Some(&bias) = graph.inputs(graph.unembed, Edge::Write).first() {
            return Err(unsupported(graph, bias));
        }
        let identity = self.add(Tensor::Identity);
        let w_u = self.add(Tensor::Unembed);
        let unembed = self.kron(identity, w_u);
        // The stream is already truncated and W_U has order 0: no truncation needed here.
        Ok(self.mul(unembed, stream))
    }

    /// The attention scores of layer `layer`'s heads as one symbolic head `h{layer}`:
    /// `trunc_K(Σ_h bilin(x_q, Id⊗W_Q^{hT} W_K^h, x_k))`, from the expanded query-side and
    /// key-side residual streams (independent head indices).
    pub fn scores(&mut self, layer: usize, query: &RecExpr<Tensor>, key: &RecExpr<Tensor>) -> Id {
        let query = self.embed(query);
        let key = self.embed(key);
        let index = self.add(Tensor::Index(IndexVar { side: Side::Head, layer }));
        let w_q = self.add(Tensor::WQ(index));
        let w_q_t = self.add(Tensor::Transpose(w_q));
        let w_k = self.add(Tensor::WK(index));
        let qk = self.mul(w_q_t, w_k);
        let identity = self.add(Tensor::Identity);
        let form = self.kron(identity, qk);
        let bilinear = self.add(Tensor::Bilin([query, form, key]));
        self.truncate(bilinear)
    }
}

/// The residual state that layer `layer`'s heads read, or the construct in between.
pub fn head_input(graph: &TermGraph, layer: usize) -> Result<usize, Diagnostic> {
    let input = graph.inputs(graph.heads[layer][0], Edge::Read)[0];
    match graph.node(input).node {
        Node::Resid(step) => Ok(step),
        _ => Err(unsupported(graph, input)),
    }
}

/// Every construct the expansion cannot go through yet, in model order: the first of each kind,
/// with a count of the others, so a full model gets a short list rather than one per layer.
pub fn unsupported_constructs(graph: &TermGraph) -> Vec<Diagnostic> {
    let mut firsts: Vec<(&'static str, NodeIndex, usize)> = Vec::new();
    for idx in graph.graph.node_indices() {
        let kind = match graph.node(idx).node {
            Node::Mlp { .. } => "MLPs",
            Node::Norm(_) => "LayerNorms",
            Node::Bias { .. } => "biases",
            Node::Source(_) | Node::Resid(_) | Node::Head { .. } | Node::Unembed => continue,
        };
        match firsts.iter_mut().find(|(k, _, _)| *k == kind) {
            Some((_, _, n)) => *n += 1,
            None => firsts.push((kind, idx, 1)),
        }
    }
    firsts
        .into_iter()
        .map(|(kind, idx, n)| {
            let d = unsupported(graph, idx);
            match n {
                1 => d,
                n => {
                    let help = d.help.clone().unwrap_or_default();
                    d.with_help(format!("{help} (this model has {n} {kind})"))
                }
            }
        })
        .collect()
}

/// A construct the expansion cannot go through yet, pointing at its declaration.
fn unsupported(graph: &TermGraph, idx: NodeIndex) -> Diagnostic {
    let data = graph.node(idx);
    let (what, label) = match &data.node {
        Node::Mlp { layer } => (format!("the MLP of layer {layer}"), "an MLP"),
        Node::Norm(NormSite::Attn(l)) => (format!("the LayerNorm before attention in layer {l}"), "a LayerNorm"),
        Node::Norm(NormSite::Mlp(l)) => (format!("the LayerNorm before the MLP in layer {l}"), "a LayerNorm"),
        Node::Norm(NormSite::Final) => ("the final LayerNorm".to_string(), "a LayerNorm"),
        Node::Bias { name, layer: Some(l) } => (format!("the bias `{name}` of layer {l}"), "a bias"),
        Node::Bias { name, layer: None } => (format!("the bias `{name}`"), "a bias"),
        other => (format!("{other:?}"), "this component"),
    };
    Diagnostic::new(data.span, format!("pathc cannot expand {what} yet"), format!("{label}: not expanded yet"))
        .with_help("the expansion covers attention-only models without biases or LayerNorm for now")
}
