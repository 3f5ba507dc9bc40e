//! Handing a disk's chunks, in order, to the threads that read them, with what is already
//! known about each: whether it can hold data at all (it overlaps one of the source's data
//! ranges) or reads as zeros without being read.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};

/// Hands out a disk's chunks, in order, to its reader threads.
pub(super) struct ChunkQueue<'a> {
    /// The next chunk number, and where it stands among the data ranges.
    next: Mutex<(u64, DataCursor<'a>)>,
    /// Chunk size in bytes.
    chunk: u64,
    /// Disk size in bytes.
    size: u64,
}

/// One chunk handed to a reader.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ChunkTask {
    /// Its number on the disk.
    pub(super) no: u64,
    /// Its bytes on the disk.
    pub(super) range: Range<u64>,
    /// Whether it overlaps a data range (else it reads as zeros, unread).
    pub(super) has_data: bool,
}

impl<'a> ChunkQueue<'a> {
    /// A queue over a disk of `size` bytes cut into chunks of `chunk` bytes, whose non-zero
    /// bytes all lie in `ranges` (sorted, not overlapping).
    pub(super) fn new(ranges: &'a [Range<u64>], chunk: u64, size: u64) -> Self {
        ChunkQueue {
            next: Mutex::new((0, DataCursor::new(ranges))),
            chunk,
            size,
        }
    }

    /// The next chunk, or `None` past the end of the disk.
    pub(super) fn take(&self) -> Option<ChunkTask> {
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
}
