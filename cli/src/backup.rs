//! `vmstash backup`: disk images → chunks → blobs → a snapshot.
//!
//! Per disk, one reader thread reads the chunks that may hold data (holes
//! and unallocated qcow2 clusters are never read) into a fixed pool of
//! buffers; two workers test for all-zero, hash (SHA-NI), and hand new
//! chunks to the repository's write session, which compresses and seals
//! on the worker's core. The pool bounds memory to a few chunks per worker
//! whatever the disk size; the chunk map is built one segment at a time.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::json;
use vmstash_repo::blob::BlobType;
use vmstash_repo::chunkmap::{encode_segment, SEGMENT_ENTRIES};
use vmstash_repo::repository::now_rfc3339;
use vmstash_repo::snapshot::{is_safe_name, Disk, Manifest, Summary};
use vmstash_repo::writer::WriteSession;
use vmstash_repo::{Id, Repository};

use crate::args::{BackupArgs, Global};
use crate::cmd::print_json;
use crate::source::{self, DiskSource};
use crate::{exit, progress};

/// Worker threads hashing and compressing: one per core here.
const WORKERS: usize = 2;
/// Chunk buffers per worker in flight.
const BUFFERS_PER_WORKER: usize = 4;

/// Counters of one disk.
#[derive(Default)]
struct DiskCounts {
    read: u64,
    chunks: u64,
    zero: u64,
    new: u64,
}

/// One disk to back up.
pub struct DiskInput {
    /// Name in the snapshot.
    pub name: String,
    /// Where it is read from, for the manifest and messages.
    pub source: String,
    /// The reader.
    pub src: Box<dyn DiskSource>,
}

/// Everything a new snapshot is made of.
pub struct SnapshotPlan {
    /// Snapshot series name (VM name, or the first disk's name).
    pub name: String,
    /// User and automatic tags.
    pub tags: Vec<String>,
    /// The libvirt domain XML of a VM backup.
    pub domain_xml: Option<String>,
    /// The disks, in order.
    pub disks: Vec<DiskInput>,
}

