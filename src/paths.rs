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
    /// Rotary: `W_QK(Δ) = W_Qᵀ R_Δ W_K`, Δ the query position minus the key position.
    QKRot,
    /// Rotary: a layer's relative rotation `R_Δ` where a bias keeps `W_Q` and `W_K` apart.
    Rot(usize),
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
    /// `W_gate` of a layer's gated MLP.
    Gate(usize),
    /// A layer's MLP output (opaque), a source.
    Mlp(usize),
    /// Bias vectors, sources: of the indexed head (`b_V`, `b_Q`, `b_K`) or of a layer.
    BiasV,
    BiasQ,
    BiasK,
    BiasO(usize),
    BiasIn(usize),
    /// A gated MLP's gate-input constant (a norm's bias through `W_gate`).
    BiasGate(usize),
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
            FactorKind::BiasGate(l) => Source::BiasGate(l),
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

impl HeadRef {
    /// `L{layer}H{head}` into a caller's buffer.
    pub fn write(self, out: &mut String) {
        out.push('L');
        push_usize(out, self.layer);
        out.push('H');
        push_usize(out, self.head);
    }
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
        self.write_side_name(self.template.source(), Side::Head, out);
    }

    /// The name of an attention-score term: `L1H2[q=E/L0H1,k=P]`, the head whose score it is,
    /// then its query path and key path.
    pub fn score_name(&self, target: HeadRef) -> String {
        let mut out = String::new();
        self.write_score_name(target, &mut out);
        out
    }

    /// [`Path::score_name`] into a caller's buffer (the millions of score terms of a JSON
    /// stream are named without an allocation each).
    pub fn write_score_name(&self, target: HeadRef, out: &mut String) {
        target.write(out);
        out.push_str("[q=");
        self.write_side_name(self.template.query_source(), Side::Query, out);
        out.push_str(",k=");
        self.write_side_name(self.template.source(), Side::Key, out);
        out.push(']');
    }

    /// `E/L0H1/L1H2`: a side's source, then its heads in order of application.
    fn write_side_name(&self, source: Option<Source>, side: Side, out: &mut String) {
        Source::write_name_of(source, out);
        for (b, &head) in self.template.binders.iter().zip(self.assignment) {
            if b.side == side {
                out.push('/');
                HeadRef { layer: b.layer, head }.write(out);
            }
        }
    }
}

/// How an attention-score term composes (Elhage et al.): through heads on neither side (direct),
/// the query side, the key side, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Composition {
    Direct,
    Query,
    Key,
    Both,
}

/// As its [`Composition::name`].
impl Serialize for Composition {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
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

    /// `direct`, `Q`, `K` or `QK`: its name in JSON and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Composition::Direct => "direct",
            Composition::Query => "Q",
            Composition::Key => "K",
            Composition::Both => "QK",
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

/// What a count counts: concrete paths (every head of a layer), or templates (one term per
/// choice of layers, its heads symbolic: the terms the e-graph holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Paths,
    Templates,
}

/// `p += q`, coefficient by coefficient, `p` growing as needed.
fn add_into(p: &mut Vec<BigUint>, q: &[BigUint]) {
    if p.len() < q.len() {
        p.resize(q.len(), BigUint::zero());
    }
    for (a, b) in p.iter_mut().zip(q) {
        *a += b;
    }
}

/// `p · (1 + h·t)`, truncated to degree `cap`, in place.
fn times_one_plus(p: &mut Vec<BigUint>, h: u64, cap: usize) {
    if p.len() <= cap {
        p.push(BigUint::zero());
    }
    for k in (1..p.len()).rev() {
        let (low, high) = p.split_at_mut(k);
        if h == 1 {
            high[0] += &low[k - 1];
        } else {
            high[0] += &low[k - 1] * h;
        }
    }
}

