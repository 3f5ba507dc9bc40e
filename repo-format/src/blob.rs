//! Blobs: the unit of deduplication (spec/FORMAT.md §7 "Blobs").
//!
//! A blob is a plaintext of at most [`MAX_BLOB_LEN`] bytes named by its
//! SHA-256. Data blobs are disk chunks; map blobs are segments of a disk's
//! chunk map. A blob is stored framed (§5) and sealed under its pack's key
//! with associated data `type byte ‖ id`, so a blob cannot be passed off as
//! another one or as another type even inside the right pack.

use crate::id::{Id, ID_LEN};
use crate::{Error, Result};

/// Largest plaintext blob: the largest chunk size.
pub const MAX_BLOB_LEN: u32 = 8 * 1024 * 1024;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlobType {
    /// A chunk of a disk.
    Data,
    /// A segment of a disk's chunk map (§9).
    Map,
}

impl BlobType {
    /// The on-disk byte.
    pub const fn byte(self) -> u8 {
        match self {
            BlobType::Data => 0,
            BlobType::Map => 1,
        }
    }

    /// Parses the on-disk byte.
    pub fn from_byte(b: u8, file: &str) -> Result<BlobType> {
        match b {
            0 => Ok(BlobType::Data),
            1 => Ok(BlobType::Map),
            other => Err(Error::corrupt(file, format!("unknown blob type {other}"))),
        }
    }

    /// Lower-case name for JSON and messages.
    pub const fn name(self) -> &'static str {
        match self {
            BlobType::Data => "data",
            BlobType::Map => "map",
        }
    }
}

/// The associated data a blob is sealed with.
pub(crate) fn aad(ty: BlobType, id: &Id) -> [u8; ID_LEN + 1] {
    let mut out = [0u8; ID_LEN + 1];
    out[0] = ty.byte();
    out[1..].copy_from_slice(id.as_bytes());
    out
}

/// Checks that decoded plaintext is the blob asked for.
pub(crate) fn verify(plain: &[u8], id: &Id, raw_length: u32, file: &str) -> Result<()> {
    let len_ok = u32::try_from(plain.len()).is_ok_and(|l| l == raw_length);
    if !len_ok {
        return Err(Error::corrupt(
            file,
            format!(
                "blob {} decodes to {} bytes, the index says {raw_length}",
                id.short(),
                plain.len()
            ),
        ));
    }
    if Id::of(plain) != *id {
        return Err(Error::corrupt(
            file,
            format!("blob {} does not hash to its id", id.short()),
        ));
    }
    Ok(())
}
