//! Inode numbers across subvolumes. Every subvolume (and snapshot) is a tree of its own whose
//! inode numbers (objectids) start again at 256, so the mount's numbers combine the two: each
//! tree met gets a small index (the top-level tree 5 is index 0), and a file's number is
//! `index << OBJECTID_BITS | objectid`. Hard links within a tree share a number; the same
//! objectid in two snapshots does not.
//!
//! The split keeps every number at or below [`MAX_LOCAL_INO`] (2^40 − 1): 30 bits of objectid
//! (a subvolume that has created more than a billion files is unsupported) and 10 bits of
//! index (more than 1,024 subvolumes seen in one mount are unsupported).
//!
//! Indexes are given in the order trees are first met (listing the directory that holds a
//! subvolume), so a number is stable for as long as the filesystem is open, which is as long
//! as the mount needs it; another opening may number the subvolumes differently.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::guestfs::{FsError, MAX_LOCAL_INO};

use super::tree::TreeRoot;
use super::FS;

/// Bits of a mount inode number holding the objectid.
pub(super) const OBJECTID_BITS: u32 = 30;
/// Most trees numbered.
pub(super) const MAX_TREES: usize = 1 << (40 - OBJECTID_BITS);

/// One numbered tree.
struct Tree {
    id: u64,
    root: Option<TreeRoot>,
}

/// The trees numbered so far.
#[derive(Default)]
pub(super) struct Subvolumes {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    trees: Vec<Tree>,
    index_of: HashMap<u64, usize>,
}

impl Subvolumes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The mount inode number of `objectid` in tree `tree_id`, numbering the tree if new.
    pub(super) fn ino(&self, tree_id: u64, objectid: u64) -> Result<u64, FsError> {
        if objectid == 0 || objectid >= 1 << OBJECTID_BITS {
            return Err(FsError::unsupported(
                FS,
                format!("inode {objectid} of tree {tree_id}: above 2^{OBJECTID_BITS}"),
            ));
        }
        let mut t = self.lock();
        let index = match t.index_of.get(&tree_id) {
            Some(&i) => i,
            None => {
                if t.trees.len() >= MAX_TREES {
                    return Err(FsError::unsupported(
                        FS,
                        format!("more than {MAX_TREES} subvolumes"),
                    ));
                }
                let i = t.trees.len();
                t.trees.push(Tree {
                    id: tree_id,
                    root: None,
                });
                t.index_of.insert(tree_id, i);
                i
            }
        };
        let ino = (u64::try_from(index).unwrap_or(u64::MAX) << OBJECTID_BITS) | objectid;
        debug_assert!(ino <= MAX_LOCAL_INO);
        Ok(ino)
    }

    /// The tree id and objectid of mount inode `ino`, `None` when no tree has its index.
    pub(super) fn split(&self, ino: u64) -> Option<(u64, u64)> {
        let index = usize::try_from(ino >> OBJECTID_BITS).ok()?;
        let objectid = ino & ((1 << OBJECTID_BITS) - 1);
        let id = self.lock().trees.get(index)?.id;
        Some((id, objectid))
    }

    /// The root of tree `tree_id` if it was found before.
    pub(super) fn root(&self, tree_id: u64) -> Option<TreeRoot> {
        let t = self.lock();
        let i = *t.index_of.get(&tree_id)?;
        t.trees.get(i)?.root
    }

    /// Remembers the root of tree `tree_id` (numbered already).
    pub(super) fn set_root(&self, tree_id: u64, root: TreeRoot) {
        let mut t = self.lock();
        if let Some(&i) = t.index_of.get(&tree_id) {
            if let Some(tree) = t.trees.get_mut(i) {
                tree.root = Some(root);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_unique_per_tree_and_bounded() {
        let s = Subvolumes::default();
        assert_eq!(s.ino(5, 256).expect("top"), 256);
        let snap = s.ino(257, 256).expect("subvolume");
        assert_eq!(snap, (1 << 30) | 256);
        assert_eq!(s.split(snap), Some((257, 256)));
        assert_eq!(s.split(5 << 30), None);
        assert!(s.ino(5, 1 << 30).is_err());
        assert!(s.ino(5, 0).is_err());
        for id in 0u64..1024 {
            let _ = s.ino(1000 + id, 256);
        }
        let last = s.ino(999, 256);
        assert!(matches!(last, Err(FsError::Unsupported { .. })));
        assert!(s.ino(1000, (1 << 30) - 1).expect("known tree") <= MAX_LOCAL_INO);
    }
}
