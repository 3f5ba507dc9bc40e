//! Where repository files live (spec/FORMAT.md §1 "Layout").
//!
//! One small trait for every store — the local filesystem here, SFTP and
//! S3-compatible object storage later — and an in-memory store for tests.
//! A backend stores whole immutable files: `write` is atomic (a reader
//! sees the whole file or none of it) and durable when it returns.

mod cache;
pub mod conformance;
mod local;
mod memory;

pub use cache::CachedBackend;
pub use local::LocalBackend;
pub use memory::MemoryBackend;

use crate::{Error, Result};

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
    /// `locks/<id>`, and `locks/prune` ([`PRUNE_LOCK`])
    Lock,
    /// `marks/<id>`: packs a prune marked for deletion (§20)
    Mark,
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
            FileKind::Mark => "marks",
        }
    }

    /// Every kind that lives in a directory.
    pub const DIRS: [FileKind; 6] = [
        FileKind::Key,
        FileKind::Pack,
        FileKind::Index,
        FileKind::Snapshot,
        FileKind::Lock,
        FileKind::Mark,
    ];
}

/// The one file name in `locks/` that is not an id: the prune lock (§20.2). Listings leave it
/// out; it is created with [`Backend::create_new`].
pub const PRUNE_LOCK: &str = "prune";

/// True for a name a listing returns: 64 lower-case hex digits (or `config`).
pub fn is_listed_name(name: &str) -> bool {
    name == "config"
        || (name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Checks a name given to a backend: a listed name, or the prune lock in `locks/`.
pub fn check_name(kind: FileKind, name: &str) -> Result<()> {
    if is_listed_name(name) || (kind == FileKind::Lock && name == PRUNE_LOCK) {
        Ok(())
    } else {
        Err(Error::InvalidParameter(format!("bad file name {name:?}")))
    }
}

/// A temporary file of a write that never finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemporaryFile {
    /// Its path relative to the repository root: `index/.tmp-…`, `data/7c/.tmp-…`.
    pub path: String,
    /// When it was last written, if the store says.
    pub modified: Option<std::time::SystemTime>,
}

/// Prefix of the temporary files writers create beside their final names (§1).
pub const TMP_PREFIX: &str = ".tmp-";

/// The directories, relative to the repository root, where temporary files may be.
pub fn temporary_dirs() -> Vec<String> {
    let mut dirs = Vec::new();
    for kind in FileKind::DIRS {
        if kind == FileKind::Pack {
            dirs.extend((0..=255u8).map(|i| format!("data/{}", hex::encode([i]))));
        } else {
            dirs.push(kind.dir().to_string());
        }
    }
    dirs
}

/// True when `path` (relative to the root) names a temporary file in one of the
/// [`temporary_dirs`]: nothing else may be removed as one.
pub fn is_temporary_path(path: &str) -> bool {
    let Some((dir, name)) = path.rsplit_once('/') else {
        return false;
    };
    let tail = name.strip_prefix(TMP_PREFIX).unwrap_or("");
    !tail.is_empty()
        && tail
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && is_repository_dir(dir)
}

/// True for one of the [`temporary_dirs`], checked without building their list.
fn is_repository_dir(dir: &str) -> bool {
    match dir.split_once('/') {
        Some(("data", sub)) => {
            sub.len() == 2 && sub.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        Some(_) => false,
        None => FileKind::DIRS
            .iter()
            .any(|k| *k != FileKind::Pack && k.dir() == dir),
    }
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
    /// Stores a file atomically and durably only if no file has that name: `Ok(false)` when
    /// one has (exclusive creation, for the prune lock, §20.2).
    fn create_new(&self, kind: FileKind, name: &str, bytes: &[u8]) -> Result<bool>;
    /// Temporary files (`.tmp-*`) that writes never finished or renamed (§1: readers ignore
    /// them); a store without them lists none.
    fn list_temporary(&self) -> Result<Vec<TemporaryFile>> {
        Ok(Vec::new())
    }
    /// Deletes a temporary file [`Backend::list_temporary`] returned (`path` must name one).
    fn remove_temporary(&self, path: &str) -> Result<()> {
        Err(Error::InvalidParameter(format!(
            "{} keeps no temporary file {path}",
            self.location()
        )))
    }
    /// How many requests a reader or writer of this store should keep in flight: a local disk
    /// is served well by a thread per core; an object store answers each request after a round
    /// trip, so restores and the mount keep this many fetches going (default 1: no wish beyond
    /// the engine's own threads).
    fn requests_in_flight(&self) -> usize {
        1
    }
    /// When a file was last written, if the store can say (it decides when an undecodable
    /// lock file counts as stale); `None` when it cannot.
    fn modified(&self, kind: FileKind, name: &str) -> Result<Option<std::time::SystemTime>> {
        let _ = (kind, name);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::is_temporary_path;

    #[test]
    fn only_tmp_files_in_repository_directories_are_temporary() {
        for ok in [
            "index/.tmp-ab12",
            "data/7c/.tmp-0f",
            "locks/.tmp-x_y-z",
            "keys/.tmp-1",
        ] {
            assert!(is_temporary_path(ok), "{ok}");
        }
        for bad in [
            "index/.tmp-",
            "index/notes.txt",
            "config",
            ".tmp-ab",
            "data/.tmp-ab",
            "data/zz/.tmp-ab",
            "data/7c/../.tmp-ab",
            "../index/.tmp-ab",
            "/index/.tmp-ab",
            "index/.tmp-a/b",
            "index/.tmp-a.b",
            "other/.tmp-ab",
        ] {
            assert!(!is_temporary_path(bad), "{bad}");
        }
    }
}
