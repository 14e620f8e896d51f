//! pathc: a symbolic path-expansion compiler for transformer interpretability.
//!
//! Elhage et al. (2021) showed that with its attention patterns frozen an attention-only
//! transformer's logits are a sum of *paths* — the direct path `W_U W_E`, one term per head, and
//! composed terms through several heads. pathc parses a model description, builds its term graph,
//! rewrites the product form into that sum with an e-graph, and counts and enumerates the paths.
//!
//! The pipeline, one module a stage (see `ARCHITECTURE.md`):
//!
//! ```text
//! syntax (pest) → graph (petgraph) → rewrite (egg) → paths → emit
//! ```
//!
//! ```
//! let source = "model tiny\n dim d_model = 16\n dim d_vocab = 20\n embed\n layer { attn(heads = 2, d_head = 4) }\n unembed\n";
//! let expansion = pathc::expand(source, &pathc::ExpandOptions::default()).unwrap();
//! let names: Vec<String> = expansion.logit_paths().map(|p| p.name).collect();
//! assert_eq!(names, ["E", "E/L0H0", "E/L0H1"]);
//! assert_eq!(expansion.logit_counts.total(), 3u32.into());
//! ```
//!
//! With weights (a TransformerLens state_dict), every path's contribution to the logits, the
//! attention patterns frozen from a forward pass:
//!
//! ```
//! use pathc::eval::{self, Matrix, PathEvaluator};
//!
//! let source = std::fs::read_to_string("examples/attn2.tf").unwrap();
//! let compiled = pathc::compile(&source).unwrap();
//! let weights = std::path::Path::new("tests/fixtures/attn2/model.safetensors");
//! let params = pathc::load_params(&compiled, weights, &eval::NameMap::default()).unwrap();
//! let forward = eval::forward(&params, &[5, 17, 42, 8]).unwrap();
//! let expansion = pathc::expand_compiled(compiled, &pathc::ExpandOptions::default()).unwrap();
//!
//! let mut evaluator = PathEvaluator::new(&params, &forward);
//! let mut total = Matrix::zeros(4, 50);
//! pathc::paths::for_each_path(&expansion.logits, &expansion.heads_per_layer(), None, |path| {
//!     let logits = evaluator.logits(&path); // [n_tokens, d_vocab]
//!     if path.name() == "E/L0H1/L1H2" {
//!         println!("virtual head L0H1 → L1H2 adds {:.4} to token 8's logit", logits[(3, 8)]);
//!     }
//!     total += logits;
//! });
//! assert!((total - &forward.logits).amax() < 1e-9); // the 50 paths are the logits
//! ```

pub mod aggregate;
pub mod codegen;
pub mod dataset;
pub mod diag;
pub mod emit;
pub mod eval;
pub mod graph;
pub mod import;
pub mod linalg;
pub mod model;
pub mod parallel;
pub mod paths;
pub mod plan;
pub mod progress;
pub mod rewrite;
pub mod stats;
pub mod syntax;
pub mod text;
pub mod weights;

use num_bigint::BigUint;
use thiserror::Error;

use diag::Diagnostic;
use graph::{Source, TermGraph};
use model::Model;
use paths::{Counts, HeadRef, IndexVar, Side, Template, TermCounts, Unit};
use rewrite::{Exceeded, Limits, RewriteError, RunStats, Work};

/// The default bound on how many terms `expand` enumerates.
pub const DEFAULT_ENUMERATION_LIMIT: u64 = 1_000_000;

#[derive(Debug, Clone)]
pub struct ExpandOptions {
    /// Keep only paths through at most this many heads (`--max-order`).
    pub max_order: Option<u32>,
    /// Also expand every head's attention scores into (query path, key path) terms.
    pub qk: bool,
    /// Refuse to enumerate more terms than this: the logit paths, the MLPs' input terms and
    /// (with `qk`) the attention-score terms together. Counting is never limited.
    pub limit: u64,
    /// Only the templates are wanted (nothing is enumerated): `limit` does not apply, the
    /// rewrite limits do.
    pub templates_only: bool,
    /// The e-graph limits; an expansion predicted to exceed them ([`rewrite::Work`]) is refused
    /// before any saturation run.
    pub rewrite_limits: Limits,
}

impl Default for ExpandOptions {
    fn default() -> ExpandOptions {
        ExpandOptions {
            max_order: None,
            qk: false,
            limit: DEFAULT_ENUMERATION_LIMIT,
            templates_only: false,
            rewrite_limits: Limits::default(),
        }
    }
}

