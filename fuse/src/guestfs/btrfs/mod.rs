//! Btrfs, read-only, in user space: a reader written for vmstash (no Btrfs crate reads more
//! than one leaf safely), in small parts: [`superblock`], [`chunks`] (logical → physical
//! addresses), [`tree`] (checked, cached B-tree nodes and ordered walks), [`items`] (the
//! item encodings), [`extents`] (file contents, decompressed), [`lzo`] (LZO1X), [`subvols`]
//! (inode numbers across subvolumes) and [`checksum`].
//!
//! What the mount shows is what `mount -o subvolid=5` shows: the top-level tree, in which
//! every subvolume and snapshot is a directory where it was created (Fedora's `root` and
//! `home` as `/root` and `/home`, snapper's snapshots under `.snapshots/`), not the default
//! subvolume that a plain `mount` would show. A backup is browsed to find files, in the
//! system's current state or in any snapshot, so everything is reachable from one root: a
//! file the guest has as `/etc/fstab` is `root/etc/fstab` here, and `find -name fstab` finds
//! it in the snapshots too. A subvolume that a snapshot contained (the snapshot's copy of
//! its entry, with no `ROOT_REF` under the snapshot) shows as an empty directory, as the
//! kernel shows it.
//!
//! Attributes come from each inode's `INODE_ITEM` (type, permissions, owner, link count,
//! size, the four times, device numbers) and directories from `DIR_INDEX` items (in creation
//! order). Files: inline, regular, preallocated and shared extents, holes, and zlib, LZO and
//! zstd compression.
//!
//! Not read: the log tree (what was fsynced after the last commit and is replayed at the
//! next mount: this shows the last committed state, as `mount -o ro,nologreplay` does), data
//! checksums (metadata checksums are verified, see [`checksum`]), extended attributes,
//! backup superblocks and backup roots, and chunks that are striped or on another device
//! (multi-device filesystems show what is on the device backed up). Every failure says
//! whose fault it is: damaged metadata with where it was found, a valid feature this reader
//! does not have, or the backup's bytes unreadable.

mod checksum;
mod chunks;
mod extents;
mod items;
mod lzo;
mod subvols;
mod superblock;
mod tree;

#[cfg(test)]
mod tests;

use std::ops::ControlFlow;
use std::sync::Arc;

use super::{
    encode_dev, time_from_unix, usable_name, Attr, Device, DirEntry, FsError, GuestFs, Kind,
};

use self::chunks::{ChunkMap, MAX_CHUNKS};
use self::extents::{Decompressed, FileReader};
use self::items::{
    ChunkItem, DirEntryItem, InodeItem, Key, RootItem, Timespec, CHUNK_ITEM, DIR_INDEX, INODE_ITEM,
    ROOT_ITEM, ROOT_REF,
};
use self::subvols::Subvolumes;
use self::superblock::{Superblock, SUPER_OFFSET, SUPER_SIZE};
use self::tree::{TreeRoot, Trees};

/// The filesystem's name in errors.
const FS: &str = "btrfs";
/// The top-level subvolume's tree (`BTRFS_FS_TREE_OBJECTID`).
const FS_TREE: u64 = 5;
/// The objectid of every subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
const ROOT_DIR: u64 = 256;
/// The objectid the kernel gives the empty directory standing for a subvolume that is not
/// under this one (`BTRFS_EMPTY_SUBVOL_DIR_OBJECTID`).
const EMPTY_SUBVOL_DIR: u64 = 2;
/// The chunk tree's objectid for chunk items (`BTRFS_FIRST_CHUNK_TREE_OBJECTID`).
const CHUNK_OBJECTID: u64 = 256;
/// Most entries listed from one directory.
const MAX_DIR_ENTRIES: usize = 4_000_000;
/// Longest symlink target read (Linux's PATH_MAX).
const MAX_SYMLINK_LEN: u64 = 4096;

/// Where the superblock is and how long it is: `guestfs::open` reads these bytes to
/// recognise Btrfs.
pub const SUPERBLOCK_RANGE: (u64, usize) = (SUPER_OFFSET, SUPER_SIZE);

/// Whether `sb`, the bytes at [`SUPERBLOCK_RANGE`], is a Btrfs superblock.
pub fn recognises(sb: &[u8]) -> bool {
    superblock::has_magic(sb)
}

/// A Btrfs filesystem on one device.
pub struct BtrfsFs {
    trees: Trees,
    root_tree: TreeRoot,
    sectorsize: usize,
    subvols: Subvolumes,
    decompressed: Decompressed,
}

