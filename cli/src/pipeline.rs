//! The backup pipeline: disks → chunks → hashed, deduplicated, stored blobs → chunk maps.
//!
//! All disks of a snapshot go through one pipeline at once, so that a VM with several disks
//! keeps both cores and the connection busy from the first chunk of the first disk to the last
//! chunk of the last one.
//!
//! - **Readers.** Each disk has its own reader threads (one for a local file, read in order for
//!   the kernel's read-ahead; several for a disk over SFTP, see
//!   [`DiskSource::concurrent_reads`]). They take the disk's chunks in order from a shared
//!   queue and read only those that may hold data: holes and unallocated qcow2 clusters are
//!   never read.
//! - **Workers.** One per core test each chunk for all-zero, hash it (SHA-NI), and hand new
//!   chunks to the repository's write session, which compresses and seals them on the worker's
//!   core.
//! - **Bounded memory.** Chunks travel in a fixed pool of buffers (a few per worker, one per
//!   reader) whatever the disks' sizes; each disk's chunk map is written one segment at a time
//!   as the chunks' ids arrive, in whatever order they arrive.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use anyhow::{anyhow, bail, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use vmstash_repo::blob::BlobType;
use vmstash_repo::chunkmap::{encode_segment, SEGMENT_ENTRIES};
use vmstash_repo::writer::WriteSession;
use vmstash_repo::Id;

use crate::source::DiskSource;
use vmstash_hashblocks::hasher::is_zero;

/// Worker threads hashing and compressing: one per core here.
const WORKERS: usize = 2;
/// Chunk buffers per worker in flight.
const BUFFERS_PER_WORKER: usize = 4;
/// Most reader threads per disk, whatever the source asks for.
const MAX_READERS: usize = 8;

/// What the pipeline did with one disk.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiskCounts {
    /// Bytes read from the source.
    pub read: u64,
    /// Chunks of the disk.
    pub chunks: u64,
    /// Chunks that read as all zeros.
    pub zero: u64,
    /// Chunks the repository did not have.
    pub new: u64,
}

/// One disk's result: its chunk map segment ids and its counters.
pub struct DiskResult {
    /// The ids of the disk's map segments, in order.
    pub map: Vec<Id>,
    /// What was read and stored.
    pub counts: DiskCounts,
}

/// One disk to back up.
pub struct DiskJob<'a> {
    /// Its reader.
    pub src: &'a dyn DiskSource,
    /// The id of each of its chunks (`Id::ZERO` for zeros) when the hashblocks helper computed
    /// them on the host: chunks the repository already has, and zero chunks, are then not read.
    pub ids: Option<&'a [Id]>,
}

/// A chunk handed from a reader to a worker.
struct Job {
    /// Index of the disk in the caller's list.
    disk: usize,
    /// Chunk number on the disk.
    no: u64,
    /// What the reader found.
    content: Content,
}

/// A chunk's content as the reader hands it on.
enum Content {
    /// It reads as zeros (a hole, or the helper said so); nothing was read.
    Zero,
    /// The repository has it already (by the helper's hash); nothing was read.
    Known(Id),
    /// Its bytes.
    Data(Vec<u8>),
}

/// A worker's verdict on one chunk.
struct Done {
    disk: usize,
    no: u64,
    id: Id,
    new: bool,
}

