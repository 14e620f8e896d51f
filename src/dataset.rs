//! Datasets of prompts (`--dataset FILE`), read one prompt at a time.
//!
//! Two formats, told by the file's extension:
//! - **JSON Lines** (`.jsonl`, `.ndjson`, `.json`): one object a line, `{"tokens": [3, 7, 1]}` or
//!   `{"text": "When Mary and John …"}`, with the optional per-prompt fields a metric reads:
//!   `"target"` and `"against"` (a token id, or a text that is one token), `"position"` (the
//!   position the metric is taken at), `"key"` and `"against_key"` (the key positions of an
//!   attention-score difference). Other fields (an id, a template name) are ignored, so datasets
//!   made for other tools can be read as they are.
//! - **Plain text** (any other extension): one prompt a line, its text.
//!
//! Blank lines are skipped in both. Reading is streaming ([`DatasetReader`] is an iterator): only
//! the current line is held, and a line is at most [`MAX_LINE_BYTES`] long, so memory does not
//! depend on the size of the file. Every error names the file and the line (and for JSON the
//! column), and a dataset without a prompt is an error.
//!
//! **Invariant:** this module knows nothing of the other stages: it returns ids and texts as
//! written; tokenizing, the model's vocabulary and its context length are checked by the caller.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// The longest line a dataset may have (16 MiB): a prompt of a million tokens is still shorter.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// One prompt of a dataset, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The 1-based line the prompt is on.
    pub line: usize,
    pub input: PromptInput,
    pub target: Option<TokenField>,
    pub against: Option<TokenField>,
    pub position: Option<usize>,
    pub key: Option<usize>,
    pub against_key: Option<usize>,
}

/// What a prompt runs the model on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptInput {
    Tokens(Vec<usize>),
    Text(String),
}

/// A per-prompt token: an id, or a text that must be one token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TokenField {
    Id(usize),
    Text(String),
}

impl std::fmt::Display for TokenField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenField::Id(t) => write!(f, "{t}"),
            TokenField::Text(s) => write!(f, "{}", serde_json::Value::String(s.clone())),
        }
    }
}

/// The fields pathc reads; the rest of the object is ignored.
#[derive(Deserialize)]
struct Line {
    tokens: Option<Vec<usize>>,
    text: Option<String>,
    target: Option<TokenField>,
    against: Option<TokenField>,
    position: Option<usize>,
    key: Option<usize>,
    against_key: Option<usize>,
}

/// How a dataset file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    Lines,
}

impl Format {
    /// By extension: `.jsonl`, `.ndjson` and `.json` are JSON Lines, anything else plain text.
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("jsonl" | "ndjson" | "json") => Format::JsonLines,
            _ => Format::Lines,
        }
    }
}

#[derive(Debug, Error)]
pub enum DatasetError {
    #[error("cannot read the dataset {}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A line that is not a prompt: `file:line[:col]: what is wrong`.
    #[error("{}:{line}{}: {message}", .path.display(), .column.map(|c| format!(":{c}")).unwrap_or_default())]
    Line { path: PathBuf, line: usize, column: Option<usize>, message: String },
    #[error("the dataset {} has no prompt (every line is blank)", .path.display())]
    Empty { path: PathBuf },
}

impl DatasetError {
    /// The 1-based line the error is on, if it is on one.
    pub fn line(&self) -> Option<usize> {
        match self {
            DatasetError::Line { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// Reads a dataset's prompts one at a time, in file order.
pub struct DatasetReader {
    path: PathBuf,
    format: Format,
    reader: BufReader<File>,
    line: usize,
    prompts: usize,
    buffer: Vec<u8>,
    done: bool,
}

impl DatasetReader {
    /// Opens `path`, its format by extension ([`Format::of`]).
    pub fn open(path: &Path) -> Result<DatasetReader, DatasetError> {
        let file = File::open(path).map_err(|source| DatasetError::Io { path: path.to_path_buf(), source })?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(DatasetError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other("it is a directory, not a file"),
            });
        }
        Ok(DatasetReader {
            path: path.to_path_buf(),
            format: Format::of(path),
            reader: BufReader::new(file),
            line: 0,
            prompts: 0,
            buffer: Vec::new(),
            done: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    fn error(&self, column: Option<usize>, message: impl Into<String>) -> DatasetError {
        DatasetError::Line { path: self.path.clone(), line: self.line, column, message: message.into() }
    }

    /// The next line's bytes (without its line ending), or `None` at the end of the file.
    fn next_line(&mut self) -> Result<Option<&[u8]>, DatasetError> {
        self.buffer.clear();
        self.line += 1;
        let limit = MAX_LINE_BYTES as u64 + 1;
        let read = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buffer)
            .map_err(|source| DatasetError::Io { path: self.path.clone(), source })?;
        if read == 0 {
            return Ok(None);
        }
        if self.buffer.last() == Some(&b'\n') {
            self.buffer.pop();
            if self.buffer.last() == Some(&b'\r') {
                self.buffer.pop();
            }
        } else if self.buffer.len() > MAX_LINE_BYTES {
            return Err(self.error(None, format!("the line is longer than {} MiB", MAX_LINE_BYTES >> 20)));
        }
        Ok(Some(&self.buffer))
    }

    fn parse(&self, bytes: &[u8]) -> Result<Prompt, DatasetError> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            self.error(Some(e.valid_up_to() + 1), format!("the line is not UTF-8 (byte {})", e.valid_up_to() + 1))
        })?;
        let text = if self.line == 1 { text.strip_prefix('\u{feff}').unwrap_or(text) } else { text };
        let line = self.line;
        match self.format {
            Format::Lines => Ok(Prompt {
                line,
                input: PromptInput::Text(text.to_string()),
                target: None,
                against: None,
                position: None,
                key: None,
                against_key: None,
            }),
            Format::JsonLines => {
                if !text.trim_start().starts_with('{') {
                    return Err(
                        self.error(Some(1), "expected a JSON object, `{\"tokens\": [...]}` or `{\"text\": \"...\"}`")
                    );
                }
                let fields: Line = serde_json::from_str(text)
                    .map_err(|e| self.error(Some(e.column()), format!("{}", JsonMessage(&e))))?;
                let input = match (fields.tokens, fields.text) {
                    (Some(tokens), None) if tokens.is_empty() => {
                        return Err(self.error(None, "\"tokens\" is empty: a prompt needs at least one token"))
                    }
                    (Some(tokens), None) => PromptInput::Tokens(tokens),
                    (None, Some(text)) => PromptInput::Text(text),
                    (Some(_), Some(_)) => {
                        return Err(self.error(None, "give \"tokens\" or \"text\", not both"));
                    }
                    (None, None) => {
                        return Err(self.error(None, "the prompt has neither \"tokens\" nor \"text\""));
                    }
                };
                Ok(Prompt {
                    line,
                    input,
                    target: fields.target,
                    against: fields.against,
                    position: fields.position,
                    key: fields.key,
                    against_key: fields.against_key,
                })
            }
        }
    }
}

/// serde_json's message without its own " at line 1 column N" (the line is the dataset's, and
/// the column is given in front).
struct JsonMessage<'a>(&'a serde_json::Error);

