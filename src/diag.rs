//! Source spans and diagnostics.
//!
//! Every error that points into a model file carries a byte [`Span`]. Rendering turns it into
//! `file:line:col`, the offending line and a caret under the text, the way rustc does. Rendering
//! is plain text with no colour so that snapshots of diagnostics are byte-stable.
//!
//! Rendering is bounded whatever the input: at most [`MAX_RENDERED`] diagnostics are shown
//! (then "… and M more errors"), a line longer than [`LINE_WINDOW`] characters is shown as a
//! window around the caret with `…` where it was cut, messages are cut at [`MAX_MESSAGE`]
//! characters, and control characters are never printed raw. `\n`, `\r\n` and a lone `\r` all
//! end a line.

use std::borrow::Cow;
use std::fmt::{self, Write};

/// At most this many diagnostics are rendered; the rest are counted ("… and 9980 more errors").
pub const MAX_RENDERED: usize = 20;

/// A source line longer than this many characters is shown as a window of this many around the
/// caret.
pub const LINE_WINDOW: usize = 100;

/// Messages, labels and help texts are cut after this many characters.
pub const MAX_MESSAGE: usize = 200;

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

/// Where each line of a text starts, for line numbers in O(log n) per lookup. `\n`, `\r\n` and
/// a lone `\r` each end a line.
#[derive(Debug, Clone)]
pub struct LineIndex {
    /// Byte offset of the start of each line; `starts[0] == 0`.
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(source: &str) -> LineIndex {
        let bytes = source.as_bytes();
        let mut starts = vec![0];
        for (i, &b) in bytes.iter().enumerate() {
            let ends_line = b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n'));
            if ends_line {
                starts.push(i + 1);
            }
        }
        LineIndex { starts }
    }

    /// 1-based line of a byte offset (offsets past the end are on the last line).
    pub fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset)
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, source: &str, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(source, offset.min(source.len()));
        let line = self.line(offset);
        let col = source[self.starts[line - 1]..offset].chars().count() + 1;
        (line, col)
    }

    /// Byte range of a 1-based line's text, without its line break.
    fn line_range(&self, source: &str, line: usize) -> (usize, usize) {
        let start = self.starts[line - 1].min(source.len());
        let end = source.as_bytes()[start..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .map_or(source.len(), |i| start + i);
        (start, end)
    }
}

/// 1-based line and column (in characters) of a byte offset. Scans the text: for many lookups
/// build a [`LineIndex`] once.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    LineIndex::new(source).line_col(source, offset)
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
///
/// The first [`MAX_RENDERED`] diagnostics are rendered, then a line counts the others. Time and
/// output are linear in the text plus the number of diagnostics, whatever they are.
pub fn render(file_name: &str, source: &str, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    if diagnostics.is_empty() {
        return out;
    }
    let index = LineIndex::new(source);
    for (i, d) in diagnostics.iter().take(MAX_RENDERED).enumerate() {
        if i > 0 {
            out.push('\n');
        }
        render_one(&mut out, file_name, source, &index, d).expect("writing to a String cannot fail");
    }
    let more = diagnostics.len().saturating_sub(MAX_RENDERED);
    if more > 0 {
        let s = if more == 1 { "" } else { "s" };
        out.push_str(&format!("\n… and {more} more error{s} (only the first {MAX_RENDERED} are shown)\n"));
    }
    out
}

fn render_one(out: &mut String, file_name: &str, source: &str, index: &LineIndex, d: &Diagnostic) -> fmt::Result {
    let (line, col) = index.line_col(source, d.span.start);
    let (line_start, line_end) = index.line_range(source, line);
    let start = floor_char_boundary(source, d.span.start.clamp(line_start, line_end));
    let end = floor_char_boundary(source, d.span.end.clamp(start, line_end));
    let line_text = &source[line_start..line_end];
    let caret_col = col - 1;
    let caret_len = source[start..end].chars().count().max(1);
    let line_chars = caret_col + source[start..line_end].chars().count();
    // A long line is shown as a window of it, cut ends marked with `…`: from the line's start
    // while the caret is in the window's first two thirds, else with the caret a third in (and
    // no further than the line's end).
    let (win_start, win_end) = if line_chars <= LINE_WINDOW {
        (0, line_chars)
    } else {
        let start = if caret_col < LINE_WINDOW * 2 / 3 { 0 } else { caret_col - LINE_WINDOW / 3 };
        let end = (start + LINE_WINDOW).min(line_chars);
        (end - LINE_WINDOW, end)
    };
    let mut shown = String::new();
    if win_start > 0 {
        shown.push('…');
    }
    shown.extend(line_text.chars().skip(win_start).take(win_end - win_start).map(printable));
    if win_end < line_chars {
        shown.push('…');
    }
    let pad = caret_col - win_start + usize::from(win_start > 0);
    let carets = caret_len.min(win_end.saturating_sub(caret_col)).max(1);
    let gutter = " ".repeat(line.to_string().len());
    writeln!(out, "error: {}", clip(&d.message))?;
    writeln!(out, "{gutter}--> {file_name}:{line}:{col}")?;
    writeln!(out, "{gutter} |")?;
    writeln!(out, "{line} | {shown}")?;
    writeln!(out, "{gutter} | {}{} {}", " ".repeat(pad), "^".repeat(carets), clip(&d.label))?;
    if let Some(help) = &d.help {
        writeln!(out, "{gutter} = help: {}", clip(help))?;
    }
    Ok(())
}

