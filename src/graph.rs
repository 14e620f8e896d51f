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

use std::fmt;
use std::str::FromStr;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::diag::Span;
use crate::model::{MlpNorm, Model};

/// Where a path starts: what a path's residual-side chain ends in.
///
/// The residual stream is a sum of sources: the embeddings, each MLP's output (opaque: its
/// input is itself a sum of paths, but what it writes is a new source for later heads), and the
/// constant bias vectors. `BiasQ`, `BiasK` and `BiasIn` never reach the residual stream: they are
/// the constant terms of an attention score's query or key side, and of an MLP's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Source {
    /// Token embedding `W_E`.
    E,
    /// Positional embedding `W_P`.
    P,
    /// The value bias `b_V` of a head of this layer (with LayerNorm, `b_V + W_V·b_ln1`): a
    /// constant that enters the stream through its own head, so it always passes that head.
    BiasV(usize),
    /// `b_O` of this layer's attention.
    BiasO(usize),
    /// The output of this layer's MLP, without `b_out`.
    Mlp(usize),
    /// `b_out` of this layer's MLP.
    BiasOut(usize),
    /// `b_U` (with a final LayerNorm, `b_U + W_U·b_ln_final`): the constant part of the logits.
    BiasU,
    /// `b_Q` of a head of this layer (with LayerNorm, `b_Q + W_Q·b_ln1`): query side only.
    BiasQ(usize),
    /// `b_K` of a head of this layer: key side only.
    BiasK(usize),
    /// `b_in` of this layer's MLP (with LayerNorm, `b_in + W_in·b_ln2`): MLP input only. For a
    /// gated MLP only the norm's bias through `W_in` (TransformerLens adds `b_in` after the
    /// product).
    BiasIn(usize),
    /// A gated MLP's gate-input constant, the norm's bias through `W_gate`.
    BiasGate(usize),
}

/// Sources sort in the order they enter the stream: the embeddings, then layer by layer the
/// value biases, `b_O`, the MLP output and `b_out`; the constants outside the stream last.
impl Ord for Source {
    fn cmp(&self, other: &Source) -> std::cmp::Ordering {
        self.stream_position().cmp(&other.stream_position())
    }
}

impl PartialOrd for Source {
    fn partial_cmp(&self, other: &Source) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Source {
    fn stream_position(self) -> (usize, usize, usize) {
        match self {
            Source::E => (0, 0, 0),
            Source::P => (0, 0, 1),
            Source::BiasV(l) => (1, l, 0),
            Source::BiasO(l) => (1, l, 1),
            Source::Mlp(l) => (1, l, 2),
            Source::BiasOut(l) => (1, l, 3),
            Source::BiasQ(l) => (2, l, 0),
            Source::BiasK(l) => (2, l, 1),
            Source::BiasIn(l) => (2, l, 2),
            Source::BiasGate(l) => (2, l, 3),
            Source::BiasU => (3, 0, 0),
        }
    }

    /// `E`, `P`, `M0`, `bO1`, `bV`: how a path name starts. A value bias is named `bV` alone,
    /// because the head it belongs to is the first head of the path's name (`bV/L0H3/L1H2`).
    pub fn name(self) -> String {
        let mut out = String::new();
        self.write_name(&mut out);
        out
    }

    /// [`Source::write_name`] of a source that may be unknown (`?`), as paths' names write it.
    pub fn write_name_of(source: Option<Source>, out: &mut String) {
        match source {
            Some(source) => source.write_name(out),
            None => out.push('?'),
        }
    }

    /// [`Source::name`] into a caller's buffer.
    pub fn write_name(self, out: &mut String) {
        let (base, layer) = match self {
            Source::E => ("E", None),
            Source::P => ("P", None),
            Source::BiasV(_) => ("bV", None),
            Source::BiasO(l) => ("bO", Some(l)),
            Source::Mlp(l) => ("M", Some(l)),
            Source::BiasOut(l) => ("bout", Some(l)),
            Source::BiasU => ("bU", None),
            Source::BiasQ(_) => ("bQ", None),
            Source::BiasK(_) => ("bK", None),
            Source::BiasIn(l) => ("bin", Some(l)),
            Source::BiasGate(l) => ("bgate", Some(l)),
        };
        out.push_str(base);
        if let Some(l) = layer {
            push_usize(out, l);
        }
    }

    /// The embedding weight of an embedding source, for the term graph's labels.
    pub fn weight(self) -> &'static str {
        match self {
            Source::E => "W_E",
            Source::P => "W_P",
            _ => "constant",
        }
    }

