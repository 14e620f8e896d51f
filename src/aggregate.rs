//! Circuits over datasets: every path's contribution to a logit metric, every score term's to a
//! score difference, and the check of the sum of paths, over all the prompts of a dataset, with
//! each path's (or group's) mean, standard deviation and mean absolute value.
//!
//! A run reads the dataset twice. The first pass resolves every prompt — tokenizes a text, reads
//! its per-prompt fields over the command line's defaults, checks its tokens against the
//! vocabulary and the context length, resolves its metric — and stops at the first bad one, so
//! nothing is computed (or printed) for a dataset that is not whole. The second pass reads it
//! again [`CHUNK`] prompts at a time, computes a chunk's prompts on the worker threads
//! ([`parallel_map`]), each prompt its own forward pass (without the vocabulary-wide
//! unembedding, [`eval::forward_without_logits`]: the metric reads its few logits from the final
//! residual stream), and folds the results into the aggregates
//! in prompt order: the numbers are the same for any thread count, and memory is one chunk's
//! whatever the number of prompts.
//!
//! **Invariant:** the aggregates are exactly the per-prompt numbers' (each prompt's contributions
//! are [`MetricEvaluator::contributions`] or [`score_attribution`] of its own forward pass; the
//! mean is their sum in prompt order divided by the count), and no result is returned for a
//! dataset with a bad prompt.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::dataset::{DatasetError, DatasetReader, Prompt, PromptInput, TokenField};
use crate::eval::{
    self, score_attribution, CheckReport, EvalError, Forward, Metric, MetricEvaluator, Params, ScoreDifference, Target,
    TermEffect,
};
use crate::linalg::NonFinite;
use crate::parallel::parallel_map;
use crate::paths::{self, Grouping, HeadRef, IndexVar, Side};
use crate::progress::Progress;
use crate::text::Tokenizer;
use crate::Expansion;

/// Where a dataset's prompts come from: a file (`--dataset`), or prompts already in memory (the
/// Python package's lists), each `Prompt::line` then its 1-based index, and `name` what errors
/// call the list.
#[derive(Debug, Clone, Copy)]
pub enum Dataset<'a> {
    File(&'a Path),
    Prompts { name: &'a str, prompts: &'a [Prompt] },
}

impl<'a> From<&'a Path> for Dataset<'a> {
    fn from(path: &'a Path) -> Dataset<'a> {
        Dataset::File(path)
    }
}

impl<'a> From<&'a PathBuf> for Dataset<'a> {
    fn from(path: &'a PathBuf) -> Dataset<'a> {
        Dataset::File(path)
    }
}

type PromptStream<'a> = Box<dyn Iterator<Item = Result<Prompt, DatasetError>> + 'a>;

impl<'a> Dataset<'a> {
    /// What errors name: the file, or the list's name.
    fn path(self) -> PathBuf {
        match self {
            Dataset::File(path) => path.to_path_buf(),
            Dataset::Prompts { name, .. } => PathBuf::from(name),
        }
    }

    fn prompts(self) -> Result<PromptStream<'a>, DatasetError> {
        match self {
            Dataset::File(path) => Ok(Box::new(DatasetReader::open(path)?)),
            Dataset::Prompts { name, prompts: [] } => Err(DatasetError::Empty { path: PathBuf::from(name) }),
            Dataset::Prompts { prompts, .. } => Ok(Box::new(prompts.iter().cloned().map(Ok))),
        }
    }
}

/// How many prompts are read, computed (in parallel) and folded at a time.
pub const CHUNK: usize = 64;

/// Where a metric is taken in a prompt (a prompt's own `"position"` overrides it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The prompt's last token.
    Last,
    /// Every position the target has (a mean over them).
    All,
    At(usize),
}

impl Position {
    fn resolve(self, n: usize) -> Option<usize> {
        match self {
            Position::Last => Some(n - 1),
            Position::All => None,
            Position::At(p) => Some(p),
        }
    }
}

/// What turns a prompt into token ids: a tokenizer for texts (and text targets), and whether to
/// put the BOS before a text (`None`: the tokenizer's default, as for `--text`).
#[derive(Clone, Copy, Default)]
pub struct Inputs<'a> {
    pub tokenizer: Option<&'a Tokenizer>,
    pub prepend_bos: Option<bool>,
}

