//! Helpers for tests of disk sources, here and in the CLI. Always compiled (small, no extra
//! dependencies): a feature for it would make the test build's feature set differ from the
//! release build's and recompile every crate above this one.

use std::error::Error;
use std::ops::Range;
use std::process::Command;

use super::{len_u64, DiskSource};

/// Result type of the tests: any error fails the test with its message.
pub type TestResult = Result<(), Box<dyn Error>>;

/// Runs `qemu-img` (or `qemu-io`) with `args`; fails with its stderr if it fails.
pub fn qemu(tool: &str, args: &[&str]) -> Result<(), Box<dyn Error>> {
    let output = Command::new(tool).args(args).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{tool} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into())
    }
}

/// Reads the whole disk through `source`, in uneven pieces to cross cluster boundaries.
pub fn read_all(source: &dyn DiskSource) -> Result<Vec<u8>, Box<dyn Error>> {
    let size = usize::try_from(source.size())?;
    let mut data = vec![0u8; size];
    let mut offset = 0;
    for piece in data.chunks_mut(100_000) {
        source.read_at(piece, len_u64(offset))?;
        offset += piece.len();
    }
    Ok(data)
}

/// Asserts that every non-zero byte of `expected` lies inside one of `ranges`, and that the
/// ranges are sorted, non-empty, non-overlapping and inside the disk.
pub fn assert_ranges_cover(ranges: &[Range<u64>], expected: &[u8]) {
    let size = len_u64(expected.len());
    for pair in ranges.windows(2) {
        if let [a, b] = pair {
            assert!(a.end < b.start, "ranges not sorted and apart: {ranges:?}");
        }
    }
    assert!(ranges.iter().all(|r| !r.is_empty() && r.end <= size));
    let mut next = ranges.iter().peekable();
    for (offset, byte) in expected.iter().enumerate() {
        let offset = len_u64(offset);
        while next.peek().is_some_and(|r| r.end <= offset) {
            next.next();
        }
        if *byte != 0 {
            let inside = next.peek().is_some_and(|r| r.contains(&offset));
            assert!(inside, "non-zero byte at {offset} outside {ranges:?}");
        }
    }
}
