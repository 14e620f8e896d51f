//! Unicode text in the paper's notation, grouped by order.

use std::fmt::Write as _;
use std::io::{self, Write};

use super::notation::{Heads, Notation};
use super::{for_each_score_term, plural, shape_summary, sources, Buffered};
use crate::paths::{self, Composition, IndexVar, Side, Template};
use crate::Expansion;

const N: Notation = Notation::Text;

pub fn write(exp: &Expansion, templates_only: bool, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "model {}: {}, sources {}", exp.model.name, shape_summary(exp), sources(exp).join(", "))?;
    if let Some(k) = exp.max_order {
        writeln!(out, "truncated to paths through at most {k} head{}", if k == 1 { "" } else { "s" })?;
    }
    for line in legend(exp) {
        writeln!(out, "{line}")?;
    }
    let heads = exp.heads_per_layer();
    write_sum(out, "T", &exp.logits, &exp.logit_counts, &heads, templates_only)?;
    for (layer, (templates, counts)) in exp.mlp_inputs.iter().zip(&exp.mlp_input_counts).enumerate() {
        if let (Some(templates), Some(counts)) = (templates, counts) {
            let gated = exp.mlp_gates[layer].is_some();
            let what =
                if gated { "linear input x·W_in" } else { "input (its pre-activation, before the nonlinearity)" };
            writeln!(out, "\nMLP {layer}'s {what}:")?;
            write_sum(out, &format!("x_in^{{{layer}}}"), templates, counts, &heads, templates_only)?;
        }
        if let (Some(templates), Some(counts)) = (&exp.mlp_gates[layer], &exp.mlp_gate_counts[layer]) {
            writeln!(out, "\nMLP {layer}'s gate input x·W_gate (before the activation):")?;
            write_sum(out, &format!("x_gate^{{{layer}}}"), templates, counts, &heads, templates_only)?;
        }
    }
    if let (Some(layers), Some(counts)) = (&exp.scores, &exp.score_counts) {
        let by_order: Vec<String> =
            counts.by_order.iter().enumerate().map(|(k, c)| format!("order {k}: {c}")).collect();
        writeln!(out, "\nattention scores: {} ({})", plural(&counts.total(), "term", "terms"), by_order.join(", "))?;
        writeln!(out, "each head's scores x_qᵀ·W_QK·x_k, expanded as (query position ⊗ key position ⊗ residual form)")?;
        for (layer, templates) in layers.iter().enumerate() {
            let fixed = IndexVar { side: Side::Head, layer };
            let per_head = paths::count_templates(templates, &heads, Some(fixed));
            writeln!(out, "\nlayer {layer}: {} per head, for h{layer} ∈ H{layer}", plural(&per_head, "term", "terms"))?;
            for template in templates {
                let label = Composition::of(template).describe();
                let sums = N.sums(&template.binders, Some(fixed));
                let count = paths::count_templates(std::slice::from_ref(template), &heads, Some(fixed));
                writeln!(
                    out,
                    "  {sums}{}    [{label}; {} per head]",
                    N.term(&template.position, &template.weights, Heads::Symbolic),
                    plural(&count, "term", "terms")
                )?;
            }
            if templates_only {
                continue;
            }
            let mut current = None;
            let mut lines = Buffered::new(out);
            for_each_score_term(exp, layer, templates, |target, p| {
                lines.push(|buf| {
                    if current != Some(target) {
                        current = Some(target);
                        let _ = writeln!(buf, "  {target}");
                    }
                    buf.push_str("    ");
                    p.write_score_name(target, buf);
                    buf.push_str("  ");
                    N.write_term(buf, &p.template.position, &p.template.weights, Heads::Concrete(&p));
                    let _ = writeln!(buf, "    [{}]", Composition::of(p.template).describe());
                })
            });
            lines.finish()?;
        }
    }
    Ok(())
}

/// Which symbols of a full model's terms need explaining.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Legend {
    pub norm: bool,
    pub mlp: bool,
    pub bias: bool,
    /// Some layer's attention is rotary.
    pub rotary: bool,
    pub shortformer: bool,
    /// Some layer has fewer key/value heads than query heads.
    pub grouped: bool,
    /// Some layer attends without a causal mask.
    pub bidirectional: bool,
    /// The unembedding's own output size, when it is not the vocabulary.
    pub outputs: bool,
    pub gated: bool,
    pub parallel: bool,
}

impl Legend {
    pub(crate) fn of(exp: &Expansion) -> Legend {
        let model = &exp.model;
        let norm = model.ln_final.is_some()
            || model.layers.iter().any(|l| l.attn.ln.is_some() || l.mlp.as_ref().is_some_and(|m| m.ln.is_some()));
        let bias =
            model.unembed.bias || model.layers.iter().any(|l| l.attn.bias || l.mlp.as_ref().is_some_and(|m| m.bias));
        let attn = || model.layers.iter().map(|l| &l.attn);
        Legend {
            norm,
            mlp: model.layers.iter().any(|l| l.mlp.is_some()),
            bias: bias || norm,
            rotary: attn().any(|a| a.rotary.is_some()),
            shortformer: model.shortformer(),
            grouped: attn().any(|a| a.kv_heads != a.n_heads),
            bidirectional: attn().any(|a| !a.causal),
            outputs: model.unembed.d_vocab_out.is_some(),
            gated: model.layers.iter().any(|l| l.mlp.as_ref().is_some_and(|m| m.gated)),
            parallel: model.layers.iter().any(|l| l.parallel),
        }
    }
}

