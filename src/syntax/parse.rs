//! pest parser: text → [`ast::File`], or every syntax error it can find.
//!
//! pest stops at the first error. To report several at once the parser blanks the offending
//! line (keeping byte offsets) and parses again, up to [`MAX_SYNTAX_ERRORS`] times. It stops
//! recovering when the blanked line held a brace, since the errors after that would only be
//! echoes of the first.

use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest::Parser;

use super::ast::*;
use crate::diag::{Diagnostic, Span};

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/pathc.pest"]
struct ModelParser;

const MAX_SYNTAX_ERRORS: usize = 8;

pub fn parse(source: &str) -> Result<File, Vec<Diagnostic>> {
    pest::set_error_detail(true);
    let mut errors = Vec::new();
    let mut text = source.to_string();
    loop {
        match ModelParser::parse(Rule::file, &text) {
            Ok(mut pairs) => {
                if !errors.is_empty() {
                    return Err(errors);
                }
                let file = pairs.next().expect("the `file` rule always yields one pair");
                return build_file(file);
            }
            Err(err) => {
                let diagnostic = syntax_diagnostic(&text, &err);
                let at = diagnostic.span.start;
                let same_place = errors.last().is_some_and(|d: &Diagnostic| d.span.start >= at);
                if same_place {
                    return Err(errors);
                }
                let stop = unrecoverable(&diagnostic);
                errors.push(diagnostic);
                if stop || errors.len() >= MAX_SYNTAX_ERRORS || !blank_line(&mut text, at) {
                    return Err(errors);
                }
            }
        }
    }
}

/// Replaces the line holding byte `at` by spaces. Returns false (and changes nothing) when the
/// line is structural (holds a brace) or is the `model` header, where recovery would only
/// produce echoes of the first error.
fn blank_line(text: &mut String, at: usize) -> bool {
    let at = at.min(text.len());
    let start = text[..at].rfind(LINE_BREAK).map_or(0, |i| i + 1);
    let end = text[at..].find(LINE_BREAK).map_or(text.len(), |i| at + i);
    let line = &text[start..end];
    if line.contains('{') || line.contains('}') || line.trim_start().starts_with("model") || line.trim().is_empty() {
        return false;
    }
    // One space per byte, so that every later byte offset (and so every span) stays put.
    let blank = " ".repeat(line.len());
    text.replace_range(start..end, &blank);
    true
}

/// `\n`, `\r\n` and a lone `\r` all end a line.
const LINE_BREAK: [char; 2] = ['\n', '\r'];

