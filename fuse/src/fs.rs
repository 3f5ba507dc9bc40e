//! The FUSE filesystem: [`tree`](crate::tree) for names and attributes,
//! [`image`](crate::image) for disk contents. Read-only; requests are served on several threads
//! (`fuser`'s multi-threaded session), so one slow cold read does not stall a directory listing.
//!
//! New snapshots appear without remounting: a lookup or listing of a directory checks, at most
//! every [`REFRESH_EVERY`], whether the repository's snapshot files changed, and then reloads
//! the index and rebuilds the tree (paths keep their inode numbers).
//!
//! A read that fails (a damaged or missing pack) answers EIO and logs one line naming the file
//! and the cause; everything else in the mount keeps working.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};
use vmstash_repo::backend::FileKind;
use vmstash_repo::snapshot::Disk;
use vmstash_repo::{Id, Repository};

use crate::image::ImageReader;
use crate::partition::{self, Partition};
use crate::tree::{Entry, Ino, Inodes, Node, Tree};

/// How long the kernel may cache names and attributes.
const TTL: Duration = Duration::from_secs(1);
/// How often directory lookups check the repository for new snapshots.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// The mounted repository.
pub struct VmstashFs {
    repo: Repository,
    images: ImageReader,
    tree: RwLock<Arc<Tree>>,
    inodes: Mutex<Inodes>,
    /// The snapshot file names the tree was built from, and when they were last listed.
    seen: Mutex<(BTreeSet<String>, Instant)>,
    uid: u32,
    gid: u32,
}

/// Why the filesystem could not be set up.
pub type Error = vmstash_repo::Error;

impl VmstashFs {
    /// The filesystem of `repo`, caching about `cache_bytes` of chunks.
    pub fn new(repo: Repository, cache_bytes: u64) -> Result<VmstashFs, Error> {
        let index = repo.load_index()?;
        let chunk_size = repo.config().chunk_size;
        let names = snapshot_names(&repo)?;
        let images = ImageReader::new(repo.clone(), index, cache_bytes, chunk_size);
        let mut inodes = Inodes::default();
        let tree = Tree::build(
            &repo.snapshots()?,
            &mut inodes,
            SystemTime::now(),
            &mut |id, no, disk| partitions_of(&images, id, no, disk),
        );
        Ok(VmstashFs {
            images,
            repo,
            tree: RwLock::new(Arc::new(tree)),
            inodes: Mutex::new(inodes),
            seen: Mutex::new((names, Instant::now())),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        })
    }

    fn tree(&self) -> Arc<Tree> {
        Arc::clone(&self.tree.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Rebuilds the tree if the repository's snapshots changed (checked at most every
    /// [`REFRESH_EVERY`]).
    fn refresh(&self) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.1.elapsed() < REFRESH_EVERY {
            return;
        }
        seen.1 = Instant::now();
        let result = snapshot_names(&self.repo).and_then(|names| {
            if names == seen.0 {
                return Ok(());
            }
            let index = self.repo.load_index()?;
            let snapshots = self.repo.snapshots()?;
            let mut inodes = self.inodes.lock().unwrap_or_else(PoisonError::into_inner);
            self.images.set_index(index);
            let tree = Tree::build(
                &snapshots,
                &mut inodes,
                SystemTime::now(),
                &mut |id, no, disk| partitions_of(&self.images, id, no, disk),
            );
            *self.tree.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tree);
            seen.0 = names;
            Ok(())
        });
        if let Err(e) = result {
            eprintln!("vmstash mount: cannot look for new snapshots: {e}");
        }
    }

