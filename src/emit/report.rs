//! `pathc report`: one self-contained HTML page to explore a model's paths on one prompt.
//!
//! [`report`] gathers what the page shows, as numbers pathc already reports elsewhere (every value
//! is the one `pathc paths --target`, `pathc scores` or `pathc stats --format json` prints, so the
//! page can be checked against them); [`html`] puts it, with the page's script and styles
//! (`report/`), into one file that needs no network.
//!
//! Size: the fixed part (script, styles, page) is under 40 kB ([`FIXED_BUDGET`]); the data grows
//! with the paths shown (`top_paths`, each with its formula and its prefixes in the tree), with
//! `heads × cells × (top_terms + 1)` score terms, and with the statistics (`heads²` composition
//! scores). A page over `max_bytes` is refused ([`ReportError::TooLarge`]), never cut short.

use serde::Serialize;
use thiserror::Error;

use crate::emit::notation::{Heads, Notation};
use crate::eval::{CheckReport, EvalError, Evaluation, Target, TargetEvaluator, Targets};
use crate::linalg::{finite_values, NonFinite};
use crate::paths;
use crate::progress::{Cancelled, Progress};
use crate::stats::Stats;
use crate::text::Labels;

/// The page's script, styles and HTML around the data (embedded at build time).
const STYLE: &str = include_str!("report/report.css");
const SCRIPT: &str = include_str!("report/report.js");
const PAGE: &str = include_str!("report/page.html");

/// The most the page's fixed part (script, styles, HTML) may weigh; a test holds it to this.
pub const FIXED_BUDGET: usize = 40_000;

/// What the report is about and how much of it to show.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// The query position whose logit the paths are attributed to.
    pub position: usize,
    /// The token whose logit at `position` the paths make.
    pub target: usize,
    /// Why this target, in words (`given by --target`, `the next token`, `the top prediction`).
    pub target_why: String,
    /// How many paths are shown by name (ranked by |contribution|); the others are summed.
    pub top_paths: usize,
    /// How many (query path, key path) terms are shown for each attention score; the others are
    /// summed.
    pub top_terms: usize,
    /// The largest page written, in bytes.
    pub max_bytes: usize,
}

/// The page's defaults: 40 paths, 8 score terms a cell, pages up to 16 MB.
impl Default for ReportOptions {
    fn default() -> ReportOptions {
        ReportOptions {
            position: 0,
            target: 0,
            target_why: String::new(),
            top_paths: 40,
            top_terms: 8,
            max_bytes: 16_000_000,
        }
    }
}

#[derive(Debug, Error)]
pub enum ReportError {
    #[error(transparent)]
    NonFinite(#[from] NonFinite),
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// The expansion has no score terms (expanded without `qk`).
    #[error("report: the expansion has no attention-score terms (expand with qk)")]
    NoScores,
    #[error(
        "report: the page would be {bytes} bytes, over the limit of {limit} bytes ({paths} paths shown, {cells} attention \
         cells × up to {terms} terms); show fewer (--top, --top-terms), use fewer tokens, or raise --max-bytes"
    )]
    TooLarge { bytes: usize, limit: usize, paths: usize, cells: usize, terms: usize },
}

/// Everything the page shows, as its script reads it (the JSON inside the page).
#[derive(Debug, Serialize)]
pub struct Report {
    pub pathc: &'static str,
    pub model: String,
    pub tokens: Vec<usize>,
    /// Each token's string, when a tokenizer is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub str_tokens: Option<Vec<Option<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub position: usize,
    pub target: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_str: Option<String>,
    pub target_why: String,
    pub max_order: Option<u32>,
    /// Heads per layer.
    pub layers: Vec<usize>,
    pub paths: PathsSection,
    pub tree: TreeNode,
    pub heads: Vec<HeadSection>,
    pub stats: Option<Stats>,
    /// Why there are no statistics, when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats_missing: Option<String>,
    pub check: CheckSection,
}

/// The logit of the target at the position, path by path.
#[derive(Debug, Serialize)]
pub struct PathsSection {
    /// How many paths the expansion has.
    pub count: usize,
    /// The forward pass's logit of the target at the position.
    pub forward_logit: f64,
    /// Σ of every path's contribution (in path order).
    pub sum: f64,
    /// The `top_paths` largest, ranked by |contribution| (ties in path order).
    pub shown: Vec<PathEntry>,
    /// The paths not shown: how many, and their sum.
    pub rest: Rest,
}

