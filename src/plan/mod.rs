//! Cost-based evaluation plans for the per-head statistics, chosen by an e-graph.
//!
//! Every statistic `pathc stats` reports is one term per head (or per pair of heads) over the
//! weight matrices, written as the paper writes it ([`Stat::term`]): the OV copying score is
//! `copying(W_E W_V W_O W_U)`, a vocab × vocab matrix. One e-graph holds all of them as templates
//! over "a head h" and "a later head r"; the rule table ([`lang::rules`]) re-associates products,
//! moves transposes, rotates cyclically under an eigenvalue computation or a trace, and turns a
//! Frobenius norm into the trace of a Gram product. The shape analysis gives every e-class its
//! dimensions, a rank bound and the head indices it depends on, and the cost model prices a node at its
//! multiply-adds times the number of instances its class has (1 for a head-independent product
//! such as `W_U W_E`, `n_heads` per head, `n_pairs` per pair). Extraction with that cost picks,
//! at once:
//!
//! - the association of every product chain (the matrix-chain order);
//! - the sub-products shared by every head (`W_U W_E`, `W_Eᵀ W_E`, `W_U W_Uᵀ`): priced once
//!   while the per-head alternatives are priced per head, they win as soon as they are shared
//!   (`W_U W_E` only where the OV copying score is planned: it needs `d_vocab_out = d_vocab`,
//!   see [`Stat::defined`]);
//! - a cyclic rotation where it is cheaper, only inside `copying` or `tr`: the OV spectrum from
//!   the d_head × d_head `W_O (W_U W_E) W_V`, norms as `√⟨Gram, Gram⟩`.
//!
//! The extracted terms become one [`EvalPlan`], a DAG in which each sub-product is one step;
//! [`exec`] runs it. The *naive* plan is the same DAG extracted before any rewrite: the
//! statistics as written, products left to right. Both are priced by the same cost model
//! (FLOPs and a peak-memory estimate), which `pathc plan` prints side by side.

pub mod exec;
pub mod lang;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt::Write as _;

use egg::{EGraph, Id, Language, RecExpr, Runner, StopReason};

use lang::ShapeAnalysis;
pub use lang::{Deps, Dims, Plan, Shape};

/// The statistics a plan computes, each a template over head `h` (and a later head `r`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stat {
    OvCopying,
    QkCopying,
    OvFrobenius,
    QkFrobenius,
    /// `‖W_V W_O‖` of the left head of a composition score.
    LeftNorm,
    /// `‖right‖` of the right head, per mode.
    RightNorm(Mode),
    /// `‖left · right‖` of a pair, per mode.
    PairNorm(Mode),
}

/// The three composition modes (which matrix of the right head reads the left head's output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    Q,
    K,
    V,
}

impl Stat {
    pub const ALL: [Stat; 11] = [
        Stat::OvCopying,
        Stat::QkCopying,
        Stat::OvFrobenius,
        Stat::QkFrobenius,
        Stat::LeftNorm,
        Stat::RightNorm(Mode::Q),
        Stat::RightNorm(Mode::K),
        Stat::RightNorm(Mode::V),
        Stat::PairNorm(Mode::Q),
        Stat::PairNorm(Mode::K),
        Stat::PairNorm(Mode::V),
    ];

    /// The statistics `dims` define: every one of [`Stat::ALL`] but the OV copying score when the
    /// full OV circuit `W_E W_V W_O W_U` (`d_vocab × d_vocab_out`) is not square, which has no
    /// eigenvalues. A plan computes these and nothing else (without `OvCopying`, nothing
    /// multiplies `W_U` by `W_E`, which needs `d_vocab_out = d_vocab`).
    pub fn defined(dims: Dims) -> Vec<Stat> {
        Stat::ALL.into_iter().filter(|&stat| stat != Stat::OvCopying || dims.ov_square()).collect()
    }

    /// Why `dims` do not define `self`, if they do not.
    pub fn not_defined(self, dims: Dims) -> Option<String> {
        match self {
            Stat::OvCopying if !dims.ov_square() => Some(format!(
                "the full OV circuit W_E·W_OV·W_U is d_vocab × d_vocab_out = {} × {}, not square, so it has no eigenvalues",
                dims.d_vocab, dims.d_vocab_out
            )),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Stat::OvCopying => "ov_copying[h]",
            Stat::QkCopying => "qk_copying[h]",
            Stat::OvFrobenius => "ov_frobenius[h]",
            Stat::QkFrobenius => "qk_frobenius[h]",
            Stat::LeftNorm => "comp_left_norm[h]",
            Stat::RightNorm(Mode::Q) => "comp_q_right_norm[r]",
            Stat::RightNorm(Mode::K) => "comp_k_right_norm[r]",
            Stat::RightNorm(Mode::V) => "comp_v_right_norm[r]",
            Stat::PairNorm(Mode::Q) => "comp_q_norm[h,r]",
            Stat::PairNorm(Mode::K) => "comp_k_norm[h,r]",
            Stat::PairNorm(Mode::V) => "comp_v_norm[h,r]",
        }
    }

