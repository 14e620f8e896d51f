//! Model weights from a file: named `f64` tensors, row-major.
//!
//! Three formats, told apart by their first bytes rather than by the file's extension (a renamed
//! file is still read, and a mislabelled one is reported for what it is), each read by its own
//! module:
//!
//! - **safetensors** (`safetensors.rs`): an 8-byte little-endian header length, a JSON header
//!   starting with `{`, then the tensors' bytes. Parsed and validated by the `safetensors` crate;
//!   the header is checked first so that a cut-off file says how many bytes it lacks and a bad
//!   entry is named.
//! - **.npz** (`npz.rs`): a zip of `NAME.npy` members, as `numpy.savez` (stored) and
//!   `numpy.savez_compressed` (deflated) write them, each one `.npy` array (`npy.rs`, whose
//!   header, a Python dict literal, is read by the `py_literal` crate).
//! - **`torch.save` checkpoints** (`torch.rs`, PyTorch ≥ 1.6): a zip with a `data.pkl` member
//!   (which tells it from an .npz), a pickle of the state dict run by a restricted machine
//!   (`pickle.rs`) that rebuilds tensors and dicts and refuses every other opcode and global by
//!   name, never running anything; each tensor a view of a storage member. The legacy format (not
//!   a zip) and bare pickles are refused with how to re-save them.
//!
//! A directory with a `config.json` is a HuggingFace model folder (`hf.rs`): its
//! `model.safetensors`, sharded safetensors or `pytorch_model.bin` are each opened as above and
//! their tensors presented under TransformerLens's names, each a strided view of HF's tensor.
//!
//! A format module only lists the tensors: for each its name, shape, dtype and where its bytes
//! are (in memory, or at an offset of the open file, possibly strided). Everything else is shared
//! and done here, in one place, whatever the format: the conversion of F16, BF16, F32 and F64 to
//! `f64` (`convert.rs`), the shape check, the search for NaN and ±inf with its index, and the
//! similar names a missing tensor's message suggests (`check.rs`).
//!
//! A safetensors file or a torch checkpoint opened with [`Weights::load`] keeps its tensors in the
//! file until they are asked for: [`Weights::get`] converts one (once, then kept),
//! [`Weights::read`] converts one without keeping it, [`Weights::rows`] and [`Weights::columns`]
//! read a block (of a strided view, the bytes the block spans, once). An .npz archive keeps its
//! members compressed until asked for; a safetensors file or a checkpoint given to
//! [`Weights::from_bytes`] is converted whole at load. Other dtypes (TransformerLens keeps BOOL causal masks and integer buffers in its state
//! dicts) are listed with their shape and dtype but hold no data: loading never fails because of
//! them, asking for one as floats does. NaN and ±inf are reported only for the tensor that is used:
//! TransformerLens's `IGNORE` buffer, for one, may legitimately be `-inf`.
//!
//! Nothing here panics on a bad file: every length is computed with checked arithmetic and
//! checked against the bytes present before it is used.

mod check;
mod convert;
pub mod hf;
mod npy;
mod npz;
mod pickle;
mod safetensors;
mod torch;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use thiserror::Error;

use self::convert::Float;

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
    /// The open files whose tensors stay in them until asked for ([`Entry::Stored`], which names
    /// its file by index): a safetensors file or a `torch.save` checkpoint loaded with
    /// [`Weights::load`].
    files: Vec<Arc<File>>,
    /// The open archive of an .npz, whose members stay in it until asked for ([`Entry::Member`]).
    archive: Option<Arc<Mutex<npz::Archive>>>,
}

/// One tensor as loaded: converted if it is a float, otherwise only described.
#[derive(Debug, Clone)]
enum Entry {
    Float {
        /// The dtype in the file, for `Debug`.
        dtype: Float,
        tensor: Tensor,
        /// The first element (row-major flat index) that is NaN or infinite, and its value;
        /// found once at load so that `get` stays cheap.
        non_finite: Option<(usize, f64)>,
    },
    /// A float tensor left in an open file: converted on the first [`Weights::get`] (then
    /// kept), or read a few rows or columns at a time ([`Weights::rows`], [`Weights::columns`])
    /// without ever being held whole.
    Stored { dtype: Float, shape: Vec<usize>, at: At, loaded: OnceLock<Result<Loaded, String>> },
    /// A member of an .npz archive, left compressed in it: its `.npy` header is read when the
    /// tensor is first asked for (so a member the model does not use costs nothing, however
    /// hostile its header), its data decompressed and converted on the first [`Weights::get`]
    /// (then kept), never beyond the bytes its header's shape implies.
    Member {
        index: usize,
        header: OnceLock<Result<MemberHeader, (bool, String)>>,
        loaded: OnceLock<Result<Loaded, String>>,
    },
    /// A dtype we do not convert (BOOL, integers, complex, ...): kept so it is listed and so
    /// that asking for it as floats names its dtype instead of calling it missing.
    Other { dtype: String, shape: Vec<usize> },
}

