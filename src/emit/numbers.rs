//! The numeric reports (`pathc paths`, `scores`, `stats`): tables computed from an
//! [`Evaluation`] and written as text or JSON. The binary only parses arguments and renders
//! errors; everything a user sees of the numbers is made here, so the library gives the same.

use std::io::{self, Write};

use crate::eval::{EvalError, Evaluation, Matrix, PathEvaluator, Row, Target, TargetEvaluator, Targets};
use crate::linalg::{finite, finite_values, max_abs, NonFinite};
use crate::paths::{self, Path};
use crate::progress::{Cancelled, Progress};
use crate::text::Labels;

/// Token `id` as the reports show it: `373 " Mary"` with a tokenizer, `373` without.
fn token(labels: Option<Labels<'_>>, id: usize) -> String {
    labels.map_or_else(|| id.to_string(), |l| l.id(id))
}

/// The lines a text report has after its first when a tokenizer is known: the text and whether a
/// BOS was prepended to it (`text: "…", prepend_bos: true (TransformerLens's default)`), and every
/// position's token string (`tokens: 0:"<|endoftext|>" 1:"When" …`). Nothing without a tokenizer.
pub fn write_input_text(out: &mut dyn Write, labels: Option<Labels<'_>>) -> io::Result<()> {
    let Some(labels) = labels else { return Ok(()) };
    if let Some(text) = &labels.input.text {
        write!(out, "text: {}", crate::text::quote(text))?;
        if let Some(prepend) = &labels.input.prepend_bos {
            write!(out, ", prepend_bos: {prepend}")?;
        }
        writeln!(out)?;
    }
    writeln!(out, "tokens: {}", labels.positions())
}

/// The fields a JSON report has when a tokenizer is known: `str_tokens` (each token's string,
/// `null` for an id the tokenizer does not have) and, for a text, `text`, `prepend_bos` and
/// `prepend_bos_source` (why: `"TransformerLens's default"`, `"--prepend-bos"`, ...).
pub fn input_json(labels: Option<Labels<'_>>) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    let Some(labels) = labels else { return map };
    map.insert("str_tokens".to_string(), serde_json::json!(labels.input.str_tokens));
    if let Some(text) = &labels.input.text {
        map.insert("text".to_string(), serde_json::json!(text));
    }
    if let Some(prepend) = &labels.input.prepend_bos {
        map.insert("prepend_bos".to_string(), serde_json::json!(prepend.value));
        map.insert("prepend_bos_source".to_string(), serde_json::json!(prepend.why.to_string()));
    }
    map
}

/// `value` (an object) with `fields` added.
fn with_fields(mut value: serde_json::Value, fields: serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    if let serde_json::Value::Object(map) = &mut value {
        map.extend(fields);
    }
    value
}

/// A table cell of at most 11 characters: longer strings end in `…`.
fn cell(s: String) -> String {
    if s.chars().count() <= 11 {
        return s;
    }
    let mut cut: String = s.chars().take(10).collect();
    cut.push('…');
    cut
}

/// One row of `pathc paths`: a path (or a group of paths) and its logits (one row, or every
/// position).
pub struct PathRow {
    pub name: String,
    /// The path's order; `None` for a group.
    pub order: Option<usize>,
    /// How many paths the row sums (1 for a path).
    pub paths: usize,
    /// The path's logits (or, for a score term, its scores): one row, or every position.
    pub logits: crate::eval::Matrix,
    /// What the table is sorted by.
    pub size: f64,
}

/// Every logit path's contribution at `position` (every position when `None`), ranked by size
/// (the norm of its row, or `|logit[target]|`) when `rank`, else in path order; the `top` largest.
pub fn path_table(
    evaluation: &Evaluation,
    position: Option<usize>,
    target: Option<usize>,
    top: Option<usize>,
    rank: bool,
    progress: &dyn Progress,
) -> Result<Vec<PathRow>, NonFinite> {
    let mut rows = Vec::new();
    for_each_path_logits(
        evaluation,
        position,
        progress,
        |p| (p.name(), p.template.order()),
        |(name, order), logits| {
            let size = match target {
                Some(t) => logits.column(t).iter().fold(0.0f64, |m, x| m.max(x.abs())),
                None => logits.norm(),
            };
            rows.push(PathRow { name, order: Some(order), paths: 1, logits, size });
        },
    );
    finish_table(rows, position, rank, top)
}