    /// The statistic as written (TransformerLens's layout, `x · W`), products left to right.
    pub fn term(self) -> &'static str {
        match self {
            Stat::OvCopying => "(copying (* (* (* W_E W_V[h]) W_O[h]) W_U))",
            Stat::QkCopying => "(copying (* (* (* W_E W_Q[h]) (T W_K[h])) (T W_E)))",
            Stat::OvFrobenius => "(fro (* (* (* W_E W_V[h]) W_O[h]) W_U))",
            Stat::QkFrobenius => "(fro (* (* (* W_E W_Q[h]) (T W_K[h])) (T W_E)))",
            Stat::LeftNorm => "(fro (* W_V[h] W_O[h]))",
            Stat::RightNorm(Mode::Q) => "(fro (* W_Q[r] (T W_K[r])))",
            Stat::RightNorm(Mode::K) => "(fro (* W_K[r] (T W_Q[r])))",
            Stat::RightNorm(Mode::V) => "(fro (* W_V[r] W_O[r]))",
            Stat::PairNorm(Mode::Q) => "(fro (* (* (* W_V[h] W_O[h]) W_Q[r]) (T W_K[r])))",
            Stat::PairNorm(Mode::K) => "(fro (* (* (* W_V[h] W_O[h]) W_K[r]) (T W_Q[r])))",
            Stat::PairNorm(Mode::V) => "(fro (* (* (* W_V[h] W_O[h]) W_V[r]) W_O[r]))",
        }
    }
}

/// The precision of a plan's matrix products; everything else (sums over the vocabulary's
/// chunks, traces, norms, eigenvalues) is f64 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Each product's operands divided by a power of two (`exec`'s `power_of_two_scale`), rounded to
    /// f32 and multiplied by the f32 kernel (twice the f64 rate), the result widened to f64 and
    /// scaled back; a product over the vocabulary is summed in f64 chunk by chunk
    /// ([`VOCAB_CHUNK`] rows of f32 sums each); products of at most [`exec::SMALL_PRODUCT`]
    /// multiply-adds stay f64.
    F32,
    /// Every product in f64.
    #[default]
    F64,
}

/// How many instances a class of each kind has: the model's heads and composing pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub n_heads: usize,
    /// Pairs `(h, r)` with `layer(h) < layer(r)`.
    pub n_pairs: usize,
    /// The most heads of any one layer.
    pub layer_heads: usize,
}

impl Counts {
    pub fn from_heads_per_layer(heads_per_layer: &[usize]) -> Counts {
        let n_heads = heads_per_layer.iter().sum();
        let mut n_pairs = 0;
        let mut later = n_heads;
        for &n in heads_per_layer {
            later -= n;
            n_pairs += n * later;
        }
        Counts { n_heads, n_pairs, layer_heads: heads_per_layer.iter().copied().max().unwrap_or(0) }
    }

    pub fn instances(self, deps: Deps) -> f64 {
        match deps {
            Deps::NONE => 1.0,
            Deps::PAIR => self.n_pairs as f64,
            _ => self.n_heads as f64,
        }
    }
}

/// The e-graph's limits. Reaching one is reported ([`RunReport::stop`]), never silent: the plan is
/// then the best of what was found, still exact.
pub const NODE_LIMIT: usize = 200_000;
pub const ITER_LIMIT: usize = 60;

/// An evaluation plan: a DAG of steps (children before parents, each sub-product once) and the
/// step of each statistic.
#[derive(Debug, Clone)]
pub struct EvalPlan {
    pub dims: Dims,
    pub counts: Counts,
    pub steps: RecExpr<Plan>,
    pub shapes: Vec<Shape>,
    pub roots: Vec<(Stat, Id)>,
    /// The saturation run (`None` for the naive plan, which is not rewritten).
    pub run: Option<RunReport>,
}

/// What the e-graph did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub nodes: usize,
    pub classes: usize,
    pub iterations: usize,
    pub rules: usize,
    /// `None` when saturated; otherwise the limit that stopped it.
    pub stop: Option<String>,
    /// How many times each rule applied, by name.
    pub applied: std::collections::BTreeMap<String, usize>,
}

/// The chosen and the naive plan of a model's statistics.
#[derive(Debug, Clone)]
pub struct Plans {
    pub chosen: EvalPlan,
    pub naive: EvalPlan,
}

/// Plans every statistic for `dims` and `counts`: the naive plan (the terms as written) and the
/// one extracted after saturation with the cost model (FLOPs × instances, see the module
/// documentation). Plans depend only on
/// the sizes, so each is made once per process (GPT-2 small's takes ~60 ms).
pub fn plan(dims: Dims, counts: Counts) -> Plans {
    static MADE: std::sync::Mutex<Vec<((Dims, Counts), Plans)>> = std::sync::Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, plans)) = made.iter().find(|(key, _)| *key == (dims, counts)) {
        return plans.clone();
    }
    let plans = make_plans(dims, counts);
    made.push(((dims, counts), plans.clone()));
    plans
}