#[derive(Debug, Error)]
pub enum Error {
    /// Syntax or semantic errors in the model file (several at once where possible).
    #[error("the model file has {} error(s)", .0.len())]
    Model(Vec<Diagnostic>),
    /// More terms to enumerate than `ExpandOptions::limit`; `fits` is the largest truncation
    /// within every limit (enumeration and rewrite) with its number of terms.
    #[error(
        "the expansion has {count} {what}, more than the enumeration limit of {limit}; {}",
        match fits { Some((k, n)) => format!("--max-order {k} fits ({n} {what}), or raise the limit with --limit"), None => "raise the limit with --limit".to_string() }
    )]
    TooLarge { what: &'static str, count: BigUint, limit: u64, fits: Option<(u32, BigUint)> },
    /// The symbolic expansion is predicted to exceed a rewrite limit (`ExpandOptions::rewrite_limits`),
    /// decided before any saturation run; `fits` as for `TooLarge`.
    #[error(
        "the symbolic expansion {}; {}",
        match exceeded {
            Exceeded::Nodes(n) => format!("would build an e-graph of up to {n} e-nodes, more than the node limit of {} e-nodes a run", limits.nodes),
            Exceeded::TotalNodes(n) => format!("would build {n} e-nodes in all its saturation runs, more than the limit of {} e-nodes an expansion", limits.total_nodes),
        },
        match fits { Some((k, n)) => format!("--max-order {k} fits ({n} {what})"), None => "not even --max-order 0 fits".to_string() }
    )]
    RewriteTooLarge { what: &'static str, exceeded: Exceeded, limits: Limits, fits: Option<(u32, BigUint)> },
    /// `--format dot` on a model with more heads than the limit (one DOT node each).
    #[error("the term graph has {heads} heads, more than the limit of {limit} for --format dot (one node each); raise the limit with --limit")]
    GraphTooLarge { heads: u128, limit: u64 },
    #[error(transparent)]
    Rewrite(RewriteError),
    /// Weights that do not fit the model, bad tokens, symbolic sizes where numbers are needed.
    #[error(transparent)]
    Eval(#[from] eval::EvalError),
}

impl Error {
    /// The diagnostics that point into the model file, if any.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            Error::Model(d) => d,
            Error::Eval(eval::EvalError::Undeclared(d)) => std::slice::from_ref(d),
            _ => &[],
        }
    }
}

impl From<RewriteError> for Error {
    fn from(e: RewriteError) -> Error {
        Error::Rewrite(e)
    }
}

/// A parsed, checked model and its term graph.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub model: Model,
    pub graph: TermGraph,
}

impl Compiled {
    /// The compiled model for weights processed by `processing` ([`eval::Params::process`]):
    /// with `fold_value_biases`, every layer whose heads have value biases gets a `b_O` term,
    /// where they go ([`graph::TermGraph::fold_value_biases`]); the other steps change no term.
    /// Expand this, not the model as written, when evaluating processed weights.
    pub fn processed(mut self, processing: eval::Processing) -> Compiled {
        if processing.fold_value_biases {
            self.graph.fold_value_biases();
        }
        self
    }

    /// Every count at once (logit paths, MLP inputs, with `qk` score terms), from the
    /// architecture alone in one pass: quadratic in the number of layers, never enumerating.
    pub fn counts(&self, max_order: Option<u32>, qk: bool) -> TermCounts {
        paths::count_terms(&self.graph, max_order, qk, Unit::Paths)
    }

    /// Logit paths by order, from the architecture alone: instant at any size.
    pub fn logit_counts(&self, max_order: Option<u32>) -> Counts {
        paths::count_logit_paths(&self.graph, max_order)
    }

    /// Each MLP's input terms by order (`None` for a layer without an MLP).
    pub fn mlp_input_counts(&self, max_order: Option<u32>) -> Vec<Option<Counts>> {
        paths::count_mlp_inputs(&self.graph, max_order)
    }

    /// Attention-score terms by order, summed over all heads.
    pub fn score_counts(&self, max_order: Option<u32>) -> Counts {
        paths::count_score_terms(&self.graph, max_order)
    }