impl std::fmt::Display for JsonMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let message = self.0.to_string();
        let cut = message.rfind(" at line ").map_or(message.as_str(), |i| &message[..i]);
        f.write_str(cut)
    }
}

impl Iterator for DatasetReader {
    type Item = Result<Prompt, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            let bytes = match self.next_line() {
                Ok(Some(bytes)) => bytes.to_vec(),
                Ok(None) => {
                    self.done = true;
                    return (self.prompts == 0).then(|| Err(DatasetError::Empty { path: self.path.clone() }));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            if bytes.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let prompt = self.parse(&bytes);
            match &prompt {
                Ok(_) => self.prompts += 1,
                Err(_) => self.done = true,
            }
            return Some(prompt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(name: &str, text: &str) -> Vec<Result<Prompt, String>> {
        let dir = std::env::temp_dir().join(format!("pathc-dataset-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = DatasetReader::open(&path).unwrap().map(|r| r.map_err(|e| e.to_string())).collect();
        std::fs::remove_dir_all(&dir).unwrap();
        out
    }

    #[test]
    fn json_lines_with_fields_and_blank_lines() {
        let got = read("a.jsonl", "{\"tokens\": [1, 2], \"target\": 5, \"id\": \"x\"}\n\n{\"text\": \"hi\", \"against\": \" Mary\", \"position\": 0}\r\n");
        assert_eq!(got.len(), 2);
        let first = got[0].as_ref().unwrap();
        assert_eq!(
            (first.line, &first.input, &first.target),
            (1, &PromptInput::Tokens(vec![1, 2]), &Some(TokenField::Id(5)))
        );
        let second = got[1].as_ref().unwrap();
        assert_eq!(second.line, 3);
        assert_eq!(second.input, PromptInput::Text("hi".into()));
        assert_eq!(second.against, Some(TokenField::Text(" Mary".into())));
        assert_eq!(second.position, Some(0));
    }

    #[test]
    fn errors_name_the_line_and_stop_the_reading() {
        let got = read("b.jsonl", "{\"tokens\": [1]}\n{\"tokens\": [1, -2]}\n{\"tokens\": [3]}\n");
        assert_eq!(got.len(), 2);
        let message = got[1].as_ref().unwrap_err();
        assert!(message.ends_with("b.jsonl:2:17: invalid value: integer `-2`, expected usize"), "{message}");
        for (text, expected) in [
            ("[1, 2]\n", ":1:1: expected a JSON object"),
            ("{\"tokens\": []}\n", ":1: \"tokens\" is empty"),
            ("{\"tokens\": [1], \"text\": \"a\"}\n", ":1: give \"tokens\" or \"text\", not both"),
            ("{\"target\": 1}\n", ":1: the prompt has neither"),
            ("{\"tokens\": [1]\n", ":1:14: EOF while parsing an object"),
        ] {
            let got = read("c.jsonl", text);
            let message = got.last().unwrap().as_ref().unwrap_err();
            assert!(message.contains(expected), "{text:?}: {message}");
        }
        assert!(read("d.jsonl", "\n  \n").pop().unwrap().unwrap_err().contains("has no prompt"));
    }

    #[test]
    fn plain_text_is_one_prompt_a_line() {
        let got = read("e.txt", "\u{feff}When Mary\n\nand John\n");
        let texts: Vec<_> = got.into_iter().map(|p| p.unwrap()).map(|p| (p.line, p.input)).collect();
        assert_eq!(texts, [(1, PromptInput::Text("When Mary".into())), (3, PromptInput::Text("and John".into()))]);
    }
}
