//! The backup pipeline: disks → chunks → hashed, deduplicated, stored blobs → chunk maps.
//!
//! All disks of a snapshot go through one pipeline at once, so that a VM with several disks
//! keeps every core and the connection busy from the first chunk of the first disk to the last
//! chunk of the last one.
//!
//! - **Readers.** Each disk has its own reader threads ([`DiskSource::concurrent_reads`] of
//!   them, at most [`MAX_READERS`]). They take the disk's chunks from a shared queue, a couple
//!   of regions of the disk side by side, each in order (see `queue`), and read only those
//!   that may hold data: holes and unallocated qcow2 clusters are never
//!   read, nor are chunks whose id the hashblocks helper computed and the repository has.
//! - **Workers.** One per core ([`crate::threads::workers`]) tests each chunk for all-zero,
//!   hashes it (SHA-NI) and hands new chunks to the [`Committer`], which compresses and seals
//!   them on the worker's core and uploads full packs on threads of its own.
//! - **Bounded memory.** Chunks travel in a fixed pool of buffers ([`buffer_count`]) whatever
//!   the disks' sizes, aligned so that a source reading past the page cache fills them
//!   directly; each disk's chunk map is written a segment at a time as the chunks' ids
//!   arrive, in whatever order they arrive.
//! - **Stopping.** The first error stops every thread and is returned (an error that only
//!   echoes another, [`Error::Aborted`], never hides the first); a cancelled token stops the
//!   readers before their next chunk.

use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{bounded, Receiver, Sender};

use super::queue::{ChunkQueue, REGIONS};
use crate::blob::BlobType;
use crate::cancel::CancelToken;
use crate::chunkmap::{chunk_count, is_zero, ChunkMapWriter};
use crate::commit::Committer;
use crate::direct::AlignedBuf;
use crate::id::Id;
use crate::progress::{ChunkDone, Progress};
use crate::source::DiskSource;
use crate::{Error, Result};

/// Chunk buffers per worker in flight.
const BUFFERS_PER_WORKER: usize = 4;
/// Most reader threads per disk, whatever the source asks for.
pub const MAX_READERS: usize = 8;
/// Memory for chunk buffers in flight, beyond the one buffer each thread needs.
const BUFFER_BUDGET: u64 = 64 << 20;

/// What the pipeline did with one disk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DiskCounts {
    /// Bytes read from the source.
    pub read: u64,
    /// Chunks of the disk.
    pub chunks: u64,
    /// Chunks that read as all zeros.
    pub zero: u64,
    /// Chunks the repository did not have.
    pub new: u64,
    /// With [`super::BackupDisk::verify_unchanged`]: chunks changed-block tracking called
    /// unchanged whose id differs from the parent snapshot's (0 when the tracking was right).
    pub cbt_mismatches: u64,
}

/// One disk's result: its chunk map segment ids and its counters.
pub(super) struct DiskResult {
    /// The ids of the disk's map segments, in order.
    pub(super) map: Vec<Id>,
    /// What was read and stored.
    pub(super) counts: DiskCounts,
}

/// One disk to back up.
pub(super) struct DiskJob<'a> {
    /// Its name, for errors.
    pub(super) name: &'a str,
    /// Its reader.
    pub(super) src: &'a dyn DiskSource,
    /// The id of each of its chunks (`Id::ZERO` for zeros) when the hashblocks helper computed
    /// them next to the disk: chunks the repository already has, and zero chunks, are then not
    /// read.
    pub(super) ids: Option<&'a [Id]>,
}

/// What the pipeline's threads share.
struct Shared<'a> {
    committer: &'a Committer<'a>,
    cancel: &'a CancelToken,
    abort: AtomicBool,
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
    /// Its bytes: the first `len` of the buffer.
    Data(AlignedBuf, usize),
}

/// A worker's verdict on one chunk.
struct Done {
    disk: usize,
    no: u64,
    id: Id,
    /// The bytes read from the source for the chunk.
    read: u64,
    /// The bytes it added to the repository when it was new.
    stored: Option<u64>,
}

/// Chunk buffers in flight: a few per worker and one per reader, within [`BUFFER_BUDGET`]
/// (large chunks get fewer), but never fewer than one per thread.
pub(super) fn buffer_count(workers: usize, readers: usize, chunk: u64) -> usize {
    let wanted = workers
        .saturating_mul(BUFFERS_PER_WORKER)
        .saturating_add(readers);
    let affordable = usize::try_from(BUFFER_BUDGET / chunk.max(1)).unwrap_or(usize::MAX);
    wanted.min(affordable).max(workers.saturating_add(readers))
}

