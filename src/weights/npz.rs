//! .npz: a zip archive of `NAME.npy` members, as `numpy.savez` (stored) and
//! `numpy.savez_compressed` (deflated) write them. The archive is read by the `zip` crate, which
//! checks each member's size and CRC; each member is one `.npy` array (`npy.rs`), listed as the
//! tensor `NAME` as soon as it is read.

use std::io::{Cursor, Read};

use super::{format_error, npy, truncated, Listing, WeightError};

/// A zip archive's first bytes: a local file header.
pub(super) const ZIP_LOCAL: &[u8] = b"PK\x03\x04";
/// An empty zip (`numpy.savez` with no arrays) is only an end-of-central-directory record.
pub(super) const ZIP_EMPTY: &[u8] = b"PK\x05\x06";

/// Lists every member of the archive `bytes`, one tensor each.
pub(super) fn list(bytes: &[u8], origin: &str, listing: &mut Listing) -> Result<(), WeightError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| format_error(origin, format!("not a readable zip archive (truncated or corrupt?): {e}")))?;
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
        let tensor = npy::read(name.to_string(), &content).map_err(|e| match e {
            npy::NpyError::Format(detail) => format_error(origin, format!("member `{member_name}`: {detail}")),
            npy::NpyError::Truncated(detail) => truncated(origin, format!("member `{member_name}` {detail}")),
        })?;
        if !listing.add(tensor) {
            return Err(format_error(origin, format!("the archive holds `{member_name}` twice")));
        }
    }
    Ok(())
}
