//! Hashing a range of a disk's chunks on several threads (spec/FORMAT.md §19.3), read through
//! [`crate::source`].
//!
//! Threads take batches of consecutive chunks from a shared counter, so the disk is read
//! nearly in order whatever the thread count. A chunk outside the source's data ranges is
//! reported as zeros without being read; a chunk read as all zeros is reported the same way;
//! every other chunk is reported by its SHA-256 (the blob id the repository uses). Each thread
//! holds one chunk buffer, so memory is `threads × chunk size` whatever the disk's size.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};

use sha2::{Digest, Sha256};

use crate::protocol::{Frame, MAX_HASHES_PER_FRAME};
use crate::source::{DiskSource, SourceError};

/// Chunks one thread takes at a time.
const BATCH_CHUNKS: u64 = 64;

/// What a finished run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HashStats {
    /// Chunks reported.
    pub chunks: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
}

/// Why hashing stopped.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The source failed a read (the error names the image and the offset).
    #[error(transparent)]
    Read(SourceError),
    /// The source could not say where its data is.
    #[error(transparent)]
    Map(SourceError),
    /// The consumer of the frames failed (e.g. the connection to the client closed).
    #[error("cannot send the results: {0}")]
    Emit(String),
}

/// Hashes chunks `chunks` (of `chunk_size` bytes; the last chunk of the disk may be shorter) of
/// `src` on `threads` threads, handing each result frame ([`Frame::ZeroRun`], [`Frame::Hashes`])
/// to `emit` on the calling thread, in batch order of completion.
pub fn hash_range(
    src: &dyn DiskSource,
    chunk_size: u32,
    chunks: Range<u64>,
    threads: usize,
    emit: &mut dyn FnMut(Frame) -> Result<(), String>,
) -> Result<HashStats, HashError> {
    hash_changed(src, chunk_size, chunks, threads, None, emit)
}

/// [`hash_range`] for a disk whose writes since a checkpoint are known (spec §19.6): with
/// `changed` given (sorted byte ranges, the dirty bitmap's extents), a chunk with data but no
/// byte in `changed` is reported unread in a [`Frame::UnchangedRun`].
pub fn hash_changed(
    src: &dyn DiskSource,
    chunk_size: u32,
    chunks: Range<u64>,
    threads: usize,
    changed: Option<&[Range<u64>]>,
    emit: &mut dyn FnMut(Frame) -> Result<(), String>,
) -> Result<HashStats, HashError> {
    let ranges = src.data_ranges().map_err(HashError::Map)?;
    let next = AtomicU64::new(chunks.start);
    let bytes_read = AtomicU64::new(0);
    let abort = AtomicBool::new(false);
    let threads = threads.max(1);
    let (tx, rx) = sync_channel::<Result<Vec<Frame>, HashError>>(threads * 2);
    let job = Job {
        src,
        ranges: &ranges,
        changed,
        chunk_size: u64::from(chunk_size),
        end: chunks.end,
        next: &next,
        bytes_read: &bytes_read,
        abort: &abort,
    };
    let mut reported = 0u64;
    let mut first_err = None;
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (job, tx) = (&job, tx.clone());
            s.spawn(move || job.run(&tx));
        }
        drop(tx);
        for batch in rx {
            if first_err.is_some() {
                continue;
            }
            let frames = match batch {
                Ok(frames) => frames,
                Err(e) => {
                    abort.store(true, Ordering::Relaxed);
                    first_err = Some(e);
                    continue;
                }
            };
            for frame in frames {
                reported += frame_chunks(&frame);
                if let Err(e) = emit(frame) {
                    abort.store(true, Ordering::Relaxed);
                    first_err = Some(HashError::Emit(e));
                    break;
                }
            }
        }
    });
    match first_err {
        Some(e) => Err(e),
        None => Ok(HashStats {
            chunks: reported,
            bytes_read: bytes_read.into_inner(),
        }),
    }
}

/// Chunks a result frame reports.
fn frame_chunks(frame: &Frame) -> u64 {
    match frame {
        Frame::ZeroRun { count, .. } | Frame::UnchangedRun { count, .. } => *count,
        Frame::Hashes { hashes, .. } => u64::try_from(hashes.len()).unwrap_or(0),
        _ => 0,
    }
}

/// The work shared by the hashing threads.
struct Job<'a> {
    src: &'a dyn DiskSource,
    ranges: &'a [Range<u64>],
    /// The byte ranges written since the checkpoint, when known.
    changed: Option<&'a [Range<u64>]>,
    chunk_size: u64,
    /// One past the last chunk to hash.
    end: u64,
    next: &'a AtomicU64,
    bytes_read: &'a AtomicU64,
    abort: &'a AtomicBool,
}

