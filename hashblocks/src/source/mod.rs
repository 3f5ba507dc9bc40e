//! Disk-image sources: raw files (sparse-aware) and qcow2 (with backing chains, through imago);
//! and [`nbd`], a disk exported over NBD on this host with its dirty bitmap (spec §19.6).
//!
//! A backup reads a VM disk through the engine's [`DiskSource`] trait (defined in
//! `vmstash_repo::source` and re-exported here): the virtual
//! size, positional reads of guest bytes, and the list of byte ranges that
//! may hold data (everything else is known to read as zeros, so the backup
//! can skip it without reading it).
//!
//! # Design
//!
//! - **Format by content, never by name.** [`open`] looks at the first four
//!   bytes: the qcow2 magic `QFI\xfb` means qcow2, anything else is raw. A
//!   raw image that happens to be called `disk.qcow2` is backed up as raw,
//!   byte for byte, which is what the guest sees when qemu is told it is raw.
//! - **Read-only, always.** Every file (image, backing files, external data
//!   files) is opened with `O_RDONLY`; imago is told the images are not
//!   writable, so it never touches a header, refcount or dirty bit.
//! - **Block devices are raw sources too** (LVM volumes, `/dev/loopN`,
//!   iSCSI disks): their size comes from seeking to the end, since
//!   `stat` reports 0 for them. A block device that holds a qcow2 image
//!   (as oVirt lays them out) is detected and read as qcow2.
//! - **Backing chains are resolved as qemu does:** a relative backing file
//!   name is relative to the directory of the image that names it (not to
//!   the current directory), the declared backing format is trusted, and
//!   the format is probed only when the header does not declare one. Chains
//!   that loop or are absurdly long are rejected instead of overflowing.
//! - **Untrusted headers give errors, not panics.** The qcow2 header is
//!   checked by [`qcow2`] before imago sees it (encryption, features imago
//!   cannot read, an L1 table too small for the virtual size); imago itself
//!   bounds every table it loads.
//! - **Concurrent reads.** Sources are `Send + Sync` and [`DiskSource::read_at`]
//!   takes `&self`: raw sources use `pread`, qcow2 sources share one imago
//!   instance whose metadata caches are behind reader/writer locks, so
//!   several backup threads can read one disk at once without reopening it.

mod mapped;
pub mod nbd;
pub mod qcow2;
mod raw;
pub mod test_util;

pub use mapped::with_data_ranges;
pub use vmstash_repo::source::{
    check_read_range, len_u64, whole_disk, DiskSource, ImageFormat, SourceError,
};

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

/// Opens `path`, detecting the format by content (qcow2 magic "QFI\xfb"), never by file name.
///
/// qcow2 backing chains are followed (backing file paths relative to the image's directory, as
/// qemu does). Block devices (e.g. /dev/loop0, LVM volumes) work as raw sources too (size via
/// seeking to the end).
pub fn open(path: &Path) -> Result<Box<dyn DiskSource>, SourceError> {
    let file = open_image_file(path, "open")?;
    match detect_format(path, &file)? {
        ImageFormat::Raw => Ok(Box::new(raw::RawSource::new(path, file)?)),
        ImageFormat::Qcow2 => Ok(Box::new(qcow2::Qcow2Source::open(path, file)?)),
    }
}

/// Opens `path` as the given format, without probing: for disks whose
/// format a trusted party (libvirt's `<driver type=…>`) declares. A guest
/// that writes a qcow2 header into its raw disk must not make vmstash
/// follow a "backing file" of the guest's choosing on the host.
pub fn open_as(path: &Path, format: ImageFormat) -> Result<Box<dyn DiskSource>, SourceError> {
    let file = open_image_file(path, "open")?;
    match format {
        ImageFormat::Raw => Ok(Box::new(raw::RawSource::new(path, file)?)),
        ImageFormat::Qcow2 => Ok(Box::new(qcow2::Qcow2Source::open(path, file)?)),
    }
}