/// The residual stream's terms by order as a polynomial in the order `t`, one block at a time:
/// `R_0` holds the embeddings, and block `i` maps `R_i` to `R_{i+1} = R_i·(1 + H_l·t) + c_i` for
/// attention layer `l` (`H_l` heads; `c_i` = `H_l·t` for its value biases, `1` for `b_O`), and to
/// `R_i + c_i` for an MLP (`c_i` = its output and `b_out`). Coefficient `k` of `R_i` is the
/// number of order-`k` paths in `resid[i]`: for a source entering at `resid[e]`, the elementary
/// symmetric polynomial `e_k` of the heads of the layers between, computed once for every prefix
/// instead of once per source and state (quadratic in the number of layers, not quartic). With
/// `square`, it also keeps `Q_i = R_i²` (both truncated), which the attention scores need:
/// `Q_{i+1} = A²·… = Q_i·(1 + H t)² + 2·A·c_i + c_i²` with `A = R_i·(1 + H t)`.
#[derive(Debug, Clone)]
pub struct StreamCounter {
    cap: usize,
    unit: Unit,
    square: bool,
    step: usize,
    stream: Vec<BigUint>,
    squared: Vec<BigUint>,
}

impl StreamCounter {
    /// `R_0`, orders truncated at `max_order`.
    pub fn new(graph: &TermGraph, max_order: Option<u32>, unit: Unit, square: bool) -> StreamCounter {
        let cap = max_order.map_or(usize::MAX, |k| k as usize);
        let sources = graph.entries().iter().take_while(|e| e.step == 0).count();
        let stream = vec![BigUint::from(sources)];
        let squared = if square { vec![&stream[0] * &stream[0]] } else { Vec::new() };
        StreamCounter { cap, unit, square, step: 0, stream, squared }
    }

    fn heads(&self, n_heads: usize) -> u64 {
        match self.unit {
            Unit::Paths => n_heads as u64,
            Unit::Templates => 1,
        }
    }

    /// The index of the residual state the counter is at.
    pub fn step(&self) -> usize {
        self.step
    }

    /// `R_step` by order (coefficient `k`: the terms of order `k`; never longer than the
    /// truncation allows, and without trailing zeros).
    pub fn stream(&self) -> &[BigUint] {
        &self.stream
    }

    /// `R_step²` truncated (only with `square`): the (query term, key term) pairs by order.
    pub fn squared(&self) -> &[BigUint] {
        &self.squared
    }

    /// `(R + c)²` truncated (only with `square`): the terms of an attention score whose sides
    /// are the stream and `c` order-0 terms more (the bias `b_Q`/`b_K`; shortformer's `W_P`).
    pub fn side_squared(&self, constants: u64) -> Vec<BigUint> {
        let mut out = self.squared.clone();
        if constants > 0 {
            let mut cross: Vec<BigUint> = self.stream.iter().map(|r| r * (2 * constants)).collect();
            cross[0] += constants * constants;
            cross.truncate(self.cap.saturating_add(1));
            add_into(&mut out, &cross);
        }
        out
    }

    /// Applies `block` (the block at index `step`), moving to `resid[step + 1]`.
    pub fn advance(&mut self, block: &Block) {
        // The entries c = c0 + c1·t this block writes.
        let (h, c0, c1) = match *block {
            Block::Attn { n_heads, head_bias, out_bias, .. } => {
                let h = self.heads(n_heads);
                (Some(h), u64::from(out_bias), if head_bias && self.cap >= 1 { h } else { 0 })
            }
            Block::Mlp { out_bias, .. } => (None, 1 + u64::from(out_bias), 0),
        };
        if let Some(h) = h {
            times_one_plus(&mut self.stream, h, self.cap);
            if self.square {
                times_one_plus(&mut self.squared, h, self.cap);
                times_one_plus(&mut self.squared, h, self.cap);
            }
        }
        // `stream` is now A; Q = A² + 2·A·c + c².
        if self.square {
            let mut cross = vec![BigUint::zero(); self.stream.len().min(self.cap) + 1];
            for (k, a) in self.stream.iter().enumerate() {
                if c0 != 0 && k <= self.cap {
                    cross[k] += a * (2 * c0);
                }
                if c1 != 0 && k < self.cap {
                    cross[k + 1] += a * (2 * c1);
                }
            }
            let c = [BigUint::from(c0 * c0), BigUint::from(2 * c0 * c1), BigUint::from(c1 * c1)];
            add_into(&mut cross, &c[..c.len().min(self.cap.saturating_add(1))]);
            add_into(&mut self.squared, &cross);
            trim(&mut self.squared);
        }
        add_into(&mut self.stream, &[BigUint::from(c0), BigUint::from(c1)][..if c1 != 0 { 2 } else { 1 }]);
        self.step += 1;
    }
}

