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
pub mod rules;

use std::time::Duration;

use egg::{Extractor, RecExpr, Runner, SimpleScheduler, StopReason};
use serde::Serialize;
use thiserror::Error;

use crate::graph::{Block, TermGraph};
use crate::paths::Template;
use crate::progress::Progress;
use build::TermBuilder;
use lang::{Side, Tensor, TensorAnalysis};

/// Bounds on one equality-saturation run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub nodes: usize,
    pub iterations: usize,
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { nodes: 2_000_000, iterations: 1_000, time: Duration::from_secs(120) }
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
}

#[derive(Debug, Error)]
pub enum RewriteError {
    #[error("the e-graph stopped before saturating: {reason} (after {iterations} iterations, {e_nodes} e-nodes); the expansion would be incomplete")]
    Limit { reason: String, iterations: usize, e_nodes: usize },
    #[error("internal error: the extracted expansion has {0}")]
    Internal(String),
}

/// The symbolic expansion of the logits and of every MLP's input.
#[derive(Debug, Clone)]
pub struct LogitExpansion {
    pub logits: Vec<Template>,
    /// Per layer, the terms of its MLP's input (pre-activation); `None` without an MLP.
    pub mlp_inputs: Vec<Option<Vec<Template>>>,
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
    let mut stream = sources(graph);
    let n_blocks = graph.blocks.len();
    let n_mlps = graph.blocks.iter().filter(|b| matches!(b, Block::Mlp { .. })).count();
    progress.start("expanding the logits", (n_blocks.max(1) + n_mlps) as u64);
    // One saturation per block; the unembedding joins the last one (or the sources, with no
    // blocks), which saves a run over the largest stream.
    for step in 0..n_blocks.max(1) {
        let block = graph.blocks.get(step);
        if let Some(block @ Block::Mlp { layer, .. }) = block {
            let mut builder = TermBuilder::new(max_order);
            let read = builder.embed(&stream);
            builder.mlp_input(block, read);
            let input = saturate(builder.finish(), limits, &mut stats)?;
            progress.advance(1);
            mlp_inputs[*layer] = Some(extract::read_templates(&input).map_err(RewriteError::Internal)?);
        }
        let mut builder = TermBuilder::new(max_order);
        let mut top = builder.embed(&stream);
        if let Some(block) = block {
            top = builder.block(block, Side::Head, top);
        }
        if step + 1 == n_blocks.max(1) {
            builder.logits(graph, top);
        }
        stream = saturate(builder.finish(), limits, &mut stats)?;
        progress.advance(1);
    }
    progress.finish();
    let logits = extract::read_templates(&stream).map_err(RewriteError::Internal)?;
    Ok(LogitExpansion { logits, mlp_inputs, stats })
}

/// For each layer, the expansion of its heads' attention scores into (query path, key path)
/// terms, with the head as the free index `h{layer}`.
pub fn expand_scores(
    graph: &TermGraph,
    max_order: Option<u32>,
    limits: Limits,
    progress: &dyn Progress,
) -> Result<(Vec<Vec<Template>>, RunStats), RewriteError> {
    let mut stats = RunStats::default();
    let last_attn = graph.blocks.iter().rposition(|b| matches!(b, Block::Attn { .. }));
    let n_attn = graph.blocks.iter().filter(|b| matches!(b, Block::Attn { .. })).count();
    progress.start("expanding the attention scores", (n_attn + 2 * last_attn.unwrap_or(0)) as u64);
    let (mut query, mut key) = (sources(graph), sources(graph));
    let mut per_layer = Vec::with_capacity(graph.heads.len());
    for (step, block) in graph.blocks.iter().enumerate() {
        if let Block::Attn { .. } = block {
            let mut builder = TermBuilder::new(max_order);
            builder.scores(block, &query, &key);
            let scores = saturate(builder.finish(), limits, &mut stats)?;
            progress.advance(1);
            per_layer.push(extract::read_templates(&scores).map_err(RewriteError::Internal)?);
        }
        // The streams are needed up to the last attention block's input only.
        if graph.blocks[step + 1..].iter().any(|b| matches!(b, Block::Attn { .. })) {
            for (side, stream) in [(Side::Query, &mut query), (Side::Key, &mut key)] {
                let mut builder = TermBuilder::new(max_order);
                let embedded = builder.embed(stream);
                builder.block(block, side, embedded);
                *stream = saturate(builder.finish(), limits, &mut stats)?;
                progress.advance(1);
            }
        }
    }
    progress.finish();
    Ok((per_layer, stats))
}

fn sources(graph: &TermGraph) -> RecExpr<Tensor> {
    let mut builder = TermBuilder::new(None);
    builder.sources(graph);
    builder.finish()
}

/// Saturates one term and extracts its expanded form.
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
