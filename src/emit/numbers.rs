//! The numeric reports (`pathc paths`, `scores`, `stats`): tables computed from an
//! [`Evaluation`] and written as text or JSON. The binary only parses arguments and renders
//! errors; everything a user sees of the numbers is made here, so the library gives the same.

use std::io::{self, Write};

use crate::eval::Evaluation;

/// One row of `pathc paths`: a path and its logits (one row, or every position).
pub struct PathRow {
    pub name: String,
    pub order: usize,
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
) -> Vec<PathRow> {
    let mut evaluator = crate::eval::PathEvaluator::new(&evaluation.params, &evaluation.forward);
    let mut rows = Vec::new();
    crate::paths::for_each_path(&evaluation.expansion.logits, &evaluation.expansion.heads_per_layer(), None, |p| {
        let logits = match position {
            Some(pos) => evaluator.logits_at(&p, pos),
            None => evaluator.logits(&p),
        };
        let size = match target {
            Some(t) => logits.column(t).iter().fold(0.0f64, |m, x| m.max(x.abs())),
            None => logits.norm(),
        };
        rows.push(PathRow { name: p.name(), order: p.template.order(), logits, size });
    });
    if rank {
        // Largest first; ties keep path order (stable sort), so output is deterministic.
        rows.sort_by(|a, b| b.size.total_cmp(&a.size));
    }
    if let Some(n) = top {
        rows.truncate(n);
    }
    rows
}

/// The `pathc paths` table.
pub fn write_paths_text(
    out: &mut dyn Write,
    evaluation: &Evaluation,
    position: Option<usize>,
    target: Option<usize>,
    rows: &[PathRow],
) -> io::Result<()> {
    let tokens = &evaluation.forward.tokens;
    let at = match position {
        Some(p) => format!("position {p} (token {})", tokens[p]),
        None => "every position".to_string(),
    };
    let by = match target {
        Some(t) => format!("|logit of token {t}|"),
        None => "norm of the logit row".to_string(),
    };
    writeln!(out, "model {}, {at}: {} paths, ranked by {by}", evaluation.expansion.model.name, rows.len())?;
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    match target {
        Some(t) => writeln!(out, "{:<width$}  order  {:>12}  {:>12}", "path", "size", format!("logit[{t}]"))?,
        None => writeln!(out, "{:<width$}  order  {:>12}  top token (logit)", "path", "norm")?,
    }
    for row in rows {
        match (target, position) {
            (Some(t), Some(_)) => writeln!(
                out,
                "{:<width$}  {:>5}  {:>12.6}  {:>12.6}",
                row.name,
                row.order,
                row.size,
                row.logits[(0, t)]
            )?,
            (Some(_), None) => {
                writeln!(out, "{:<width$}  {:>5}  {:>12.6}  {:>12}", row.name, row.order, row.size, "-")?
            }
            (None, _) => {
                let (arg, value) = row
                    .logits
                    .row(row.logits.nrows() - 1)
                    .iter()
                    .enumerate()
                    .fold((0, f64::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best });
                writeln!(out, "{:<width$}  {:>5}  {:>12.6}  {arg} ({value:.4})", row.name, row.order, row.size)?
            }
        }
    }
    Ok(())
}

/// `{"model", "tokens", "position", "max_order", "paths": [{"name", "order", "logits"}]}`.
pub fn write_paths_json(
    out: &mut dyn Write,
    evaluation: &Evaluation,
    position: Option<usize>,
    rows: &[PathRow],
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
            serde_json::json!({ "name": r.name, "order": r.order, "logits": logits })
        })
        .collect();
    let value = serde_json::json!({
        "model": evaluation.expansion.model.name,
        "tokens": evaluation.forward.tokens,
        "position": position.map_or(serde_json::json!("all"), |p| serde_json::json!(p)),
        "max_order": evaluation.expansion.max_order,
        "paths": paths,
    });
    serde_json::to_writer(&mut *out, &value)?;
    writeln!(out)
}