/// The logit metric asked of every prompt: `target`'s logit minus, with `against`, `against`'s, at
/// `position` (default: the last position, or every position for [`Target::Next`]). These are the
/// defaults; a prompt's `"target"`, `"against"` and `"position"` fields override them.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogitQuestion {
    pub target: Option<Target>,
    pub against: Option<Target>,
    pub position: Option<Position>,
}

/// The score difference asked of every prompt: head `head`'s score at query `query` (default: the
/// last position) of key `key` minus that of key `against_key`. A prompt's `"position"`, `"key"`
/// and `"against_key"` fields override them.
#[derive(Debug, Clone, Copy)]
pub struct ScoreQuestion {
    pub head: HeadRef,
    pub query: Option<usize>,
    pub key: Option<usize>,
    pub against_key: Option<usize>,
}

#[derive(Debug, Error)]
pub enum AggregateError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// A prompt that cannot be run or asked the question: `file:line: what is wrong`.
    #[error("{}:{line}: {message}", .path.display())]
    Prompt { path: PathBuf, line: usize, message: String },
    /// A computed value of a prompt that is not a number.
    #[error("{}:{line}: {source}", .path.display())]
    NonFinite { path: PathBuf, line: usize, source: NonFinite },
    /// The question itself, before any prompt (a head the model does not have, no score terms).
    #[error("{0}")]
    Question(String),
    /// The caller asked the run to stop ([`Progress::cancelled`]), after `prompts` prompts.
    #[error("interrupted after {prompts} prompts")]
    Cancelled { prompts: usize },
    /// Writing the per-prompt rows failed.
    #[error("writing the per-prompt rows: {0}")]
    Output(#[source] std::io::Error),
}

/// Why one prompt failed, before its file and line are known.
enum Failed {
    Message(String),
    NonFinite(NonFinite),
}

impl From<EvalError> for Failed {
    fn from(e: EvalError) -> Failed {
        match e {
            EvalError::NonFinite(e) => Failed::NonFinite(e),
            other => Failed::Message(other.to_string()),
        }
    }
}

impl From<NonFinite> for Failed {
    fn from(e: NonFinite) -> Failed {
        Failed::NonFinite(e)
    }
}

/// A dataset's aggregate of one quantity over the prompts.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    /// The mean: the sum in prompt order over the number of prompts.
    pub mean: f64,
    /// The population standard deviation (ddof 0).
    pub std: f64,
    /// The mean of the absolute values.
    pub mean_abs: f64,
}

/// Running sums of one quantity (the mean from the plain sum, the variance by Welford's update).
#[derive(Debug, Clone, Copy, Default)]
struct Accumulator {
    n: u64,
    sum: f64,
    abs: f64,
    mean: f64,
    m2: f64,
}

impl Accumulator {
    fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.abs += x.abs();
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    fn summary(&self) -> Summary {
        let n = self.n.max(1) as f64;
        Summary { mean: self.sum / n, std: (self.m2 / n).max(0.0).sqrt(), mean_abs: self.abs / n }
    }
}

/// A prompt ready to run: its tokens, and where it is.
struct Ready<Q> {
    line: usize,
    tokens: Vec<usize>,
    question: Q,
}

/// Turns a prompt into tokens and its question, or says why it cannot be.
trait Prepare: Sync {
    type Question: Send + Sync;
    fn prepare(&self, prompt: &Prompt, tokens: &[usize]) -> Result<Self::Question, Failed>;
}

/// The prompt's tokens: its ids, or its text tokenized.
fn tokens_of(prompt: &Prompt, inputs: Inputs<'_>, params: &Params) -> Result<Vec<usize>, Failed> {
    let tokens = match &prompt.input {
        PromptInput::Tokens(ids) => ids.clone(),
        PromptInput::Text(text) => {
            let tokenizer = inputs.tokenizer.ok_or_else(|| {
                Failed::Message(
                    "a text prompt needs a tokenizer (--tokenizer tokenizer.json, or a --weights folder with one)"
                        .to_string(),
                )
            })?;
            let ids = tokenizer.tokenize(text, inputs.prepend_bos).map_err(|e| Failed::Message(e.to_string()))?.ids;
            if ids.is_empty() {
                return Err(Failed::Message(format!("the text {} is no token at all", crate::text::quote(text))));
            }
            ids
        }
    };
    params.check_tokens(&tokens)?;
    Ok(tokens)
}

