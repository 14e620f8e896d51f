//! The reports of `paths`, `scores` and `check` over a dataset (`--dataset`): the aggregates as
//! text, JSON or CSV, and each prompt's numbers as JSON Lines or CSV rows (`--per-prompt`),
//! written as they are computed.

use std::io::{self, Write};
use std::path::Path;

use serde_json::json;

use crate::aggregate::{
    DatasetCheck, DatasetPaths, DatasetScores, LogitQuestion, PathSummary, Position, PromptPaths, PromptScores,
    ScoreQuestion, Summary, TermSummary,
};
use crate::eval::Target;

/// What a dataset table is ranked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rank {
    /// `|mean|`: what a path adds to the metric on average.
    Mean,
    /// The mean of `|contribution|`: how much it moves the metric, whichever way.
    Abs,
    /// The standard deviation over the prompts.
    Std,
}

impl Rank {
    fn key(self, s: &Summary) -> f64 {
        match self {
            Rank::Mean => s.mean.abs(),
            Rank::Abs => s.mean_abs,
            Rank::Std => s.std,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Rank::Mean => "|mean|",
            Rank::Abs => "mean |contribution|",
            Rank::Std => "std",
        }
    }
}

/// `rows` ranked by `rank` (largest first; ties keep their order), the `top` first.
pub fn ranked_paths(rows: &[PathSummary], rank: Option<Rank>, top: Option<usize>) -> Vec<&PathSummary> {
    let mut rows: Vec<&PathSummary> = rows.iter().collect();
    if let Some(rank) = rank {
        rows.sort_by(|a, b| rank.key(&b.contribution).total_cmp(&rank.key(&a.contribution)));
    }
    rows.truncate(top.unwrap_or(usize::MAX));
    rows
}

/// `terms` ranked by `rank` of their score-difference contribution, the `top` first.
pub fn ranked_terms(terms: &[TermSummary], rank: Option<Rank>, top: Option<usize>) -> Vec<&TermSummary> {
    let mut terms: Vec<&TermSummary> = terms.iter().collect();
    if let Some(rank) = rank {
        terms.sort_by(|a, b| rank.key(&b.difference).total_cmp(&rank.key(&a.difference)));
    }
    terms.truncate(top.unwrap_or(usize::MAX));
    terms
}

fn target_words(target: Option<Target>) -> String {
    match target {
        Some(Target::Token(t)) => format!("token {t}"),
        Some(Target::Next) => "the next token".to_string(),
        None => "each prompt's \"target\"".to_string(),
    }
}

/// The metric a logit question asks, in words.
pub fn describe_logit_question(q: &LogitQuestion) -> String {
    let mut text = format!("logit of {}", target_words(q.target));
    match q.against {
        Some(against) => text += &format!(" − logit of {}", target_words(Some(against))),
        None => text += " (− the logit of a prompt's \"against\" where it has one)",
    }
    let at = match q.position {
        Some(Position::At(p)) => format!("position {p}"),
        Some(Position::All) => "every position (mean)".to_string(),
        Some(Position::Last) => "the last position".to_string(),
        None if q.target == Some(Target::Next) => "every position but the last (mean)".to_string(),
        None => "the last position".to_string(),
    };
    text + &format!(" at {at}; a prompt's own \"target\", \"against\" and \"position\" where it has them")
}

fn json_summary(s: &Summary) -> serde_json::Value {
    json!({"mean": s.mean, "std": s.std, "mean_abs": s.mean_abs})
}

/// The text table: the metric's summary, then one line per row (mean, std, mean |·|).
pub fn write_paths_text(
    out: &mut dyn Write,
    model: &str,
    dataset: &Path,
    question: &LogitQuestion,
    result: &DatasetPaths,
    rows: &[&PathSummary],
    rank: Option<Rank>,
) -> io::Result<()> {
    let grouped = rows.first().is_some_and(|r| r.order.is_none());
    let (what, column, head) = if grouped { ("groups", "paths", "group") } else { ("paths", "order", "path") };
    writeln!(out, "model {model}, dataset {} ({} prompts)", dataset.display(), result.prompts)?;
    writeln!(out, "metric: {}", describe_logit_question(question))?;
    let m = &result.metric;
    writeln!(out, "metric over the prompts: mean {:.6}, std {:.6}", m.mean, m.std)?;
    if result.complete {
        writeln!(
            out,
            "Σ paths = metric on every prompt within {:.3e} (max |Σ paths − metric|, line {})",
            result.max_abs_rest, result.worst_line
        )?;
    } else {
        writeln!(
            out,
            "the omitted orders (metric − Σ paths kept) add mean {:.6}, std {:.6} (largest |·| {:.6}, line {})",
            result.rest.mean, result.rest.std, result.max_abs_rest, result.worst_line
        )?;
    }
    let ranked = rank.map_or(String::new(), |r| format!(", ranked by {}", r.describe()));
    writeln!(out, "{} {what}{ranked}", rows.len())?;
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
    writeln!(out, "{head:<width$}  {column:>5}  {:>12}  {:>12}  {:>12}", "mean", "std", "mean |·|")?;
    for row in rows {
        let c = &row.contribution;
        let order = row.order.unwrap_or(row.paths);
        writeln!(out, "{:<width$}  {order:>5}  {:>12.6}  {:>12.6}  {:>12.6}", row.name, c.mean, c.std, c.mean_abs)?;
    }
    Ok(())
}