impl Job<'_> {
    /// Takes batches until none is left, sending each batch's frames.
    fn run(&self, tx: &SyncSender<Result<Vec<Frame>, HashError>>) {
        let mut buf = Vec::new();
        loop {
            if self.abort.load(Ordering::Relaxed) {
                return;
            }
            let first = self.next.fetch_add(BATCH_CHUNKS, Ordering::Relaxed);
            if first >= self.end {
                return;
            }
            let batch = first..first.saturating_add(BATCH_CHUNKS).min(self.end);
            let result = self.hash_batch(batch, &mut buf);
            let failed = result.is_err();
            if tx.send(result).is_err() || failed {
                return;
            }
        }
    }

    /// The frames of one batch: runs of zero chunks and runs of hashes.
    fn hash_batch(&self, batch: Range<u64>, buf: &mut Vec<u8>) -> Result<Vec<Frame>, HashError> {
        let mut runs = RunBuilder::default();
        for no in batch {
            match self.hash_chunk(no, buf)? {
                Chunk::Hash(hash) => runs.hash(no, hash),
                Chunk::Zero => runs.zero(no),
                Chunk::Unchanged => runs.unchanged(no),
            }
        }
        Ok(runs.finish())
    }

    /// What chunk `no` is: zeros, unchanged since the checkpoint, or its SHA-256.
    fn hash_chunk(&self, no: u64, buf: &mut Vec<u8>) -> Result<Chunk, HashError> {
        let size = self.src.size();
        let start = no.saturating_mul(self.chunk_size);
        if start >= size {
            return Ok(Chunk::Zero);
        }
        let end = start.saturating_add(self.chunk_size).min(size);
        if !overlaps_data(self.ranges, start..end) {
            return Ok(Chunk::Zero);
        }
        if self
            .changed
            .is_some_and(|changed| !overlaps_data(changed, start..end))
        {
            return Ok(Chunk::Unchanged);
        }
        let len = usize::try_from(end - start).unwrap_or(usize::MAX);
        buf.resize(len, 0);
        self.src.read_at(buf, start).map_err(HashError::Read)?;
        self.bytes_read.fetch_add(end - start, Ordering::Relaxed);
        if is_zero(buf) {
            return Ok(Chunk::Zero);
        }
        Ok(Chunk::Hash(Sha256::digest(&buf[..]).into()))
    }
}

/// What the hasher found a chunk to be.
enum Chunk {
    /// It reads as zeros.
    Zero,
    /// Not written since the checkpoint: the parent snapshot's chunk.
    Unchanged,
    /// The SHA-256 of its bytes.
    Hash([u8; 32]),
}

/// Whether `r` overlaps any of the sorted `ranges`.
fn overlaps_data(ranges: &[Range<u64>], r: Range<u64>) -> bool {
    let i = ranges.partition_point(|d| d.end <= r.start);
    ranges.get(i).is_some_and(|d| d.start < r.end)
}

/// The zero test of the format (spec §9): the helper and the backup must agree on it.
pub use vmstash_repo::chunkmap::is_zero;

/// Collects consecutive results of one batch into frames.
#[derive(Default)]
struct RunBuilder {
    frames: Vec<Frame>,
}

impl RunBuilder {
    fn zero(&mut self, no: u64) {
        if let Some(Frame::ZeroRun { first, count }) = self.frames.last_mut() {
            if *first + *count == no {
                *count += 1;
                return;
            }
        }
        self.frames.push(Frame::ZeroRun {
            first: no,
            count: 1,
        });
    }

    fn unchanged(&mut self, no: u64) {
        if let Some(Frame::UnchangedRun { first, count }) = self.frames.last_mut() {
            if *first + *count == no {
                *count += 1;
                return;
            }
        }
        self.frames.push(Frame::UnchangedRun {
            first: no,
            count: 1,
        });
    }

    fn hash(&mut self, no: u64, hash: [u8; 32]) {
        if let Some(Frame::Hashes { first, hashes }) = self.frames.last_mut() {
            let len = u64::try_from(hashes.len()).unwrap_or(u64::MAX);
            if *first + len == no
                && hashes.len() < usize::try_from(MAX_HASHES_PER_FRAME).unwrap_or(0)
            {
                hashes.push(hash);
                return;
            }
        }
        self.frames.push(Frame::Hashes {
            first: no,
            hashes: vec![hash],
        });
    }