/// Drops trailing zero coefficients (keeping order 0).
fn trim(p: &mut Vec<BigUint>) {
    while p.len() > 1 && p.last().is_some_and(Zero::is_zero) {
        p.pop();
    }
}

fn add_constant(mut by_order: Vec<BigUint>, constant: bool) -> Vec<BigUint> {
    if constant {
        by_order[0] += BigUint::one();
    }
    by_order
}

/// Every count of an expansion, from one pass over the blocks ([`StreamCounter`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermCounts {
    /// The logits' paths.
    pub logits: Counts,
    /// Each MLP's input terms (`None` for a layer without an MLP).
    pub mlp_inputs: Vec<Option<Counts>>,
    /// Each gated MLP's gate-input terms (`None` for a layer without a gated MLP).
    pub mlp_gates: Vec<Option<Counts>>,
    /// With `qk`: the attention-score terms, summed over every head of every layer.
    pub scores: Option<Counts>,
}

impl TermCounts {
    /// Every term an expansion enumerates, by order: the logit paths, the MLPs' inputs and (with
    /// `qk`) the score terms.
    pub fn enumerated(&self) -> Vec<BigUint> {
        let mut all = self.logits.by_order.clone();
        for c in self.mlp_inputs.iter().chain(&self.mlp_gates).flatten() {
            add_into(&mut all, &c.by_order);
        }
        if let Some(s) = &self.scores {
            add_into(&mut all, &s.by_order);
        }
        all
    }
}

/// The numbers of logit paths, MLP-input terms and (with `qk`) attention-score terms by order,
/// from the architecture alone, never enumerating: one pass of [`StreamCounter`], quadratic in
/// the number of layers (big-integer additions), so thousands of layers count in well under a
/// second. With [`Unit::Templates`] the same numbers for templates (every layer one head).
pub fn count_terms(graph: &TermGraph, max_order: Option<u32>, qk: bool, unit: Unit) -> TermCounts {
    let mut counter = StreamCounter::new(graph, max_order, unit, qk);
    let mut mlp_inputs = vec![None; graph.heads.len()];
    let mut mlp_gates = vec![None; graph.heads.len()];
    let mut scores = qk.then(|| vec![BigUint::zero()]);
    // The stream the last attention block read: what a parallel layer's MLP reads.
    let mut before_attention = counter.stream().to_vec();
    for block in &graph.blocks {
        match *block {
            Block::Mlp { layer, in_bias, gate, parallel, .. } => {
                let read = if parallel { &before_attention[..] } else { counter.stream() };
                mlp_inputs[layer] = Some(Counts { by_order: add_constant(read.to_vec(), in_bias) });
                if let Some(constant) = gate {
                    mlp_gates[layer] = Some(Counts { by_order: add_constant(read.to_vec(), constant) });
                }
            }
            Block::Attn { n_heads, .. } => {
                before_attention = counter.stream().to_vec();
                if let Some(scores) = &mut scores {
                    let per_head = counter.side_squared(block.score_side_constants());
                    let h = counter.heads(n_heads);
                    let terms: Vec<BigUint> = per_head.into_iter().map(|c| c * h).collect();
                    add_into(scores, &terms);
                }
            }
        }
        counter.advance(block);
    }
    TermCounts {
        logits: Counts { by_order: add_constant(counter.stream().to_vec(), graph.logit_bias) },
        mlp_inputs,
        mlp_gates,
        scores: scores.map(|by_order| Counts { by_order }),
    }
}