#[derive(Debug, Serialize)]
pub struct PathEntry {
    pub name: String,
    pub order: usize,
    /// The contribution to the target's logit (`pathc paths --target` `target_logits[0]`).
    pub value: f64,
    /// The term in pathc's text notation.
    pub formula: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rest {
    pub paths: usize,
    pub value: f64,
}

/// A node of the path tree: a prefix of path names (`E`, `E/L0H1`, …). `value` sums every path
/// through it; `path` is the index in [`PathsSection::shown`] of the path that ends here, if it is
/// shown; `rest` sums what is under the node but neither in `children` nor `path`.
#[derive(Debug, Serialize)]
pub struct TreeNode {
    pub name: String,
    pub label: String,
    pub value: f64,
    pub paths: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<usize>,
    pub children: Vec<TreeNode>,
    pub rest: Rest,
}

/// One head: its attention pattern and scores, and each score's largest terms.
#[derive(Debug, Serialize)]
pub struct HeadSection {
    pub name: String,
    pub layer: usize,
    pub head: usize,
    /// `[query][key]`, after the masks and the softmax.
    pub pattern: Vec<Vec<f64>>,
    /// `[query][key]`, before them (`pathc scores`' scores).
    pub scores: Vec<Vec<f64>>,
    /// The score terms' names, in path order (cells refer to them by index).
    pub terms: Vec<String>,
    /// `max |Σ terms − scores|` over every cell.
    pub max_abs_error: f64,
    /// Every (query, key) pair the query attends to.
    pub cells: Vec<Cell>,
}

#[derive(Debug, Serialize)]
pub struct Cell {
    pub q: usize,
    pub k: usize,
    /// `(term index, value)`: the `top_terms` largest by |value| (ties in path order).
    pub top: Vec<(usize, f64)>,
    pub rest: Rest,
}

#[derive(Debug, Serialize)]
pub struct CheckSection {
    /// `Σ paths − forward logit` at the position and target.
    pub target_error: f64,
    /// Every logit of every position (`pathc check`).
    pub logits: CheckReport,
}

/// Gathers the page's numbers from a forward pass expanded with score terms (`qk`), and the
/// statistics if there are any (`stats_missing` says why not otherwise). `progress` is told of
/// the heads and the check, and asked between them whether to stop ([`ReportError::Eval`] with
/// [`EvalError::Cancelled`]).
pub fn report(
    evaluation: &Evaluation,
    stats: Result<Stats, String>,
    labels: Option<Labels<'_>>,
    options: &ReportOptions,
    progress: &dyn Progress,
) -> Result<Report, ReportError> {
    let expansion = &evaluation.expansion;
    let forward = &evaluation.forward;
    let heads_per_layer = expansion.heads_per_layer();
    let targets = Targets::for_params(
        Target::Token(options.target),
        &forward.tokens,
        &evaluation.params,
        Some(options.position),
    )?;

    // Every path's contribution, in path order.
    let mut evaluator = TargetEvaluator::new(&evaluation.params, forward, &targets);
    let mut all: Vec<(String, usize, f64, String)> = Vec::new();
    let mut non_finite = None;
    let mut cancelled = false;
    paths::for_each_path(&expansion.logits, &heads_per_layer, None, |p| {
        if cancelled {
            return;
        }
        cancelled = progress.cancelled();
        let value = evaluator.contributions(&p)[0];
        let name = p.name();
        if non_finite.is_none() {
            non_finite = finite_values(&[value], |_| targets.describe(&name, 0)).err();
        }
        let formula = Notation::Text.term(&p.template.position, &p.template.weights, Heads::Concrete(&p));
        all.push((name, p.template.order(), value, formula));
    });
    if let Some(e) = non_finite {
        return Err(e.into());
    }
    if cancelled {
        return Err(EvalError::Cancelled(Cancelled).into());
    }
    let sum: f64 = all.iter().map(|p| p.2).sum();
    let forward_logit = targets.forward_logits(forward)[0];

    // The shown paths: the largest first, ties in path order (a stable sort).
    let mut ranked: Vec<usize> = (0..all.len()).collect();
    ranked.sort_by(|&a, &b| all[b].2.abs().total_cmp(&all[a].2.abs()));
    ranked.truncate(options.top_paths);
    let mut shown_index = vec![None; all.len()];
    for (rank, &i) in ranked.iter().enumerate() {
        shown_index[i] = Some(rank);
    }
    let shown: Vec<PathEntry> = ranked
        .iter()
        .map(|&i| PathEntry { name: all[i].0.clone(), order: all[i].1, value: all[i].2, formula: all[i].3.clone() })
        .collect();
    let rest = Rest {
        paths: all.len() - shown.len(),
        value: (0..all.len()).filter(|&i| shown_index[i].is_none()).map(|i| all[i].2).sum(),
    };
    let tree = tree(&all, &shown_index);

    let mut heads = Vec::new();
    progress.start("the heads' score terms", heads_per_layer.iter().sum::<usize>() as u64);
    for (layer, &n_heads) in heads_per_layer.iter().enumerate() {
        for head in 0..n_heads {
            heads.push(head_section(evaluation, layer, head, options.top_terms, progress)?);
            progress.advance(1);
        }
    }
    progress.finish();

    let logits = crate::eval::check(expansion, &evaluation.params, forward, progress)?;
    let (stats, stats_missing) = match stats {
        Ok(s) => (Some(s), None),
        Err(why) => (None, Some(why)),
    };
    let str_tokens = labels.map(|l| l.input.str_tokens.clone());
    Ok(Report {
        pathc: env!("CARGO_PKG_VERSION"),
        model: expansion.model.name.clone(),
        tokens: forward.tokens.clone(),
        str_tokens,
        text: labels.and_then(|l| l.input.text.clone()),
        position: options.position,
        target: options.target,
        target_str: labels.and_then(|l| l.tokenizer.str_token(options.target)),
        target_why: options.target_why.clone(),
        max_order: expansion.max_order,
        layers: heads_per_layer,
        paths: PathsSection { count: all.len(), forward_logit, sum, shown, rest },
        tree,
        heads,
        stats,
        stats_missing,
        check: CheckSection { target_error: sum - forward_logit, logits },
    })
}

/// The tree of path prefixes over every path (`all`, in path order: name, order, value, …), with
/// the nodes on the way to a shown path (`shown[i]` its rank) and the rest summed.
fn tree(all: &[(String, usize, f64, String)], shown: &[Option<usize>]) -> TreeNode {
    // A trie of the names' segments; children in first-seen (path) order.
    #[derive(Default)]
    struct Trie {
        children: Vec<(String, Trie)>,
        path: Option<usize>,
    }
    let mut root = Trie::default();
    for (i, (name, ..)) in all.iter().enumerate() {
        let mut node = &mut root;
        for segment in name.split('/') {
            let at = match node.children.iter().position(|(s, _)| s == segment) {
                Some(at) => at,
                None => {
                    node.children.push((segment.to_string(), Trie::default()));
                    node.children.len() - 1
                }
            };
            node = &mut node.children[at].1;
        }
        node.path = Some(i);
    }
    // (value, paths, any shown) of a subtree, summed children first in path order.
    fn total(t: &Trie, all: &[(String, usize, f64, String)], shown: &[Option<usize>]) -> (f64, usize, bool) {
        let mut value = 0.0;
        let mut paths = 0;
        let mut any = false;
        if let Some(i) = t.path {
            value += all[i].2;
            paths += 1;
            any |= shown[i].is_some();
        }
        for (_, child) in &t.children {
            let (v, n, s) = total(child, all, shown);
            value += v;
            paths += n;
            any |= s;
        }
        (value, paths, any)
    }
    fn build(
        name: String,
        label: String,
        t: &Trie,
        all: &[(String, usize, f64, String)],
        shown: &[Option<usize>],
    ) -> TreeNode {
        let (value, paths, _) = total(t, all, shown);
        let mut rest = Rest::default();
        let path = t.path.and_then(|i| shown[i]);
        if let (Some(i), None) = (t.path, path) {
            rest.value += all[i].2;
            rest.paths += 1;
        }
        let mut children: Vec<TreeNode> = Vec::new();
        for (segment, child) in &t.children {
            let (v, n, any) = total(child, all, shown);
            if any {
                let child_name = if name.is_empty() { segment.clone() } else { format!("{name}/{segment}") };
                children.push(build(child_name, segment.clone(), child, all, shown));
            } else {
                rest.value += v;
                rest.paths += n;
            }
        }
        // The largest first; ties keep path order.
        children.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
        TreeNode { name, label, value, paths, path, children, rest }
    }
    build(String::new(), "logit".to_string(), &root, all, shown)
}

/// One head's pattern, scores and the largest terms of each score it attends with.
fn head_section(
    evaluation: &Evaluation,
    layer: usize,
    head: usize,
    top_terms: usize,
    progress: &dyn Progress,
) -> Result<HeadSection, ReportError> {
    if evaluation.expansion.scores.is_none() {
        return Err(ReportError::NoScores);
    }
    let forward = &evaluation.forward;
    let crate::emit::numbers::ScoreTerms { names, scores: terms, max_abs_error, .. } =
        crate::emit::numbers::score_terms(evaluation, layer, head, progress)?;
    let n = forward.tokens.len();
    let causal = evaluation.params.layers[layer].attn.causal;
    let mut cells = Vec::new();
    for q in 0..n {
        for k in crate::eval::attended(q, n, causal, forward.attention_mask.as_deref()) {
            let mut order: Vec<usize> = (0..terms.len()).collect();
            order.sort_by(|&a, &b| terms[b][(q, k)].abs().total_cmp(&terms[a][(q, k)].abs()));
            let (top, others) = order.split_at(top_terms.min(order.len()));
            let mut others = others.to_vec();
            others.sort_unstable();
            cells.push(Cell {
                q,
                k,
                top: top.iter().map(|&i| (i, terms[i][(q, k)])).collect(),
                rest: Rest { paths: others.len(), value: others.iter().map(|&i| terms[i][(q, k)]).sum() },
            });
        }
    }
    let rows = |m: &crate::eval::Matrix| (0..n).map(|i| m.row(i).iter().copied().collect()).collect();
    Ok(HeadSection {
        name: paths::HeadRef { layer, head }.to_string(),
        layer,
        head,
        pattern: rows(&forward.patterns[layer][head]),
        scores: rows(&forward.scores[layer][head]),
        terms: names,
        max_abs_error,
        cells,
    })
}

/// The model's top prediction at `position` (the first of equal maxima, as argmax): the default
/// target of a report.
pub fn top_prediction(evaluation: &Evaluation, position: usize) -> usize {
    let row = evaluation.forward.logits.row(position);
    (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b })
}

