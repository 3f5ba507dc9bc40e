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
//!
//! [`ChunkMapWriter`] builds a disk's map during a backup from chunk ids arriving in any order
//! (several reader and worker threads), storing each segment as soon as it is complete;
//! [`decode_segment`] is the reader's side.

use std::collections::HashMap;

use crate::id::{Id, ID_LEN};
use crate::{Error, Result};

/// Chunk ids per map segment: 32 KiB of ids; 512 MiB of disk at 512 KiB chunks.
pub const SEGMENT_ENTRIES: usize = 1024;
/// [`SEGMENT_ENTRIES`] as a chunk number.
pub const SEGMENT_ENTRIES_U64: u64 = 1024;

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

/// True when every byte of `chunk` is zero: such a chunk is recorded as [`Id::ZERO`] and never
/// stored (§9).
pub fn is_zero(chunk: &[u8]) -> bool {
    let words = chunk.chunks_exact(16);
    let tail = words.remainder();
    words
        .map(|w| w.iter().fold(0u8, |acc, b| acc | b))
        .all(|w| w == 0)
        && tail.iter().all(|&b| b == 0)
}

/// Where a [`ChunkMapWriter`] stores the map blobs it makes: the backup's
/// [`Committer`](crate::commit::Committer).
pub trait MapBlobStore {
    /// Stores `plain` as a map blob with id `id` (unless it is already stored).
    fn save_map_blob(&self, id: Id, plain: &[u8]) -> Result<()>;
}

/// Builds the chunk map of one disk while it is backed up: chunk ids go in by chunk number, in
/// any order; each segment is stored as a map blob (or recorded as [`Id::ZERO`] when all its
/// chunks are zero) as soon as its own chunks are all in, whatever the other segments' state.
/// Memory: one entry per segment of the disk, plus the segments being filled (as many as
/// places of the disk being read at once).
pub struct ChunkMapWriter<'c> {
    store: &'c dyn MapBlobStore,
    /// Chunks of the disk.
    chunks: u64,
    /// Each segment's id once stored.
    segments: Vec<Option<Id>>,
    /// Segments being filled, by number: their ids so far (`None` for a chunk not yet in).
    filling: HashMap<u64, Vec<Option<Id>>>,
}

impl<'c> ChunkMapWriter<'c> {
    /// A writer for a disk of `chunks` chunks, storing map blobs in `store`.
    pub fn new(store: &'c dyn MapBlobStore, chunks: u64) -> Self {
        let segments = usize::try_from(segment_count(chunks)).unwrap_or(0);
        ChunkMapWriter {
            store,
            chunks,
            segments: vec![None; segments],
            filling: HashMap::new(),
        }
    }

    /// Chunks in segment `seg`: 1024, or fewer for the last.
    fn segment_len(&self, seg: u64) -> usize {
        let first = seg.saturating_mul(SEGMENT_ENTRIES_U64);
        usize::try_from(self.chunks.saturating_sub(first).min(SEGMENT_ENTRIES_U64)).unwrap_or(0)
    }

    /// Records that chunk `no` has id `id` ([`Id::ZERO`] for zeros).
    pub fn put(&mut self, no: u64, id: Id) -> Result<()> {
        let refused = || {
            Error::InvalidParameter(format!(
                "chunk {no} given twice or beyond the {} chunks of the disk",
                self.chunks
            ))
        };
        let seg = no / SEGMENT_ENTRIES_U64;
        let at = usize::try_from(no % SEGMENT_ENTRIES_U64).unwrap_or(usize::MAX);
        let done = usize::try_from(seg)
            .ok()
            .and_then(|s| self.segments.get(s))
            .ok_or_else(refused)?;
        if done.is_some() || no >= self.chunks {
            return Err(refused());
        }
        let len = self.segment_len(seg);
        let ids = self.filling.entry(seg).or_insert_with(|| vec![None; len]);
        let slot = ids
            .get_mut(at)
            .filter(|s| s.is_none())
            .ok_or_else(refused)?;
        *slot = Some(id);
        if ids.iter().all(Option::is_some) {
            let ids: Vec<Id> = self
                .filling
                .remove(&seg)
                .unwrap_or_default()
                .into_iter()
                .flatten()
                .collect();
            let stored = self.store_segment(&ids)?;
            if let Some(s) = usize::try_from(seg)
                .ok()
                .and_then(|s| self.segments.get_mut(s))
            {
                *s = Some(stored);
            }
        }
        Ok(())
    }

    /// Stores one complete segment; its id ([`Id::ZERO`] for an all-zero one, not stored).
    fn store_segment(&self, ids: &[Id]) -> Result<Id> {
        if ids.iter().all(Id::is_zero) {
            return Ok(Id::ZERO);
        }
        let plain = encode_segment(ids);
        let id = Id::of(&plain);
        self.store.save_map_blob(id, &plain)?;
        Ok(id)
    }

    /// The ids of the disk's map segments, once every chunk is in.
    pub fn finish(self) -> Result<Vec<Id>> {
        let missing = self.segments.iter().filter(|s| s.is_none()).count();
        if missing > 0 {
            return Err(Error::InvalidParameter(format!(
                "the chunk map of a disk of {} chunks lacks {missing} of its {} segments",
                self.chunks,
                self.segments.len()
            )));
        }
        Ok(self.segments.into_iter().flatten().collect())
    }
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

    #[test]
    fn zero_test_looks_at_every_byte() {
        assert!(is_zero(&[0; 1000]));
        assert!(is_zero(&[]));
        for at in [0, 15, 16, 999] {
            let mut b = vec![0u8; 1000];
            b[at] = 1;
            assert!(!is_zero(&b), "byte {at}");
        }
    }

    use crate::commit::Committer;

    #[test]
    fn map_writer_takes_ids_in_any_order_and_stores_only_nonzero_segments() {
        let (_, repo) = crate::testing::memory_repository();
        let index = repo.load_index().expect("index");
        let committer = Committer::new(&repo, &index, 1);
        let chunks = u64::try_from(2 * SEGMENT_ENTRIES + 3).expect("n");
        let id_of = |no: u64| {
            if no < u64::try_from(SEGMENT_ENTRIES).expect("n") {
                Id::ZERO
            } else {
                Id::of(&no.to_le_bytes())
            }
        };
        let mut w = ChunkMapWriter::new(&committer, chunks);
        for no in (0..chunks).rev() {
            w.put(no, id_of(no)).expect("put");
        }
        assert!(w.put(0, Id::ZERO).is_err(), "a chunk given twice");
        let segments = w.finish().expect("finish");
        committer.finish().expect("commit");
        assert_eq!(segments.len(), 3);
        assert!(segments[0].is_zero(), "all-zero segment is not stored");
        let index = repo.load_index().expect("index");
        let last = decode_segment(&repo.read_blob(&index, &segments[2]).expect("read"), "m")
            .expect("decode");
        let expected: Vec<Id> = (chunks - 3..chunks).map(id_of).collect();
        assert_eq!(last, expected);

        let committer = Committer::new(&repo, &index, 1);
        let short = ChunkMapWriter::new(&committer, 2);
        assert!(short.finish().is_err(), "a map missing chunks is refused");
    }
}
