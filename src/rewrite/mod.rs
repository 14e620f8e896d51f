//! Rewriting with egg: the model's product form → its sum of paths, as path templates.
//!
//! The product `(Id⊗W_U) · Π_l (Id⊗Id + Σ_h A^h⊗W_OV^h) · Σ_s Id⊗W_s` is expanded one factor
//! at a time: each layer's factor times the already expanded (and extracted) stream is saturated
//! on its own. One e-graph for the whole product would also hold every partial bracketing of
//! every partial sum (measured: 1.9M e-nodes and the node limit for 12 layers at order ≤ 3,
//! against 10k here), because equality saturation keeps every intermediate form. Truncation by
//! order happens inside each step's algebra (`trunc` rules), so terms above the order are never
//! built for the next step.
//!
//! Invariant: a stop other than saturation is an error that names the limit, never a silently
//! partial expansion. Terms carry symbolic head indices (one per layer on a path); concrete heads
//! are enumerated later by `paths`.

mod build;
mod extract;
pub mod lang;
mod pair;
pub mod rules;

use std::time::Duration;

use egg::{Extractor, RecExpr, Runner, SimpleScheduler, StopReason};
use serde::Serialize;
use thiserror::Error;

use num_bigint::BigUint;

use crate::graph::{Block, TermGraph};
use crate::paths::{StreamCounter, Template, Unit};
use crate::progress::Progress;
use build::TermBuilder;
use lang::{Side, Tensor, TensorAnalysis};

/// The default bound on the e-nodes of all saturation runs of one expansion together.
pub const DEFAULT_TOTAL_NODE_LIMIT: u64 = 6_000_000;

/// Bounds on the equality-saturation runs of one expansion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// E-nodes of one run. An expansion whose predicted e-graphs ([`Work`]) exceed it is
    /// refused before any run.
    pub nodes: usize,
    /// E-nodes of all runs of one expansion together, as predicted ([`Work::total_e_nodes`]):
    /// what bounds its time. Refused before any run when the prediction exceeds it.
    pub total_nodes: u64,
    pub iterations: usize,
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            nodes: 2_000_000,
            total_nodes: DEFAULT_TOTAL_NODE_LIMIT,
            iterations: 1_000,
            time: Duration::from_secs(120),
        }
    }
}

/// What the saturation runs of one expansion did; pinned by tests so that e-graph growth is
/// noticed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunStats {
    /// Saturation runs (one per layer step and output).
    pub runs: usize,
    /// E-nodes summed over the runs.
    pub e_nodes: usize,
    /// The largest single e-graph, in e-nodes.
    pub max_e_nodes: usize,
    pub iterations: usize,
    /// How often each rule of the table was applied, by name.
    pub rules_applied: std::collections::BTreeMap<String, usize>,
    /// Each run's e-graph, in e-nodes, in run order (the order of [`for_each_run`]).
    pub run_e_nodes: Vec<usize>,
}

impl RunStats {
    /// Adds another set of runs, after these.
    fn add(&mut self, other: RunStats) {
        self.runs += other.runs;
        self.e_nodes += other.e_nodes;
        self.max_e_nodes = self.max_e_nodes.max(other.max_e_nodes);
        self.iterations += other.iterations;
        for (rule, n) in other.rules_applied {
            *self.rules_applied.entry(rule).or_default() += n;
        }
        self.run_e_nodes.extend(other.run_e_nodes);
    }
}

/// What a saturation run builds, which sets how many e-nodes a template of its output costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// A block on the residual stream (and the unembedding, in the last run of the logits).
    Stream,
    /// An MLP's input.
    MlpInput,
    /// One side of a layer's attention scores, its query or its key input (`W_Q` or `W_K`
    /// reading the stream, as an MLP's input); the sides' pairs are formed outside the e-graph.
    ScoreSide,
}

impl RunKind {
    /// A bound on a run's e-graph in e-nodes per template it extracts (plus
    /// [`RUN_BASE_E_NODES`]), with a margin of more than 2 over what was measured on every mix of
    /// biases, LayerNorms and MLPs at every truncation (`tests/limits.rs`,
    /// `predicted_e_graphs_bound_the_runs`, which fails if a run exceeds it): at most 10.2
    /// e-nodes a template in stream and MLP-input runs, 5.6 in score-side runs.
    pub fn e_nodes_per_template(self) -> u64 {
        match self {
            RunKind::Stream | RunKind::MlpInput | RunKind::ScoreSide => 24,
        }
    }
}

