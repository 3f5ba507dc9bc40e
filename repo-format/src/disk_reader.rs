//! Reading a snapshot's disk: spec/FORMAT.md §17 "Reading a disk", steps 4–12, in one place.
//!
//! A [`DiskReader`] turns a chunk number into its id (through the disk's map segments) and an id
//! into the chunk's verified bytes (index lookup, pack range read, GCM, framing, SHA-256), and
//! checks what only the position can tell: that a data chunk is exactly `Lᵢ = min(c, size −
//! i·c)` bytes long. Restore and the mount both read through it; the mount keeps its caches,
//! in-flight sharing and read-ahead around it, and checks a cached chunk's length against the
//! position it is used at ([`DiskReader::check_chunk_len`]).
//!
//! Errors keep whose fault it is: a missing blob is [`Error::BlobNotFound`], damaged bytes are
//! [`Error::Corrupt`] naming the pack file, a failed read is [`Error::Io`].

use std::sync::Arc;

use crate::backend::{relative_path, FileKind};
use crate::chunkmap::{chunk_count, decode_segment, SEGMENT_ENTRIES};
use crate::id::Id;
use crate::index::MasterIndex;
use crate::repository::Repository;
use crate::snapshot::Disk;
use crate::{Error, Result};

/// Reads one disk of a snapshot; cheap to clone (everything is shared).
#[derive(Clone)]
pub struct DiskReader {
    repo: Repository,
    index: Arc<MasterIndex>,
    disk: Arc<Disk>,
    zero_lost: bool,
}

impl DiskReader {
    /// A reader of `disk` (from a snapshot of `repo`) through `index`.
    pub fn new(repo: Repository, index: Arc<MasterIndex>, disk: Arc<Disk>) -> Self {
        DiskReader {
            repo,
            index,
            disk,
            zero_lost: false,
        }
    }

    /// The index the reader finds blobs in.
    pub fn index(&self) -> &MasterIndex {
        &self.index
    }

    /// The repository the disk is read from.
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// Reads zeros, instead of failing, where the snapshot records lost bytes (`lost`, §13)
    /// and the chunk cannot be read. Readable chunks are read even there (a later backup may
    /// have stored them again).
    pub fn zero_lost(mut self, yes: bool) -> Self {
        self.zero_lost = yes;
        self
    }

    /// True when lost bytes read as zeros.
    pub fn zeroes_lost(&self) -> bool {
        self.zero_lost
    }

    /// What a failed read of `len` bytes at `offset` is: [`Error::Lost`] inside a recorded
    /// lost range, the error itself elsewhere.
    fn lost_error(&self, offset: u64, len: u64, e: Error) -> Error {
        match self.disk.lost_in(offset, len) {
            Some(range) => Error::Lost {
                disk: self.disk.name.clone(),
                offset: range.offset,
                end: range.offset.saturating_add(range.length),
                why: e.to_string(),
            },
            None => e,
        }
    }

    /// The disk.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// The disk's chunk size in bytes.
    pub fn chunk_size(&self) -> u64 {
        u64::from(self.disk.chunk_size)
    }

    /// Number of chunks of the disk.
    pub fn chunk_count(&self) -> u64 {
        chunk_count(self.disk.size, self.disk.chunk_size)
    }

    /// Where chunk `no` starts on the disk.
    pub fn chunk_offset(&self, no: u64) -> u64 {
        no.saturating_mul(self.chunk_size())
    }

    /// `Lᵢ`: the length of chunk `no` (the last one may be short); an error past the end.
    pub fn chunk_len(&self, no: u64) -> Result<u64> {
        let start = self.chunk_offset(no);
        if no >= self.chunk_count() {
            return Err(Error::InvalidParameter(format!(
                "chunk {no} is beyond the {} chunks of disk {}",
                self.chunk_count(),
                self.disk.name
            )));
        }
        Ok(self.chunk_size().min(self.disk.size - start))
    }

    /// Step 5: the chunk ids of map segment `seg` (all [`Id::ZERO`] for a zero segment), each
    /// checked to be a whole segment of the right length.
    pub fn segment(&self, seg: usize) -> Result<Vec<Id>> {
        map_segment(&self.repo, &self.index, &self.disk, seg).or_else(|e| {
            if !matches!(e, Error::BlobNotFound(_) | Error::Corrupt { .. }) {
                return Err(e);
            }
            let per_segment = u64::try_from(SEGMENT_ENTRIES).unwrap_or(u64::MAX);
            let first = u64::try_from(seg)
                .unwrap_or(u64::MAX)
                .saturating_mul(per_segment);
            let chunks = self.chunk_count().saturating_sub(first).min(per_segment);
            let offset = self.chunk_offset(first);
            let len = chunks.saturating_mul(self.chunk_size());
            // A lost segment reads as lost chunks: the zero id stands for each.
            match self.lost_error(offset, len, e) {
                Error::Lost { .. } if self.zero_lost => {
                    Ok(vec![Id::ZERO; usize::try_from(chunks).unwrap_or(0)])
                }
                e => Err(e),
            }
        })
    }

    /// The id of chunk `no`, reading its map segment (uncached: callers that read many chunks
    /// take whole segments with [`segment`](Self::segment)).
    pub fn chunk_id(&self, no: u64) -> Result<Id> {
        self.chunk_len(no)?;
        let no = usize::try_from(no).map_err(|_| Error::InvalidParameter("chunk number".into()))?;
        let ids = self.segment(no / SEGMENT_ENTRIES)?;
        ids.get(no % SEGMENT_ENTRIES).copied().ok_or_else(|| {
            Error::InvalidParameter(format!(
                "chunk {no} is beyond the map of disk {}",
                self.disk.name
            ))
        })
    }

