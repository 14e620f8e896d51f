//! One `.npy` array (a member of an .npz archive): the magic `\x93NUMPY`, a version, a header
//! length, a header (a Python dict literal: `descr`, `fortran_order`, `shape`), then the data.
//! Hands over the data row-major: a Fortran-order float array is reordered here.

use std::borrow::Cow;
use std::str::FromStr;

use num_bigint::{BigInt, Sign};
use py_literal::Value;

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

/// The most bytes a `.npy` header takes, magic to dict: what [`header`] needs of a member to
/// describe it ([`MAX_HEADER_TEXT`] is the longest dict it reads).
pub(super) const MAX_HEADER_BYTES: usize = 12 + MAX_HEADER_TEXT;

/// A `.npy` header read: where the data starts, and what it holds.
pub(super) struct Header {
    /// Bytes from the magic to the end of the dict: the data follows.
    pub end: usize,
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    dtype: DType,
    /// Bytes per element, if fixed (object arrays have none).
    size: Option<usize>,
}

impl Header {
    /// The element type: a float to convert, or another type only listed.
    pub fn dtype(&self) -> DType {
        self.dtype.clone()
    }

    /// The bytes of data the shape and dtype call for (`None` when the dtype has no fixed size).
    pub fn data_bytes(&self) -> Result<Option<usize>, NpyError> {
        let Some(size) = self.size else { return Ok(None) };
        let expected = self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).and_then(|n| n.checked_mul(size));
        match expected {
            Some(expected) => Ok(Some(expected)),
            None => {
                Err(NpyError::Format(format!("shape {:?} of `{}` is too large to address", self.shape, self.descr)))
            }
        }
    }

    /// Checks that `found` bytes of data are what the header calls for: the one check of a
    /// member's length, made from its declared size before any data is read.
    pub fn check_data_len(&self, found: usize) -> Result<(), NpyError> {
        let Some(expected) = self.data_bytes()? else { return Ok(()) };
        let (shape, descr, header_end) = (&self.shape, &self.descr, self.end);
        if found < expected {
            return Err(NpyError::Truncated(format!(
                "ends inside its data: shape {shape:?} of `{descr}` needs {expected} bytes after the {header_end}-byte \
                 header, found {found}"
            )));
        }
        if found > expected {
            return Err(NpyError::Format(format!(
                "{} byte(s) follow the data of shape {shape:?} of `{descr}` ({expected} bytes)",
                found - expected
            )));
        }
        Ok(())
    }
}

/// Reads one `.npy` array, the tensor `name`: magic, version, header length, header dict, data.
pub(super) fn read(name: String, bytes: &[u8]) -> Result<Listed<'_>, NpyError> {
    let header = header(bytes)?;
    let data = bytes.get(header.end..).unwrap_or_default();
    header.check_data_len(data.len())?;
    let Some(size) = header.size else {
        // No fixed item size (object arrays are pickles): listed, never converted.
        return Ok(Listed {
            name,
            shape: header.shape,
            dtype: header.dtype,
            bytes: Bytes::Memory(Cow::Borrowed(data)),
        });
    };
    // Only floats are ever read, so only they are reordered.
    let data = match header.dtype {
        DType::Float(_) if header.fortran_order => Cow::Owned(fortran_to_c(data, &header.shape, size)),
        _ => Cow::Borrowed(data),
    };
    Ok(Listed { name, shape: header.shape, dtype: header.dtype, bytes: Bytes::Memory(data) })
}

