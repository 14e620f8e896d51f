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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use half::{bf16, f16};
use safetensors::tensor::TensorInfo;
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
    /// The open file of a safetensors file loaded with [`Weights::load`], whose tensors stay in
    /// it until asked for ([`Entry::Stored`]).
    file: Option<Arc<Mutex<File>>>,
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
    /// A float tensor of a safetensors file, left in the file: converted on the first [`Weights::get`]
    /// (then kept), or read a few rows or columns at a time ([`Weights::rows`],
    /// [`Weights::columns`]) without ever being held whole.
    Stored { dtype: Dtype, shape: Vec<usize>, offset: u64, loaded: OnceLock<Result<Loaded, String>> },
    /// A dtype we do not convert (BOOL, integers, complex, ...): kept so it is listed and so
    /// that asking for it as floats names its dtype instead of calling it missing.
    Other { dtype: String, shape: Vec<usize> },
}

/// A converted tensor and its first non-finite element.
#[derive(Debug, Clone)]
struct Loaded {
    tensor: Tensor,
    non_finite: Option<(usize, f64)>,
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
                    Entry::Stored { dtype, shape, .. } => write!(f, "{dtype} {shape:?}"),
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
    /// Opens a safetensors or .npz file (see the module documentation). A safetensors file's
    /// header is read and checked now, against the file's length; its tensors stay in the file
    /// until [`Weights::get`] converts one (or [`Weights::rows`] / [`Weights::columns`] read part of
    /// one), so loading costs nothing for the tensors a command does not use. An .npz archive is
    /// read and converted whole.
    pub fn load(path: &Path) -> Result<Weights, WeightError> {
        let origin = path.display().to_string();
        let io = |source| WeightError::Io { path: origin.clone(), source };
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut prefix = Vec::new();
        (&mut file).take(9).read_to_end(&mut prefix).map_err(io)?;
        if !matches!(detect(&prefix, &origin), Ok(Kind::Safetensors)) || len < 9 {
            let bytes = std::fs::read(path).map_err(io)?;
            return Weights::from_bytes(&bytes, &origin);
        }
        let header_len = u64::from_le_bytes(prefix[..8].try_into().expect("9 bytes were read"));
        // Read the header (at most safetensors' limit; `layout` reports a longer one).
        let want = 8 + header_len.min(MAX_HEADER + 1);
        (&mut file).take(want.saturating_sub(9)).read_to_end(&mut prefix).map_err(io)?;
        let len = usize::try_from(len).map_err(|_| format_error(&origin, "the file is too large to address"))?;
        let (header_end, infos) = safetensors_layout(&prefix, len, &origin)?;
        let mut entries = BTreeMap::new();
        for (name, info) in infos {
            let entry = match info.dtype {
                Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64 => Entry::Stored {
                    dtype: info.dtype,
                    offset: (header_end + info.data_offsets.0) as u64,
                    shape: info.shape,
                    loaded: OnceLock::new(),
                },
                other => Entry::Other { dtype: other.to_string(), shape: info.shape },
            };
            entries.insert(name, entry);
        }
        Ok(Weights { origin, entries, file: Some(Arc::new(Mutex::new(file))) })
    }

    /// Parses the bytes of a safetensors or .npz file, converting every float tensor. `origin` (a
    /// file name) is used only in messages, and as a hint when the bytes are too few to tell the
    /// format by content.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Weights, WeightError> {
        let entries = match detect(bytes, origin)? {
            Kind::Safetensors => read_safetensors(bytes, origin)?,
            Kind::Npz => read_npz(bytes, origin)?,
        };
        Ok(Weights { origin: origin.to_string(), entries, file: None })
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
    /// Cheap to call repeatedly: the data is converted once (at load, or at the first call for a
    /// tensor left in its file), and the position of the first non-finite element recorded then.
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<&Tensor, WeightError> {
        let loaded = match self.entry(name, expected)? {
            Entry::Float { tensor, non_finite, .. } => (tensor, *non_finite),
            Entry::Stored { dtype, shape, offset, loaded } => {
                let loaded = loaded.get_or_init(|| {
                    let count = shape.iter().product();
                    let data = self.read_elements(*dtype, *offset, count).map_err(|e| e.to_string())?;
                    let non_finite = first_non_finite(&data);
                    Ok(Loaded { tensor: Tensor { shape: shape.clone(), data }, non_finite })
                });
                let loaded = loaded.as_ref().map_err(|detail| WeightError::Io {
                    path: self.origin.clone(),
                    source: std::io::Error::other(detail.clone()),
                })?;
                (&loaded.tensor, loaded.non_finite)
            }
            Entry::Other { .. } => unreachable!("`entry` refuses non-float tensors"),
        };
        match loaded {
            (tensor, Some((flat, value))) => {
                Err(WeightError::NonFinite { name: name.to_string(), index: unravel(flat, &tensor.shape), value })
            }
            (tensor, None) => Ok(tensor),
        }
    }