fn make_plans(dims: Dims, counts: Counts) -> Plans {
    let mut egraph = EGraph::new(ShapeAnalysis { dims });
    let roots: Vec<(Stat, Id)> = Stat::defined(dims)
        .into_iter()
        .map(|stat| (stat, egraph.add_expr(&stat.term().parse().expect("plan terms are well formed"))))
        .collect();
    egraph.rebuild();
    // Before any rewrite every class holds the one node written.
    let as_written: HashMap<Id, Plan> = egraph.classes().map(|c| (c.id, c.nodes[0].clone())).collect();
    let naive = extract(&egraph, &roots, dims, counts, None, &as_written);

    let runner: Runner<Plan, ShapeAnalysis> = Runner::new(ShapeAnalysis { dims })
        .with_egraph(egraph)
        .with_node_limit(NODE_LIMIT)
        .with_iter_limit(ITER_LIMIT)
        .with_time_limit(std::time::Duration::from_secs(60))
        .run(lang::rules());
    let egraph = &runner.egraph;
    let report = RunReport {
        nodes: egraph.total_size(),
        classes: egraph.number_of_classes(),
        iterations: runner.iterations.len(),
        rules: lang::rules().len(),
        stop: match runner.stop_reason {
            Some(StopReason::Saturated) | None => None,
            Some(other) => Some(format!("{other:?}")),
        },
        applied: runner.iterations.iter().flat_map(|i| i.applied.iter()).fold(
            std::collections::BTreeMap::new(),
            |mut applied, (rule, &n)| {
                *applied.entry(rule.to_string()).or_insert(0) += n;
                applied
            },
        ),
    };
    let choice = dag_choice(egraph, counts, &roots);
    let chosen = extract(egraph, &roots, dims, counts, Some(report.clone()), &choice);
    // The extraction's DAG cost and the plan's FLOPs can disagree (candidates are pruned per
    // class): the naive plan is always a candidate, so the chosen one never costs more.
    if chosen.flops() > naive.flops() {
        let chosen = EvalPlan { run: Some(report), ..naive.clone() };
        return Plans { chosen, naive };
    }
    Plans { chosen, naive }
}

/// Multiply-adds count 2; a Gram product (`gram`: `xᵀ·x` or `x·xᵀ`) only its upper triangle,
/// `n (n + 1) / 2` entries; an eigenvalue computation (Hessenberg reduction and shifted QR) about
/// `10 n³`; a Gram matrix's square root (Cholesky) `n³ / 3`; a transpose of a weight is a view (0), of a computed matrix a copy.
pub fn step_flops(node: &Plan, shape_of: impl Fn(Id) -> Shape, is_weight: impl Fn(Id) -> bool, gram: bool) -> f64 {
    let f = |x: usize| x as f64;
    match node {
        Plan::Mul([a, _]) if gram => {
            let a = shape_of(*a);
            f(a.rows) * (f(a.rows) + 1.0) * f(a.cols)
        }
        Plan::Mul([a, b]) => {
            let (a, b) = (shape_of(*a), shape_of(*b));
            2.0 * f(a.rows) * f(a.cols) * f(b.cols)
        }
        Plan::Transpose(a) if is_weight(*a) => 0.0,
        Plan::Transpose(a) => shape_of(*a).size(),
        Plan::Trace(a) => f(shape_of(*a).rows),
        Plan::Dot([a, _]) | Plan::Frobenius(a) => 2.0 * shape_of(*a).size(),
        Plan::Sqrt(_) => 1.0,
        Plan::Copying(a) => 10.0 * f(shape_of(*a).rows).powi(3),
        Plan::GramRoot(a) => f(shape_of(*a).rows).powi(3) / 3.0,
        Plan::Weight(_) => 0.0,
    }
}

/// The price of one node over all its instances: its FLOPs times the instances its class has
/// (1 for a shared product, `n_heads` per head, `n_pairs` per pair); infinite for a per-head or
/// per-pair matrix larger than its rank allows in factored form ([`kept_at_rank`]: a d_model ×
/// d_model product of rank ≤ d_head, such as `W_Oᵀ W_Vᵀ W_V W_O`), so that the working memory
/// of a head or a pair stays at the size of its weights and the per-head matrices the pair steps
/// read can be kept for every head.
fn node_price(egraph: &EGraph<Plan, ShapeAnalysis>, counts: Counts, enode: &Plan, shape: Shape) -> f64 {
    let shape_of = |id: Id| egraph[id].data;
    let is_weight = |id: Id| egraph[id].nodes.iter().any(|n| matches!(n, Plan::Weight(_)));
    let deps = enode.children().iter().fold(Deps::NONE, |d, &c| d.union(shape_of(c).deps));
    if deps != Deps::NONE && !kept_at_rank(shape) {
        return f64::INFINITY;
    }
    if deps == Deps::PAIR && enode.children().iter().any(|&c| !is_weight(c) && !kept_at_rank(shape_of(c))) {
        return f64::INFINITY;
    }
    let transpose_of = |t: Id, x: Id| egraph[t].nodes.iter().any(|n| *n == Plan::Transpose(egraph.find(x)));
    let gram = matches!(enode, Plan::Mul([a, b]) if transpose_of(*a, *b) || transpose_of(*b, *a));
    step_flops(enode, shape_of, is_weight, gram) * counts.instances(deps)
}

