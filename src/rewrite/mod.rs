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

pub use build::unsupported_constructs;
mod extract;
pub mod lang;
pub mod rules;

use std::time::Duration;

use egg::{Extractor, RecExpr, Runner, SimpleScheduler, StopReason};
use serde::Serialize;
use thiserror::Error;

use crate::diag::Diagnostic;
use crate::graph::TermGraph;
use crate::paths::Template;
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
    #[error("{}", .0.message)]
    Unsupported(Diagnostic),
    #[error("the e-graph stopped before saturating: {reason} (after {iterations} iterations, {e_nodes} e-nodes); the expansion would be incomplete")]
    Limit { reason: String, iterations: usize, e_nodes: usize },
    #[error("internal error: the extracted expansion has {0}")]
    Internal(String),
}

/// The logits' sum of paths, up to `max_order` heads a path.
pub fn expand_logits(
    graph: &TermGraph,
    max_order: Option<u32>,
    limits: Limits,
) -> Result<(Vec<Template>, RunStats), RewriteError> {
    let mut stats = RunStats::default();
    let mut stream = sources(graph)?;
    let last = graph.resid.len() - 1;
    // One saturation per layer; the unembedding joins the last one (or the sources, with no
    // layers), which saves a run over the largest stream.
    for step in 1..=last.max(1) {
        let mut builder = TermBuilder::new(max_order);
        let mut top = builder.embed(&stream);
        if step <= last {
            top = builder.block(graph, step, Side::Head, top).map_err(RewriteError::Unsupported)?;
        }
        if step == last.max(1) {
            builder.logits(graph, top).map_err(RewriteError::Unsupported)?;
        }
        stream = saturate(builder.finish(), limits, &mut stats)?;
    }
    Ok((extract::read_templates(&stream).map_err(RewriteError::Internal)?, stats))
}

/// For each layer, the expansion of its heads' attention scores into (query path, key path)
/// terms, with the head as the free index `h{layer}`.
pub fn expand_scores(
    graph: &TermGraph,
    max_order: Option<u32>,
    limits: Limits,
) -> Result<(Vec<Vec<Template>>, RunStats), RewriteError> {
    let mut stats = RunStats::default();
    let inputs: Vec<usize> = (0..graph.heads.len())
        .map(|layer| build::head_input(graph, layer))
        .collect::<Result<_, _>>()
        .map_err(RewriteError::Unsupported)?;
    let (mut query, mut key) = (sources(graph)?, sources(graph)?);
    let mut per_layer = Vec::with_capacity(inputs.len());
    let mut step = 0;
    for (layer, &input) in inputs.iter().enumerate() {
        while step < input {
            step += 1;
            for (side, stream) in [(Side::Query, &mut query), (Side::Key, &mut key)] {
                let mut builder = TermBuilder::new(max_order);
                let embedded = builder.embed(stream);
                builder.block(graph, step, side, embedded).map_err(RewriteError::Unsupported)?;
                *stream = saturate(builder.finish(), limits, &mut stats)?;
            }
        }
        let mut builder = TermBuilder::new(max_order);
        builder.scores(layer, &query, &key);
        let scores = saturate(builder.finish(), limits, &mut stats)?;
        per_layer.push(extract::read_templates(&scores).map_err(RewriteError::Internal)?);
    }
    Ok((per_layer, stats))
}

fn sources(graph: &TermGraph) -> Result<RecExpr<Tensor>, RewriteError> {
    let mut builder = TermBuilder::new(None);
    builder.sources(graph).map_err(RewriteError::Unsupported)?;
    Ok(builder.finish())
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