fn syntax_diagnostic(text: &str, err: &pest::error::Error<Rule>) -> Diagnostic {
    let (mut start, end) = match err.location {
        InputLocation::Pos(p) => (p, p),
        InputLocation::Span((s, e)) => (s, e),
    };
    let mut positives: Vec<Rule> = match &err.variant {
        ErrorVariant::ParsingError { positives, .. } => positives.clone(),
        ErrorVariant::CustomError { .. } => Vec::new(),
    };
    // pest reports where the last *required* match failed; an optional part that got further
    // (an argument list missing its `)`) is where the mistake really is.
    if let Some(attempts) = err.parse_attempts() {
        let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        let max = attempts.max_position.min(text.len());
        let inside_word = is_word(text[..max].chars().next_back()) && is_word(text[max..].chars().next());
        if max > start && !inside_word {
            start = attempts.max_position;
            positives = attempts
                .call_stacks
                .iter()
                .filter_map(|stack| stack.deepest.get_rule().copied().or(stack.parent))
                .collect();
        }
    }
    let positives = positives.as_slice();
    let mut expected: Vec<String> = Vec::new();
    for rule in positives {
        push_unique(&mut expected, describe_rule(*rule));
    }
    if let Some(attempts) = err.parse_attempts() {
        // Punctuation the grammar wanted; keywords and character ranges are already described
        // by the rules above, in words.
        for token in attempts.expected_tokens() {
            let token = token.to_string();
            let punctuation = !token.is_empty() && !token.chars().any(|c| c.is_alphanumeric() || c.is_whitespace());
            if punctuation && !["#", "//", "_"].contains(&token.as_str()) {
                push_unique(&mut expected, format!("`{token}`"));
            }
        }
    }
    expected.retain(|e| !e.is_empty());
    if let Some(i) = expected.iter().position(|e| e == "end of file") {
        let eof = expected.remove(i);
        expected.push(eof);
    }
    // A statement cut short (`dim d_model =` then a new line) fails at the next line's first
    // word; the mistake is at the end of the previous line, so point there.
    let starts_new_item = positives.iter().any(|r| {
        matches!(
            r,
            Rule::EOI
                | Rule::dim_decl
                | Rule::kw_dim
                | Rule::component
                | Rule::component_kind
                | Rule::layer
                | Rule::kw_layer
                | Rule::repeat
                | Rule::kw_repeat
        )
    });
    let line_start = text[..start].rfind(LINE_BREAK).map_or(0, |i| i + 1);
    let cut_short = line_start > 0 && text[line_start..start].trim().is_empty() && !starts_new_item;
    let (span, found) = if cut_short {
        let previous_end = text[..line_start].trim_end().len();
        (Span::new(previous_end, previous_end), "end of line".to_string())
    } else {
        // Point at the whole offending word, not one character.
        let rest = &text[start..];
        let is_word = |c: char| c.is_alphanumeric() || c == '_';
        let word_len = match rest.chars().next() {
            None => 0,
            Some(c) if is_word(c) => rest.find(|c: char| !is_word(c)).unwrap_or(rest.len()),
            Some(c) => c.len_utf8(),
        };
        let end = (start + word_len).max(end.min(text.len()));
        (Span::new(start, end), describe_found(&text[start..end]))
    };
    let label = match expected.len() {
        0 => "not expected here".to_string(),
        _ => format!("expected {}", join_or(&expected)),
    };
    Diagnostic::new(span, format!("syntax error: unexpected {found}"), label)
}

/// The parser cannot resynchronise after these: every later line would fail the same way.
fn unrecoverable(d: &Diagnostic) -> bool {
    d.label.contains("`model NAME`")
}

/// What the parser found, in words: a word (cut after [`MAX_FOUND`] characters), a character
/// (a control character by its code point, never raw), or the end of the file.
fn describe_found(text: &str) -> String {
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (None, _) => "end of file".to_string(),
        (Some(c), None) if c.is_control() => format!("control character U+{:04X}", c as u32),
        _ => match text.char_indices().nth(MAX_FOUND) {
            None => format!("`{text}`"),
            Some((i, _)) => format!("`{}…`", &text[..i]),
        },
    }
}

/// A word longer than this many characters is cut in "unexpected `…`".
const MAX_FOUND: usize = 40;

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

