//! One `.npy` array (a member of an .npz archive): the magic `\x93NUMPY`, a version, a header
//! length, a header (a Python dict literal: `descr`, `fortran_order`, `shape`), then the data.
//! Hands over the data row-major: a Fortran-order float array is reordered here.

use std::borrow::Cow;
use std::fmt;

use super::convert::{Float, FloatFormat};
use super::{Bytes, DType, Listed};

/// A `.npy` file's first bytes.
pub(super) const MAGIC: &[u8] = b"\x93NUMPY";

/// What is wrong with a `.npy` array; the .npz module names the member.
pub(super) enum NpyError {
    Format(String),
    Truncated(String),
}

/// The element type named by a `.npy` header's `descr`.
struct NpyType {
    /// A float we convert, or the name messages use: the safetensors name where there is one
    /// (`BOOL`, `I64`), else the descr.
    dtype: DType,
    /// Bytes per element, if fixed (object arrays have none).
    size: Option<usize>,
}

/// Reads one `.npy` array, the tensor `name`: magic, version, header length, header dict, data.
pub(super) fn read(name: String, bytes: &[u8]) -> Result<Listed<'_>, NpyError> {
    let found = bytes.len();
    if found < MAGIC.len() {
        return Err(NpyError::Truncated(format!("ends inside the .npy magic: found {found} bytes")));
    }
    if !bytes.starts_with(MAGIC) {
        return Err(NpyError::Format("not a .npy array (it does not start with `\\x93NUMPY`)".to_string()));
    }
    let (header_len, header_start): (Option<usize>, usize) = match bytes.get(6) {
        Some(1) => (bytes.get(8..10).map(|b| b.iter().rev().fold(0usize, |n, &b| n << 8 | usize::from(b))), 10),
        Some(2 | 3) => (bytes.get(8..12).map(|b| b.iter().rev().fold(0usize, |n, &b| n << 8 | usize::from(b))), 12),
        Some(major) => {
            return Err(NpyError::Format(format!(
                ".npy format version {major}.{} is not supported (1.0, 2.0 and 3.0 are)",
                bytes.get(7).copied().unwrap_or(0)
            )))
        }
        None => return Err(NpyError::Truncated(format!("ends inside the .npy version: found {found} bytes"))),
    };
    let Some(header_len) = header_len else {
        return Err(NpyError::Truncated(format!(
            "ends inside the .npy header length: expected at least {header_start} bytes, found {found}"
        )));
    };
    let header_end = header_start.saturating_add(header_len);
    let Some(header) = bytes.get(header_start..header_end) else {
        return Err(NpyError::Truncated(format!(
            "ends inside the .npy header: expected at least {header_end} bytes, found {found}"
        )));
    };
    let header =
        std::str::from_utf8(header).map_err(|e| NpyError::Format(format!("the .npy header is not text: {e}")))?;
    let (descr, fortran_order, shape) = parse_header(header).map_err(NpyError::Format)?;
    let data = bytes.get(header_end..).unwrap_or_default();
    let ty = npy_type(&descr);
    let Some(size) = ty.size else {
        // No fixed item size (object arrays are pickles): listed, never converted.
        return Ok(Listed { name, shape, dtype: ty.dtype, bytes: Bytes::Memory(Cow::Borrowed(data)) });
    };
    let expected = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).and_then(|n| n.checked_mul(size));
    let Some(expected) = expected else {
        return Err(NpyError::Format(format!("shape {shape:?} of `{descr}` is too large to address")));
    };
    if data.len() < expected {
        return Err(NpyError::Truncated(format!(
            "ends inside its data: shape {shape:?} of `{descr}` needs {expected} bytes after the {header_end}-byte \
             header, found {}",
            data.len()
        )));
    }
    if data.len() > expected {
        return Err(NpyError::Format(format!(
            "{} byte(s) follow the data of shape {shape:?} of `{descr}` ({expected} bytes)",
            data.len() - expected
        )));
    }
    // Only floats are ever read, so only they are reordered.
    let data = match ty.dtype {
        DType::Float(_) if fortran_order => Cow::Owned(fortran_to_c(data, &shape, size)),
        _ => Cow::Borrowed(data),
    };
    Ok(Listed { name, shape, dtype: ty.dtype, bytes: Bytes::Memory(data) })
}

