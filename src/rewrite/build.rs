//! Term graph → the e-graph's starting terms, written in the paper's product form:
//! `T = (Id⊗W_U) · Π_l (Id⊗Id + Σ_{h∈H_l} A^{l,h} ⊗ W_O^{l,h} W_V^{l,h}) · Σ_s (Id⊗W_s)`,
//! extended to full models: a LayerNorm is its frozen scale `N = diag(1/σ)` on the position side
//! (its centring and weight folded into the weights that read it), an MLP's output and every bias
//! are new sources added to the stream where they are written.
//!
//! Heads enter as one symbolic sum per layer (DESIGN.md §6): the e-graph then holds one term per
//! choice of layers, never one per concrete head. The product is built one factor at a time on
//! top of the already expanded stream (see `rewrite/mod.rs` for why).

use egg::{Id, Language, RecExpr};

use super::lang::{IndexVar, Side, Tensor};
use crate::graph::{Block, NormSite, QkPositions, Source, TermGraph};

/// Which of an MLP's input weights: `W_in`, or a gated MLP's `W_gate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpReader {
    In,
    Gate,
}

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

    fn sum(&mut self, terms: &[Id]) -> Id {
        terms.iter().copied().reduce(|a, b| self.add(Tensor::Add([a, b]))).expect("a sum has a term")
    }

    /// `Id ⊗ w`: a source's weight (or an output map) acting on every position alike.
    fn residual(&mut self, weight: Tensor) -> Id {
        let identity = self.add(Tensor::Identity);
        let weight = self.add(weight);
        self.kron(identity, weight)
    }

    fn layer_number(&mut self, layer: usize) -> Id {
        self.add(Tensor::Num(layer as i64))
    }

    /// `(N_site ⊗ Id) · stream`: a LayerNorm with its scale frozen. Its centring and weight are
    /// folded into the weights that read it, and its bias into their biases, so what is left is
    /// the diagonal `1/σ` per position.
    fn normalised(&mut self, site: Option<NormSite>, stream: Id) -> Id {
        let Some(site) = site else { return stream };
        let site = self.add(Tensor::Site(site));
        let scale = self.add(Tensor::Scale(site));
        let identity = self.add(Tensor::Identity);
        let norm = self.kron(scale, identity);
        self.mul(norm, stream)
    }

    /// The residual stream `resid[0]`: the sum of the embeddings, `Σ_s Id⊗W_s`.
    pub fn sources(&mut self, graph: &TermGraph) -> Id {
        let embeddings: Vec<Id> = graph
            .entries()
            .iter()
            .filter(|e| e.step == 0)
            .map(|e| match e.source {
                Source::P => Tensor::PosEmbed,
                _ => Tensor::Embed,
            })
            .map(|weight| self.residual(weight))
            .collect();
        self.sum(&embeddings)
    }

    /// `resid[i + 1]` from `resid[i]`: the skip connection plus what `block` writes, head indices
    /// on `side`. An attention block adds `Σ_h (A^h·N) ⊗ W_O^h W_V^h` applied to the stream, the
    /// value-bias terms `Σ_h A^h ⊗ W_O^h·b_V^h` and `Id ⊗ b_O`; an MLP adds its output `Id ⊗ M`
    /// and `Id ⊗ b_out`.
    pub fn block(&mut self, block: &Block, side: Side, stream: Id) -> Id {
        let mut terms = Vec::new();
        match *block {
            Block::Attn { layer, norm, head_bias, out_bias, .. } => {
                let index = self.add(Tensor::Index(IndexVar { side, layer }));
                let pattern = self.add(Tensor::Pattern(index));
                let w_o = self.add(Tensor::WO(index));
                let w_v = self.add(Tensor::WV(index));
                let ov = self.mul(w_o, w_v);
                // Σ_h over the layer's heads is implicit in the index (see `lang.rs`).
                let heads = self.kron(pattern, ov);
                let site = norm.then_some(NormSite::Attn(layer));
                match self.max_order {
                    // The graded form of a truncated step: the heads have order exactly 1, so
                    // T_K((Id⊗Id + H)·R) = T_K(R) + H·T_{K-1}(R). Written this way the e-graph
                    // never builds the order-(K+1) terms that truncation would then drop
                    // (measured: 3.5× the needed work at layer 12 of 12 for K = 3).
                    Some(k) => {
                        let kept = self.truncate_to(stream, k as i64);
                        let lowered = self.truncate_to(stream, k as i64 - 1);
                        let read = self.normalised(site, lowered);
                        let through_heads = self.mul(heads, read);
                        terms.extend([kept, through_heads]);
                    }
                    None => {
                        let read = self.normalised(site, stream);
                        let through_heads = self.mul(heads, read);
                        terms.extend([stream, through_heads]);
                    }
                }
                // A value bias passes its head: order 1.
                if head_bias && self.max_order != Some(0) {
                    let bias = self.add(Tensor::BiasV(index));
                    let written = self.mul(w_o, bias);
                    terms.push(self.kron(pattern, written));
                }
                if out_bias {
                    let layer = self.layer_number(layer);
                    terms.push(self.residual(Tensor::BiasO(layer)));
                }
            }
            Block::Mlp { layer, out_bias, .. } => {
                let layer = self.layer_number(layer);
                terms.extend([stream, self.residual(Tensor::MlpOut(layer))]);
                if out_bias {
                    terms.push(self.residual(Tensor::BiasOut(layer)));
                }
            }
        }
        self.sum(&terms)
    }

    /// An input of an MLP block from the stream it reads: `(Id⊗W_in)·(N⊗Id)·stream + Id⊗b_in`
    /// (its pre-activation; a gated MLP's linear input), or a gated MLP's gate input
    /// `(Id⊗W_gate)·(N⊗Id)·stream + Id⊗b_gate`. `N` is the MLP's norm, or in a parallel layer
    /// with one norm the attention's.
    pub fn mlp_input(&mut self, block: &Block, reader: MlpReader, stream: Id) -> Id {
        let Block::Mlp { layer, norm, in_bias, gate, .. } = *block else {
            unreachable!("mlp_input is called on MLP blocks")
        };
        let read = self.normalised(norm, stream);
        let number = self.layer_number(layer);
        let (weight, bias, constant) = match reader {
            MlpReader::In => (Tensor::WIn(number), Tensor::BiasIn(number), in_bias),
            MlpReader::Gate => (Tensor::WGate(number), Tensor::BiasGate(number), gate == Some(true)),
        };
        self.read_by(weight, read, constant.then_some(bias))
    }

    /// `(Id⊗weight)·read + Id⊗bias`: what a weight reading the stream makes (an MLP's input, a
    /// score side, the logits).
    fn read_by(&mut self, weight: Tensor, read: Id, bias: Option<Tensor>) -> Id {
        let weight = self.residual(weight);
        let mut terms = vec![self.mul(weight, read)];
        if let Some(bias) = bias {
            terms.push(self.residual(bias));
        }
        self.sum(&terms)
    }

    /// The logits from the last residual state: `(Id⊗W_U)·(N⊗Id)·stream + Id⊗b_U`.
    pub fn logits(&mut self, graph: &TermGraph, stream: Id) -> Id {
        let read = self.normalised(graph.final_norm.then_some(NormSite::Final), stream);
        // The stream is already truncated and W_U has order 0: no truncation needed here.
        self.read_by(Tensor::Unembed, read, graph.logit_bias.then_some(Tensor::BiasU))
    }

    /// One side of the attention scores of layer `layer`'s heads, `h{layer}` the symbolic head:
    /// `(Id⊗W_Q^h)·(N⊗Id)·stream + Id⊗b_Q^h` on the query side (`W_K`, `b_K` on the key side),
    /// shortformer's `Id⊗W_P` added to what `W_Q` reads. The stream is truncated already and
    /// the side adds order 0: no truncation here. `pair.rs` pairs the two sides.
    pub fn score_side(&mut self, block: &Block, side: Side, stream: Id) -> Id {
        let Block::Attn { layer, norm, head_bias, positions, .. } = *block else {
            unreachable!("score sides are read by attention blocks")
        };
        let index = self.add(Tensor::Index(IndexVar { side: Side::Head, layer }));
        let (weight, bias) = match side {
            Side::Key => (Tensor::WK(index), Tensor::BiasK(index)),
            Side::Query | Side::Head => (Tensor::WQ(index), Tensor::BiasQ(index)),
        };
        let mut read = self.normalised(norm.then_some(NormSite::Attn(layer)), stream);
        if positions == QkPositions::Shortformer {
            // Shortformer: `W_P` joins the query and key inputs after the LayerNorm.
            let pos = self.residual(Tensor::PosEmbed);
            read = self.add(Tensor::Add([read, pos]));
        }
        self.read_by(weight, read, head_bias.then_some(bias))
    }
}