/// Reads a `.npy` header from the first bytes of an array (at least up to the end of the dict,
/// at most [`MAX_HEADER_BYTES`] are needed).
pub(super) fn header(bytes: &[u8]) -> Result<Header, NpyError> {
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
    let ty = npy_type(&descr);
    let header = Header { end: header_end, descr, fortran_order, shape, dtype: ty.dtype, size: ty.size };
    // The size of the data, checked now: an unaddressable shape is an error of the header.
    header.data_bytes()?;
    Ok(header)
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

// ---------------------------------------------------------------------------------------------
// The header
//
// The dict is read by the `py_literal` crate: Python literals as `ast.literal_eval` (what numpy
// itself uses) reads them, and what `ndarray-npy` and `npyz` read `.npy` headers with. Its parser
// (pest) backtracks, so its time grows exponentially with nesting and it is slow on long text:
// `prepare` first bounds both, in one pass over the text, and fills in two things numpy headers
// hold that its grammar lacks.

/// The `descr` we report for a structured (record) dtype, whose descr is a list of fields.
const STRUCTURED: &str = "a structured (record) dtype";

/// numpy's own limit on the header it reads (`numpy.load`'s `max_header_size`, there for the same
/// reason: `literal_eval` is slow on long input). The headers numpy writes for plain arrays are
/// under 200 bytes.
const MAX_HEADER_TEXT: usize = 10_000;

/// Brackets open at once: deep enough for any header numpy writes (the dict, a structured dtype's
/// list of fields, a field, a nested structured dtype's list and field, a subarray's shape),
/// shallow enough that the crate's backtracking stays quick.
const MAX_DEPTH: usize = 6;

/// Reads `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` into its three fields.
fn parse_header(header: &str) -> Result<(String, bool, Vec<usize>), String> {
    let text = prepare(header)?;
    let value = Value::from_str(&text).map_err(|e| match e {
        py_literal::ParseError::Syntax(message) => syntax_error(&text, &message),
        other => format!("the .npy header is malformed: {other}"),
    })?;
    let Value::Dict(items) = value else {
        return Err("the .npy header is not a Python dict".to_string());
    };
    let field = |key: &str| {
        items
            .iter()
            .find_map(|(k, v)| matches!(k, Value::String(s) if s == key).then_some(v))
            .ok_or_else(|| format!("the .npy header has no '{key}'"))
    };
    let descr = match field("descr")? {
        Value::String(s) => s.clone(),
        Value::List(_) | Value::Tuple(_) => STRUCTURED.to_string(),
        other => return Err(format!("the .npy header's 'descr' is {}, expected a string", describe(other))),
    };
    let fortran_order = match field("fortran_order")? {
        Value::Boolean(b) => *b,
        other => {
            return Err(format!("the .npy header's 'fortran_order' is {}, expected True or False", describe(other)))
        }
    };
    let shape = match field("shape")? {
        Value::Tuple(dims) | Value::List(dims) => dims.iter().map(dimension).collect::<Result<Vec<usize>, String>>()?,
        other => return Err(format!("the .npy header's 'shape' is {}, expected a tuple", describe(other))),
    };
    Ok((descr, fortran_order, shape))
}

/// One entry of a header's `shape`.
fn dimension(value: &Value) -> Result<usize, String> {
    match value {
        Value::Integer(n) if n.sign() == Sign::Minus => {
            Err(format!("the .npy header's 'shape' holds {n}, expected integers ≥ 0"))
        }
        Value::Integer(n) => {
            usize::try_from(n).map_err(|_| "the .npy header holds a number too large for this machine".to_string())
        }
        other => Err(format!("the .npy header's 'shape' holds {}, expected integers", describe(other))),
    }
}

/// A header value in a message: scalars as Python writes them, others by their kind. (Not the
/// crate's `Display`, which fails, and so would panic in `to_string`, on a value it cannot write.)
fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("'{s}'"),
        Value::Integer(n) => BigInt::to_string(n),
        Value::Boolean(true) => "True".to_string(),
        Value::Boolean(false) => "False".to_string(),
        Value::None => "None".to_string(),
        Value::Tuple(_) | Value::List(_) => "a sequence".to_string(),
        Value::Set(_) => "a set".to_string(),
        Value::Dict(_) => "a dict".to_string(),
        Value::Float(x) => format!("{x:?}"),
        Value::Complex(_) => "a complex number".to_string(),
        Value::Bytes(_) => "bytes".to_string(),
    }
}

/// The header as the crate is to read it, or why it is refused: at most [`MAX_HEADER_TEXT`] bytes
/// and [`MAX_DEPTH`] brackets deep. Also made one line (the crate's grammar has no newlines; numpy
/// ends the header with one), with Python 2's long integers (`3L`) written as plain ones, as
/// numpy does when it reads them; every byte stays where it was, so positions in the crate's
/// messages are positions in the header.
///
/// Strings are skipped as the crate's grammar reads them (a quote opens one that the same quote
/// closes, a backslash escapes the next character), so that no bracket it reads as code goes
/// uncounted. The one escape that reaches further, `\N{...}`, the crate refuses anyway: so does
/// this, before the crate's parser sees what follows it.
fn prepare(header: &str) -> Result<String, String> {
    if header.len() > MAX_HEADER_TEXT {
        return Err(format!(
            "the .npy header is {} bytes, more than numpy's own limit of {MAX_HEADER_TEXT} for reading one",
            header.len()
        ));
    }
    if header.contains("\\N{") {
        return Err("the .npy header is malformed: it holds a `\\N{...}` escape, which is not supported".to_string());
    }
    let mut text = String::with_capacity(header.len());
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut after_digit = false;
    for c in header.chars() {
        let c = if matches!(c, '\n' | '\r') { ' ' } else { c };
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' => quote = Some(c),
                '(' | '[' | '{' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err("the .npy header nests too deeply".to_string());
                    }
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                'L' if after_digit => {
                    text.push(' ');
                    after_digit = false;
                    continue;
                }
                _ => {}
            },
        }
        after_digit = quote.is_none() && c.is_ascii_digit();
        text.push(c);
    }
    Ok(text)
}