/// Runs `prepare` over the whole dataset (the first pass), then `compute` on every prompt in
/// chunks on the worker threads, handing each result to `fold` in prompt order (the second pass).
/// Returns the number of prompts.
fn run<P: Prepare, R: Send>(
    dataset: Dataset<'_>,
    inputs: Inputs<'_>,
    params: &Params,
    prepare: &P,
    compute: impl Fn(&Ready<P::Question>) -> Result<R, Failed> + Sync,
    mut fold: impl FnMut(usize, &Ready<P::Question>, R) -> Result<(), AggregateError>,
    progress: &dyn Progress,
) -> Result<usize, AggregateError> {
    let path = dataset.path();
    let at = |line: usize| {
        let path = path.clone();
        move |failed: Failed| match failed {
            Failed::Message(message) => AggregateError::Prompt { path, line, message },
            Failed::NonFinite(source) => AggregateError::NonFinite { path, line, source },
        }
    };
    let ready = |prompt: Prompt| -> Result<Ready<P::Question>, AggregateError> {
        let line = prompt.line;
        let tokens = tokens_of(&prompt, inputs, params).map_err(at(line))?;
        let question = prepare.prepare(&prompt, &tokens).map_err(at(line))?;
        Ok(Ready { line, tokens, question })
    };
    let mut total = 0u64;
    for prompt in dataset.prompts()? {
        ready(prompt?)?;
        total += 1;
    }
    progress.start("prompts", total);
    let mut reader = dataset.prompts()?;
    let mut index = 0;
    loop {
        let chunk: Vec<Ready<P::Question>> =
            reader.by_ref().take(CHUNK).map(|p| ready(p?)).collect::<Result<_, AggregateError>>()?;
        if chunk.is_empty() {
            break;
        }
        let results = parallel_map(&chunk, &compute);
        for (prompt, result) in chunk.iter().zip(results) {
            fold(index, prompt, result.map_err(at(prompt.line))?)?;
            index += 1;
        }
        progress.advance(chunk.len() as u64);
        if progress.cancelled() {
            progress.finish();
            return Err(AggregateError::Cancelled { prompts: index });
        }
    }
    progress.finish();
    Ok(index)
}

/// A prompt's forward pass without the vocabulary-wide unembedding (the metric reads a few
/// logits, [`Metric::value_in`]).
fn forward(params: &Params, tokens: &[usize]) -> Result<Forward, Failed> {
    Ok(eval::forward_without_logits(params, tokens)?)
}

/// A per-prompt token field, or the command line's default.
fn token_field(
    field: Option<&TokenField>,
    default: Option<Target>,
    inputs: Inputs<'_>,
    what: &str,
) -> Result<Option<Target>, Failed> {
    match field {
        None => Ok(default),
        Some(TokenField::Id(t)) => Ok(Some(Target::Token(*t))),
        Some(TokenField::Text(text)) if text == "next" && what == "target" => Ok(Some(Target::Next)),
        Some(TokenField::Text(text)) => match inputs.tokenizer {
            Some(tokenizer) => tokenizer
                .single_token(text)
                .map(|t| Some(Target::Token(t)))
                .map_err(|e| Failed::Message(format!("\"{what}\": {e}"))),
            None => Err(Failed::Message(format!(
                "\"{what}\" {} is a text: it needs a tokenizer (--tokenizer tokenizer.json)",
                crate::text::quote(text)
            ))),
        },
    }
}

struct LogitPrepare<'a> {
    question: LogitQuestion,
    inputs: Inputs<'a>,
    params: &'a Params,
}

