//! Btrfs B-trees: reading a node (checked once, then cached), finding a key, and walking the
//! items of a key range in order across leaves.
//!
//! A node is `nodesize` bytes at a logical address: a 101-byte header (checksum, fsid, its own
//! address, flags, chunk tree UUID, generation, owner, item count, level), then either leaf
//! items (key, data offset, data size; the data packed from the node's end) or key pointers
//! (key, child address, generation). Before a node is used, its checksum, fsid, address and
//! level must match, its item count must fit, and its keys must be strictly increasing and
//! its leaf data inside the node; so the accessors below never fail on a node that exists.
//! A walk also checks that each child's keys lie between its pointer's key and the next one,
//! and that no node below the root is empty: so a walk visits each node at most once and
//! every visited leaf gives an item, whatever the bytes say, and levels strictly decrease
//! (at most [`MAX_LEVELS`]), so it ends.
//!
//! Nodes are cached ([`NODE_CACHE_BYTES`] at most) so that listing a directory, which looks
//! up every entry's inode in the same few leaves, reads each node once.

use std::num::NonZeroUsize;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::guestfs::{Device, FsError};
use crate::le::{u32_at, u64_at};

use super::checksum::CsumType;
use super::chunks::ChunkMap;
use super::items::{Key, KEY_SIZE};
use super::superblock::{Superblock, MAX_LEVELS};
use super::FS;

/// Size of a node's header.
const HEADER: usize = 101;
/// Size of a leaf's item header (key, data offset, data size).
const ITEM_SIZE: usize = KEY_SIZE + 8;
/// Size of an internal node's key pointer (key, address, generation).
const PTR_SIZE: usize = KEY_SIZE + 16;
/// Memory the node cache may use.
pub(super) const NODE_CACHE_BYTES: usize = 8 << 20;

/// What a walk calls with each item (key and data): `Break` to stop.
pub(super) type Visitor<'a> = dyn FnMut(Key, &[u8]) -> Result<ControlFlow<()>, FsError> + 'a;

/// A tree: its root node's address and level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TreeRoot {
    /// Logical address of the root node.
    pub bytenr: u64,
    /// Its level (0: the root is a leaf).
    pub level: u8,
}

/// A checked node.
struct Node {
    bytes: Vec<u8>,
    level: u8,
    nritems: usize,
}

impl Node {
    /// Bytes per entry of this node's kind.
    fn stride(&self) -> usize {
        if self.level == 0 {
            ITEM_SIZE
        } else {
            PTR_SIZE
        }
    }

    /// The key of entry `i` (checked at load: `None` only for `i` out of range).
    fn key(&self, i: usize) -> Option<Key> {
        if i >= self.nritems {
            return None;
        }
        Key::parse(&self.bytes, HEADER + i * self.stride())
    }

    /// The child address of key pointer `i`.
    fn child(&self, i: usize) -> Option<u64> {
        u64_at(&self.bytes, HEADER + i * PTR_SIZE + KEY_SIZE)
    }

    /// The data of leaf item `i`.
    fn data(&self, i: usize) -> Option<&[u8]> {
        let at = HEADER + i * ITEM_SIZE + KEY_SIZE;
        let offset = usize::try_from(u32_at(&self.bytes, at)?).ok()?;
        let size = usize::try_from(u32_at(&self.bytes, at + 4)?).ok()?;
        let start = HEADER.checked_add(offset)?;
        self.bytes.get(start..start.checked_add(size)?)
    }