    /// The residual-stream component this source writes to, in TransformerLens's
    /// `decompose_resid` labels (`embed`, `pos_embed`, `0_attn_out`, `0_mlp_out`); `None` for
    /// `b_U` and the sources that never reach the stream.
    pub fn component(self) -> Option<String> {
        match self {
            Source::E => Some("embed".to_string()),
            Source::P => Some("pos_embed".to_string()),
            Source::BiasV(l) | Source::BiasO(l) => Some(format!("{l}_attn_out")),
            Source::Mlp(l) | Source::BiasOut(l) => Some(format!("{l}_mlp_out")),
            Source::BiasU | Source::BiasQ(_) | Source::BiasK(_) | Source::BiasIn(_) | Source::BiasGate(_) => None,
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

/// `ln1.0`, `ln2.0`, `final`: how a LayerNorm's frozen scale `N` is indexed in terms.
impl fmt::Display for NormSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NormSite::Attn(l) => write!(f, "ln1.{l}"),
            NormSite::Mlp(l) => write!(f, "ln2.{l}"),
            NormSite::Final => f.write_str("final"),
        }
    }
}

impl FromStr for NormSite {
    type Err = ();
    fn from_str(s: &str) -> Result<NormSite, ()> {
        let layer = |rest: &str| rest.parse::<usize>().map_err(|_| ());
        match s {
            "final" => Ok(NormSite::Final),
            _ => match (s.strip_prefix("ln1."), s.strip_prefix("ln2.")) {
                (Some(rest), _) => Ok(NormSite::Attn(layer(rest)?)),
                (_, Some(rest)) => Ok(NormSite::Mlp(layer(rest)?)),
                _ => Err(()),
            },
        }
    }
}

/// What writes `resid[i + 1]`, with what the expansion needs to know about it: which terms it
/// adds besides the skip connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    Attn {
        layer: usize,
        n_heads: usize,
        /// What the positions do to this layer's queries and keys.
        positions: QkPositions,
        /// A LayerNorm (`ln1`) before the heads: its frozen scale `N` on their position side.
        norm: bool,
        /// The heads' own bias terms: value biases `A^h ⊗ W_O^h·b_V^h` in the stream, and `b_Q`,
        /// `b_K` in the attention scores. They come from the attention's biases or from a
        /// LayerNorm's bias folded into them, so all three exist together.
        head_bias: bool,
        /// `b_O`.
        out_bias: bool,
    },
    Mlp {
        layer: usize,
        /// The norm whose frozen scale the MLP's input goes through: its own (`ln2`), or in a
        /// parallel layer with one norm the attention's (`ln1`).
        norm: Option<NormSite>,
        /// A constant term `b_in` in the MLP's (linear) input: `b_in`, or the norm's bias folded
        /// through `W_in`. For a gated MLP only the latter: TransformerLens adds its `b_in` after
        /// the product, which makes it part of the opaque output.
        in_bias: bool,
        /// A gated MLP's second input `x·W_gate`: `Some(constant)`, with a constant term when
        /// the norm has a bias (folded through `W_gate`).
        gate: Option<bool>,
        /// `b_out`.
        out_bias: bool,
        /// A parallel layer: the MLP reads the stream its layer's attention reads, not the one
        /// after it.
        parallel: bool,
    },
}

impl Block {
    /// The order-0 terms each side of an attention score has besides the stream's paths: the
    /// bias (`b_Q`, `b_K`) and, for shortformer, `W_P`. Zero for an MLP.
    pub fn score_side_constants(&self) -> u64 {
        match *self {
            Block::Attn { head_bias, positions, .. } => {
                u64::from(head_bias) + u64::from(positions == QkPositions::Shortformer)
            }
            Block::Mlp { .. } => 0,
        }
    }
}

