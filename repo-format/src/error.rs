//! The one error type of the repository engine.
//!
//! Split by whose fault it is, as in ext4-view: the storage failed (`Io`),
//! the bytes are wrong (`Corrupt`), the bytes are valid but of a version or
//! feature this build does not support (`Incompatible`), or the user's input
//! does not open the repository (`WrongPassword`, `NotARepository`, `Locked`), a disk being
//! backed up failed (`Source`, whose own kind says whose fault), or the caller stopped the
//! operation (`Cancelled`).

use std::path::PathBuf;

/// Everything that can go wrong in the repository engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend could not read or write a file.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A repository file does not decode: damaged or tampered with.
    #[error("{file} is corrupt: {what}")]
    Corrupt {
        /// The repository file, relative to the repository root.
        file: String,
        /// What was found, and where.
        what: String,
    },
    /// A valid file of a version or feature this build does not know.
    #[error("{file}: {what}")]
    Incompatible {
        /// The repository file, relative to the repository root.
        file: String,
        /// What is not supported, and what to do about it.
        what: String,
    },
    /// No key file opens with the given password.
    #[error("wrong password: no key file of this repository opens with it (check VMSTASH_PASSWORD, --password-file or --password-command)")]
    WrongPassword,
    /// The location holds no vmstash repository.
    #[error("{0} is not a vmstash repository (no config file); create one with `vmstash init`")]
    NotARepository(String),
    /// The storage refused the credentials or does not have the place named (an S3 bucket that
    /// does not exist): retrying does not help; the message says what to check.
    #[error("{location}: {what}")]
    StorageDenied {
        /// The repository location.
        location: String,
        /// What the storage said, and what to check.
        what: String,
    },
    /// The location already holds a repository (or other files).
    #[error("{0} already exists and is not empty; choose another location")]
    AlreadyExists(String),
    /// Another process holds a conflicting lock.
    #[error(
        "repository is locked {kind} by {holder}; if no such process is running any more, `vmstash unlock --remove-all` removes the lock (file locks/{file})"
    )]
    Locked {
        /// "exclusively" or "shared".
        kind: &'static str,
        /// user@host, pid and time of the holder.
        holder: String,
        /// The lock file's name.
        file: String,
    },
    /// A lock file that cannot be decoded and is not yet old enough to be stale: it may be a
    /// live lock of any kind.
    #[error(
        "lock file locks/{file} cannot be read ({reason}); it counts as held until the file is {stale_minutes} minutes old; if no other vmstash is using the repository, `vmstash unlock --remove-all` removes it"
    )]
    LockUnreadable {
        /// The lock file's name.
        file: String,
        /// Why it cannot be read.
        reason: String,
        /// When it becomes stale, in minutes since it was written.
        stale_minutes: u64,
    },
    /// A pack a backup needs was deleted by a prune that no longer counted the backup's lock.
    #[error("pack {0}, which this backup needs, was deleted by a prune while the backup ran (its lock had gone stale: was the process stopped for more than 30 minutes?); nothing was committed: run the backup again")]
    PackPruned(String),
    /// Bytes a snapshot records as lost (`repair snapshots`) were asked for without leave to
    /// read zeros.
    #[error("bytes {offset}..{end} of disk {disk} were lost ({why}); `vmstash repair snapshots` recorded them: restore or mount with --zero-lost to read zeros there")]
    Lost {
        /// The disk.
        disk: String,
        /// First lost byte of the range.
        offset: u64,
        /// End of the range.
        end: u64,
        /// What the read found.
        why: String,
    },
    /// A blob the caller asked for is in no index.
    #[error("blob {0} is not in any index (the repository is missing data; run `vmstash check`)")]
    BlobNotFound(String),
    /// A parameter given by the caller is out of range.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// A disk being backed up could not be read, or its image is damaged or unsupported: no
    /// snapshot was written.
    #[error("disk {disk}: {source}")]
    Source {
        /// The disk's name in the snapshot.
        disk: String,
        /// What the disk's reader said (its kind says whose fault).
        #[source]
        source: crate::source::SourceError,
    },
    /// The caller cancelled the operation ([`crate::CancelToken`]); nothing was committed.
    #[error("cancelled; nothing was committed and the repository is intact")]
    Cancelled,
    /// This part stopped because another part of the same operation failed first; that
    /// failure is the error to report.
    #[error("stopped after another part of the operation failed")]
    Aborted,
}

/// Result with the engine's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A `Corrupt` error for `file`.
    pub fn corrupt(file: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Corrupt {
            file: file.into(),
            what: what.into(),
        }
    }

    /// An `Io` error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// True when the error says the disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.raw_os_error() == Some(28))
    }

    /// True for [`Error::Aborted`]: an error that only echoes another one.
    pub fn is_aborted(&self) -> bool {
        matches!(self, Error::Aborted)
    }
}