impl Prepare for LogitPrepare<'_> {
    type Question = Metric;

    fn prepare(&self, prompt: &Prompt, tokens: &[usize]) -> Result<Metric, Failed> {
        let q = self.question;
        let target = token_field(prompt.target.as_ref(), q.target, self.inputs, "target")?
            .ok_or_else(|| Failed::Message("no target: give --target or a \"target\" field".to_string()))?;
        let against = token_field(prompt.against.as_ref(), q.against, self.inputs, "against")?;
        let position = match prompt.position {
            Some(p) => Some(p),
            None => q
                .position
                .unwrap_or(if target == Target::Next { Position::All } else { Position::Last })
                .resolve(tokens.len()),
        };
        Ok(Metric::new(target, against, tokens, self.params, position)?)
    }
}

/// Where a group sorts ([`Grouping::of`]).
type SortKey = (usize, usize, usize);

/// The rows a dataset's path table has: one per path, or one per group of paths.
#[derive(Debug, Clone)]
struct Rows {
    names: Vec<String>,
    orders: Vec<Option<usize>>,
    paths: Vec<usize>,
    /// Each path's row, in path order.
    row_of: Vec<usize>,
}

impl Rows {
    fn of(expansion: &Expansion, grouping: Option<Grouping>) -> Rows {
        let heads = expansion.heads_per_layer();
        // (name, where it sorts, order of a single path)
        let mut groups: Vec<(String, SortKey, Option<usize>)> = Vec::new();
        let mut group_of = Vec::new();
        paths::for_each_path(&expansion.logits, &heads, None, |p| match grouping {
            None => {
                group_of.push(groups.len());
                groups.push((p.name(), (0, 0, 0), Some(p.template.order())));
            }
            Some(grouping) => {
                let (name, key) = grouping.of(&p);
                match groups.iter().position(|g| g.0 == name) {
                    Some(i) => group_of.push(i),
                    None => {
                        group_of.push(groups.len());
                        groups.push((name, key, None));
                    }
                }
            }
        });
        // Group order (a stable sort: insertion order for ties); paths stay in path order.
        let mut order: Vec<usize> = (0..groups.len()).collect();
        order.sort_by_key(|&i| groups[i].1);
        let mut rank = vec![0; groups.len()];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r;
        }
        let row_of: Vec<usize> = group_of.iter().map(|&g| rank[g]).collect();
        let mut paths = vec![0; groups.len()];
        for &r in &row_of {
            paths[r] += 1;
        }
        let names = order.iter().map(|&i| groups[i].0.clone()).collect();
        let orders = order.iter().map(|&i| groups[i].2).collect();
        Rows { names, orders, paths, row_of }
    }
}

/// The names and orders (`None` for a group) of the rows [`dataset_paths`] gives, in its order:
/// what a per-prompt writer needs before the first prompt.
pub fn path_rows(expansion: &Expansion, grouping: Option<Grouping>) -> (Vec<String>, Vec<Option<usize>>) {
    let rows = Rows::of(expansion, grouping);
    (rows.names, rows.orders)
}

/// The names and orders of head `head`'s score terms, in the order [`dataset_scores`] gives them.
pub fn score_terms(expansion: &Expansion, head: HeadRef) -> Result<(Vec<String>, Vec<usize>), AggregateError> {
    let heads = expansion.heads_per_layer();
    if head.layer >= heads.len() || head.head >= heads[head.layer] {
        return Err(AggregateError::Question(format!("the model has no head {head}")));
    }
    let templates = &expansion
        .scores
        .as_ref()
        .ok_or_else(|| AggregateError::Question("the expansion has no score terms (expand with qk)".to_string()))?
        [head.layer];
    let (mut names, mut orders) = (Vec::new(), Vec::new());
    let fixed = (IndexVar { side: Side::Head, layer: head.layer }, head.head);
    paths::for_each_path(templates, &heads, Some(fixed), |p| {
        names.push(p.score_name(head));
        orders.push(p.template.order());
    });
    Ok((names, orders))
}

/// One row of a dataset's path table: a path or a group, and its contribution over the prompts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PathSummary {
    pub name: String,
    /// The path's order; `None` for a group.
    pub order: Option<usize>,
    /// How many paths the row sums (1 for a path).
    pub paths: usize,
    #[serde(flatten)]
    pub contribution: Summary,
}