/// How many paths share one unembedding product when the logits at a single position are asked.
const UNEMBED_BATCH: usize = 64;

/// Calls `visit(payload(path), logits)` for every logit path in path order, its logits at
/// `position` (`[1, d_vocab]`) or at every position (`[n, d_vocab]`). At one position the paths'
/// rows are unembedded in batches, `[64, d_model]·[d_model, d_vocab]`: a `[1, d_model]` product
/// per path reads (and packs) all of `W_U` for one row, which made GPT-2 width's 549 paths take
/// 78 s instead of about one second.
fn for_each_path_logits<T>(
    evaluation: &Evaluation,
    position: Option<usize>,
    progress: &dyn Progress,
    mut payload: impl FnMut(&Path<'_>) -> T,
    mut visit: impl FnMut(T, Matrix),
) {
    let n_paths = u64::try_from(&evaluation.expansion.logit_counts.total()).unwrap_or(u64::MAX);
    progress.start("paths", n_paths);
    let mut evaluator = PathEvaluator::new(&evaluation.params, &evaluation.forward);
    let heads = evaluation.expansion.heads_per_layer();
    let Some(position) = position else {
        paths::for_each_path(&evaluation.expansion.logits, &heads, None, |p| {
            visit(payload(&p), evaluator.logits(&p));
            progress.advance(1);
        });
        progress.finish();
        return;
    };
    // A batch of paths: each one's payload and its unembedding input row (`None` for `b_U`).
    let mut batch: Vec<(T, Option<Row>)> = Vec::with_capacity(UNEMBED_BATCH);
    let flush = |evaluator: &PathEvaluator<'_>, batch: &mut Vec<(T, Option<Row>)>, visit: &mut dyn FnMut(T, Matrix)| {
        let rows: Vec<Row> = batch.iter().filter_map(|(_, row)| row.clone()).collect();
        let logits = if rows.is_empty() { None } else { Some(evaluator.unembed(&Matrix::from_rows(&rows))) };
        let mut next = 0;
        for (payload, row) in batch.drain(..) {
            let row_logits = match (row, &logits) {
                (Some(_), Some(logits)) => {
                    next += 1;
                    logits.rows(next - 1, 1).into_owned()
                }
                _ => evaluator.constant_logits(1),
            };
            visit(payload, row_logits);
        }
    };
    paths::for_each_path(&evaluation.expansion.logits, &heads, None, |p| {
        progress.advance(1);
        batch.push((payload(&p), evaluator.unembedding_input(&p, position)));
        if batch.len() == UNEMBED_BATCH {
            flush(&evaluator, &mut batch, &mut visit);
        }
    });
    flush(&evaluator, &mut batch, &mut visit);
    progress.finish();
}

/// Checks every row is finite (before `top` drops any), then ranks and truncates.
fn finish_table(
    mut rows: Vec<PathRow>,
    position: Option<usize>,
    rank: bool,
    top: Option<usize>,
) -> Result<Vec<PathRow>, NonFinite> {
    for row in &rows {
        let at =
            |p: usize, t: usize| format!("the logits of {} at position {}, token {t}", row.name, position.unwrap_or(p));
        finite(&row.logits, at)?;
    }
    if rank {
        // Largest first; ties keep path order (stable sort), so output is deterministic.
        rows.sort_by(|a, b| b.size.total_cmp(&a.size));
    }
    if let Some(n) = top {
        rows.truncate(n);
    }
    Ok(rows)
}

pub use crate::paths::Grouping;

