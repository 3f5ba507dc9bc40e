//! Raw disk images: regular files (possibly sparse) and block devices.
//!
//! Reads are positional (`pread`), so one open file serves any number of threads, and go past
//! the page cache (`O_DIRECT`, through `vmstash_repo::direct::DirectReader`) where the
//! filesystem allows it: a disk is read once, and copying it through the cache would cost CPU
//! and evict what the host (on a hypervisor: its VMs) had cached. Without the kernel's
//! read-ahead, [`READERS`] reads are kept in flight. Data ranges come from `lseek(SEEK_DATA)` /
//! `lseek(SEEK_HOLE)`: holes in a sparse file read as zeros and are skipped. Filesystems without
//! hole reporting, and block devices (which report everything as data), give the whole disk.

use super::{check_read_range, push_range, whole_disk, DiskSource, ImageFormat, SourceError};
use rustix::fs::SeekFrom;
use rustix::io::Errno;
use std::fs::File;
use std::io::{self, Seek};
use std::ops::Range;
use std::path::{Path, PathBuf};

use vmstash_repo::direct::DirectReader;

/// Reads a backup keeps in flight on one raw image: direct reads get no read-ahead from the
/// kernel, so the next chunk's read is issued while the last one is hashed.
pub(super) const READERS: usize = 2;

/// A raw image: the file's bytes are the guest's bytes.
#[derive(Debug)]
pub(super) struct RawSource {
    /// The path the image was opened by, for error messages.
    path: PathBuf,
    /// The image, opened read-only (direct where possible).
    file: DirectReader,
    /// Size in bytes, fixed when the image was opened.
    size: u64,
}

impl RawSource {
    /// Wraps an opened raw image, finding its size by seeking to the end (which, unlike `stat`,
    /// also works for block devices).
    pub(super) fn new(path: &Path, mut file: File) -> Result<Self, SourceError> {
        let size = file
            .seek(io::SeekFrom::End(0))
            .map_err(|source| SourceError::Io {
                path: path.to_owned(),
                action: "find the size of".to_owned(),
                source,
            })?;
        let file = DirectReader::new(path, file).map_err(|source| SourceError::Io {
            path: path.to_owned(),
            action: "open (for direct reads)".to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
        })
    }
}

impl DiskSource for RawSource {
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        check_read_range(&self.path, offset, buf.len(), self.size)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| SourceError::Io {
                path: self.path.clone(),
                action: format!("read {} bytes at offset {offset} of", buf.len()),
                source: explain_short_read(source),
            })
    }

    fn data_ranges(&self) -> Result<Vec<Range<u64>>, SourceError> {
        match scan_data_ranges(self.file.file(), self.size) {
            Ok(Some(ranges)) => Ok(ranges),
            Ok(None) => Ok(whole_disk(self.size)),
            Err(source) => Err(SourceError::Io {
                path: self.path.clone(),
                action: "find the data regions (SEEK_DATA) of".to_owned(),
                source,
            }),
        }
    }

    fn concurrent_reads(&self) -> usize {
        READERS
    }
}

/// Replaces the standard library's "failed to fill whole buffer" with the likely cause.
fn explain_short_read(err: io::Error) -> io::Error {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the file ended early; was it truncated while being backed up?",
        )
    } else {
        err
    }
}

/// Lists the data ranges of `file` below `size` with `SEEK_DATA`/`SEEK_HOLE`.
///
/// Returns `None` if the file or its filesystem does not support hole reporting.
fn scan_data_ranges(file: &File, size: u64) -> io::Result<Option<Vec<Range<u64>>>> {
    let mut ranges = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Some(start) = seek_to(file, SeekFrom::Data, pos)? else {
            return Ok(None);
        };
        let Some(start) = start else {
            break; // no data after `pos`
        };
        if start >= size {
            break;
        }
        let Some(end) = seek_to(file, SeekFrom::Hole, start)? else {
            return Ok(None);
        };
        // Every file ends in a (virtual) hole; a missing one means the file shrank meanwhile.
        let end = end.unwrap_or(size).min(size);
        if end <= start {
            // The filesystem contradicts itself; do not guess.
            return Ok(None);
        }
        push_range(&mut ranges, start..end);
        pos = end;
    }
    Ok(Some(ranges))
}

