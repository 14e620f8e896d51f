//! Source spans and diagnostics.
//!
//! Every error that points into a model file carries a byte [`Span`]. Rendering turns it into
//! `file:line:col`, the offending line and a caret under the text, the way rustc does. Rendering
//! is plain text with no colour so that snapshots of diagnostics are byte-stable.

use std::fmt::{self, Write};

/// A half-open byte range `start..end` into the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    pub(crate) fn of(pair_span: pest::Span<'_>) -> Span {
        Span::new(pair_span.start(), pair_span.end())
    }
}

/// One problem in a model file: what is wrong, where, and (optionally) what would fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub span: Span,
    pub message: String,
    /// Shown under the caret, e.g. "expected a number".
    pub label: String,
    /// An extra line of advice, e.g. "declare it with `dim d_mlp = 3072`".
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(span: Span, message: impl Into<String>, label: impl Into<String>) -> Diagnostic {
        Diagnostic { span, message: message.into(), label: label.into(), help: None }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(source, offset.min(source.len()));
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = source[line_start..offset].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Renders diagnostics for a terminal or a snapshot:
///
/// ```text
/// error: unknown dimension `d_mlpp`
///  --> model.tf:7:19
///   |
/// 7 |     mlp(d_mlp = d_mlpp)
///   |                 ^^^^^^ not declared with `dim`
///   = help: declared dimensions: d_model, d_vocab
/// ```
pub fn render(file_name: &str, source: &str, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, d) in diagnostics.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        render_one(&mut out, file_name, source, d).expect("writing to a String cannot fail");
    }
    out
}

fn render_one(out: &mut String, file_name: &str, source: &str, d: &Diagnostic) -> fmt::Result {
    let (line, col) = line_col(source, d.span.start);
    let line_start = floor_char_boundary(source, d.span.start.min(source.len()));
    let line_start = source[..line_start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[line_start..].find('\n').map_or(source.len(), |i| line_start + i);
    let text = source[line_start..line_end].trim_end_matches('\r');
    let end_on_line = floor_char_boundary(source, d.span.end.clamp(d.span.start, line_end));
    let start_on_line = floor_char_boundary(source, d.span.start.min(line_end));
    let carets = source[start_on_line..end_on_line].chars().count().max(1);
    let gutter = line.to_string().len();
    let pad = " ".repeat(gutter);
    writeln!(out, "error: {}", d.message)?;
    writeln!(out, "{pad}--> {file_name}:{line}:{col}")?;
    writeln!(out, "{pad} |")?;
    writeln!(out, "{line} | {}", text.replace('\t', " "))?;
    writeln!(out, "{pad} | {}{} {}", " ".repeat(col - 1), "^".repeat(carets), d.label)?;
    if let Some(help) = &d.help {
        writeln!(out, "{pad} = help: {help}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let src = "ab\ncdé f\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 3), (2, 1));
        assert_eq!(line_col(src, "ab\ncdé ".len()), (2, 5));
        assert_eq!(line_col(src, src.len()), (3, 1));
    }

    #[test]
    fn renders_caret_under_span() {
        let src = "model m\ndim x = y\n";
        let d = Diagnostic::new(Span::new(16, 17), "bad value", "expected a number");
        let text = render("m.tf", src, &[d]);
        assert_eq!(text, "error: bad value\n --> m.tf:2:9\n  |\n2 | dim x = y\n  |         ^ expected a number\n");
    }
}
