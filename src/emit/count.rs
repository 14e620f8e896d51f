//! `pathc count`: exact counts by order, never enumerating.

use serde_json::json;

use crate::paths::Counts;

pub fn text(what: &str, counts: &Counts) -> String {
    let by_order: Vec<String> = counts.by_order.iter().enumerate().map(|(k, c)| format!("  order {k}: {c}")).collect();
    format!("{} {what}\n{}", counts.total(), by_order.join("\n"))
}

/// Each MLP's input terms (and a gated MLP's gate-input terms), `MLP L input terms` blocks.
pub fn mlp_inputs_text(mlp_inputs: &[Option<Counts>], mlp_gates: &[Option<Counts>]) -> Vec<String> {
    let mut out = Vec::new();
    for (layer, (input, gate)) in mlp_inputs.iter().zip(mlp_gates).enumerate() {
        if let Some(c) = input {
            out.push(text(&format!("terms in MLP {layer}'s input"), c));
        }
        if let Some(c) = gate {
            out.push(text(&format!("terms in MLP {layer}'s gate input"), c));
        }
    }
    out
}

pub fn json(
    model: &str,
    max_order: Option<u32>,
    logits: &Counts,
    mlp_inputs: &[Option<Counts>],
    mlp_gates: &[Option<Counts>],
    scores: Option<&Counts>,
) -> String {
    let counts = |c: &Counts| {
        json!({
            "total": c.total().to_string(),
            "by_order": c.by_order.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    };
    let mut value = json!({ "model": model, "max_order": max_order, "paths": counts(logits) });
    if mlp_inputs.iter().any(Option::is_some) {
        let layers: Vec<_> = mlp_inputs
            .iter()
            .enumerate()
            .filter_map(|(layer, c)| c.as_ref().map(|c| json!({ "layer": layer, "counts": counts(c) })))
            .collect();
        value["mlp_inputs"] = json!(layers);
    }
    if mlp_gates.iter().any(Option::is_some) {
        let layers: Vec<_> = mlp_gates
            .iter()
            .enumerate()
            .filter_map(|(layer, c)| c.as_ref().map(|c| json!({ "layer": layer, "counts": counts(c) })))
            .collect();
        value["mlp_gates"] = json!(layers);
    }
    if let Some(s) = scores {
        value["qk"] = counts(s);
    }
    serde_json::to_string_pretty(&value).expect("a JSON value always serialises")
}