/// A character of the source as shown: a tab is a space (the caret line pads with spaces), any
/// other control character (a raw CR, an escape) is `�`, one column like the character it replaces.
fn printable(c: char) -> char {
    match c {
        '\t' => ' ',
        c if c.is_control() => '\u{FFFD}',
        c => c,
    }
}

/// A message cut to [`MAX_MESSAGE`] characters, with control characters replaced.
fn clip(text: &str) -> Cow<'_, str> {
    let long = text.chars().nth(MAX_MESSAGE).is_some();
    if !long && !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out: String = text.chars().take(MAX_MESSAGE).map(printable).collect();
    if long {
        out.push('…');
    }
    Cow::Owned(out)
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
    fn crlf_and_lone_cr_end_lines() {
        let src = "a\r\nbc\rd\n\re";
        assert_eq!(line_col(src, 3), (2, 1));
        assert_eq!(line_col(src, 4), (2, 2));
        assert_eq!(line_col(src, 6), (3, 1));
        assert_eq!(line_col(src, 9), (5, 1));
        let d = Diagnostic::new(Span::new(6, 7), "bad", "here");
        let text = render("m.tf", src, &[d]);
        assert_eq!(text, "error: bad\n --> m.tf:3:1\n  |\n3 | d\n  | ^ here\n");
    }

    #[test]
    fn renders_caret_under_span() {
        let src = "model m\ndim x = y\n";
        let d = Diagnostic::new(Span::new(16, 17), "bad value", "expected a number");
        let text = render("m.tf", src, &[d]);
        assert_eq!(text, "error: bad value\n --> m.tf:2:9\n  |\n2 | dim x = y\n  |         ^ expected a number\n");
    }

    #[test]
    fn long_lines_are_windowed_around_the_caret() {
        let src = format!("{}target{}", "a ".repeat(500), " b".repeat(500));
        let at = 1000;
        let d = Diagnostic::new(Span::new(at, at + 6), "bad", "here");
        let text = render("m.tf", &src, &[d]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], " --> m.tf:1:1001");
        let shown = lines[3].strip_prefix("1 | ").unwrap();
        assert!(shown.starts_with('…') && shown.ends_with('…'), "{shown}");
        assert_eq!(shown.chars().count(), LINE_WINDOW + 2);
        let caret = lines[4].strip_prefix("  | ").unwrap();
        let pad = caret.find('^').unwrap();
        assert_eq!(shown.chars().skip(pad).take(6).collect::<String>(), "target");
        assert!(caret.ends_with("^^^^^^ here"), "{caret}");
    }

    #[test]
    fn a_caret_at_the_end_of_a_long_line_is_shown() {
        let src = "x".repeat(5000);
        let d = Diagnostic::new(Span::new(5000, 5000), "bad", "here");
        let text = render("m.tf", &src, &[d]);
        let lines: Vec<&str> = text.lines().collect();
        let shown = lines[3].strip_prefix("1 | ").unwrap();
        assert!(shown.starts_with('…') && !shown.ends_with('…'), "{shown}");
        let caret = lines[4].strip_prefix("  | ").unwrap();
        assert_eq!(caret.find('^').unwrap(), shown.chars().count());
    }

    #[test]
    fn only_the_first_diagnostics_are_rendered() {
        let src = "model m\n";
        let ds: Vec<Diagnostic> =
            (0..1000).map(|i| Diagnostic::new(Span::new(i % 8, i % 8 + 1), "bad", "here")).collect();
        let text = render("m.tf", src, &ds);
        assert_eq!(text.matches("error: bad").count(), MAX_RENDERED);
        assert!(text.ends_with("\n… and 980 more errors (only the first 20 are shown)\n"), "{text}");
        let one_more = render("m.tf", src, &ds[..MAX_RENDERED + 1]);
        assert!(one_more.ends_with("… and 1 more error (only the first 20 are shown)\n"), "{one_more}");
    }

    #[test]
    fn control_characters_are_never_printed_raw() {
        let src = "model m\u{1b}[2J\u{0}x\n";
        let d = Diagnostic::new(Span::new(12, 13), "unexpected `\u{0}`", "here");
        let text = render("m.tf", src, &[d]);
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert!(text.contains("1 | model m�[2J�x\n  |             ^ here"), "{text}");
    }
}