    fn attr(&self, ino: Ino, node: &Node) -> FileAttr {
        let (kind, perm, size, nlink) = match &node.entry {
            Entry::Dir(children) => (
                FileType::Directory,
                0o555,
                0,
                2 + u32::try_from(children.len()).unwrap_or(0),
            ),
            Entry::Symlink(target) => (FileType::Symlink, 0o777, len64(target.len()), 1),
            Entry::Text(text) => (FileType::RegularFile, 0o444, len64(text.len()), 1),
            Entry::Disk { size, .. } => (FileType::RegularFile, 0o444, *size, 1),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

fn len64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// The partitions of a disk of a snapshot; none (and a log line) when its table is damaged or
/// cannot be read, so the disk still shows as a whole.
fn partitions_of(images: &ImageReader, id: &Id, no: usize, disk: &Disk) -> Vec<Partition> {
    let mut read = |offset: u64, len: usize| {
        images
            .read(id, no, disk, offset, u32::try_from(len).unwrap_or(u32::MAX))
            .map_err(|e| e.to_string())
    };
    partition::partitions(&mut read, disk.size).unwrap_or_else(|e| {
        eprintln!(
            "vmstash mount: disk {} of snapshot {}: {e}; showing the whole disk only",
            disk.name,
            id.short()
        );
        Vec::new()
    })
}

/// The names of the repository's snapshot files.
fn snapshot_names(repo: &Repository) -> Result<BTreeSet<String>, Error> {
    Ok(repo
        .backend()
        .list(FileKind::Snapshot)?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

impl Filesystem for VmstashFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.refresh();
        let tree = self.tree();
        let found = name
            .to_str()
            .and_then(|name| tree.child(parent.0, name))
            .and_then(|ino| Some((ino, tree.node(ino)?)));
        match found {
            Some((ino, node)) => reply.entry(&TTL, &self.attr(ino, node), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let tree = self.tree();
        match tree.node(ino.0) {
            Some(node) => reply.attr(&TTL, &self.attr(ino.0, node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.tree().node(ino.0).map(|n| &n.entry) {
            Some(Entry::Symlink(target)) => reply.data(target.as_bytes()),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        match self.tree().node(ino.0).map(|n| &n.entry) {
            Some(Entry::Text(_) | Entry::Disk { .. }) => {
                reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Some(Entry::Dir(_)) => reply.error(Errno::EISDIR),
            Some(Entry::Symlink(_)) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let tree = self.tree();
        match tree.node(ino.0).map(|n| &n.entry) {
            Some(Entry::Text(text)) => {
                let bytes = text.as_bytes();
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let end = start
                    .saturating_add(usize::try_from(size).unwrap_or(usize::MAX))
                    .min(bytes.len());
                reply.data(bytes.get(start..end).unwrap_or_default());
            }
            Some(Entry::Disk {
                snapshot,
                disk,
                start,
                size: file_size,
            }) => {
                let size = u32::try_from(file_size.saturating_sub(offset))
                    .unwrap_or(u32::MAX)
                    .min(size);
                let offset = start.saturating_add(offset);
                let read = tree
                    .manifest(snapshot)
                    .and_then(|m| m.disks.get(*disk).map(|d| (m, d)))
                    .ok_or(Errno::ENOENT)
                    .and_then(|(manifest, d)| {
                        self.images
                            .read(snapshot, *disk, d, offset, size)
                            .map_err(|e| {
                                eprintln!(
                                    "vmstash mount: reading {} bytes at {offset} of disk {} of snapshot {} ({}): {e}",
                                    size,
                                    d.name,
                                    snapshot.short(),
                                    manifest.name
                                );
                                Errno::EIO
                            })
                    });
                match read {
                    Ok(data) => reply.data(&data),
                    Err(errno) => reply.error(errno),
                }
            }
            Some(Entry::Dir(_)) => reply.error(Errno::EISDIR),
            Some(Entry::Symlink(_)) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if offset == 0 {
            self.refresh();
        }
        let tree = self.tree();
        let Some(node) = tree.node(ino.0) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let Entry::Dir(children) = &node.entry else {
            reply.error(Errno::ENOTDIR);
            return;
        };
        let dots = [(ino.0, ".".to_owned()), (node.parent, "..".to_owned())];
        let entries = dots
            .into_iter()
            .chain(children.iter().map(|(name, &ino)| (ino, name.clone())));
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (child, name)) in entries.enumerate().skip(skip) {
            let kind = match tree.node(child).map(|n| &n.entry) {
                Some(Entry::Dir(_)) | None => FileType::Directory,
                Some(Entry::Symlink(_)) => FileType::Symlink,
                Some(Entry::Text(_) | Entry::Disk { .. }) => FileType::RegularFile,
            };
            if reply.add(INodeNo(child), len64(i + 1), kind, &name) {
                break;
            }
        }
        reply.ok();
    }
}
