//! Reading a snapshot's disk image (spec/FORMAT.md §17): the chunk's id from its map segment,
//! then the chunk from its pack, decrypted and verified by `Repository::read_blob`.
//!
//! Both map segments and chunks are kept in LRU caches, so a reader going through a disk, or
//! many small reads of one chunk (4 KiB reads of a 512 KiB chunk), fetch and verify each chunk
//! once. Zero chunks are never fetched. The caches are shared by every FUSE thread; a chunk
//! two threads miss at once is fetched twice, which is cheaper than holding a lock over I/O.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use lru::LruCache;
use vmstash_repo::chunkmap::SEGMENT_ENTRIES;
use vmstash_repo::index::MasterIndex;
use vmstash_repo::snapshot::Disk;
use vmstash_repo::{Id, Repository};

/// Map segments kept (1024 ids each, 32 KiB).
const SEGMENTS_CACHED: usize = 1024;

/// A map segment's cache key: snapshot, disk index, segment number.
type SegmentKey = (Id, usize, usize);

/// Reads disk images of a repository's snapshots.
pub struct ImageReader {
    repo: Repository,
    index: RwLock<Arc<MasterIndex>>,
    segments: Mutex<LruCache<SegmentKey, Arc<Vec<Id>>>>,
    chunks: Mutex<LruCache<Id, Arc<Vec<u8>>>>,
}

impl ImageReader {
    /// A reader over `repo` with `index`, caching about `cache_bytes` of chunks of
    /// `chunk_size` bytes.
    pub fn new(repo: Repository, index: MasterIndex, cache_bytes: u64, chunk_size: u32) -> Self {
        let entries = usize::try_from(cache_bytes / u64::from(chunk_size.max(1)))
            .unwrap_or(usize::MAX)
            .max(2);
        ImageReader {
            repo,
            index: RwLock::new(Arc::new(index)),
            segments: Mutex::new(LruCache::new(
                NonZeroUsize::new(SEGMENTS_CACHED).unwrap_or(NonZeroUsize::MIN),
            )),
            chunks: Mutex::new(LruCache::new(
                NonZeroUsize::new(entries).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// Replaces the index (after new snapshots brought new blobs).
    pub fn set_index(&self, index: MasterIndex) {
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(index);
    }

    fn index(&self) -> Arc<MasterIndex> {
        Arc::clone(&self.index.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Up to `len` bytes of `disk` (of snapshot `snapshot`) at `offset`; fewer at the end of
    /// the disk, none past it.
    pub fn read(
        &self,
        snapshot: &Id,
        disk_no: usize,
        disk: &Disk,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, vmstash_repo::Error> {
        let end = offset.saturating_add(u64::from(len)).min(disk.size);
        let mut out = Vec::with_capacity(usize::try_from(end.saturating_sub(offset)).unwrap_or(0));
        let chunk_size = u64::from(disk.chunk_size.max(1));
        let mut pos = offset;
        while pos < end {
            let no = pos / chunk_size;
            let within = usize::try_from(pos % chunk_size).unwrap_or(0);
            let take = usize::try_from((chunk_size - pos % chunk_size).min(end - pos)).unwrap_or(0);
            let id = self.chunk_id(snapshot, disk_no, disk, no)?;
            if id.is_zero() {
                out.resize(out.len() + take, 0);
            } else {
                let chunk = self.chunk(&id)?;
                let piece = chunk.get(within..within + take).ok_or_else(|| {
                    vmstash_repo::Error::corrupt(
                        format!("blob {}", id.short()),
                        format!(
                            "{} bytes where chunk {no} of disk {} needs {}",
                            chunk.len(),
                            disk.name,
                            within + take
                        ),
                    )
                })?;
                out.extend_from_slice(piece);
            }
            pos += u64::try_from(take).unwrap_or(u64::MAX);
        }
        Ok(out)
    }

    fn chunk_id(
        &self,
        snapshot: &Id,
        disk_no: usize,
        disk: &Disk,
        no: u64,
    ) -> Result<Id, vmstash_repo::Error> {
        let seg = usize::try_from(no).unwrap_or(usize::MAX) / SEGMENT_ENTRIES;
        let key = (*snapshot, disk_no, seg);
        let cached = self
            .segments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned();
        let ids = match cached {
            Some(ids) => ids,
            None => {
                let ids = Arc::new(self.repo.map_segment(&self.index(), disk, seg)?);
                self.segments
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .put(key, Arc::clone(&ids));
                ids
            }
        };
        let i = usize::try_from(no).unwrap_or(usize::MAX) % SEGMENT_ENTRIES;
        ids.get(i).copied().ok_or_else(|| {
            vmstash_repo::Error::InvalidParameter(format!(
                "chunk {no} is beyond the map of disk {}",
                disk.name
            ))
        })
    }

    fn chunk(&self, id: &Id) -> Result<Arc<Vec<u8>>, vmstash_repo::Error> {
        let cached = self
            .chunks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned();
        if let Some(chunk) = cached {
            return Ok(chunk);
        }
        let chunk = Arc::new(self.repo.read_blob(&self.index(), id)?);
        self.chunks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(*id, Arc::clone(&chunk));
        Ok(chunk)
    }
}