/// One prompt's numbers, handed to the caller as they are computed (for `--per-prompt`).
pub struct PromptPaths<'a> {
    /// 0-based, in dataset order.
    pub index: usize,
    pub line: usize,
    pub tokens: &'a [usize],
    /// The metric of the forward pass.
    pub metric: f64,
    /// Each row's contribution, in the table's row order.
    pub values: &'a [f64],
}

/// Every path's (or group's) contribution to a logit metric over a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetPaths {
    pub prompts: usize,
    /// In path (or group) order.
    pub rows: Vec<PathSummary>,
    /// The metric of the forward passes.
    pub metric: Summary,
    /// Whether the expansion has every order (else the rest is what the omitted orders add).
    pub complete: bool,
    /// `metric − Σ rows` per prompt: the omitted orders' contribution when truncated, rounding
    /// otherwise.
    pub rest: Summary,
    /// `max |metric − Σ rows|` over the prompts, and the line of the prompt where it is.
    pub max_abs_rest: f64,
    pub worst_line: usize,
}

/// Whether `expansion` holds every order of path (no truncation below the number of layers).
fn is_complete(expansion: &Expansion) -> bool {
    expansion.max_order.is_none_or(|k| k as usize >= expansion.model.layers.len())
}

/// Each logit path's (with `grouping`, each group's) contribution to the metric `question` asks of
/// every prompt of `dataset`: their means, standard deviations and mean absolute values, and each
/// prompt's numbers to `per_prompt` as they come (in prompt order).
#[allow(clippy::too_many_arguments)]
pub fn dataset_paths<'d>(
    expansion: &Expansion,
    params: &Params,
    dataset: impl Into<Dataset<'d>>,
    inputs: Inputs<'_>,
    question: LogitQuestion,
    grouping: Option<Grouping>,
    progress: &dyn Progress,
    mut per_prompt: impl FnMut(&PromptPaths<'_>) -> std::io::Result<()>,
) -> Result<DatasetPaths, AggregateError> {
    let rows = Rows::of(expansion, grouping);
    let evaluator = MetricEvaluator::new(params);
    let prepare = LogitPrepare { question, inputs, params };
    let n_rows = rows.names.len();
    let mut sums = vec![Accumulator::default(); n_rows];
    let (mut metric_sum, mut rest_sum) = (Accumulator::default(), Accumulator::default());
    let (mut max_abs_rest, mut worst_line) = (0.0f64, 0);
    let compute = |prompt: &Ready<Metric>| -> Result<(f64, Vec<f64>), Failed> {
        let forward = forward(params, &prompt.tokens)?;
        let mut values = vec![0.0; n_rows];
        evaluator.contributions(expansion, &forward, &prompt.question, |i, c| values[rows.row_of[i]] += c)?;
        let metric = prompt.question.value_in(params, &forward);
        crate::linalg::finite_values(&[metric], |_| "the metric".to_string())?;
        Ok((metric, values))
    };
    let prompts = run(
        dataset.into(),
        inputs,
        params,
        &prepare,
        compute,
        |index, prompt, (metric, values)| {
            for (sum, &v) in sums.iter_mut().zip(&values) {
                sum.add(v);
            }
            let rest = metric - values.iter().sum::<f64>();
            metric_sum.add(metric);
            rest_sum.add(rest);
            if rest.abs() > max_abs_rest || rest.is_nan() {
                (max_abs_rest, worst_line) = (rest.abs(), prompt.line);
            }
            let row = PromptPaths { index, line: prompt.line, tokens: &prompt.tokens, metric, values: &values };
            per_prompt(&row).map_err(AggregateError::Output)
        },
        progress,
    )?;
    let rows = (0..n_rows)
        .map(|r| PathSummary {
            name: rows.names[r].clone(),
            order: rows.orders[r],
            paths: rows.paths[r],
            contribution: sums[r].summary(),
        })
        .collect();
    Ok(DatasetPaths {
        prompts,
        rows,
        metric: metric_sum.summary(),
        complete: is_complete(expansion),
        rest: rest_sum.summary(),
        max_abs_rest,
        worst_line,
    })
}

struct ScorePrepare {
    question: ScoreQuestion,
    causal: bool,
}