/// How many candidate sub-plans each class keeps during extraction.
const CANDIDATES: usize = 4;

/// The node chosen for each class a sub-plan needs and its price, `(class, node, price)` in
/// class order: a sorted vector, merged in one pass ([`merged`]), rather than a map cloned and
/// added to entry by entry (that was three quarters of the planning time at GPT-2 size).
type Choices = Vec<(Id, Plan, f64)>;

/// One way to compute a class: the node chosen for every class it needs, each priced once.
#[derive(Clone)]
struct Candidate {
    choices: std::rc::Rc<Choices>,
    total: f64,
}

/// `a` and `b`'s choices together, in class order; `a`'s where both choose for a class.
fn merged(a: &Choices, b: &Choices) -> Choices {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => {
                out.push(a[i].clone());
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j].clone());
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i].clone());
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// DAG-aware extraction: a class's cost is the set of classes its choice needs, each priced once
/// ([`node_price`]), so a sub-product read twice (by the two sides of an inner product, by two
/// statistics) is paid for once, where a tree cost pays twice and passes over plans that share.
/// Each class keeps its [`CANDIDATES`] cheapest sub-plans, and a node combines every candidate
/// of each child: keeping only the cheapest ("greedy DAG") misses `⟨X, G_V X G_K⟩`, whose second
/// operand is cheapest on its own without `X`. Classes are visited in id order until nothing
/// changes, ties keep the first found, and a node whose sub-plan would contain its own class (a
/// cycle such as `T (T a) = a`) is skipped: the choice is deterministic. All statistics are
/// combined last, in order, into one choice per class.
fn dag_choice(egraph: &EGraph<Plan, ShapeAnalysis>, counts: Counts, roots: &[(Stat, Id)]) -> HashMap<Id, Plan> {
    let mut best: HashMap<Id, Vec<Candidate>> = HashMap::new();
    let mut classes: Vec<Id> = egraph.classes().map(|c| c.id).collect();
    classes.sort();
    for _pass in 0..egraph.number_of_classes().max(1) {
        let mut changed = false;
        for &class in &classes {
            let mut found: Vec<Candidate> = best.get(&class).cloned().unwrap_or_default();
            for node in &egraph[class].nodes {
                let price = node_price(egraph, counts, node, egraph[class].data);
                if !price.is_finite() {
                    continue;
                }
                let mut partial: Vec<Choices> = vec![Vec::new()];
                for &child in node.children() {
                    let Some(options) = best.get(&egraph.find(child)) else {
                        partial.clear();
                        break;
                    };
                    partial = partial.iter().flat_map(|p| options.iter().map(move |o| merged(p, &o.choices))).collect();
                }
                for mut choices in partial {
                    let Err(at) = choices.binary_search_by_key(&class, |&(k, _, _)| k) else {
                        continue;
                    };
                    choices.insert(at, (class, node.clone(), price));
                    let total = choices.iter().map(|(_, _, p)| p).sum();
                    if found.iter().any(|c| c.total == total && same_choices(&c.choices, &choices)) {
                        continue;
                    }
                    found.push(Candidate { choices: std::rc::Rc::new(choices), total });
                }
            }
            found.sort_by(|a, b| a.total.total_cmp(&b.total));
            found.truncate(CANDIDATES);
            let old = best.get(&class);
            let same = old.is_some_and(|old| {
                old.len() == found.len()
                    && old.iter().zip(&found).all(|(a, b)| a.total == b.total && same_choices(&a.choices, &b.choices))
            });
            if !same && !found.is_empty() {
                best.insert(class, found);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut choice: HashMap<Id, Plan> = HashMap::new();
    for &(_, root) in roots {
        if let Some(candidate) = best.get(&egraph.find(root)).and_then(|c| c.first()) {
            for (class, node, _) in candidate.choices.iter() {
                choice.entry(*class).or_insert_with(|| node.clone());
            }
        }
    }
    choice
}

fn same_choices(a: &Choices, b: &Choices) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((ka, na, _), (kb, nb, _))| ka == kb && na == nb)
}

/// Whether a per-head matrix may be kept for every head, for the pair steps to read: only if it
/// is no larger than its rank allows in factored form, `rows · cols ≤ (rows + cols) · rank`. A
/// d_model × d_model product of rank ≤ d_head (`W_Oᵀ W_Vᵀ W_V W_O`) is not kept (at GPT-2 size,
/// 144 of them are 680 MB); its d_head-sized factors are. This is the memory side of the cost
/// model: it trades the cheapest composition plan (one d_model² inner product per pair) for one
/// that keeps memory at the size of the weights (one d_head × d_model × d_head product per pair).
fn kept_at_rank(shape: Shape) -> bool {
    shape.scalar || shape.entries() <= shape.rows.saturating_add(shape.cols).saturating_mul(shape.rank)
}

/// The DAG of the chosen node of every class reachable from the roots, each class once, in
/// an order where every step comes after the steps it reads.
fn extract(
    egraph: &EGraph<Plan, ShapeAnalysis>,
    roots: &[(Stat, Id)],
    dims: Dims,
    counts: Counts,
    run: Option<RunReport>,
    choice: &HashMap<Id, Plan>,
) -> EvalPlan {
    let mut steps = RecExpr::default();
    let mut shapes = Vec::new();
    let mut memo: HashMap<Id, Id> = HashMap::new();
    fn add(
        class: Id,
        egraph: &EGraph<Plan, ShapeAnalysis>,
        choice: &HashMap<Id, Plan>,
        steps: &mut RecExpr<Plan>,
        shapes: &mut Vec<Shape>,
        memo: &mut HashMap<Id, Id>,
    ) -> Id {
        let class = egraph.find(class);
        if let Some(&step) = memo.get(&class) {
            return step;
        }
        let node = choice.get(&class).expect("every class reachable from a root has a finite choice").clone();
        let node = node.map_children(|child| add(child, egraph, choice, steps, shapes, memo));
        let step = steps.add(node);
        shapes.push(egraph[class].data);
        memo.insert(class, step);
        step
    }
    let roots =
        roots.iter().map(|&(stat, id)| (stat, add(id, egraph, choice, &mut steps, &mut shapes, &mut memo))).collect();
    EvalPlan { dims, counts, steps, shapes, roots, run }
}

/// Tokens per chunk when a product over the vocabulary is streamed (see [`exec`]).
pub const VOCAB_CHUNK: usize = 1024;

impl EvalPlan {
    pub fn node(&self, step: Id) -> &Plan {
        &self.steps[step]
    }

    pub fn shape(&self, step: Id) -> Shape {
        self.shapes[usize::from(step)]
    }

    pub fn step_ids(&self) -> impl DoubleEndedIterator<Item = Id> {
        (0..self.shapes.len()).map(Id::from)
    }

    pub fn is_weight(&self, step: Id) -> bool {
        matches!(self.node(step), Plan::Weight(_))
    }

    /// A weight or a weight's transpose: read from the weights where it is needed (a view),
    /// never kept as a value.
    pub fn is_weight_view(&self, step: Id) -> bool {
        self.is_weight(step) || matches!(self.node(step), Plan::Transpose(inner) if self.is_weight(*inner))
    }

    /// Whether the step is a Gram product `xᵀ·x` or `x·xᵀ` (symmetric: computed and priced as
    /// its upper triangle).
    pub fn is_gram(&self, step: Id) -> bool {
        match self.node(step) {
            Plan::Mul([a, b]) => self.node(*a) == &Plan::Transpose(*b) || self.node(*b) == &Plan::Transpose(*a),
            _ => false,
        }
    }

    /// The vocabulary-side weight a step reads as `Xᵀ` / `Y` of a streamed product `Σ_c X_cᵀ Y_c`
    /// over chunks of vocabulary rows, if it is one: `W_E` or `W_Uᵀ` (as `X` on the left of the
    /// product when the step is `(T W_E)` or `W_U`, as `Y` on the right when it is `W_E` or
    /// `(T W_U)`).
    pub fn vocab_operand(&self, step: Id, left: bool) -> Option<VocabMatrix> {
        let weight = |id: Id| match self.node(id) {
            Plan::Weight(name) if name.as_str() == "W_E" => Some(VocabMatrix::Embed),
            Plan::Weight(name) if name.as_str() == "W_U" => Some(VocabMatrix::UnembedT),
            _ => None,
        };
        match (self.node(step), left) {
            (Plan::Transpose(inner), true) => weight(*inner).filter(|w| *w == VocabMatrix::Embed),
            (Plan::Weight(_), true) => weight(step).filter(|w| *w == VocabMatrix::UnembedT),
            (Plan::Weight(_), false) => weight(step).filter(|w| *w == VocabMatrix::Embed),
            (Plan::Transpose(inner), false) => weight(*inner).filter(|w| *w == VocabMatrix::UnembedT),
            _ => None,
        }
    }

    /// How many vocabulary rows `m` has, which a streamed product of it sums over: `d_vocab`
    /// for `W_E`, `d_vocab_out` for `W_Uᵀ`.
    pub fn vocab_length(&self, m: VocabMatrix) -> usize {
        match m {
            VocabMatrix::Embed => self.dims.d_vocab,
            VocabMatrix::UnembedT => self.dims.d_vocab_out,
        }
    }

    /// A product over the vocabulary of two weights: computed by streaming chunks of their rows,
    /// never holding either whole (see [`exec`]). Both have the same number of rows (the shape
    /// analysis forms `W_U · W_E` only when `d_vocab_out = d_vocab`).
    pub fn streamed(&self, step: Id) -> Option<(VocabMatrix, VocabMatrix)> {
        match self.node(step) {
            Plan::Mul([a, b]) => Some((self.vocab_operand(*a, true)?, self.vocab_operand(*b, false)?)),
            _ => None,
        }
    }

    /// Which steps are needed as values: the roots, and whatever a needed step reads, except
    /// the operands of a streamed product (read chunk by chunk instead).
    pub fn needed(&self) -> Vec<bool> {
        let mut needed = vec![false; self.shapes.len()];
        for &(_, root) in &self.roots {
            needed[usize::from(root)] = true;
        }
        for step in self.step_ids().rev() {
            if !needed[usize::from(step)] || self.streamed(step).is_some() {
                continue;
            }
            for &child in self.node(step).children() {
                needed[usize::from(child)] = true;
            }
        }
        needed
    }

    /// FLOPs of one step over all its instances.
    pub fn step_cost(&self, step: Id) -> f64 {
        step_flops(self.node(step), |id| self.shape(id), |id| self.is_weight(id), self.is_gram(step))
            * self.counts.instances(self.shape(step).deps)
    }

    /// FLOPs of the whole plan, each step once per instance.
    pub fn flops(&self) -> f64 {
        let needed = self.needed();
        self.step_ids().filter(|s| needed[usize::from(*s)]).map(|s| self.step_cost(s)).sum()
    }

    /// An estimate of the peak memory of running the plan with [`exec`] on `threads` threads
    /// with products in `precision`, in bytes (`f64` unless said), as [`exec`] runs a layer at a
    /// time on each thread: a layer's weights per thread (a source that holds every layer's, as
    /// in-memory parameters do, holds them anyway); the whole of `W_E` and `W_U` where a step
    /// reads one other than streamed (else `threads` chunk buffers of each matrix a pass over the
    /// vocabulary reads: both when `d_vocab_out = d_vocab`, one pass per matrix otherwise); every
    /// head-independent matrix (kept to the end); per thread, one head's intermediate matrices
    /// and one layer pair's pair values; the per-head matrices that pair steps read, for every
    /// head (those only batched products read, stacked, in the precision's type), and the
    /// per-right-head ones for a layer per thread.
    pub fn peak_bytes(&self, threads: usize, precision: Precision) -> f64 {
        let Dims { d_vocab, d_vocab_out, d_model, d_head } = self.dims;
        // In floats: sizes of 2^32 overflow a product of usizes.
        let bytes = |n: f64| 8.0 * n;
        let buffers_per_pass = if d_vocab == d_vocab_out { 2.0 } else { 1.0 };
        let (d_vocab, d_vocab_out, d_model, d_head) =
            (d_vocab as f64, d_vocab_out as f64, d_model as f64, d_head as f64);
        let needed = self.needed();
        let (heads, threads) = (self.counts.n_heads as f64, threads as f64);
        let layers_in_flight = threads * self.counts.layer_heads as f64;
        let mut total = layers_in_flight * bytes(4.0 * d_model * d_head);
        let vocab_whole = self.step_ids().any(|s| {
            needed[usize::from(s)]
                && matches!(self.node(s), Plan::Weight(n) if n.as_str() == "W_E" || n.as_str() == "W_U")
        });
        let streamed = self.step_ids().any(|s| needed[usize::from(s)] && self.streamed(s).is_some());
        if vocab_whole {
            total += bytes(d_vocab * d_model) + bytes(d_vocab_out * d_model);
        } else if streamed {
            total += threads * buffers_per_pass * bytes(VOCAB_CHUNK as f64 * d_model);
        }
        let read_by_pairs = self.read_by_pairs();
        let read_unbatched = self.read_by_unbatched_pairs();
        let operand_bytes = match precision {
            Precision::F32 => 4.0,
            Precision::F64 => 8.0,
        };
        for step in self.step_ids().filter(|s| needed[usize::from(*s)]) {
            let (shape, i) = (self.shape(step), usize::from(step));
            if shape.scalar || (self.is_weight(step) && !read_by_pairs[i]) {
                continue;
            }
            // Kept for every head of every layer (left heads), or of a layer per thread.
            let kept = if shape.deps == Deps::HEAD { heads } else { layers_in_flight };
            total += match shape.deps {
                Deps::NONE => bytes(shape.size()),
                Deps::PAIR => threads * bytes(shape.size()) * self.pair_batch(step),
                // Stacked for the batched products in the precision's type (`exec`'s `Stack`).
                _ if read_by_pairs[i] && !read_unbatched[i] => kept * operand_bytes * shape.size(),
                _ if read_by_pairs[i] => kept * bytes(shape.size()),
                _ => threads * bytes(shape.size()),
            };
        }
        total
    }

    /// Per-head (or per-right-head) steps that a pair step reads: kept for every head (a weight
    /// too: [`exec`] reads a layer's weights only while it runs that layer's heads). A weight or
    /// a weight's transpose that a batched product reads goes into that product's stacked
    /// operand: it is not kept.
    pub fn read_by_pairs(&self) -> Vec<bool> {
        let mut read = vec![false; self.shapes.len()];
        for step in self.step_ids().filter(|s| self.shape(*s).deps == Deps::PAIR) {
            let batched = self.batched(step).is_some();
            for &child in self.node(step).children() {
                let weight_view = batched && self.is_weight_view(child);
                if self.shape(child).deps != Deps::PAIR && !weight_view {
                    read[usize::from(child)] = true;
                }
            }
        }
        read
    }

    /// Per-head (or per-right-head) steps that a pair step other than a batched one reads.
    pub fn read_by_unbatched_pairs(&self) -> Vec<bool> {
        let mut read = vec![false; self.shapes.len()];
        for step in self.step_ids().filter(|s| self.shape(*s).deps == Deps::PAIR && self.batched(*s).is_none()) {
            for &child in self.node(step).children() {
                if self.shape(child).deps != Deps::PAIR {
                    read[usize::from(child)] = true;
                }
            }
        }
        read
    }

    /// A pair step that multiplies a per-head and a per-right-head matrix (in either order):
    /// [`exec`] computes it for one left head and all its right heads in one product. Its operands
    /// as `(per head, per right head)`.
    pub fn batched(&self, step: Id) -> Option<(Id, Id)> {
        match self.node(step) {
            Plan::Mul([a, b]) => match (self.shape(*a).deps, self.shape(*b).deps) {
                (Deps::HEAD, Deps::RIGHT) => Some((*a, *b)),
                (Deps::RIGHT, Deps::HEAD) => Some((*b, *a)),
                _ => None,
            },
            _ => None,
        }
    }

    /// How many pairs [`exec`] computes a pair step for at once: a product of a per-head and a
    /// per-right-head matrix is one product per left head against every right head side by
    /// side; other pair steps one pair at a time.
    fn pair_batch(&self, step: Id) -> f64 {
        // One value per pair of a left layer's heads and a right layer's, held together; a
        // batched step's product besides (as large, for d_head-sized blocks).
        let pairs = (self.counts.layer_heads * self.counts.layer_heads) as f64;
        match self.batched(step) {
            Some(_) => 2.0 * pairs,
            None => pairs,
        }
    }

    /// The step's expression, `%i` naming earlier steps.
    pub fn describe(&self, step: Id) -> String {
        let name = |id: Id| match self.node(id) {
            Plan::Weight(w) => w.to_string(),
            Plan::Transpose(inner) if self.is_weight(*inner) => format!("{}ᵀ", self.node(*inner)),
            _ => format!("%{}", usize::from(id)),
        };
        match self.node(step) {
            Plan::Mul([a, b]) => format!("{} · {}", name(*a), name(*b)),
            Plan::Transpose(a) => format!("{}ᵀ", name(*a)),
            Plan::Trace(a) => format!("tr {}", name(*a)),
            Plan::Dot([a, b]) => format!("⟨{}, {}⟩", name(*a), name(*b)),
            Plan::Sqrt(a) => format!("√{}", name(*a)),
            Plan::Copying(a) => format!("copying(eig {})", name(*a)),
            Plan::Frobenius(a) => format!("‖{}‖_F", name(*a)),
            Plan::GramRoot(a) => format!("root {}", name(*a)),
            Plan::Weight(w) => w.to_string(),
        }
    }

    /// Steps worth listing: needed, not a weight, not a weight's transpose (a view).
    pub fn listed_steps(&self) -> Vec<Id> {
        let needed = self.needed();
        self.step_ids().filter(|&s| needed[usize::from(s)] && !self.is_weight(s) && !self.is_weight_view(s)).collect()
    }

    /// The plan as text: one step a line with its shape, rank bound, instances and FLOPs.
    pub fn write_steps(&self, out: &mut String) {
        for step in self.listed_steps() {
            let shape = self.shape(step);
            let size = if shape.scalar {
                "scalar".to_string()
            } else {
                format!("{}×{} rank≤{}", shape.rows, shape.cols, shape.rank)
            };
            let streamed = if self.streamed(step).is_some() { "  streamed over the vocabulary" } else { "" };
            let _ = writeln!(
                out,
                "  %{:<4} = {:<28} {:<22} {:<17} {:>12}{streamed}",
                usize::from(step),
                self.describe(step),
                size,
                shape.deps.label(),
                format_flops(self.step_cost(step)),
            );
        }
        for &(stat, root) in &self.roots {
            let _ = writeln!(out, "  {:<22} = %{}", stat.name(), usize::from(root));
        }
        for stat in Stat::ALL {
            if let Some(reason) = stat.not_defined(self.dims) {
                let _ = writeln!(out, "  {:<22} : not defined: {reason}", stat.name());
            }
        }
    }
}

/// The two vocabulary-sized weights, seen as chunks of vocabulary rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabMatrix {
    /// `W_E`, `[d_vocab, d_model]`.
    Embed,
    /// `W_Uᵀ`, `[d_vocab_out, d_model]`.
    UnembedT,
}