/// The target token of a report: `target` at `position` (a token, or the next token there), else
/// the [`top_prediction`]; with why, in words.
pub fn target_token(
    evaluation: &Evaluation,
    target: Option<Target>,
    position: usize,
) -> Result<(usize, &'static str), EvalError> {
    Ok(match target {
        Some(target) => {
            let targets = Targets::for_params(target, &evaluation.forward.tokens, &evaluation.params, Some(position))?;
            (targets.tokens[0], if target == Target::Next { "= the next token there" } else { "given by --target" })
        }
        None => (top_prediction(evaluation, position), "= the model's top prediction there"),
    })
}

/// The page: `report` as JSON inside the HTML with the script and styles. Refused when it would
/// be over `max_bytes`.
pub fn html(report: &Report, max_bytes: usize, top_terms: usize) -> Result<String, ReportError> {
    // `<` only occurs inside JSON strings, where `\u003c` means the same: no `</script>` or `<!--`
    // can end or change the script element early.
    let data = serde_json::to_string(report).expect("plain data").replace('<', "\\u003c");
    let title = escape_html(&format!("pathc report: {}", report.model));
    let page = PAGE.replacen("{{title}}", &title, 1).replacen("{{style}}", STYLE, 1).replacen("{{script}}", SCRIPT, 1);
    let page = page.replacen("{{data}}", &data, 1);
    if page.len() > max_bytes {
        return Err(ReportError::TooLarge {
            bytes: page.len(),
            limit: max_bytes,
            paths: report.paths.shown.len(),
            cells: report.heads.iter().map(|h| h.cells.len()).sum(),
            terms: top_terms,
        });
    }
    Ok(page)
}

/// The page's fixed part: everything but the data.
pub fn fixed_size() -> usize {
    PAGE.len() + STYLE.len() + SCRIPT.len()
}

/// `s` with `&`, `<`, `>`, `"` and `'` escaped: text for HTML and its quoted attributes.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