    /// Checks an expansion against every limit before anything is built: the enumeration limit
    /// on `counts` (unless only templates are wanted) and the rewrite limits on the predicted
    /// e-graph work. The suggested truncation of a refusal is within all of them, so following it
    /// succeeds (the enumeration exactly; the rewrite as far as its prediction bounds the runs,
    /// which `tests/limits.rs` checks).
    pub fn check_limits(&self, counts: &TermCounts, options: &ExpandOptions) -> Result<(), Error> {
        let enumerated = paths::prefix_sums(&counts.enumerated());
        let limit = BigUint::from(options.limit);
        // No truncation above the largest one within the enumeration limit can be suggested,
        // so the work is predicted only up to it.
        let within = enumerated.iter().take_while(|c| options.templates_only || **c <= limit).count();
        let predicted =
            if within == enumerated.len() { options.max_order } else { Some(within.saturating_sub(1) as u32) };
        let work = Work::predict(&self.graph, predicted, options.qk);
        let orders = enumerated.len();
        let count_at = |k: usize| enumerated.get(k).or(enumerated.last()).cloned().unwrap_or_default();
        let over_enumeration = |k: usize| !options.templates_only && count_at(k) > limit;
        let fits = |k: usize| !over_enumeration(k) && work.exceeds(k, &options.rewrite_limits).is_none();
        let requested = orders - 1;
        if fits(requested) {
            return Ok(());
        }
        let best = (0..requested).take_while(|&k| fits(k)).last().map(|k| (k as u32, count_at(k)));
        let what = if options.qk { "terms" } else { "paths" };
        if over_enumeration(requested) {
            return Err(Error::TooLarge { what, count: count_at(requested), limit: options.limit, fits: best });
        }
        let exceeded = work.exceeds(requested, &options.rewrite_limits).expect("does not fit");
        Err(Error::RewriteTooLarge { what, exceeded, limits: options.rewrite_limits, fits: best })
    }
}

/// Loads a weight file and checks every tensor the model needs (names and shapes, finite values)
/// and that the file holds nothing the model does not declare, before any computation.
pub fn load_params(
    compiled: &Compiled,
    weights: &std::path::Path,
    names: &eval::NameMap,
) -> Result<eval::Params, Error> {
    Ok(eval::Params::from_weights(&compiled.model, &load_weights(weights)?, names)?)
}

/// Opens a weights file ([`weights::Weights::load`]: a safetensors file's tensors stay in the file
/// until used), its errors as [`enum@Error`]s.
pub fn load_weights(path: &std::path::Path) -> Result<weights::Weights, Error> {
    Ok(weights::Weights::load(path).map_err(eval::EvalError::from)?)
}

/// The plans of a model's statistics (`pathc plan`): the one the e-graph chooses and the naive
/// one, for the model's own sizes (which must all be numbers).
pub fn plan_stats(model: &Model) -> Result<plan::Plans, Error> {
    let known = |size: &model::Size| match size {
        model::Size::Known(n) => usize::try_from(*n).map_err(|_| eval::EvalError::Symbolic(size.to_string())),
        model::Size::Symbolic(name) => Err(eval::EvalError::Symbolic(name.clone())),
    };
    let mut d_head = 0;
    for layer in &model.layers {
        d_head = d_head.max(known(&layer.attn.d_head)?);
    }
    let dims = plan::Dims {
        d_vocab: known(&model.d_vocab)?,
        d_vocab_out: known(model.d_vocab_out())?,
        d_model: known(&model.d_model)?,
        d_head,
    };
    Ok(plan::plan(dims, plan::Counts::from_heads_per_layer(&model.heads_per_layer())))
}

/// The term graph as Graphviz DOT (`pathc expand --format dot`): refused, before the graph is
/// built, when the model has more than `limit` heads (a DOT node and two edges each, about 150
/// bytes a head).
pub fn dot(source: &str, limit: u64) -> Result<String, Error> {
    let model = syntax::parse_model(source).map_err(Error::Model)?;
    let heads: u128 = model.heads_per_layer().iter().map(|&h| h as u128).sum();
    if heads > u128::from(limit) {
        return Err(Error::GraphTooLarge { heads, limit });
    }
    Ok(emit::dot::write(&TermGraph::build(&model), &model.name))
}

