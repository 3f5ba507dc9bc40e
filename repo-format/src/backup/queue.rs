//! Handing a disk's chunks to the threads that read them, with what is already known about
//! each: whether it can hold data at all (it overlaps one of the source's data ranges) or reads
//! as zeros without being read.
//!
//! A disk is read as a few **regions** at once, each from its start in order, cut so that each
//! holds the same amount of data. Parts of a disk cost differently: text and binaries keep the
//! CPU compressing while the disk idles, compressed or encrypted data is stored as it is and
//! keeps the disk busy while the CPU idles. Read one after the other they add up; read side by
//! side they overlap (on the benchmark image, half text then half random data, the second half
//! ran at 60 % CPU while the disk was the limit). Each region is still read sequentially, so
//! the storage sees a couple of sequential streams, not random reads.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};

/// Regions a disk is read as at once (fewer when it has less data than that many chunks).
pub(super) const REGIONS: usize = 2;

/// Hands out a disk's chunks to its reader threads, region by region (see the module docs).
pub(super) struct ChunkQueue<'a> {
    regions: Vec<Mutex<Region<'a>>>,
    /// Chunk size in bytes.
    chunk: u64,
    /// Disk size in bytes.
    size: u64,
}

/// A run of a disk's chunks, taken in order.
struct Region<'a> {
    /// The next chunk number.
    next: u64,
    /// The chunk number where the region ends (exclusive).
    end: u64,
    /// Where `next` stands among the data ranges.
    cursor: DataCursor<'a>,
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
    /// bytes all lie in `ranges` (sorted, not overlapping), read as up to `regions` regions.
    pub(super) fn new(ranges: &'a [Range<u64>], chunk: u64, size: u64, regions: usize) -> Self {
        let chunk = chunk.max(1);
        let chunks = size.div_ceil(chunk);
        let mut starts = region_starts(ranges, chunk, regions.max(1));
        starts.retain(|&s| s < chunks);
        starts.dedup();
        if starts.first() != Some(&0) {
            starts.insert(0, 0);
        }
        let ends = starts
            .iter()
            .skip(1)
            .copied()
            .chain(std::iter::once(chunks));
        let regions = starts
            .iter()
            .zip(ends)
            .map(|(&next, end)| {
                Mutex::new(Region {
                    next,
                    end,
                    cursor: DataCursor::new(ranges),
                })
            })
            .collect();
        ChunkQueue {
            regions,
            chunk,
            size,
        }
    }

    /// The next chunk for reader number `reader`: from its own region while that lasts, then
    /// from the others; `None` once every chunk was handed out.
    pub(super) fn take(&self, reader: usize) -> Option<ChunkTask> {
        let n = self.regions.len().max(1);
        (0..n).find_map(|k| {
            let region = self.regions.get((reader + k) % n)?;
            self.take_from(&mut region.lock().unwrap_or_else(PoisonError::into_inner))
        })
    }

    fn take_from(&self, region: &mut Region<'a>) -> Option<ChunkTask> {
        if region.next >= region.end {
            return None;
        }
        let start = region
            .next
            .checked_mul(self.chunk)
            .filter(|&s| s < self.size)?;
        let range = start..start.saturating_add(self.chunk).min(self.size);
        let task = ChunkTask {
            no: region.next,
            has_data: region.cursor.any_in(range.clone()),
            range,
        };
        region.next += 1;
        Some(task)
    }
}

/// The first chunk of each of `regions` regions holding equal shares of the data in `ranges`.
fn region_starts(ranges: &[Range<u64>], chunk: u64, regions: usize) -> Vec<u64> {
    let total: u64 = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum();
    let share = total / u64::try_from(regions).unwrap_or(1).max(1);
    let mut starts = vec![0];
    let mut seen = 0u64;
    let mut wanted = share;
    for r in ranges {
        let len = r.end.saturating_sub(r.start);
        while share > 0 && seen.saturating_add(len) > wanted && starts.len() < regions {
            let at = r.start.saturating_add(wanted - seen);
            starts.push(at / chunk);
            wanted = wanted.saturating_add(share);
        }
        seen = seen.saturating_add(len);
    }
    starts
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
        let queue = ChunkQueue::new(&ranges, 30, 100, 1);
        let tasks: Vec<(u64, Range<u64>, bool)> = std::iter::from_fn(|| queue.take(0))
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
        assert!(queue.take(0).is_none(), "stays empty");
    }

    #[test]
    fn regions_split_the_data_evenly_and_each_is_read_in_order() {
        // 100 chunks of 10 bytes; the data is in chunks 0..10 and 80..100.
        let ranges = [0..100, 800..1000];
        assert_eq!(region_starts(&ranges, 10, 2), [0, 85]);
        assert_eq!(region_starts(&[], 10, 2), [0]);
        let queue = ChunkQueue::new(&ranges, 10, 1000, 2);
        let first: Vec<u64> = (0..3).filter_map(|_| queue.take(0)).map(|t| t.no).collect();
        let second: Vec<u64> = (0..3).filter_map(|_| queue.take(1)).map(|t| t.no).collect();
        assert_eq!(first, [0, 1, 2]);
        assert_eq!(second, [85, 86, 87]);
        let mut rest: Vec<u64> = std::iter::from_fn(|| queue.take(1)).map(|t| t.no).collect();
        rest.sort_unstable();
        let expected: Vec<u64> = (3..85).chain(88..100).collect();
        assert_eq!(
            rest, expected,
            "a reader whose region is done helps with the others"
        );
    }

    #[test]
    fn chunk_queue_shared_by_threads_loses_nothing() {
        let ranges = [0..400_000, 600_000..1_000_000];
        let queue = ChunkQueue::new(&ranges, 7, 1_000_000, REGIONS);
        let mut seen: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|reader| {
                    let queue = &queue;
                    s.spawn(move || {
                        std::iter::from_fn(|| queue.take(reader))
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
