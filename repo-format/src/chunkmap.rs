//! Chunk maps: which blob holds each chunk of a disk
//! (spec/FORMAT.md §9 "Chunk maps").
//!
//! Chunk *i* of a disk covers bytes `[i·c, min((i+1)·c, size))` for chunk
//! size *c*. The map is the list of the chunks' ids, [`Id::ZERO`] for an
//! all-zero chunk, cut into segments of [`SEGMENT_ENTRIES`] ids. Each
//! segment is a map blob, so consecutive snapshots of a disk share every
//! segment that did not change, and a reader finds chunk *i* in segment
//! `i / 1024` without loading the rest. A segment of only zero chunks is
//! itself all-zero bytes and is recorded as [`Id::ZERO`], never stored.

use crate::id::{Id, ID_LEN};
use crate::{Error, Result};

/// Chunk ids per map segment: 32 KiB of ids; 512 MiB of disk at 512 KiB chunks.
pub const SEGMENT_ENTRIES: usize = 1024;
const SEGMENT_ENTRIES_U64: u64 = 1024;

/// The plaintext of one map blob.
pub fn encode_segment(ids: &[Id]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * ID_LEN);
    for id in ids {
        out.extend_from_slice(id.as_bytes());
    }
    out
}

/// Decodes a map blob's plaintext; `file` names its source in errors.
pub fn decode_segment(plain: &[u8], file: &str) -> Result<Vec<Id>> {
    if !plain.len().is_multiple_of(ID_LEN) || plain.len() > SEGMENT_ENTRIES * ID_LEN {
        return Err(Error::corrupt(
            file,
            format!("map segment of {} bytes", plain.len()),
        ));
    }
    Ok(plain
        .chunks_exact(ID_LEN)
        .filter_map(Id::from_slice)
        .collect())
}

/// Number of chunks of a disk of `size` bytes at `chunk_size`.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size).max(1))
}

/// Number of map segments for `chunks` chunks.
pub fn segment_count(chunks: u64) -> u64 {
    chunks.div_ceil(SEGMENT_ENTRIES_U64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_round_trip_and_counts() {
        let ids = vec![Id::of(b"a"), Id::ZERO, Id::of(b"b")];
        let enc = encode_segment(&ids);
        assert_eq!(decode_segment(&enc, "m").expect("decode"), ids);
        assert!(decode_segment(&enc[..40], "m").is_err());
        assert!(decode_segment(&vec![0; (SEGMENT_ENTRIES + 1) * ID_LEN], "m").is_err());
        assert_eq!(chunk_count(0, 4), 0);
        assert_eq!(chunk_count(9, 4), 3);
        assert_eq!(segment_count(1025), 2);
    }
}
