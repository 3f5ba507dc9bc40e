//! Where repository files live (spec/FORMAT.md §1 "Layout").
//!
//! One small trait for every store — the local filesystem here, SFTP and
//! S3-compatible object storage later — and an in-memory store for tests.
//! A backend stores whole immutable files: `write` is atomic (a reader
//! sees the whole file or none of it) and durable when it returns.

mod cache;
mod local;
mod memory;

pub use cache::CachedBackend;
pub use local::LocalBackend;
pub use memory::MemoryBackend;

use crate::Result;

/// The kinds of repository file, each in its own directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// `config`
    Config,
    /// `keys/<id>`
    Key,
    /// `data/<first two hex digits>/<id>`
    Pack,
    /// `index/<id>`
    Index,
    /// `snapshots/<id>`
    Snapshot,
    /// `locks/<id>`
    Lock,
}

impl FileKind {
    /// The directory of this kind, relative to the repository root.
    pub const fn dir(self) -> &'static str {
        match self {
            FileKind::Config => "",
            FileKind::Key => "keys",
            FileKind::Pack => "data",
            FileKind::Index => "index",
            FileKind::Snapshot => "snapshots",
            FileKind::Lock => "locks",
        }
    }

    /// Every kind that lives in a directory.
    pub const DIRS: [FileKind; 5] = [
        FileKind::Key,
        FileKind::Pack,
        FileKind::Index,
        FileKind::Snapshot,
        FileKind::Lock,
    ];
}

/// The path of a file relative to the repository root, as used in
/// messages and in spec/FORMAT.md.
pub fn relative_path(kind: FileKind, name: &str) -> String {
    match kind {
        FileKind::Config => "config".to_string(),
        FileKind::Pack => format!("data/{}/{name}", name.get(..2).unwrap_or("xx")),
        other => format!("{}/{name}", other.dir()),
    }
}

/// A store of repository files.
pub trait Backend: Send + Sync {
    /// A human-readable location, for messages.
    fn location(&self) -> String;
    /// Creates the empty layout; fails if a repository is already there.
    fn create(&self) -> Result<()>;
    /// Names and sizes of the files of `kind` (`config` for Config, if present).
    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>>;
    /// A whole file.
    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>>;
    /// `len` bytes at `offset`; an error if the file is shorter.
    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u32) -> Result<Vec<u8>>;
    /// Stores a file atomically and durably.
    fn write(&self, kind: FileKind, name: &str, bytes: &[u8]) -> Result<()>;
    /// Deletes a file.
    fn remove(&self, kind: FileKind, name: &str) -> Result<()>;
    /// When a file was last written, if the store can say (it decides when an undecodable
    /// lock file counts as stale); `None` when it cannot.
    fn modified(&self, kind: FileKind, name: &str) -> Result<Option<std::time::SystemTime>> {
        let _ = (kind, name);
        Ok(None)
    }
}