    /// The first entry whose key is not below `key` (`nritems` when none).
    fn first_not_below(&self, key: &Key) -> usize {
        // Binary search by hand: keys are strictly increasing (checked at load).
        let (mut lo, mut hi) = (0, self.nritems);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.key(mid) {
                Some(k) if k < *key => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }

    /// The first entry whose key is above `key`.
    fn first_above(&self, key: &Key) -> usize {
        let (mut lo, mut hi) = (0, self.nritems);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.key(mid) {
                Some(k) if k <= *key => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }
}

/// "node at logical …: …".
fn bad_node(logical: u64, detail: impl std::fmt::Display) -> FsError {
    FsError::corrupt(FS, format!("node at logical {logical}: {detail}"))
}

/// Reads the trees of one filesystem: the device, the chunk map and the node cache.
pub(super) struct Trees {
    dev: Arc<dyn Device>,
    chunks: ChunkMap,
    nodesize: usize,
    fsid: [u8; 16],
    csum: CsumType,
    cache: Mutex<LruCache<u64, Arc<Node>>>,
}

impl Trees {
    /// Trees of `dev` read through `chunks`, with the superblock's node size, fsid and
    /// checksum type.
    pub(super) fn new(dev: Arc<dyn Device>, sb: &Superblock, chunks: ChunkMap) -> Trees {
        let nodesize = usize::try_from(sb.nodesize).unwrap_or(usize::MAX);
        let entries = (NODE_CACHE_BYTES / nodesize.max(1)).max(16);
        Trees {
            dev,
            chunks,
            nodesize,
            fsid: sb.tree_fsid,
            csum: sb.csum,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(entries).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// Replaces the chunk map (once the chunk tree is read).
    pub(super) fn set_chunks(&mut self, chunks: ChunkMap) {
        self.chunks = chunks;
    }

    /// Fills `buf` from logical address `logical`, across chunks if need be.
    pub(super) fn read_logical(&self, logical: u64, buf: &mut [u8]) -> Result<(), FsError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = logical
                .checked_add(u64::try_from(done).unwrap_or(u64::MAX))
                .ok_or_else(|| FsError::corrupt(FS, "logical address past 2^64"))?;
            let (physical, run) = self.chunks.map(at)?;
            let n = usize::try_from(run)
                .unwrap_or(usize::MAX)
                .min(buf.len() - done);
            let part = buf.get_mut(done..done + n).unwrap_or_default();
            self.dev
                .read_at(physical, part)
                .map_err(|e| FsError::device(FS, e))?;
            done += n;
        }
        Ok(())
    }

    /// The node at `logical`, which its parent says is at `level`.
    fn node(&self, logical: u64, level: u8) -> Result<Arc<Node>, FsError> {
        if let Some(node) = self.lock_cache().get(&logical) {
            if node.level != level {
                return Err(bad_node(
                    logical,
                    format!("level {}, expected {level}", node.level),
                ));
            }
            return Ok(Arc::clone(node));
        }
        let mut bytes = vec![0u8; self.nodesize];
        self.read_logical(logical, &mut bytes)?;
        let node = Arc::new(self.check(logical, level, bytes)?);
        self.lock_cache().put(logical, Arc::clone(&node));
        Ok(node)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, LruCache<u64, Arc<Node>>> {
        // A panic while holding the lock cannot leave the cache inconsistent (puts and gets
        // are single calls), so a poisoned lock is used as is.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks the node `bytes` read from `logical`, expected at `level`.
    fn check(&self, logical: u64, level: u8, bytes: Vec<u8>) -> Result<Node, FsError> {
        if !self.csum.matches(&bytes) {
            return Err(bad_node(logical, "checksum mismatch"));
        }
        if bytes.get(0x20..0x30) != Some(&self.fsid[..]) {
            return Err(bad_node(logical, "belongs to another filesystem (fsid)"));
        }
        let bytenr = u64_at(&bytes, 0x30).unwrap_or(0);
        if bytenr != logical {
            return Err(bad_node(logical, format!("says it is at {bytenr}")));
        }
        let found_level = bytes.get(0x64).copied().unwrap_or(u8::MAX);
        if found_level != level {
            return Err(bad_node(
                logical,
                format!("level {found_level}, expected {level}"),
            ));
        }
        let nritems = u32_at(&bytes, 0x60)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(usize::MAX);
        let stride = if level == 0 { ITEM_SIZE } else { PTR_SIZE };
        if nritems > (self.nodesize - HEADER) / stride {
            return Err(bad_node(logical, format!("{nritems} items do not fit")));
        }
        let node = Node {
            bytes,
            level,
            nritems,
        };
        let mut previous: Option<Key> = None;
        for i in 0..nritems {
            let key = node
                .key(i)
                .ok_or_else(|| bad_node(logical, format!("item {i} cut short")))?;
            if previous.is_some_and(|p| p >= key) {
                return Err(bad_node(logical, format!("key {key} out of order")));
            }
            previous = Some(key);
            if level == 0 {
                self.check_item_data(&node, i, logical)?;
            }
        }
        Ok(node)
    }

    /// Checks that leaf item `i`'s data lies after the item headers and inside the node.
    fn check_item_data(&self, node: &Node, i: usize, logical: u64) -> Result<(), FsError> {
        let at = HEADER + i * ITEM_SIZE + KEY_SIZE;
        let offset = u32_at(&node.bytes, at).and_then(|n| usize::try_from(n).ok());
        let size = u32_at(&node.bytes, at + 4).and_then(|n| usize::try_from(n).ok());
        let headers_end = HEADER + node.nritems * ITEM_SIZE;
        let fits = match (offset, size) {
            (Some(offset), Some(size)) => HEADER
                .checked_add(offset)
                .filter(|start| *start >= headers_end)
                .and_then(|start| start.checked_add(size))
                .is_some_and(|end| end <= self.nodesize),
            _ => false,
        };
        if fits {
            Ok(())
        } else {
            Err(bad_node(
                logical,
                format!("item {i}'s data outside the leaf"),
            ))
        }
    }

    /// Calls `f` with every item of `root` whose key is in `lo..=hi`, in order, until it
    /// breaks.
    pub(super) fn walk(
        &self,
        root: TreeRoot,
        lo: Key,
        hi: Key,
        f: &mut Visitor<'_>,
    ) -> Result<(), FsError> {
        if root.level >= MAX_LEVELS {
            return Err(bad_node(root.bytenr, format!("root level {}", root.level)));
        }
        let whole = Bounds {
            lo: Key::new(0, 0, 0),
            hi: None,
            is_root: true,
        };
        self.walk_node(root.bytenr, root.level, whole, lo, hi, f)
            .map(drop)
    }

    /// [`Trees::walk`] below node `logical`, whose keys must be within `bounds`.
    fn walk_node(
        &self,
        logical: u64,
        level: u8,
        bounds: Bounds,
        lo: Key,
        hi: Key,
        f: &mut Visitor<'_>,
    ) -> Result<ControlFlow<()>, FsError> {
        let node = self.node(logical, level)?;
        bounds.check(&node, logical)?;
        let missing = || bad_node(logical, "entry missing");
        if level == 0 {
            for i in node.first_not_below(&lo)..node.nritems {
                let key = node.key(i).ok_or_else(missing)?;
                if key > hi {
                    break;
                }
                if f(key, node.data(i).ok_or_else(missing)?)?.is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            return Ok(ControlFlow::Continue(()));
        }
        let first = node.first_above(&lo).saturating_sub(1);
        for i in first..node.nritems {
            let key = node.key(i).ok_or_else(missing)?;
            if key > hi {
                break;
            }
            let child = Bounds {
                lo: key,
                hi: node.key(i + 1).or(bounds.hi),
                is_root: false,
            };
            let address = node.child(i).ok_or_else(missing)?;
            if self
                .walk_node(address, level - 1, child, lo, hi, f)?
                .is_break()
            {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// The data of the item `key` of `root`, if there is one.
    pub(super) fn get(&self, root: TreeRoot, key: Key) -> Result<Option<Vec<u8>>, FsError> {
        let mut found = None;
        self.walk(root, key, key, &mut |_, data| {
            found = Some(data.to_vec());
            Ok(ControlFlow::Break(()))
        })?;
        Ok(found)
    }

    /// The largest key of `root` that is not above `key`, if there is one.
    pub(super) fn last_not_above(&self, root: TreeRoot, key: Key) -> Result<Option<Key>, FsError> {
        let (mut logical, mut level) = (root.bytenr, root.level);
        if level >= MAX_LEVELS {
            return Err(bad_node(logical, format!("root level {level}")));
        }
        loop {
            let node = self.node(logical, level)?;
            let Some(i) = node.first_above(&key).checked_sub(1) else {
                return Ok(None);
            };
            if level == 0 {
                return Ok(node.key(i));
            }
            logical = node
                .child(i)
                .ok_or_else(|| bad_node(logical, "entry missing"))?;
            level -= 1;
        }
    }
}

/// The keys a node may hold: from its pointer's key up to (not including) the next one.
#[derive(Clone, Copy)]
struct Bounds {
    lo: Key,
    hi: Option<Key>,
    is_root: bool,
}

impl Bounds {
    /// Checks `node` (at `logical`) against the bounds its parent set.
    fn check(&self, node: &Node, logical: u64) -> Result<(), FsError> {
        let (Some(first), Some(last)) = (node.key(0), node.key(node.nritems.saturating_sub(1)))
        else {
            return if self.is_root {
                Ok(())
            } else {
                Err(bad_node(logical, "empty node below the root"))
            };
        };
        if first < self.lo || self.hi.is_some_and(|hi| last >= hi) {
            return Err(bad_node(
                logical,
                format!("keys {first}..{last} outside its parent's range"),
            ));
        }
        Ok(())
    }
}