/// The e-nodes every run may build whatever its size (the block's own terms).
pub const RUN_BASE_E_NODES: u64 = 400;

/// Calls `visit` for every saturation run an expansion makes, in the drivers' order (the logits
/// with the MLP inputs, then with `qk` the scores), with the number of templates it extracts by
/// order — from the architecture alone ([`StreamCounter`] in templates), before any run.
pub fn for_each_run(graph: &TermGraph, max_order: Option<u32>, qk: bool, mut visit: impl FnMut(RunKind, &[BigUint])) {
    let mut counter = StreamCounter::new(graph, max_order, Unit::Templates, false);
    let n_blocks = graph.blocks.len();
    let with_constants = |by_order: &[BigUint], constants: u64| {
        let mut out = by_order.to_vec();
        out[0] += constants;
        out
    };
    let with_constant = |by_order: &[BigUint], constant: bool| with_constants(by_order, u64::from(constant));
    if n_blocks == 0 {
        visit(RunKind::Stream, &with_constant(counter.stream(), graph.logit_bias));
    }
    let mut before_attention = counter.stream().to_vec();
    for block in &graph.blocks {
        match *block {
            Block::Mlp { in_bias, gate, parallel, .. } => {
                let read = if parallel { before_attention.clone() } else { counter.stream().to_vec() };
                visit(RunKind::MlpInput, &with_constant(&read, in_bias));
                if let Some(constant) = gate {
                    visit(RunKind::MlpInput, &with_constant(&read, constant));
                }
            }
            Block::Attn { .. } => before_attention = counter.stream().to_vec(),
        }
        counter.advance(block);
        if counter.step() == n_blocks {
            visit(RunKind::Stream, &with_constant(counter.stream(), graph.logit_bias));
        } else {
            visit(RunKind::Stream, counter.stream());
        }
    }
    if !qk {
        return;
    }
    let mut counter = StreamCounter::new(graph, max_order, Unit::Templates, false);
    let last_attn = graph.blocks.iter().rposition(|b| matches!(b, Block::Attn { .. }));
    for (step, block) in graph.blocks.iter().enumerate() {
        if let Block::Attn { .. } = *block {
            let side = with_constants(counter.stream(), block.score_side_constants());
            visit(RunKind::ScoreSide, &side);
            visit(RunKind::ScoreSide, &side);
        }
        counter.advance(block);
        if last_attn.is_some_and(|last| step < last) {
            visit(RunKind::Stream, counter.stream());
            visit(RunKind::Stream, counter.stream());
        }
    }
}

/// The rewrite work of an expansion at every truncation, predicted before any run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Work {
    /// The predicted e-nodes of all runs, by the order of the templates they stand for (each
    /// run's base counted at order 0).
    total: Vec<BigUint>,
    /// `largest[k]`: the largest run's predicted e-graph at truncation `k`, in e-nodes.
    largest: Vec<BigUint>,
}

impl Work {
    /// Predicts the runs of an expansion truncated at `max_order` (and so of every lower
    /// truncation: truncating drops orders, so each is a prefix of the same counts).
    pub fn predict(graph: &TermGraph, max_order: Option<u32>, qk: bool) -> Work {
        let mut total: Vec<BigUint> = Vec::new();
        let mut largest: Vec<BigUint> = Vec::new();
        // `from[j]`: the largest run with j + 1 orders, the size it keeps at every truncation
        // from j up.
        let mut from: Vec<BigUint> = Vec::new();
        for_each_run(graph, max_order, qk, |kind, by_order| {
            let per = kind.e_nodes_per_template();
            let mut prefix = BigUint::from(RUN_BASE_E_NODES);
            for (k, c) in by_order.iter().enumerate() {
                if total.len() <= k {
                    total.push(BigUint::ZERO);
                    largest.push(BigUint::ZERO);
                    from.push(BigUint::ZERO);
                }
                let nodes = c * per;
                total[k] += &nodes;
                if k == 0 {
                    total[0] += RUN_BASE_E_NODES;
                }
                prefix += nodes;
                if prefix > largest[k] {
                    largest[k].clone_from(&prefix);
                }
            }
            let last = by_order.len() - 1;
            if prefix > from[last] {
                from[last] = prefix;
            }
        });
        let mut floor = BigUint::ZERO;
        for (k, l) in largest.iter_mut().enumerate() {
            if from[k] > floor {
                floor.clone_from(&from[k]);
            }
            if floor > *l {
                l.clone_from(&floor);
            }
        }
        Work { total, largest }
    }

