//! The vmstash repository, format version 1: an encrypted, deduplicating
//! store of disk-image chunks and the snapshots that reference them.
//!
//! This crate knows nothing of SSH, libvirt or FUSE. `spec/FORMAT.md` is
//! the normative description of every byte it reads and writes; each
//! module's doc names the section it implements.

pub mod backend;
pub mod blob;
pub mod check;
pub mod chunkmap;
pub mod config;
pub mod crypto;
pub mod entry;
mod error;
pub mod id;
pub mod index;
pub mod keyfile;
pub mod lock;
pub mod pack;
pub mod payload;
pub mod repository;
pub mod sealed;
pub mod snapshot;
pub mod writer;

pub use error::{Error, Result};
pub use id::Id;
pub use repository::Repository;

/// The repository format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The error for a file of a format version this build does not know.
pub(crate) fn unsupported_version(file: &str, found: u64) -> Error {
    let what = if found > u64::from(FORMAT_VERSION) {
        format!(
            "repository format version {found} is newer than this vmstash supports ({FORMAT_VERSION}); upgrade vmstash"
        )
    } else {
        format!("unknown repository format version {found} (this vmstash reads version {FORMAT_VERSION})")
    };
    Error::Incompatible {
        file: file.to_string(),
        what,
    }
}