impl Prepare for ScorePrepare {
    type Question = ScoreDifference;

    fn prepare(&self, prompt: &Prompt, tokens: &[usize]) -> Result<ScoreDifference, Failed> {
        let q = self.question;
        let missing = |what: &str, flag: &str| {
            Failed::Message(format!("no {what} position: give --{flag} or a \"{}\" field", flag.replace('-', "_")))
        };
        let difference = ScoreDifference {
            layer: q.head.layer,
            head: q.head.head,
            query: prompt.position.or(q.query).unwrap_or(tokens.len() - 1),
            key: prompt.key.or(q.key).ok_or_else(|| missing("key", "key"))?,
            against_key: prompt.against_key.or(q.against_key).ok_or_else(|| missing("against-key", "against-key"))?,
        };
        difference.check(tokens.len(), self.causal).map_err(|e| Failed::Message(e.to_string()))?;
        Ok(difference)
    }
}

/// One score term's part in a head's score difference over a dataset.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TermSummary {
    pub name: String,
    pub order: usize,
    /// Its contribution to `s[q, K] − s[q, K']` (exact: the terms sum to the difference).
    pub difference: Summary,
    /// Its first-order effect on `p[q, K]` (the softmax's Jacobian at the recorded scores): a
    /// linearisation.
    pub prob_linear: Summary,
    /// The real change of `p[q, K]` when it is removed from the scores.
    pub prob_removed: Summary,
}

/// One prompt's score attribution, handed to the caller as it is computed.
pub struct PromptScores<'a> {
    pub index: usize,
    pub line: usize,
    pub tokens: &'a [usize],
    pub positions: ScoreDifference,
    pub difference: f64,
    pub prob_key: f64,
    pub prob_against_key: f64,
    /// Each term's, in the table's term order.
    pub terms: &'a [TermEffect],
}

/// Every score term's part in one head's score difference over a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetScores {
    pub prompts: usize,
    pub head: HeadRef,
    pub terms: Vec<TermSummary>,
    /// `s[q, K] − s[q, K']`, `p[q, K]` and `p[q, K']` of the forward passes.
    pub difference: Summary,
    pub prob_key: Summary,
    pub prob_against_key: Summary,
    /// `max |Σ terms − difference|` over the prompts (rounding: the terms are exact).
    pub max_sum_error: f64,
    /// `max |prob_linear − prob_removed|` over terms and prompts: how far the linearisation is
    /// from the real softmax, and where (the term and the prompt's line).
    pub max_linear_error: f64,
    pub worst_term: usize,
    pub worst_line: usize,
    /// `max |prob_removed|` over terms and prompts: the scale the linearisation error is of.
    pub max_prob_removed: f64,
}