/// The plans of a model's statistics for the sizes of a weights file (`pathc plan --weights`),
/// so a model file may leave `d_vocab`, `d_model` and `d_head` symbolic: read from the shapes of
/// `embed.W_E` (`[d_vocab, d_model]`), each layer's `W_Q` (`[n_heads, d_model, d_head]`,
/// its head count checked against the model) and, when the model declares `unembed(d_vocab_out
/// = …)`, `unembed.W_U` (`[d_model, d_vocab_out]`), by TransformerLens's names renamed by
/// `names`. A dimension the model gives as a number must match. Only the file's header is read.
pub fn plan_stats_from_weights(
    model: &Model,
    weights: &weights::Weights,
    names: &eval::NameMap,
) -> Result<plan::Plans, Error> {
    let shape = |tl: &str, rank: usize| -> Result<Vec<usize>, Error> {
        let name = names.resolve(tl);
        let found = match weights.check(&name, &[]) {
            Err(weights::WeightError::Shape { found, .. }) => found,
            Ok(()) => Vec::new(),
            Err(e) => return Err(eval::EvalError::from(e).into()),
        };
        if found.len() == rank {
            return Ok(found);
        }
        let expected = vec![0; rank];
        Err(eval::EvalError::from(weights::WeightError::Shape { name, expected, found }).into())
    };
    // The shape the model's numbers ask for, symbolic sizes taken from the file.
    let check = |tl: &str, found: Vec<usize>, expected: Vec<usize>| -> Result<Vec<usize>, Error> {
        if found == expected {
            return Ok(found);
        }
        let name = names.resolve(tl);
        Err(eval::EvalError::from(weights::WeightError::Shape { name, expected, found }).into())
    };
    let or = |size: &model::Size, found: usize| match size {
        model::Size::Known(n) => usize::try_from(*n).unwrap_or(usize::MAX),
        model::Size::Symbolic(_) => found,
    };
    let embed = shape("embed.W_E", 2)?;
    let expected = vec![or(&model.d_vocab, embed[0]), or(&model.d_model, embed[1])];
    let embed = check("embed.W_E", embed, expected)?;
    let (d_vocab, d_model) = (embed[0], embed[1]);
    let mut d_head = 0;
    for (l, layer) in model.layers.iter().enumerate() {
        let tl = format!("blocks.{l}.attn.W_Q");
        let w_q = shape(&tl, 3)?;
        let expected = vec![layer.attn.n_heads, d_model, or(&layer.attn.d_head, w_q[2])];
        d_head = d_head.max(check(&tl, w_q, expected)?[2]);
    }
    let d_vocab_out = match &model.unembed.d_vocab_out {
        None => d_vocab,
        Some(size) => {
            let w_u = shape("unembed.W_U", 2)?;
            let expected = vec![d_model, or(size, w_u[1])];
            check("unembed.W_U", w_u, expected)?[1]
        }
    };
    let dims = plan::Dims { d_vocab, d_vocab_out, d_model, d_head };
    Ok(plan::plan(dims, plan::Counts::from_heads_per_layer(&model.heads_per_layer())))
}

/// Parses and checks a model file and builds its term graph.
pub fn compile(source: &str) -> Result<Compiled, Error> {
    let model = syntax::parse_model(source).map_err(Error::Model)?;
    let graph = TermGraph::build(&model);
    Ok(Compiled { model, graph })
}

/// The expansion of a model: its sum of paths (and optionally of each head's attention scores),
/// as sorted templates with their exact counts.
#[derive(Debug, Clone)]
pub struct Expansion {
    pub model: Model,
    pub graph: TermGraph,
    pub max_order: Option<u32>,
    /// The logits' templates in path order.
    pub logits: Vec<Template>,
    pub logit_counts: Counts,
    /// Per layer, the terms of its MLP's input in path order (`None` without an MLP).
    pub mlp_inputs: Vec<Option<Vec<Template>>>,
    pub mlp_input_counts: Vec<Option<Counts>>,
    /// Per layer, the terms of a gated MLP's gate input `x·W_gate` in path order (`None`
    /// without a gated MLP).
    pub mlp_gates: Vec<Option<Vec<Template>>>,
    pub mlp_gate_counts: Vec<Option<Counts>>,
    /// The saturation runs of the logits and the MLP inputs.
    pub logit_stats: RunStats,
    /// With `qk`: each layer's attention-score templates, in order.
    pub scores: Option<Vec<Vec<Template>>>,
    pub score_counts: Option<Counts>,
    pub score_stats: Option<RunStats>,
}

