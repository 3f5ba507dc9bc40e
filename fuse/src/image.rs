//! Reading a snapshot's disk image for the mount: spec/FORMAT.md §17 through
//! [`vmstash_repo::DiskReader`], with what a mount needs around it.
//!
//! - **Caches.** Map segments and verified chunks are kept in LRU caches, so a reader going
//!   through a disk, or many small reads of one chunk (4 KiB reads of a 512 KiB chunk), fetch
//!   and verify each chunk once. A cached chunk is checked against the length its position
//!   needs each time it is used ([`DiskReader::check_chunk_len`]): chunks are cached by id, and
//!   the same id must not serve a position of another length. Zero chunks are never fetched.
//! - **In-flight sharing.** A chunk several threads need at once is fetched by the first and
//!   waited for by the others, who get its result — bytes or the original error, with its kind
//!   (a damaged pack stays damage, an SFTP failure stays an I/O error).
//! - **Read-ahead.** A reader whose reads of a disk follow each other gets the next
//!   [`READ_AHEAD_CHUNKS`] chunks fetched ahead of it by one thread per core (or, on an object
//!   store, per request it wants in flight), so every core decrypts, decompresses and verifies
//!   while the reader consumes.
//!
//! Errors are `Arc<vmstash_repo::Error>`: shared by the waiters of one fetch, unchanged.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, Weak};

use crossbeam_channel::{Receiver, Sender};
use lru::LruCache;
use vmstash_repo::chunkmap::SEGMENT_ENTRIES;
use vmstash_repo::index::MasterIndex;
use vmstash_repo::snapshot::Disk;
use vmstash_repo::{threads, DiskReader, Id, Repository};

/// What a failed image read reports: the repository's error, shared by every waiter.
pub type ReadError = Arc<vmstash_repo::Error>;

/// Map segments kept (1024 ids each, 32 KiB).
const SEGMENTS_CACHED: usize = 1024;
/// Disk readers kept (one per disk being read).
const READERS_CACHED: usize = 256;

/// Chunks fetched ahead of a sequential reader.
pub const READ_AHEAD_CHUNKS: u64 = 16;
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
    result: Mutex<Option<Result<Arc<Vec<u8>>, ReadError>>>,
    done: Condvar,
}

/// Where a reader of a disk is, and how far ahead of it chunks have been asked for.
struct Stream {
    next_offset: u64,
    ahead_to: u64,
}

/// A chunk to fetch ahead.
struct Prefetch {
    key: DiskKey,
    reader: DiskReader,
    chunk: u64,
}