    /// The number of orders predicted (`max_order + 1`, or all of them).
    pub fn orders(&self) -> usize {
        self.total.len()
    }

    /// The e-nodes of all runs of the truncation at `k`, predicted (an upper bound).
    pub fn total_e_nodes(&self, k: usize) -> BigUint {
        self.total.iter().take(k.saturating_add(1)).sum()
    }

    /// The largest run's e-graph at truncation `k`, predicted (an upper bound), in e-nodes.
    pub fn largest_e_nodes(&self, k: usize) -> BigUint {
        self.largest.get(k).or(self.largest.last()).cloned().unwrap_or(BigUint::from(RUN_BASE_E_NODES))
    }

    /// What of `limits` the truncation at `k` is predicted to exceed, if anything.
    pub fn exceeds(&self, k: usize, limits: &Limits) -> Option<Exceeded> {
        let nodes = self.largest_e_nodes(k);
        if nodes > BigUint::from(limits.nodes) {
            return Some(Exceeded::Nodes(nodes));
        }
        let total = self.total_e_nodes(k);
        (total > BigUint::from(limits.total_nodes)).then_some(Exceeded::TotalNodes(total))
    }
}

/// Which rewrite limit a prediction exceeds, and the predicted amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exceeded {
    /// One run's e-graph, in e-nodes, against [`Limits::nodes`].
    Nodes(BigUint),
    /// All runs' e-nodes together, against [`Limits::total_nodes`].
    TotalNodes(BigUint),
}