    /// The data of the float tensor `name` (shape `expected`), row-major, NaN/Inf rejected, as
    /// [`Weights::get`] — but a tensor left in the file is read without being kept: for a caller
    /// that copies the data anyway and would otherwise hold it twice.
    pub fn read(&self, name: &str, expected: &[usize]) -> Result<Cow<'_, [f64]>, WeightError> {
        let data = match self.entry(name, expected)? {
            Entry::Stored { dtype, offset, loaded, .. } if loaded.get().is_none() => {
                Cow::Owned(self.read_elements(*dtype, *offset, expected.iter().product())?)
            }
            _ => return Ok(Cow::Borrowed(&self.get(name, expected)?.data)),
        };
        if let Some((flat, value)) = first_non_finite(&data) {
            return Err(WeightError::NonFinite { name: name.to_string(), index: unravel(flat, expected), value });
        }
        Ok(data)
    }

    /// Checks that the float tensor `name` exists with shape `expected`, without reading it.
    pub fn check(&self, name: &str, expected: &[usize]) -> Result<(), WeightError> {
        self.entry(name, expected).map(|_| ())
    }

    /// Rows `start .. start + n` of the float matrix `name` (shape `expected`, `[rows, cols]`),
    /// row-major, read from the file for a tensor left there. NaN/Inf rejected, with their index.
    pub fn rows(&self, name: &str, expected: [usize; 2], start: usize, n: usize) -> Result<Vec<f64>, WeightError> {
        let [_, cols] = expected;
        let data = match self.entry(name, &expected)? {
            Entry::Float { tensor, .. } => tensor.data[start * cols..(start + n) * cols].to_vec(),
            Entry::Stored { dtype, offset, .. } => {
                let skip = (start * cols * (dtype.bitsize() / 8)) as u64;
                self.read_elements(*dtype, offset + skip, n * cols)?
            }
            Entry::Other { .. } => unreachable!("`entry` refuses non-float tensors"),
        };
        check_finite(name, &data, |i| vec![start + i / cols.max(1), i % cols.max(1)])?;
        Ok(data)
    }

    /// Columns `start .. start + n` of the float matrix `name` (shape `expected`, `[rows, cols]`),
    /// as a row-major `[rows, n]` block; as [`Weights::rows`].
    pub fn columns(&self, name: &str, expected: [usize; 2], start: usize, n: usize) -> Result<Vec<f64>, WeightError> {
        let [rows, cols] = expected;
        let data = match self.entry(name, &expected)? {
            Entry::Float { tensor, .. } => {
                (0..rows).flat_map(|r| tensor.data[r * cols + start..r * cols + start + n].iter().copied()).collect()
            }
            Entry::Stored { dtype, offset, .. } => {
                let mut data = Vec::with_capacity(rows * n);
                for r in 0..rows {
                    let skip = ((r * cols + start) * (dtype.bitsize() / 8)) as u64;
                    data.extend(self.read_elements(*dtype, offset + skip, n)?);
                }
                data
            }
            Entry::Other { .. } => unreachable!("`entry` refuses non-float tensors"),
        };
        check_finite(name, &data, |i| vec![i / n.max(1), start + i % n.max(1)])?;
        Ok(data)
    }

    /// The float tensor `name` with shape `expected`, or why not.
    fn entry(&self, name: &str, expected: &[usize]) -> Result<&Entry, WeightError> {
        let entry = self.entries.get(name).ok_or_else(|| WeightError::Missing {
            name: name.to_string(),
            origin: self.origin.clone(),
            similar: similar_names(name, self.names()),
        })?;
        let shape = match entry {
            Entry::Other { dtype, .. } => {
                return Err(WeightError::DType { name: name.to_string(), found: dtype.clone() });
            }
            Entry::Float { tensor, .. } => &tensor.shape,
            Entry::Stored { shape, .. } => shape,
        };
        if shape != expected {
            return Err(WeightError::Shape {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: shape.clone(),
            });
        }
        Ok(entry)
    }

    /// `count` elements of `dtype` at byte `offset` of the file, converted.
    fn read_elements(&self, dtype: Dtype, offset: u64, count: usize) -> Result<Vec<f64>, WeightError> {
        let io = |source| WeightError::Io { path: self.origin.clone(), source };
        let file = self.file.as_ref().expect("stored tensors come with their file");
        let mut bytes = vec![0u8; count * (dtype.bitsize() / 8)];
        {
            let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            file.seek(SeekFrom::Start(offset)).map_err(io)?;
            file.read_exact(&mut bytes).map_err(io)?;
        }
        Ok(convert(dtype, &bytes).expect("stored tensors are floats"))
    }
}

