//! How factors and terms are written: Unicode text close to the paper, or LaTeX.
//!
//! Everything writes into a caller's `String`, so that emitting a million paths reuses one
//! buffer instead of allocating per factor.

use std::fmt::Write as _;

use crate::graph::push_usize;
use crate::paths::{Factor, FactorKind, IndexVar, Path};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notation {
    Text,
    Latex,
}

/// What an index stands for when a factor is written: a concrete head, or the symbolic index.
#[derive(Debug, Clone, Copy)]
pub enum Heads<'a> {
    Symbolic,
    Concrete(&'a Path<'a>),
}

impl Notation {
    fn write_index(self, out: &mut String, index: IndexVar, heads: Heads<'_>) {
        let _ = match heads {
            Heads::Concrete(path) => {
                push_usize(out, index.layer);
                out.push('.');
                push_usize(out, path.head_of(index));
                Ok(())
            }
            Heads::Symbolic => {
                let name = index.to_string();
                match self {
                    Notation::Text => write!(out, "{name}"),
                    Notation::Latex => write!(out, "{}_{{{}}}", &name[..1], &name[1..]),
                }
            }
        };
    }

    pub fn write_factor(self, out: &mut String, f: Factor, heads: Heads<'_>) {
        let latex = self == Notation::Latex;
        let base = match f.kind {
            FactorKind::Pattern => "A",
            FactorKind::Scale(_) => "N",
            FactorKind::OV if latex => "W_{OV}",
            FactorKind::OV => "W_OV",
            FactorKind::QK if latex => "W_{QK}",
            FactorKind::QK => "W_QK",
            FactorKind::QKRot if latex => "W_{QK}",
            FactorKind::QKRot => "W_QK",
            FactorKind::Rot(_) => "R",
            FactorKind::O => "W_O",
            FactorKind::Q => "W_Q",
            FactorKind::K => "W_K",
            FactorKind::Embed => "W_E",
            FactorKind::PosEmbed => "W_P",
            FactorKind::Unembed => "W_U",
            FactorKind::In(_) if latex => "W_{in}",
            FactorKind::In(_) => "W_in",
            FactorKind::Gate(_) if latex => "W_{gate}",
            FactorKind::Gate(_) => "W_gate",
            FactorKind::BiasGate(_) if latex => "b_{gate}",
            FactorKind::BiasGate(_) => "b_gate",
            FactorKind::Mlp(_) => "M",
            FactorKind::BiasV => "b_V",
            FactorKind::BiasQ => "b_Q",
            FactorKind::BiasK => "b_K",
            FactorKind::BiasO(_) => "b_O",
            FactorKind::BiasIn(_) if latex => "b_{in}",
            FactorKind::BiasIn(_) => "b_in",
            FactorKind::BiasOut(_) if latex => "b_{out}",
            FactorKind::BiasOut(_) => "b_out",
            FactorKind::BiasU => "b_U",
        };
        let latex_transpose = f.transposed && latex;
        if latex_transpose {
            out.push('{');
        }
        out.push_str(base);
        match (f.index, f.kind) {
            (Some(index), _) => {
                out.push_str("^{");
                self.write_index(out, index, heads);
                out.push('}');
            }
            (None, FactorKind::In(l) | FactorKind::Mlp(l) | FactorKind::BiasO(l) | FactorKind::Rot(l))
            | (None, FactorKind::BiasIn(l) | FactorKind::BiasOut(l))
            | (None, FactorKind::Gate(l) | FactorKind::BiasGate(l)) => {
                out.push_str("^{");
                push_usize(out, l);
                out.push('}');
            }
            (None, FactorKind::Scale(site)) => {
                let _ = match self {
                    Notation::Text => write!(out, "^{{{site}}}"),
                    Notation::Latex => write!(out, "^{{\\mathrm{{{site}}}}}"),
                };
            }
            _ => {}
        }
        if matches!(f.kind, FactorKind::QKRot | FactorKind::Rot(_)) {
            out.push_str(if latex { "(\\Delta)" } else { "(Δ)" });
        }
        if f.transposed {
            match self {
                Notation::Text => out.push('ᵀ'),
                Notation::Latex => out.push_str("}^{\\top}"),
            }
        }
    }

    fn identity(self) -> &'static str {
        match self {
            Notation::Text => "Id",
            Notation::Latex => "\\mathrm{Id}",
        }
    }

    fn product_sep(self) -> &'static str {
        match self {
            Notation::Text => "·",
            Notation::Latex => "\\,",
        }
    }

    fn tensor_sep(self) -> &'static str {
        match self {
            Notation::Text => " ⊗ ",
            Notation::Latex => " \\otimes ",
        }
    }

    /// A chain of factors as a product (`Id` when empty).
    pub fn write_chain(self, out: &mut String, factors: &[Factor], heads: Heads<'_>) {
        if factors.is_empty() {
            out.push_str(self.identity());
        }
        for (i, f) in factors.iter().enumerate() {
            if i > 0 {
                out.push_str(self.product_sep());
            }
            self.write_factor(out, *f, heads);
        }
    }

    /// A whole term `position ⊗ weights`, parenthesised as the paper does once the position side
    /// is a product: `A^{0.3} ⊗ W_U·W_OV^{0.3}·W_E`, `(A^{1.2}·A^{0.0}) ⊗ (W_U·…·W_E)`.
    pub fn write_term(self, out: &mut String, position: &[Vec<Factor>], weights: &[Factor], heads: Heads<'_>) {
        let wrap = position.iter().any(|chain| chain.len() > 1);
        for (i, chain) in position.iter().map(Vec::as_slice).chain([weights]).enumerate() {
            if i > 0 {
                out.push_str(self.tensor_sep());
            }
            let parens = wrap && chain.len() > 1;
            if parens {
                out.push('(');
            }
            self.write_chain(out, chain, heads);
            if parens {
                out.push(')');
            }
        }
    }

    pub fn term(self, position: &[Vec<Factor>], weights: &[Factor], heads: Heads<'_>) -> String {
        let mut out = String::new();
        self.write_term(&mut out, position, weights, heads);
        out
    }

    /// `Σ_{h1∈H1} Σ_{h0∈H0} ` for the template's indices (all but `fixed`): side by side
    /// (logit, query, key), latest layer first within a side, as the paper writes them.
    pub fn sums(self, binders: &[IndexVar], fixed: Option<IndexVar>) -> String {
        let mut out = String::new();
        let mut order: Vec<IndexVar> = binders.iter().copied().filter(|b| Some(*b) != fixed).collect();
        order.sort_by_key(|b| (b.side, std::cmp::Reverse(b.layer)));
        for b in &order {
            match self {
                Notation::Text => out.push_str("Σ_{"),
                Notation::Latex => out.push_str("\\sum_{"),
            }
            self.write_index(&mut out, *b, Heads::Symbolic);
            let _ = match self {
                Notation::Text => write!(out, "∈H{}}} ", b.layer),
                Notation::Latex => write!(out, " \\in H_{{{}}}}} ", b.layer),
            };
        }
        out
    }
}