/// Runs `vmstash backup --disk …`.
pub fn run(g: &Global, repo: &Repository, a: &BackupArgs) -> Result<ExitCode> {
    let _lock = repo.lock(false)?;
    let names = disk_names(&a.disks);
    let disks = a
        .disks
        .iter()
        .zip(names)
        .map(|(p, name)| {
            let src = source::open(p).with_context(|| format!("opening disk {}", p.display()))?;
            Ok(DiskInput {
                name,
                source: p.display().to_string(),
                src,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let name = a.name.clone().unwrap_or_else(|| disks[0].name.clone());
    let plan = SnapshotPlan {
        name,
        tags: a.tags.clone(),
        domain_xml: None,
        disks,
    };
    let (id, manifest) = store(g, repo, plan, &|| false)?;
    print_summary(g, &id, &manifest);
    Ok(exit::ok())
}

/// Reads every disk of `plan` into the repository and commits the
/// snapshot. The caller holds the repository lock. `interrupted` is polled
/// while reading; when it turns true the backup stops with an error and
/// no snapshot is written.
pub fn store(
    g: &Global,
    repo: &Repository,
    plan: SnapshotPlan,
    interrupted: &(dyn Fn() -> bool + Sync),
) -> Result<(Id, Manifest)> {
    let started = Instant::now();
    let time = now_rfc3339();
    let SnapshotPlan {
        name,
        tags,
        domain_xml,
        disks: inputs,
    } = plan;
    if let Some(bad) = std::iter::once(&name)
        .chain(inputs.iter().map(|d| &d.name))
        .find(|n| !is_safe_name(n))
    {
        bail!("{bad:?} cannot be a snapshot or disk name: it must be a non-empty file name without '/'");
    }
    let index = repo.load_index().context("loading the repository index")?;
    let parent = repo
        .snapshots()?
        .into_iter()
        .rev()
        .find(|(_, m)| m.name == name)
        .map(|(id, _)| id);

    let total: u64 = inputs.iter().map(|d| d.src.size()).sum();
    let bar = progress::bytes(g, total, "backup");
    let session = WriteSession::new(repo, &index);
    let mut disks = Vec::new();
    let mut counts = DiskCounts::default();
    if g.verbose > 0 {
        let parent = parent.map_or_else(|| "none".to_string(), |p| p.short());
        eprintln!(
            "snapshot name {name:?}, parent snapshot {parent}, {} blobs already in the repository",
            index.len()
        );
    }
    for input in &inputs {
        let src = input.src.as_ref();
        bar.set_message(input.name.clone());
        if g.verbose > 0 {
            eprintln!(
                "disk {}: {} ({}), {} virtual",
                input.name,
                input.source,
                src.format().name(),
                progress::human(src.size())
            );
        }
        let (map, c) = back_up_disk(repo, &session, src, &bar, interrupted)
            .with_context(|| format!("backing up disk {} ({})", input.name, input.source))?;
        disks.push(Disk {
            name: input.name.clone(),
            source: input.source.clone(),
            format: src.format().name().to_string(),
            size: src.size(),
            chunk_size: repo.config().chunk_size,
            map,
        });
        if g.verbose > 0 {
            eprintln!(
                "disk {}: {} chunks, {} all-zero, {} new, {} read",
                input.name,
                c.chunks,
                c.zero,
                c.new,
                progress::human(c.read)
            );
        }
        counts.read += c.read;
        counts.chunks += c.chunks;
        counts.zero += c.zero;
        counts.new += c.new;
    }
    let stats = session
        .finish()
        .context("writing the last pack and index")?;
    bar.finish_and_clear();
    let mut manifest = Manifest {
        version: vmstash_repo::FORMAT_VERSION,
        time,
        hostname: repo.identity().hostname.clone(),
        username: repo.identity().username.clone(),
        name,
        tags,
        parent,
        disks,
        domain_xml,
        summary: Summary {
            disk_bytes: total,
            bytes_read: counts.read,
            bytes_added: stats.stored_bytes,
            chunks: counts.chunks,
            zero_chunks: counts.zero,
            new_chunks: counts.new,
            duration_seconds: started.elapsed().as_secs_f64(),
        },
    };
    // The snapshot's own size is part of what was added; estimate it by
    // its plaintext (it compresses well), then store the real one.
    manifest.summary.bytes_added += u64::try_from(manifest.encode().len()).unwrap_or(0) / 2;
    let (id, _) = repo
        .save_snapshot(&manifest)
        .context("saving the snapshot")?;
    Ok((id, manifest))
}

/// Prints what a backup did: one line, or the JSON summary.
pub fn print_summary(g: &Global, id: &Id, m: &Manifest) {
    let s = &m.summary;
    if g.json {
        print_json(&json!({
            "message_type": "summary", "snapshot_id": id.to_hex(), "short_id": id.short(),
            "name": m.name, "disks": m.disks.len(), "disk_bytes": s.disk_bytes,
            "bytes_read": s.bytes_read, "bytes_added": s.bytes_added, "chunks": s.chunks,
            "zero_chunks": s.zero_chunks, "new_chunks": s.new_chunks,
            "duration_seconds": s.duration_seconds,
        }));
    } else if !g.quiet {
        println!(
            "snapshot {} saved: {} disk(s), {} in {:.1} s; read {}, added {} ({} new of {} chunks, {} zero)",
            id.short(),
            m.disks.len(),
            progress::human(s.disk_bytes),
            s.duration_seconds,
            progress::human(s.bytes_read),
            progress::human(s.bytes_added),
            s.new_chunks,
            s.chunks,
            s.zero_chunks
        );
    }
}

/// Snapshot disk names: file names without extension, made unique.
fn disk_names(paths: &[std::path::PathBuf]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in paths {
        let stem = Path::new(p)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty() && s != "." && s != "..")
            .unwrap_or_else(|| "disk".to_string());
        let mut name = stem.clone();
        let mut n = 2;
        while out.contains(&name) {
            name = format!("{stem}-{n}");
            n += 1;
        }
        out.push(name);
    }
    out
}

/// A chunk handed from the reader to a worker.
struct Job {
    no: u64,
    /// `None` when the chunk lies in a hole and reads as zeros.
    data: Option<Vec<u8>>,
}

/// A worker's verdict on one chunk.
struct Done {
    no: u64,
    id: Id,
    new: bool,
}

/// Backs up one disk; returns its map segment ids.
fn back_up_disk(
    repo: &Repository,
    session: &WriteSession<'_>,
    src: &dyn DiskSource,
    bar: &indicatif::ProgressBar,
    interrupted: &(dyn Fn() -> bool + Sync),
) -> Result<(Vec<Id>, DiskCounts)> {
    let chunk = u64::from(repo.config().chunk_size);
    let size = src.size();
    let chunks = size.div_ceil(chunk);
    let ranges = src.data_ranges()?;
    let abort = AtomicBool::new(false);
    let (job_tx, job_rx) = bounded::<Job>(WORKERS * BUFFERS_PER_WORKER);
    let (done_tx, done_rx) = bounded::<Result<Done>>(WORKERS * BUFFERS_PER_WORKER);
    let (free_tx, free_rx) = bounded::<Vec<u8>>(WORKERS * BUFFERS_PER_WORKER);
    for _ in 0..WORKERS * BUFFERS_PER_WORKER {
        free_tx
            .send(Vec::new())
            .map_err(|_| anyhow!("buffer pool closed"))?;
    }
    let mut counts = DiskCounts::default();
    let mut map = MapBuilder::new(session);
    std::thread::scope(|s| -> Result<()> {
        let (ranges, abort_r) = (&ranges, &abort);
        let reader = s.spawn(move || {
            read_chunks(src, ranges, chunk, &job_tx, &free_rx, abort_r, interrupted)
        });
        for _ in 0..WORKERS {
            let (job_rx, done_tx, free_tx, abort) =
                (job_rx.clone(), done_tx.clone(), free_tx.clone(), &abort);
            s.spawn(move || hash_chunks(session, &job_rx, &done_tx, &free_tx, abort));
        }
        drop((done_tx, job_rx, free_tx));
        let mut first_err = None;
        for done in &done_rx {
            match done {
                Ok(d) if first_err.is_none() => {
                    counts.chunks += 1;
                    counts.zero += u64::from(d.id.is_zero());
                    counts.new += u64::from(d.new);
                    let len = chunk.min(size - d.no * chunk);
                    bar.inc(len);
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
        let read = reader
            .join()
            .map_err(|_| anyhow!("reader thread panicked"))?;
        match (first_err, read) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(n)) => {
                counts.read = n;
                Ok(())
            }
        }
    })?;
    let segments = map.finish(chunks)?;
    Ok((segments, counts))
}

/// Reads every chunk that may hold data; returns the bytes read.
fn read_chunks(
    src: &dyn DiskSource,
    ranges: &[Range<u64>],
    chunk: u64,
    jobs: &Sender<Job>,
    free: &Receiver<Vec<u8>>,
    abort: &AtomicBool,
    interrupted: &(dyn Fn() -> bool + Sync),
) -> Result<u64> {
    let size = src.size();
    let mut data = DataCursor::new(ranges);
    let mut read = 0u64;
    let mut no = 0u64;
    while no * chunk < size {
        if abort.load(Ordering::Relaxed) {
            return Ok(read);
        }
        if interrupted() {
            bail!("interrupted");
        }
        let start = no * chunk;
        let end = (start + chunk).min(size);
        let job = if data.any_in(start..end) {
            let mut buf = free.recv().map_err(|_| anyhow!("workers stopped"))?;
            buf.resize(usize::try_from(end - start)?, 0);
            src.read_at(&mut buf, start)?;
            read += end - start;
            Job {
                no,
                data: Some(buf),
            }
        } else {
            Job { no, data: None }
        };
        if jobs.send(job).is_err() {
            return Ok(read);
        }
        no += 1;
    }
    Ok(read)
}

/// Hashes and stores chunks until the reader is done. After an abort,
/// jobs are taken only to give their buffers back to the reader.
fn hash_chunks(
    session: &WriteSession<'_>,
    jobs: &Receiver<Job>,
    done: &Sender<Result<Done>>,
    free: &Sender<Vec<u8>>,
    abort: &AtomicBool,
) {
    for job in jobs {
        let result = (!abort.load(Ordering::Relaxed)).then(|| hash_chunk(session, &job));
        if let Some(buf) = job.data {
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
    let no = job.no;
    match &job.data {
        Some(buf) if !is_zero(buf) => {
            let id = Id::of(buf);
            let new = session.save(BlobType::Data, id, buf)?;
            Ok(Done { no, id, new })
        }
        _ => Ok(Done {
            no,
            id: Id::ZERO,
            new: false,
        }),
    }
}

/// True when every byte is zero (16 bytes at a time).
pub fn is_zero(buf: &[u8]) -> bool {
    let words = buf.chunks_exact(16);
    let tail = words.remainder();
    words
        .map(|w| w.iter().fold(0u8, |acc, b| acc | b))
        .all(|w| w == 0)
        && tail.iter().all(|&b| b == 0)
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
    fn zero_detection() {
        assert!(is_zero(&[0; 4099]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[17] = 1;
        assert!(!is_zero(&v));
    }

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
    fn names_are_unique() {
        let n = disk_names(&["/a/disk.img".into(), "/b/disk.qcow2".into(), "/c/x".into()]);
        assert_eq!(n, ["disk", "disk-2", "x"]);
    }
}
