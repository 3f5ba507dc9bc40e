//! What a backup reads: a disk, as a [`DiskSource`].
//!
//! The engine backs up anything that can say its virtual size, read guest bytes at an offset
//! (from several threads at once), and say which byte ranges may hold data. `vmstash-hashblocks`
//! implements it for local raw files, block devices and qcow2 chains; the CLI implements it for
//! images read over SFTP; a test implements it over a `Vec<u8>`.
//!
//! A source that finds its image damaged says so with [`SourceError::Corrupt`]: the backup then
//! fails naming the disk, and no snapshot is written. A damaged source is never backed up as
//! zeros.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The on-disk format of a disk image: the `format` member of a snapshot's disk (spec §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A plain file or block device holding the guest bytes 1:1.
    Raw,
    /// A qcow2 image (version 2 or 3), possibly with a backing chain.
    Qcow2,
}

impl ImageFormat {
    /// The format's name as qemu spells it (`"raw"`, `"qcow2"`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

/// A VM disk opened for reading.
pub trait DiskSource: Send + Sync {
    /// The format the image was detected (or declared) as.
    fn format(&self) -> ImageFormat;

    /// Virtual size in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset`; `offset + buf.len() <= size()` (error otherwise).
    ///
    /// Must be callable from several threads at once.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError>;

    /// Sorted, non-overlapping byte ranges that may hold non-zero data; everything outside them
    /// reads as zeros and need not be read.
    fn data_ranges(&self) -> Result<Vec<Range<u64>>, SourceError>;

    /// How many chunks a backup should read at once to keep this source busy.
    ///
    /// A local file read in order is served well by the kernel's read-ahead with one or two
    /// reads in flight; a remote source wants several chunks' requests in flight so that no
    /// round trip leaves the connection idle.
    fn concurrent_reads(&self) -> usize {
        1
    }
}

/// Why a disk image could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The operating system failed an operation on a file.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// The file the operation was on.
        path: PathBuf,
        /// What was being done, phrased to precede the path ("open", "read 4096 bytes at
        /// offset 0 of").
        action: String,
        /// The error the operating system (or imago, for I/O below it) reported.
        #[source]
        source: io::Error,
    },

    /// The image's metadata is damaged or not a valid image of its format.
    #[error(
        "{} is damaged or not a valid qcow2 image: {what}; inspect it with `qemu-img check`",
        path.display()
    )]
    Corrupt {
        /// The image whose metadata is wrong.
        path: PathBuf,
        /// What is wrong, with the values found.
        what: String,
    },

    /// The image is valid but uses something vmstash cannot read.
    #[error("{} cannot be backed up: {what}", path.display())]
    Unsupported {
        /// The image using the feature.
        path: PathBuf,
        /// The feature, and how to get an image vmstash can read.
        what: String,
    },

    /// A read was asked for bytes beyond the end of the disk (a bug in the caller).
    #[error(
        "cannot read {len} bytes at offset {offset} of {}: the disk is only {size} bytes long",
        path.display()
    )]
    OutOfRange {
        /// The disk image.
        path: PathBuf,
        /// Where the read started.
        offset: u64,
        /// How many bytes were asked for.
        len: usize,
        /// The disk's virtual size.
        size: u64,
    },

    /// Reading a disk on a remote host failed (the message names the host, the path and why).
    #[error(transparent)]
    Remote(Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// A raw disk held in memory: for tests, examples, and callers that already have the bytes.
#[derive(Debug, Clone)]
pub struct MemorySource {
    bytes: Vec<u8>,
}

impl MemorySource {
    /// A raw disk whose guest bytes are `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        MemorySource { bytes }
    }
}

impl DiskSource for MemorySource {
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }

    fn size(&self) -> u64 {
        len_u64(self.bytes.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        let out_of_range = || SourceError::OutOfRange {
            path: PathBuf::from("memory"),
            offset,
            len: buf.len(),
            size: self.size(),
        };
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.bytes.get(start..end))
            .ok_or_else(out_of_range)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn data_ranges(&self) -> Result<Vec<Range<u64>>, SourceError> {
        Ok(whole_disk(self.size()))
    }
}

/// Checks that a read of `len` bytes at `offset` stays inside a disk of `size` bytes.
pub fn check_read_range(
    path: &Path,
    offset: u64,
    len: usize,
    size: u64,
) -> Result<(), SourceError> {
    match offset.checked_add(len_u64(len)) {
        Some(end) if end <= size => Ok(()),
        _ => Err(SourceError::OutOfRange {
            path: path.to_owned(),
            offset,
            len,
            size,
        }),
    }
}

/// The data ranges of a disk about which nothing is known: all of it.
pub fn whole_disk(size: u64) -> Vec<Range<u64>> {
    std::iter::once(0..size).filter(|r| !r.is_empty()).collect()
}

/// A buffer length as `u64` (lossless on every target Rust supports; saturates otherwise, which
/// makes bound checks fail rather than pass).
pub fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_match_qemu() {
        assert_eq!(ImageFormat::Raw.name(), "raw");
        assert_eq!(ImageFormat::Qcow2.name(), "qcow2");
    }

    #[test]
    fn reads_past_the_end_are_refused_and_the_whole_disk_is_one_range() {
        let p = Path::new("d");
        assert!(check_read_range(p, 10, 6, 16).is_ok());
        assert!(matches!(
            check_read_range(p, 10, 7, 16),
            Err(SourceError::OutOfRange {
                offset: 10,
                len: 7,
                size: 16,
                ..
            })
        ));
        assert!(check_read_range(p, u64::MAX, 1, 16).is_err());
        assert_eq!(whole_disk(0), Vec::<Range<u64>>::new());
        assert_eq!(whole_disk(5), vec![0..5]);
    }

    #[test]
    fn memory_source_reads_its_bytes_and_nothing_past_them() {
        let m = MemorySource::new((0..10).collect());
        let mut buf = [0u8; 4];
        m.read_at(&mut buf, 6).expect("read");
        assert_eq!(buf, [6, 7, 8, 9]);
        assert!(matches!(
            m.read_at(&mut buf, 7),
            Err(SourceError::OutOfRange { .. })
        ));
        assert_eq!(m.data_ranges().expect("ranges"), vec![0..10]);
    }
}
