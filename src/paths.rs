//! Paths: the extracted sum as path templates, their exact counts, and the enumeration of
//! concrete paths in a fixed order.
//!
//! A [`Template`] is one term of the symbolic expansion, e.g.
//! `Σ_{h1∈H1} Σ_{h0∈H0} (A^{1.h1}·A^{0.h0}) ⊗ (W_U·W_OV^{1.h1}·W_OV^{0.h0}·W_E)`; its concrete
//! paths are its head assignments. Invariant: counting never enumerates, and enumeration yields
//! exactly the counted number of paths, in the order documented on [`sort_logit_templates`].

use std::fmt;
use std::str::FromStr;

use num_bigint::BigUint;
use num_traits::{One, Zero};
use serde::Serialize;

use crate::graph::{push_usize, Block, NormSite, Source, TermGraph};

/// Which product a head index belongs to: the logit expansion (`h`), or the query (`q`) or key
/// (`k`) side of an attention score's bilinear form. Query and key paths pass through the same
/// layers with *independent* heads, so they need distinct index variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    Head,
    Query,
    Key,
}

/// A symbolic head index: "some head of layer `layer`", bound by a Σ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IndexVar {
    pub side: Side,
    pub layer: usize,
}

impl fmt::Display for IndexVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = match self.side {
            Side::Head => 'h',
            Side::Query => 'q',
            Side::Key => 'k',
        };
        write!(f, "{c}{}", self.layer)
    }
}

impl FromStr for IndexVar {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut chars = s.chars();
        let side = match chars.next() {
            Some('h') => Side::Head,
            Some('q') => Side::Query,
            Some('k') => Side::Key,
            _ => return Err(()),
        };
        let layer = chars.as_str().parse().map_err(|_| ())?;
        Ok(IndexVar { side, layer })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FactorKind {
    /// An attention pattern `A` (position side).
    Pattern,
    /// A LayerNorm's frozen scale `N = diag(1/σ)` (position side).
    Scale(NormSite),
    /// `W_OV = W_O W_V`.
    OV,
    /// `W_QK = W_Q^T W_K` (times the attention scale).
    QK,
    /// `W_O` alone: before a value bias, `W_O·b_V`.
    O,
    /// `W_Q`, `W_K` alone: facing a key or query bias, `W_Qᵀ·b_K`, `b_Qᵀ·W_K`.
    Q,
    K,
    Embed,
    PosEmbed,
    Unembed,
    /// `W_in` of a layer's MLP.
    In(usize),
    /// A layer's MLP output (opaque), a source.
    Mlp(usize),
    /// Bias vectors, sources: of the indexed head (`b_V`, `b_Q`, `b_K`) or of a layer.
    BiasV,
    BiasQ,
    BiasK,
    BiasO(usize),
    BiasIn(usize),
    BiasOut(usize),
    BiasU,
}

/// One factor of a path term: a weight or pattern symbol, maybe indexed, maybe transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Factor {
    pub kind: FactorKind,
    pub index: Option<IndexVar>,
    pub transposed: bool,
}

impl Factor {
    pub fn plain(kind: FactorKind) -> Factor {
        Factor { kind, index: None, transposed: false }
    }

    pub fn indexed(kind: FactorKind, index: IndexVar) -> Factor {
        Factor { kind, index: Some(index), transposed: false }
    }

    pub fn transposed(self) -> Factor {
        Factor { transposed: !self.transposed, ..self }
    }

    fn source(self) -> Option<Source> {
        let layer = self.index.map_or(0, |i| i.layer);
        Some(match self.kind {
            FactorKind::Embed => Source::E,
            FactorKind::PosEmbed => Source::P,
            FactorKind::Mlp(l) => Source::Mlp(l),
            FactorKind::BiasV => Source::BiasV(layer),
            FactorKind::BiasQ => Source::BiasQ(layer),
            FactorKind::BiasK => Source::BiasK(layer),
            FactorKind::BiasO(l) => Source::BiasO(l),
            FactorKind::BiasIn(l) => Source::BiasIn(l),
            FactorKind::BiasOut(l) => Source::BiasOut(l),
            FactorKind::BiasU => Source::BiasU,
            _ => return None,
        })
    }
}

/// One term of the symbolic expansion: Σ over `binders` of `position ⊗ weights`.
///
/// For the logits `position` is one chain (the attention patterns, latest layer first); for an
/// attention score it is two, the query side and the key side, and `weights` is the bilinear
/// form's residual matrix `M_qᵀ·W_QK·M_k`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The bound head indices, sorted (by side, then layer).
    pub binders: Vec<IndexVar>,
    pub position: Vec<Vec<Factor>>,
    pub weights: Vec<Factor>,
}