impl BtrfsFs {
    /// Opens the filesystem in `dev`: its superblock, chunk tree, root tree and the top-level
    /// tree's root directory must be readable.
    pub fn open(dev: Arc<dyn Device>) -> Result<BtrfsFs, FsError> {
        let sb = Superblock::read(dev.as_ref())?;
        let sys = ChunkMap::from_sys_array(&sb.sys_chunk_array, sb.devid)?;
        let mut trees = Trees::new(dev, &sb, sys);
        let chunk_root = TreeRoot {
            bytenr: sb.chunk_root,
            level: sb.chunk_root_level,
        };
        let mut found: Vec<(u64, ChunkItem)> = Vec::new();
        trees.walk(
            chunk_root,
            Key::new(CHUNK_OBJECTID, CHUNK_ITEM, 0),
            Key::new(CHUNK_OBJECTID, CHUNK_ITEM, u64::MAX),
            &mut |key, data| {
                if found.len() >= MAX_CHUNKS {
                    return Err(FsError::unsupported(
                        FS,
                        format!("more than {MAX_CHUNKS} chunks"),
                    ));
                }
                found.push((key.offset, ChunkItem::parse(key, data)?.0));
                Ok(ControlFlow::Continue(()))
            },
        )?;
        let mut map = ChunkMap::from_sys_array(&sb.sys_chunk_array, sb.devid)?;
        for (start, chunk) in &found {
            map.insert(*start, chunk, sb.devid)?;
        }
        trees.set_chunks(map);
        let fs = BtrfsFs {
            trees,
            root_tree: TreeRoot {
                bytenr: sb.root,
                level: sb.root_level,
            },
            sectorsize: usize::try_from(sb.sectorsize).unwrap_or(4096),
            subvols: Subvolumes::default(),
            decompressed: Decompressed::new(),
        };
        let root = fs.subvols.ino(FS_TREE, ROOT_DIR)?;
        let attr = fs.attr(root).map_err(|e| match e {
            FsError::NotFound => FsError::corrupt(FS, "the top-level tree has no root directory"),
            other => other,
        })?;
        if attr.kind != Kind::Dir {
            return Err(FsError::corrupt(
                FS,
                "the top-level root is not a directory",
            ));
        }
        Ok(fs)
    }

    /// The root node of subvolume tree `id`: its `ROOT_ITEM` in the root tree (a snapshot's
    /// key offset is the generation it was taken at, so the last one of the id).
    fn tree_root(&self, id: u64) -> Result<TreeRoot, FsError> {
        if let Some(root) = self.subvols.root(id) {
            return Ok(root);
        }
        let mut item = None;
        self.trees.walk(
            self.root_tree,
            Key::new(id, ROOT_ITEM, 0),
            Key::new(id, ROOT_ITEM, u64::MAX),
            &mut |key, data| {
                item = Some(RootItem::parse(key, data)?);
                Ok(ControlFlow::Continue(()))
            },
        )?;
        let item =
            item.ok_or_else(|| FsError::corrupt(FS, format!("no root item for tree {id}")))?;
        let root = TreeRoot {
            bytenr: item.bytenr,
            level: item.level,
        };
        self.subvols.set_root(id, root);
        Ok(root)
    }

    /// The tree, its root and the objectid of mount inode `ino`.
    fn locate(&self, ino: u64) -> Result<(u64, TreeRoot, u64), FsError> {
        let (tree, objectid) = self.subvols.split(ino).ok_or(FsError::NotFound)?;
        Ok((tree, self.tree_root(tree)?, objectid))
    }

    /// The inode item of `objectid` in `root`.
    fn inode(&self, root: TreeRoot, objectid: u64) -> Result<InodeItem, FsError> {
        let key = Key::new(objectid, INODE_ITEM, 0);
        let data = self.trees.get(root, key)?.ok_or(FsError::NotFound)?;
        InodeItem::parse(key, &data)
    }

    /// The mount inode of the directory entry `entry` found in tree `tree`: an inode of the
    /// same tree, or the root directory of a subvolume (its tree's, if the subvolume's
    /// `ROOT_REF` says it is under `tree`; else the empty stand-in the kernel shows).
    fn entry_ino(&self, tree: u64, entry: &DirEntryItem) -> Result<Option<u64>, FsError> {
        match entry.location.kind {
            INODE_ITEM => self.subvols.ino(tree, entry.location.objectid).map(Some),
            ROOT_ITEM => {
                let sub = entry.location.objectid;
                let under = self
                    .trees
                    .get(self.root_tree, Key::new(tree, ROOT_REF, sub))?
                    .is_some();
                if under {
                    self.subvols.ino(sub, ROOT_DIR).map(Some)
                } else {
                    self.subvols.ino(tree, EMPTY_SUBVOL_DIR).map(Some)
                }
            }
            _ => Ok(None),
        }
    }

    /// What the kernel shows for a subvolume that is not under its entry's directory.
    fn empty_subvol_dir() -> Attr {
        let epoch = time_from_unix(0, 0);
        Attr {
            kind: Kind::Dir,
            size: 0,
            perm: 0o555,
            uid: 0,
            gid: 0,
            nlink: 1,
            atime: epoch,
            mtime: epoch,
            ctime: epoch,
            crtime: epoch,
            rdev: 0,
        }
    }