/// The crate's syntax error (pest's message: `--> LINE:COL`, the line, a caret, `= expected ...`)
/// in our words, with the byte it points at. `text` is one line, so COL counts its chars.
fn syntax_error(text: &str, message: &str) -> String {
    let column = message
        .split_once("--> 1:")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse::<usize>().ok());
    let at = column
        .and_then(|column| column.checked_sub(1))
        .and_then(|n| text.char_indices().map(|(i, _)| i).chain([text.len()]).nth(n));
    let detail = message.lines().rev().find_map(|line| line.trim().strip_prefix("= ")).map(str::trim);
    let (Some(at), Some(detail)) = (at, detail) else {
        let message: Vec<&str> = message.split_whitespace().collect();
        return format!("the .npy header is malformed: {}", message.join(" "));
    };
    let found = text.get(at..).and_then(|rest| rest.chars().next());
    let what = match (detail.strip_prefix("expected "), found) {
        (Some("EOI"), _) => return format!("the .npy header has text after its dict, at byte {at}"),
        // A bare word where a value goes: the only ones a literal may hold.
        (Some("value"), Some(c)) if c.is_alphabetic() => "True, False or None",
        (Some("value"), _) => "a value",
        (Some(expected), _) => expected,
        (None, _) => return format!("the .npy header is malformed: {detail} at byte {at}"),
    };
    match found {
        Some(c) => format!("the .npy header is malformed: expected {what} at byte {at}, found `{c}`"),
        None => format!("the .npy header is malformed: expected {what}, found its end"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(header: &str) -> String {
        match parse_header(header) {
            Ok(fields) => panic!("{header:?} reads as {fields:?}"),
            Err(message) => message,
        }
    }

    fn fields(descr: &str, fortran_order: bool, shape: &[usize]) -> Result<(String, bool, Vec<usize>), String> {
        Ok((descr.to_string(), fortran_order, shape.to_vec()))
    }

    #[test]
    fn headers_numpy_writes() {
        let padded = format!("{:<117}\n", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
        assert_eq!(parse_header(&padded), fields("<f4", false, &[2, 3]));
        assert_eq!(parse_header("{'descr': '>f8', 'fortran_order': True, 'shape': (), }"), fields(">f8", true, &[]));
        // Python 2: long integers, on any line.
        assert_eq!(
            parse_header("{'descr': '<f2',\n 'fortran_order': False,\r\n 'shape': (2L, 30L), }\n"),
            fields("<f2", false, &[2, 30])
        );
        // Structured dtypes, as deep as numpy nests them (a nested record with a subarray field);
        // brackets, quotes and `L`s inside strings are text.
        for descr in [
            "[('x', '<f4'), ('y', '<i8')]",
            "[('a', [('b', '<f4', (2, 3))])]",
            "[('((([[[{{{', '<f4'), (\"it's\", '<f4'), ('3L', '<f4'), ('\\')', '<f4')]",
            "[('é', '<f4')]",
        ] {
            let header = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (4,), }}");
            assert_eq!(parse_header(&header), fields(STRUCTURED, false, &[4]), "{header}");
        }
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        let dict = |shape: &str| format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}}}");
        let cases: &[(String, &str)] = &[
            // Unbalanced brackets.
            (dict("(2,)").trim_end_matches('}').to_string(), "malformed: expected"),
            (dict("(2,)") + "}", "has text after its dict, at byte 55"),
            (dict("(2,))"), "malformed"),
            ("}{".to_string(), "malformed: expected a value at byte 0, found `}`"),
            ("".to_string(), "malformed: expected a value, found its end"),
            // Nesting: refused before the crate's parser sees it, whatever hides in strings.
            ("(".repeat(5000), "nests too deeply"),
            (dict(&format!("{}1{}", "[".repeat(6), "]".repeat(6))), "nests too deeply"),
            (format!("{{'a': ']]]]]]]]', 'b': {}", "[".repeat(6)), "nests too deeply"),
            (format!("{{'a': '\\']]]]]]]]', 'b': {}", "[".repeat(6)), "nests too deeply"),
            (format!("{{'a': '\\N{{'}}]]]]]]]]', 'b': {}", "[".repeat(6)), "`\\N{...}` escape"),
            (format!("{{'descr': '{}', 'fortran_order': False, 'shape': ()}}", "x".repeat(10_000)), "limit of 10000"),
            // Non-ASCII: positions are bytes, and the character is shown whole.
            ("{'dèscr': '<f4', 'fortran_order': Maybe, 'shape': ()}".to_string(), "at byte 35, found `M`"),
            ("{'descr': '<f4', 'fortran_order': Fålse, 'shape': ()}".to_string(), "at byte 34, found `F`"),
            ("{'dèscr': '<f4', 'fortran_order': ü, 'shape': ()}".to_string(), "at byte 35, found `ü`"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': () ü}".to_string(), "malformed"),
            ("{'dèscr': '<f4', 'fortran_order': False, 'shape': ()}".to_string(), "has no 'descr'"),
            ("{'descr': '\u{0}', 'fortran_order': False, 'shape': (\u{0},)}".to_string(), "found `\u{0}`"),
            // Shapes.
            (dict("(-2, 3)"), "'shape' holds -2, expected integers ≥ 0"),
            (dict("(2, 99999999999999999999999)"), "a number too large for this machine"),
            (dict(&format!("({},)", "9".repeat(5000))), "a number too large for this machine"),
            (dict("(2.5,)"), "'shape' holds 2.5, expected integers"),
            (dict("(1e999,)"), "'shape' holds inf, expected integers"),
            (dict("(1j,)"), "'shape' holds a complex number"),
            (dict("((2,),)"), "'shape' holds a sequence"),
            (dict("3"), "'shape' is 3, expected a tuple"),
            (dict("{2}"), "'shape' is a set, expected a tuple"),
            (dict("(2)"), "malformed"),
            // Missing keys and wrong types.
            ("{}".to_string(), "has no 'descr'"),
            ("{'descr': '<f4', 'shape': ()}".to_string(), "has no 'fortran_order'"),
            ("{'descr': '<f4', 'fortran_order': False}".to_string(), "has no 'shape'"),
            ("{'descr': 4, 'fortran_order': False, 'shape': ()}".to_string(), "'descr' is 4, expected a string"),
            ("{'descr': '<f4', 'fortran_order': 0, 'shape': ()}".to_string(), "'fortran_order' is 0"),
            ("{'descr': '<f4', 'fortran_order': Maybe, 'shape': ()}".to_string(), "expected True, False or None"),
            ("['<f4', False, (2,)]".to_string(), "not a Python dict"),
            ("{'descr': '<f4' 'fortran_order': False}".to_string(), "malformed"),
            ("{'descr': b'<f4', 'fortran_order': False, 'shape': ()}".to_string(), "'descr' is bytes"),
        ];
        for (header, words) in cases {
            let message = error(header);
            assert!(message.starts_with("the .npy header"), "{header:?}: {message}");
            assert!(message.contains(words), "{header:?}: {message:?} lacks {words:?}");
        }
    }

    /// The worst the guards let through (nested sets, which the crate's parser reads three times
    /// at each level, as deep as allowed, over a long header) still reads.
    #[test]
    fn hostile_headers_within_the_limits_are_read() {
        let deep = format!("{}1{}", "{".repeat(MAX_DEPTH - 2), "}".repeat(MAX_DEPTH - 2));
        let list = vec![deep; 100].join(", ");
        let header = format!("{{'descr': [{list}], 'fortran_order': False, 'shape': (), }}");
        assert!(header.len() < MAX_HEADER_TEXT);
        assert_eq!(parse_header(&header), fields(STRUCTURED, false, &[]));
    }

    proptest::proptest! {
        /// Any text, made of the characters that matter to the grammar, is read or refused.
        #[test]
        fn any_header_is_read_or_refused(header in "[{}()\\[\\]'\",:\\\\ \n0-9LeTFNj.+-xé]{0,80}") {
            let _ = parse_header(&header);
        }

        /// A header numpy would write, with one character changed, is read or refused.
        #[test]
        fn any_mutated_header_is_read_or_refused(at in 0usize..64, c in proptest::char::any()) {
            let mut header: Vec<char> = "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3), }".chars().collect();
            header[at % 60] = c;
            let _ = parse_header(&header.into_iter().collect::<String>());
        }
    }
}