/// The paths' contributions summed by group (in group order, or ranked like [`path_table`]):
/// each group's logits at `position` (every position when `None`).
pub fn group_table(
    evaluation: &Evaluation,
    grouping: Grouping,
    position: Option<usize>,
    target: Option<usize>,
    top: Option<usize>,
    rank: bool,
    progress: &dyn Progress,
) -> Result<Vec<PathRow>, NonFinite> {
    // Insertion order for ties (a source's groups appear in path order, which is stream order).
    let mut groups: Vec<((usize, usize, usize), PathRow)> = Vec::new();
    for_each_path_logits(
        evaluation,
        position,
        progress,
        |p| grouping.of(p),
        |(name, key), logits| match groups.iter_mut().find(|(_, row)| row.name == name) {
            Some((_, row)) => {
                row.logits += logits;
                row.paths += 1;
            }
            None => groups.push((key, PathRow { name, order: None, paths: 1, logits, size: 0.0 })),
        },
    );
    groups.sort_by_key(|(key, _)| *key);
    let rows = groups
        .into_iter()
        .map(|(_, mut row)| {
            row.size = match target {
                Some(t) => row.logits.column(t).iter().fold(0.0f64, |m, x| m.max(x.abs())),
                None => row.logits.norm(),
            };
            row
        })
        .collect();
    finish_table(rows, position, rank, top)
}

/// One row of `pathc paths --target`: a path (or a group of paths) and its contributions to the
/// target logits, one per target (position, token).
pub struct TargetRow {
    pub name: String,
    /// The path's order; `None` for a group.
    pub order: Option<usize>,
    /// How many paths the row sums (1 for a path).
    pub paths: usize,
    /// The contributions, in the order of [`Targets::positions`].
    pub values: Vec<f64>,
    /// What the table is ranked by: the largest `|contribution|`.
    pub size: f64,
}

/// Every logit path's contribution to the target logits (direct logit attribution), summed by
/// `grouping` when given (in group order), ranked by the largest `|contribution|` when `rank`
/// (else in path order), the `top` largest. Computed by [`TargetEvaluator`] from the target
/// columns of the unembedding only: no `[n, d_vocab]` row is formed.
pub fn target_table(
    evaluation: &Evaluation,
    targets: &Targets,
    grouping: Option<Grouping>,
    top: Option<usize>,
    rank: bool,
    progress: &dyn Progress,
) -> Result<Vec<TargetRow>, EvalError> {
    let mut evaluator = TargetEvaluator::new(&evaluation.params, &evaluation.forward, targets);
    let heads = evaluation.expansion.heads_per_layer();
    let mut rows: Vec<((usize, usize, usize), TargetRow)> = Vec::new();
    let n_paths = u64::try_from(&evaluation.expansion.logit_counts.total()).unwrap_or(u64::MAX);
    progress.start("paths", n_paths);
    let mut cancelled = false;
    paths::for_each_path(&evaluation.expansion.logits, &heads, None, |p| {
        if cancelled {
            return;
        }
        progress.advance(1);
        cancelled = progress.cancelled();
        let values = evaluator.contributions(&p);
        match grouping {
            None => rows.push((
                (0, 0, 0),
                TargetRow { name: p.name(), order: Some(p.template.order()), paths: 1, values, size: 0.0 },
            )),
            Some(grouping) => {
                let (name, key) = grouping.of(&p);
                // Insertion order for ties (a source's groups appear in path order).
                match rows.iter_mut().find(|(_, row)| row.name == name) {
                    Some((_, row)) => {
                        row.values.iter_mut().zip(&values).for_each(|(sum, v)| *sum += v);
                        row.paths += 1;
                    }
                    None => rows.push((key, TargetRow { name, order: None, paths: 1, values, size: 0.0 })),
                }
            }
        }
    });
    progress.finish();
    if cancelled {
        return Err(Cancelled.into());
    }
    rows.sort_by_key(|(key, _)| *key);
    let mut rows: Vec<TargetRow> = rows
        .into_iter()
        .map(|(_, mut row)| {
            row.size = row.values.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            row
        })
        .collect();
    for row in &rows {
        finite_values(&row.values, |j| targets.describe(&row.name, j))?;
    }
    if rank {
        // Largest first; ties keep path (group) order (stable sort), so output is deterministic.
        rows.sort_by(|a, b| b.size.total_cmp(&a.size));
    }
    if let Some(n) = top {
        rows.truncate(n);
    }
    Ok(rows)
}