/// Keeps the first real error: an [`Error::Aborted`] gives way to the error it echoes.
fn keep_first(slot: &mut Option<Error>, e: Error) {
    if slot.as_ref().is_none_or(Error::is_aborted) {
        *slot = Some(e);
    }
}

/// Backs up `jobs` (chunks of `chunk` bytes) through `committer`, on `workers` threads, all
/// disks at once.
pub(super) fn back_up_disks(
    committer: &Committer<'_>,
    jobs: &[DiskJob<'_>],
    chunk: u64,
    workers: usize,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<Vec<DiskResult>> {
    for job in jobs {
        let chunks = chunk_count(job.src.size(), u32::try_from(chunk).unwrap_or(u32::MAX));
        if job
            .ids
            .is_some_and(|ids| u64::try_from(ids.len()).ok() != Some(chunks))
        {
            return Err(Error::InvalidParameter(format!(
                "{} chunk ids given for disk {} of {chunks} chunks",
                job.ids.map_or(0, <[Id]>::len),
                job.name
            )));
        }
    }
    let ranges = jobs
        .iter()
        .map(|j| {
            j.src.data_ranges().map_err(|source| Error::Source {
                disk: j.name.to_owned(),
                source,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let queues: Vec<ChunkQueue<'_>> = jobs
        .iter()
        .zip(&ranges)
        .map(|(j, r)| ChunkQueue::new(r, chunk, j.src.size(), REGIONS))
        .collect();
    let readers: Vec<usize> = jobs
        .iter()
        .map(|j| j.src.concurrent_reads().clamp(1, MAX_READERS))
        .collect();
    let workers = workers.max(1);
    let buffers = buffer_count(workers, readers.iter().sum(), chunk);
    let shared = Shared {
        committer,
        cancel,
        abort: AtomicBool::new(false),
    };
    let (job_tx, job_rx) = bounded::<Job>(buffers);
    let (done_tx, done_rx) = bounded::<Result<Done>>(buffers);
    let (free_tx, free_rx) = bounded::<AlignedBuf>(buffers);
    for _ in 0..buffers {
        free_tx
            .send(AlignedBuf::new())
            .map_err(|_| Error::Aborted)?;
    }
    let mut maps = jobs
        .iter()
        .map(|j| {
            let chunks = chunk_count(j.src.size(), u32::try_from(chunk).unwrap_or(u32::MAX));
            ChunkMapWriter::new(committer, chunks)
        })
        .collect::<Vec<_>>();
    let mut counts = vec![DiskCounts::default(); jobs.len()];
    std::thread::scope(|s| -> Result<()> {
        let shared = &shared;
        let mut reader_threads = Vec::new();
        for (disk, (job, queue)) in jobs.iter().zip(&queues).enumerate() {
            for no in 0..readers.get(disk).copied().unwrap_or(1) {
                let reader = Reader {
                    no,
                    disk,
                    job,
                    queue,
                    jobs: job_tx.clone(),
                    free: free_rx.clone(),
                    shared,
                };
                reader_threads.push((disk, s.spawn(move || reader.run())));
            }
        }
        for _ in 0..workers {
            let (job_rx, done_tx, free_tx) = (job_rx.clone(), done_tx.clone(), free_tx.clone());
            s.spawn(move || hash_chunks(shared, &job_rx, &done_tx, &free_tx));
        }
        drop((job_tx, free_rx, done_tx, job_rx, free_tx));
        let mut first_err = None;
        for done in &done_rx {
            match done {
                Ok(d) => {
                    if first_err.is_some() {
                        continue;
                    }
                    let (Some(c), Some(map), Some(job)) = (
                        counts.get_mut(d.disk),
                        maps.get_mut(d.disk),
                        jobs.get(d.disk),
                    ) else {
                        continue;
                    };
                    c.chunks += 1;
                    c.zero += u64::from(d.id.is_zero());
                    c.new += u64::from(d.stored.is_some());
                    let start = d.no.saturating_mul(chunk);
                    progress.chunk_done(&ChunkDone {
                        bytes: chunk.min(job.src.size().saturating_sub(start)),
                        read: d.read,
                        stored: d.stored.unwrap_or(0),
                        new: d.stored.is_some(),
                        zero: d.id.is_zero(),
                    });
                    if let Err(e) = map.put(d.no, d.id) {
                        shared.abort.store(true, Ordering::Relaxed);
                        keep_first(&mut first_err, e);
                    }
                }
                Err(e) => {
                    shared.abort.store(true, Ordering::Relaxed);
                    keep_first(&mut first_err, e);
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
                Ok(Err(e)) => keep_first(&mut first_err, e),
                Err(_) => keep_first(
                    &mut first_err,
                    Error::InvalidParameter("a reader thread panicked".into()),
                ),
            }
        }
        first_err.map_or(Ok(()), Err)
    })?;
    maps.into_iter()
        .zip(counts)
        .map(|(map, counts)| {
            Ok(DiskResult {
                map: map.finish()?,
                counts,
            })
        })
        .collect()
}

/// One reader thread of one disk.
struct Reader<'q, 'a> {
    /// Its number among the disk's readers (which region of the disk it reads first).
    no: usize,
    disk: usize,
    job: &'a DiskJob<'a>,
    queue: &'q ChunkQueue<'a>,
    jobs: Sender<Job>,
    free: Receiver<AlignedBuf>,
    shared: &'a Shared<'a>,
}

impl Reader<'_, '_> {
    /// Reads chunks until the disk's queue is empty; returns the bytes read.
    fn run(self) -> Result<u64> {
        let mut read = 0u64;
        while let Some(task) = self.queue.take(self.no) {
            if self.shared.abort.load(Ordering::Relaxed) {
                return Ok(read);
            }
            if self.shared.cancel.is_cancelled() {
                self.shared.abort.store(true, Ordering::Relaxed);
                return Err(Error::Cancelled);
            }
            let len = task.range.end - task.range.start;
            let hinted = self
                .job
                .ids
                .and_then(|ids| ids.get(usize::try_from(task.no).ok()?));
            let content = match hinted {
                _ if !task.has_data => Content::Zero,
                Some(id) if id.is_zero() => Content::Zero,
                Some(id) if self.shared.committer.is_known(id) => Content::Known(*id),
                _ => {
                    let mut buf = self.free.recv().map_err(|_| Error::Aborted)?;
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    if let Err(source) = self.job.src.read_at(buf.slice_mut(len), task.range.start)
                    {
                        self.shared.abort.store(true, Ordering::Relaxed);
                        return Err(Error::Source {
                            disk: self.job.name.to_owned(),
                            source,
                        });
                    }
                    read += u64::try_from(len).unwrap_or(u64::MAX);
                    Content::Data(buf, len)
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

/// Hashes and stores chunks until the readers are done. After an abort, jobs are taken only to
/// give their buffers back to the readers.
fn hash_chunks(
    shared: &Shared<'_>,
    jobs: &Receiver<Job>,
    done: &Sender<Result<Done>>,
    free: &Sender<AlignedBuf>,
) {
    for job in jobs {
        let result =
            (!shared.abort.load(Ordering::Relaxed)).then(|| hash_chunk(shared.committer, &job));
        if let Content::Data(buf, _) = job.content {
            let _ = free.send(buf);
        }
        if let Some(r) = result {
            if done.send(r).is_err() {
                return;
            }
        }
    }
}

fn hash_chunk(committer: &Committer<'_>, job: &Job) -> Result<Done> {
    let (disk, no) = (job.disk, job.no);
    let read = match &job.content {
        Content::Data(_, len) => u64::try_from(*len).unwrap_or(u64::MAX),
        Content::Known(_) | Content::Zero => 0,
    };
    match &job.content {
        Content::Data(buf, len) if !is_zero(buf.slice(*len)) => {
            let bytes = buf.slice(*len);
            let id = Id::of(bytes);
            let stored = committer.save_counted(BlobType::Data, id, bytes)?;
            Ok(Done {
                disk,
                no,
                id,
                read,
                stored,
            })
        }
        Content::Known(id) => Ok(Done {
            disk,
            no,
            id: *id,
            read,
            stored: None,
        }),
        Content::Data(..) | Content::Zero => Ok(Done {
            disk,
            no,
            id: Id::ZERO,
            read,
            stored: None,
        }),
    }
}
