//! Why a request to a guest filesystem failed, split by whose fault it is (in the manner of
//! `ext4-view`'s error type), so that the mount's log can tell the user which of three things
//! happened:
//!
//! - [`FsError::Corrupt`]: the backup holds the guest's bytes faithfully, but the filesystem
//!   they make up is damaged (as it was in the guest, or because the partition table cut it
//!   short). Nothing vmstash can fix; `fsck` in the guest might.
//! - [`FsError::Unsupported`]: the metadata is valid, but uses a feature the reader does not
//!   implement (an ext4 incompatible feature, compressed NTFS files, a newer FAT32 version).
//!   The raw partition (`p<N>.raw`) still has every byte.
//! - [`FsError::Read`]: the backup's bytes could not be read: a damaged pack, a blob missing
//!   from the index, an I/O error of the repository's storage. The repository's own error is
//!   kept unchanged; `vmstash check` says more.
//!
//! The rest are answers, not failures: a name that does not exist, a directory operation on a
//! file, and so on.

use std::io;
use std::sync::Arc;

use super::device::DeviceError;

/// Why a filesystem request failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// No such file.
    #[error("no such file or directory")]
    NotFound,
    /// A directory operation on something else.
    #[error("not a directory")]
    NotDir,
    /// A file operation on a directory.
    #[error("is a directory")]
    IsDir,
    /// `readlink` on something that is not a symbolic link.
    #[error("not a symbolic link")]
    NotSymlink,
    /// The filesystem's metadata is damaged: the guest's bytes are as backed up, but do not
    /// make up a valid filesystem.
    #[error("damaged {fs} metadata: {detail}")]
    Corrupt {
        /// Which filesystem type ("ext4", "vfat", "ntfs").
        fs: &'static str,
        /// What was found, and where.
        detail: String,
    },
    /// The metadata is valid but uses something the reader does not support.
    #[error("not supported by vmstash: {detail} ({fs})")]
    Unsupported {
        /// Which filesystem type.
        fs: &'static str,
        /// What is not supported.
        detail: String,
    },
    /// The backup's bytes could not be read: the repository's error, shared because every
    /// request waiting for the same chunk gets the same one.
    #[error("cannot read the backup: {0}")]
    Read(Arc<vmstash_repo::Error>),
}

impl FsError {
    /// Damaged metadata of filesystem `fs`.
    pub fn corrupt(fs: &'static str, detail: impl ToString) -> FsError {
        FsError::Corrupt {
            fs,
            detail: detail.to_string(),
        }
    }

    /// Valid metadata of filesystem `fs` that the reader does not support.
    pub fn unsupported(fs: &'static str, detail: impl ToString) -> FsError {
        FsError::Unsupported {
            fs,
            detail: detail.to_string(),
        }
    }

    /// A failed read of filesystem `fs`'s partition: damage when the filesystem asked for
    /// bytes past the partition's end, the repository's error when the bytes are unreadable.
    pub fn device(fs: &'static str, e: DeviceError) -> FsError {
        match e {
            DeviceError::PastEnd(past) => FsError::corrupt(fs, past),
            DeviceError::Read(repo) => FsError::Read(repo),
        }
    }

    /// An I/O error a filesystem crate returned while reading through a
    /// [`DeviceCursor`](super::DeviceCursor): the device's error it carries, or else damage
    /// (the crate's own complaint about the bytes, such as an unexpected end).
    pub fn from_io(fs: &'static str, e: io::Error) -> FsError {
        match DeviceError::from_io(e) {
            Ok(device) => FsError::device(fs, device),
            Err(other) => FsError::corrupt(fs, other),
        }
    }

    /// Whether this is a failure to be logged (as opposed to an answer such as "not found").
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            FsError::Corrupt { .. } | FsError::Unsupported { .. } | FsError::Read(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guestfs::device::PastEnd;

    #[test]
    fn device_errors_keep_whose_fault_they_are() {
        let past = DeviceError::PastEnd(PastEnd {
            offset: 10,
            len: 4,
            size: 12,
        });
        let e = FsError::device("ext4", past);
        assert!(matches!(e, FsError::Corrupt { fs: "ext4", .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "damaged ext4 metadata: 4 bytes at 10 are past the end of the partition (12 bytes)"
        );
        let repo = Arc::new(vmstash_repo::Error::BlobNotFound("1a2b".into()));
        let e = FsError::device("ntfs", DeviceError::Read(Arc::clone(&repo)));
        assert!(
            matches!(&e, FsError::Read(r) if Arc::ptr_eq(r, &repo)),
            "the repository's error, unchanged: {e:?}"
        );
        assert!(e
            .to_string()
            .starts_with("cannot read the backup: blob 1a2b"));
        let e = FsError::unsupported("ntfs", "compressed files");
        assert_eq!(
            e.to_string(),
            "not supported by vmstash: compressed files (ntfs)"
        );
        assert!(e.is_failure());
        assert!(!FsError::NotFound.is_failure());
    }

    #[test]
    fn io_errors_from_a_cursor_give_the_device_error_back() {
        let repo = Arc::new(vmstash_repo::Error::corrupt("data/ab/abcd", "bad MAC"));
        let io = io::Error::other(DeviceError::Read(repo));
        assert!(matches!(
            FsError::from_io("vfat", io),
            FsError::Read(e) if matches!(*e, vmstash_repo::Error::Corrupt { .. })
        ));
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "short");
        assert!(matches!(
            FsError::from_io("vfat", eof),
            FsError::Corrupt { fs: "vfat", .. }
        ));
    }
}
