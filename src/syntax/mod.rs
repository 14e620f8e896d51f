//! Syntax: text → checked [`Model`].
//!
//! Invariant: this module knows nothing of graphs, e-graphs or weights. It turns a file into a
//! well-formed model or into a list of diagnostics (several at once where it can), and never
//! panics on any input.

pub mod ast;
mod parse;
mod sema;

pub use sema::{MAX_HEADS, MAX_LAYERS};

use crate::diag::Diagnostic;
use crate::model::Model;

/// Parses and checks a model file. On failure returns every diagnostic found: all syntax errors
/// the parser could recover from, or (if the syntax is fine) all semantic errors.
pub fn parse_model(source: &str) -> Result<Model, Vec<Diagnostic>> {
    let file = parse::parse(source)?;
    sema::check(&file, source)
}
