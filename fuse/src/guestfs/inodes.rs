//! Inode numbers for filesystems whose reader works by path (ext4-view, fatfs): a path keeps
//! the number it was first given for as long as the mount lives. Numbers come from the
//! filesystem where it has them (ext4's, so hard links share one), or are handed out in order.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::{FsError, MAX_LOCAL_INO};

/// Paths (bytes, `/`-separated, absolute) by number and numbers by path.
pub struct PathInodes {
    inner: Mutex<Tables>,
}

struct Tables {
    paths: HashMap<u64, Vec<u8>>,
    numbers: HashMap<Vec<u8>, u64>,
    next: u64,
}

impl PathInodes {
    /// A table whose root directory is `root` and whose own numbers start at `first`.
    pub fn new(root: u64, first: u64) -> Self {
        PathInodes {
            inner: Mutex::new(Tables {
                paths: HashMap::from([(root, b"/".to_vec())]),
                numbers: HashMap::from([(b"/".to_vec(), root)]),
                next: first,
            }),
        }
    }

    /// The number of `path`, handing out the next one the first time.
    pub fn number(&self, path: &[u8]) -> u64 {
        let mut t = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&ino) = t.numbers.get(path) {
            return ino;
        }
        let ino = t.next.min(MAX_LOCAL_INO);
        t.next = t.next.saturating_add(1);
        t.paths.insert(ino, path.to_vec());
        t.numbers.insert(path.to_vec(), ino);
        ino
    }

    /// The number of `path`, which the filesystem says is `ino` (a path seen before keeps
    /// its number; the first path of a number is the one used to reach it).
    pub fn register(&self, path: &[u8], ino: u64) -> u64 {
        let mut t = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&known) = t.numbers.get(path) {
            return known;
        }
        t.paths.entry(ino).or_insert_with(|| path.to_vec());
        t.numbers.insert(path.to_vec(), ino);
        ino
    }

    /// The path of `ino`; not found when it was never handed out.
    pub fn path(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let t = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        t.paths.get(&ino).cloned().ok_or(FsError::NotFound)
    }
}

/// `dir` joined with `name`.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = dir.to_vec();
    if !path.ends_with(b"/") {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_reversible() {
        let t = PathInodes::new(1, 2);
        assert_eq!(t.number(b"/"), 1);
        let a = t.number(b"/a");
        let b = t.number(b"/a/b");
        assert_ne!(a, b);
        assert_eq!(t.number(b"/a"), a);
        assert_eq!(t.path(b).expect("path"), b"/a/b");
        assert!(matches!(t.path(0), Err(FsError::NotFound)));
        assert!(matches!(t.path(99), Err(FsError::NotFound)));
        assert_eq!(join(b"/", b"x"), b"/x");
        assert_eq!(join(b"/a", b"x"), b"/a/x");
    }

    #[test]
    fn registered_numbers_are_shared_by_hard_links() {
        let t = PathInodes::new(2, 1 << 32);
        assert_eq!(t.register(b"/x", 12), 12);
        assert_eq!(t.register(b"/y", 12), 12);
        assert_eq!(
            t.path(12).expect("path"),
            b"/x",
            "the first name reaches it"
        );
        assert_eq!(t.register(b"/x", 13), 12, "a path keeps its number");
        assert_eq!(t.number(b"/z"), 1 << 32);
    }
}
