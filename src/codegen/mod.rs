//! Code generation: an expansion's path families as standalone analysis code.
//!
//! The generator knows nothing of egg or the term graph: it reads the sorted templates of an
//! [`Expansion`] (one generated function per template, i.e. per path family) and the model's
//! declarations. [`Options`] choose a subset — every path through given heads, or only low
//! orders — so a user generates just the analysis they need; [`selected_paths`] lists the names
//! of the paths a generated module computes, in the order it prints them.
//!
//! Invariant: generation is a pure function of the expansion and the options (ordered iteration
//! only), so the same input gives byte-identical code.

pub mod python;

use thiserror::Error;

use crate::paths::{for_each_path, HeadRef, IndexVar, Path, Side, Template};
use crate::Expansion;

/// Which paths to generate code for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Keep only paths through at most this many heads (on top of the expansion's own
    /// truncation).
    pub max_order: Option<u32>,
    /// Keep only paths through every one of these heads; empty keeps every path.
    pub through: Vec<HeadRef>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodegenError {
    #[error("{head} is not a head of this model ({layers})")]
    UnknownHead { head: HeadRef, layers: String },
    /// A template whose factors are not a path from a source through heads to the logits (a
    /// bug in the expansion, or a construct this generator does not know).
    #[error("cannot generate code for the term `{0}`")]
    Unsupported(String),
}

impl Options {
    /// Checks the selection against the model: every `through` head must exist.
    pub fn check(&self, expansion: &Expansion) -> Result<(), CodegenError> {
        let heads = expansion.heads_per_layer();
        for &head in &self.through {
            if head.layer >= heads.len() || head.head >= heads[head.layer] {
                let layers = match heads.len() {
                    0 => "it has no layers".to_string(),
                    n => format!(
                        "layers 0..{}, heads per layer {}",
                        n - 1,
                        heads.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
                    ),
                };
                return Err(CodegenError::UnknownHead { head, layers });
            }
        }
        Ok(())
    }

    /// The effective truncation: the smaller of the expansion's and the options'.
    pub fn max_order(&self, expansion: &Expansion) -> Option<u32> {
        match (expansion.max_order, self.max_order) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// One path family to generate: a logit template, with the heads the selection pins.
#[derive(Debug, Clone)]
pub struct Family<'e> {
    pub template: &'e Template,
    /// For each of `template.binders`, the one head it may take (`--through`), or `None` for
    /// every head of its layer.
    pub pinned: Vec<Option<usize>>,
}

impl Family<'_> {
    /// Whether a concrete path of this family is selected (its pinned heads are the given ones).
    pub fn admits(&self, path: &Path<'_>) -> bool {
        self.pinned.iter().zip(path.assignment).all(|(pin, &head)| pin.is_none_or(|p| p == head))
    }

    /// How many paths of the family are selected.
    pub fn count(&self, heads_per_layer: &[usize]) -> u128 {
        self.template
            .binders
            .iter()
            .zip(&self.pinned)
            .map(|(b, pin)| if pin.is_some() { 1 } else { heads_per_layer[b.layer] as u128 })
            .product()
    }
}

/// The selected families, in path order: a template is dropped when its order is above
/// `max_order` or when it cannot pass one of the `through` heads (no head index of that layer,
/// or two selected heads in one layer); inside a family, the index of a selected head's layer
/// is pinned to it.
pub fn select<'e>(expansion: &'e Expansion, options: &Options) -> Result<Vec<Family<'e>>, CodegenError> {
    options.check(expansion)?;
    let max_order = options.max_order(expansion);
    let mut families = Vec::new();
    'templates: for template in &expansion.logits {
        if max_order.is_some_and(|k| template.order() > k as usize) {
            continue;
        }
        let mut pinned: Vec<Option<usize>> = vec![None; template.binders.len()];
        for head in &options.through {
            let var = IndexVar { side: Side::Head, layer: head.layer };
            let Some(slot) = template.binders.iter().position(|b| *b == var) else { continue 'templates };
            match pinned[slot] {
                Some(other) if other != head.head => continue 'templates,
                _ => pinned[slot] = Some(head.head),
            }
        }
        families.push(Family { template, pinned });
    }
    Ok(families)
}

/// The names of every selected path, in the order a generated module yields them.
pub fn selected_paths(expansion: &Expansion, options: &Options) -> Result<Vec<String>, CodegenError> {
    let heads = expansion.heads_per_layer();
    let mut names = Vec::new();
    for family in select(expansion, options)? {
        for_each_path(std::slice::from_ref(family.template), &heads, None, |p| {
            if family.admits(&p) {
                names.push(p.name());
            }
        });
    }
    Ok(names)
}