/// Where a stored tensor's elements are: in file `file` of [`Weights::files`], element `i`
/// (a multi-index) at byte `offset + Σ i_k·strides[k]·size`; `strides` in elements, `None` for
/// row-major (contiguous). The format module that listed it has checked that every element lies
/// inside the bytes it owns.
#[derive(Debug, Clone)]
struct At {
    file: usize,
    offset: u64,
    strides: Option<Vec<usize>>,
}

/// What an .npz member's `.npy` header says, read when the tensor is first asked for; its error
/// kept as whether the member is truncated, and the detail.
#[derive(Debug, Clone)]
struct MemberHeader {
    dtype: DType,
    shape: Vec<usize>,
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
    /// A block asked of [`Weights::rows`] or [`Weights::columns`] that does not lie inside the
    /// tensor: `what` is `"rows"` or `"columns"`, the block `start .. start + n`.
    #[error("tensor `{name}` has shape {shape:?}: {what} {start}..{} are out of range (it has {} {what})", *.start as u128 + *.n as u128, if *.what == "rows" { .shape[0] } else { .shape[1] })]
    OutOfRange { name: String, what: &'static str, start: usize, n: usize, shape: [usize; 2] },
    /// A HuggingFace folder's `config.json` cannot be read, or describes a model pathc does not
    /// compute exactly (`hf::config`).
    #[error(transparent)]
    Config(#[from] hf::config::ConfigError),
    /// A HuggingFace folder holds a tensor the family's mapping does not use (and HF does not
    /// ignore): leaving it out would compute another model.
    #[error("{origin} holds tensor `{name}`, which a `{family}` model does not have: leaving it out would compute another model")]
    Unexpected { name: String, origin: String, family: &'static str },
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
                    Entry::Member { header, .. } => match header.get() {
                        Some(Ok(MemberHeader { dtype: DType::Float(dtype), shape })) => write!(f, "{dtype} {shape:?}"),
                        Some(Ok(MemberHeader { dtype: DType::Other(dtype), shape })) => write!(f, "{dtype} {shape:?}"),
                        Some(Err(_)) => write!(f, "an .npz member with a bad header"),
                        None => write!(f, "an .npz member (header not read yet)"),
                    },
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

/// `Ok` if `start .. start + n` lies inside dimension `what` (`"rows"`: 0, `"columns"`: 1) of
/// `shape`, without overflow.
fn in_range(name: &str, what: &'static str, shape: [usize; 2], start: usize, n: usize) -> Result<(), WeightError> {
    let length = if what == "rows" { shape[0] } else { shape[1] };
    match start.checked_add(n) {
        Some(end) if end <= length => Ok(()),
        _ => Err(WeightError::OutOfRange { name: name.to_string(), what, start, n, shape }),
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
    /// Opens a safetensors file, an .npz or a `torch.save` checkpoint (see the module
    /// documentation). A safetensors file's header, or a checkpoint's pickle and zip directory, is
    /// read and checked now, against the file's length; the tensors stay in the file until
    /// [`Weights::get`] converts one (or [`Weights::rows`] / [`Weights::columns`] read part of one),
    /// so loading costs nothing for the tensors a command does not use. An .npz archive's members
    /// are decompressed when their tensor is asked for.
    pub fn load(path: &Path) -> Result<Weights, WeightError> {
        let origin = path.display().to_string();
        let io = io_error(&origin);
        // Both formats are read by seeking (a header, then tensors or members where they are): a
        // pipe or FIFO cannot be, and is refused before it is opened (opening a FIFO waits).
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            // A HuggingFace model folder (a `config.json` beside its weights files): its tensors
            // under TransformerLens's names and layouts, each a view of HF's tensor in its file.
            if hf::is_model_folder(path) {
                return hf::load(path);
            }
            return Err(io(std::io::Error::other(
                "it is a directory without a config.json (a HuggingFace model folder has one)",
            )));
        }
        if !meta.is_file() {
            return Err(format_error(
                &origin,
                "it is not a regular file (a pipe, FIFO or device); pathc reads weights from a regular file it can seek in: save them to one first",
            ));
        }
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut prefix = Vec::new();
        (&mut file).take(9).read_to_end(&mut prefix).map_err(io)?;
        let mut listing = Listing::default();
        match detect(&prefix, &origin) {
            Ok(Kind::Safetensors) if len >= 9 => {
                safetensors::list_file(&mut file, prefix, len, &origin, &mut listing)?;
                Ok(Weights { origin, entries: listing.entries, files: vec![Arc::new(file)], archive: None })
            }
            Ok(Kind::Zip) => {
                file.seek(SeekFrom::Start(0)).map_err(io)?;
                let mut archive = zip::ZipArchive::new(file).map_err(|e| npz::zip_error(&origin, e))?;
                if torch::is_torch(&archive) {
                    let found = torch::index(&mut archive, len, &origin)?;
                    // The archive's file is the one open file: `Weights::files[0]`.
                    listing.file = 0;
                    torch::list_file(found, &mut listing);
                    let file = archive.into_inner();
                    return Ok(Weights {
                        origin,
                        entries: listing.entries,
                        files: vec![Arc::new(file)],
                        archive: None,
                    });
                }
                let mut file = archive.into_inner();
                file.seek(SeekFrom::Start(0)).map_err(io)?;
                let mut archive = npz::open(Box::new(file), &origin)?;
                npz::list(&mut archive, &origin, &mut listing)?;
                Ok(Weights {
                    origin,
                    entries: listing.entries,
                    files: Vec::new(),
                    archive: Some(Arc::new(Mutex::new(archive))),
                })
            }
            // Too short to tell, or not a weights file: `from_bytes` says which, from what is there.
            _ => Weights::from_bytes(&prefix, &origin),
        }
    }

    /// Parses the bytes of a safetensors file, an .npz or a `torch.save` checkpoint, converting
    /// every float tensor (a checkpoint's strided views gathered row-major). `origin` (a
    /// file name) is used only in messages, and as a hint when the bytes are too few to tell the
    /// format by content.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Weights, WeightError> {
        let mut listing = Listing::default();
        let archive = match detect(bytes, origin)? {
            Kind::Safetensors => {
                safetensors::list(bytes, origin, &mut listing)?;
                None
            }
            Kind::Zip => {
                let mut torch_archive =
                    zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| npz::zip_error(origin, e))?;
                if torch::is_torch(&torch_archive) {
                    let found = torch::index(&mut torch_archive, bytes.len() as u64, origin)?;
                    torch::list_memory(found, bytes, &mut listing);
                    None
                } else {
                    let mut archive = npz::open(Box::new(std::io::Cursor::new(bytes.to_vec())), origin)?;
                    npz::list(&mut archive, origin, &mut listing)?;
                    Some(Arc::new(Mutex::new(archive)))
                }
            }
        };
        Ok(Weights { origin: origin.to_string(), entries: listing.entries, files: Vec::new(), archive })
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
            Entry::Stored { loaded, .. } | Entry::Member { loaded, .. } => {
                let loaded = loaded.get_or_init(|| {
                    let data = self.read_left(name, expected).map_err(|e| e.to_string())?;
                    let non_finite = check::first_non_finite(&data);
                    Ok(Loaded { tensor: Tensor { shape: expected.to_vec(), data }, non_finite })
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
            (tensor, Some((flat, value))) => Err(WeightError::NonFinite {
                name: name.to_string(),
                index: check::unravel(flat, &tensor.shape),
                value,
            }),
            (tensor, None) => Ok(tensor),
        }
    }

    /// The data of the float tensor `name` (shape `expected`), row-major, NaN/Inf rejected, as
    /// [`Weights::get`] — but a tensor left in the file is read without being kept: for a caller
    /// that copies the data anyway and would otherwise hold it twice.
    pub fn read(&self, name: &str, expected: &[usize]) -> Result<Cow<'_, [f64]>, WeightError> {
        let data = match self.entry(name, expected)? {
            Entry::Stored { loaded, .. } | Entry::Member { loaded, .. } if loaded.get().is_none() => {
                Cow::Owned(self.read_left(name, expected)?)
            }
            _ => return Ok(Cow::Borrowed(&self.get(name, expected)?.data)),
        };
        check::check_finite(name, &data, |flat| check::unravel(flat, expected))?;
        Ok(data)
    }

    /// Checks that the float tensor `name` exists with shape `expected`, without reading it.
    pub fn check(&self, name: &str, expected: &[usize]) -> Result<(), WeightError> {
        self.entry(name, expected).map(|_| ())
    }

    /// Rows `start .. start + n` of the float matrix `name` (shape `expected`, `[rows, cols]`),
    /// row-major, read from the file for a tensor left there. NaN/Inf rejected, with their index;
    /// a block not inside the matrix is [`WeightError::OutOfRange`].
    pub fn rows(&self, name: &str, expected: [usize; 2], start: usize, n: usize) -> Result<Vec<f64>, WeightError> {
        let [_, cols] = expected;
        let entry = self.entry(name, &expected)?;
        in_range(name, "rows", expected, start, n)?;
        let data = match entry {
            Entry::Float { tensor, .. } => tensor.data[start * cols..(start + n) * cols].to_vec(),
            Entry::Stored { dtype, at: at @ At { strides: None, .. }, .. } => {
                let skip = (start * cols * dtype.size()) as u64;
                self.read_elements(at.file, *dtype, at.offset + skip, n * cols)?
            }
            Entry::Stored { dtype, at, .. } => self.gather(*dtype, at, &[start, 0], &[n, cols])?,
            Entry::Member { .. } => self.get(name, &expected)?.data[start * cols..(start + n) * cols].to_vec(),
            Entry::Other { .. } => unreachable!("`entry` refuses non-float tensors"),
        };
        check::check_finite(name, &data, |i| vec![start + i / cols.max(1), i % cols.max(1)])?;
        Ok(data)
    }

    /// Columns `start .. start + n` of the float matrix `name` (shape `expected`, `[rows, cols]`),
    /// as a row-major `[rows, n]` block; as [`Weights::rows`].
    pub fn columns(&self, name: &str, expected: [usize; 2], start: usize, n: usize) -> Result<Vec<f64>, WeightError> {
        let [rows, cols] = expected;
        let entry = self.entry(name, &expected)?;
        in_range(name, "columns", expected, start, n)?;
        let data = match entry {
            Entry::Float { tensor, .. } => {
                (0..rows).flat_map(|r| tensor.data[r * cols + start..r * cols + start + n].iter().copied()).collect()
            }
            Entry::Stored { dtype, at: at @ At { strides: None, .. }, .. } => {
                let mut data = Vec::with_capacity(rows * n);
                for r in 0..rows {
                    let skip = ((r * cols + start) * dtype.size()) as u64;
                    data.extend(self.read_elements(at.file, *dtype, at.offset + skip, n)?);
                }
                data
            }
            Entry::Stored { dtype, at, .. } => self.gather(*dtype, at, &[0, start], &[rows, n])?,
            Entry::Member { .. } => {
                let tensor = self.get(name, &expected)?;
                (0..rows).flat_map(|r| tensor.data[r * cols + start..r * cols + start + n].iter().copied()).collect()
            }
            Entry::Other { .. } => unreachable!("`entry` refuses non-float tensors"),
        };
        check::check_finite(name, &data, |i| vec![i / n.max(1), start + i % n.max(1)])?;
        Ok(data)
    }

    /// Rows `start .. start + n` of the float matrix `name` as [`Weights::rows`] does, but in
    /// `f32` and only where that is exact and cheap: `Some` for a matrix stored contiguously in
    /// the file as F32, F16 or BF16 (read as it is, each element widened at most); `None` for any
    /// other (F64, strided, already converted), which [`Weights::rows`] reads.
    pub fn rows_f32(
        &self,
        name: &str,
        expected: [usize; 2],
        start: usize,
        n: usize,
    ) -> Result<Option<Vec<f32>>, WeightError> {
        let entry = self.entry(name, &expected)?;
        in_range(name, "rows", expected, start, n)?;
        self.leading_f32(entry, name, &expected, start, n)
    }

    /// The float tensor `name` (shape `expected`, any rank) as [`Weights::read`] gives it,
    /// row-major, but in `f32` where [`Weights::rows_f32`] would be `Some` (a tensor stored
    /// contiguously as F32, F16 or BF16, not already read): what `read` would give, each element
    /// narrowed exactly, without the `f64` copy. `None` for any other.
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Option<Vec<f32>>, WeightError> {
        let entry = self.entry(name, expected)?;
        self.leading_f32(entry, name, expected, 0, expected.first().copied().unwrap_or(1))
    }

    /// Entries `start .. start + n` of the first index of `name` (its `entry`, checked by the
    /// caller), in `f32`,
    /// NaN/Inf rejected with their index; `None` unless the tensor is stored contiguously in the
    /// file as a dtype that `f32` holds exactly and has not been read into memory.
    fn leading_f32(
        &self,
        entry: &Entry,
        name: &str,
        expected: &[usize],
        start: usize,
        n: usize,
    ) -> Result<Option<Vec<f32>>, WeightError> {
        let inner: usize = expected.iter().skip(1).product();
        let data = match entry {
            Entry::Stored { dtype, at: at @ At { strides: None, .. }, loaded, .. }
                if convert::to_f32_exact(*dtype) && loaded.get().is_none() =>
            {
                let skip = (start * inner * dtype.size()) as u64;
                let mut data = vec![0.0f32; n * inner];
                self.read_f32_into(*dtype, at.file, at.offset + skip, &mut data)?;
                data
            }
            _ => return Ok(None),
        };
        check::check_finite(name, &data, |i| {
            let mut index = check::unravel(i, expected);
            if let Some(first) = index.first_mut() {
                *first += start;
            }
            index
        })?;
        Ok(Some(data))
    }

    /// Columns `start .. start + n` of the float matrix `name`, row-major `[rows, n]`, as
    /// [`Weights::columns`] does, in `f32` where [`Weights::rows_f32`] would be `Some`.
    pub fn columns_f32(
        &self,
        name: &str,
        expected: [usize; 2],
        start: usize,
        n: usize,
    ) -> Result<Option<Vec<f32>>, WeightError> {
        let [rows, cols] = expected;
        let entry = self.entry(name, &expected)?;
        in_range(name, "columns", expected, start, n)?;
        let data = match entry {
            Entry::Stored { dtype, at: at @ At { strides: None, .. }, .. } if convert::to_f32_exact(*dtype) => {
                // Each row's entries read into their place (`W_U`'s column chunks are `d_model`
                // reads each).
                let mut data = vec![0.0f32; rows * n];
                for (r, row) in data.chunks_exact_mut(n.max(1)).enumerate() {
                    self.read_f32_into(*dtype, at.file, at.offset + ((r * cols + start) * dtype.size()) as u64, row)?;
                }
                data
            }
            _ => return Ok(None),
        };
        check::check_finite(name, &data, |i| vec![i / n.max(1), start + i % n.max(1)])?;
        Ok(Some(data))
    }

    /// The float tensor `name` with shape `expected`, or why not: the one shape check, for every
    /// format and every way of reading.
    fn entry(&self, name: &str, expected: &[usize]) -> Result<&Entry, WeightError> {
        let entry = self.entries.get(name).ok_or_else(|| WeightError::Missing {
            name: name.to_string(),
            origin: self.origin.clone(),
            similar: check::similar_names(name, self.names()),
        })?;
        let dtype_error = |found: &String| WeightError::DType { name: name.to_string(), found: found.clone() };
        let shape = match entry {
            Entry::Other { dtype, .. } => return Err(dtype_error(dtype)),
            Entry::Float { tensor, .. } => &tensor.shape,
            Entry::Stored { shape, .. } => shape,
            Entry::Member { index, header, .. } => match self.member_header(*index, header)? {
                MemberHeader { dtype: DType::Other(dtype), .. } => return Err(dtype_error(dtype)),
                MemberHeader { shape, .. } => shape,
            },
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

    /// The data of a tensor left in the file or the archive (`Stored`, `Member`), converted, not
    /// kept.
    fn read_left(&self, name: &str, shape: &[usize]) -> Result<Vec<f64>, WeightError> {
        match self.entries.get(name) {
            Some(Entry::Stored { dtype, at: at @ At { strides: None, .. }, .. }) => {
                self.read_elements(at.file, *dtype, at.offset, shape.iter().product())
            }
            Some(Entry::Stored { dtype, at, .. }) => self.gather(*dtype, at, &vec![0; shape.len()], shape),
            Some(Entry::Member { index, header, .. }) => {
                let Ok(MemberHeader { dtype: DType::Float(dtype), .. }) = self.member_header(*index, header) else {
                    unreachable!("`entry` has read the header of a float member")
                };
                let archive = self.archive.as_ref().expect("members come with their archive");
                let mut archive = archive.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                Ok(convert::to_f64(*dtype, &npz::read_member(&mut archive, *index, &self.origin)?))
            }
            _ => unreachable!("only tensors left in the file or archive are read from it"),
        }
    }

    /// The header of .npz member `index`, read (and checked against the member's size) on the
    /// first call, the result kept.
    fn member_header<'a>(
        &self,
        index: usize,
        header: &'a OnceLock<Result<MemberHeader, (bool, String)>>,
    ) -> Result<&'a MemberHeader, WeightError> {
        let read = header.get_or_init(|| {
            let archive = self.archive.as_ref().expect("members come with their archive");
            let mut archive = archive.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match npz::read_header(&mut archive, index, &self.origin) {
                Ok((dtype, shape)) => Ok(MemberHeader { dtype, shape }),
                Err(WeightError::Truncated { detail, .. }) => Err((true, detail)),
                Err(WeightError::Format { detail, .. }) => Err((false, detail)),
                Err(other) => Err((false, other.to_string())),
            }
        });
        match read {
            Ok(header) => Ok(header),
            Err((true, detail)) => Err(truncated(&self.origin, detail.clone())),
            Err((false, detail)) => Err(format_error(&self.origin, detail.clone())),
        }
    }

    /// `count` elements of `dtype` at byte `offset` of file `file`, converted.
    fn read_elements(&self, file: usize, dtype: Float, offset: u64, count: usize) -> Result<Vec<f64>, WeightError> {
        Ok(convert::to_f64(dtype, &self.read_bytes(file, offset, count * dtype.size())?))
    }

    /// `len` bytes at byte `offset` of file `file`.
    fn read_bytes(&self, file: usize, offset: u64, len: usize) -> Result<Vec<u8>, WeightError> {
        let mut bytes = vec![0u8; len];
        self.read_into(file, offset, &mut bytes)?;
        Ok(bytes)
    }

    /// `buf.len()` bytes at `offset` of `file`.
    fn read_into(&self, file: usize, offset: u64, buf: &mut [u8]) -> Result<(), WeightError> {
        let file = self.files.get(file).expect("stored tensors come with their file");
        read_exact_at(file, buf, offset).map_err(io_error(&self.origin))
    }

    /// The `out.len()` entries of `dtype` (one [`convert::to_f32_exact`] accepts) at `offset` of
    /// `file`, as `f32`: read straight into `out` where they are stored as this machine's `f32`s
    /// ([`convert::is_native_f32`]; through a buffer, they cost an allocation and a decoding copy
    /// a read), else read and decoded.
    fn read_f32_into(&self, dtype: Float, file: usize, offset: u64, out: &mut [f32]) -> Result<(), WeightError> {
        if convert::is_native_f32(dtype) {
            return self.read_into(file, offset, bytemuck::cast_slice_mut(out));
        }
        out.copy_from_slice(&convert::to_f32(dtype, &self.read_bytes(file, offset, out.len() * dtype.size())?));
        Ok(())
    }

    /// The block `starts[k] .. starts[k] + lens[k]` (in every dimension `k`) of a strided stored
    /// tensor, row-major, converted: the bytes the block spans are read at once (a view's block
    /// spans little more than itself: a transposed matrix's column block is its rows), then its
    /// elements gathered. The caller has checked the block against the shape.
    fn gather(&self, dtype: Float, at: &At, starts: &[usize], lens: &[usize]) -> Result<Vec<f64>, WeightError> {
        let strides = at.strides.as_deref().expect("only strided tensors are gathered");
        let count: usize = lens.iter().product();
        if count == 0 {
            return Ok(Vec::new());
        }
        // In range of the listed (checked) span, so no overflow.
        let first: usize = starts.iter().zip(strides).map(|(s, t)| s * t).sum();
        let last: usize = first + lens.iter().zip(strides).map(|(n, t)| (n - 1) * t).sum::<usize>();
        let size = dtype.size();
        let span = self.read_bytes(at.file, at.offset + (first * size) as u64, (last - first + 1) * size)?;
        let bytes = gather_span(&span, size, strides, lens);
        Ok(convert::to_f64(dtype, &bytes))
    }
}

/// `buf.len()` bytes at `offset` of `file`, by a positioned read that leaves the file's cursor
/// alone, so that threads read one open file at once without a lock (the vocabulary's chunks,
/// read on both cores, are hundreds of reads each).
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            match std::os::windows::fs::FileExt::seek_read(file, &mut buf[done..], offset + done as u64) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// What a format module hands over

/// One tensor as a format module lists it: everything about it but the conversion.
struct Listed<'a> {
    name: String,
    /// Row-major; the format module has checked that its element count times the dtype's size is
    /// exactly the bytes given, without overflow.
    shape: Vec<usize>,
    dtype: DType,
    bytes: Bytes<'a>,
}

/// A tensor's element type.
#[derive(Debug, Clone)]
enum DType {
    /// One we convert to `f64`.
    Float(Float),
    /// One we only list, by the name messages use (`BOOL`, `I64`, `` `<U3` ``, ...).
    Other(String),
}

/// Where a tensor's bytes are: row-major, in the dtype's byte order.
enum Bytes<'a> {
    /// In memory (a slice of the file's bytes, or a format module's reordered copy).
    Memory(Cow<'a, [u8]>),
    /// In the open file passed to the format module, from this byte offset on; read when asked for.
    File(u64),
    /// In the open file, element `i` (a multi-index) at byte `offset + Σ i_k·strides[k]·size`
    /// (strides in elements): a view of a storage, as a `torch.save` checkpoint holds them. The
    /// format module has checked that every element lies inside the storage's bytes.
    Strided { offset: u64, strides: Vec<usize> },
    /// Member `i` of the open .npz archive, whose header is read, and data decompressed, when
    /// asked for (its shape and dtype are not known until then).
    Member(usize),
}

/// The tensors a format module has listed, converted as they arrive ([`Listing::add`]), so that a
/// format reading one tensor at a time (an .npz member) never holds two copies of the archive.
#[derive(Default)]
struct Listing {
    entries: BTreeMap<String, Entry>,
    /// The index in [`Weights::files`] of the file the format module is listing: what its
    /// `Bytes::File` and `Bytes::Strided` offsets are in.
    file: usize,
}

impl Listing {
    /// Adds a tensor, converting it if it is a float in memory; `false` if one of the same name was
    /// listed before (it is replaced).
    fn add(&mut self, tensor: Listed<'_>) -> bool {
        let Listed { name, shape, dtype, bytes } = tensor;
        let entry = match (dtype, bytes) {
            (DType::Float(dtype), Bytes::Memory(bytes)) => {
                let data = convert::to_f64(dtype, &bytes);
                let non_finite = check::first_non_finite(&data);
                Entry::Float { dtype, tensor: Tensor { shape, data }, non_finite }
            }
            (DType::Float(dtype), Bytes::File(offset)) => Entry::Stored {
                dtype,
                shape,
                at: At { file: self.file, offset, strides: None },
                loaded: OnceLock::new(),
            },
            (DType::Float(dtype), Bytes::Strided { offset, strides }) => {
                // A view that is row-major after all is read as one.
                let strides = (!is_row_major(&shape, &strides)).then_some(strides);
                Entry::Stored { dtype, shape, at: At { file: self.file, offset, strides }, loaded: OnceLock::new() }
            }
            (_, Bytes::Member(index)) => Entry::Member { index, header: OnceLock::new(), loaded: OnceLock::new() },
            (DType::Other(dtype), _) => Entry::Other { dtype, shape },
        };
        self.entries.insert(name, entry).is_none()
    }
}

/// Whether a view of `shape` with `strides` (in elements) is the row-major layout: every
/// dimension longer than 1 has the stride of the product of the lengths after it (a dimension of
/// length 1 may have any stride, as PyTorch gives them).
fn is_row_major(shape: &[usize], strides: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&n, &t) in shape.iter().zip(strides).rev() {
        if n > 1 && t != expected {
            return false;
        }
        expected = expected.saturating_mul(n);
    }
    true
}

/// The elements of a view of `lens` with `strides` (in elements) of `size` bytes each, row-major:
/// `span` holds the bytes from the view's first element to its last (see [`view_span`]).
fn gather_span(span: &[u8], size: usize, strides: &[usize], lens: &[usize]) -> Vec<u8> {
    let count: usize = lens.iter().product();
    let mut bytes = Vec::with_capacity(count * size);
    if count == 0 {
        return bytes;
    }
    let mut index = vec![0usize; lens.len()];
    'odometer: loop {
        let e: usize = index.iter().zip(strides).map(|(i, t)| i * t).sum();
        bytes.extend_from_slice(&span[e * size..(e + 1) * size]);
        for k in (0..index.len()).rev() {
            index[k] += 1;
            if index[k] < lens[k] {
                continue 'odometer;
            }
            index[k] = 0;
        }
        return bytes;
    }
}

