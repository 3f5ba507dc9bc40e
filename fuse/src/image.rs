//! Reading a snapshot's disk image (spec/FORMAT.md §17): the chunk's id from its map segment,
//! then the chunk from its pack, decrypted and verified by `Repository::read_blob`.
//!
//! Both map segments and chunks are kept in LRU caches, so a reader going through a disk, or
//! many small reads of one chunk (4 KiB reads of a 512 KiB chunk), fetch and verify each chunk
//! once. Zero chunks are never fetched. A chunk several threads need at once is fetched by
//! the first and waited for by the others.
//!
//! Read-ahead: a reader whose reads of a disk follow each other gets the next
//! [`READ_AHEAD_CHUNKS`] chunks fetched ahead of it by [`PREFETCH_THREADS`] threads, so both
//! cores decrypt, decompress and verify while the reader consumes.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, Weak};

use crossbeam_channel::{Receiver, Sender};
use lru::LruCache;
use vmstash_repo::chunkmap::SEGMENT_ENTRIES;
use vmstash_repo::index::MasterIndex;
use vmstash_repo::snapshot::Disk;
use vmstash_repo::{Id, Repository};

/// Map segments kept (1024 ids each, 32 KiB).
const SEGMENTS_CACHED: usize = 1024;

/// Chunks fetched ahead of a sequential reader.
pub const READ_AHEAD_CHUNKS: u64 = 16;
/// Threads fetching ahead (the machine's cores are the limit: the work is decryption,
/// decompression and hashing).
pub const PREFETCH_THREADS: usize = 2;
/// Read-ahead requests queued at most; more are dropped (the reader fetches them itself).
const PREFETCH_QUEUE: usize = 64;
/// Sequential streams followed at once (one per disk being read).
const STREAMS: usize = 64;

/// A map segment's cache key: snapshot, disk index, segment number.
type SegmentKey = (Id, usize, usize);
/// A disk of a snapshot.
type DiskKey = (Id, usize);

/// A chunk being fetched by one thread, which others wait for.
#[derive(Default)]
struct Pending {
    result: Mutex<Option<Result<Arc<Vec<u8>>, String>>>,
    done: Condvar,
}

/// Where a reader of a disk is, and how far ahead of it chunks have been asked for.
struct Stream {
    disk: Arc<Disk>,
    next_offset: u64,
    ahead_to: u64,
}

/// A chunk to fetch ahead.
struct Prefetch {
    snapshot: Id,
    disk_no: usize,
    disk: Arc<Disk>,
    chunk: u64,
}

/// Reads disk images of a repository's snapshots.
pub struct ImageReader {
    repo: Repository,
    index: RwLock<Arc<MasterIndex>>,
    segments: Mutex<LruCache<SegmentKey, Arc<Vec<Id>>>>,
    chunks: Mutex<LruCache<Id, Arc<Vec<u8>>>>,
    inflight: Mutex<HashMap<Id, Arc<Pending>>>,
    streams: Mutex<LruCache<DiskKey, Stream>>,
    prefetch: Sender<Prefetch>,
}

impl ImageReader {
    /// A reader over `repo` with `index`, caching about `cache_bytes` of chunks of
    /// `chunk_size` bytes, with its read-ahead threads (which end when it is dropped).
    pub fn new(
        repo: Repository,
        index: MasterIndex,
        cache_bytes: u64,
        chunk_size: u32,
    ) -> Arc<Self> {
        let entries = usize::try_from(cache_bytes / u64::from(chunk_size.max(1)))
            .unwrap_or(usize::MAX)
            .max(2);
        let (prefetch, queue) = crossbeam_channel::bounded(PREFETCH_QUEUE);
        let reader = Arc::new(ImageReader {
            repo,
            index: RwLock::new(Arc::new(index)),
            segments: Mutex::new(LruCache::new(
                NonZeroUsize::new(SEGMENTS_CACHED).unwrap_or(NonZeroUsize::MIN),
            )),
            chunks: Mutex::new(LruCache::new(
                NonZeroUsize::new(entries).unwrap_or(NonZeroUsize::MIN),
            )),
            inflight: Mutex::new(HashMap::new()),
            streams: Mutex::new(LruCache::new(
                NonZeroUsize::new(STREAMS).unwrap_or(NonZeroUsize::MIN),
            )),
            prefetch,
        });
        for n in 0..PREFETCH_THREADS {
            let weak = Arc::downgrade(&reader);
            let queue = queue.clone();
            let started = std::thread::Builder::new()
                .name(format!("vmstash-readahead-{n}"))
                .spawn(move || fetch_ahead(&weak, &queue));
            if let Err(e) = started {
                eprintln!("vmstash mount: cannot start a read-ahead thread: {e}");
            }
        }
        reader
    }