/// How positions enter an attention layer's scores besides through the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkPositions {
    /// Not at all (learned absolute positions are in the stream, or there are none).
    None,
    /// Shortformer: `W_P` is added to the query and key inputs after the LayerNorm, so each side
    /// of a score has `P` as one more order-0 term (read through the unfolded `W_Q`, `W_K`).
    Shortformer,
    /// Rotary: queries and keys are rotated by their positions, so the bilinear form between
    /// them is the relative rotation `R_Δ`, `Δ` = query position − key position.
    Rotary,
}

/// A source and the residual state `resid[step]` it first belongs to: the heads of the
/// attention blocks that read `resid[step]` or later can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub source: Source,
    pub step: usize,
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
    /// `blocks[i]` writes `resid[i + 1]`.
    pub blocks: Vec<Block>,
    /// A LayerNorm before the unembedding: its frozen scale `N` on every logit path.
    pub final_norm: bool,
    /// A constant logit term `b_U` (from `b_U`, or from the final LayerNorm's bias).
    pub logit_bias: bool,
    /// `W_P` is a source of the residual stream (a positional embedding, not shortformer).
    pub pos_in_stream: bool,
}

impl TermGraph {
    pub fn build(model: &Model) -> TermGraph {
        let mut b = Builder { graph: DiGraph::new() };
        let mut resid = vec![b.node(Node::Resid(0), model.embed)];
        let mut heads = Vec::with_capacity(model.layers.len());
        let mut blocks = Vec::new();
        let src = b.node(Node::Source(Source::E), model.embed);
        b.edge(src, resid[0], Edge::Write);
        // A shortformer's `W_P` never enters the stream: it is read by every head's query and key
        // (edges added with the heads).
        let shortformer = model.pos_embed.filter(|p| p.shortformer).map(|p| b.node(Node::Source(Source::P), p.span));
        if let Some(pos) = model.pos_embed.filter(|p| !p.shortformer) {
            let pos = b.node(Node::Source(Source::P), pos.span);
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
                    if let Some(pos) = shortformer {
                        b.edge(pos, head, Edge::Read);
                    }
                    b.edge(head, after, Edge::Write);
                    head
                })
                .collect();
            heads.push(layer_heads);
            blocks.push(Block::Attn {
                layer: layer_idx,
                n_heads: layer.attn.n_heads,
                positions: match (&layer.attn.rotary, shortformer) {
                    (Some(_), _) => QkPositions::Rotary,
                    (None, Some(_)) => QkPositions::Shortformer,
                    (None, None) => QkPositions::None,
                },
                norm: layer.attn.ln.is_some(),
                head_bias: layer.attn.bias || layer.attn.ln.is_some_and(|ln| ln.kind.has_bias()),
                out_bias: layer.attn.bias,
            });
            if layer.attn.bias {
                let bias = b.node(Node::Bias { name: "b_O", layer: Some(layer_idx) }, layer.attn.span);
                b.edge(bias, after, Edge::Write);
            }
            resid.push(after);
            // MLP block. In a parallel layer it reads what the attention read (`before`), and
            // with one norm the attention's norm.
            if let Some(mlp) = &layer.mlp {
                let attn_input = input;
                let before = after;
                let after = b.node(Node::Resid(resid.len()), mlp.span);
                b.edge(before, after, Edge::Skip);
                let stream = if layer.parallel { resid[resid.len() - 2] } else { before };
                let (input, norm) = match layer.mlp_norm() {
                    MlpNorm::Own(ln) => (
                        b.reader(stream, Node::Norm(NormSite::Mlp(layer_idx)), ln.span),
                        Some((NormSite::Mlp(layer_idx), ln)),
                    ),
                    MlpNorm::Shared(ln) => (attn_input, Some((NormSite::Attn(layer_idx), ln))),
                    MlpNorm::None => (stream, None),
                };
                let node = b.node(Node::Mlp { layer: layer_idx }, mlp.span);
                let norm_bias = norm.is_some_and(|(_, ln)| ln.kind.has_bias());
                blocks.push(Block::Mlp {
                    layer: layer_idx,
                    norm: norm.map(|(site, _)| site),
                    in_bias: if mlp.gated { norm_bias } else { mlp.bias || norm_bias },
                    gate: mlp.gated.then_some(norm_bias),
                    out_bias: mlp.bias,
                    parallel: layer.parallel,
                });
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
        TermGraph {
            graph: b.graph,
            resid,
            heads,
            unembed,
            blocks,
            final_norm: model.ln_final.is_some(),
            logit_bias: model.unembed.bias || model.ln_final.is_some_and(|ln| ln.kind.has_bias()),
            pos_in_stream: model.pos_in_stream(),
        }
    }

