//! `torch.save` checkpoints (PyTorch ≥ 1.6, `.pt` / `.pth` / `.bin`): a zip archive whose members
//! are `<prefix>/data.pkl` (a pickle of the state dict), `<prefix>/data/<key>` (each storage's
//! raw bytes, stored uncompressed and 64-byte aligned by torch), `<prefix>/byteorder` (`little`
//! or `big`; absent before torch 2.1, when it was little), `<prefix>/version` and others we do
//! not need. Read without Python, and safely: the pickle is run by a restricted machine
//! (`pickle.rs`) that rebuilds tensors and dicts and refuses everything else by name.
//!
//! A tensor is a view of a storage: `_rebuild_tensor_v2(storage, offset, size, stride, ...)`,
//! and several tensors may view one storage (tied weights, slices). Each is listed where its
//! elements are in the file: `Bytes::File` when the view is row-major, `Bytes::Strided`
//! otherwise, at the storage member's data start plus `offset` elements, after checking that the
//! view lies inside the storage, that the storage's member exists, is stored (not compressed or
//! encrypted), holds exactly the bytes the persistent id declares and lies inside the file. In
//! memory (`Weights::from_bytes`) a view is gathered into a row-major copy instead.
//!
//! A zip is a torch checkpoint when it has a `data.pkl` member at its top or one folder down
//! ([`is_torch`]); any other zip is an .npz. The legacy format (`torch.save(...,
//! _use_new_zipfile_serialization=False)`, torch < 1.6: pickles back to back, starting with a
//! pickled magic number) and bare pickles are refused by `detect` with what to do instead.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Seek};

use super::convert::Float;
use super::pickle::{self, Value};
use super::{format_error, truncated, Bytes, DType, Listed, Listing, WeightError};

/// The first bytes of the legacy (pre-zip) `torch.save` format: protocol 2, then `LONG1` of the
/// magic number 0x1950a86a20f9469cfc6c.
pub(super) const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

/// The largest `data.pkl` read: a state dict's pickle takes ~150 bytes a tensor.
const MAX_PICKLE: u64 = 256 << 20;

/// One tensor of the checkpoint, checked: its elements are at byte `offset + Σ i_k·strides[k]·size`
/// of the archive.
pub(super) struct Found {
    name: String,
    shape: Vec<usize>,
    dtype: DType,
    size: usize,
    offset: u64,
    strides: Vec<usize>,
}

/// Whether the archive is a torch checkpoint: it has a `data.pkl` at its top or one folder down
/// (anything else is an .npz).
pub(super) fn is_torch<R: Read + Seek>(archive: &zip::ZipArchive<R>) -> bool {
    archive.file_names().any(|name| pickle_prefix(name).is_some())
}

/// `archive/` for a member `archive/data.pkl`, the empty prefix for `data.pkl`; `None` for any
/// other name (`xdata.pkl`, `a/b/data.pkl`).
fn pickle_prefix(name: &str) -> Option<&str> {
    let prefix = name.strip_suffix("data.pkl")?;
    let top = prefix.is_empty();
    let one_folder = prefix.strip_suffix('/').is_some_and(|folder| !folder.is_empty() && !folder.contains('/'));
    (top || one_folder).then_some(prefix)
}

/// Reads the archive's pickle and checks every tensor against the members; `len` is the
/// archive's length in bytes.
pub(super) fn index<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    len: u64,
    origin: &str,
) -> Result<Vec<Found>, WeightError> {
    let prefixes: BTreeSet<String> = archive.file_names().filter_map(pickle_prefix).map(str::to_string).collect();
    let prefix = match prefixes.len() {
        1 => prefixes.into_iter().next().expect("one"),
        _ => {
            let names: Vec<String> = prefixes.iter().map(|p| format!("`{p}data.pkl`")).collect();
            return Err(format_error(
                origin,
                format!(
                    "the archive holds several pickles ({}): which is the checkpoint cannot be known",
                    names.join(", ")
                ),
            ));
        }
    };
    let pkl = format!("{prefix}data.pkl");
    let little_endian = byte_order(archive, &format!("{prefix}byteorder"), origin)?;
    let bytes = read_small(archive, &pkl, MAX_PICKLE, origin)?;
    let root = pickle::load(&bytes)
        .map_err(|e| format_error(origin, format!("member `{pkl}` is refused at byte {}: {}", e.offset, e.detail)))?;
    let Value::Dict(dict) = &root else {
        return Err(format_error(
            origin,
            format!(
                "member `{pkl}` holds {}, not a state dict (names → tensors): save model.state_dict()",
                root.kind()
            ),
        ));
    };

    // Each storage member once: (data start, bytes).
    let mut members: HashMap<String, (u64, u64)> = HashMap::new();
    let mut seen = BTreeSet::new();
    let mut found = Vec::with_capacity(dict.items.len());
    for (key, value) in &dict.items {
        let Value::Str(name) = key else {
            return Err(format_error(origin, format!("member `{pkl}`: the state dict has {} as a key", key.kind())));
        };
        if !seen.insert(name.to_string()) {
            return Err(format_error(origin, format!("member `{pkl}`: the state dict sets `{name}` twice")));
        }
        let Value::Tensor(tensor) = value else {
            return Err(format_error(
                origin,
                format!(
                    "member `{pkl}`: entry `{name}` is {}, not a tensor (pathc reads a state dict: names → tensors)",
                    value.kind()
                ),
            ));
        };
        let storage = &tensor.storage;
        let member = format!("{prefix}data/{}", storage.key);
        let (start, size) = match members.get(&member) {
            Some(&at) => at,
            None => {
                let at = storage_member(archive, &member, len, origin)?;
                members.insert(member.clone(), at);
                at
            }
        };
        if storage.bytes() != Some(size) {
            return Err(format_error(
                origin,
                format!(
                    "member `{member}` holds {size} bytes, but tensor `{name}`'s storage declares {} elements{}",
                    storage.numel,
                    storage.elem.map_or(String::new(), |e| format!(" of {} ({} bytes each)", e.name, e.size))
                ),
            ));
        }
        // Inside the member: the pickle machine checked offset + span ≤ the storage's elements.
        let offset = start + tensor.offset * tensor.elem.size as u64;
        let dtype = match tensor.elem.float {
            Some(format) => DType::Float(Float { format, little_endian }),
            None => DType::Other(tensor.elem.name.to_string()),
        };
        found.push(Found {
            name: name.to_string(),
            shape: tensor.shape.clone(),
            dtype,
            size: tensor.elem.size,
            offset,
            strides: tensor.strides.clone(),
        });
    }
    Ok(found)
}

