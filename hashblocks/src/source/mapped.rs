//! A source whose data ranges come from elsewhere: for disks read over
//! SFTP, where there is no SEEK_DATA, the hypervisor's own `qemu-img map`
//! says which ranges hold data (the CLI parses it), so holes never cross
//! the network.

use std::ops::Range;

use super::{DiskSource, ImageFormat, SourceError};

/// `inner`, with data ranges supplied by the caller.
struct Mapped {
    inner: Box<dyn DiskSource>,
    ranges: Vec<Range<u64>>,
}

impl DiskSource for Mapped {
    fn format(&self) -> ImageFormat {
        self.inner.format()
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        self.inner.read_at(buf, offset)
    }

    fn data_ranges(&self) -> Result<Vec<Range<u64>>, SourceError> {
        Ok(self.ranges.clone())
    }

    fn concurrent_reads(&self) -> usize {
        self.inner.concurrent_reads()
    }
}

/// Wraps `inner` so that only `ranges` (clipped to the disk, sorted and
/// merged here) are read.
pub fn with_data_ranges(
    inner: Box<dyn DiskSource>,
    mut ranges: Vec<Range<u64>>,
) -> Box<dyn DiskSource> {
    let size = inner.size();
    ranges.retain(|r| r.start < r.end && r.start < size);
    for r in &mut ranges {
        r.end = r.end.min(size);
    }
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    Box::new(Mapped {
        inner,
        ranges: merged,
    })
}