#[derive(Debug, Error)]
pub enum RewriteError {
    #[error("the e-graph stopped before saturating: {reason} (after {iterations} iterations, {e_nodes} e-nodes); the expansion would be incomplete")]
    Limit { reason: String, iterations: usize, e_nodes: usize },
    #[error("internal error: the extracted expansion has {0}")]
    Internal(String),
    #[error(transparent)]
    Cancelled(#[from] crate::progress::Cancelled),
}

/// The symbolic expansion of the logits and of every MLP's input.
#[derive(Debug, Clone)]
pub struct LogitExpansion {
    pub logits: Vec<Template>,
    /// Per layer, the terms of its MLP's input (pre-activation; a gated MLP's linear input
    /// `x·W_in`); `None` without an MLP.
    pub mlp_inputs: Vec<Option<Vec<Template>>>,
    /// Per layer, the terms of a gated MLP's gate input `x·W_gate`; `None` otherwise.
    pub mlp_gates: Vec<Option<Vec<Template>>>,
    pub stats: RunStats,
}

/// The logits' sum of paths, up to `max_order` heads a path, and on the way the terms of each
/// MLP's input (the stream it reads, through its LayerNorm and `W_in`).
pub fn expand_logits(
    graph: &TermGraph,
    max_order: Option<u32>,
    limits: Limits,
    progress: &dyn Progress,
) -> Result<LogitExpansion, RewriteError> {
    let mut stats = RunStats::default();
    let mut mlp_inputs = vec![None; graph.heads.len()];
    let mut mlp_gates = vec![None; graph.heads.len()];
    let mut stream = sources(graph);
    // The stream the last attention block read: what a parallel layer's MLP reads.
    let mut before_attention = stream.clone();
    let n_blocks = graph.blocks.len();
    let n_inputs: usize = graph
        .blocks
        .iter()
        .map(|b| match b {
            Block::Mlp { gate, .. } => 1 + usize::from(gate.is_some()),
            Block::Attn { .. } => 0,
        })
        .sum();
    progress.start("expanding the logits", (n_blocks.max(1) + n_inputs) as u64);
    // One saturation per block; the unembedding joins the last one (or the sources, with no
    // blocks), which saves a run over the largest stream.
    for step in 0..n_blocks.max(1) {
        let block = graph.blocks.get(step);
        if let Some(block @ Block::Mlp { layer, gate, parallel, .. }) = block {
            let read_from = if *parallel { &before_attention } else { &stream };
            let mut input = |weight: build::MlpReader| -> Result<Vec<Template>, RewriteError> {
                let mut builder = TermBuilder::new(max_order);
                let read = builder.embed(read_from);
                builder.mlp_input(block, weight, read);
                let input = run(builder, limits, &mut stats, progress)?;
                extract::read_templates(&input).map_err(RewriteError::Internal)
            };
            mlp_inputs[*layer] = Some(input(build::MlpReader::In)?);
            if gate.is_some() {
                mlp_gates[*layer] = Some(input(build::MlpReader::Gate)?);
            }
        }
        if let Some(Block::Attn { .. }) = block {
            before_attention = stream.clone();
        }
        let mut builder = TermBuilder::new(max_order);
        let mut top = builder.embed(&stream);
        if let Some(block) = block {
            top = builder.block(block, Side::Head, top);
        }
        if step + 1 == n_blocks.max(1) {
            builder.logits(graph, top);
        }
        stream = run(builder, limits, &mut stats, progress)?;
    }
    progress.finish();
    let logits = extract::read_templates(&stream).map_err(RewriteError::Internal)?;
    Ok(LogitExpansion { logits, mlp_inputs, mlp_gates, stats })
}

/// For each layer, the expansion of its heads' attention scores into (query path, key path)
/// terms, with the head as the free index `h{layer}`: each side saturated on its own, then
/// paired (`pair.rs`).
///
/// The query side's stream and the key side's never meet before the pairing, so the two chains
/// of runs go on two threads ([`parallel_map`](crate::parallel::parallel_map)); their runs'
/// statistics, and the first error, are taken in the order one thread would have met them
/// (per block: the query side, the key side, then the query stream, the key stream).
pub fn expand_scores(
    graph: &TermGraph,
    max_order: Option<u32>,
    limits: Limits,
    progress: &dyn Progress,
) -> Result<(Vec<Vec<Template>>, RunStats), RewriteError> {
    let last_attn = graph.blocks.iter().rposition(|b| matches!(b, Block::Attn { .. }));
    let n_attn = graph.blocks.iter().filter(|b| matches!(b, Block::Attn { .. })).count();
    progress.start("expanding the attention scores", (2 * n_attn + 2 * last_attn.unwrap_or(0)) as u64);
    let chains = crate::parallel::parallel_map(&[Side::Query, Side::Key], |&side| {
        score_chain(graph, side, max_order, limits, progress)
    });
    let [mut query, mut key]: [ScoreChain; 2] =
        chains.try_into().unwrap_or_else(|_| unreachable!("two sides, two chains"));
    progress.finish();
    // (block, 0 for its side's run or 1 for the stream's, 0 query or 1 key): one thread's order.
    let at = |(block, phase): (usize, usize), chain: usize| (block, phase, chain);
    if let Some((_, error)) = [(0, query.error.take()), (1, key.error.take())]
        .into_iter()
        .filter_map(|(chain, error)| error.map(|(run, e)| (at(run, chain), e)))
        .min_by_key(|&(position, _)| position)
    {
        return Err(error);
    }
    let mut runs: Vec<((usize, usize, usize), RunStats)> = Vec::new();
    for (chain, c) in [(0, &mut query), (1, &mut key)] {
        runs.extend(std::mem::take(&mut c.runs).into_iter().map(|(run, stats)| (at(run, chain), stats)));
    }
    runs.sort_by_key(|&(position, _)| position);
    let mut stats = RunStats::default();
    for (_, run) in runs {
        stats.add(run);
    }
    let per_layer = query
        .sides
        .iter()
        .zip(&key.sides)
        .map(|((query_side, rotary), (key_side, _))| pair::pair(query_side, key_side, *rotary, max_order))
        .collect();
    Ok((per_layer, stats))
}

/// One side's chain of runs for [`expand_scores`]: per attention block, its score side's
/// templates (and the layer when its positions are rotary); each run's statistics with its
/// (block, phase); the first error with its.
struct ScoreChain {
    sides: Vec<(Vec<Template>, Option<usize>)>,
    runs: Vec<((usize, usize), RunStats)>,
    error: Option<((usize, usize), RewriteError)>,
}

fn score_chain(
    graph: &TermGraph,
    side: Side,
    max_order: Option<u32>,
    limits: Limits,
    progress: &dyn Progress,
) -> ScoreChain {
    let mut chain = ScoreChain { sides: Vec::new(), runs: Vec::new(), error: None };
    let mut stream = sources(graph);
    let run_at = |chain: &mut ScoreChain, position: (usize, usize), builder: TermBuilder| {
        let mut stats = RunStats::default();
        let out = run(builder, limits, &mut stats, progress);
        chain.runs.push((position, stats));
        out.map_err(|e| chain.error = Some((position, e))).ok()
    };
    for (step, block) in graph.blocks.iter().enumerate() {
        if let Block::Attn { layer, positions, .. } = *block {
            let mut builder = TermBuilder::new(max_order);
            let read = builder.embed(&stream);
            builder.score_side(block, side, read);
            let Some(terms) = run_at(&mut chain, (step, 0), builder) else { return chain };
            match extract::read_templates(&terms) {
                Ok(templates) => {
                    let rotary = (positions == crate::graph::QkPositions::Rotary).then_some(layer);
                    chain.sides.push((templates, rotary));
                }
                Err(e) => {
                    chain.error = Some(((step, 0), RewriteError::Internal(e)));
                    return chain;
                }
            }
        }
        // The stream is needed up to the last attention block's input only.
        if graph.blocks[step + 1..].iter().any(|b| matches!(b, Block::Attn { .. })) {
            let mut builder = TermBuilder::new(max_order);
            let embedded = builder.embed(&stream);
            builder.block(block, side, embedded);
            let Some(next) = run_at(&mut chain, (step, 1), builder) else { return chain };
            stream = next;
        }
    }
    chain
}

fn sources(graph: &TermGraph) -> RecExpr<Tensor> {
    let mut builder = TermBuilder::new(None);
    builder.sources(graph);
    builder.finish()
}

/// Saturates one term and extracts its expanded form.
/// One saturation run of a built term, told to `progress`, which is then asked whether to stop.
fn run(
    builder: TermBuilder,
    limits: Limits,
    stats: &mut RunStats,
    progress: &dyn Progress,
) -> Result<RecExpr<Tensor>, RewriteError> {
    let expanded = saturate(builder.finish(), limits, stats)?;
    progress.advance(1);
    progress.check()?;
    Ok(expanded)
}

fn saturate(term: RecExpr<Tensor>, limits: Limits, stats: &mut RunStats) -> Result<RecExpr<Tensor>, RewriteError> {
    let runner: Runner<Tensor, TensorAnalysis> = Runner::default()
        .with_scheduler(SimpleScheduler)
        .with_node_limit(limits.nodes)
        .with_iter_limit(limits.iterations)
        .with_time_limit(limits.time)
        .with_expr(&term)
        .run(rules::rules());
    let e_nodes = runner.egraph.total_number_of_nodes();
    stats.runs += 1;
    stats.e_nodes += e_nodes;
    stats.max_e_nodes = stats.max_e_nodes.max(e_nodes);
    stats.run_e_nodes.push(e_nodes);
    stats.iterations += runner.iterations.len();
    for iteration in &runner.iterations {
        for (rule, n) in &iteration.applied {
            *stats.rules_applied.entry(rule.to_string()).or_default() += n;
        }
    }
    match &runner.stop_reason {
        Some(StopReason::Saturated) => {}
        other => {
            let reason = match other {
                Some(StopReason::NodeLimit(n)) => format!("the node limit ({n} e-nodes)"),
                Some(StopReason::IterationLimit(n)) => format!("the iteration limit ({n})"),
                Some(StopReason::TimeLimit(s)) => format!("the time limit ({s:.1} s)"),
                Some(StopReason::Other(why)) => why.clone(),
                Some(StopReason::Saturated) | None => "no reason given".to_string(),
            };
            return Err(RewriteError::Limit { reason, iterations: runner.iterations.len(), e_nodes });
        }
    }
    let extractor = Extractor::new(&runner.egraph, extract::ExpandedForm);
    Ok(extractor.find_best(runner.roots[0]).1)
}