/// Opens `path` read-only and checks that it is a regular file or a block device.
///
/// `action` names the operation in the error message ("open", "open backing file of …").
fn open_image_file(path: &Path, action: &str) -> Result<File, SourceError> {
    let io_error = |source| SourceError::Io {
        path: path.to_owned(),
        action: action.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    let file_type = file.metadata().map_err(io_error)?.file_type();
    if file_type.is_file() || file_type.is_block_device() {
        Ok(file)
    } else {
        Err(SourceError::Unsupported {
            path: path.to_owned(),
            what: "it is neither a regular file nor a block device".to_owned(),
        })
    }
}

/// Detects the format of an opened image from its first bytes.
///
/// Files shorter than the magic are raw (qemu treats them the same way).
fn detect_format(path: &Path, file: &File) -> Result<ImageFormat, SourceError> {
    let mut magic = [0u8; 4];
    let filled = read_prefix(file, &mut magic).map_err(|source| SourceError::Io {
        path: path.to_owned(),
        action: "read the first bytes of".to_owned(),
        source,
    })?;
    Ok(format_of_prefix(magic.get(..filled).unwrap_or(&[])))
}

/// The format of an image whose first bytes are `prefix` (as many as the image has, up to four).
fn format_of_prefix(prefix: &[u8]) -> ImageFormat {
    if prefix == qcow2::MAGIC {
        ImageFormat::Qcow2
    } else {
        ImageFormat::Raw
    }
}

/// Reads as much of the start of `file` as fits in `buf` (less if the file is shorter).
///
/// Returns how many bytes were read.
fn read_prefix(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..) {
        if rest.is_empty() {
            break;
        }
        match file.read_at(rest, len_u64(filled)) {
            Ok(0) => break,
            Ok(n) => filled = filled.saturating_add(n),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// Appends `range` to sorted, non-overlapping `ranges`, merging it with the last one if they
/// touch. Empty ranges are dropped.
fn push_range(ranges: &mut Vec<Range<u64>>, range: Range<u64>) {
    if range.is_empty() {
        return;
    }
    match ranges.last_mut() {
        Some(last) if last.end >= range.start => last.end = last.end.max(range.end),
        _ => ranges.push(range),
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{qemu, TestResult};
    use super::*;

    #[test]
    fn raw_file_named_qcow2_is_raw() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("disk.qcow2");
        std::fs::write(&path, b"not a qcow2 image, just bytes")?;
        let source = open(&path)?;
        assert_eq!(source.format(), ImageFormat::Raw);
        assert_eq!(source.size(), 29);
        Ok(())
    }

    #[test]
    fn qcow2_file_named_raw_is_qcow2() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("disk.raw");
        let path_str = path.to_str().ok_or("temp path is not UTF-8")?;
        let args = ["create", "-q", "-f", "qcow2", path_str, "1M"];
        qemu("qemu-img", &args)?;
        let source = open(&path)?;
        assert_eq!(source.format(), ImageFormat::Qcow2);
        assert_eq!(source.size(), 1 << 20);
        Ok(())
    }

    #[test]
    fn file_shorter_than_magic_is_raw() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tiny");
        std::fs::write(&path, b"QF")?;
        let source = open(&path)?;
        assert_eq!(source.format(), ImageFormat::Raw);
        let mut buf = [0u8; 2];
        source.read_at(&mut buf, 0)?;
        assert_eq!(&buf, b"QF");
        Ok(())
    }

    #[test]
    fn directory_is_rejected() -> TestResult {
        let dir = tempfile::tempdir()?;
        let err = open(dir.path())
            .err()
            .ok_or("opening a directory succeeded")?;
        assert!(matches!(err, SourceError::Unsupported { .. }), "{err}");
        Ok(())
    }

    #[test]
    fn missing_file_is_io_error_naming_it() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("absent.img");
        let err = open(&path)
            .err()
            .ok_or("opening a missing file succeeded")?;
        assert!(matches!(err, SourceError::Io { .. }), "{err}");
        assert!(err.to_string().contains("absent.img"), "{err}");
        Ok(())
    }

    #[test]
    fn push_range_merges_touching_ranges() {
        let mut ranges = Vec::new();
        push_range(&mut ranges, 0..10);
        push_range(&mut ranges, 10..20);
        push_range(&mut ranges, 25..25);
        push_range(&mut ranges, 30..40);
        assert_eq!(ranges, vec![0..20, 30..40]);
    }
}