    /// Notes a read of `len` bytes at `offset` and, when it continues the previous one, asks
    /// for the chunks after it.
    fn follow(&self, snapshot: &Id, disk_no: usize, disk: &Disk, offset: u64, len: u64) {
        let chunk_size = u64::from(disk.chunk_size.max(1));
        let end = offset.saturating_add(len).min(disk.size);
        let last_chunk = end.saturating_sub(1) / chunk_size;
        let wanted_to = last_chunk
            .saturating_add(READ_AHEAD_CHUNKS)
            .min(disk.size.div_ceil(chunk_size).saturating_sub(1));
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (*snapshot, disk_no);
        let Some(stream) = streams.get_mut(&key) else {
            streams.put(
                key,
                Stream {
                    disk: Arc::new(disk.clone()),
                    next_offset: end,
                    ahead_to: last_chunk,
                },
            );
            return;
        };
        let window = chunk_size.saturating_mul(2);
        let follows = offset <= stream.next_offset.saturating_add(window)
            && offset.saturating_add(window) >= stream.next_offset;
        if !follows {
            stream.next_offset = end;
            stream.ahead_to = last_chunk;
            return;
        }
        stream.next_offset = stream.next_offset.max(end);
        let from = stream.ahead_to.max(last_chunk).saturating_add(1);
        for chunk in from..=wanted_to {
            let job = Prefetch {
                snapshot: *snapshot,
                disk_no,
                disk: Arc::clone(&stream.disk),
                chunk,
            };
            if self.prefetch.try_send(job).is_err() {
                break;
            }
            stream.ahead_to = chunk;
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
        self.follow(snapshot, disk_no, disk, offset, u64::from(len));
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

    fn cached(&self, id: &Id) -> Option<Arc<Vec<u8>>> {
        self.chunks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Chunk `id`, verified: from the cache, from the thread already fetching it, or fetched.
    fn chunk(&self, id: &Id) -> Result<Arc<Vec<u8>>, vmstash_repo::Error> {
        if let Some(chunk) = self.cached(id) {
            return Ok(chunk);
        }
        let (pending, mine) = {
            let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            match inflight.get(id) {
                Some(p) => (Arc::clone(p), false),
                None => {
                    if let Some(chunk) = self.cached(id) {
                        return Ok(chunk);
                    }
                    let p = Arc::new(Pending::default());
                    inflight.insert(*id, Arc::clone(&p));
                    (p, true)
                }
            }
        };
        if mine {
            let fetched = self.repo.read_blob(&self.index(), id).map(Arc::new);
            if let Ok(chunk) = &fetched {
                self.chunks
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .put(*id, Arc::clone(chunk));
            }
            *pending
                .result
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(match &fetched {
                Ok(chunk) => Ok(Arc::clone(chunk)),
                Err(e) => Err(e.to_string()),
            });
            pending.done.notify_all();
            self.inflight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(id);
            return fetched;
        }
        let mut result = pending
            .result
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            match result.as_ref() {
                Some(Ok(chunk)) => return Ok(Arc::clone(chunk)),
                Some(Err(e)) => {
                    return Err(vmstash_repo::Error::corrupt(
                        format!("blob {}", id.short()),
                        e.clone(),
                    ))
                }
                None => {
                    result = pending
                        .done
                        .wait(result)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }
}

/// A read-ahead thread: fetches the chunks asked for into the cache until the reader is
/// dropped. Failures are left for the reader that needs the chunk to report.
fn fetch_ahead(reader: &Weak<ImageReader>, queue: &Receiver<Prefetch>) {
    for job in queue {
        let Some(reader) = reader.upgrade() else {
            return;
        };
        if let Ok(id) = reader.chunk_id(&job.snapshot, job.disk_no, &job.disk, job.chunk) {
            if !id.is_zero() {
                let _ = reader.chunk(&id);
            }
        }
    }
}
