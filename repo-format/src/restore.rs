//! Writing a snapshot's disk back out as a raw image: the engine behind `vmstash restore`.
//!
//! The calling thread walks the disk's chunk map a segment at a time and queues the non-zero
//! chunks, grouped into [runs](crate::runs) of blobs that lie side by side in one pack, so that
//! one ranged read fetches several chunks (on an object store, a request per chunk would be a
//! round trip per chunk); the workers (the caller says how many) read each run, verify every
//! blob in it (§17) and write each chunk at its offsets. A chunk the index lacks, or a blob of
//! a run that does not open, is read again alone through the [`DiskReader`], so that it fails
//! (or reads as zeros in a recorded lost range) exactly as a single read does. Zero chunks, and zero 4 KiB blocks inside chunks, are never
//! written, so the image comes out sparse on a sink that starts as a sparse file of the disk's
//! size. Where the bytes go — a local file, a file on another host — is the [`ImageSink`]'s
//! business; making the result visible only once every chunk is verified (a temporary name,
//! then a rename) is the caller's.

use std::collections::HashMap;

use crossbeam_channel::bounded;

use crate::cancel::CancelToken;
use crate::chunkmap::{is_zero, SEGMENT_ENTRIES};
use crate::disk_reader::DiskReader;
use crate::id::Id;
use crate::progress::Progress;
use crate::runs::{plan_runs, PackRun};
use crate::{Error, Result};

/// Granularity of sparse writes: a zero block of this size inside a chunk is skipped.
pub const BLOCK: usize = 4096;
/// Chunks queued per worker.
const QUEUE_PER_WORKER: usize = 8;

/// Positional writes into an image being restored; called from several threads at once.
pub trait ImageSink: Sync {
    /// Writes all of `data` at `offset`.
    fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()>;
}

impl ImageSink for std::fs::File {
    fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, data, offset)
    }
}

/// Writes every non-zero chunk of the disk `reader` reads into `sink` (which already reads as
/// zeros), on `workers` threads; `target` names the sink in errors. Returns on the first error,
/// or with [`Error::Cancelled`] once `cancel` is set.
pub fn restore_disk(
    reader: &DiskReader,
    sink: &dyn ImageSink,
    target: &str,
    workers: usize,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<()> {
    let workers = workers.max(1);
    let (tx, rx) = bounded::<Work>(workers.saturating_mul(QUEUE_PER_WORKER));
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = rx.clone();
                s.spawn(move || -> Result<()> {
                    for work in rx {
                        cancel.check()?;
                        let write = |no: u64, plain: &[u8]| -> Result<()> {
                            write_sparse(sink, reader.chunk_offset(no), plain)
                                .map_err(|e| Error::io(target, e))?;
                            progress.advance(u64::try_from(plain.len()).unwrap_or(0));
                            Ok(())
                        };
                        do_work(reader, work, &write)?;
                    }
                    Ok(())
                })
            })
            .collect();
        drop(rx);
        let queued = queue_chunks(reader, &tx, progress, cancel);
        drop(tx);
        let mut first: Option<Error> = None;
        for h in handles {
            let r = h.join().unwrap_or_else(|_| {
                Err(Error::InvalidParameter("a restore thread panicked".into()))
            });
            if let Err(e) = r {
                if first.as_ref().is_none_or(Error::is_aborted) {
                    first = Some(e);
                }
            }
        }
        match (first, queued) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(())) => Ok(()),
        }
    })
}

/// What a restore worker does next.
enum Work {
    /// Blobs of one pack read together, each for the chunks (numbers) that hold it.
    Run(PackRun, HashMap<Id, Vec<u64>>),
    /// A chunk read alone: its id is in no index.
    Chunk(u64, Id),
}

/// Reads what `work` names and hands each chunk's verified bytes to `write`.
fn do_work(
    reader: &DiskReader,
    work: Work,
    write: &dyn Fn(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    match work {
        Work::Chunk(no, id) => write(no, &reader.read_chunk(no, &id)?),
        Work::Run(run, chunks) => {
            let opened = match reader.repository().read_run(&run) {
                Ok(opened) => opened,
                // The run as a whole did not read: each chunk alone says why (or is lost).
                Err(_) => run
                    .blobs
                    .iter()
                    .map(|b| (b.id, Err(Error::Aborted)))
                    .collect(),
            };
            for (id, plain) in opened {
                for &no in chunks.get(&id).map_or(&[][..], Vec::as_slice) {
                    match &plain {
                        Ok(bytes) => {
                            reader.check_chunk_len(no, &id, bytes.len())?;
                            write(no, bytes)?;
                        }
                        Err(_) => write(no, &reader.read_chunk(no, &id)?)?,
                    }
                }
            }
            Ok(())
        }
    }
}

/// Sends every non-zero chunk, a map segment at a time, as runs of blobs that share a pack;
/// zero chunks count as done at once. Stops quietly when the workers are gone (their error is
/// the one to report).
fn queue_chunks(
    reader: &DiskReader,
    tx: &crossbeam_channel::Sender<Work>,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<()> {
    for seg in 0..reader.disk().map.len() {
        cancel.check()?;
        let ids = reader.segment(seg)?;
        let first = u64::try_from(seg.saturating_mul(SEGMENT_ENTRIES)).unwrap_or(u64::MAX);
        let mut chunks: HashMap<Id, Vec<u64>> = HashMap::new();
        for (no, id) in (first..).zip(ids) {
            if id.is_zero() {
                progress.advance(reader.chunk_len(no)?);
            } else {
                chunks.entry(id).or_default().push(no);
            }
        }
        let wanted: Vec<Id> = chunks.keys().copied().collect();
        let (runs, missing) = plan_runs(reader.index(), &wanted);
        let mut work: Vec<Work> = Vec::with_capacity(runs.len() + missing.len());
        for run in runs {
            let mine = run
                .blobs
                .iter()
                .filter_map(|b| chunks.get(&b.id).map(|nos| (b.id, nos.clone())))
                .collect();
            work.push(Work::Run(run, mine));
        }
        for id in missing {
            for &no in chunks.get(&id).map_or(&[][..], Vec::as_slice) {
                work.push(Work::Chunk(no, id));
            }
        }
        for w in work {
            if tx.send(w).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Writes the non-zero [`BLOCK`]s of `data` at `offset`, each run of them in one write.
pub fn write_sparse(sink: &dyn ImageSink, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let mut run_start: Option<usize> = None;
    let blocks = data.len().div_ceil(BLOCK);
    for b in 0..=blocks {
        let start = b.saturating_mul(BLOCK);
        let block = data.get(start..start.saturating_add(BLOCK).min(data.len()));
        let zero = block.is_none_or(is_zero);
        match (zero, run_start) {
            (false, None) => run_start = Some(start),
            (true, Some(from)) => {
                let to = start.min(data.len());
                let at = offset.saturating_add(u64::try_from(from).unwrap_or(u64::MAX));
                sink.write_at(data.get(from..to).unwrap_or_default(), at)?;
                run_start = None;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, File};

    #[test]
    fn sparse_write_skips_zero_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        let f = File::create(&p).expect("create");
        f.set_len(5 * 4096).expect("len");
        let mut data = vec![0u8; 3 * BLOCK + 100];
        data[5] = 1;
        data[3 * BLOCK + 99] = 2;
        write_sparse(&f, 4096, &data).expect("write");
        let back = fs::read(&p).expect("read");
        assert_eq!(&back[4096..4096 + data.len()], &data[..]);
        assert!(back[..4096].iter().all(|&b| b == 0));
    }
}