impl Template {
    /// Number of heads the term passes through (its attention patterns).
    pub fn order(&self) -> usize {
        self.position.iter().flatten().filter(|f| f.kind == FactorKind::Pattern).count()
    }

    /// The layers of the heads on `side`, ascending (order of application).
    pub fn layers(&self, side: Side) -> Vec<usize> {
        self.binders.iter().filter(|b| b.side == side).map(|b| b.layer).collect()
    }

    /// Where the (key-side, for scores) path starts: the weights' last factor.
    pub fn source(&self) -> Option<Source> {
        self.weights.last().and_then(|f| f.source())
    }

    /// For an attention score: where the query path starts (the weights' first factor, `W_sᵀ`).
    pub fn query_source(&self) -> Option<Source> {
        self.weights.first().and_then(|f| f.source())
    }

    fn number_of_paths(&self, heads_per_layer: &[usize], fixed: Option<IndexVar>) -> BigUint {
        self.binders
            .iter()
            .filter(|b| Some(**b) != fixed)
            .fold(BigUint::one(), |acc, b| acc * BigUint::from(heads_per_layer[b.layer]))
    }
}

/// A layer and head, `L{layer}H{head}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct HeadRef {
    pub layer: usize,
    pub head: usize,
}

impl fmt::Display for HeadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}H{}", self.layer, self.head)
    }
}

/// A concrete path: a template with every index given a head.
#[derive(Debug, Clone, Copy)]
pub struct Path<'t> {
    pub template: &'t Template,
    /// The head chosen for each of `template.binders`.
    pub assignment: &'t [usize],
}

impl Path<'_> {
    pub fn head_of(&self, var: IndexVar) -> usize {
        let slot = self.template.binders.iter().position(|b| *b == var).expect("every index is bound");
        self.assignment[slot]
    }

    /// The heads on `side`, in order of application.
    pub fn heads(&self, side: Side) -> Vec<HeadRef> {
        self.template
            .binders
            .iter()
            .zip(self.assignment)
            .filter(|(b, _)| b.side == side)
            .map(|(b, &head)| HeadRef { layer: b.layer, head })
            .collect()
    }

    /// `E`, `P/L0H3`, `E/L0H1/L1H2`: the source, then the heads in order of application.
    pub fn name(&self) -> String {
        let mut out = String::new();
        self.write_name(&mut out);
        out
    }

    /// [`Path::name`] into a caller's buffer.
    pub fn write_name(&self, out: &mut String) {
        match self.template.source() {
            Some(source) => source.write_name(out),
            None => out.push('?'),
        }
        for (b, &head) in self.template.binders.iter().zip(self.assignment) {
            if b.side == Side::Head {
                out.push_str("/L");
                push_usize(out, b.layer);
                out.push('H');
                push_usize(out, head);
            }
        }
    }

    /// The name of an attention-score term: `L1H2[q=E/L0H1,k=P]`, the head whose score it is,
    /// then its query path and key path.
    pub fn score_name(&self, target: HeadRef) -> String {
        let name = |s: Option<Source>| s.map_or("?".to_string(), Source::name);
        let query = side_name(&name(self.template.query_source()), &self.heads(Side::Query));
        let key = side_name(&name(self.template.source()), &self.heads(Side::Key));
        format!("{target}[q={query},k={key}]")
    }
}

fn side_name(source: &str, heads: &[HeadRef]) -> String {
    let mut name = source.to_string();
    for h in heads {
        name.push('/');
        name.push_str(&h.to_string());
    }
    name
}

/// How an attention-score term composes (Elhage et al.): through heads on neither side (direct),
/// the query side, the key side, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Composition {
    #[serde(rename = "direct")]
    Direct,
    #[serde(rename = "Q")]
    Query,
    #[serde(rename = "K")]
    Key,
    #[serde(rename = "QK")]
    Both,
}

impl Composition {
    pub fn of(template: &Template) -> Composition {
        let q = !template.layers(Side::Query).is_empty();
        let k = !template.layers(Side::Key).is_empty();
        match (q, k) {
            (false, false) => Composition::Direct,
            (true, false) => Composition::Query,
            (false, true) => Composition::Key,
            (true, true) => Composition::Both,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Composition::Direct => "direct",
            Composition::Query => "Q-composition",
            Composition::Key => "K-composition",
            Composition::Both => "Q- and K-composition",
        }
    }
}