/// `{"schema": "pathc.dataset_paths/1", "model", "dataset", "prompts", "metric": {...}, "complete",
/// "rest", "max_abs_rest", "worst_line", "rows": [{"name", "order" | "paths", "mean", "std",
/// "mean_abs"}]}`.
pub fn write_paths_json(
    out: &mut dyn Write,
    model: &str,
    dataset: &Path,
    question: &LogitQuestion,
    result: &DatasetPaths,
    rows: &[&PathSummary],
) -> io::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(&paths_json(model, dataset, question, result, rows))?)
}

fn paths_json(
    model: &str,
    dataset: &Path,
    question: &LogitQuestion,
    result: &DatasetPaths,
    rows: &[&PathSummary],
) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let c = &r.contribution;
            match r.order {
                Some(order) => {
                    json!({"name": r.name, "order": order, "mean": c.mean, "std": c.std, "mean_abs": c.mean_abs})
                }
                None => json!({"name": r.name, "paths": r.paths, "mean": c.mean, "std": c.std, "mean_abs": c.mean_abs}),
            }
        })
        .collect();
    json!({
        "schema": "pathc.dataset_paths/1",
        "model": model,
        "dataset": dataset.display().to_string(),
        "prompts": result.prompts,
        "metric_description": describe_logit_question(question),
        "metric": json_summary(&result.metric),
        "complete": result.complete,
        "rest": json_summary(&result.rest),
        "max_abs_rest": result.max_abs_rest,
        "worst_line": result.worst_line,
        "rows": rows,
    })
}

/// CSV of the aggregates: `name,order,paths,mean,std,mean_abs` (`order` empty for a group).
pub fn write_paths_csv(out: &mut dyn Write, rows: &[&PathSummary]) -> io::Result<()> {
    writeln!(out, "name,order,paths,mean,std,mean_abs")?;
    for r in rows {
        let c = &r.contribution;
        let order = r.order.map_or(String::new(), |o| o.to_string());
        writeln!(out, "{},{order},{},{:e},{:e},{:e}", csv_field(&r.name), r.paths, c.mean, c.std, c.mean_abs)?;
    }
    Ok(())
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The header of the per-prompt CSV: one row per (prompt, path or group).
pub fn write_prompt_paths_csv_header(out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "prompt,line,path,order,contribution,metric")
}

/// One prompt's rows of the per-prompt CSV (`names` and `orders` in the table's row order).
pub fn write_prompt_paths_csv(
    out: &mut dyn Write,
    names: &[String],
    orders: &[Option<usize>],
    prompt: &PromptPaths<'_>,
) -> io::Result<()> {
    let mut buffer = super::Buffered::new(out);
    for ((name, order), value) in names.iter().zip(orders).zip(prompt.values) {
        buffer.push(|b| {
            use std::fmt::Write as _;
            let order = order.map_or(String::new(), |o| o.to_string());
            let _ = writeln!(
                b,
                "{},{},{},{order},{value:e},{:e}",
                prompt.index,
                prompt.line,
                csv_field(name),
                prompt.metric
            );
        });
    }
    buffer.finish()
}

/// The first line of the per-prompt JSON Lines: `{"kind": "header", "rows": [{"name", "order"}]}`.
pub fn write_prompt_paths_jsonl_header(
    out: &mut dyn Write,
    names: &[String],
    orders: &[Option<usize>],
) -> io::Result<()> {
    let rows: Vec<serde_json::Value> = names.iter().zip(orders).map(|(n, o)| json!({"name": n, "order": o})).collect();
    writeln!(out, "{}", json!({"kind": "header", "schema": "pathc.dataset_paths.per_prompt/1", "rows": rows}))
}

/// One prompt's line: `{"kind": "prompt", "prompt", "line", "tokens", "metric", "contributions"}`,
/// the contributions in the header's row order.
pub fn write_prompt_paths_jsonl(out: &mut dyn Write, prompt: &PromptPaths<'_>) -> io::Result<()> {
    let value = json!({
        "kind": "prompt",
        "prompt": prompt.index,
        "line": prompt.line,
        "tokens": prompt.tokens,
        "metric": prompt.metric,
        "contributions": prompt.values,
    });
    writeln!(out, "{value}")
}

