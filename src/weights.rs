//! Model weights from a file: named `f64` tensors, row-major.
//!
//! Two formats, told apart by their first bytes rather than by the file's extension (a renamed
//! file is still read, and a mislabelled one is reported for what it is):
//!
//! - **safetensors**: an 8-byte little-endian header length, a JSON header starting with `{`, then
//!   the tensors' bytes. Parsed and validated by the `safetensors` crate; we check the header
//!   first ourselves so that a cut-off file says how many bytes it lacks and a bad entry is named.
//! - **.npz**: a zip of `NAME.npy` members, as `numpy.savez` (stored) and `numpy.savez_compressed`
//!   (deflated) write them. The `.npy` header (a Python dict literal) is parsed here.
//!
//! Float tensors (F16, BF16, F32, F64) are converted to `f64` once, at load, so that
//! [`Weights::get`] is a map lookup and a shape comparison. Other dtypes (TransformerLens keeps
//! BOOL causal masks and integer buffers in its state dicts) are listed with their shape and
//! dtype but hold no data: loading never fails because of them, asking for one as floats does.
//! NaN and ±inf are located at load but reported only by `get`, for the tensor that is used:
//! TransformerLens's `IGNORE` buffer, for one, may legitimately be `-inf`.
//!
//! Nothing here panics on a bad file: every length is computed with checked arithmetic and
//! checked against the bytes present before it is used.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Cursor, Read};
use std::path::Path;

use half::{bf16, f16};
use safetensors::tensor::{SafeTensorError, SafeTensors, TensorInfo};
use safetensors::Dtype;
use thiserror::Error;

/// A dense tensor of `f64`, row-major (C order): the last index varies fastest.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// The tensors of one weights file, by name.
#[derive(Clone)]
pub struct Weights {
    /// Where the tensors came from (a file name), for messages.
    origin: String,
    /// Sorted by name, so that `names` and error messages are deterministic.
    entries: BTreeMap<String, Entry>,
}

/// One tensor as loaded: converted if it is a float, otherwise only described.
#[derive(Debug, Clone)]
enum Entry {
    Float {
        /// The dtype in the file (`F16`, ..., `F64`), for `Debug`.
        dtype: &'static str,
        tensor: Tensor,
        /// The first element (row-major flat index) that is NaN or infinite, and its value;
        /// found once at load so that `get` stays cheap.
        non_finite: Option<(usize, f64)>,
    },
    /// A dtype we do not convert (BOOL, integers, complex, ...): kept so it is listed and so
    /// that asking for it as floats names its dtype instead of calling it missing.
    Other { dtype: String, shape: Vec<usize> },
}

/// Why weights could not be loaded, or a tensor could not be handed out.
#[derive(Debug, Error)]
pub enum WeightError {
    /// The file could not be read at all.
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// Not a weights file we understand, or a corrupt one (bad header, bad JSON, bad zip, ...).
    #[error("{origin} is not a valid weights file: {detail}")]
    Format { origin: String, detail: String },
    /// The file is shorter than its own header says; `detail` gives the bytes expected and found.
    #[error("{origin} is truncated: {detail}")]
    Truncated { origin: String, detail: String },
    /// No tensor of that name; `similar` holds up to three names that do exist and look alike.
    #[error("tensor `{name}` is missing from {origin}{}", similar_hint(.similar))]
    Missing { name: String, origin: String, similar: Vec<String> },
    /// The tensor exists with another shape.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
    /// The tensor exists but is not a float tensor (BOOL, an integer type, ...).
    #[error("tensor `{name}` has dtype {found}, expected a float (F16, BF16, F32, F64)")]
    DType { name: String, found: String },
    /// The tensor holds NaN or an infinity; `index` is the first such element, row-major.
    #[error("tensor `{name}` holds {value} at {index:?}")]
    NonFinite { name: String, index: Vec<usize>, value: f64 },
}

/// A summary (name, dtype, shape), not the data: a model's weights are too many to print.
impl fmt::Debug for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Summary<'a>(&'a Entry);
        impl fmt::Debug for Summary<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.0 {
                    Entry::Float { dtype, tensor, .. } => write!(f, "{dtype} {:?}", tensor.shape),
                    Entry::Other { dtype, shape } => write!(f, "{dtype} {shape:?}"),
                }
            }
        }
        struct Summaries<'a>(&'a BTreeMap<String, Entry>);
        impl fmt::Debug for Summaries<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map().entries(self.0.iter().map(|(name, entry)| (name, Summary(entry)))).finish()
            }
        }
        f.debug_struct("Weights").field("origin", &self.origin).field("tensors", &Summaries(&self.entries)).finish()
    }
}

