//! .npz: a zip archive of `NAME.npy` members, as `numpy.savez` (stored) and
//! `numpy.savez_compressed` (deflated) write them, read by the `zip` crate (which checks each
//! member's size and CRC as it is read); each member is one `.npy` array (`npy.rs`).
//!
//! Listing reads the archive's directory only. A member's `.npy` header is read when its tensor
//! is first asked for ([`read_header`]: at most [`npy::MAX_HEADER_BYTES`] decompressed, and the
//! member's declared size must be exactly what the header calls for), its data when the tensor's
//! numbers are ([`read_member`]), and then no more than that size: a member the model does not
//! use costs nothing, however large it claims to be, whatever it inflates to, however slow its
//! header would be to read.

use std::io::{Read, Seek};

use super::{format_error, npy, truncated, Bytes, DType, Listed, Listing, WeightError};

/// A zip archive's first bytes: a local file header.
pub(super) const ZIP_LOCAL: &[u8] = b"PK\x03\x04";
/// An empty zip (`numpy.savez` with no arrays) is only an end-of-central-directory record.
pub(super) const ZIP_EMPTY: &[u8] = b"PK\x05\x06";

/// What the archive is read from: the open file, or bytes in memory.
pub(super) trait Source: Read + Seek + Send {}
impl<T: Read + Seek + Send> Source for T {}

pub(super) type Archive = zip::ZipArchive<Box<dyn Source>>;

/// Opens the archive (its central directory).
pub(super) fn open(source: Box<dyn Source>, origin: &str) -> Result<Archive, WeightError> {
    zip::ZipArchive::new(source).map_err(|e| zip_error(origin, e))
}

/// A zip archive (an .npz or a torch checkpoint) whose directory cannot be read.
pub(super) fn zip_error(origin: &str, e: zip::result::ZipError) -> WeightError {
    format_error(origin, format!("not a readable zip archive (truncated or corrupt?): {e}"))
}

fn npy_error(origin: &str, member: &str, e: npy::NpyError) -> WeightError {
    match e {
        npy::NpyError::Format(detail) => format_error(origin, format!("member `{member}`: {detail}")),
        npy::NpyError::Truncated(detail) => truncated(origin, format!("member `{member}` {detail}")),
    }
}

/// Lists every member of the archive, one tensor each, by name alone: its header is read when
/// the tensor is asked for ([`read_header`]).
pub(super) fn list(archive: &mut Archive, origin: &str, listing: &mut Listing) -> Result<(), WeightError> {
    for i in 0..archive.len() {
        let Some(member_name) = archive.name_for_index(i) else { continue };
        if member_name.ends_with('/') {
            continue;
        }
        let Some(name) = member_name.strip_suffix(".npy") else {
            return Err(format_error(
                origin,
                format!("member `{member_name}` is not a .npy array (numpy.savez names each array NAME.npy)"),
            ));
        };
        // Shape and dtype are the header's, read later: `Listing::add` ignores these for a member.
        let listed = Listed {
            name: name.to_string(),
            shape: Vec::new(),
            dtype: DType::Other(String::new()),
            bytes: Bytes::Member(i),
        };
        if !listing.add(listed) {
            return Err(format_error(origin, format!("the archive holds `{member_name}` twice")));
        }
    }
    Ok(())
}

/// The dtype and shape of member `index`, from its `.npy` header alone (at most
/// [`npy::MAX_HEADER_BYTES`] decompressed): the member's declared size must be exactly what its
/// header calls for.
pub(super) fn read_header(
    archive: &mut Archive,
    index: usize,
    origin: &str,
) -> Result<(DType, Vec<usize>), WeightError> {
    let mut member = archive
        .by_index(index)
        .map_err(|e| format_error(origin, format!("cannot open member #{index} of the zip archive: {e}")))?;
    let member_name = member.name().to_string();
    let size = member.size();
    let mut prefix = Vec::new();
    member
        .by_ref()
        .take(size.min(npy::MAX_HEADER_BYTES as u64))
        .read_to_end(&mut prefix)
        .map_err(|e| format_error(origin, format!("member `{member_name}` is corrupt: {e}")))?;
    let header = npy::header(&prefix).map_err(|e| npy_error(origin, &member_name, e))?;
    // The declared size, not the bytes inflated: nothing past the header is read here.
    let data_len = usize::try_from(size).unwrap_or(usize::MAX).saturating_sub(header.end);
    header.check_data_len(data_len).map_err(|e| npy_error(origin, &member_name, e))?;
    Ok((header.dtype(), header.shape))
}

/// The float tensor in member `index` (`name`), row-major, as raw bytes in its dtype's order:
/// the member is decompressed to its declared size and no further (listing checked that size
/// against the header), and its CRC checked.
pub(super) fn read_member(archive: &mut Archive, index: usize, origin: &str) -> Result<Vec<u8>, WeightError> {
    let mut member = archive
        .by_index(index)
        .map_err(|e| format_error(origin, format!("cannot open member #{index} of the zip archive: {e}")))?;
    let member_name = member.name().to_string();
    let size = member.size();
    let mut content = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    member
        .by_ref()
        .take(size)
        .read_to_end(&mut content)
        .map_err(|e| format_error(origin, format!("member `{member_name}` is corrupt: {e}")))?;
    // Reading on to the end is what makes the zip crate check the CRC.
    let mut rest = [0u8; 1];
    match member.read(&mut rest) {
        Ok(0) => {}
        Ok(_) => return Err(format_error(origin, format!("member `{member_name}` is longer than the zip says"))),
        Err(e) => return Err(format_error(origin, format!("member `{member_name}` is corrupt: {e}"))),
    }
    let name = member_name.strip_suffix(".npy").unwrap_or(&member_name).to_string();
    let tensor = npy::read(name, &content).map_err(|e| npy_error(origin, &member_name, e))?;
    match tensor.bytes {
        Bytes::Memory(bytes) => Ok(bytes.into_owned()),
        _ => Err(format_error(origin, format!("member `{member_name}` holds no data"))),
    }
}