/// Seeks with `SEEK_DATA` or `SEEK_HOLE` (given as `whence`) from `pos`.
///
/// Returns `None` if unsupported, `Some(None)` if there is no such region after `pos` (ENXIO).
fn seek_to(file: &File, whence: fn(i64) -> SeekFrom, pos: u64) -> io::Result<Option<Option<u64>>> {
    let Ok(pos) = i64::try_from(pos) else {
        return Ok(None);
    };
    match rustix::fs::seek(file, whence(pos)) {
        Ok(found) => Ok(Some(Some(found))),
        Err(Errno::NXIO) => Ok(Some(None)),
        Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS | Errno::SPIPE) => Ok(None),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_ranges_cover, read_all, TestResult};
    use super::super::{open, SourceError};
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    const MIB: u64 = 1 << 20;

    /// Writes `data` at `offset` of `file`.
    fn write_at(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(data, offset)
    }

    #[test]
    fn sparse_file_ranges_skip_holes_and_reads_match() -> TestResult {
        let mut file = tempfile::NamedTempFile::new()?;
        file.as_file().set_len(16 * MIB)?;
        let first = vec![0x5au8; 4096];
        let second: Vec<u8> = (1..=251u8).cycle().take(8192).collect();
        write_at(file.as_file(), &first, MIB)?;
        write_at(file.as_file(), &second, 10 * MIB)?;
        file.flush()?;

        let source = open(file.path())?;
        assert_eq!(source.format(), ImageFormat::Raw);
        assert_eq!(source.size(), 16 * MIB);

        let expected = std::fs::read(file.path())?;
        assert_eq!(read_all(source.as_ref())?, expected);

        let ranges = source.data_ranges()?;
        assert_ranges_cover(&ranges, &expected);
        let covered: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        assert!(covered < 2 * MIB, "holes not excluded: {ranges:?}");
        assert!(!ranges.iter().any(|r| r.contains(&(5 * MIB))), "{ranges:?}");

        // A read across the end of data into the hole.
        let mut buf = vec![0xffu8; 8192];
        source.read_at(&mut buf, MIB + 2048)?;
        assert!(buf[..2048].iter().all(|b| *b == 0x5a));
        assert!(buf[2048..].iter().all(|b| *b == 0));
        Ok(())
    }

    #[test]
    fn file_ending_in_data_has_range_to_the_end() -> TestResult {
        let file = tempfile::NamedTempFile::new()?;
        file.as_file().set_len(4 * MIB)?;
        write_at(file.as_file(), &[7u8; 100], 4 * MIB - 100)?;
        let source = open(file.path())?;
        let ranges = source.data_ranges()?;
        assert_eq!(ranges.last().map(|r| r.end), Some(4 * MIB));
        assert_ranges_cover(&ranges, &std::fs::read(file.path())?);
        Ok(())
    }

    #[test]
    fn empty_file_has_no_ranges() -> TestResult {
        let file = tempfile::NamedTempFile::new()?;
        let source = open(file.path())?;
        assert_eq!(source.size(), 0);
        assert!(source.data_ranges()?.is_empty());
        source.read_at(&mut [], 0)?;
        Ok(())
    }

    #[test]
    fn reads_beyond_the_end_are_refused() -> TestResult {
        let file = tempfile::NamedTempFile::new()?;
        file.as_file().set_len(1000)?;
        let source = open(file.path())?;
        let mut buf = [0u8; 10];
        let err = source.read_at(&mut buf, 995).err().ok_or("read past end")?;
        assert!(
            matches!(err, SourceError::OutOfRange { offset: 995, .. }),
            "{err}"
        );
        let err = source
            .read_at(&mut buf, u64::MAX - 3)
            .err()
            .ok_or("overflow")?;
        assert!(matches!(err, SourceError::OutOfRange { .. }), "{err}");
        source.read_at(&mut buf, 990)?;
        Ok(())
    }

    #[test]
    fn truncation_after_open_is_an_io_error() -> TestResult {
        let file = tempfile::NamedTempFile::new()?;
        file.as_file().set_len(8192)?;
        let source = open(file.path())?;
        file.as_file().set_len(4096)?;
        let mut buf = [0u8; 4096];
        let err = source
            .read_at(&mut buf, 4096)
            .err()
            .ok_or("read succeeded")?;
        assert!(err.to_string().contains("truncated"), "{err}");
        Ok(())
    }
}
