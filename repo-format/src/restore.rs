//! Writing a snapshot's disk back out as a raw image: the engine behind `vmstash restore`.
//!
//! The calling thread walks the disk's chunk map a segment at a time and queues the non-zero
//! chunks; one worker per core fetches and verifies each through the [`DiskReader`] (§17) and
//! writes it at its offset. Zero chunks, and zero 4 KiB blocks inside chunks, are never
//! written, so the image comes out sparse on a sink that starts as a sparse file of the disk's
//! size. Where the bytes go — a local file, a file on another host — is the [`ImageSink`]'s
//! business; making the result visible only once every chunk is verified (a temporary name,
//! then a rename) is the caller's.

use crossbeam_channel::bounded;

use crate::cancel::CancelToken;
use crate::chunkmap::{is_zero, SEGMENT_ENTRIES};
use crate::disk_reader::DiskReader;
use crate::id::Id;
use crate::progress::Progress;
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
    let (tx, rx) = bounded::<(u64, Id)>(workers.saturating_mul(QUEUE_PER_WORKER));
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = rx.clone();
                s.spawn(move || -> Result<()> {
                    for (no, id) in rx {
                        cancel.check()?;
                        let plain = reader.read_chunk(no, &id)?;
                        write_sparse(sink, reader.chunk_offset(no), &plain)
                            .map_err(|e| Error::io(target, e))?;
                        progress.advance(u64::try_from(plain.len()).unwrap_or(0));
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

/// Sends every non-zero chunk's number and id, a map segment at a time; zero chunks count as
/// done at once. Stops quietly when the workers are gone (their error is the one to report).
fn queue_chunks(
    reader: &DiskReader,
    tx: &crossbeam_channel::Sender<(u64, Id)>,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<()> {
    for seg in 0..reader.disk().map.len() {
        cancel.check()?;
        let ids = reader.segment(seg)?;
        let first = u64::try_from(seg.saturating_mul(SEGMENT_ENTRIES)).unwrap_or(u64::MAX);
        for (no, id) in (first..).zip(ids) {
            if id.is_zero() {
                progress.advance(reader.chunk_len(no)?);
            } else if tx.send((no, id)).is_err() {
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