/// What the symbols of a full model's terms stand for, one line each.
fn legend(exp: &Expansion) -> Vec<&'static str> {
    let legend = Legend::of(exp);
    let mut lines = Vec::new();
    if legend.norm {
        lines.push(
            "N^{s} = diag(1/σ_s): norm s's scale (ln1.L before attention, ln2.L before the MLP, final; σ of a LayerNorm, \
             the RMS of an RMSNorm), frozen per position from the forward pass; its centring (LayerNorm) and weight are \
             folded into the weights that read it (W_Q, W_K, W_V, W_in, W_gate, W_U) and its bias into their biases \
             (b_Q, b_K, b_V, b_in, b_gate, b_U), as TransformerLens's fold_ln does",
        );
    }
    if legend.mlp {
        lines.push("M^{L} = layer L's MLP output, without b_out: an opaque source (its input is expanded below)");
    }
    if legend.bias {
        lines.push("b_*: bias vectors, constant sources (Id ⊗ b acts on the constant input 1); b_V enters through its own head");
    }
    if legend.shortformer {
        lines.push(
            "W_P (shortformer): added to every layer's query and key inputs after its LayerNorm, never to the residual \
             stream; it is read through W_Q and W_K as stored (a LayerNorm's weight is not folded into what reads W_P)",
        );
    }
    if legend.rotary {
        lines.push(
            "W_QK^{l.h}(Δ) = W_Q^{l.h}ᵀ·R^{l}(Δ)·W_K^{l.h} (rotary): R^{l}(Δ) rotates by the offset Δ = query position − \
             key position, so a score term depends on its two positions only through Δ; R^{l}(Δ) is written out where a \
             bias stands between W_Q and W_K",
        );
    }
    if legend.grouped {
        lines.push(
            "grouped-query attention: query head l.h reads the keys and values of its group (W_K^{l.h}, W_V^{l.h}, \
             b_K^{l.h}, b_V^{l.h} are the group's, shared by the query heads of the group)",
        );
    }
    if legend.bidirectional {
        lines.push("bidirectional layers (causal = false): their patterns A may attend to later positions");
    }
    if legend.gated {
        lines.push(
            "gated MLPs: (act(x·W_gate) ⊙ x·W_in + b_in)·W_out + b_out; both inputs are expanded below (b_in, added after \
             the product, is part of the output M)",
        );
    }
    if legend.parallel {
        lines.push("parallel layers: the MLP reads the stream its layer's attention reads, so its input has no path through that layer's heads");
    }
    if legend.outputs {
        lines.push("W_U is [d_model, d_vocab_out]: the logits are the model's own outputs, not the vocabulary");
    }
    lines
}

/// `NAME = sum of N paths (order 0: …)`, then the templates and paths grouped by order.
fn write_sum(
    out: &mut dyn Write,
    name: &str,
    templates: &[Template],
    counts: &paths::Counts,
    heads: &[usize],
    templates_only: bool,
) -> io::Result<()> {
    let by_order: Vec<String> = counts.by_order.iter().enumerate().map(|(k, c)| format!("order {k}: {c}")).collect();
    writeln!(out, "{name} = sum of {} ({})", plural(&counts.total(), "path", "paths"), by_order.join(", "))?;
    // Names line up: as wide as the longest name any template can produce.
    let width = templates
        .iter()
        .map(|t| {
            let source = t.source().map_or(1, |s| s.name().len());
            source + t.layers(Side::Head).iter().map(|&l| format!("/L{l}H{}", heads[l] - 1).len()).sum::<usize>()
        })
        .max()
        .unwrap_or(1);
    let mut order = usize::MAX;
    for template in templates {
        if template.order() != order {
            order = template.order();
            writeln!(out, "\norder {order}: {}", plural(&counts.by_order[order], "path", "paths"))?;
        }
        write_template(out, template, heads, templates_only, width)?;
    }
    Ok(())
}

fn write_template(
    out: &mut dyn Write,
    template: &Template,
    heads: &[usize],
    templates_only: bool,
    width: usize,
) -> io::Result<()> {
    if !template.binders.is_empty() || templates_only {
        let count = paths::count_templates(std::slice::from_ref(template), heads, None);
        let sums = N.sums(&template.binders, None);
        let term = N.term(&template.position, &template.weights, Heads::Symbolic);
        writeln!(out, "  {sums}{term}    [{}]", plural(&count, "path", "paths"))?;
        if templates_only {
            return Ok(());
        }
    }
    let indent = if template.binders.is_empty() { "  " } else { "    " };
    let mut lines = Buffered::new(out);
    paths::for_each_path(std::slice::from_ref(template), heads, None, |p| {
        lines.push(|buf| {
            buf.push_str(indent);
            let start = buf.len();
            p.write_name(buf);
            let padding = (width + 2).saturating_sub(buf.len() - start).max(2);
            buf.extend(std::iter::repeat_n(' ', padding));
            N.write_term(buf, &p.template.position, &p.template.weights, Heads::Concrete(&p));
            buf.push('\n');
        })
    });
    lines.finish()
}