    /// The term graph of the same model after TransformerLens's `fold_value_biases`, which moves
    /// every head's `b_V·W_O` into its layer's `b_O`: a layer whose heads have value biases (its
    /// own, or a LayerNorm's folded into them) but which declares no `b_O` gets one, where they
    /// go (the value-bias paths stay, zero). Without it their share of the logits would be in no
    /// path.
    pub fn fold_value_biases(&mut self) {
        for (i, block) in self.blocks.iter_mut().enumerate() {
            if let Block::Attn { layer, head_bias: true, out_bias, .. } = block {
                if !*out_bias {
                    *out_bias = true;
                    let after = self.resid[i + 1];
                    let span = self.graph[after].span;
                    let bias =
                        self.graph.add_node(NodeData { node: Node::Bias { name: "b_O", layer: Some(*layer) }, span });
                    self.graph.add_edge(bias, after, Edge::Write);
                }
            }
        }
    }

    /// Every source of the residual stream with the state it enters, in stream order.
    pub fn entries(&self) -> Vec<Entry> {
        let mut entries = vec![Entry { source: Source::E, step: 0 }];
        if self.pos_in_stream {
            entries.push(Entry { source: Source::P, step: 0 });
        }
        for (i, block) in self.blocks.iter().enumerate() {
            let step = i + 1;
            let mut add = |source| entries.push(Entry { source, step });
            match *block {
                Block::Attn { layer, head_bias, out_bias, .. } => {
                    if head_bias {
                        add(Source::BiasV(layer));
                    }
                    if out_bias {
                        add(Source::BiasO(layer));
                    }
                }
                Block::Mlp { layer, out_bias, .. } => {
                    add(Source::Mlp(layer));
                    if out_bias {
                        add(Source::BiasOut(layer));
                    }
                }
            }
        }
        entries
    }

    /// The index of the block holding layer `layer`'s attention (it reads `resid[index]`).
    pub fn attn_block(&self, layer: usize) -> usize {
        self.blocks
            .iter()
            .position(|b| matches!(b, Block::Attn { layer: l, .. } if *l == layer))
            .expect("every layer has an attention block")
    }

    /// The index of the block holding layer `layer`'s MLP, if it has one.
    pub fn mlp_block(&self, layer: usize) -> Option<usize> {
        self.blocks.iter().position(|b| matches!(b, Block::Mlp { layer: l, .. } if *l == layer))
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

/// Appends a number without `fmt` machinery, for names (`M0`, `E/L0H3`, ...): the hot path when
/// a million paths are written, and layer and head numbers are almost always one or two digits.
pub(crate) fn push_usize(out: &mut String, n: usize) {
    let digit = |d: usize| char::from(b'0' + d as u8);
    if n < 10 {
        out.push(digit(n));
    } else if n < 100 {
        out.push(digit(n / 10));
        out.push(digit(n % 10));
    } else {
        push_usize(out, n / 10);
        out.push(digit(n % 10));
    }
}

#[cfg(test)]
mod tests {
    use super::push_usize;

    #[test]
    fn pushes_numbers() {
        let mut s = String::new();
        for n in [0, 7, 10, 4096, usize::MAX] {
            push_usize(&mut s, n);
            s.push(' ');
        }
        assert_eq!(s, format!("0 7 10 4096 {} ", usize::MAX));
    }
}
