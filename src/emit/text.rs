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
    let heads = exp.heads_per_layer();
    let counts = &exp.logit_counts;
    let by_order: Vec<String> = counts.by_order.iter().enumerate().map(|(k, c)| format!("order {k}: {c}")).collect();
    writeln!(out, "T = sum of {} ({})", plural(&counts.total(), "path", "paths"), by_order.join(", "))?;
    // Names line up: as wide as the longest name any template can produce.
    let width = exp
        .logits
        .iter()
        .map(|t| 1 + t.layers(Side::Head).iter().map(|&l| format!("/L{l}H{}", heads[l] - 1).len()).sum::<usize>())
        .max()
        .unwrap_or(1);
    let mut order = usize::MAX;
    for template in &exp.logits {
        if template.order() != order {
            order = template.order();
            writeln!(out, "\norder {order}: {}", plural(&counts.by_order[order], "path", "paths"))?;
        }
        write_template(out, template, &heads, templates_only, width)?;
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
                    buf.push_str(&p.score_name(target));
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