fn similar_hint(similar: &[String]) -> String {
    if similar.is_empty() {
        return String::new();
    }
    let names: Vec<String> = similar.iter().map(|s| format!("`{s}`")).collect();
    format!("; similar names: {}", names.join(", "))
}

impl Weights {
    /// Reads and parses a safetensors or .npz file (see the module documentation).
    pub fn load(path: &Path) -> Result<Weights, WeightError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| WeightError::Io { path: origin.clone(), source })?;
        Weights::from_bytes(&bytes, &origin)
    }

    /// Parses the bytes of a safetensors or .npz file. `origin` (a file name) is used only in
    /// messages, and as a hint when the bytes are too few to tell the format by content.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Weights, WeightError> {
        let entries = match detect(bytes, origin)? {
            Kind::Safetensors => read_safetensors(bytes, origin)?,
            Kind::Npz => read_npz(bytes, origin)?,
        };
        Ok(Weights { origin: origin.to_string(), entries })
    }

    /// Every tensor's name, floats and others, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Whether a tensor of that name exists, whatever its dtype.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The float tensor `name`, checked against `expected` shape; NaN/Inf rejected here.
    ///
    /// Cheap to call repeatedly: the data was converted at load, and the position of the first
    /// non-finite element (if any) recorded then too.
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<&Tensor, WeightError> {
        match self.entries.get(name) {
            None => Err(WeightError::Missing {
                name: name.to_string(),
                origin: self.origin.clone(),
                similar: similar_names(name, self.names()),
            }),
            Some(Entry::Other { dtype, .. }) => {
                Err(WeightError::DType { name: name.to_string(), found: dtype.clone() })
            }
            Some(Entry::Float { tensor, non_finite, .. }) => {
                if tensor.shape != expected {
                    return Err(WeightError::Shape {
                        name: name.to_string(),
                        expected: expected.to_vec(),
                        found: tensor.shape.clone(),
                    });
                }
                if let Some((flat, value)) = *non_finite {
                    return Err(WeightError::NonFinite {
                        name: name.to_string(),
                        index: unravel(flat, &tensor.shape),
                        value,
                    });
                }
                Ok(tensor)
            }
        }
    }
}

/// The row-major multi-index of flat position `flat` in `shape`.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (i, &dim) in index.iter_mut().zip(shape).rev() {
        if dim > 0 {
            *i = flat % dim;
            flat /= dim;
        }
    }
    index
}