/// Reads disk images of a repository's snapshots.
pub struct ImageReader {
    repo: Repository,
    index: RwLock<Arc<MasterIndex>>,
    readers: Mutex<LruCache<DiskKey, DiskReader>>,
    segments: Mutex<LruCache<SegmentKey, Arc<Vec<Id>>>>,
    chunks: Mutex<LruCache<Id, Arc<Vec<u8>>>>,
    inflight: Mutex<HashMap<Id, Arc<Pending>>>,
    streams: Mutex<LruCache<DiskKey, Stream>>,
    prefetch: Sender<Prefetch>,
    /// Bytes a repaired snapshot records as lost read as zeros (`--zero-lost`).
    zero_lost: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn lru<K: std::hash::Hash + Eq, V>(entries: usize) -> Mutex<LruCache<K, V>> {
    Mutex::new(LruCache::new(
        NonZeroUsize::new(entries).unwrap_or(NonZeroUsize::MIN),
    ))
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
            readers: lru(READERS_CACHED),
            segments: lru(SEGMENTS_CACHED),
            chunks: lru(entries),
            inflight: Mutex::new(HashMap::new()),
            streams: lru(STREAMS),
            prefetch,
            zero_lost: std::sync::atomic::AtomicBool::new(false),
        });
        // One thread per core decrypts and verifies; a store that answers each request after a
        // round trip (S3) wants more fetches in flight than that.
        let fetchers = threads::workers().max(reader.repo.backend().requests_in_flight());
        for n in 0..fetchers {
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

    /// Lets bytes that repaired snapshots record as lost read as zeros (else they are EIO).
    pub fn set_zero_lost(&self, yes: bool) {
        self.zero_lost
            .store(yes, std::sync::atomic::Ordering::Relaxed);
        lock(&self.readers).clear();
    }

    /// Replaces the index (after new snapshots brought new blobs).
    pub fn set_index(&self, index: MasterIndex) {
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(index);
        lock(&self.readers).clear();
    }

    /// The §17 reader of disk `disk_no` of `snapshot`.
    fn disk_reader(&self, snapshot: &Id, disk_no: usize, disk: &Disk) -> DiskReader {
        let key = (*snapshot, disk_no);
        if let Some(r) = lock(&self.readers).get(&key) {
            return r.clone();
        }
        let index = Arc::clone(&self.index.read().unwrap_or_else(PoisonError::into_inner));
        let reader = DiskReader::new(self.repo.clone(), index, Arc::new(disk.clone()))
            .zero_lost(self.zero_lost.load(std::sync::atomic::Ordering::Relaxed));
        lock(&self.readers).put(key, reader.clone());
        reader
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
    ) -> Result<Vec<u8>, ReadError> {
        let reader = self.disk_reader(snapshot, disk_no, disk);
        let key = (*snapshot, disk_no);
        let end = offset.saturating_add(u64::from(len)).min(disk.size);
        self.follow(key, &reader, offset, end);
        let mut out = Vec::with_capacity(usize::try_from(end.saturating_sub(offset)).unwrap_or(0));
        let chunk_size = reader.chunk_size().max(1);
        let mut pos = offset;
        while pos < end {
            let no = pos / chunk_size;
            let within = usize::try_from(pos % chunk_size).unwrap_or(0);
            let take = usize::try_from((chunk_size - pos % chunk_size).min(end - pos)).unwrap_or(0);
            let id = self.chunk_id(key, &reader, no)?;
            if id.is_zero() {
                out.resize(out.len() + take, 0);
            } else {
                let chunk = self.chunk(&reader, no, &id)?;
                let piece = chunk.get(within..within + take).ok_or_else(|| {
                    Arc::new(vmstash_repo::Error::InvalidParameter(format!(
                        "{take} bytes at {within} of a chunk of {}",
                        chunk.len()
                    )))
                })?;
                out.extend_from_slice(piece);
            }
            pos += u64::try_from(take).unwrap_or(u64::MAX);
        }
        Ok(out)
    }

    /// Notes a read of `[offset, end)` and, when it continues the previous one of the same
    /// disk, asks for the chunks after it.
    fn follow(&self, key: DiskKey, reader: &DiskReader, offset: u64, end: u64) {
        let chunk_size = reader.chunk_size().max(1);
        let last_chunk = end.saturating_sub(1) / chunk_size;
        let wanted_to = last_chunk
            .saturating_add(READ_AHEAD_CHUNKS)
            .min(reader.chunk_count().saturating_sub(1));
        let mut streams = lock(&self.streams);
        let Some(stream) = streams.get_mut(&key) else {
            streams.put(
                key,
                Stream {
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
                key,
                reader: reader.clone(),
                chunk,
            };
            if self.prefetch.try_send(job).is_err() {
                break;
            }
            stream.ahead_to = chunk;
        }
    }

    /// The id of chunk `no`, from the segment cache or its map segment.
    fn chunk_id(&self, key: DiskKey, reader: &DiskReader, no: u64) -> Result<Id, ReadError> {
        let no = usize::try_from(no).unwrap_or(usize::MAX);
        let seg = no / SEGMENT_ENTRIES;
        let seg_key = (key.0, key.1, seg);
        let cached = lock(&self.segments).get(&seg_key).cloned();
        let ids = match cached {
            Some(ids) => ids,
            None => {
                let ids = Arc::new(reader.segment(seg).map_err(Arc::new)?);
                lock(&self.segments).put(seg_key, Arc::clone(&ids));
                ids
            }
        };
        ids.get(no % SEGMENT_ENTRIES).copied().ok_or_else(|| {
            Arc::new(vmstash_repo::Error::InvalidParameter(format!(
                "chunk {no} is beyond the map of disk {}",
                reader.disk().name
            )))
        })
    }

    /// Chunk `no` (id `id`), verified and of the length its position needs: from the cache,
    /// from the thread already fetching it, or fetched.
    fn chunk(&self, reader: &DiskReader, no: u64, id: &Id) -> Result<Arc<Vec<u8>>, ReadError> {
        let chunk = match self.chunk_by_id(reader, no, id) {
            // Zeros for this snapshot's lost bytes, never cached under the chunk's id.
            Err(e) if reader.zeroes_lost() && matches!(*e, vmstash_repo::Error::Lost { .. }) => {
                let len = reader.chunk_len(no).map_err(Arc::new)?;
                return Ok(Arc::new(vec![0; usize::try_from(len).unwrap_or(0)]));
            }
            other => other?,
        };
        reader
            .check_chunk_len(no, id, chunk.len())
            .map_err(Arc::new)?;
        Ok(chunk)
    }

    fn chunk_by_id(
        &self,
        reader: &DiskReader,
        no: u64,
        id: &Id,
    ) -> Result<Arc<Vec<u8>>, ReadError> {
        if let Some(chunk) = lock(&self.chunks).get(id).cloned() {
            return Ok(chunk);
        }
        let (pending, mine) = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(id) {
                Some(p) => (Arc::clone(p), false),
                None => {
                    if let Some(chunk) = lock(&self.chunks).get(id).cloned() {
                        return Ok(chunk);
                    }
                    let p = Arc::new(Pending::default());
                    inflight.insert(*id, Arc::clone(&p));
                    (p, true)
                }
            }
        };
        if mine {
            let fetched = reader
                .read_chunk_strict(no, id)
                .map(Arc::new)
                .map_err(Arc::new);
            if let Ok(chunk) = &fetched {
                lock(&self.chunks).put(*id, Arc::clone(chunk));
            }
            *lock(&pending.result) = Some(fetched.clone());
            pending.done.notify_all();
            lock(&self.inflight).remove(id);
            return fetched;
        }
        let mut result = lock(&pending.result);
        loop {
            if let Some(r) = result.as_ref() {
                return r.clone();
            }
            result = pending
                .done
                .wait(result)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A read-ahead thread: fetches the chunks asked for into the cache until the reader is
/// dropped. Failures are left for the reader that needs the chunk to report.
fn fetch_ahead(images: &Weak<ImageReader>, queue: &Receiver<Prefetch>) {
    for job in queue {
        let Some(images) = images.upgrade() else {
            return;
        };
        if let Ok(id) = images.chunk_id(job.key, &job.reader, job.chunk) {
            if !id.is_zero() {
                let _ = images.chunk(&job.reader, job.chunk, &id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmstash_repo::backend::{Backend, FileKind};
    use vmstash_repo::backup::{back_up, BackupDisk, BackupPlan};
    use vmstash_repo::source::MemorySource;
    use vmstash_repo::testing::{memory_repository, noise, CHUNK_SIZE};
    use vmstash_repo::{CancelToken, NoProgress};

    fn backed_up(
        bytes: Vec<u8>,
    ) -> (
        Arc<vmstash_repo::backend::MemoryBackend>,
        Repository,
        Id,
        Disk,
    ) {
        let (mem, repo) = memory_repository();
        let disk = BackupDisk::new("vda", "memory", Box::new(MemorySource::new(bytes)));
        let saved = back_up(
            &repo,
            BackupPlan::new("web1", vec![disk]),
            &NoProgress,
            &CancelToken::new(),
        )
        .expect("backup");
        let disk = saved.manifest.disks[0].clone();
        (mem, repo, saved.id, disk)
    }

    #[test]
    fn reads_across_chunks_match_the_disk_and_every_waiter_gets_the_damage_as_damage() {
        let chunk = usize::try_from(CHUNK_SIZE).expect("chunk");
        let mut bytes = noise(1, 6 * chunk);
        bytes[2 * chunk..3 * chunk].fill(0);
        let (mem, repo, id, disk) = backed_up(bytes.clone());
        let images = ImageReader::new(
            repo.clone(),
            repo.load_index().expect("index"),
            1 << 20,
            CHUNK_SIZE,
        );
        let at = u64::try_from(chunk - 100).expect("n");
        let got = images
            .read(&id, 0, &disk, at, 3 * CHUNK_SIZE)
            .expect("read");
        assert_eq!(got, bytes[chunk - 100..4 * chunk - 100]);
        let tail = images
            .read(&id, 0, &disk, disk.size - 10, 100)
            .expect("tail");
        assert_eq!(
            tail,
            bytes[bytes.len() - 10..],
            "cut at the end of the disk"
        );

        // Damage every pack: a fresh reader (no cache) gets Corrupt, on every thread.
        for (name, _) in mem.list(FileKind::Pack).expect("list") {
            mem.tamper(FileKind::Pack, &name, |v| {
                let n = v.len();
                v[n / 2] ^= 0x40;
            });
        }
        let images = ImageReader::new(
            repo.clone(),
            repo.load_index().expect("index"),
            1 << 20,
            CHUNK_SIZE,
        );
        let errors: Vec<ReadError> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| images.read(&id, 0, &disk, 0, 6 * CHUNK_SIZE)))
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().expect("thread").err())
                .collect()
        });
        assert_eq!(errors.len(), 4);
        for e in errors {
            assert!(matches!(*e, vmstash_repo::Error::Corrupt { .. }), "{e}");
        }
    }
}
