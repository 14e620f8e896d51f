//! `pathc count`: exact counts by order, never enumerating.

use serde_json::json;

use crate::paths::Counts;

pub fn text(what: &str, counts: &Counts) -> String {
    let by_order: Vec<String> = counts.by_order.iter().enumerate().map(|(k, c)| format!("  order {k}: {c}")).collect();
    format!("{} {what}\n{}", counts.total(), by_order.join("\n"))
}

pub fn json(model: &str, max_order: Option<u32>, logits: &Counts, scores: Option<&Counts>) -> String {
    let counts = |c: &Counts| {
        json!({
            "total": c.total().to_string(),
            "by_order": c.by_order.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    };
    let mut value = json!({ "model": model, "max_order": max_order, "paths": counts(logits) });
    if let Some(s) = scores {
        value["qk"] = counts(s);
    }
    serde_json::to_string_pretty(&value).expect("a JSON value always serialises")
}
