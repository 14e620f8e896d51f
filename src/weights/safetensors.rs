//! safetensors: an 8-byte little-endian header length, a JSON header starting with `{`, then the
//! tensors' bytes, back to back. The header entries are parsed by the `safetensors` crate
//! (`TensorInfo`: dtype, shape, data offsets); the layout is checked here first, so that a
//! cut-off file says how many bytes it lacks and every bad entry is named.
//!
//! Lists tensors in memory ([`list`], for `Weights::from_bytes`) or left in the open file
//! ([`list_file`], for `Weights::load`: only the header is read).

use std::borrow::Cow;
use std::fs::File;
use std::io::Read;

use ::safetensors::tensor::TensorInfo;
use ::safetensors::Dtype;

use super::convert::{Float, FloatFormat};
use super::{format_error, io_error, truncated, Bytes, DType, Listed, Listing, WeightError};

/// The safetensors crate's limit on the JSON header; a larger length prefix is corruption.
const MAX_HEADER: u64 = 100_000_000;

/// Lists the tensors of a whole safetensors file held in memory; their bytes are slices of it.
pub(super) fn list(bytes: &[u8], origin: &str, listing: &mut Listing) -> Result<(), WeightError> {
    let (header_end, infos) = layout(bytes, bytes.len(), origin)?;
    for (name, info) in infos {
        // In range: `layout` checked every entry against the file's length.
        let (start, end) = info.data_offsets;
        let data = &bytes[header_end + start..header_end + end];
        listing.add(Listed {
            name,
            shape: info.shape,
            dtype: dtype(info.dtype),
            bytes: Bytes::Memory(Cow::Borrowed(data)),
        });
    }
    Ok(())
}

/// Lists the tensors of the open safetensors file `file`, `len` bytes long, whose first 9 bytes
/// (`prefix`) have been read: reads and checks the rest of the header only, and leaves every
/// tensor in the file (`Bytes::File`).
pub(super) fn list_file(
    file: &mut File,
    mut prefix: Vec<u8>,
    len: u64,
    origin: &str,
    listing: &mut Listing,
) -> Result<(), WeightError> {
    let header_len = u64::from_le_bytes(prefix[..8].try_into().expect("9 bytes were read"));
    // Read the header (at most safetensors' limit; `layout` reports a longer one).
    let want = 8 + header_len.min(MAX_HEADER + 1);
    file.take(want.saturating_sub(9)).read_to_end(&mut prefix).map_err(io_error(origin))?;
    let len = usize::try_from(len).map_err(|_| format_error(origin, "the file is too large to address"))?;
    let (header_end, infos) = layout(&prefix, len, origin)?;
    for (name, info) in infos {
        let offset = (header_end + info.data_offsets.0) as u64;
        listing.add(Listed { name, shape: info.shape, dtype: dtype(info.dtype), bytes: Bytes::File(offset) });
    }
    Ok(())
}

fn dtype(dtype: Dtype) -> DType {
    match dtype {
        Dtype::F16 => DType::Float(Float::little(FloatFormat::F16)),
        Dtype::BF16 => DType::Float(Float::little(FloatFormat::BF16)),
        Dtype::F32 => DType::Float(Float::little(FloatFormat::F32)),
        Dtype::F64 => DType::Float(Float::little(FloatFormat::F64)),
        other => DType::Other(other.to_string()),
    }
}

/// Checks a safetensors header against the file's length `len`: `bytes` holds the file's start,
/// at least through the header when the file has one. Every entry is named in what goes wrong.
/// Returns where the data starts and every tensor's entry.
fn layout(bytes: &[u8], len: usize, origin: &str) -> Result<(usize, Vec<(String, TensorInfo)>), WeightError> {
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
    if let Ok(Some(name)) = duplicate_key(text) {
        return Err(format_error(
            origin,
            format!("the header names tensor `{name}` twice: which of the two is meant cannot be known"),
        ));
    }
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

/// The first top-level key the JSON object `text` holds twice, if any. serde_json's `Value` keeps
/// the last of the two, which would silently drop the first tensor (and then report its bytes as
/// a gap between the others): so the keys are walked once with a visitor that ignores the values.
/// An error (not an object, bad JSON) is left to the full parse to report.
fn duplicate_key(text: &str) -> Result<Option<String>, serde_json::Error> {
    use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};

    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if !seen.insert(key.clone()) {
                    return Ok(Some(key));
                }
            }
            Ok(None)
        }
    }
    serde_json::Deserializer::from_str(text).deserialize_map(Keys)
}