/// The score terms of one head (ranked by size), and how far their sum is from the scores.
pub struct ScoreReport {
    pub rows: Vec<PathRow>,
    pub terms: usize,
    pub max_abs_error: f64,
}

/// Every score term of head `(layer, head)`, ranked by size, with how far their sum is from the
/// head's scores (before the causal mask and the softmax).
pub fn score_table(
    evaluation: &Evaluation,
    layer: usize,
    head: usize,
    position: Option<usize>,
    top: Option<usize>,
) -> ScoreReport {
    let expansion = &evaluation.expansion;
    let templates = &expansion.scores.as_ref().expect("expanded with qk")[layer];
    let target = crate::paths::HeadRef { layer, head };
    let fixed = (crate::paths::IndexVar { side: crate::paths::Side::Head, layer }, head);
    let mut evaluator = crate::eval::ScoreEvaluator::new(&evaluation.params, &evaluation.forward);
    let expected = &evaluation.forward.scores[layer][head];
    let mut total = crate::eval::Matrix::zeros(expected.nrows(), expected.ncols());
    let mut rows = Vec::new();
    crate::paths::for_each_path(templates, &expansion.heads_per_layer(), Some(fixed), |p| {
        let scores = evaluator.scores(&p, layer, head);
        total += &scores;
        let shown = match position {
            Some(q) => scores.rows(q, 1).into_owned(),
            None => scores,
        };
        rows.push(PathRow { name: p.score_name(target), order: p.template.order(), size: shown.norm(), logits: shown });
    });
    let terms = rows.len();
    rows.sort_by(|a, b| b.size.total_cmp(&a.size));
    if let Some(n) = top {
        rows.truncate(n);
    }
    let max_abs_error = (&total - expected).iter().fold(0.0f64, |m, x| m.max(x.abs()));
    ScoreReport { rows, terms, max_abs_error }
}

/// The `pathc scores` table.
pub fn write_scores_text(
    out: &mut dyn Write,
    evaluation: &Evaluation,
    (layer, head): (usize, usize),
    position: Option<usize>,
    report: &ScoreReport,
) -> io::Result<()> {
    let at = match position {
        Some(q) => format!("query position {q} (token {})", evaluation.forward.tokens[q]),
        None => "every query position".to_string(),
    };
    writeln!(
        out,
        "model {}, head L{layer}H{head}, {at}: {} terms, largest first",
        evaluation.expansion.model.name, report.terms
    )?;
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
        writeln!(out, "{:<width$}  {:>5}  {:>12.6}  {key} ({value:.4})", row.name, row.order, row.size)?;
    }
    Ok(())
}

/// `{"model", "head", "tokens", "position", "max_order", "max_abs_error", "terms": [{"name",
/// "order", "scores"}]}`.
pub fn write_scores_json(
    out: &mut dyn Write,
    evaluation: &Evaluation,
    (layer, head): (usize, usize),
    position: Option<usize>,
    report: &ScoreReport,
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
    serde_json::to_writer(&mut *out, &value)?;
    writeln!(out)
}

/// The `pathc stats` tables (JSON is the [`Stats`](crate::stats::Stats) value itself).
pub fn write_stats_text(out: &mut dyn Write, model: &str, stats: &crate::stats::Stats) -> io::Result<()> {
    writeln!(out, "model {model}: per-head statistics of the full circuits ({})", stats.weight_processing.describe())?;
    writeln!(
        out,
        "{:<6} {:>11} {:>11} {:>13} {:>13}",
        "head", "ov_copying", "qk_copying", "ov_frobenius", "qk_frobenius"
    )?;
    for (l, layer) in stats.ov_copying.iter().enumerate() {
        for h in 0..layer.len() {
            writeln!(
                out,
                "L{l}H{h:<3} {:>11.6} {:>11.6} {:>13.6} {:>13.6}",
                stats.ov_copying[l][h], stats.qk_copying[l][h], stats.ov_frobenius[l][h], stats.qk_frobenius[l][h]
            )?;
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
