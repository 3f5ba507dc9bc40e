//! Metadata that points past the end of its file is damage, not zeros.
//!
//! imago's storage contract fills whatever a read asks for past the end of a file with zeros
//! (`Storage::pure_readv`: imago's local `File` does it when `preadv` returns 0, the CLI's SFTP
//! storage does the same). qcow2 needs some of that: a file may end inside its last cluster
//! (subclusters, compressed clusters whose length is rounded up to 512-byte sectors, writers that
//! stop at the last byte they wrote). But it also lets a truncated image read without an error:
//! an L1 table past the end reads as "no L2 tables", an L2 table as "no clusters", a data cluster
//! as zeros, and the whole image backs up as zeros with exit 0.
//!
//! So every region that an image's metadata points at must be in the file, by one of two rules
//! ([`Presence`], in [`super::presence`]):
//!
//! - **whole**, for what decides which clusters are allocated (the L1 table, every L2 table)
//!   and the backing file name: a missing entry would silently read as "unallocated". qemu writes
//!   these whole (the L1 table to the byte, L2 tables as full clusters);
//! - **up to the last cluster**, for everything else: every byte must lie in a cluster that
//!   starts before the end of the file, so a cluster may be cut short only if it is the file's
//!   last. For a cluster-aligned region that means it starts before the end of the file. (`qemu-img
//!   check` is a little more lenient: it reports regions that reach one cluster or more past the
//!   end.)
//!
//! Where the rules are applied, the same way for local files and files read over SFTP:
//!
//! 1. at open, the tables and names the header points at ([`super::header`]);
//! 2. at open, every L2 table the L1 table points at ([`check_l2_tables`]);
//! 3. on every read imago makes, through [`BoundedStorage`]: data clusters and compressed
//!    cluster ranges (whose host offsets imago does not expose), up to the last cluster;
//! 4. when listing data ranges, the host range of every plain data mapping
//!    ([`BoundedStorage::check_range`], from `super::mapped_data_ranges`), so that a truncated
//!    image is refused before any of it is read.
//!
//! A refusal is an `io::Error` of kind `InvalidData` naming the file and the bytes, which
//! `super::imago_error` turns into `SourceError::Corrupt`.

use super::header::{HeaderSummary, TABLE_ENTRY_LEN};
use super::imago_error;
use super::presence::{lies_in_file, Presence};
use crate::source::{len_u64, SourceError};
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::storage::drivers::CommonStorageHelper;
use imago::{Storage, StorageExt};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The bits of an L1 entry that hold the offset of its L2 table (qcow2.txt, "L1 table entry":
/// bits 9-55); 0 means no L2 table.
const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// Most bytes of the L1 table [`check_l2_tables`] reads at once, so that its memory stays small
/// whatever the table's length (up to 32 MiB).
const L1_READ_BYTES: usize = 64 << 10;

/// Checks, at open, that every L2 table the L1 table of the image `storage` (at `path`, with
/// `header`, `file_len` bytes long) points at lies whole in the file.
///
/// imago loads L2 tables only when a read reaches them, and an L2 table cut short would read as
/// partly unallocated; checking them here refuses a truncated image before anything is read.
/// Call after `header.check(file_len)`, which bounds the L1 table to 32 MiB and places it inside
/// the file; the table is read in pieces of [`L1_READ_BYTES`].
pub(super) fn check_l2_tables<S: Storage>(
    storage: &S,
    path: &Path,
    header: &HeaderSummary,
    file_len: u64,
) -> Result<(), SourceError> {
    let table_len = u64::from(header.l1_size).saturating_mul(TABLE_ENTRY_LEN);
    let l2_len = header.cluster_size().get();
    let mut buf = vec![0u8; L1_READ_BYTES];
    let mut done = 0;
    while done < table_len {
        let len =
            usize::try_from(table_len - done).map_or(L1_READ_BYTES, |left| left.min(L1_READ_BYTES));
        let piece = buf.get_mut(..len).unwrap_or_default();
        let at = header.l1_table_offset.saturating_add(done);
        storage.read(&mut *piece, at).map_err(|err| {
            imago_error(path, format!("read the L1 table at offset {at} of"), err)
        })?;
        let first_index = done / TABLE_ENTRY_LEN;
        for (index, entry) in (first_index..).zip(piece.chunks_exact(8)) {
            let entry = <[u8; 8]>::try_from(entry).map_or(0, u64::from_be_bytes);
            check_l2_table(path, index, entry, l2_len, file_len)?;
        }
        done = done.saturating_add(len_u64(len));
    }
    Ok(())
}

/// Checks that the L2 table that L1 entry `index` (`entry`) points at, if any, lies whole in a
/// file of `file_len` bytes; L2 tables are `l2_len` bytes long.
fn check_l2_table(
    path: &Path,
    index: u64,
    entry: u64,
    l2_len: u64,
    file_len: u64,
) -> Result<(), SourceError> {
    let l2_offset = entry & L1_OFFSET_MASK;
    if l2_offset == 0 || lies_in_file(l2_offset, l2_len, file_len, Presence::Whole) {
        return Ok(());
    }
    Err(SourceError::Corrupt {
        path: path.to_owned(),
        what: format!(
            "L1 entry {index} places an L2 table at bytes {l2_offset}..{}, past the end of the \
             file ({file_len} bytes); was the file truncated?",
            l2_offset.saturating_add(l2_len)
        ),
    })
}

/// imago's storage object for one file of a chain, which refuses reads of regions that lie past
/// the end of the file by the file's [`Presence`] rule, instead of reading them as zeros.
///
/// Reads pass to the file's own storage object (which fills the permitted tail of a last cluster
/// cut short with zeros); every modification is refused.
#[derive(Debug)]
pub struct BoundedStorage<S> {
    /// The file's own storage object.
    inner: S,
    /// The file, for error messages.
    path: PathBuf,
    /// Its length when it was opened.
    file_len: u64,
    /// How much of what is read must be in the file.
    presence: Presence,
}

impl<S: Storage> BoundedStorage<S> {
    /// Wraps `inner`, the storage of the file at `path`, `file_len` bytes long.
    pub(super) fn new(inner: S, path: &Path, file_len: u64, presence: Presence) -> Self {
        Self {
            inner,
            path: path.to_owned(),
            file_len,
            presence,
        }
    }

    /// Checks that the `len` bytes at `start` lie in the file. If they do not, the error
    /// (`InvalidData`) says that `what`, given the first byte that is not there ("the data at
    /// guest offset 0 is stored at byte 4096"), is past the end of the file.
    pub fn check_range(
        &self,
        start: u64,
        len: u64,
        what: impl FnOnce(u64) -> String,
    ) -> io::Result<()> {
        if lies_in_file(start, len, self.file_len, self.presence) {
            return Ok(());
        }
        let missing = start.max(self.presence.reach(self.file_len));
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} of {}, past the end of that file ({} bytes); was it truncated?",
                what(missing),
                self.path.display(),
                self.file_len
            ),
        ))
    }
}