/// Maps a `descr` such as `<f4` to an element type. Floats are F16/F32/F64 in either byte order;
/// the other common types get the safetensors names (BOOL, I64, ...) so messages read the same
/// whichever format the weights came in.
fn npy_type(descr: &str) -> NpyType {
    if descr == STRUCTURED {
        return NpyType { dtype: DType::Other(descr.to_string()), size: None };
    }
    let mut chars = descr.chars();
    let order = chars.next();
    let kind = chars.next();
    let size: Option<usize> = chars.as_str().parse().ok();
    let other = |name: String, size: Option<usize>| NpyType { dtype: DType::Other(name), size };
    let quoted = || format!("`{descr}`");
    let little_endian = match order {
        Some('<' | '|') => true,
        Some('>') => false,
        // '=' (native) never appears in files numpy writes; anything else is not a simple type.
        _ => return other(quoted(), None),
    };
    match (kind, size) {
        (Some('f'), Some(s @ (2 | 4 | 8))) if order != Some('|') => {
            let format = match s {
                2 => FloatFormat::F16,
                4 => FloatFormat::F32,
                _ => FloatFormat::F64,
            };
            NpyType { dtype: DType::Float(Float { format, little_endian }), size: Some(s) }
        }
        (Some('b'), Some(1)) => other("BOOL".to_string(), Some(1)),
        (Some('i'), Some(s @ (1 | 2 | 4 | 8))) => other(format!("I{}", s * 8), Some(s)),
        (Some('u'), Some(s @ (1 | 2 | 4 | 8))) => other(format!("U{}", s * 8), Some(s)),
        (Some('c'), Some(s @ (8 | 16))) => other(format!("C{}", s * 8), Some(s)),
        (Some('U'), Some(s)) => other(quoted(), s.checked_mul(4)),
        (Some('b' | 'i' | 'u' | 'c' | 'f' | 'S' | 'V' | 'm' | 'M'), Some(s)) => other(quoted(), Some(s)),
        _ => other(quoted(), None),
    }
}

/// Reorders column-major (Fortran) data of `size`-byte elements into row-major. `data` holds
/// exactly the elements of `shape` (checked by the caller).
fn fortran_to_c(data: &[u8], shape: &[usize], size: usize) -> Vec<u8> {
    if shape.len() < 2 || size == 0 {
        return data.to_vec();
    }
    // Column-major strides: the first index varies fastest. Products are ≤ the element count.
    let mut strides = Vec::with_capacity(shape.len());
    let mut stride = 1usize;
    for &dim in shape {
        strides.push(stride);
        stride = stride.saturating_mul(dim);
    }
    let mut index = vec![0usize; shape.len()];
    let mut offset = 0usize;
    let mut out = vec![0u8; data.len()];
    for element in out.chunks_exact_mut(size) {
        // `offset` is in range: the column-major offset of a valid index.
        let start = offset.saturating_mul(size);
        if let Some(source) = data.get(start..start.saturating_add(size)) {
            element.copy_from_slice(source);
        }
        // Advance the row-major index (last axis fastest), keeping `offset` in step.
        for ((i, &dim), &stride) in index.iter_mut().zip(shape).zip(&strides).rev() {
            *i += 1;
            offset = offset.saturating_add(stride);
            if *i < dim {
                break;
            }
            offset = offset.saturating_sub(stride.saturating_mul(dim));
            *i = 0;
        }
    }
    out
}

/// A Python literal, as far as `.npy` headers use them.
#[derive(Debug)]
enum Py {
    Str(String),
    Bool(bool),
    Int(usize),
    None,
    Seq(Vec<Py>),
    Dict(Vec<(Py, Py)>),
}

impl fmt::Display for Py {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Py::Str(s) => write!(f, "'{s}'"),
            Py::Bool(b) => f.write_str(if *b { "True" } else { "False" }),
            Py::Int(n) => write!(f, "{n}"),
            Py::None => f.write_str("None"),
            Py::Seq(_) => f.write_str("a sequence"),
            Py::Dict(_) => f.write_str("a dict"),
        }
    }
}

/// The `descr` we report for a structured (record) dtype, whose descr is a list of fields.
const STRUCTURED: &str = "a structured (record) dtype";

