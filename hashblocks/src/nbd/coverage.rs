//! Which bytes of a read the server's content chunks have covered.
//!
//! A structured reply to `NBD_CMD_READ` may come in any number of data and hole chunks, in any
//! order, but together they must cover the request exactly once: a chunk outside the request or
//! overlapping an earlier one is damage, and so is a reply that ends with bytes never sent
//! (spec/FORMAT.md §22.3). [`Coverage`] keeps the covered ranges merged, so a server that sends
//! its chunks in order costs one entry; the client bounds the number of chunks per reply
//! ([`MAX_CHUNKS_PER_REPLY`](super::wire::MAX_CHUNKS_PER_REPLY)), and with it the entries.

use std::collections::BTreeMap;

use super::error::{protocol, NbdError};

/// The covered parts of the request `start..end`.
#[derive(Debug)]
pub(super) struct Coverage {
    start: u64,
    end: u64,
    /// Disjoint, non-adjacent covered ranges, start → end.
    ranges: BTreeMap<u64, u64>,
}

impl Coverage {
    /// Nothing covered yet of the `len` bytes at `start` (`start + len` must not overflow: the
    /// client checked the request against the export).
    pub(super) fn new(start: u64, len: u64) -> Self {
        Coverage {
            start,
            end: start.saturating_add(len),
            ranges: BTreeMap::new(),
        }
    }

    /// Records that `len` bytes at `offset` arrived; refuses an empty range, a range outside the
    /// request, or one that overlaps a range already recorded.
    pub(super) fn insert(&mut self, offset: u64, len: u64) -> Result<(), NbdError> {
        let end = offset
            .checked_add(len)
            .filter(|&end| len > 0 && offset >= self.start && end <= self.end)
            .ok_or_else(|| {
                protocol(format!(
                    "a chunk of {len} bytes at {offset} is empty or outside the read {}..{}",
                    self.start, self.end
                ))
            })?;
        let before = self
            .ranges
            .range(..=offset)
            .next_back()
            .map(|(&s, &e)| (s, e));
        let after = self.ranges.range(offset..).next().map(|(&s, &e)| (s, e));
        if before.is_some_and(|(_, e)| e > offset) || after.is_some_and(|(s, _)| s < end) {
            return Err(protocol(format!(
                "a chunk at {offset}..{end} overlaps an earlier chunk of the read"
            )));
        }
        let mut merged = (offset, end);
        if let Some((s, e)) = before.filter(|&(_, e)| e == offset) {
            self.ranges.remove(&s);
            merged = (s, merged.1.max(e));
        }
        if let Some((s, e)) = after.filter(|&(s, _)| s == end) {
            self.ranges.remove(&s);
            merged.1 = e;
        }
        self.ranges.insert(merged.0, merged.1);
        Ok(())
    }

    /// The first byte of the request not covered, if any.
    pub(super) fn first_gap(&self) -> Option<u64> {
        match self.ranges.iter().next() {
            Some((&s, &e)) if s == self.start => (e < self.end).then_some(e),
            _ => (self.start < self.end).then_some(self.start),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_in_any_order_cover_exactly_once() {
        let mut c = Coverage::new(100, 30);
        c.insert(120, 10).expect("accepted");
        assert_eq!(c.first_gap(), Some(100));
        c.insert(100, 10).expect("accepted");
        assert_eq!(c.first_gap(), Some(110));
        c.insert(110, 10).expect("accepted");
        assert_eq!(c.first_gap(), None);
        assert_eq!(c.first_gap(), None);
        assert_eq!(c.ranges.len(), 1, "adjacent ranges merge");
    }

    #[test]
    fn overlaps_and_strays_are_refused() {
        let mut c = Coverage::new(0, 100);
        c.insert(10, 10).expect("accepted");
        for (offset, len) in [(15, 10), (5, 6), (10, 1), (0, 100), (19, 1)] {
            assert!(c.insert(offset, len).is_err(), "{offset}+{len} overlaps");
        }
        for (offset, len) in [(90, 11), (100, 1), (0, 0), (u64::MAX, 2)] {
            assert!(c.insert(offset, len).is_err(), "{offset}+{len} is outside");
        }
        c.insert(0, 10).expect("accepted");
        c.insert(20, 80).expect("accepted");
        assert_eq!(c.first_gap(), None);
    }
}
