//! XFS, read-only, written for vmstash (the `xfs-core` crate was evaluated and rejected: it
//! ignores the attribute fork offset, so btree directories list empty, mislocates blocks of
//! every allocation group but the first, and shows unwritten extents' stale bytes).
//!
//! What is read: version 5 filesystems (metadata CRCs checked on the superblock, inodes,
//! directory blocks and block-map btree blocks) and version 4 ones; inodes of versions 1 to 3
//! with classic or 64-bit (`bigtime`) timestamps and 32- or 64-bit extent counters; data forks
//! in local, extents and btree formats; directories of every format (short form, block, leaf,
//! node, btree: see [`dir`]); symlinks in the inode or in blocks; device numbers; sparse files
//! and unwritten extents (zeros). Inode numbers are XFS's own, so hard links share one.
//!
//! Not read: the realtime device (its files give an error), extended attributes, and the log:
//! a filesystem backed up while mounted may have changes only in its log. They are not
//! replayed (the mount is read-only and the backup crash-consistent); [`log`] says whether the
//! log was clean, and a dirty one gets a line in the mount's log (see [`GuestFs::notes`]).
//!
//! Untrusted bytes: every length and block number is checked before use, every list (extents,
//! directory entries) is bounded, btree walks are bounded in depth and blocks, and damage is a
//! [`FsError::Corrupt`] for the paths that need the damaged block, never a panic.

mod bmap;
mod dir;
mod inode;
mod log;
mod superblock;
#[cfg(test)]
mod tests;

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use lru::LruCache;

use self::bmap::Extent;
use self::inode::{Format, Inode};
use self::superblock::Superblock;
use super::{usable_name, Attr, Device, DirEntry, FsError, GuestFs, Kind, MAX_LOCAL_INO};

/// The filesystem's name in errors.
pub(crate) const FS: &str = "xfs";
/// Inodes kept parsed.
const INODE_CACHE: usize = 8192;
/// Files whose extent lists are kept.
const EXTENT_CACHE: usize = 256;
/// Most entries listed from one directory.
const MAX_DIR_ENTRIES: usize = 4_000_000;
/// Longest symlink target XFS allows (`XFS_SYMLINK_MAXLEN`).
const MAX_SYMLINK_LEN: u64 = 1024;
/// `XSLM`: the header of a version 5 symlink block.
const SYMLINK_MAGIC: u32 = 0x5853_4c4d;
/// Bytes of a version 5 symlink block's header, and where its CRC is.
const SYMLINK_HEADER: usize = 56;
const SYMLINK_CRC_AT: usize = 12;
/// Largest single read of the device, so a huge request is served in bounded pieces.
const MAX_READ: u64 = 1 << 20;

/// What the reader returns.
type XfsResult<T> = Result<T, FsError>;

/// Damaged XFS metadata.
fn corrupt(detail: impl ToString) -> FsError {
    FsError::corrupt(FS, detail)
}

/// Valid XFS metadata the reader does not support.
fn unsupported(detail: impl ToString) -> FsError {
    FsError::unsupported(FS, detail)
}

/// Whether the partition's first bytes are an XFS superblock.
pub fn recognises(head: &[u8]) -> bool {
    superblock::recognises(head)
}

/// An XFS filesystem.
pub struct XfsFs {
    dev: Arc<dyn Device>,
    sb: Superblock,
    inodes: Mutex<LruCache<u64, Arc<Inode>>>,
    extents: Mutex<LruCache<u64, Arc<Vec<Extent>>>>,
    notes: Vec<String>,
}

