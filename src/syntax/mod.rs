//! Syntax: text → checked [`Model`].
//!
//! Invariant: this module knows nothing of graphs, e-graphs or weights. It turns a file into a
//! well-formed model or into a list of diagnostics (several at once where it can), and never
//! panics on any input. Its work and memory are linear in the text, which is at most
//! [`MAX_SOURCE_BYTES`] long.

pub mod ast;
mod parse;
mod sema;
mod source;

pub use sema::{MAX_HEADS, MAX_LAYERS};
pub use source::{decode_source, read_source, SourceError, MAX_SOURCE_BYTES};

use crate::diag::Diagnostic;
use crate::model::Model;

/// Parses and checks a model file. On failure returns every diagnostic found: all syntax errors
/// the parser could recover from, or (if the syntax is fine) all semantic errors. A text longer
/// than [`MAX_SOURCE_BYTES`] is refused before it is parsed.
pub fn parse_model(source: &str) -> Result<Model, Vec<Diagnostic>> {
    if source.len() > MAX_SOURCE_BYTES {
        let mut end = MAX_SOURCE_BYTES;
        while !source.is_char_boundary(end) {
            end -= 1;
        }
        return Err(vec![source::too_large(&source[..end])]);
    }
    let file = parse::parse(source)?;
    sema::check(&file, source)
}