/// Lists the tensors left in the open archive file (`Weights::load`).
pub(super) fn list_file(found: Vec<Found>, listing: &mut Listing) {
    for Found { name, shape, dtype, offset, strides, .. } in found {
        let bytes = if super::is_row_major(&shape, &strides) {
            Bytes::File(offset)
        } else {
            Bytes::Strided { offset, strides }
        };
        listing.add(Listed { name, shape, dtype, bytes });
    }
}

/// Lists the tensors of an archive held in memory, `bytes` (`Weights::from_bytes`): each view is
/// gathered into a row-major copy (a row-major one is a slice).
pub(super) fn list_memory(found: Vec<Found>, bytes: &[u8], listing: &mut Listing) {
    for Found { name, shape, dtype, size, offset, strides } in found {
        let data = match dtype {
            DType::Other(_) => Cow::Borrowed(&[][..]),
            DType::Float(_) => {
                // Checked by `index`: the view's span lies inside its member, inside `bytes`.
                let span = super::view_span(&shape, &strides).expect("checked");
                let start = offset as usize;
                let span = &bytes[start..start + span * size];
                if super::is_row_major(&shape, &strides) {
                    Cow::Borrowed(span)
                } else {
                    Cow::Owned(super::gather_span(span, size, &strides, &shape))
                }
            }
        };
        listing.add(Listed { name, shape, dtype, bytes: Bytes::Memory(data) });
    }
}

/// Where storage member `name`'s bytes are: (data start in the archive, length). It must be
/// stored, not encrypted, and inside the archive's `len` bytes.
fn storage_member<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    len: u64,
    origin: &str,
) -> Result<(u64, u64), WeightError> {
    let Some(index) = archive.index_for_name(name) else {
        return Err(format_error(
            origin,
            format!("a tensor's storage is member `{name}`, which the archive does not have"),
        ));
    };
    let member = archive
        .by_index_raw(index)
        .map_err(|e| format_error(origin, format!("cannot open member `{name}` of the zip archive: {e}")))?;
    if member.encrypted() {
        return Err(format_error(origin, format!("member `{name}` is encrypted")));
    }
    if member.compression() != zip::CompressionMethod::Stored {
        return Err(format_error(
            origin,
            format!(
                "member `{name}` is compressed ({}): torch.save stores storages uncompressed, and pathc reads them \
                 in place; re-save with torch.save",
                member.compression()
            ),
        ));
    }
    let size = member.size();
    let start = member
        .data_start()
        .ok_or_else(|| format_error(origin, format!("member `{name}`: the zip crate gave no data offset")))?;
    match start.checked_add(size) {
        Some(end) if end <= len => Ok((start, size)),
        _ => Err(truncated(
            origin,
            format!(
                "member `{name}` takes bytes {start}..{} of the archive, but it has only {len} bytes",
                start as u128 + size as u128
            ),
        )),
    }
}

/// The byte order of the storages: member `name` says `little` or `big`; without it, little.
fn byte_order<R: Read + Seek>(archive: &mut zip::ZipArchive<R>, name: &str, origin: &str) -> Result<bool, WeightError> {
    if archive.index_for_name(name).is_none() {
        return Ok(true);
    }
    match read_small(archive, name, 16, origin)?.as_slice() {
        b"little" => Ok(true),
        b"big" => Ok(false),
        other => Err(format_error(
            origin,
            format!("member `{name}` says {:?}, not `little` or `big`", String::from_utf8_lossy(other)),
        )),
    }
}

/// The whole of member `name`, at most `max` bytes, its CRC checked.
fn read_small<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    max: u64,
    origin: &str,
) -> Result<Vec<u8>, WeightError> {
    let mut member = archive
        .by_name(name)
        .map_err(|e| format_error(origin, format!("cannot open member `{name}` of the zip archive: {e}")))?;
    let size = member.size();
    if size > max {
        return Err(format_error(
            origin,
            format!("member `{name}` claims {size} bytes, more than the {max} pathc reads"),
        ));
    }
    // Grown as bytes arrive, not reserved as declared: a member may claim more than it holds.
    let mut content = Vec::with_capacity(size.min(1 << 20) as usize);
    // One byte past the declared size: reading to the end makes the zip crate check the CRC, and
    // a member longer than declared is caught.
    member
        .by_ref()
        .take(size + 1)
        .read_to_end(&mut content)
        .map_err(|e| format_error(origin, format!("member `{name}` is corrupt: {e}")))?;
    if content.len() as u64 != size {
        return Err(format_error(
            origin,
            format!("member `{name}` holds {} bytes, but the zip says {size}", content.len()),
        ));
    }
    Ok(content)
}