/// Reads `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` into its three fields.
fn parse_header(header: &str) -> Result<(String, bool, Vec<usize>), String> {
    let mut parser = PyParser { text: header.as_bytes(), pos: 0 };
    let value = parser.value(0)?;
    parser.skip_ws();
    if parser.pos < parser.text.len() {
        return Err(format!("the .npy header has text after its dict, at byte {}", parser.pos));
    }
    let Py::Dict(items) = value else {
        return Err("the .npy header is not a Python dict".to_string());
    };
    let field = |key: &str| {
        items
            .iter()
            .find_map(|(k, v)| matches!(k, Py::Str(s) if s == key).then_some(v))
            .ok_or_else(|| format!("the .npy header has no '{key}'"))
    };
    let descr = match field("descr")? {
        Py::Str(s) => s.clone(),
        Py::Seq(_) => STRUCTURED.to_string(),
        other => return Err(format!("the .npy header's 'descr' is {other}, expected a string")),
    };
    let fortran_order = match field("fortran_order")? {
        Py::Bool(b) => *b,
        other => return Err(format!("the .npy header's 'fortran_order' is {other}, expected True or False")),
    };
    let shape = match field("shape")? {
        Py::Seq(dims) => dims
            .iter()
            .map(|d| match d {
                Py::Int(n) => Ok(*n),
                other => Err(format!("the .npy header's 'shape' holds {other}, expected integers")),
            })
            .collect::<Result<Vec<usize>, String>>()?,
        other => return Err(format!("the .npy header's 'shape' is {other}, expected a tuple")),
    };
    Ok((descr, fortran_order, shape))
}

struct PyParser<'a> {
    text: &'a [u8],
    pos: usize,
}

/// Deep enough for any real header (which nests at most three levels), shallow enough that a
/// hostile one cannot overflow the stack.
const MAX_DEPTH: usize = 32;

impl PyParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn error(&self, what: &str) -> String {
        match self.peek() {
            Some(c) => {
                format!("the .npy header is malformed: expected {what} at byte {}, found `{}`", self.pos, c as char)
            }
            None => format!("the .npy header is malformed: expected {what}, found its end"),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Py, String> {
        if depth > MAX_DEPTH {
            return Err("the .npy header nests too deeply".to_string());
        }
        self.skip_ws();
        match self.peek() {
            Some(b'{') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                        return Ok(Py::Dict(items));
                    }
                    let key = self.value(depth + 1)?;
                    self.skip_ws();
                    if self.peek() != Some(b':') {
                        return Err(self.error("`:`"));
                    }
                    self.pos += 1;
                    let value = self.value(depth + 1)?;
                    items.push((key, value));
                    if !self.separator(b'}')? {
                        self.pos += 1;
                        return Ok(Py::Dict(items));
                    }
                }
            }
            Some(open @ (b'(' | b'[')) => {
                let close = if open == b'(' { b')' } else { b']' };
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        return Ok(Py::Seq(items));
                    }
                    items.push(self.value(depth + 1)?);
                    if !self.separator(close)? {
                        self.pos += 1;
                        return Ok(Py::Seq(items));
                    }
                }
            }
            Some(quote @ (b'\'' | b'"')) => {
                self.pos += 1;
                let mut s = Vec::new();
                loop {
                    match self.peek() {
                        None => return Err(self.error("the end of a string")),
                        Some(b'\\') => {
                            self.pos += 1;
                            let Some(c) = self.peek() else { return Err(self.error("an escaped character")) };
                            s.push(c);
                            self.pos += 1;
                        }
                        Some(c) if c == quote => {
                            self.pos += 1;
                            return Ok(Py::Str(String::from_utf8_lossy(&s).into_owned()));
                        }
                        Some(c) => {
                            s.push(c);
                            self.pos += 1;
                        }
                    }
                }
            }
            Some(c) if c.is_ascii_digit() => {
                let mut n = 0usize;
                while let Some(d) = self.peek().filter(u8::is_ascii_digit) {
                    n = n
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(usize::from(d - b'0')))
                        .ok_or_else(|| "the .npy header holds a number too large for this machine".to_string())?;
                    self.pos += 1;
                }
                // Python 2 wrote long integers as `3L`.
                if self.peek() == Some(b'L') {
                    self.pos += 1;
                }
                Ok(Py::Int(n))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_') {
                    self.pos += 1;
                }
                match self.text.get(start..self.pos) {
                    Some(b"True") => Ok(Py::Bool(true)),
                    Some(b"False") => Ok(Py::Bool(false)),
                    Some(b"None") => Ok(Py::None),
                    _ => {
                        self.pos = start;
                        Err(self.error("True, False or None"))
                    }
                }
            }
            _ => Err(self.error("a value")),
        }
    }

    /// After an item: `,` (true, more may follow) or the closing bracket (false, left unconsumed).
    fn separator(&mut self, close: u8) -> Result<bool, String> {
        self.skip_ws();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(c) if c == close => Ok(false),
            _ => Err(self.error(&format!("`,` or `{}`", close as char))),
        }
    }
}