/// What the target logit of a table is, in words: `logit of token 42`, `logit of the next token`.
fn target_words(target: Target, labels: Option<Labels<'_>>) -> String {
    match target {
        Target::Token(t) => format!("logit of token {}", token(labels, t)),
        Target::Next => "logit of the next token".to_string(),
    }
}

/// The `pathc paths --target` table. At one position (`position` given): each path's
/// contribution to the target's logit there, `logit[t]`. Otherwise one column per target
/// position, under rows giving the position, its token, the target token and the forward pass's
/// logit of it (which the contributions of all paths sum to).
pub fn write_target_text(
    out: &mut dyn Write,
    evaluation: &Evaluation,
    target: Target,
    targets: &Targets,
    position: Option<usize>,
    rows: &[TargetRow],
    labels: Option<Labels<'_>>,
) -> io::Result<()> {
    let tokens = &evaluation.forward.tokens;
    let model = &evaluation.expansion.model.name;
    let forward = targets.forward_logits(&evaluation.forward);
    let grouped = rows.first().is_some_and(|r| r.order.is_none());
    let (what, column) = if grouped { ("groups", "paths") } else { ("paths", "order") };
    let head = if grouped { "group" } else { "path" };
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
    if let (Some(p), [t]) = (position, &targets.tokens[..]) {
        let next = if target == Target::Next { " (the next token)" } else { "" };
        writeln!(
            out,
            "model {model}, position {p} (token {}): {} {what}, ranked by |logit of token {}|{next}",
            token(labels, tokens[p]),
            rows.len(),
            token(labels, *t)
        )?;
        write_input_text(out, labels)?;
        writeln!(out, "forward pass: logit[{t}] = {:.6} (the sum of every path of every order)", forward[0])?;
        writeln!(out, "{head:<width$}  {column:>5}  {:>12}  {:>12}", "size", format!("logit[{t}]"))?;
        for row in rows {
            let order = row.order.unwrap_or(row.paths);
            writeln!(out, "{:<width$}  {:>5}  {:>12.6}  {:>12.6}", row.name, order, row.size, row.values[0])?;
        }
        return Ok(());
    }
    let n = tokens.len();
    let span = match (targets.positions.first(), targets.positions.last()) {
        (Some(first), Some(last)) => format!("positions {first}–{last}"),
        _ => "no position".to_string(),
    };
    let left_out = if target == Target::Next {
        format!(" (position {}, the last, has no next token)", n - 1)
    } else {
        String::new()
    };
    writeln!(
        out,
        "model {model}, {} at {span}{left_out}: {} {what}, ranked by the largest |contribution|",
        target_words(target, labels),
        rows.len()
    )?;
    write_input_text(out, labels)?;
    // The label column spans the name, order and size columns.
    let label = width + 2 + 5 + 2 + 12;
    let line = |out: &mut dyn Write, name: &str, cells: &mut dyn Iterator<Item = String>| -> io::Result<()> {
        write!(out, "{name:>label$}")?;
        for cell in cells {
            write!(out, "  {cell:>11}")?;
        }
        writeln!(out)
    };
    line(out, "position", &mut targets.positions.iter().map(|p| p.to_string()))?;
    line(out, "token", &mut targets.positions.iter().map(|&p| tokens[p].to_string()))?;
    if let Some(l) = labels {
        line(out, "token string", &mut targets.positions.iter().map(|&p| cell(l.string(tokens[p]))))?;
    }
    line(out, "target", &mut targets.tokens.iter().map(|t| t.to_string()))?;
    if let Some(l) = labels {
        line(out, "target string", &mut targets.tokens.iter().map(|&t| cell(l.string(t))))?;
    }
    line(out, "forward pass logit", &mut forward.iter().map(|v| format!("{v:.6}")))?;
    writeln!(out, "{head:<width$}  {column:>5}  {:>12}", "max |c|")?;
    for row in rows {
        let order = row.order.unwrap_or(row.paths);
        write!(out, "{:<width$}  {:>5}  {:>12.6}", row.name, order, row.size)?;
        for v in &row.values {
            write!(out, "  {v:>11.6}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// `{"model", "tokens", "position", "max_order", "target", "positions", "target_tokens",
/// "forward_target_logits", "paths": [{"name", "order", "target_logits"}]}`: `target` is the
/// token or `"next"`, `positions` the positions reported (with `"next"`, every requested one but
/// the last), `target_tokens` the target at each, `forward_target_logits` the forward pass's
/// logit of it, and each path's `target_logits` its contribution at each; grouped, entries are
/// `{"name", "paths", "target_logits"}`. With a tokenizer, also [`input_json`]'s fields and
/// `target_str_tokens`, the string of each target token.
pub fn write_target_json(
    out: &mut dyn Write,
    evaluation: &Evaluation,
    target: Target,
    targets: &Targets,
    position: Option<usize>,
    rows: &[TargetRow],
    labels: Option<Labels<'_>>,
) -> io::Result<()> {
    let paths: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| match r.order {
            Some(order) => serde_json::json!({ "name": r.name, "order": order, "target_logits": r.values }),
            None => serde_json::json!({ "name": r.name, "paths": r.paths, "target_logits": r.values }),
        })
        .collect();
    let value = serde_json::json!({
        "model": evaluation.expansion.model.name,
        "tokens": evaluation.forward.tokens,
        "position": position.map_or(serde_json::json!("all"), |p| serde_json::json!(p)),
        "max_order": evaluation.expansion.max_order,
        "target": match target {
            Target::Token(t) => serde_json::json!(t),
            Target::Next => serde_json::json!("next"),
        },
        "positions": targets.positions,
        "target_tokens": targets.tokens,
        "forward_target_logits": targets.forward_logits(&evaluation.forward),
        "paths": paths,
    });
    let mut fields = input_json(labels);
    if let Some(l) = labels {
        let strings: Vec<Option<String>> = targets.tokens.iter().map(|&t| l.tokenizer.str_token(t)).collect();
        fields.insert("target_str_tokens".to_string(), serde_json::json!(strings));
    }
    let value = with_fields(value, fields);
    serde_json::to_writer(&mut *out, &value)?;
    writeln!(out)
}

/// The `pathc paths` table.
pub fn write_paths_text(
    out: &mut dyn Write,
    evaluation: &Evaluation,
    position: Option<usize>,
    target: Option<usize>,
    rows: &[PathRow],
    labels: Option<Labels<'_>>,
) -> io::Result<()> {
    let tokens = &evaluation.forward.tokens;
    let at = match position {
        Some(p) => format!("position {p} (token {})", token(labels, tokens[p])),
        None => "every position".to_string(),
    };
    let by = match target {
        Some(t) => format!("|logit of token {}|", token(labels, t)),
        None => "norm of the logit row".to_string(),
    };
    let grouped = rows.first().is_some_and(|r| r.order.is_none());
    let (what, column) = if grouped { ("groups", "paths") } else { ("paths", "order") };
    let head = if grouped { "group" } else { "path" };
    writeln!(out, "model {}, {at}: {} {what}, ranked by {by}", evaluation.expansion.model.name, rows.len())?;
    write_input_text(out, labels)?;
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
    match target {
        Some(t) => writeln!(out, "{head:<width$}  {column:>5}  {:>12}  {:>12}", "size", format!("logit[{t}]"))?,
        None => writeln!(out, "{head:<width$}  {column:>5}  {:>12}  top token (logit)", "norm")?,
    }
    for row in rows {
        let order = row.order.unwrap_or(row.paths);
        match (target, position) {
            (Some(t), Some(_)) => {
                writeln!(out, "{:<width$}  {:>5}  {:>12.6}  {:>12.6}", row.name, order, row.size, row.logits[(0, t)])?
            }
            (Some(_), None) => writeln!(out, "{:<width$}  {:>5}  {:>12.6}  {:>12}", row.name, order, row.size, "-")?,
            (None, _) => {
                let (arg, value) = row
                    .logits
                    .row(row.logits.nrows() - 1)
                    .iter()
                    .enumerate()
                    .fold((0, f64::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best });
                let arg = token(labels, arg);
                writeln!(out, "{:<width$}  {:>5}  {:>12.6}  {arg} ({value:.4})", row.name, order, row.size)?
            }
        }
    }
    Ok(())
}

/// `{"model", "tokens", "position", "max_order", "paths": [{"name", "order", "logits"}]}`; grouped,
/// each entry is `{"name", "paths", "logits"}` (the group, how many paths it sums). With a
/// tokenizer, also [`input_json`]'s fields.
pub fn write_paths_json(
    out: &mut dyn Write,
    evaluation: &Evaluation,
    position: Option<usize>,
    rows: &[PathRow],
    labels: Option<Labels<'_>>,
) -> io::Result<()> {
    let paths: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let logits = match position {
                Some(_) => serde_json::json!(r.logits.row(0).iter().collect::<Vec<_>>()),
                None => serde_json::json!((0..r.logits.nrows())
                    .map(|i| r.logits.row(i).iter().copied().collect::<Vec<f64>>())
                    .collect::<Vec<_>>()),
            };
            match r.order {
                Some(order) => serde_json::json!({ "name": r.name, "order": order, "logits": logits }),
                None => serde_json::json!({ "name": r.name, "paths": r.paths, "logits": logits }),
            }
        })
        .collect();
    let value = serde_json::json!({
        "model": evaluation.expansion.model.name,
        "tokens": evaluation.forward.tokens,
        "position": position.map_or(serde_json::json!("all"), |p| serde_json::json!(p)),
        "max_order": evaluation.expansion.max_order,
        "paths": paths,
    });
    let value = with_fields(value, input_json(labels));
    serde_json::to_writer(&mut *out, &value)?;
    writeln!(out)
}

/// The score terms of one head (ranked by size), and how far their sum is from the scores.
pub struct ScoreReport {
    pub rows: Vec<PathRow>,
    pub terms: usize,
    pub max_abs_error: f64,
}

/// Every score term of head `(layer, head)` in path order, its `[n, n]` scores, and how far their
/// sum is from the head's scores (before the causal mask and the softmax).
pub struct ScoreTerms {
    pub names: Vec<String>,
    pub orders: Vec<usize>,
    pub scores: Vec<crate::eval::Matrix>,
    pub max_abs_error: f64,
}

/// [`ScoreTerms`] of head `(layer, head)`; the first non-finite score an error naming its term.
/// `progress` is asked after every term whether to stop ([`EvalError::Cancelled`]).
pub fn score_terms(
    evaluation: &Evaluation,
    layer: usize,
    head: usize,
    progress: &dyn Progress,
) -> Result<ScoreTerms, EvalError> {
    let expansion = &evaluation.expansion;
    let templates = &expansion.scores.as_ref().expect("expanded with qk")[layer];
    let target = crate::paths::HeadRef { layer, head };
    let fixed = (crate::paths::IndexVar { side: crate::paths::Side::Head, layer }, head);
    let mut evaluator = crate::eval::ScoreEvaluator::new(&evaluation.params, &evaluation.forward);
    let expected = &evaluation.forward.scores[layer][head];
    let mut total = crate::eval::Matrix::zeros(expected.nrows(), expected.ncols());
    let mut terms = ScoreTerms { names: Vec::new(), orders: Vec::new(), scores: Vec::new(), max_abs_error: 0.0 };
    let mut non_finite = None;
    let mut cancelled = false;
    crate::paths::for_each_path(templates, &expansion.heads_per_layer(), Some(fixed), |p| {
        if cancelled {
            return;
        }
        cancelled = progress.cancelled();
        let scores = evaluator.scores(&p, layer, head);
        if non_finite.is_none() {
            let at = |q: usize, k: usize| {
                format!("the score term {} at query position {q}, key position {k}", p.score_name(target))
            };
            non_finite = finite(&scores, at).err();
        }
        total += &scores;
        terms.names.push(p.score_name(target));
        terms.orders.push(p.template.order());
        terms.scores.push(scores);
    });
    if let Some(e) = non_finite {
        return Err(e.into());
    }
    if cancelled {
        return Err(Cancelled.into());
    }
    terms.max_abs_error = max_abs((&total - expected).iter());
    Ok(terms)
}

/// Every score term of head `(layer, head)`, ranked by size, with how far their sum is from the
/// head's scores (before the causal mask and the softmax).
pub fn score_table(
    evaluation: &Evaluation,
    layer: usize,
    head: usize,
    position: Option<usize>,
    top: Option<usize>,
    progress: &dyn Progress,
) -> Result<ScoreReport, EvalError> {
    let all = score_terms(evaluation, layer, head, progress)?;
    let mut rows: Vec<PathRow> = (all.names.into_iter().zip(all.orders).zip(all.scores))
        .map(|((name, order), scores)| {
            let shown = match position {
                Some(q) => scores.rows(q, 1).into_owned(),
                None => scores,
            };
            PathRow { name, order: Some(order), paths: 1, size: shown.norm(), logits: shown }
        })
        .collect();
    let terms = rows.len();
    rows.sort_by(|a, b| b.size.total_cmp(&a.size));
    if let Some(n) = top {
        rows.truncate(n);
    }
    Ok(ScoreReport { rows, terms, max_abs_error: all.max_abs_error })
}

/// The `pathc scores` table.
pub fn write_scores_text(
    out: &mut dyn Write,
    evaluation: &Evaluation,
    (layer, head): (usize, usize),
    position: Option<usize>,
    report: &ScoreReport,
    labels: Option<Labels<'_>>,
) -> io::Result<()> {
    let at = match position {
        Some(q) => format!("query position {q} (token {})", token(labels, evaluation.forward.tokens[q])),
        None => "every query position".to_string(),
    };
    writeln!(
        out,
        "model {}, head L{layer}H{head}, {at}: {} terms, largest first",
        evaluation.expansion.model.name, report.terms
    )?;
    write_input_text(out, labels)?;
    writeln!(out, "max |Σ terms − scores| = {:.3e} (scores before the causal mask and softmax)", report.max_abs_error)?;
    let width = report.rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    writeln!(out, "{:<width$}  order  {:>12}  top key (score)", "term", "norm")?;
    for row in &report.rows {
        let last = row.logits.nrows() - 1;
        // Keys a query may attend to: itself and earlier positions.
        let keys = position.map_or(row.logits.ncols(), |q| q + 1);
        let (key, value) = (0..keys).map(|k| (k, row.logits[(last, k)])).fold((0, f64::NEG_INFINITY), |best, kv| {
            if kv.1 > best.1 {
                kv
            } else {
                best
            }
        });
        let order = row.order.unwrap_or(row.paths);
        let key = match labels.and_then(|l| l.input.quoted(key)) {
            Some(s) => format!("{key} {s}"),
            None => key.to_string(),
        };
        writeln!(out, "{:<width$}  {:>5}  {:>12.6}  {key} ({value:.4})", row.name, order, row.size)?;
    }
    Ok(())
}

/// `{"model", "head", "tokens", "position", "max_order", "max_abs_error", "terms": [{"name",
/// "order", "scores"}]}`. With a tokenizer, also [`input_json`]'s fields.
pub fn write_scores_json(
    out: &mut dyn Write,
    evaluation: &Evaluation,
    (layer, head): (usize, usize),
    position: Option<usize>,
    report: &ScoreReport,
    labels: Option<Labels<'_>>,
) -> io::Result<()> {
    let terms: Vec<serde_json::Value> = report
        .rows
        .iter()
        .map(|r| {
            let rows: Vec<Vec<f64>> =
                (0..r.logits.nrows()).map(|i| r.logits.row(i).iter().copied().collect()).collect();
            let scores = if position.is_some() { serde_json::json!(rows[0]) } else { serde_json::json!(rows) };
            serde_json::json!({ "name": r.name, "order": r.order, "scores": scores })
        })
        .collect();
    let value = serde_json::json!({
        "model": evaluation.expansion.model.name,
        "head": [layer, head],
        "tokens": evaluation.forward.tokens,
        "position": position.map_or(serde_json::json!("all"), |p| serde_json::json!(p)),
        "max_order": evaluation.expansion.max_order,
        "max_abs_error": report.max_abs_error,
        "terms": terms,
    });
    let value = with_fields(value, input_json(labels));
    serde_json::to_writer(&mut *out, &value)?;
    writeln!(out)
}

/// The `pathc stats` tables (JSON is the [`Stats`](crate::stats::Stats) value itself). For a
/// rotary model a line after the first says at which offset the QK statistics are; a statistic
/// the model does not define is a line `name: not defined: why` in place of its column.
pub fn write_stats_text(out: &mut dyn Write, model: &str, stats: &crate::stats::Stats) -> io::Result<()> {
    writeln!(
        out,
        "model {model}: per-head statistics of the full circuits ({})",
        crate::stats::processing_description(stats.weight_processing)
    )?;
    if let Some(rotary) = stats.rotary_description() {
        writeln!(out, "{rotary}")?;
    }
    for (name, reason) in &stats.not_defined {
        writeln!(out, "{name}: not defined: {reason}")?;
    }
    let columns: Vec<(&str, &Vec<Vec<f64>>, usize)> = [
        ("ov_copying", &stats.ov_copying, 11),
        ("qk_copying", &stats.qk_copying, 11),
        ("ov_frobenius", &stats.ov_frobenius, 13),
        ("qk_frobenius", &stats.qk_frobenius, 13),
    ]
    .into_iter()
    .filter(|(name, _, _)| !stats.not_defined.contains_key(*name))
    .collect();
    write!(out, "{:<6}", "head")?;
    for (name, _, width) in &columns {
        write!(out, " {name:>width$}")?;
    }
    writeln!(out)?;
    for (l, layer) in stats.qk_frobenius.iter().enumerate() {
        for h in 0..layer.len() {
            write!(out, "L{l}H{h:<3}")?;
            for (_, values, width) in &columns {
                write!(out, " {:>width$.6}", values[l][h])?;
            }
            writeln!(out)?;
        }
    }
    let b = &stats.comp_baseline;
    writeln!(
        out,
        "composition scores (TransformerLens's definition); random baseline q {:.4}, k {:.4}, v {:.4} ({} draws)",
        b.q, b.k, b.v, b.samples
    )?;
    writeln!(out, "{:<6} {:<6} {:>9} {:>9} {:>9}", "left", "right", "comp_q", "comp_k", "comp_v")?;
    for (l1, layer) in stats.comp_q.iter().enumerate() {
        for (h1, rights) in layer.iter().enumerate() {
            for (l2, right_layer) in rights.iter().enumerate().skip(l1 + 1) {
                for h2 in 0..right_layer.len() {
                    writeln!(
                        out,
                        "L{l1}H{h1:<3} L{l2}H{h2:<3} {:>9.5} {:>9.5} {:>9.5}",
                        stats.comp_q[l1][h1][l2][h2], stats.comp_k[l1][h1][l2][h2], stats.comp_v[l1][h1][l2][h2]
                    )?;
                }
            }
        }
    }
    Ok(())
}