impl<S: fmt::Display> fmt::Display for BoundedStorage<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

// With imago's `sync` feature the trait's methods are plain blocking functions (its `async`
// declarations are compiled away), so they are implemented as such.
//
// SAFETY: imago declares `pure_readv`, `pure_writev` and `invalidate_cache` `unsafe` to put
// obligations on their callers (requests aligned to `mem_align()` and `req_align()`; consistent
// storage state when caches are dropped), not to let implementations do anything unsound. This
// wrapper reports the alignments of the storage it wraps, reads through that storage's safe
// `StorageExt::readv` (which checks the alignment again), never writes, and passes
// `invalidate_cache` on to the wrapped storage with the caller's obligations unchanged.
#[allow(unsafe_code)]
impl<S: Storage> Storage for BoundedStorage<S> {
    fn mem_align(&self) -> usize {
        self.inner.mem_align()
    }

    fn req_align(&self) -> usize {
        self.inner.req_align()
    }

    fn zero_align(&self) -> usize {
        self.inner.zero_align()
    }

    fn discard_align(&self) -> usize {
        self.inner.discard_align()
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn resolve_relative_path<P: AsRef<Path>>(&self, relative: P) -> io::Result<PathBuf> {
        self.inner.resolve_relative_path(relative)
    }

    fn get_filename(&self) -> Option<PathBuf> {
        self.inner.get_filename()
    }

    unsafe fn pure_readv(&self, bufv: IoVectorMut<'_>, offset: u64) -> io::Result<()> {
        let len = bufv.len();
        self.check_range(offset, len, |_| {
            format!(
                "the image's metadata points at bytes {offset}..{}",
                offset.saturating_add(len)
            )
        })?;
        self.inner.readv(bufv, offset)
    }

    unsafe fn pure_writev(&self, _bufv: IoVector<'_>, _offset: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is opened read-only", self.path.display()),
        ))
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }

    unsafe fn invalidate_cache(&self) -> io::Result<()> {
        // SAFETY: the caller's obligations (see above) are this method's obligations to `inner`.
        unsafe { self.inner.invalidate_cache() }
    }

    fn get_storage_helper(&self) -> &CommonStorageHelper {
        self.inner.get_storage_helper()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU64;

    /// `NonZeroU64` of a cluster size used in the tests.
    fn cluster(bytes: u64) -> Presence {
        Presence::InClusters(NonZeroU64::new(bytes).unwrap_or(NonZeroU64::MIN))
    }

    #[test]
    fn whole_regions_end_inside_the_file() {
        assert!(lies_in_file(0x30000, 8, 0x30008, Presence::Whole));
        assert!(!lies_in_file(0x30000, 8, 0x30007, Presence::Whole));
        assert!(lies_in_file(u64::MAX, 0, 0, Presence::Whole));
        assert!(!lies_in_file(u64::MAX, 1, u64::MAX, Presence::Whole));
    }

    #[test]
    fn only_the_last_cluster_may_be_cut_short() {
        let c = cluster(0x10000);
        // A file ending 4 KiB into its last cluster: that cluster reads, the next does not.
        let file_len = 0x50000 + 4096;
        assert!(lies_in_file(0x50000, 0x10000, file_len, c));
        assert!(
            lies_in_file(0x58000, 512, file_len, c),
            "tail of the last cluster"
        );
        assert!(!lies_in_file(0x60000, 512, file_len, c));
        assert!(
            !lies_in_file(0x5ff00, 0x200, file_len, c),
            "reaches the next cluster"
        );
        // A file ending on a cluster boundary has no tail.
        assert!(!lies_in_file(0x50000, 1, 0x50000, c));
        assert!(!lies_in_file(0, 1, 0, c), "an empty file holds nothing");
        assert!(lies_in_file(u64::MAX - 1, 1, u64::MAX, c));
    }
}