impl XfsFs {
    /// Opens the filesystem on `dev`: its superblock and root directory are read and checked.
    pub fn open(dev: Arc<dyn Device>) -> Result<XfsFs, FsError> {
        let sb = Superblock::read(dev.as_ref())?;
        let mut notes = Vec::new();
        if sb.incompat & superblock::INCOMPAT_NEEDSREPAIR != 0 {
            notes.push("the filesystem is marked as needing xfs_repair; shown as it is".to_owned());
        }
        if let Some(note) = log::state(dev.as_ref(), &sb).note() {
            notes.push(note);
        }
        let fs = XfsFs {
            dev,
            sb,
            inodes: Mutex::new(LruCache::new(
                NonZeroUsize::new(INODE_CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
            extents: Mutex::new(LruCache::new(
                NonZeroUsize::new(EXTENT_CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
            notes,
        };
        let root = fs.inode(fs.sb.root_ino)?;
        if root.kind()? != Kind::Dir {
            return Err(corrupt(format!(
                "the root inode {} is not a directory",
                fs.sb.root_ino
            )));
        }
        Ok(fs)
    }

    /// Inode `ino`, read the first time and then kept.
    fn inode(&self, ino: u64) -> XfsResult<Arc<Inode>> {
        if ino > MAX_LOCAL_INO {
            return Err(unsupported(format!("inode number {ino} is above 2^40")));
        }
        if let Some(i) = self
            .inodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ino)
        {
            return Ok(Arc::clone(i));
        }
        let at = self.sb.inode_offset(ino)?;
        let mut b = vec![0u8; self.sb.inode_size.into()];
        self.dev
            .read_at(at, &mut b)
            .map_err(|e| FsError::device(FS, e))?;
        let inode = Arc::new(Inode::parse(&self.sb, ino, &b)?);
        self.inodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(ino, Arc::clone(&inode));
        Ok(inode)
    }

    /// The extent list of `inode`, read the first time and then kept.
    fn extent_list(&self, inode: &Inode) -> XfsResult<Arc<Vec<Extent>>> {
        let mut cache = self.extents.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = cache.get(&inode.ino) {
            return Ok(Arc::clone(list));
        }
        drop(cache);
        let list = Arc::new(bmap::extents(self.dev.as_ref(), &self.sb, inode)?);
        cache = self.extents.lock().unwrap_or_else(PoisonError::into_inner);
        cache.put(inode.ino, Arc::clone(&list));
        Ok(list)
    }

    /// Bytes `offset..offset + len` of the blocks `inode`'s data fork maps (holes and unwritten
    /// extents as zeros), whatever its size says.
    fn read_mapped(&self, inode: &Inode, offset: u64, len: u64) -> XfsResult<Vec<u8>> {
        let list = self.extent_list(inode)?;
        let mut out = vec![0u8; usize::try_from(len).map_err(|_| corrupt("read too large"))?];
        let block_size = u64::from(self.sb.block_size);
        let mut pos = offset;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| corrupt("read past 2^64"))?;
        while pos < end {
            let block = pos >> self.sb.block_log;
            let Some(extent) = bmap::find(&list, block) else {
                break;
            };
            let start = extent.offset.saturating_mul(block_size);
            if start > pos {
                pos = start;
                continue;
            }
            let extent_end = extent
                .offset
                .saturating_add(extent.count)
                .saturating_mul(block_size);
            let piece_end = end.min(extent_end).min(pos.saturating_add(MAX_READ));
            if !extent.unwritten {
                let disk = self
                    .extent_byte(inode.ino, extent)?
                    .saturating_add(pos - start);
                let from = usize::try_from(pos - offset).unwrap_or(usize::MAX);
                let to = usize::try_from(piece_end - offset).unwrap_or(usize::MAX);
                let dst = out
                    .get_mut(from..to)
                    .ok_or_else(|| corrupt("read out of range"))?;
                self.dev
                    .read_at(disk, dst)
                    .map_err(|e| FsError::device(FS, e))?;
            }
            pos = piece_end;
        }
        Ok(out)
    }

    /// Where `extent` starts on the partition, checked to stay inside its allocation group.
    fn extent_byte(&self, ino: u64, extent: &Extent) -> XfsResult<u64> {
        let ag_block = extent.block & ((1u64 << self.sb.ag_block_log) - 1);
        if ag_block.saturating_add(extent.count) > u64::from(self.sb.ag_blocks) {
            return Err(corrupt(format!(
                "inode {ino}: extent at block {} of {} blocks runs past its allocation group",
                extent.block, extent.count
            )));
        }
        self.sb.block_offset(extent.block)
    }

    /// The entries of directory `dir` (`.` and `..` included when its blocks have them).
    fn entries(&self, dir: &Inode) -> XfsResult<Vec<dir::Entry>> {
        match dir.format {
            Format::Local => dir::short_form(&self.sb, dir.ino, &dir.fork),
            Format::Extents | Format::Btree => self.block_entries(dir),
            Format::Device => Err(corrupt(format!("directory {} has a device fork", dir.ino))),
        }
    }

    /// The entries in the data blocks of a directory in extents or btree format.
    fn block_entries(&self, dir: &Inode) -> XfsResult<Vec<dir::Entry>> {
        let list = self.extent_list(dir)?;
        let dir_block = u64::from(self.sb.dir_block_size);
        let leaf_block = dir::LEAF_OFFSET >> self.sb.block_log;
        let mut numbers: Vec<u64> = Vec::new();
        for e in list.iter().filter(|e| e.offset < leaf_block) {
            let first = (e.offset << self.sb.block_log) / dir_block;
            let last =
                ((e.offset + e.count).min(leaf_block) << self.sb.block_log).div_ceil(dir_block);
            for n in first..last {
                if numbers.last() != Some(&n) {
                    numbers.push(n);
                }
            }
        }
        let mut out = Vec::new();
        for n in numbers {
            let block = self.read_mapped(dir, n * dir_block, dir_block)?;
            dir::data_block(&self.sb, dir.ino, n, &block, &mut out)?;
            if out.len() > MAX_DIR_ENTRIES {
                return Err(unsupported(format!(
                    "directory {} has more than {MAX_DIR_ENTRIES} entries",
                    dir.ino
                )));
            }
        }
        Ok(out)
    }

    /// The target of a symlink kept in blocks (each with a header on version 5).
    fn remote_link(&self, inode: &Inode) -> XfsResult<Vec<u8>> {
        let block_size = u64::from(self.sb.block_size);
        let header = if self.sb.v5 {
            u64::try_from(SYMLINK_HEADER).unwrap_or(0)
        } else {
            0
        };
        let blocks = inode.size.div_ceil(block_size - header);
        let raw = self.read_mapped(inode, 0, blocks.max(1) * block_size)?;
        if !self.sb.v5 {
            return Ok(raw
                .get(..usize::try_from(inode.size).unwrap_or(0))
                .unwrap_or_default()
                .to_vec());
        }
        let mut target = Vec::new();
        for (i, block) in raw
            .chunks(usize::try_from(block_size).unwrap_or(usize::MAX))
            .enumerate()
        {
            let here = |what: &str| corrupt(format!("symlink {}, block {i}: {what}", inode.ino));
            if crate::be::u32_at(block, 0) != Some(SYMLINK_MAGIC) {
                return Err(here("no XSLM magic"));
            }
            superblock::check_crc(block, SYMLINK_CRC_AT).map_err(|e| here(&e))?;
            let bytes =
                usize::try_from(crate::be::u32_at(block, 8).unwrap_or(0)).unwrap_or(usize::MAX);
            let piece = block
                .get(SYMLINK_HEADER..SYMLINK_HEADER.saturating_add(bytes))
                .ok_or_else(|| here("its length is larger than the block"))?;
            target.extend_from_slice(piece);
        }
        target.truncate(usize::try_from(inode.size).unwrap_or(0));
        Ok(target)
    }
}

impl GuestFs for XfsFs {
    fn type_name(&self) -> &'static str {
        FS
    }

    fn directory_ctime_tracks_entries(&self) -> bool {
        true
    }

    fn root(&self) -> u64 {
        self.sb.root_ino
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn attr(&self, ino: u64) -> Result<Attr, FsError> {
        self.inode(ino)?.attr()
    }

    fn read_dir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let dir = self.inode(ino)?;
        if dir.kind()? != Kind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(self
            .entries(&dir)?
            .into_iter()
            .filter(|e| usable_name(&e.name) && e.ino <= MAX_LOCAL_INO)
            .map(|e| DirEntry {
                attr: self.attr(e.ino).ok(),
                name: e.name,
                ino: e.ino,
            })
            .collect())
    }

    fn read(&self, ino: u64, offset: u64, len: u32) -> Result<Vec<u8>, FsError> {
        let inode = self.inode(ino)?;
        match inode.kind()? {
            Kind::File => {}
            Kind::Dir => return Err(FsError::IsDir),
            _ => return Ok(Vec::new()),
        }
        let len = u64::from(len).min(inode.size.saturating_sub(offset));
        if len == 0 {
            return Ok(Vec::new());
        }
        match inode.format {
            Format::Extents | Format::Btree => self.read_mapped(&inode, offset, len),
            Format::Local => {
                let at = usize::try_from(offset).unwrap_or(usize::MAX);
                let end = at.saturating_add(usize::try_from(len).unwrap_or(0));
                Ok(inode
                    .fork
                    .get(at..end)
                    .ok_or_else(|| {
                        corrupt(format!("inode {ino}: inline data shorter than its size"))
                    })?
                    .to_vec())
            }
            Format::Device => Err(corrupt(format!("file {ino} has a device fork"))),
        }
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let inode = self.inode(ino)?;
        if inode.kind()? != Kind::Symlink {
            return Err(FsError::NotSymlink);
        }
        if inode.size == 0 || inode.size > MAX_SYMLINK_LEN {
            return Err(corrupt(format!("symlink {ino}: length {}", inode.size)));
        }
        match inode.format {
            Format::Local => {
                let len = usize::try_from(inode.size).unwrap_or(usize::MAX);
                Ok(inode
                    .fork
                    .get(..len)
                    .ok_or_else(|| corrupt(format!("symlink {ino}: target longer than its inode")))?
                    .to_vec())
            }
            Format::Extents | Format::Btree => self.remote_link(&inode),
            Format::Device => Err(corrupt(format!("symlink {ino} has a device fork"))),
        }
    }
}