    fn finish(self) -> Vec<Frame> {
        self.frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk in memory, with its data ranges given.
    struct Memory {
        bytes: Vec<u8>,
        ranges: Vec<Range<u64>>,
        fail_at: Option<u64>,
    }

    impl DiskSource for Memory {
        fn format(&self) -> crate::source::ImageFormat {
            crate::source::ImageFormat::Raw
        }
        fn size(&self) -> u64 {
            u64::try_from(self.bytes.len()).expect("size")
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
            if self.fail_at == Some(offset) {
                return Err(SourceError::Io {
                    path: "memory".into(),
                    action: format!("read {} bytes at offset {offset} of", buf.len()),
                    source: std::io::Error::other("injected"),
                });
            }
            let start = usize::try_from(offset).expect("offset");
            buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
            Ok(())
        }
        fn data_ranges(&self) -> Result<Vec<Range<u64>>, SourceError> {
            Ok(self.ranges.clone())
        }
    }

    /// Chunk results as a map from chunk number to hash (None for zeros).
    fn collect(
        src: &Memory,
        chunk: u32,
        chunks: Range<u64>,
        threads: usize,
    ) -> Vec<Option<[u8; 32]>> {
        let n = usize::try_from(chunks.end - chunks.start).expect("n");
        let mut out: Vec<Option<Option<[u8; 32]>>> = vec![None; n];
        let base = chunks.start;
        let mut put = |no: u64, v: Option<[u8; 32]>| {
            let slot = &mut out[usize::try_from(no - base).expect("index")];
            assert!(slot.is_none(), "chunk {no} reported twice");
            *slot = Some(v);
        };
        let stats = hash_range(src, chunk, chunks.clone(), threads, &mut |f| {
            match f {
                Frame::ZeroRun { first, count } => {
                    (first..first + count).for_each(|no| put(no, None))
                }
                Frame::Hashes { first, hashes } => {
                    for (no, h) in (first..).zip(hashes) {
                        put(no, Some(h));
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
            Ok(())
        })
        .expect("hash");
        assert_eq!(stats.chunks, chunks.end - chunks.start);
        out.into_iter()
            .map(|v| v.expect("every chunk reported"))
            .collect()
    }

    fn pattern(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_u32;
        (0..len)
            .map(|i| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                if (i / 4096) % 5 == 3 {
                    0
                } else {
                    x.to_le_bytes()[3]
                }
            })
            .collect()
    }

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
    fn hashes_match_sha256_of_each_chunk_whatever_the_thread_count() {
        let mut bytes = pattern(300 * 4096 + 100);
        bytes[10 * 4096..12 * 4096].fill(0);
        let size = u64::try_from(bytes.len()).expect("size");
        let src = Memory {
            bytes: bytes.clone(),
            ranges: std::iter::once(0..size).collect(),
            fail_at: None,
        };
        let expected: Vec<Option<[u8; 32]>> = bytes
            .chunks(4096)
            .map(|c| (!is_zero(c)).then(|| Sha256::digest(c).into()))
            .collect();
        for threads in [1, 2, 7] {
            assert_eq!(
                collect(&src, 4096, 0..301, threads),
                expected,
                "{threads} threads"
            );
        }
        assert_eq!(collect(&src, 4096, 250..301, 3), expected[250..]);
        assert_eq!(
            collect(&src, 4096, 301..400, 2),
            vec![None; 99],
            "past the end: zeros"
        );
    }

    #[test]
    fn holes_are_not_read() {
        let bytes = pattern(64 * 4096);
        let src = Memory {
            bytes,
            ranges: std::iter::once(4096..8192).collect(),
            fail_at: Some(0),
        };
        let got = collect(&src, 4096, 0..64, 2);
        assert!(got[1].is_some());
        assert!(got.iter().enumerate().all(|(i, h)| i == 1 || h.is_none()));
    }

    #[test]
    fn a_read_error_names_the_offset_and_stops() {
        let bytes = pattern(2000 * 4096);
        let size = u64::try_from(bytes.len()).expect("size");
        let src = Memory {
            bytes,
            ranges: std::iter::once(0..size).collect(),
            fail_at: Some(700 * 4096),
        };
        let err = hash_range(&src, 4096, 0..2000, 2, &mut |_| Ok(())).expect_err("fails");
        assert!(
            err.to_string().contains(&format!("offset {}", 700 * 4096)),
            "{err}"
        );
        let err = hash_range(&src, 4096, 0..10, 2, &mut |_| Err("closed".to_owned()))
            .expect_err("emit fails");
        assert!(matches!(err, HashError::Emit(_)));
    }
}
