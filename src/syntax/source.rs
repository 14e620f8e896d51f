//! Model-file bytes → text, or a diagnostic that says where and why they are not a model's text.
//!
//! A model file is UTF-8 (a leading byte-order mark is dropped) of at most
//! [`MAX_SOURCE_BYTES`] bytes. [`read_source`] reads no more than that from disk, so a huge file
//! costs nothing, and [`decode_source`] checks bytes already in memory. Both point a diagnostic
//! at the first invalid byte (line, column, the bytes found) or at the limit.

use std::io::Read;
use std::path::Path;

use crate::diag::{self, Diagnostic, Span};

/// The largest model file accepted, in bytes (1 MiB). A model file describes an architecture:
/// GPT-2 small takes 20 lines, and every one of [`super::MAX_LAYERS`] layers written out fits
/// in a third of this. Checked before anything is parsed, so that parsing and checking stay
/// small on any input.
pub const MAX_SOURCE_BYTES: usize = 1 << 20;

/// Why a model file's bytes are not model text.
#[derive(Debug)]
pub enum SourceError {
    /// The file could not be read.
    Io(std::io::Error),
    /// Not UTF-8, or too large: a diagnostic pointing into `text`, the file's bytes as far as
    /// they were read, invalid sequences replaced by `�` (the diagnostic's offsets are into it).
    Invalid { text: String, diagnostic: Diagnostic },
}

impl SourceError {
    /// The error as the command line prints it: `error: cannot read FILE: …`, or the rendered
    /// diagnostic.
    pub fn render(&self, file_name: &str) -> String {
        match self {
            SourceError::Io(e) => format!("error: cannot read {file_name}: {e}\n"),
            SourceError::Invalid { text, diagnostic } => {
                diag::render(file_name, text, std::slice::from_ref(diagnostic))
            }
        }
    }
}

/// Reads a model file: at most [`MAX_SOURCE_BYTES`] + 1 bytes, then [`decode_source`].
pub fn read_source(path: &Path) -> Result<String, SourceError> {
    let file = std::fs::File::open(path).map_err(SourceError::Io)?;
    let mut bytes = Vec::new();
    file.take(MAX_SOURCE_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(SourceError::Io)?;
    decode_source(bytes)
}

/// A model file's bytes as text: at most [`MAX_SOURCE_BYTES`], UTF-8, a leading byte-order mark
/// dropped. Otherwise a diagnostic at the limit or at the first byte that is not UTF-8.
pub fn decode_source(mut bytes: Vec<u8>) -> Result<String, SourceError> {
    // The limit is on the file, mark included: a file read only up to the limit is refused
    // whatever it starts with.
    let too_big = bytes.len() > MAX_SOURCE_BYTES;
    bytes.truncate(MAX_SOURCE_BYTES);
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
    if too_big {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let diagnostic = too_large(&text);
        return Err(SourceError::Invalid { text, diagnostic });
    }
    String::from_utf8(bytes).map_err(|e| {
        let error = e.utf8_error();
        let bytes = e.as_bytes();
        let at = error.valid_up_to();
        let found = &bytes[at..at + error.error_len().unwrap_or(bytes.len() - at)];
        let hex: Vec<String> = found.iter().map(|b| format!("0x{b:02X}")).collect();
        let label = match (error.error_len(), found.len()) {
            (None, _) => format!("the file ends inside a character: {}", hex.join(" ")),
            (Some(_), 1) => format!("byte {} is not UTF-8", hex[0]),
            (Some(_), _) => format!("bytes {} are not UTF-8", hex.join(" ")),
        };
        let text = String::from_utf8_lossy(bytes).into_owned();
        let diagnostic = Diagnostic::new(Span::new(at, at + 1), "cannot read the file as UTF-8 text", label).with_help(
            "model files are UTF-8; save it as UTF-8 (a byte from 0x80 up is often Latin-1 or Windows-1252 text)",
        );
        SourceError::Invalid { text, diagnostic }
    })
}

/// The diagnostic for a text longer than [`MAX_SOURCE_BYTES`], at the end of `prefix`, its
/// accepted part.
pub(super) fn too_large(prefix: &str) -> Diagnostic {
    let at = prefix.len();
    Diagnostic::new(
        Span::new(at, at),
        format!("the model file is larger than {MAX_SOURCE_BYTES} bytes (1 MiB)"),
        "the limit is reached here",
    )
    .with_help("a model file describes an architecture: use `repeat N { ... }` for identical layers")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(bytes: &[u8]) -> (String, Diagnostic) {
        match decode_source(bytes.to_vec()) {
            Err(SourceError::Invalid { text, diagnostic }) => (text, diagnostic),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn utf8_passes_and_a_byte_order_mark_is_dropped() {
        assert_eq!(decode_source(b"model m\n# caf\xC3\xA9\n".to_vec()).unwrap(), "model m\n# café\n");
        assert_eq!(decode_source(b"\xEF\xBB\xBFmodel m\n".to_vec()).unwrap(), "model m\n");
    }

    #[test]
    fn the_first_invalid_byte_is_located() {
        let (text, d) = invalid(b"model m\n# caf\xE9 \xFF\n");
        assert_eq!(d.span.start, 13);
        assert_eq!(diag::line_col(&text, d.span.start), (2, 6));
        assert_eq!(d.label, "byte 0xE9 is not UTF-8");
        let rendered = diag::render("m.tf", &text, &[d]);
        assert!(
            rendered.starts_with(
                "error: cannot read the file as UTF-8 text\n --> m.tf:2:6\n  |\n2 | # caf� �\n  |      ^ byte 0xE9"
            ),
            "{rendered}"
        );
        let (_, d) = invalid(b"model m\n# \xE2\x82");
        assert_eq!(d.label, "the file ends inside a character: 0xE2 0x82");
    }

    #[test]
    fn too_large_is_refused_at_the_limit() {
        let mut bytes = b"model m\n".to_vec();
        bytes.resize(MAX_SOURCE_BYTES + 1, b' ');
        let (text, d) = invalid(&bytes);
        assert_eq!(text.len(), MAX_SOURCE_BYTES);
        assert_eq!(d.span.start, MAX_SOURCE_BYTES);
        assert!(d.message.contains("larger than 1048576 bytes"), "{}", d.message);
        bytes.pop();
        assert!(decode_source(bytes.clone()).is_ok());
        // With a byte-order mark, the file is still over the limit (and the text shown starts
        // after the mark).
        let mut marked = b"\xEF\xBB\xBF".to_vec();
        marked.extend_from_slice(&bytes);
        let (text, d) = invalid(&marked);
        assert!(text.starts_with("model m\n"));
        assert_eq!(d.span.start, MAX_SOURCE_BYTES - 3);
    }
}
