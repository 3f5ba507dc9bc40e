//! An in-memory backend, so that the engine's unit tests need no disk.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{relative_path, Backend, FileKind};
use crate::{Error, Result};

/// Files kept in a map, keyed by their relative path.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    files: Mutex<BTreeMap<(u8, String), Vec<u8>>>,
    /// Kinds whose writes fail as on a full disk.
    full: Mutex<Vec<FileKind>>,
}

fn key(kind: FileKind, name: &str) -> (u8, String) {
    let k = FileKind::DIRS
        .iter()
        .position(|d| *d == kind)
        .map_or(0, |p| p + 1);
    (u8::try_from(k).unwrap_or(0), name.to_string())
}

fn not_found(kind: FileKind, name: &str) -> Error {
    Error::io(
        relative_path(kind, name),
        std::io::Error::from(std::io::ErrorKind::NotFound),
    )
}

impl MemoryBackend {
    fn files(&self) -> std::sync::MutexGuard<'_, BTreeMap<(u8, String), Vec<u8>>> {
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes every later write of `kind` fail with "no space left on device", to test what a
    /// full disk does.
    pub fn fail_writes_of(&self, kind: FileKind) {
        self.full
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(kind);
    }

    /// Applies `f` to a stored file, to simulate damage in tests.
    pub fn tamper(&self, kind: FileKind, name: &str, f: impl FnOnce(&mut Vec<u8>)) {
        if let Some(v) = self.files().get_mut(&key(kind, name)) {
            f(v);
        }
    }
}

impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory".to_string()
    }

    fn create(&self) -> Result<()> {
        if self.files().is_empty() {
            Ok(())
        } else {
            Err(Error::AlreadyExists(self.location()))
        }
    }

    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        let k = key(kind, "").0;
        Ok(self
            .files()
            .iter()
            .filter(|((kk, n), _)| *kk == k && super::is_listed_name(n))
            .map(|((_, n), v)| (n.clone(), u64::try_from(v.len()).unwrap_or(u64::MAX)))
            .collect())
    }

    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        self.files()
            .get(&key(kind, name))
            .cloned()
            .ok_or_else(|| not_found(kind, name))
    }

    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u32) -> Result<Vec<u8>> {
        let files = self.files();
        let v = files
            .get(&key(kind, name))
            .ok_or_else(|| not_found(kind, name))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
        v.get(start..end).map(<[u8]>::to_vec).ok_or_else(|| {
            Error::io(
                relative_path(kind, name),
                std::io::ErrorKind::UnexpectedEof.into(),
            )
        })
    }

    fn write(&self, kind: FileKind, name: &str, bytes: &[u8]) -> Result<()> {
        super::check_name(kind, name)?;
        let full = self
            .full
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&kind);
        if full {
            return Err(Error::io(
                relative_path(kind, name),
                std::io::Error::from_raw_os_error(28),
            ));
        }
        self.files().insert(key(kind, name), bytes.to_vec());
        Ok(())
    }

    fn create_new(&self, kind: FileKind, name: &str, bytes: &[u8]) -> Result<bool> {
        if self.files().contains_key(&key(kind, name)) {
            return Ok(false);
        }
        self.write(kind, name, bytes)?;
        Ok(true)
    }

    fn remove(&self, kind: FileKind, name: &str) -> Result<()> {
        self.files()
            .remove(&key(kind, name))
            .map(|_| ())
            .ok_or_else(|| not_found(kind, name))
    }
}