/// The number of paths by order in the residual state `resid[step]`, from the architecture
/// alone: a source entering at `resid[e]` has Σ_{|S|=k} Π_{l∈S} H_l paths of order k, S a set of
/// the layers whose heads read `resid[e..step]`; a value bias first passes one of its own
/// layer's heads (one more order, H_l times as many).
pub fn count_stream(graph: &TermGraph, step: usize, max_order: Option<u32>) -> Vec<BigUint> {
    let mut counter = StreamCounter::new(graph, max_order, Unit::Paths, false);
    for block in &graph.blocks[..step] {
        counter.advance(block);
    }
    counter.stream().to_vec()
}

/// The number of logit paths by order, from the architecture alone (no enumeration): the paths
/// of the last residual state, and the constant `b_U` term.
pub fn count_logit_paths(graph: &TermGraph, max_order: Option<u32>) -> Counts {
    count_terms(graph, max_order, false, Unit::Paths).logits
}

/// The number of terms of each MLP's input by order (`None` for layers without an MLP): the
/// paths of the residual state it reads and the constant `b_in` term.
pub fn count_mlp_inputs(graph: &TermGraph, max_order: Option<u32>) -> Vec<Option<Counts>> {
    count_terms(graph, max_order, false, Unit::Paths).mlp_inputs
}

/// The number of attention-score terms by order (query-path order + key-path order), summed over
/// every head of every layer: per head, (query terms) × (key terms), each side the paths into
/// the layer plus its constant bias term.
pub fn count_score_terms(graph: &TermGraph, max_order: Option<u32>) -> Counts {
    count_terms(graph, max_order, true, Unit::Paths).scores.expect("asked for")
}

/// The number of concrete paths the templates enumerate (used to check the formula).
pub fn count_templates(templates: &[Template], heads_per_layer: &[usize], fixed: Option<IndexVar>) -> BigUint {
    templates.iter().map(|t| t.number_of_paths(heads_per_layer, fixed)).sum()
}

/// Σ of `by_order[..=k]` for every `k`: the count of a truncation at each order (truncating
/// drops the orders above it, so every truncation's count is a prefix sum of one vector).
pub fn prefix_sums(by_order: &[BigUint]) -> Vec<BigUint> {
    let mut total = BigUint::zero();
    by_order
        .iter()
        .map(|c| {
            total += c;
            total.clone()
        })
        .collect()
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

/// How `pathc paths --group` sums paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// By the last head a path passes (TransformerLens's per-head result, `head_logits`); a path
    /// through no head by its source.
    Head,
    /// By the residual-stream component a path ends in (TransformerLens's `decompose_resid`
    /// labels: `embed`, `pos_embed`, `{l}_attn_out` incl. `b_O`, `{l}_mlp_out` incl. `b_out`),
    /// and `constant` for `b_U`.
    Component,
    Source,
    Order,
}

impl Grouping {
    /// The group of a path, and where the group sorts.
    pub fn of(self, p: &Path<'_>) -> (String, (usize, usize, usize)) {
        use crate::graph::Source;
        let source = p.template.source().expect("a logit path has a source");
        let last = p.heads(Side::Head).last().copied();
        match self {
            Grouping::Head => match last {
                Some(h) => (h.to_string(), (1, h.layer, h.head)),
                None => (source.name(), (0, 0, 0)),
            },
            Grouping::Component => match (last, source.component()) {
                (Some(h), _) => (format!("{}_attn_out", h.layer), (1, h.layer, 0)),
                (None, Some(component)) => {
                    let key = match source {
                        Source::E => (0, 0, 0),
                        Source::P => (0, 0, 1),
                        Source::Mlp(l) | Source::BiasOut(l) => (1, l, 1),
                        Source::BiasO(l) | Source::BiasV(l) => (1, l, 0),
                        _ => (2, 0, 0),
                    };
                    (component, key)
                }
                (None, None) => ("constant".to_string(), (2, 0, 0)),
            },
            Grouping::Source => (source.name(), (0, 0, 0)),
            Grouping::Order => (format!("order {}", p.template.order()), (p.template.order(), 0, 0)),
        }
    }
}