/// Sorts logit templates into the documented path order: by order, then by the layers of the
/// heads (ascending), then by source (E before P). Within a template, paths run through head
/// assignments lexicographically, the earliest layer most significant. This is the order of the
/// TransformerLens fixtures' `path_names`.
pub fn sort_logit_templates(templates: &mut [Template]) {
    templates.sort_by_key(|t| (t.order(), t.layers(Side::Head), t.source()));
}

/// Sorts one layer's attention-score templates: by order, then kind of composition (direct,
/// Q, K, both), then query path, then key path.
pub fn sort_score_templates(templates: &mut [Template]) {
    templates.sort_by_key(|t| {
        (t.order(), Composition::of(t), t.layers(Side::Query), t.query_source(), t.layers(Side::Key), t.source())
    });
}

/// Calls `visit` for every concrete path of `templates`, in order. `fixed` pins one index (the
/// head whose attention score is expanded) to a given head.
pub fn for_each_path(
    templates: &[Template],
    heads_per_layer: &[usize],
    fixed: Option<(IndexVar, usize)>,
    mut visit: impl FnMut(Path<'_>),
) {
    for template in templates {
        let n = template.binders.len();
        let ranges: Vec<usize> = template
            .binders
            .iter()
            .map(|b| match fixed {
                Some((var, _)) if var == *b => 1,
                _ => heads_per_layer[b.layer],
            })
            .collect();
        let offsets: Vec<usize> = template
            .binders
            .iter()
            .map(|b| match fixed {
                Some((var, head)) if var == *b => head,
                _ => 0,
            })
            .collect();
        let mut counter = vec![0usize; n];
        let mut assignment = offsets.clone();
        'odometer: loop {
            visit(Path { template, assignment: &assignment });
            for slot in (0..n).rev() {
                counter[slot] += 1;
                if counter[slot] < ranges[slot] {
                    assignment[slot] = offsets[slot] + counter[slot];
                    continue 'odometer;
                }
                counter[slot] = 0;
                assignment[slot] = offsets[slot];
            }
            break;
        }
    }
}

/// Exact numbers of terms by order (index = order), as big integers: counts grow as (1+H)^L.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub by_order: Vec<BigUint>,
}

impl Counts {
    pub fn total(&self) -> BigUint {
        self.by_order.iter().sum()
    }
}

/// Elementary symmetric polynomials e_0..e_K of the heads per layer: e_k is the number of ways
/// to pick k layers and one head in each, i.e. the number of order-k paths per source.
fn head_choices(heads_per_layer: &[usize], max_order: Option<u32>) -> Vec<BigUint> {
    let cap = max_order.map_or(heads_per_layer.len(), |k| (k as usize).min(heads_per_layer.len()));
    let mut e = vec![BigUint::zero(); cap + 1];
    e[0] = BigUint::one();
    for (seen, &h) in heads_per_layer.iter().enumerate() {
        let top = (seen + 1).min(cap);
        for k in (1..=top).rev() {
            let add = &e[k - 1] * BigUint::from(h);
            e[k] += add;
        }
    }
    e
}

/// The number of paths by order in the residual state `resid[step]`, from the architecture
/// alone: a source entering at `resid[e]` has Σ_{|S|=k} Π_{l∈S} H_l paths of order k, S a set of
/// the layers whose heads read `resid[e..step]`; a value bias first passes one of its own
/// layer's heads (one more order, H_l times as many).
pub fn count_stream(graph: &TermGraph, step: usize, max_order: Option<u32>) -> Vec<BigUint> {
    let cap = max_order.map_or(usize::MAX, |k| k as usize);
    let mut by_order: Vec<BigUint> = vec![BigUint::zero()];
    for entry in graph.entries().into_iter().filter(|e| e.step <= step) {
        let heads: Vec<usize> = graph.blocks[entry.step..step]
            .iter()
            .filter_map(|b| match b {
                Block::Attn { n_heads, .. } => Some(*n_heads),
                Block::Mlp { .. } => None,
            })
            .collect();
        let (shift, times) = match entry.source {
            Source::BiasV(l) => (1, graph.heads[l].len()),
            _ => (0, 1),
        };
        if shift > cap {
            continue;
        }
        let capped = max_order.map(|k| k - shift as u32);
        for (k, c) in head_choices(&heads, capped).into_iter().enumerate() {
            if by_order.len() <= k + shift {
                by_order.resize(k + shift + 1, BigUint::zero());
            }
            by_order[k + shift] += c * BigUint::from(times);
        }
    }
    by_order
}

