//! A local cache of a remote repository's metadata (index and snapshot
//! files), so that listing, restoring and mounting do not download them
//! again. Those files are immutable and named by the SHA-256 of their
//! bytes, so a cached copy is either exactly right (its hash matches its
//! name) or discarded; packs, locks, keys and the config always go to the
//! backend.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{Backend, FileKind};
use crate::id::Id;
use crate::Result;

/// A backend with a metadata cache in a local directory.
pub struct CachedBackend<B> {
    inner: B,
    root: PathBuf,
    dir: OnceLock<PathBuf>,
}

impl<B: Backend> CachedBackend<B> {
    /// Wraps `inner`; the cache lives under `root/<repository id>/` once
    /// [`CachedBackend::enable`] names the repository.
    pub fn new(inner: B, root: impl Into<PathBuf>) -> Self {
        CachedBackend {
            inner,
            root: root.into(),
            dir: OnceLock::new(),
        }
    }

    /// Turns the cache on for the repository with this id (from its
    /// config, known only after the repository was opened). An id that is
    /// not 64 hex digits leaves the cache off.
    pub fn enable(&self, repo_id: &str) {
        if Id::from_hex(repo_id).is_some() {
            let _ = self.dir.set(self.root.join(repo_id));
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn cache_path(&self, kind: FileKind, name: &str) -> Option<PathBuf> {
        let cached = matches!(kind, FileKind::Index | FileKind::Snapshot);
        let dir = self.dir.get()?;
        (cached && Id::from_hex(name).is_some()).then(|| dir.join(kind.dir()).join(name))
    }

    /// Drops cached files the backend no longer has.
    fn forget_missing(&self, kind: FileKind, present: &[(String, u64)]) {
        let Some(dir) = self.dir.get().map(|d| d.join(kind.dir())) else {
            return;
        };
        let Ok(rd) = fs::read_dir(&dir) else { return };
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if !present.iter().any(|(n, _)| *n == name) {
                let _ = fs::remove_file(ent.path());
            }
        }
    }
}

/// Stores a copy; failures only cost a later download.
fn store(path: &Path, bytes: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(".tmp-{}", Id::of(bytes).short()));
    if fs::write(&tmp, bytes).is_ok() && fs::rename(&tmp, path).is_err() {
        let _ = fs::remove_file(&tmp);
    }
}

impl<B: Backend> Backend for CachedBackend<B> {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn create(&self) -> Result<()> {
        self.inner.create()
    }

    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        let files = self.inner.list(kind)?;
        if matches!(kind, FileKind::Index | FileKind::Snapshot) {
            self.forget_missing(kind, &files);
        }
        Ok(files)
    }

    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let Some(path) = self.cache_path(kind, name) else {
            return self.inner.read(kind, name);
        };
        if let Ok(bytes) = fs::read(&path) {
            if Id::of(&bytes).to_hex() == name {
                return Ok(bytes);
            }
            let _ = fs::remove_file(&path);
        }
        let bytes = self.inner.read(kind, name)?;
        if Id::of(&bytes).to_hex() == name {
            store(&path, &bytes);
        }
        Ok(bytes)
    }

    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.inner.read_range(kind, name, offset, len)
    }

    fn write(&self, kind: FileKind, name: &str, bytes: &[u8]) -> Result<()> {
        self.inner.write(kind, name, bytes)?;
        if let Some(path) = self.cache_path(kind, name) {
            store(&path, bytes);
        }
        Ok(())
    }

    fn remove(&self, kind: FileKind, name: &str) -> Result<()> {
        if let Some(path) = self.cache_path(kind, name) {
            let _ = fs::remove_file(path);
        }
        self.inner.remove(kind, name)
    }

    fn create_new(&self, kind: FileKind, name: &str, bytes: &[u8]) -> Result<bool> {
        self.inner.create_new(kind, name, bytes)
    }

    fn modified(&self, kind: FileKind, name: &str) -> Result<Option<std::time::SystemTime>> {
        self.inner.modified(kind, name)
    }

    fn requests_in_flight(&self) -> usize {
        self.inner.requests_in_flight()
    }

    fn list_temporary(&self) -> Result<Vec<super::TemporaryFile>> {
        self.inner.list_temporary()
    }

    fn remove_temporary(&self, path: &str) -> Result<()> {
        self.inner.remove_temporary(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;

    #[test]
    fn caches_verified_metadata_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = CachedBackend::new(MemoryBackend::default(), dir.path());
        let bytes = b"index bytes".to_vec();
        let name = Id::of(&bytes).to_hex();
        c.inner()
            .write(FileKind::Index, &name, &bytes)
            .expect("write");
        assert_eq!(c.read(FileKind::Index, &name).expect("read"), bytes);
        assert!(!dir.path().join("x").exists(), "no cache before enable");

        let repo_id = Id::of(b"repo").to_hex();
        c.enable(&repo_id);
        assert_eq!(c.read(FileKind::Index, &name).expect("read"), bytes);
        let cached = dir.path().join(&repo_id).join("index").join(&name);
        assert_eq!(fs::read(&cached).expect("cached"), bytes);

        // The cached copy is served even when the backend's copy changed;
        // a damaged cached copy is discarded and fetched again.
        c.inner().tamper(FileKind::Index, &name, |v| v.push(0));
        assert_eq!(c.read(FileKind::Index, &name).expect("read"), bytes);
        fs::write(&cached, b"junk").expect("write");
        c.inner().tamper(FileKind::Index, &name, |v| {
            v.pop();
        });
        assert_eq!(c.read(FileKind::Index, &name).expect("read"), bytes);

        // Files gone from the backend leave the cache on the next listing.
        c.inner().remove(FileKind::Index, &name).expect("remove");
        assert!(c.list(FileKind::Index).expect("list").is_empty());
        assert!(!cached.exists());

        // Packs are never cached.
        let pack = Id::of(b"pack").to_hex();
        c.write(FileKind::Pack, &pack, b"pack").expect("write");
        assert!(!dir.path().join(&repo_id).join("data").exists());
    }
}
