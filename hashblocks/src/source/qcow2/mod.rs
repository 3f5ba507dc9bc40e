//! qcow2 images, read through imago, with their backing chains.
//!
//! imago does the parsing and the reading; vmstash decides what imago gets to see and what its
//! answers mean. The modules, in the order an image passes through them:
//!
//! - [`header`]: the defensive check of the header before imago sees it: versions, cluster size,
//!   encryption (imago would hand out ciphertext), incompatible features, the L1 table's size,
//!   and that the tables the header points at lie in the file. Bad values are `Corrupt`,
//!   features vmstash cannot read are `Unsupported`.
//! - `limits`: what a backing chain may cost (length, loops, metadata held in memory).
//! - `eof`: the rule that what an image's metadata points at must lie in the file (a truncated
//!   image is `Corrupt`, never zeros), applied to L2 tables at open and to every read imago makes
//!   ([`BoundedStorage`]).
//! - `chain`: the walk down the backing chain ([`open_chain`]), the same for local files and for
//!   files read over SFTP (the CLI's `source/sftp_qcow2.rs`); only how files are opened differs
//!   ([`ChainFiles`]).
//! - `local`: the [`crate::source::DiskSource`] for a chain on this host.
//!
//! # Data ranges
//!
//! `FormatAccess::get_mapping` resolves a guest offset through the chain: data in any layer
//! (plain or compressed) is a data range; clusters that are zero in the top image, unallocated
//! everywhere, or beyond the end of a shorter backing file are not ([`mapped_data_ranges`]).

mod chain;
mod eof;
pub mod header;
mod limits;
mod local;
mod presence;
#[cfg(test)]
mod tests;

pub use chain::{open_chain, relative_to_image, Chain, ChainFiles};
pub use eof::BoundedStorage;
pub(super) use local::Qcow2Source;

use crate::source::{push_range, SourceError};
use imago::{Mapping, Storage as ImagoStorage};
use std::io;
use std::ops::Range;
use std::path::Path;

/// The first four bytes of every qcow2 image: "QFI" and 0xfb (`QCOW_MAGIC` in qemu).
pub(super) const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Lists the ranges of `image` below `size` that map to data in some layer of the chain.
///
/// The host bytes of every plain data mapping must lie in their file (`eof`'s rule), so that a
/// truncated image is refused here, before a backup reads any of it. (Compressed clusters are
/// checked when they are read: imago does not expose where they lie.)
pub fn mapped_data_ranges<S: ImagoStorage + 'static>(
    image: &Chain<S>,
    size: u64,
) -> io::Result<Vec<Range<u64>>> {
    let mut ranges = Vec::new();
    let mut offset = 0;
    while offset < size {
        let (mapping, len) = image.get_mapping(offset, size - offset)?;
        let is_data = match mapping {
            Mapping::Eof { .. } => break,
            Mapping::Zero { .. } => false,
            Mapping::Raw {
                storage,
                offset: host_offset,
                ..
            } => {
                storage.check_range(host_offset, len, |missing| {
                    let guest = offset.saturating_add(missing.saturating_sub(host_offset));
                    format!("the data at guest offset {guest} is stored at byte {missing}")
                })?;
                true
            }
            // Compressed data, and whatever a later imago adds: read it.
            _ => true,
        };
        let end = offset
            .checked_add(len)
            .filter(|end| *end > offset)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("empty or overflowing mapping ({len} bytes) at guest offset {offset}"),
                )
            })?
            .min(size);
        if is_data {
            push_range(&mut ranges, offset..end);
        }
        offset = end;
    }
    Ok(ranges)
}

/// Turns an imago error about the image at `path` into a [`SourceError`]: imago (and
/// [`BoundedStorage`]) report bad metadata as `InvalidData` and unreadable features as
/// `Unsupported`; the rest is I/O.
pub fn imago_error(path: &Path, action: String, err: io::Error) -> SourceError {
    match err.kind() {
        io::ErrorKind::InvalidData => SourceError::Corrupt {
            path: path.to_owned(),
            what: err.to_string(),
        },
        io::ErrorKind::Unsupported => SourceError::Unsupported {
            path: path.to_owned(),
            what: err.to_string(),
        },
        _ => SourceError::Io {
            path: path.to_owned(),
            action,
            source: err,
        },
    }
}