/// Each score term's part in head `question.head`'s score difference between two keys, at a query,
/// on every prompt of `dataset`: the exact difference, and the first-order and real effects on the
/// attention probability of the first key. `expansion` must be expanded with `qk`.
pub fn dataset_scores<'d>(
    expansion: &Expansion,
    params: &Params,
    dataset: impl Into<Dataset<'d>>,
    inputs: Inputs<'_>,
    question: ScoreQuestion,
    progress: &dyn Progress,
    mut per_prompt: impl FnMut(&PromptScores<'_>) -> std::io::Result<()>,
) -> Result<DatasetScores, AggregateError> {
    let layer = question.head.layer;
    let (names, orders) = score_terms(expansion, question.head)?;
    let folded = eval::score_params(params);
    let prepare = ScorePrepare { question, causal: params.layers[layer].attn.causal };
    let mut diff = vec![Accumulator::default(); names.len()];
    let mut linear = diff.clone();
    let mut removed = diff.clone();
    let (mut total, mut p_key, mut p_against) =
        (Accumulator::default(), Accumulator::default(), Accumulator::default());
    let (mut max_sum_error, mut max_linear_error, mut worst_term, mut worst_line, mut max_prob_removed) =
        (0.0f64, 0.0f64, 0, 0, 0.0f64);
    let compute = |prompt: &Ready<ScoreDifference>| {
        let forward = forward(params, &prompt.tokens)?;
        Ok(score_attribution(expansion, &folded, &forward, prompt.question)?)
    };
    let prompts = run(
        dataset.into(),
        inputs,
        params,
        &prepare,
        compute,
        |index, prompt, attribution| {
            let mut sum = 0.0;
            for (t, effect) in attribution.terms.iter().enumerate() {
                diff[t].add(effect.difference);
                linear[t].add(effect.prob_linear);
                removed[t].add(effect.prob_removed);
                sum += effect.difference;
                let error = (effect.prob_linear - effect.prob_removed).abs();
                if error > max_linear_error {
                    (max_linear_error, worst_term, worst_line) = (error, t, prompt.line);
                }
                max_prob_removed = max_prob_removed.max(effect.prob_removed.abs());
            }
            max_sum_error = max_sum_error.max((sum - attribution.difference).abs());
            total.add(attribution.difference);
            p_key.add(attribution.prob_key);
            p_against.add(attribution.prob_against_key);
            let row = PromptScores {
                index,
                line: prompt.line,
                tokens: &prompt.tokens,
                positions: prompt.question,
                difference: attribution.difference,
                prob_key: attribution.prob_key,
                prob_against_key: attribution.prob_against_key,
                terms: &attribution.terms,
            };
            per_prompt(&row).map_err(AggregateError::Output)
        },
        progress,
    )?;
    let terms = (0..names.len())
        .map(|t| TermSummary {
            name: names[t].clone(),
            order: orders[t],
            difference: diff[t].summary(),
            prob_linear: linear[t].summary(),
            prob_removed: removed[t].summary(),
        })
        .collect();
    Ok(DatasetScores {
        prompts,
        head: question.head,
        terms,
        difference: total.summary(),
        prob_key: p_key.summary(),
        prob_against_key: p_against.summary(),
        max_sum_error,
        max_linear_error,
        worst_term,
        worst_line,
        max_prob_removed,
    })
}

struct CheckPrepare;

impl Prepare for CheckPrepare {
    type Question = ();

    fn prepare(&self, _: &Prompt, _: &[usize]) -> Result<(), Failed> {
        Ok(())
    }
}

/// `pathc check` over a dataset: the largest error of any prompt, and where.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DatasetCheck {
    pub prompts: usize,
    pub paths: u64,
    pub max_order: Option<u32>,
    /// The largest `max |Σ paths + omitted − logits|` of a prompt, and its line.
    pub max_abs_error: f64,
    pub worst_line: usize,
    /// The largest relative error of a prompt.
    pub max_rel_error: f64,
    /// The largest `max |omitted|` of a prompt (0 without truncation).
    pub omitted_max_abs: f64,
}

/// [`eval::check`] on every prompt of `dataset`.
pub fn dataset_check<'d>(
    expansion: &Expansion,
    params: &Params,
    dataset: impl Into<Dataset<'d>>,
    inputs: Inputs<'_>,
    progress: &dyn Progress,
) -> Result<DatasetCheck, AggregateError> {
    let mut out = DatasetCheck {
        prompts: 0,
        paths: 0,
        max_order: expansion.max_order,
        max_abs_error: 0.0,
        worst_line: 0,
        max_rel_error: 0.0,
        omitted_max_abs: 0.0,
    };
    let compute = |prompt: &Ready<()>| -> Result<CheckReport, Failed> {
        let forward = eval::forward(params, &prompt.tokens)?;
        Ok(eval::check(expansion, params, &forward, &crate::progress::OnlyCancel(progress))?)
    };
    out.prompts = run(
        dataset.into(),
        inputs,
        params,
        &CheckPrepare,
        compute,
        |_, prompt, report| {
            out.paths = report.paths;
            if report.max_abs_error > out.max_abs_error || report.max_abs_error.is_nan() || out.worst_line == 0 {
                (out.max_abs_error, out.worst_line) = (report.max_abs_error, prompt.line);
            }
            out.max_rel_error = crate::linalg::max_abs([out.max_rel_error, report.max_rel_error].iter());
            out.omitted_max_abs = out.omitted_max_abs.max(report.omitted_max_abs);
            Ok(())
        },
        progress,
    )?;
    Ok(out)
}