/// Up to three existing names close to `wanted`: by edit distance, preferring names that end in
/// the same dotted component (`W_Q` for `blocks.1.attn.W_Q`), so a wrong layer number or a
/// missing prefix points at the tensors that were meant.
fn similar_names<'a>(wanted: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let last = |s: &'a str| s.rsplit('.').next().unwrap_or(s);
    let wanted_last = wanted.rsplit('.').next().unwrap_or(wanted);
    let threshold = (wanted.chars().count() / 4).max(2);
    let mut scored: Vec<(usize, bool, &str)> = names
        .filter_map(|name| {
            let distance = edit_distance(wanted, name);
            let same_last = last(name) == wanted_last;
            (distance <= threshold || same_last).then_some((distance, !same_last, name))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, _, name)| name.to_string()).collect()
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current.clear();
        current.push(i + 1);
        for (j, &cb) in b.iter().enumerate() {
            let substitute = previous.get(j).map_or(usize::MAX, |&d| d + usize::from(ca != cb));
            let delete = previous.get(j + 1).map_or(usize::MAX, |&d| d + 1);
            let insert = current.last().map_or(usize::MAX, |&d| d + 1);
            current.push(substitute.min(delete).min(insert));
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous.last().copied().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Format detection

enum Kind {
    Safetensors,
    Npz,
}

const ZIP_LOCAL: &[u8] = b"PK\x03\x04";
/// An empty zip (`numpy.savez` with no arrays) is only an end-of-central-directory record.
const ZIP_EMPTY: &[u8] = b"PK\x05\x06";
const NPY_MAGIC: &[u8] = b"\x93NUMPY";

fn format_error(origin: &str, detail: impl Into<String>) -> WeightError {
    WeightError::Format { origin: origin.to_string(), detail: detail.into() }
}

fn truncated(origin: &str, detail: impl Into<String>) -> WeightError {
    WeightError::Truncated { origin: origin.to_string(), detail: detail.into() }
}

/// Tells the format from the first bytes. The extension is consulted only when there are too few
/// bytes to decide, so that a cut-off file is reported as truncated rather than as unknown.
fn detect(bytes: &[u8], origin: &str) -> Result<Kind, WeightError> {
    if bytes.starts_with(ZIP_LOCAL) || bytes.starts_with(ZIP_EMPTY) {
        return Ok(Kind::Npz);
    }
    if bytes.get(8) == Some(&b'{') {
        return Ok(Kind::Safetensors);
    }
    if bytes.is_empty() {
        return Err(format_error(origin, "the file is empty (0 bytes)"));
    }
    if bytes.starts_with(NPY_MAGIC) {
        return Err(format_error(
            origin,
            "this is a single .npy array; save the weights with numpy.savez (an .npz archive) or as safetensors",
        ));
    }
    let extension = Path::new(origin).extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("safetensors") if bytes.len() <= 8 => return Ok(Kind::Safetensors),
        Some("npz") if ZIP_LOCAL.starts_with(bytes) => {
            return Err(truncated(
                origin,
                format!("expected a zip archive, found only {} byte(s) of its signature", bytes.len()),
            ))
        }
        _ => {}
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(format_error(
        origin,
        format!(
            "unknown format: neither safetensors (an 8-byte header length, then a JSON header starting with `{{`) \
             nor .npz (a zip archive, starting with `PK\\x03\\x04`); the file starts with bytes {}",
            head.join(" ")
        ),
    ))
}

// ---------------------------------------------------------------------------------------------
// safetensors

/// The safetensors crate's limit on the JSON header; a larger length prefix is corruption.
const MAX_HEADER: u64 = 100_000_000;

fn read_safetensors(bytes: &[u8], origin: &str) -> Result<BTreeMap<String, Entry>, WeightError> {
    let len = bytes.len();
    let Some(prefix) = bytes.get(..8).and_then(|p| <[u8; 8]>::try_from(p).ok()) else {
        return Err(truncated(
            origin,
            format!("the file ends inside the 8-byte header length: expected at least 8 bytes, found {len}"),
        ));
    };
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER {
        return Err(format_error(
            origin,
            format!(
                "the header length is {header_len} bytes, more than safetensors' limit of {MAX_HEADER}: \
                 not a safetensors file, or a corrupt one"
            ),
        ));
    }
    // Both fit in usize: header_len ≤ MAX_HEADER.
    let header_end = usize::try_from(header_len).ok().and_then(|n| n.checked_add(8));
    let Some(header) = header_end.and_then(|end| bytes.get(8..end)) else {
        return Err(truncated(
            origin,
            format!(
                "the file ends inside the JSON header: the header takes {header_len} bytes after the 8-byte length, \
                 so the file needs at least {} bytes; found {len}",
                header_len.saturating_add(8)
            ),
        ));
    };
    let header_end = 8 + header.len();
    let text =
        std::str::from_utf8(header).map_err(|e| format_error(origin, format!("the header is not UTF-8: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format_error(origin, format!("the header is not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = json else {
        return Err(format_error(origin, "the header is not a JSON object"));
    };

    // Check every entry, naming it, before the crate's validation (which names few).
    let mut data_end: Option<(usize, &str)> = None;
    for (name, value) in &map {
        if name == "__metadata__" {
            continue;
        }
        let info: TensorInfo = serde_json::from_value(value.clone())
            .map_err(|e| format_error(origin, format!("tensor `{name}` has a bad header entry: {e}")))?;
        let (start, end) = info.data_offsets;
        let bits = info.dtype.bitsize();
        let needed = info.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).and_then(|n| {
            // In bytes where possible, so that only truly unaddressable sizes overflow.
            if bits % 8 == 0 {
                n.checked_mul(bits / 8)
            } else {
                n.checked_mul(bits).filter(|b| b % 8 == 0).map(|b| b / 8)
            }
        });
        let Some(needed) = needed else {
            return Err(format_error(
                origin,
                format!("tensor `{name}`: shape {:?} of {} has no valid size in bytes", info.shape, info.dtype),
            ));
        };
        if end < start || end - start != needed {
            return Err(format_error(
                origin,
                format!(
                    "tensor `{name}`: shape {:?} of {} needs {needed} bytes, but its data_offsets [{start}, {end}] \
                     span {}",
                    info.shape,
                    info.dtype,
                    if end < start { "a negative range".to_string() } else { format!("{} bytes", end - start) }
                ),
            ));
        }
        if data_end.is_none_or(|(e, _)| end > e) {
            data_end = Some((end, name));
        }
    }
    if let Some((end, name)) = data_end {
        let file_end = header_end.checked_add(end);
        if file_end.is_none_or(|file_end| file_end > len) {
            let expected = file_end.map_or_else(|| format!("{header_end} + {end}"), |e| e.to_string());
            return Err(truncated(
                origin,
                format!(
                    "tensor `{name}`'s data ends at byte {expected} of the file (offset {end} after the \
                     {header_end}-byte header), but the file has only {len} bytes"
                ),
            ));
        }
    }

    let tensors = SafeTensors::deserialize(bytes).map_err(|e| {
        let detail = match e {
            SafeTensorError::MetadataIncompleteBuffer => {
                let used = header_end.saturating_add(data_end.map_or(0, |(end, _)| end));
                format!(
                    "the file has {len} bytes but its header accounts for {used}: {} byte(s) after the last tensor",
                    len.saturating_sub(used)
                )
            }
            SafeTensorError::InvalidOffset(name) => format!(
                "tensor `{name}` has invalid data_offsets: the tensors' data must follow one another, \
                 from offset 0, without gaps or overlaps"
            ),
            other => format!("invalid safetensors: {other}"),
        };
        format_error(origin, detail)
    })?;

    let mut entries = BTreeMap::new();
    for (name, view) in tensors.iter() {
        let data = view.data();
        let converted = match view.dtype() {
            Dtype::F16 => Some(("F16", decode::<2>(data, |b| f16::from_le_bytes(b).to_f64()))),
            Dtype::BF16 => Some(("BF16", decode::<2>(data, |b| bf16::from_le_bytes(b).to_f64()))),
            Dtype::F32 => Some(("F32", decode::<4>(data, |b| f64::from(f32::from_le_bytes(b))))),
            Dtype::F64 => Some(("F64", decode::<8>(data, f64::from_le_bytes))),
            _ => None,
        };
        let shape = view.shape().to_vec();
        let entry = match converted {
            Some((dtype, data)) => float_entry(dtype, shape, data),
            None => Entry::Other { dtype: view.dtype().to_string(), shape },
        };
        entries.insert(name.to_string(), entry);
    }
    Ok(entries)
}

/// Decodes fixed-size elements; `data.len()` is a multiple of `N` (checked by the callers).
fn decode<const N: usize>(data: &[u8], convert: impl Fn([u8; N]) -> f64) -> Vec<f64> {
    data.chunks_exact(N)
        .map(|chunk| {
            let mut bytes = [0u8; N];
            bytes.copy_from_slice(chunk);
            convert(bytes)
        })
        .collect()
}

fn float_entry(dtype: &'static str, shape: Vec<usize>, data: Vec<f64>) -> Entry {
    let non_finite = data.iter().position(|v| !v.is_finite()).and_then(|i| data.get(i).map(|&v| (i, v)));
    Entry::Float { dtype, tensor: Tensor { shape, data }, non_finite }
}

// ---------------------------------------------------------------------------------------------
// .npz

fn read_npz(bytes: &[u8], origin: &str) -> Result<BTreeMap<String, Entry>, WeightError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| format_error(origin, format!("not a readable zip archive (truncated or corrupt?): {e}")))?;
    let mut entries = BTreeMap::new();
    for i in 0..archive.len() {
        let mut member = archive
            .by_index(i)
            .map_err(|e| format_error(origin, format!("cannot open member #{i} of the zip archive: {e}")))?;
        if member.is_dir() {
            continue;
        }
        let member_name = member.name().to_string();
        let Some(name) = member_name.strip_suffix(".npy") else {
            return Err(format_error(
                origin,
                format!("member `{member_name}` is not a .npy array (numpy.savez names each array NAME.npy)"),
            ));
        };
        // Read no more than the member claims; the zip crate checks size and CRC at its end.
        let size = member.size();
        let mut content = Vec::new();
        member
            .by_ref()
            .take(size)
            .read_to_end(&mut content)
            .map_err(|e| format_error(origin, format!("member `{member_name}` is corrupt: {e}")))?;
        let mut rest = [0u8; 1];
        match member.read(&mut rest) {
            Ok(0) => {}
            Ok(_) => {
                return Err(format_error(origin, format!("member `{member_name}` is longer than the zip says")));
            }
            Err(e) => return Err(format_error(origin, format!("member `{member_name}` is corrupt: {e}"))),
        }
        let entry = parse_npy(&content).map_err(|e| match e {
            NpyError::Format(detail) => format_error(origin, format!("member `{member_name}`: {detail}")),
            NpyError::Truncated(detail) => truncated(origin, format!("member `{member_name}` {detail}")),
        })?;
        if entries.insert(name.to_string(), entry).is_some() {
            return Err(format_error(origin, format!("the archive holds `{member_name}` twice")));
        }
    }
    Ok(entries)
}

enum NpyError {
    Format(String),
    Truncated(String),
}

/// The element type named by a `.npy` header's `descr`.
struct NpyType {
    /// For messages: the safetensors name where there is one (`F32`, `BOOL`, `I64`), else the descr.
    name: String,
    /// Bytes per element, if fixed (object arrays have none).
    size: Option<usize>,
    /// `Some(little_endian)` for the floats we convert.
    float_little_endian: Option<bool>,
}

/// Parses one `.npy` file: magic, version, header length, header dict, data.
fn parse_npy(bytes: &[u8]) -> Result<Entry, NpyError> {
    let found = bytes.len();
    if found < NPY_MAGIC.len() {
        return Err(NpyError::Truncated(format!("ends inside the .npy magic: found {found} bytes")));
    }
    if !bytes.starts_with(NPY_MAGIC) {
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
        return Ok(Entry::Other { dtype: ty.name, shape });
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
    let Some(little) = ty.float_little_endian else {
        return Ok(Entry::Other { dtype: ty.name, shape });
    };
    let values = match (size, little) {
        (2, true) => decode::<2>(data, |b| f16::from_le_bytes(b).to_f64()),
        (2, false) => decode::<2>(data, |b| f16::from_be_bytes(b).to_f64()),
        (4, true) => decode::<4>(data, |b| f64::from(f32::from_le_bytes(b))),
        (4, false) => decode::<4>(data, |b| f64::from(f32::from_be_bytes(b))),
        (8, true) => decode::<8>(data, f64::from_le_bytes),
        _ => decode::<8>(data, f64::from_be_bytes),
    };
    let values = if fortran_order { fortran_to_c(&values, &shape) } else { values };
    let dtype = match size {
        2 => "F16",
        4 => "F32",
        _ => "F64",
    };
    Ok(float_entry(dtype, shape, values))
}

/// Maps a `descr` such as `<f4` to an element type. Floats are F16/F32/F64 in either byte order;
/// the other common types get the safetensors names (BOOL, I64, ...) so messages read the same
/// whichever format the weights came in.
fn npy_type(descr: &str) -> NpyType {
    if descr == STRUCTURED {
        return NpyType { name: descr.to_string(), size: None, float_little_endian: None };
    }
    let mut chars = descr.chars();
    let order = chars.next();
    let kind = chars.next();
    let size: Option<usize> = chars.as_str().parse().ok();
    let other = |name: String, size: Option<usize>| NpyType { name, size, float_little_endian: None };
    let quoted = || format!("`{descr}`");
    let little = match order {
        Some('<' | '|') => true,
        Some('>') => false,
        // '=' (native) never appears in files numpy writes; anything else is not a simple type.
        _ => return other(quoted(), None),
    };
    match (kind, size) {
        (Some('f'), Some(s @ (2 | 4 | 8))) if order != Some('|') => {
            NpyType { name: format!("F{}", s * 8), size: Some(s), float_little_endian: Some(little) }
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

/// Reorders column-major (Fortran) data into row-major.
fn fortran_to_c(values: &[f64], shape: &[usize]) -> Vec<f64> {
    if shape.len() < 2 {
        return values.to_vec();
    }
    // Column-major strides: the first index varies fastest. Products are ≤ values.len().
    let mut strides = Vec::with_capacity(shape.len());
    let mut stride = 1usize;
    for &dim in shape {
        strides.push(stride);
        stride = stride.saturating_mul(dim);
    }
    let mut index = vec![0usize; shape.len()];
    let mut offset = 0usize;
    let mut out = Vec::with_capacity(values.len());
    for _ in 0..values.len() {
        out.push(values.get(offset).copied().unwrap_or(f64::NAN));
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
