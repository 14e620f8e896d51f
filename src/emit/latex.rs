//! A standalone LaTeX document (amsmath): the expansion grouped by order, each template as a
//! symbolic sum followed by its concrete paths.

use std::io::{self, Write};

use super::notation::{Heads, Notation};
use super::{for_each_score_term, shape_summary};
use crate::paths::{self, Composition, Counts, IndexVar, Side, Template};
use crate::Expansion;

const N: Notation = Notation::Latex;

fn escape(text: &str) -> String {
    text.replace('\\', "\\textbackslash{}")
        .replace('_', "\\_")
        .replace('#', "\\#")
        .replace('%', "\\%")
        .replace('&', "\\&")
}

pub fn write(exp: &Expansion, templates_only: bool, out: &mut dyn Write) -> io::Result<()> {
    let heads = exp.heads_per_layer();
    writeln!(out, "\\documentclass{{article}}\n\\usepackage{{amsmath}}\n\\allowdisplaybreaks\n\\begin{{document}}")?;
    writeln!(out, "\\section*{{{}: sum of paths}}", escape(&exp.model.name))?;
    let shape = shape_summary(exp).replace('×', "$\\times$");
    writeln!(out, "{shape}; {} paths.", exp.logit_counts.total())?;
    let legend = super::text::Legend::of(exp);
    if legend.norm {
        writeln!(
            out,
            "\\par $N^{{s}} = \\mathrm{{diag}}(1/\\sigma_s)$: the scale of LayerNorm $s$ (ln1 before attention, ln2 \
             before the MLP, final), frozen per position from the forward pass; its centring and weight are folded into \
             the weights that read it ($W_Q, W_K, W_V, W_{{in}}, W_U$) and its bias into their biases ($b_Q, b_K, b_V, \
             b_{{in}}, b_U$), as TransformerLens's \\texttt{{fold\\_ln}} does."
        )?;
    }
    if legend.mlp {
        writeln!(out, "\\par $M^{{l}}$: the output of layer $l$'s MLP without $b_{{out}}$, an opaque source.")?;
    }
    if legend.bias {
        writeln!(
            out,
            "\\par $b_*$: bias vectors, constant sources ($\\mathrm{{Id}} \\otimes b$ acts on the constant input 1); \
             $b_V$ enters through its own head."
        )?;
    }
    if legend.shortformer {
        writeln!(
            out,
            "\\par $W_P$ (shortformer): added to every layer's query and key inputs after its LayerNorm, never to the \
             residual stream; read through $W_Q$ and $W_K$ as stored."
        )?;
    }
    if legend.rotary {
        writeln!(
            out,
            "\\par $W_{{QK}}^{{l.h}}(\\Delta) = {{W_Q^{{l.h}}}}^{{\\top}} R^{{l}}(\\Delta) W_K^{{l.h}}$ (rotary): $R^{{l}}(\\Delta)$ \
             rotates by the offset $\\Delta$ = query position $-$ key position."
        )?;
    }
    if legend.grouped {
        writeln!(
            out,
            "\\par Grouped-query attention: query head $l.h$ reads the keys and values of its group ($W_K^{{l.h}}$, \
             $W_V^{{l.h}}$ are the group's)."
        )?;
    }
    if legend.bidirectional {
        writeln!(out, "\\par Bidirectional layers: their patterns $A$ may attend to later positions.")?;
    }
    if legend.outputs {
        writeln!(
            out,
            "\\par $W_U$ is $d_{{model}} \\times d_{{vocab\\_out}}$: the logits are the model's own outputs."
        )?;
    }
    write_sum(out, &exp.logits, &exp.logit_counts, &heads, templates_only)?;
    for (layer, (templates, counts)) in exp.mlp_inputs.iter().zip(&exp.mlp_input_counts).enumerate() {
        if let (Some(templates), Some(counts)) = (templates, counts) {
            writeln!(out, "\\section*{{Input of MLP {layer}}}\n{} terms.", counts.total())?;
            write_sum(out, templates, counts, &heads, templates_only)?;
        }
    }
    if let Some(layers) = &exp.scores {
        writeln!(out, "\\section*{{Attention scores}}")?;
        for (layer, templates) in layers.iter().enumerate() {
            let fixed = IndexVar { side: Side::Head, layer };
            writeln!(out, "\\subsection*{{Layer {layer}}}\n\\begin{{align*}}")?;
            for t in templates {
                writeln!(
                    out,
                    "&{}{} && \\text{{{}}} \\\\",
                    N.sums(&t.binders, Some(fixed)),
                    N.term(&t.position, &t.weights, Heads::Symbolic),
                    Composition::of(t).describe()
                )?;
            }
            if !templates_only {
                let mut result = Ok(());
                for_each_score_term(exp, layer, templates, |target, p| {
                    if result.is_ok() {
                        result = writeln!(
                            out,
                            "\\text{{{}}}: &\\quad {} \\\\",
                            escape(&p.score_name(target)),
                            N.term(&p.template.position, &p.template.weights, Heads::Concrete(&p))
                        );
                    }
                });
                result?;
            }
            writeln!(out, "\\end{{align*}}")?;
        }
    }
    writeln!(out, "\\end{{document}}")
}

/// A sum of paths grouped by order: each template as a symbolic sum, then its concrete paths.
fn write_sum(
    out: &mut dyn Write,
    templates: &[Template],
    counts: &Counts,
    heads: &[usize],
    templates_only: bool,
) -> io::Result<()> {
    let mut order = usize::MAX;
    let mut open = false;
    for template in templates {
        if template.order() != order {
            if open {
                writeln!(out, "\\end{{align*}}")?;
            }
            order = template.order();
            writeln!(out, "\\subsection*{{Order {order} ({} paths)}}\n\\begin{{align*}}", counts.by_order[order])?;
            open = true;
        }
        if !template.binders.is_empty() || templates_only {
            writeln!(
                out,
                "&{}{} \\\\",
                N.sums(&template.binders, None),
                N.term(&template.position, &template.weights, Heads::Symbolic)
            )?;
        }
        if templates_only {
            continue;
        }
        let mut result = Ok(());
        paths::for_each_path(std::slice::from_ref(template), heads, None, |p| {
            if result.is_ok() {
                result = writeln!(
                    out,
                    "\\text{{{}}}: &\\quad {} \\\\",
                    escape(&p.name()),
                    N.term(&p.template.position, &p.template.weights, Heads::Concrete(&p))
                );
            }
        });
        result?;
    }
    if open {
        writeln!(out, "\\end{{align*}}")?;
    }
    Ok(())
}