pub fn format_flops(flops: f64) -> String {
    match flops {
        f if f >= 1e12 => format!("{:.1} TFLOP", f / 1e12),
        f if f >= 1e9 => format!("{:.2} GFLOP", f / 1e9),
        f if f >= 1e6 => format!("{:.2} MFLOP", f / 1e6),
        f => format!("{:.0} FLOP", f),
    }
}

pub fn format_bytes(bytes: f64) -> String {
    match bytes {
        b if b >= 1e9 => format!("{:.2} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b => format!("{:.0} kB", b / 1e3),
    }
}

impl EvalPlan {
    /// The plan as JSON: totals, every listed step and the statistics' steps.
    pub fn to_json(&self, threads: usize) -> serde_json::Value {
        let steps: Vec<serde_json::Value> = self
            .listed_steps()
            .into_iter()
            .map(|step| {
                let shape = self.shape(step);
                serde_json::json!({
                    "step": usize::from(step),
                    "expr": self.describe(step),
                    "rows": shape.rows,
                    "cols": shape.cols,
                    "rank": shape.rank,
                    "scalar": shape.scalar,
                    "instances": shape.deps.label(),
                    "flops": self.step_cost(step),
                    "streamed": self.streamed(step).is_some(),
                })
            })
            .collect();
        let roots: serde_json::Map<String, serde_json::Value> =
            self.roots.iter().map(|&(stat, root)| (stat.name().to_string(), usize::from(root).into())).collect();
        let not_defined: serde_json::Map<String, serde_json::Value> = Stat::ALL
            .into_iter()
            .filter_map(|stat| Some((stat.name().to_string(), stat.not_defined(self.dims)?.into())))
            .collect();
        let mut json = serde_json::json!({
            "flops": self.flops(),
            "peak_bytes": self.peak_bytes(threads, Precision::F32),
            "precision": Precision::F32,
            "threads": threads,
            "steps": steps,
            "statistics": roots,
        });
        if !not_defined.is_empty() {
            json["not_defined"] = not_defined.into();
        }
        json
    }
}

impl Plans {
    /// `pathc plan --format json`: sizes, the e-graph run, and both plans.
    pub fn to_json(&self, model: &str, threads: usize) -> serde_json::Value {
        let Dims { d_vocab, d_vocab_out, d_model, d_head } = self.chosen.dims;
        let run = self.chosen.run.as_ref().map(|run| {
            serde_json::json!({
                "rules": run.rules,
                "iterations": run.iterations,
                "nodes": run.nodes,
                "classes": run.classes,
                "saturated": run.stop.is_none(),
                "stop": run.stop,
                "applied": run.applied,
            })
        });
        serde_json::json!({
            "model": model,
            "d_vocab": d_vocab,
            "d_vocab_out": d_vocab_out,
            "d_model": d_model,
            "d_head": d_head,
            "n_heads": self.chosen.counts.n_heads,
            "n_pairs": self.chosen.counts.n_pairs,
            "egraph": run,
            "chosen": self.chosen.to_json(threads),
            "naive": self.naive.to_json(threads),
        })
    }

    /// `pathc plan`'s report: the model's sizes, the e-graph run, both plans' totals, then the
    /// chosen plan's steps and the naive plan's.
    pub fn render(&self, model: &str, threads: usize) -> String {
        let (c, n) = (&self.chosen, &self.naive);
        let Dims { d_vocab, d_vocab_out, d_model, d_head } = c.dims;
        let mut out = String::new();
        let vocab_out = if d_vocab_out == d_vocab { String::new() } else { format!(", d_vocab_out {d_vocab_out}") };
        let _ = writeln!(
            out,
            "plan for {model}: {} heads, {} composing pairs; d_vocab {d_vocab}{vocab_out}, d_model {d_model}, d_head {d_head}",
            c.counts.n_heads, c.counts.n_pairs
        );
        if let Some(run) = &c.run {
            let _ = writeln!(
                out,
                "e-graph: {} rules, {} iterations, {} e-nodes, {} e-classes, {}",
                run.rules,
                run.iterations,
                run.nodes,
                run.classes,
                run.stop.as_deref().map_or("saturated".to_string(), |s| format!("stopped: {s}"))
            );
        }
        let _ = writeln!(
            out,
            "chosen: {:>12}, peak memory ≈ {} ({threads} threads, f32 products)",
            format_flops(c.flops()),
            format_bytes(c.peak_bytes(threads, Precision::F32))
        );
        let _ = writeln!(
            out,
            "naive:  {:>12}, peak memory ≈ {}  ({:.0}× the chosen plan's FLOPs)",
            format_flops(n.flops()),
            format_bytes(n.peak_bytes(threads, Precision::F32)),
            n.flops() / c.flops().max(1.0)
        );
        let _ = writeln!(out, "\nchosen plan (h: a head; r: a head of a later layer):");
        c.write_steps(&mut out);
        let _ = writeln!(out, "\nnaive plan (the statistics as written, products left to right):");
        n.write_steps(&mut out);
        out
    }
}