fn add_constant(mut by_order: Vec<BigUint>, constant: bool) -> Vec<BigUint> {
    if constant {
        by_order[0] += BigUint::one();
    }
    by_order
}

/// The number of logit paths by order, from the architecture alone (no enumeration): the paths
/// of the last residual state, and the constant `b_U` term.
pub fn count_logit_paths(graph: &TermGraph, max_order: Option<u32>) -> Counts {
    Counts { by_order: add_constant(count_stream(graph, graph.resid.len() - 1, max_order), graph.logit_bias) }
}

/// The number of terms of each MLP's input by order (`None` for layers without an MLP): the
/// paths of the residual state it reads and the constant `b_in` term.
pub fn count_mlp_inputs(graph: &TermGraph, max_order: Option<u32>) -> Vec<Option<Counts>> {
    (0..graph.heads.len())
        .map(|layer| {
            let block = graph.mlp_block(layer)?;
            let in_bias = matches!(graph.blocks[block], Block::Mlp { in_bias: true, .. });
            Some(Counts { by_order: add_constant(count_stream(graph, block, max_order), in_bias) })
        })
        .collect()
}

/// The number of attention-score terms by order (query-path order + key-path order), summed over
/// every head of every layer: per head, (query terms) × (key terms), each side the paths into
/// the layer plus its constant bias term.
pub fn count_score_terms(graph: &TermGraph, max_order: Option<u32>) -> Counts {
    let cap = max_order.map_or(usize::MAX, |k| k as usize);
    let mut by_order = vec![BigUint::zero()];
    for (layer, heads) in graph.heads.iter().enumerate() {
        let block = graph.attn_block(layer);
        let bias = matches!(graph.blocks[block], Block::Attn { head_bias: true, .. });
        let side = add_constant(count_stream(graph, block, max_order), bias);
        for (a, ca) in side.iter().enumerate() {
            for (b, cb) in side.iter().enumerate() {
                if a + b <= cap {
                    if by_order.len() <= a + b {
                        by_order.resize(a + b + 1, BigUint::zero());
                    }
                    by_order[a + b] += ca * cb * BigUint::from(heads.len());
                }
            }
        }
    }
    Counts { by_order }
}

/// The number of concrete paths the templates enumerate (used to check the formula).
pub fn count_templates(templates: &[Template], heads_per_layer: &[usize], fixed: Option<IndexVar>) -> BigUint {
    templates.iter().map(|t| t.number_of_paths(heads_per_layer, fixed)).sum()
}

/// The largest `max_order` whose count is at most `limit`, with that count; `None` when even
/// order 0 is over the limit.
pub fn largest_order_within(
    limit: &BigUint,
    n_layers: usize,
    count: impl Fn(u32) -> BigUint,
) -> Option<(u32, BigUint)> {
    let mut best = None;
    for k in 0..=(2 * n_layers as u32) {
        let c = count(k);
        if &c > limit {
            break;
        }
        best = Some((k, c));
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(layers: usize, heads: usize, pos_embed: bool) -> TermGraph {
        let pos = if pos_embed { "pos_embed\n dim n_ctx = 8\n" } else { "" };
        let source = format!(
            "model m\n dim d_model = 8\n dim d_vocab = 8\n embed\n {pos} repeat {layers} {{ layer {{ attn(heads = {heads}, d_head = 2) }} }}\n unembed\n"
        );
        TermGraph::build(&crate::syntax::parse_model(&source).unwrap())
    }

    #[test]
    fn full_gpt2_small_count_is_two_times_thirteen_to_the_twelfth() {
        let counts = count_logit_paths(&graph(12, 12, true), None);
        assert_eq!(counts.total(), BigUint::from(2u64 * 13u64.pow(12)));
        assert_eq!(counts.by_order[12], BigUint::from(2u64 * 12u64.pow(12)));
    }

    #[test]
    fn order_three_of_twelve_layers() {
        let counts = count_logit_paths(&graph(12, 12, false), Some(3));
        assert_eq!(counts.total(), BigUint::from(389_809u64));
        assert_eq!(count_logit_paths(&graph(4, 12, false), None).total(), BigUint::from(28_561u64));
    }

    #[test]
    fn counts_stay_exact_past_u128() {
        // 97^96 has 191 digits.
        let total = count_logit_paths(&graph(96, 96, false), None).total();
        assert_eq!(total, BigUint::from(97u32).pow(96));
    }
}