    /// The file reader.
    fn reader(&self) -> FileReader<'_> {
        FileReader {
            trees: &self.trees,
            sectorsize: self.sectorsize,
            decompressed: &self.decompressed,
        }
    }
}

/// The attributes in `inode`.
fn attr_of(key_objectid: u64, inode: &InodeItem) -> Result<Attr, FsError> {
    let kind = match inode.mode & 0o170_000 {
        0o040_000 => Kind::Dir,
        0o100_000 => Kind::File,
        0o120_000 => Kind::Symlink,
        0o060_000 => Kind::BlockDevice,
        0o020_000 => Kind::CharDevice,
        0o010_000 => Kind::Fifo,
        0o140_000 => Kind::Socket,
        other => {
            return Err(FsError::corrupt(
                FS,
                format!("inode {key_objectid}: file type {other:o}"),
            ))
        }
    };
    let rdev = match kind {
        // The kernel's internal dev_t: 12 bits of major above 20 bits of minor.
        Kind::BlockDevice | Kind::CharDevice => encode_dev(
            u32::try_from(inode.rdev >> 20).unwrap_or(u32::MAX),
            u32::try_from(inode.rdev & 0xf_ffff).unwrap_or(0),
        ),
        _ => 0,
    };
    let time = |t: Timespec| time_from_unix(t.sec, t.nsec);
    Ok(Attr {
        kind,
        size: inode.size,
        perm: u16::try_from(inode.mode & 0o7777).unwrap_or(0),
        uid: inode.uid,
        gid: inode.gid,
        nlink: inode.nlink,
        atime: time(inode.atime),
        mtime: time(inode.mtime),
        ctime: time(inode.ctime),
        crtime: time(inode.otime),
        rdev,
    })
}

impl GuestFs for BtrfsFs {
    fn type_name(&self) -> &'static str {
        FS
    }

    fn directory_ctime_tracks_entries(&self) -> bool {
        true
    }

    fn root(&self) -> u64 {
        // Numbered first in `open`.
        ROOT_DIR
    }

    fn attr(&self, ino: u64) -> Result<Attr, FsError> {
        let (_, root, objectid) = self.locate(ino)?;
        if objectid == EMPTY_SUBVOL_DIR {
            return Ok(Self::empty_subvol_dir());
        }
        attr_of(objectid, &self.inode(root, objectid)?)
    }

    fn read_dir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        if self.attr(ino)?.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let (tree, root, objectid) = self.locate(ino)?;
        if objectid == EMPTY_SUBVOL_DIR {
            return Ok(Vec::new());
        }
        let mut found: Vec<DirEntryItem> = Vec::new();
        self.trees.walk(
            root,
            Key::new(objectid, DIR_INDEX, 0),
            Key::new(objectid, DIR_INDEX, u64::MAX),
            &mut |key, data| {
                for entry in DirEntryItem::parse_all(key, data)? {
                    if !usable_name(&entry.name) {
                        continue;
                    }
                    if found.len() >= MAX_DIR_ENTRIES {
                        return Err(FsError::unsupported(
                            FS,
                            format!("more than {MAX_DIR_ENTRIES} entries in one directory"),
                        ));
                    }
                    found.push(entry);
                }
                Ok(ControlFlow::Continue(()))
            },
        )?;
        let mut out = Vec::with_capacity(found.len());
        for entry in found {
            let Some(child) = self.entry_ino(tree, &entry)? else {
                continue;
            };
            out.push(DirEntry {
                name: entry.name,
                ino: child,
                attr: self.attr(child).ok(),
            });
        }
        Ok(out)
    }

    fn read(&self, ino: u64, offset: u64, len: u32) -> Result<Vec<u8>, FsError> {
        let (_, root, objectid) = self.locate(ino)?;
        let attr = self.attr(ino)?;
        match attr.kind {
            Kind::File => {}
            Kind::Dir => return Err(FsError::IsDir),
            // The kernel never reads these through the mount; other callers get no contents.
            _ => {
                return Err(FsError::unsupported(
                    FS,
                    "reading a file that is not a regular file",
                ))
            }
        }
        self.reader().read(root, objectid, attr.size, offset, len)
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let (_, root, objectid) = self.locate(ino)?;
        let attr = self.attr(ino)?;
        if attr.kind != Kind::Symlink {
            return Err(FsError::NotSymlink);
        }
        if attr.size > MAX_SYMLINK_LEN {
            return Err(FsError::corrupt(
                FS,
                format!("inode {objectid}: a symlink target of {} bytes", attr.size),
            ));
        }
        let len = u32::try_from(attr.size).unwrap_or(0);
        let target = self.reader().read(root, objectid, attr.size, 0, len)?;
        Ok(target)
    }
}