    /// Steps 6–11 for chunk `no` whose id is `id`: its verified bytes, exactly `Lᵢ` of them
    /// (zeros for the zero id, without reading anything; zeros for a chunk that cannot be read
    /// inside a recorded lost range when [`zero_lost`](Self::zero_lost) was asked for).
    pub fn read_chunk(&self, no: u64, id: &Id) -> Result<Vec<u8>> {
        match self.read_chunk_strict(no, id) {
            Err(Error::Lost { .. }) if self.zero_lost => {
                Ok(vec![0; usize::try_from(self.chunk_len(no)?).unwrap_or(0)])
            }
            other => other,
        }
    }

    /// [`read_chunk`](Self::read_chunk) that never gives zeros for lost bytes: a chunk that
    /// cannot be read inside a recorded lost range is [`Error::Lost`]. For callers that cache
    /// chunks by id across snapshots (a zero-filled chunk must not stand for that id).
    pub fn read_chunk_strict(&self, no: u64, id: &Id) -> Result<Vec<u8>> {
        let len = self.chunk_len(no)?;
        if id.is_zero() {
            return Ok(vec![0; usize::try_from(len).unwrap_or(0)]);
        }
        self.repo
            .read_blob(&self.index, id)
            .and_then(|plain| self.check_chunk_len(no, id, plain.len()).map(|()| plain))
            .map_err(|e| match e {
                Error::BlobNotFound(_) | Error::Corrupt { .. } => {
                    self.lost_error(self.chunk_offset(no), len, e)
                }
                e => e,
            })
    }

    /// The last check of step 11: a verified plaintext of `len` bytes for id `id` is chunk
    /// `no`'s only if `len = Lᵢ`. A mismatch means the map names a blob of another length: the
    /// repository is damaged.
    pub fn check_chunk_len(&self, no: u64, id: &Id, len: usize) -> Result<()> {
        let expected = self.chunk_len(no)?;
        if u64::try_from(len).ok() == Some(expected) {
            return Ok(());
        }
        let file = self.index.find(id).map_or_else(
            || format!("blob {}", id.short()),
            |loc| relative_path(FileKind::Pack, &loc.pack.to_hex()),
        );
        Err(Error::corrupt(
            file,
            format!(
                "blob {} has {len} bytes where chunk {no} of disk {} needs {expected}; run `vmstash check --read-data`",
                id.short(),
                self.disk.name
            ),
        ))
    }

    /// Fills `buf` with the disk's bytes at `offset` (which must lie inside the disk), reading
    /// each chunk it touches. No caching: for a few reads, tests and examples; restore and the
    /// mount read whole chunks.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(u64::try_from(buf.len()).unwrap_or(u64::MAX))
            .filter(|&end| end <= self.disk.size)
            .ok_or_else(|| {
                Error::InvalidParameter(format!(
                    "{} bytes at {offset} are beyond disk {} of {} bytes",
                    buf.len(),
                    self.disk.name,
                    self.disk.size
                ))
            })?;
        let mut pos = offset;
        let mut done = 0usize;
        while pos < end {
            let no = pos / self.chunk_size();
            let within = usize::try_from(pos - self.chunk_offset(no)).unwrap_or(0);
            let chunk = self.read_chunk(no, &self.chunk_id(no)?)?;
            let take = (chunk.len() - within).min(buf.len() - done);
            let (Some(dst), Some(src)) = (
                buf.get_mut(done..done + take),
                chunk.get(within..within + take),
            ) else {
                return Err(Error::InvalidParameter("read past a chunk".into()));
            };
            dst.copy_from_slice(src);
            done += take;
            pos += u64::try_from(take).unwrap_or(u64::MAX);
        }
        Ok(())
    }
}

/// Step 5 of §17 for any caller holding an index: the chunk ids of map segment `seg` of `disk`
/// (all [`Id::ZERO`] for a zero segment), checked to be exactly as many as the segment covers.
pub fn map_segment(
    repo: &Repository,
    index: &MasterIndex,
    disk: &Disk,
    seg: usize,
) -> Result<Vec<Id>> {
    let chunks = chunk_count(disk.size, disk.chunk_size);
    let first = u64::try_from(seg.saturating_mul(SEGMENT_ENTRIES)).unwrap_or(u64::MAX);
    let want = usize::try_from(chunks.saturating_sub(first))
        .unwrap_or(usize::MAX)
        .min(SEGMENT_ENTRIES);
    let id = disk.map.get(seg).ok_or_else(|| {
        Error::InvalidParameter(format!("disk {} has no map segment {seg}", disk.name))
    })?;
    if id.is_zero() {
        return Ok(vec![Id::ZERO; want]);
    }
    let file = || {
        index.find(id).map_or_else(
            || format!("map blob {}", id.short()),
            |loc| relative_path(FileKind::Pack, &loc.pack.to_hex()),
        )
    };
    let plain = repo.read_blob(index, id)?;
    let ids = decode_segment(&plain, &file())?;
    if ids.len() != want {
        return Err(Error::corrupt(
            file(),
            format!(
                "map blob {} has {} entries where disk {} needs {want}",
                id.short(),
                ids.len(),
                disk.name
            ),
        ));
    }
    Ok(ids)
}