/// One concrete logit path, owned, for library users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTerm {
    pub name: String,
    pub order: usize,
    pub source: Source,
    pub heads: Vec<HeadRef>,
    /// The term in the paper's notation, e.g. `A^{0.3} ⊗ W_U·W_OV^{0.3}·W_E`.
    pub term: String,
}

/// One concrete attention-score term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreTerm {
    pub name: String,
    pub head: HeadRef,
    pub order: usize,
    pub composition: paths::Composition,
    pub query_heads: Vec<HeadRef>,
    pub key_heads: Vec<HeadRef>,
    pub term: String,
}

impl Expansion {
    pub fn heads_per_layer(&self) -> Vec<usize> {
        self.model.heads_per_layer()
    }

    /// Every logit path, in order.
    pub fn logit_paths(&self) -> impl Iterator<Item = PathTerm> {
        let mut out = Vec::new();
        paths::for_each_path(&self.logits, &self.heads_per_layer(), None, |p| {
            out.push(PathTerm {
                name: p.name(),
                order: p.template.order(),
                source: p.template.source().expect("logit templates end in a source"),
                heads: p.heads(Side::Head),
                term: emit::notation::Notation::Text.term(
                    &p.template.position,
                    &p.template.weights,
                    emit::notation::Heads::Concrete(&p),
                ),
            })
        });
        out.into_iter()
    }

    /// Every attention-score term, head by head, in order (empty without `qk`).
    pub fn score_terms(&self) -> impl Iterator<Item = ScoreTerm> {
        let mut out = Vec::new();
        for (layer, templates) in self.scores.iter().flatten().enumerate() {
            for head in 0..self.model.layers[layer].attn.n_heads {
                let target = HeadRef { layer, head };
                let fixed = (IndexVar { side: Side::Head, layer }, head);
                paths::for_each_path(templates, &self.heads_per_layer(), Some(fixed), |p| {
                    out.push(ScoreTerm {
                        name: p.score_name(target),
                        head: target,
                        order: p.template.order(),
                        composition: paths::Composition::of(p.template),
                        query_heads: p.heads(Side::Query),
                        key_heads: p.heads(Side::Key),
                        term: emit::notation::Notation::Text.term(
                            &p.template.position,
                            &p.template.weights,
                            emit::notation::Heads::Concrete(&p),
                        ),
                    })
                });
            }
        }
        out.into_iter()
    }
}

/// Compiles a model file and expands it into its sum of paths.
pub fn expand(source: &str, options: &ExpandOptions) -> Result<Expansion, Error> {
    expand_compiled(compile(source)?, options)
}

pub fn expand_compiled(compiled: Compiled, options: &ExpandOptions) -> Result<Expansion, Error> {
    expand_with_progress(compiled, options, &progress::Silent)
}

/// [`expand_compiled`], telling `progress` of every saturation run (one per block, one per MLP
/// input, and with `qk` one per attention layer and stream).
pub fn expand_with_progress(
    compiled: Compiled,
    options: &ExpandOptions,
    progress: &dyn progress::Progress,
) -> Result<Expansion, Error> {
    let counts = compiled.counts(options.max_order, options.qk);
    compiled.check_limits(&counts, options)?;
    let TermCounts {
        logits: logit_counts,
        mlp_inputs: mlp_input_counts,
        mlp_gates: mlp_gate_counts,
        scores: score_counts,
    } = counts;
    let rewrite::LogitExpansion { mut logits, mut mlp_inputs, mut mlp_gates, stats: logit_stats } =
        rewrite::expand_logits(&compiled.graph, options.max_order, options.rewrite_limits, progress)?;
    paths::sort_logit_templates(&mut logits);
    for templates in mlp_inputs.iter_mut().chain(&mut mlp_gates).flatten() {
        paths::sort_logit_templates(templates);
    }
    let (scores, score_stats) = if options.qk {
        let (mut per_layer, stats) =
            rewrite::expand_scores(&compiled.graph, options.max_order, options.rewrite_limits, progress)?;
        for templates in &mut per_layer {
            paths::sort_score_templates(templates);
        }
        (Some(per_layer), Some(stats))
    } else {
        (None, None)
    };
    Ok(Expansion {
        model: compiled.model,
        graph: compiled.graph,
        max_order: options.max_order,
        logits,
        logit_counts,
        mlp_inputs,
        mlp_input_counts,
        mlp_gates,
        mlp_gate_counts,
        logit_stats,
        scores,
        score_counts,
        score_stats,
    })
}
