//! A source whose data ranges come from elsewhere: for disks read over
//! SFTP, where there is no SEEK_DATA, the hypervisor's own `qemu-img map`
//! says which ranges hold data, so holes never cross the network.

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
pub(crate) fn with_data_ranges(
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

/// The ranges `qemu-img map --output=json` reports as not reading as
/// zero; `None` when the output is not what qemu-img prints.
pub(crate) fn parse_qemu_img_map(json: &str) -> Option<Vec<Range<u64>>> {
    let entries: Vec<serde_json::Value> = serde_json::from_str(json).ok()?;
    let mut out = Vec::new();
    for e in entries {
        let start = e.get("start")?.as_u64()?;
        let length = e.get("length")?.as_u64()?;
        let zero = e.get("zero")?.as_bool()?;
        if !zero {
            out.push(start..start.checked_add(length)?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_img_map() {
        let json = r#"[{ "start": 0, "length": 8388608, "depth": 0, "present": true, "zero": true, "data": false, "offset": 0},
{ "start": 8388608, "length": 4194304, "depth": 0, "present": true, "zero": false, "data": true, "offset": 8388608},
{ "start": 12582912, "length": 100, "depth": 1, "present": false, "zero": false, "data": false}]"#;
        assert_eq!(
            parse_qemu_img_map(json),
            Some(vec![8388608..12582912, 12582912..12583012])
        );
        assert_eq!(parse_qemu_img_map("garbage"), None);
        assert_eq!(parse_qemu_img_map(r#"[{"start": 1}]"#), None);
        assert_eq!(
            parse_qemu_img_map(r#"[{"start": 18446744073709551615, "length": 2, "zero": false}]"#),
            None
        );
    }
}