/// The last line of the per-prompt JSON Lines: the aggregates, as [`write_paths_json`] writes them,
/// with `"kind": "summary"`.
pub fn write_paths_jsonl_summary(
    out: &mut dyn Write,
    model: &str,
    dataset: &Path,
    question: &LogitQuestion,
    result: &DatasetPaths,
    rows: &[&PathSummary],
) -> io::Result<()> {
    let mut value = paths_json(model, dataset, question, result, rows);
    value["kind"] = json!("summary");
    writeln!(out, "{value}")
}

/// A score question in words.
pub fn describe_score_question(q: &ScoreQuestion) -> String {
    let query = q.query.map_or("the last query position".to_string(), |p| format!("query position {p}"));
    let key = q.key.map_or("each prompt's \"key\"".to_string(), |k| format!("key {k}"));
    let against = q.against_key.map_or("each prompt's \"against_key\"".to_string(), |k| format!("key {k}"));
    format!(
        "score of {} at {query}: {key} − {against}; a prompt's own \"position\", \"key\" and \"against_key\" where it has them",
        q.head
    )
}

/// The text report of a score attribution over a dataset.
pub fn write_scores_text(
    out: &mut dyn Write,
    model: &str,
    dataset: &Path,
    question: &ScoreQuestion,
    result: &DatasetScores,
    terms: &[&TermSummary],
    rank: Option<Rank>,
) -> io::Result<()> {
    writeln!(out, "model {model}, dataset {} ({} prompts)", dataset.display(), result.prompts)?;
    writeln!(out, "difference: {}", describe_score_question(question))?;
    let (d, pk, pa) = (&result.difference, &result.prob_key, &result.prob_against_key);
    writeln!(out, "score difference over the prompts: mean {:.6}, std {:.6}", d.mean, d.std)?;
    writeln!(out, "attention to the key: mean {:.6}; to the key against: mean {:.6}", pk.mean, pa.mean)?;
    writeln!(out, "Σ terms = score difference on every prompt within {:.3e}", result.max_sum_error)?;
    writeln!(
        out,
        "Δp (first order) is the softmax's linearisation at the recorded scores; Δp (removed) is p[key] minus p[key] recomputed without the term: they differ by up to {:.3e} (largest |Δp removed| {:.3e}; term {}, line {})",
        result.max_linear_error,
        result.max_prob_removed,
        result.terms.get(result.worst_term).map_or("-", |t| t.name.as_str()),
        result.worst_line
    )?;
    let ranked = rank.map_or(String::new(), |r| format!(", ranked by {} of the score difference", r.describe()));
    writeln!(out, "{} terms{ranked}", terms.len())?;
    let width = terms.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
    writeln!(
        out,
        "{:<width$}  {:>5}  {:>11}  {:>11}  {:>11}  {:>16}  {:>14}",
        "term", "order", "mean", "std", "mean |·|", "Δp (first order)", "Δp (removed)"
    )?;
    for t in terms {
        let d = &t.difference;
        writeln!(
            out,
            "{:<width$}  {:>5}  {:>11.6}  {:>11.6}  {:>11.6}  {:>16.6}  {:>14.6}",
            t.name, t.order, d.mean, d.std, d.mean_abs, t.prob_linear.mean, t.prob_removed.mean
        )?;
    }
    Ok(())
}

fn scores_json(
    model: &str,
    dataset: &Path,
    question: &ScoreQuestion,
    result: &DatasetScores,
    terms: &[&TermSummary],
) -> serde_json::Value {
    let terms: Vec<serde_json::Value> = terms
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "order": t.order,
                "difference": json_summary(&t.difference),
                "prob_linear": json_summary(&t.prob_linear),
                "prob_removed": json_summary(&t.prob_removed),
            })
        })
        .collect();
    json!({
        "schema": "pathc.dataset_scores/1",
        "model": model,
        "dataset": dataset.display().to_string(),
        "prompts": result.prompts,
        "head": result.head.to_string(),
        "difference_description": describe_score_question(question),
        "difference": json_summary(&result.difference),
        "prob_key": json_summary(&result.prob_key),
        "prob_against_key": json_summary(&result.prob_against_key),
        "max_sum_error": result.max_sum_error,
        "prob_linear_note": "first-order (linearised) change of p[key]; prob_removed is the real change when the term is removed",
        "max_linear_error": result.max_linear_error,
        "max_prob_removed": result.max_prob_removed,
        "worst_line": result.worst_line,
        "terms": terms,
    })
}

/// `{"schema": "pathc.dataset_scores/1", ..., "terms": [{"name", "order", "difference":
/// {"mean", "std", "mean_abs"}, "prob_linear": {...}, "prob_removed": {...}}]}`.
pub fn write_scores_json(
    out: &mut dyn Write,
    model: &str,
    dataset: &Path,
    question: &ScoreQuestion,
    result: &DatasetScores,
    terms: &[&TermSummary],
) -> io::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(&scores_json(model, dataset, question, result, terms))?)
}