/// How many elements a view of `shape` with `strides` spans from its first element to its
/// last, inclusive (0 for an empty view); `None` on overflow. A format module checks that
/// `offset + span` elements lie inside the storage before listing a `Bytes::Strided`.
fn view_span(shape: &[usize], strides: &[usize]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape.iter().zip(strides).try_fold(1usize, |span, (&n, &t)| span.checked_add((n - 1).checked_mul(t)?))
}

// ---------------------------------------------------------------------------------------------
// Format detection and errors

enum Kind {
    Safetensors,
    /// An .npz, or a `torch.save` checkpoint: told apart by their members.
    Zip,
}

fn io_error(origin: &str) -> impl Fn(std::io::Error) -> WeightError + Copy + '_ {
    move |source| WeightError::Io { path: origin.to_string(), source }
}

fn format_error(origin: &str, detail: impl Into<String>) -> WeightError {
    WeightError::Format { origin: origin.to_string(), detail: detail.into() }
}

fn truncated(origin: &str, detail: impl Into<String>) -> WeightError {
    WeightError::Truncated { origin: origin.to_string(), detail: detail.into() }
}

/// Tells the format from the first bytes. The extension is consulted only when there are too few
/// bytes to decide, so that a cut-off file is reported as truncated rather than as unknown.
fn detect(bytes: &[u8], origin: &str) -> Result<Kind, WeightError> {
    if bytes.starts_with(npz::ZIP_LOCAL) || bytes.starts_with(npz::ZIP_EMPTY) {
        return Ok(Kind::Zip);
    }
    if bytes.get(8) == Some(&b'{') {
        return Ok(Kind::Safetensors);
    }
    if bytes.is_empty() {
        return Err(format_error(origin, "the file is empty (0 bytes)"));
    }
    if bytes.starts_with(npy::MAGIC) {
        return Err(format_error(
            origin,
            "this is a single .npy array; save the weights with numpy.savez (an .npz archive) or as safetensors",
        ));
    }
    let extension = Path::new(origin).extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("safetensors") if bytes.len() <= 8 => return Ok(Kind::Safetensors),
        Some("npz" | "pt" | "pth" | "bin") if npz::ZIP_LOCAL.starts_with(bytes) => {
            return Err(truncated(
                origin,
                format!("expected a zip archive, found only {} byte(s) of its signature", bytes.len()),
            ))
        }
        _ => {}
    }
    if bytes.len() >= 9 && torch::LEGACY_MAGIC.starts_with(&bytes[..bytes.len().min(torch::LEGACY_MAGIC.len())]) {
        return Err(format_error(
            origin,
            "this is a torch.save checkpoint in the legacy format (PyTorch < 1.6, or \
             _use_new_zipfile_serialization=False), which pathc does not read: load it and save it again with a \
             current PyTorch (`torch.save(torch.load(path), path)`, a zip archive), or convert it to safetensors \
             (`safetensors.torch.save_file(state_dict, \"model.safetensors\")`)",
        ));
    }
    if bytes.len() >= 2 && bytes[0] == 0x80 && bytes[1] <= 5 {
        return Err(format_error(
            origin,
            "this is a bare pickle, not a torch.save zip archive: save the state dict with torch.save (PyTorch ≥ 1.6) \
             or as safetensors",
        ));
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(format_error(
        origin,
        format!(
            "unknown format: neither safetensors (an 8-byte header length, then a JSON header starting with `{{`) \
             nor .npz or a torch.save checkpoint (zip archives, starting with `PK\\x03\\x04`); the file starts with \
             bytes {}",
            head.join(" ")
        ),
    ))
}
