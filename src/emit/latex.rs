//! A standalone LaTeX document (amsmath): the expansion grouped by order, each template as a
//! symbolic sum followed by its concrete paths.

use std::io::{self, Write};

use super::notation::{Heads, Notation};
use super::{for_each_score_term, shape_summary};
use crate::paths::{self, Composition, IndexVar, Side};
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
    let mut order = usize::MAX;
    let mut open = false;
    for template in &exp.logits {
        if template.order() != order {
            if open {
                writeln!(out, "\\end{{align*}}")?;
            }
            order = template.order();
            writeln!(
                out,
                "\\subsection*{{Order {order} ({} paths)}}\n\\begin{{align*}}",
                exp.logit_counts.by_order[order]
            )?;
            open = true;
        }
        if !template.binders.is_empty() {
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
        paths::for_each_path(std::slice::from_ref(template), &heads, None, |p| {
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