/// The last line of the per-prompt JSON Lines of scores: the aggregates with `"kind": "summary"`.
pub fn write_scores_jsonl_summary(
    out: &mut dyn Write,
    model: &str,
    dataset: &Path,
    question: &ScoreQuestion,
    result: &DatasetScores,
    terms: &[&TermSummary],
) -> io::Result<()> {
    let mut value = scores_json(model, dataset, question, result, terms);
    value["kind"] = json!("summary");
    writeln!(out, "{value}")
}

/// CSV of the score aggregates: `term,order,mean,std,mean_abs,prob_linear_mean,prob_removed_mean`.
pub fn write_scores_csv(out: &mut dyn Write, terms: &[&TermSummary]) -> io::Result<()> {
    writeln!(out, "term,order,mean,std,mean_abs,prob_linear_mean,prob_removed_mean")?;
    for t in terms {
        let d = &t.difference;
        writeln!(
            out,
            "{},{},{:e},{:e},{:e},{:e},{:e}",
            csv_field(&t.name),
            t.order,
            d.mean,
            d.std,
            d.mean_abs,
            t.prob_linear.mean,
            t.prob_removed.mean
        )?;
    }
    Ok(())
}

/// The header of the per-prompt score CSV: one row per (prompt, term).
pub fn write_prompt_scores_csv_header(out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "prompt,line,query,key,against_key,term,order,difference,prob_linear,prob_removed,score_difference")
}

/// One prompt's rows of the per-prompt score CSV.
pub fn write_prompt_scores_csv(
    out: &mut dyn Write,
    names: &[String],
    orders: &[usize],
    prompt: &PromptScores<'_>,
) -> io::Result<()> {
    let mut buffer = super::Buffered::new(out);
    let p = prompt.positions;
    for ((name, order), t) in names.iter().zip(orders).zip(prompt.terms) {
        buffer.push(|b| {
            use std::fmt::Write as _;
            let _ = writeln!(
                b,
                "{},{},{},{},{},{},{order},{:e},{:e},{:e},{:e}",
                prompt.index,
                prompt.line,
                p.query,
                p.key,
                p.against_key,
                csv_field(name),
                t.difference,
                t.prob_linear,
                t.prob_removed,
                prompt.difference
            );
        });
    }
    buffer.finish()
}

/// The first line of the per-prompt score JSON Lines: the terms' names and orders.
pub fn write_prompt_scores_jsonl_header(out: &mut dyn Write, names: &[String], orders: &[usize]) -> io::Result<()> {
    let terms: Vec<serde_json::Value> = names.iter().zip(orders).map(|(n, o)| json!({"name": n, "order": o})).collect();
    writeln!(out, "{}", json!({"kind": "header", "schema": "pathc.dataset_scores.per_prompt/1", "terms": terms}))
}

/// One prompt's line of the per-prompt score JSON Lines.
pub fn write_prompt_scores_jsonl(out: &mut dyn Write, prompt: &PromptScores<'_>) -> io::Result<()> {
    let p = prompt.positions;
    let value = json!({
        "kind": "prompt",
        "prompt": prompt.index,
        "line": prompt.line,
        "tokens": prompt.tokens,
        "query": p.query,
        "key": p.key,
        "against_key": p.against_key,
        "difference": prompt.difference,
        "prob_key": prompt.prob_key,
        "prob_against_key": prompt.prob_against_key,
        "terms_difference": prompt.terms.iter().map(|t| t.difference).collect::<Vec<_>>(),
        "terms_prob_linear": prompt.terms.iter().map(|t| t.prob_linear).collect::<Vec<_>>(),
        "terms_prob_removed": prompt.terms.iter().map(|t| t.prob_removed).collect::<Vec<_>>(),
    });
    writeln!(out, "{value}")
}

/// The check over a dataset, in text.
pub fn write_check_text(out: &mut dyn Write, model: &str, dataset: &Path, result: &DatasetCheck) -> io::Result<()> {
    let scope = match result.max_order {
        Some(k) => format!("{} paths of order ≤ {k}", result.paths),
        None => format!("{} paths (every order)", result.paths),
    };
    writeln!(out, "model {model}, dataset {} ({} prompts), {scope}", dataset.display(), result.prompts)?;
    if result.max_order.is_some() {
        writeln!(
            out,
            "the omitted orders contribute up to {:.6} to a logit (computed by the graded recursion and added back)",
            result.omitted_max_abs
        )?;
    }
    writeln!(
        out,
        "max |Σ paths − logits| over the prompts = {:.3e} (line {}; largest relative error {:.3e})",
        result.max_abs_error, result.worst_line, result.max_rel_error
    )
}