/// Backs up `jobs` (chunks of `chunk` bytes) into `session`, all at once.
///
/// `progress` is told the guest bytes of each chunk done; `interrupted` is polled before each
/// read. The first error stops every thread and is returned.
pub fn back_up_disks(
    session: &WriteSession<'_>,
    jobs: &[DiskJob<'_>],
    chunk: u64,
    progress: &(dyn Fn(u64) + Sync),
    interrupted: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<DiskResult>> {
    let disks: Vec<&dyn DiskSource> = jobs.iter().map(|j| j.src).collect();
    if let Some(bad) = jobs.iter().find(|j| {
        j.ids
            .is_some_and(|ids| u64::try_from(ids.len()).ok() != Some(j.src.size().div_ceil(chunk)))
    }) {
        bail!(
            "internal error: {} chunk ids for a disk of {} bytes",
            bad.ids.map_or(0, <[Id]>::len),
            bad.src.size()
        );
    }
    let ranges = disks
        .iter()
        .map(|d| d.data_ranges())
        .collect::<Result<Vec<_>, _>>()?;
    let queues: Vec<ChunkQueue<'_>> = disks
        .iter()
        .zip(&ranges)
        .map(|(d, r)| ChunkQueue::new(r, chunk, d.size()))
        .collect();
    let readers: Vec<usize> = disks
        .iter()
        .map(|d| d.concurrent_reads().clamp(1, MAX_READERS))
        .collect();
    let buffers = WORKERS * BUFFERS_PER_WORKER + readers.iter().sum::<usize>();
    let abort = AtomicBool::new(false);
    let (job_tx, job_rx) = bounded::<Job>(buffers);
    let (done_tx, done_rx) = bounded::<Result<Done>>(buffers);
    let (free_tx, free_rx) = bounded::<Vec<u8>>(buffers);
    for _ in 0..buffers {
        free_tx
            .send(Vec::new())
            .map_err(|_| anyhow!("buffer pool closed"))?;
    }
    let mut maps: Vec<MapBuilder<'_, '_>> =
        disks.iter().map(|_| MapBuilder::new(session)).collect();
    let mut counts = vec![DiskCounts::default(); disks.len()];
    std::thread::scope(|s| -> Result<()> {
        let abort_r = &abort;
        let mut reader_threads = Vec::new();
        for (disk, (job, queue)) in jobs.iter().zip(&queues).enumerate() {
            for _ in 0..readers[disk] {
                let (job_tx, free) = (job_tx.clone(), free_rx.clone());
                let reader = Reader {
                    disk,
                    src: job.src,
                    ids: job.ids,
                    session,
                    queue,
                    jobs: job_tx,
                    free,
                    abort: abort_r,
                    interrupted,
                };
                reader_threads.push((disk, s.spawn(move || reader.run())));
            }
        }
        for _ in 0..WORKERS {
            let (job_rx, done_tx, free_tx, abort) =
                (job_rx.clone(), done_tx.clone(), free_tx.clone(), &abort);
            s.spawn(move || hash_chunks(session, &job_rx, &done_tx, &free_tx, abort));
        }
        drop((job_tx, free_rx, done_tx, job_rx, free_tx));
        let mut first_err = None;
        for done in &done_rx {
            match done {
                Ok(d) if first_err.is_none() => {
                    let (Some(c), Some(map), Some(src)) = (
                        counts.get_mut(d.disk),
                        maps.get_mut(d.disk),
                        disks.get(d.disk),
                    ) else {
                        continue;
                    };
                    c.chunks += 1;
                    c.zero += u64::from(d.id.is_zero());
                    c.new += u64::from(d.new);
                    progress(chunk.min(src.size().saturating_sub(d.no * chunk)));
                    if let Err(e) = map.put(d.no, d.id) {
                        abort.store(true, Ordering::Relaxed);
                        first_err = Some(e);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    abort.store(true, Ordering::Relaxed);
                    first_err.get_or_insert(e);
                }
            }
        }
        for (disk, reader) in reader_threads {
            match reader.join() {
                Ok(Ok(n)) => {
                    if let Some(c) = counts.get_mut(disk) {
                        c.read += n;
                    }
                }
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(anyhow!("reader thread panicked"));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    })?;
    maps.into_iter()
        .zip(disks)
        .zip(counts)
        .map(|((map, src), counts)| {
            Ok(DiskResult {
                map: map.finish(src.size().div_ceil(chunk))?,
                counts,
            })
        })
        .collect()
}

/// Hands out a disk's chunks, in order, to its reader threads.
struct ChunkQueue<'a> {
    /// The next chunk number, and where it stands among the data ranges.
    next: Mutex<(u64, DataCursor<'a>)>,
    /// Chunk size in bytes.
    chunk: u64,
    /// Disk size in bytes.
    size: u64,
}

/// One chunk handed to a reader.
struct ChunkTask {
    /// Its number on the disk.
    no: u64,
    /// Its bytes on the disk.
    range: Range<u64>,
    /// Whether it overlaps a data range (else it reads as zeros, unread).
    has_data: bool,
}

impl<'a> ChunkQueue<'a> {
    fn new(ranges: &'a [Range<u64>], chunk: u64, size: u64) -> Self {
        ChunkQueue {
            next: Mutex::new((0, DataCursor::new(ranges))),
            chunk,
            size,
        }
    }

    /// The next chunk, or `None` past the end of the disk.
    fn take(&self) -> Option<ChunkTask> {
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let (no, cursor) = &mut *next;
        let start = no.checked_mul(self.chunk).filter(|&s| s < self.size)?;
        let range = start..start.saturating_add(self.chunk).min(self.size);
        let task = ChunkTask {
            no: *no,
            has_data: cursor.any_in(range.clone()),
            range,
        };
        *no += 1;
        Some(task)
    }
}

/// One reader thread of one disk.
struct Reader<'q, 'a> {
    disk: usize,
    src: &'a dyn DiskSource,
    ids: Option<&'a [Id]>,
    session: &'a WriteSession<'a>,
    queue: &'q ChunkQueue<'a>,
    jobs: Sender<Job>,
    free: Receiver<Vec<u8>>,
    abort: &'a AtomicBool,
    interrupted: &'a (dyn Fn() -> bool + Sync),
}

impl Reader<'_, '_> {
    /// Reads chunks until the disk's queue is empty; returns the bytes read.
    fn run(self) -> Result<u64> {
        let mut read = 0u64;
        while let Some(task) = self.queue.take() {
            if self.abort.load(Ordering::Relaxed) {
                return Ok(read);
            }
            if (self.interrupted)() {
                self.abort.store(true, Ordering::Relaxed);
                bail!("interrupted");
            }
            let len = task.range.end - task.range.start;
            let hinted = self
                .ids
                .and_then(|ids| ids.get(usize::try_from(task.no).ok()?));
            let content = match hinted {
                _ if !task.has_data => Content::Zero,
                Some(id) if id.is_zero() => Content::Zero,
                Some(id) if self.session.is_known(id) => Content::Known(*id),
                _ => {
                    let mut buf = self.free.recv().map_err(|_| anyhow!("workers stopped"))?;
                    buf.resize(usize::try_from(len)?, 0);
                    if let Err(e) = self.src.read_at(&mut buf, task.range.start) {
                        self.abort.store(true, Ordering::Relaxed);
                        return Err(e.into());
                    }
                    read += len;
                    Content::Data(buf)
                }
            };
            let job = Job {
                disk: self.disk,
                no: task.no,
                content,
            };
            if self.jobs.send(job).is_err() {
                return Ok(read);
            }
        }
        Ok(read)
    }
}

/// Hashes and stores chunks until the readers are done. After an abort,
/// jobs are taken only to give their buffers back to the readers.
fn hash_chunks(
    session: &WriteSession<'_>,
    jobs: &Receiver<Job>,
    done: &Sender<Result<Done>>,
    free: &Sender<Vec<u8>>,
    abort: &AtomicBool,
) {
    for job in jobs {
        let result = (!abort.load(Ordering::Relaxed)).then(|| hash_chunk(session, &job));
        if let Content::Data(buf) = job.content {
            let _ = free.send(buf);
        }
        if let Some(r) = result {
            if done.send(r).is_err() {
                return;
            }
        }
    }
}

fn hash_chunk(session: &WriteSession<'_>, job: &Job) -> Result<Done> {
    let (disk, no) = (job.disk, job.no);
    match &job.content {
        Content::Data(buf) if !is_zero(buf) => {
            let id = Id::of(buf);
            let new = session.save(BlobType::Data, id, buf)?;
            Ok(Done { disk, no, id, new })
        }
        Content::Known(id) => Ok(Done {
            disk,
            no,
            id: *id,
            new: false,
        }),
        Content::Data(_) | Content::Zero => Ok(Done {
            disk,
            no,
            id: Id::ZERO,
            new: false,
        }),
    }
}

/// Walks sorted data ranges alongside ascending chunk ranges.
struct DataCursor<'a> {
    ranges: &'a [Range<u64>],
    i: usize,
}

impl<'a> DataCursor<'a> {
    fn new(ranges: &'a [Range<u64>]) -> Self {
        DataCursor { ranges, i: 0 }
    }

    /// True when `r` overlaps a data range; `r` must not go backwards.
    fn any_in(&mut self, r: Range<u64>) -> bool {
        while self.ranges.get(self.i).is_some_and(|d| d.end <= r.start) {
            self.i += 1;
        }
        self.ranges.get(self.i).is_some_and(|d| d.start < r.end)
    }
}

/// Collects chunk ids arriving out of order into map segments.
struct MapBuilder<'s, 'r> {
    session: &'s WriteSession<'r>,
    pending: BTreeMap<u64, Id>,
    next: u64,
    current: Vec<Id>,
    segments: Vec<Id>,
}

impl<'s, 'r> MapBuilder<'s, 'r> {
    fn new(session: &'s WriteSession<'r>) -> Self {
        MapBuilder {
            session,
            pending: BTreeMap::new(),
            next: 0,
            current: Vec::with_capacity(SEGMENT_ENTRIES),
            segments: Vec::new(),
        }
    }

    fn put(&mut self, no: u64, id: Id) -> Result<()> {
        self.pending.insert(no, id);
        while let Some(id) = self.pending.remove(&self.next) {
            self.current.push(id);
            self.next += 1;
            if self.current.len() == SEGMENT_ENTRIES {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let seg = std::mem::take(&mut self.current);
        let id = if seg.iter().all(Id::is_zero) {
            Id::ZERO
        } else {
            let plain = encode_segment(&seg);
            let id = Id::of(&plain);
            self.session.save(BlobType::Map, id, &plain)?;
            id
        };
        self.segments.push(id);
        Ok(())
    }

    fn finish(mut self, chunks: u64) -> Result<Vec<Id>> {
        if self.next != chunks || !self.pending.is_empty() {
            return Err(anyhow!(
                "internal error: {} of {chunks} chunks mapped",
                self.next
            ));
        }
        if !self.current.is_empty() {
            self.flush()?;
        }
        Ok(self.segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_cursor() {
        let ranges = [10..20, 40..50];
        let mut c = DataCursor::new(&ranges);
        assert!(!c.any_in(0..10));
        assert!(c.any_in(10..30));
        assert!(!c.any_in(30..40));
        assert!(c.any_in(30..41));
        assert!(!c.any_in(50..60));
    }

    #[test]
    fn chunk_queue_hands_out_every_chunk_once_in_order() {
        let ranges = [10..20, 95..96];
        let queue = ChunkQueue::new(&ranges, 30, 100);
        let tasks: Vec<(u64, Range<u64>, bool)> = std::iter::from_fn(|| queue.take())
            .map(|t| (t.no, t.range, t.has_data))
            .collect();
        assert_eq!(
            tasks,
            [
                (0, 0..30, true),
                (1, 30..60, false),
                (2, 60..90, false),
                (3, 90..100, true)
            ]
        );
        assert!(queue.take().is_none(), "stays empty");
    }

    #[test]
    fn chunk_queue_shared_by_threads_loses_nothing() {
        let ranges = [0..400_000, 600_000..1_000_000];
        let queue = ChunkQueue::new(&ranges, 7, 1_000_000);
        let mut seen: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        std::iter::from_fn(|| queue.take())
                            .map(|t| t.no)
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("reader thread"))
                .collect()
        });
        seen.sort_unstable();
        assert_eq!(seen, (0..1_000_000u64.div_ceil(7)).collect::<Vec<_>>());
    }

    /// An in-memory disk; `fail_at` makes reads at that offset fail.
    struct FakeDisk {
        bytes: Vec<u8>,
        readers: usize,
        fail_at: Option<u64>,
    }

    impl DiskSource for FakeDisk {
        fn format(&self) -> crate::source::ImageFormat {
            crate::source::ImageFormat::Raw
        }
        fn size(&self) -> u64 {
            u64::try_from(self.bytes.len()).expect("size")
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), crate::source::SourceError> {
            if self.fail_at == Some(offset) {
                return Err(crate::source::SourceError::Io {
                    path: "fake".into(),
                    action: "read".to_owned(),
                    source: std::io::Error::other("injected"),
                });
            }
            let start = usize::try_from(offset).expect("offset");
            buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
            Ok(())
        }
        fn data_ranges(&self) -> Result<Vec<Range<u64>>, crate::source::SourceError> {
            Ok(crate::source::whole_disk(self.size()))
        }
        fn concurrent_reads(&self) -> usize {
            self.readers
        }
    }

    fn memory_repo() -> vmstash_repo::Repository {
        let kdf = vmstash_repo::keyfile::KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let chunk = vmstash_repo::config::ChunkSize::new(64 << 10).expect("chunk size");
        let backend = std::sync::Arc::new(vmstash_repo::backend::MemoryBackend::default());
        vmstash_repo::Repository::init(backend, b"pw", chunk, 3, kdf).expect("init")
    }

    /// Pseudo-random bytes, with every third 64 KiB chunk zero and a repeated chunk.
    fn disk_bytes(seed: u64, chunks: usize) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(chunks << 16);
        for c in 0..chunks {
            for _ in 0..(1 << 13) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let word = if c % 3 == 2 { 0 } else { x };
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
        let first = out[..1 << 16].to_vec();
        out[(chunks - 1) << 16..].copy_from_slice(&first);
        out
    }

    #[test]
    fn several_disks_at_once_map_every_chunk_in_order() {
        let repo = memory_repo();
        let index = repo.load_index().expect("index");
        let session = WriteSession::new(&repo, &index);
        let one = FakeDisk {
            bytes: disk_bytes(1, 40),
            readers: 1,
            fail_at: None,
        };
        let mut two_bytes = disk_bytes(2, 25);
        two_bytes.truncate(two_bytes.len() - 1000);
        let two = FakeDisk {
            bytes: two_bytes,
            readers: 4,
            fail_at: None,
        };
        let done = std::sync::atomic::AtomicU64::new(0);
        let progress = |n| {
            done.fetch_add(n, Ordering::Relaxed);
        };
        let disks = [
            DiskJob {
                src: &one,
                ids: None,
            },
            DiskJob {
                src: &two,
                ids: None,
            },
        ];
        let results =
            back_up_disks(&session, &disks, 64 << 10, &progress, &|| false).expect("backup");
        session.finish().expect("finish");
        assert_eq!(done.into_inner(), one.size() + two.size());
        let index = repo.load_index().expect("index");
        for (disk, result) in [&one, &two].iter().zip(&results) {
            let mut ids = Vec::new();
            for segment in &result.map {
                let plain = repo.read_blob(&index, segment).expect("segment");
                ids.extend(vmstash_repo::chunkmap::decode_segment(&plain, "test").expect("decode"));
            }
            let expected: Vec<Id> = disk
                .bytes
                .chunks(64 << 10)
                .map(|c| if is_zero(c) { Id::ZERO } else { Id::of(c) })
                .collect();
            assert_eq!(ids, expected);
            assert_eq!(result.counts.read, disk.size());
            assert_eq!(
                result.counts.chunks,
                u64::try_from(expected.len()).expect("n")
            );
            let zeros = expected.iter().filter(|id| id.is_zero()).count();
            assert_eq!(result.counts.zero, u64::try_from(zeros).expect("n"));
        }
        assert_eq!(
            results[0].counts.new + results[0].counts.zero + 1,
            40,
            "the last chunk repeats the first"
        );
    }

    #[test]
    fn a_failing_read_stops_every_disk_with_its_error() {
        let repo = memory_repo();
        let index = repo.load_index().expect("index");
        let session = WriteSession::new(&repo, &index);
        let good = FakeDisk {
            bytes: disk_bytes(3, 64),
            readers: 2,
            fail_at: None,
        };
        let bad = FakeDisk {
            bytes: disk_bytes(4, 64),
            readers: 4,
            fail_at: Some(10 << 16),
        };
        let disks = [
            DiskJob {
                src: &good,
                ids: None,
            },
            DiskJob {
                src: &bad,
                ids: None,
            },
        ];
        let err = back_up_disks(&session, &disks, 64 << 10, &|_| {}, &|| false)
            .err()
            .expect("the read error");
        assert!(format!("{err:#}").contains("injected"), "{err:#}");
        let err = back_up_disks(&session, &disks[..1], 64 << 10, &|_| {}, &|| true)
            .err()
            .expect("interrupted");
        assert!(format!("{err:#}").contains("interrupted"), "{err:#}");
    }

    #[test]
    fn chunks_the_helper_hashed_are_read_only_when_the_repository_lacks_them() {
        let repo = memory_repo();
        let index = repo.load_index().expect("index");
        let session = WriteSession::new(&repo, &index);
        let chunk = 64usize << 10;
        let bytes = disk_bytes(5, 12);
        let ids: Vec<Id> = bytes
            .chunks(chunk)
            .map(|c| if is_zero(c) { Id::ZERO } else { Id::of(c) })
            .collect();
        assert!(session
            .save(BlobType::Data, ids[0], &bytes[..chunk])
            .expect("store chunk 0 beforehand"));
        // Chunk 0 is known, chunk 2 is zero: reading either would fail.
        for fail_at in [0, 2 * chunk] {
            let disk = FakeDisk {
                bytes: bytes.clone(),
                readers: 2,
                fail_at: Some(u64::try_from(fail_at).expect("offset")),
            };
            let jobs = [DiskJob {
                src: &disk,
                ids: Some(&ids),
            }];
            let result = back_up_disks(&session, &jobs, 64 << 10, &|_| {}, &|| false)
                .expect("backup without reading known or zero chunks");
            assert_eq!(result[0].counts.chunks, 12);
            let read_chunks = ids.iter().skip(1).filter(|id| !id.is_zero()).count();
            let expected_read = u64::try_from(read_chunks * chunk).expect("n");
            assert!(
                result[0].counts.read <= expected_read,
                "read {} bytes, at most {expected_read} expected",
                result[0].counts.read
            );
        }
        let wrong = [DiskJob {
            src: &FakeDisk {
                bytes,
                readers: 1,
                fail_at: None,
            },
            ids: Some(&ids[..3]),
        }];
        assert!(back_up_disks(&session, &wrong, 64 << 10, &|_| {}, &|| false).is_err());
    }
}