fn join_or(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Grammar rules in words, for users who never read the grammar.
fn describe_rule(rule: Rule) -> String {
    match rule {
        Rule::EOI => "end of file",
        Rule::model_header | Rule::kw_model => "`model NAME` at the top of the file",
        Rule::dim_decl | Rule::kw_dim => "a `dim` declaration",
        Rule::component | Rule::component_kind => "a component (embed, pos_embed, layernorm, attn, mlp, unembed)",
        Rule::layer | Rule::kw_layer => "`layer { ... }`",
        Rule::repeat | Rule::kw_repeat => "`repeat N { ... }`",
        Rule::args => "an argument list `(name = value, ...)`",
        Rule::arg => "an argument `name = value`",
        Rule::ident => "a name",
        Rule::int => "a whole number",
        Rule::real => "a decimal number",
        Rule::boolean => "`true` or `false`",
        Rule::item => "a `dim`, a component, `layer { ... }` or `repeat N { ... }`",
        Rule::value => "a number, `true`, `false` or a name",
        Rule::file | Rule::ident_char | Rule::exponent | Rule::WHITESPACE | Rule::COMMENT => "",
    }
    .to_string()
}

fn span(pair: &Pair<'_, Rule>) -> Span {
    Span::of(pair.as_span())
}

fn build_file(file: Pair<'_, Rule>) -> Result<File, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut inner = file.into_inner();
    let header = inner.next().expect("grammar: file starts with model_header");
    let name = ident(header.into_inner().nth(1).expect("grammar: model_header has a name"));
    let mut items = Vec::new();
    for pair in inner {
        match pair.as_rule() {
            Rule::dim_decl => {
                let decl_span = span(&pair);
                let mut parts = pair.into_inner().skip(1);
                let name = ident(parts.next().expect("grammar: dim has a name"));
                let value = parts.next().and_then(|p| number(p, &mut errors));
                items.push(Item::Dim(DimDecl { name, value, span: decl_span }));
            }
            Rule::component => items.push(Item::Component(component(pair, &mut errors))),
            Rule::layer => items.push(Item::Layer(layer(pair, &mut errors))),
            Rule::repeat => {
                let repeat_span = span(&pair);
                let mut parts = pair.into_inner().skip(1);
                let count = number(parts.next().expect("grammar: repeat has a count"), &mut errors);
                let layers = parts.map(|p| layer(p, &mut errors)).collect();
                if let Some(count) = count {
                    items.push(Item::Repeat(Repeat { count, layers, span: repeat_span }));
                }
            }
            Rule::EOI => {}
            other => unreachable!("grammar: unexpected item {other:?}"),
        }
    }
    if errors.is_empty() {
        Ok(File { name, items })
    } else {
        Err(errors)
    }
}

fn ident(pair: Pair<'_, Rule>) -> Ident {
    Ident { text: pair.as_str().to_string(), span: span(&pair) }
}

fn number(pair: Pair<'_, Rule>, errors: &mut Vec<Diagnostic>) -> Option<Number> {
    match pair.as_str().parse::<u64>() {
        Ok(value) => Some(Number { value, span: span(&pair) }),
        Err(_) => {
            errors.push(Diagnostic::new(span(&pair), "number too large", "does not fit in 64 bits"));
            None
        }
    }
}

fn layer(pair: Pair<'_, Rule>, errors: &mut Vec<Diagnostic>) -> Layer {
    let layer_span = span(&pair);
    let mut parts = pair.into_inner().peekable();
    let keyword = span(&parts.next().expect("grammar: a layer starts with `layer`"));
    let (args, end) = match parts.peek().map(Pair::as_rule) {
        Some(Rule::args) => {
            let list = parts.next().expect("peeked");
            let end = span(&list).end;
            (arguments(list, errors), end)
        }
        _ => (Vec::new(), keyword.end),
    };
    let header =
        Component { kind: ComponentKind::Layer, keyword_span: keyword, args, span: Span::new(keyword.start, end) };
    let components = parts.map(|p| component(p, errors)).collect();
    Layer { header, components, span: layer_span }
}

fn component(pair: Pair<'_, Rule>, errors: &mut Vec<Diagnostic>) -> Component {
    let component_span = span(&pair);
    let mut parts = pair.into_inner();
    let keyword = parts.next().expect("grammar: component has a kind");
    let kind = ComponentKind::from_keyword(keyword.as_str()).expect("grammar: component kinds are keywords");
    let args = parts.next().map(|list| arguments(list, errors)).unwrap_or_default();
    Component { kind, keyword_span: span(&keyword), args, span: component_span }
}

/// An argument list `(name = value, ...)`.
fn arguments(arg_list: Pair<'_, Rule>, errors: &mut Vec<Diagnostic>) -> Vec<Arg> {
    let mut args = Vec::new();
    {
        for arg_pair in arg_list.into_inner() {
            let arg_span = span(&arg_pair);
            let mut arg_parts = arg_pair.into_inner();
            let name = ident(arg_parts.next().expect("grammar: arg has a name"));
            let value = match arg_parts.next() {
                None => Value::Flag,
                Some(v) => match v.as_rule() {
                    Rule::int => match number(v, errors) {
                        Some(n) => Value::Int(n),
                        None => continue,
                    },
                    Rule::real => match v.as_str().parse::<f64>() {
                        Ok(x) if x.is_finite() => Value::Real(Real(x), span(&v)),
                        _ => {
                            errors.push(Diagnostic::new(span(&v), "number too large", "not a finite number"));
                            continue;
                        }
                    },
                    Rule::boolean => Value::Bool(v.as_str() == "true", span(&v)),
                    Rule::ident => Value::Name(ident(v)),
                    other => unreachable!("grammar: unexpected value {other:?}"),
                },
            };
            args.push(Arg { name, value, span: arg_span });
        }
    }
    args
}