/// The first element that is NaN or infinite, and its value.
fn first_non_finite(data: &[f64]) -> Option<(usize, f64)> {
    data.iter().position(|v| !v.is_finite()).and_then(|i| data.get(i).map(|&v| (i, v)))
}

/// Refuses a block holding NaN or an infinity, naming the tensor and the element's index.
fn check_finite(name: &str, data: &[f64], index: impl Fn(usize) -> Vec<usize>) -> Result<(), WeightError> {
    match first_non_finite(data) {
        Some((i, value)) => Err(WeightError::NonFinite { name: name.to_string(), index: index(i), value }),
        None => Ok(()),
    }
}

/// Little-endian floats of `dtype` as `f64`; `None` for a dtype that is not a float.
fn convert(dtype: Dtype, data: &[u8]) -> Option<Vec<f64>> {
    Some(match dtype {
        Dtype::F16 => decode::<2>(data, |b| f16::from_le_bytes(b).to_f64()),
        Dtype::BF16 => decode::<2>(data, |b| bf16::from_le_bytes(b).to_f64()),
        Dtype::F32 => decode::<4>(data, |b| f64::from(f32::from_le_bytes(b))),
        Dtype::F64 => decode::<8>(data, f64::from_le_bytes),
        _ => return None,
    })
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

/// Checks a safetensors header against the file's length `len`: `bytes` holds the file's start,
/// at least through the header when the file has one. Every entry is named in what goes wrong.
/// Returns where the data starts and every tensor's entry.
fn safetensors_layout(
    bytes: &[u8],
    len: usize,
    origin: &str,
) -> Result<(usize, Vec<(String, TensorInfo)>), WeightError> {
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
    let mut infos: Vec<(String, TensorInfo)> = Vec::new();
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
        infos.push((name.clone(), info));
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

    // The tensors' data must follow one another from offset 0, without gaps or overlaps, and end
    // where the file ends.
    let mut spans: Vec<(usize, usize, &str)> =
        infos.iter().map(|(n, i)| (i.data_offsets.0, i.data_offsets.1, n.as_str())).collect();
    spans.sort();
    let mut expected_start = 0;
    for &(start, end, name) in &spans {
        if start != expected_start {
            return Err(format_error(
                origin,
                format!(
                    "tensor `{name}` has invalid data_offsets: the tensors' data must follow one another, \
                     from offset 0, without gaps or overlaps"
                ),
            ));
        }
        expected_start = end;
    }
    let used = header_end.saturating_add(expected_start);
    if used != len {
        return Err(format_error(
            origin,
            format!(
                "the file has {len} bytes but its header accounts for {used}: {} byte(s) after the last tensor",
                len.saturating_sub(used)
            ),
        ));
    }
    Ok((header_end, infos))
}

/// Reads a whole safetensors file held in memory, converting every float tensor.
fn read_safetensors(bytes: &[u8], origin: &str) -> Result<BTreeMap<String, Entry>, WeightError> {
    let (header_end, infos) = safetensors_layout(bytes, bytes.len(), origin)?;
    let mut entries = BTreeMap::new();
    for (name, info) in infos {
        let (start, end) = info.data_offsets;
        let data = &bytes[header_end + start..header_end + end];
        let entry = match convert(info.dtype, data) {
            Some(data) => float_entry(dtype_name(info.dtype), info.shape, data),
            None => Entry::Other { dtype: info.dtype.to_string(), shape: info.shape },
        };
        entries.insert(name, entry);
    }
    Ok(entries)
}

fn dtype_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F16 => "F16",
        Dtype::BF16 => "BF16",
        Dtype::F32 => "F32",
        _ => "F64",
    }
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
