//! The FUSE filesystem: [`tree`](crate::tree) for names and attributes,
//! [`image`](crate::image) for disk contents. Read-only; requests are served on several threads
//! (`fuser`'s multi-threaded session), so one slow cold read does not stall a directory listing.
//!
//! New snapshots appear without remounting: a lookup or listing of a directory checks, at most
//! every [`REFRESH_EVERY`], whether the repository's snapshot files changed, and then reloads
//! the index and rebuilds the tree (paths keep their inode numbers).
//!
//! A read that fails answers EIO and logs one line naming the file and the cause, which says
//! whose fault it is: the backup's bytes could not be read (a damaged or missing pack), the
//! guest's filesystem is damaged, or it uses something vmstash does not support. Everything
//! else in the mount keeps working.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::num::NonZeroUsize;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEntry, ReplyOpen, Request,
};
use vmstash_repo::backend::FileKind;
use vmstash_repo::snapshot::Manifest;
use vmstash_repo::{Id, Repository};

use crate::guestfs::Device;
use crate::guestfs::{Attr, DirEntry, FsError, Kind, Owner};
use crate::guests::{mount_ino, split_ino, Guest, Guests, PartitionDevice};
use crate::image::ImageReader;
use crate::partition::{self, Partition};
use crate::tree::{Entry, Ino, Inodes, Layouts, Node, Tree, ROOT};
use crate::volumes::{is_physical_volume, VolumeView, Volumes};

/// How long the kernel may cache names and attributes.
const TTL: Duration = Duration::from_secs(1);
/// How often directory lookups check the repository for new snapshots.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// Guest directories whose listings are kept.
const LISTINGS_CACHED: usize = 256;
/// Guest file attributes kept (from listings), so `ls -l` of a large directory reads each
/// inode once.
const ATTRS_CACHED: usize = 1 << 17;

/// A guest directory's listing, sorted by name.
type Listing = Arc<Vec<DirEntry>>;

/// The mounted repository.
pub struct VmstashFs {
    repo: Repository,
    images: Arc<ImageReader>,
    guests: Guests,
    /// The LVM logical volumes of every snapshot shown.
    volumes: Volumes,
    /// Listings of guest directories by mount inode number.
    listings: Mutex<LruCache<Ino, Listing>>,
    /// Attributes of guest files by mount inode number.
    attrs: Mutex<LruCache<Ino, Attr>>,
    tree: RwLock<Arc<Tree>>,
    inodes: Mutex<Inodes>,
    /// The snapshot file names the tree was built from, and when they were last listed.
    seen: Mutex<(BTreeSet<String>, Instant)>,
    /// The one snapshot shown (never refreshed), or `None`: all of them.
    only: Option<Id>,
    owner: Owner,
}

/// What a mount inode number refers to.
enum Target<'t> {
    /// A path of the mount's own namespace.
    Repo(&'t Node),
    /// A file of a guest filesystem.
    Guest {
        guest: Arc<Guest>,
        /// Its inode number in the guest filesystem.
        local: u64,
        /// Its slot, so its children get mount inode numbers.
        slot: u64,
    },
}

/// Why the filesystem could not be set up.
pub type Error = vmstash_repo::Error;

impl VmstashFs {
    /// Lets bytes that repaired snapshots record as lost read as zeros (else reads of them fail
    /// with EIO and a log line).
    pub fn set_zero_lost(&self, yes: bool) {
        self.images.set_zero_lost(yes);
    }

    /// The filesystem of `repo`, caching about `cache_bytes` of chunks.
    pub fn new(repo: Repository, cache_bytes: u64) -> Result<VmstashFs, Error> {
        VmstashFs::open(repo, cache_bytes, None, Vec::new())
    }

    /// [`VmstashFs::new`], opening the LUKS volumes of the guests' disks with `passphrases`
    /// (tried in order; never logged). Without them, LUKS volumes stay locked: a log line, and
    /// their raw bytes only.
    pub fn unlocking(
        repo: Repository,
        cache_bytes: u64,
        passphrases: Vec<crate::luks::Passphrase>,
    ) -> Result<VmstashFs, Error> {
        VmstashFs::open(repo, cache_bytes, None, passphrases)
    }

    /// The namespace of snapshot `id` alone, never refreshed: for commands that read one
    /// snapshot's files without FUSE (`vmstash ls`, `dump`), through the same guest filesystem
    /// code as the mount. Its files are under `snapshots/<short id>/`.
    pub fn of_snapshot(
        repo: Repository,
        cache_bytes: u64,
        id: Id,
        passphrases: Vec<crate::luks::Passphrase>,
    ) -> Result<VmstashFs, Error> {
        VmstashFs::open(repo, cache_bytes, Some(id), passphrases)
    }

    fn open(
        repo: Repository,
        cache_bytes: u64,
        only: Option<Id>,
        passphrases: Vec<crate::luks::Passphrase>,
    ) -> Result<VmstashFs, Error> {
        let index = repo.load_index()?;
        let chunk_size = repo.config().chunk_size;
        let names = snapshot_names(&repo)?;
        let images = ImageReader::new(repo.clone(), index, cache_bytes, chunk_size);
        let fs = VmstashFs {
            images,
            repo,
            guests: Guests::default(),
            volumes: Volumes::default(),
            listings: Mutex::new(LruCache::new(
                NonZeroUsize::new(LISTINGS_CACHED).unwrap_or(NonZeroUsize::MIN),
            )),
            attrs: Mutex::new(LruCache::new(
                NonZeroUsize::new(ATTRS_CACHED).unwrap_or(NonZeroUsize::MIN),
            )),
            tree: RwLock::new(Arc::new(Tree::default())),
            inodes: Mutex::new(Inodes::default()),
            seen: Mutex::new((names, Instant::now())),
            only,
            owner: Owner {
                uid: rustix::process::getuid().as_raw(),
                gid: rustix::process::getgid().as_raw(),
            },
        };
        fs.guests.set_passphrases(passphrases);
        let mut snapshots = readable_snapshots(&fs.repo)?;
        snapshots.retain(|(id, _)| only.is_none_or(|only| only == *id));
        fs.rebuild(&snapshots);
        Ok(fs)
    }

    /// The attributes of the file at `path` (names separated by `/`, from the root; symlinks
    /// not followed).
    pub fn path_attr(&self, path: &[u8]) -> Result<FileAttr, Errno> {
        let mut attr = self.attr_of(&self.tree(), ROOT)?;
        for name in path.split(|&b| b == b'/').filter(|n| !n.is_empty()) {
            attr = self.lookup_in(attr.ino.0, OsStr::from_bytes(name))?;
        }
        Ok(attr)
    }

    /// The file named `name` in directory `parent`.
    pub fn lookup_child(&self, parent: Ino, name: &OsStr) -> Result<FileAttr, Errno> {
        self.lookup_in(parent, name)
    }

    /// Whether `ino` is the root directory of a guest filesystem (`<disk>/p1`,
    /// `<disk>/<vg>/<lv>`), as opposed to a directory of the repository's namespace or one
    /// inside a filesystem.
    pub fn is_filesystem_root(&self, ino: Ino) -> bool {
        split_ino(ino).is_none()
            && matches!(
                self.tree().node(ino).map(|n| &n.entry),
                Some(Entry::Guest { .. })
            )
    }

    /// Whether `ino` is a directory of a guest filesystem whose directories' change time
    /// moves with every change of their entries (see
    /// [`crate::guestfs::GuestFs::directory_ctime_tracks_entries`]).
    pub fn directory_ctime_tracks_entries(&self, ino: Ino) -> bool {
        match self.target(&self.tree(), ino) {
            Ok(Target::Guest { guest, .. }) => guest.fs.directory_ctime_tracks_entries(),
            _ => false,
        }
    }

    /// The entries of directory `ino`, without `.` and `..`.
    pub fn children(&self, ino: Ino) -> Result<Vec<Listed>, Errno> {
        self.entries(ino, 2)
    }

    /// Up to `size` bytes of file `ino` at `offset`.
    pub fn read_bytes(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        self.read_file(ino, offset, size)
    }

    /// The target of symbolic link `ino`.
    pub fn link_target(&self, ino: Ino) -> Result<Vec<u8>, Errno> {
        let tree = self.tree();
        match self.target(&tree, ino)? {
            Target::Repo(node) => match &node.entry {
                Entry::Symlink(target) => Ok(target.as_bytes().to_vec()),
                _ => Err(Errno::EINVAL),
            },
            Target::Guest { guest, local, .. } => guest
                .call(|fs| fs.read_link(local))
                .map_err(|e| failed(&guest, &format!("reading link inode {local}"), e)),
        }
    }

    /// Builds the tree of `snapshots` and shows it.
    fn rebuild(&self, snapshots: &[(Id, Manifest)]) {
        let mut inodes = self.inodes.lock().unwrap_or_else(PoisonError::into_inner);
        let tree = Tree::build(
            snapshots,
            &mut inodes,
            SystemTime::now(),
            &mut LayoutsOf(self),
        );
        *self.tree.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tree);
    }

    /// The partitions of a disk of a snapshot, with their filesystems' slots; none (and a log
    /// line) when its table is damaged or cannot be read, so the disk still shows as a whole.
    fn partitions_of(
        &self,
        id: &Id,
        manifest: &Manifest,
        no: usize,
    ) -> Vec<(Partition, Option<u64>)> {
        let Some(disk) = manifest.disks.get(no) else {
            return Vec::new();
        };
        let mut read = |offset: u64, len: usize| {
            self.images
                .read(id, no, disk, offset, u32::try_from(len).unwrap_or(u32::MAX))
        };
        let parts = partition::partitions(&mut read, disk.size).unwrap_or_else(|e| {
            eprintln!(
                "vmstash mount: disk {} of snapshot {}: {e}; showing the whole disk only",
                disk.name,
                id.short()
            );
            Vec::new()
        });
        parts
            .into_iter()
            .map(|p| {
                let device = PartitionDevice::new(&self.images, *id, (no, disk), p.start, p.len);
                if is_physical_volume(&device) {
                    // Its volumes show under the volume group's name.
                    return (p, None);
                }
                let slot = self.guests.slot_of(
                    &self.images,
                    (id, &manifest.name),
                    (no, disk),
                    &p,
                    self.owner,
                );
                (p, slot)
            })
            .collect()
    }

    /// The logical volumes of a snapshot (see [`Volumes::of_snapshot`]).
    fn volumes_of(
        &self,
        id: &Id,
        manifest: &Manifest,
        partitions: &[Vec<Partition>],
    ) -> Vec<VolumeView> {
        self.volumes.of_snapshot(
            &self.images,
            &self.guests,
            (id, manifest),
            partitions,
            self.owner,
        )
    }

    /// Up to `size` bytes at `offset` of logical volume `number` (`file_size` bytes long).
    fn read_volume(
        &self,
        number: u64,
        file_size: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        let volume = self.volumes.get(number).ok_or(Errno::ENOENT)?;
        let len = file_size.saturating_sub(offset).min(u64::from(size));
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| Errno::EINVAL)?];
        volume.read_at(offset, &mut buf).map_err(|e| {
            eprintln!(
                "vmstash mount: reading {len} bytes at {offset} of logical volume {number}: {e}"
            );
            Errno::EIO
        })?;
        Ok(buf)
    }

    fn tree(&self) -> Arc<Tree> {
        Arc::clone(&self.tree.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Rebuilds the tree if the repository's snapshots changed (checked at most every
    /// [`REFRESH_EVERY`]).
    fn refresh(&self) {
        if self.only.is_some() {
            return;
        }
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
            let snapshots = readable_snapshots(&self.repo)?;
            self.images.set_index(index);
            self.rebuild(&snapshots);
            seen.0 = names;
            Ok(())
        });
        if let Err(e) = result {
            eprintln!("vmstash mount: cannot look for new snapshots: {e}");
        }
    }

    /// The attributes of a path of the mount's own namespace (a guest filesystem's root is
    /// answered by [`VmstashFs::guest_attr`]).
    fn repo_attr(&self, ino: Ino, node: &Node) -> FileAttr {
        let (kind, perm, size, nlink) = match &node.entry {
            Entry::Dir(children) => (
                FileType::Directory,
                0o555,
                0,
                2 + u32::try_from(children.len()).unwrap_or(0),
            ),
            Entry::Symlink(target) => (FileType::Symlink, 0o777, len64(target.len()), 1),
            Entry::Text(text) => (FileType::RegularFile, 0o444, len64(text.len()), 1),
            Entry::Disk { size, .. } | Entry::Volume { size, .. } => {
                (FileType::RegularFile, 0o444, *size, 1)
            }
            Entry::Guest { .. } => (FileType::Directory, 0o555, 0, 1),
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
            uid: self.owner.uid,
            gid: self.owner.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// What mount inode `ino` is.
    fn target<'t>(&self, tree: &'t Tree, ino: Ino) -> Result<Target<'t>, Errno> {
        if let Some((slot, local)) = split_ino(ino) {
            let guest = self.guests.get(slot).ok_or(Errno::ENOENT)?;
            return Ok(Target::Guest { guest, local, slot });
        }
        let node = tree.node(ino).ok_or(Errno::ENOENT)?;
        match node.entry {
            Entry::Guest { slot } => {
                let guest = self.guests.get(slot).ok_or(Errno::ENOENT)?;
                let local = guest.fs.root();
                Ok(Target::Guest { guest, local, slot })
            }
            _ => Ok(Target::Repo(node)),
        }
    }

    /// The attributes of `ino` in its place; logs failures.
    fn attr_of(&self, tree: &Tree, ino: Ino) -> Result<FileAttr, Errno> {
        match self.target(tree, ino)? {
            Target::Repo(node) => Ok(self.repo_attr(ino, node)),
            Target::Guest { guest, local, .. } => {
                let attr = self.guest_attr(&guest, ino, local)?;
                Ok(file_attr(ino, &attr))
            }
        }
    }

    /// A guest file's attributes: from the last listing that showed it, or its filesystem.
    fn guest_attr(&self, guest: &Guest, ino: Ino, local: u64) -> Result<Attr, Errno> {
        let cached = self
            .attrs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ino)
            .cloned();
        match cached {
            Some(attr) => Ok(attr),
            None => guest
                .call(|fs| fs.attr(local))
                .map_err(|e| failed(guest, &format!("inode {local}"), e)),
        }
    }

    /// The listing of guest directory `local` (mount inode `ino`), sorted by name.
    fn listing(&self, guest: &Guest, slot: u64, ino: Ino, local: u64) -> Result<Listing, Errno> {
        let cached = self
            .listings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ino)
            .cloned();
        if let Some(listing) = cached {
            return Ok(listing);
        }
        let mut entries = guest
            .call(|fs| fs.read_dir(local))
            .map_err(|e| failed(guest, &format!("listing directory inode {local}"), e))?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        {
            let mut attrs = self.attrs.lock().unwrap_or_else(PoisonError::into_inner);
            for e in &entries {
                if let Some(attr) = &e.attr {
                    attrs.put(mount_ino(slot, e.ino), attr.clone());
                }
            }
        }
        let listing = Arc::new(entries);
        self.listings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(ino, Arc::clone(&listing));
        Ok(listing)
    }

    /// Looks `name` up in directory `parent`.
    fn lookup_in(&self, parent: Ino, name: &OsStr) -> Result<FileAttr, Errno> {
        self.refresh();
        let tree = self.tree();
        match self.target(&tree, parent)? {
            Target::Repo(_) => {
                let ino = name
                    .to_str()
                    .and_then(|name| tree.child(parent, name))
                    .ok_or(Errno::ENOENT)?;
                self.attr_of(&tree, ino)
            }
            Target::Guest { guest, local, slot } => {
                let listing = self.listing(&guest, slot, parent, local)?;
                let found = listing
                    .binary_search_by(|e| e.name.as_slice().cmp(name.as_bytes()))
                    .ok()
                    .and_then(|i| listing.get(i))
                    .ok_or(Errno::ENOENT)?;
                let ino = mount_ino(slot, found.ino);
                let attr = match &found.attr {
                    Some(attr) => attr.clone(),
                    None => self.guest_attr(&guest, ino, found.ino)?,
                };
                Ok(file_attr(ino, &attr))
            }
        }
    }

    /// Up to `size` bytes of file `ino` at `offset`.
    fn read_file(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let tree = self.tree();
        match self.target(&tree, ino)? {
            Target::Guest { guest, local, .. } => guest
                .call(|fs| fs.read(local, offset, size))
                .map_err(|e| failed(&guest, &format!("reading inode {local} at {offset}"), e)),
            Target::Repo(node) => match &node.entry {
                Entry::Text(text) => {
                    let bytes = text.as_bytes();
                    let start = usize::try_from(offset)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    let end = start
                        .saturating_add(usize::try_from(size).unwrap_or(usize::MAX))
                        .min(bytes.len());
                    Ok(bytes.get(start..end).unwrap_or_default().to_vec())
                }
                Entry::Disk {
                    snapshot,
                    disk,
                    start,
                    size: file_size,
                } => {
                    let size = u32::try_from(file_size.saturating_sub(offset))
                        .unwrap_or(u32::MAX)
                        .min(size);
                    let offset = start.saturating_add(offset);
                    let manifest = tree.manifest(snapshot).ok_or(Errno::ENOENT)?;
                    let d = manifest.disks.get(*disk).ok_or(Errno::ENOENT)?;
                    self.images
                        .read(snapshot, *disk, d, offset, size)
                        .map_err(|e| {
                            eprintln!(
                                "vmstash mount: reading {size} bytes at {offset} of disk {} of snapshot {} ({}): {e}",
                                d.name,
                                snapshot.short(),
                                manifest.name
                            );
                            Errno::EIO
                        })
                }
                Entry::Volume {
                    number,
                    size: file_size,
                } => self.read_volume(*number, *file_size, offset, size),
                Entry::Dir(_) | Entry::Guest { .. } => Err(Errno::EISDIR),
                Entry::Symlink(_) => Err(Errno::EINVAL),
            },
        }
    }

    /// The entries of directory `ino` from position `offset` on, with their attributes where
    /// they can be read.
    fn entries(&self, ino: Ino, offset: u64) -> Result<Vec<Listed>, Errno> {
        if offset == 0 {
            self.refresh();
        }
        let tree = self.tree();
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        match self.target(&tree, ino)? {
            Target::Repo(node) => {
                let Entry::Dir(children) = &node.entry else {
                    return Err(Errno::ENOTDIR);
                };
                let dots = [(ino, b".".to_vec()), (node.parent, b"..".to_vec())];
                let all = dots.into_iter().chain(
                    children
                        .iter()
                        .map(|(name, &i)| (i, name.as_bytes().to_vec())),
                );
                Ok(all
                    .skip(skip)
                    .map(|(child, name)| Listed {
                        ino: child,
                        name,
                        attr: self.attr_of(&tree, child).ok(),
                    })
                    .collect())
            }
            Target::Guest { guest, local, slot } => {
                let listing = self.listing(&guest, slot, ino, local)?;
                let here = self.guest_attr(&guest, ino, local).ok();
                let dots = [".", ".."].map(|name: &str| Listed {
                    ino,
                    name: name.as_bytes().to_vec(),
                    attr: here.as_ref().map(|a| file_attr(ino, a)),
                });
                Ok(dots
                    .into_iter()
                    .chain(listing.iter().map(|e| {
                        let child = mount_ino(slot, e.ino);
                        Listed {
                            ino: child,
                            name: e.name.clone(),
                            attr: e.attr.as_ref().map(|a| file_attr(child, a)),
                        }
                    }))
                    .skip(skip)
                    .collect())
            }
        }
    }
}

/// One entry of a directory listing.
pub struct Listed {
    /// Its inode number in the namespace.
    pub ino: Ino,
    /// Its name.
    pub name: Vec<u8>,
    /// `None` when its metadata cannot be read (using it answers the error).
    pub attr: Option<FileAttr>,
}

impl Listed {
    fn kind(&self) -> FileType {
        self.attr.as_ref().map_or(FileType::RegularFile, |a| a.kind)
    }
}

/// Logs a failure of a guest filesystem with where it happened and whose fault it is
/// ("damaged ext4 metadata: …", "not supported by vmstash: …", "cannot read the backup: …"),
/// and answers the errno for `e`.
fn failed(guest: &Guest, what: &str, e: FsError) -> Errno {
    if e.is_failure() {
        eprintln!("vmstash mount: {}: {what}: {e}", guest.label);
    }
    errno(&e)
}

/// The errno that answers `e`: EIO for every failure, whoever's fault.
fn errno(e: &FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::NotSymlink => Errno::EINVAL,
        FsError::Corrupt { .. } | FsError::Unsupported { .. } | FsError::Read(_) => Errno::EIO,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::BlockDevice => FileType::BlockDevice,
        Kind::CharDevice => FileType::CharDevice,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
    }
}

/// A guest file's attributes as FUSE wants them.
fn file_attr(ino: Ino, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.crtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

/// Whether `ino` is a disk or partition image. Those are read with direct I/O: the chunk
/// cache already holds what was read, and copying gigabytes through freshly allocated
/// page-cache pages costs more than the decryption (reads go straight into the reader's
/// buffer; `mmap` still works where the kernel allows it).
fn is_disk_image(tree: &Tree, ino: Ino) -> bool {
    split_ino(ino).is_none()
        && matches!(
            tree.node(ino).map(|n| &n.entry),
            Some(Entry::Disk { .. } | Entry::Volume { .. })
        )
}

/// The tree's questions about a snapshot's disks, answered by the filesystem.
struct LayoutsOf<'a>(&'a VmstashFs);

impl Layouts for LayoutsOf<'_> {
    fn partitions(
        &mut self,
        id: &Id,
        manifest: &Manifest,
        disk: usize,
    ) -> Vec<(Partition, Option<u64>)> {
        self.0.partitions_of(id, manifest, disk)
    }

    fn volumes(
        &mut self,
        id: &Id,
        manifest: &Manifest,
        partitions: &[Vec<Partition>],
    ) -> Vec<VolumeView> {
        self.0.volumes_of(id, manifest, partitions)
    }
}

/// Attributes for a name whose metadata cannot be read.
fn placeholder_attr(ino: Ino) -> FileAttr {
    file_attr(
        ino,
        &Attr {
            kind: Kind::File,
            size: 0,
            perm: 0,
            uid: 0,
            gid: 0,
            nlink: 1,
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            rdev: 0,
        },
    )
}

fn len64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
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
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Listings with attributes (`ls -l` without a lookup per name), and symlink targets
        // kept by the kernel (a path through `latest` would otherwise ask for it every time).
        // Both are optimisations: a kernel without them still gets correct answers.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_in(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(&self.tree(), ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(errno) => reply.error(errno),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.link_target(ino.0) {
            Ok(bytes) => reply.data(&bytes),
            Err(errno) => reply.error(errno),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        let tree = self.tree();
        match self.attr_of(&tree, ino.0) {
            Ok(attr) => match attr.kind {
                FileType::Directory => reply.error(Errno::EISDIR),
                FileType::Symlink => reply.error(Errno::EINVAL),
                _ if is_disk_image(&tree, ino.0) => {
                    reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
                }
                _ => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            },
            Err(errno) => reply.error(errno),
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
        match self.read_file(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(errno) => reply.error(errno),
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
        match self.entries(ino.0, offset) {
            Ok(entries) => {
                for (i, e) in (offset..).zip(entries) {
                    if reply.add(INodeNo(e.ino), i + 1, e.kind(), OsStr::from_bytes(&e.name)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(errno) => reply.error(errno),
        }
    }

    /// Listing with attributes (`ls -l` without a lookup per name). An entry whose metadata
    /// cannot be read goes out with placeholder attributes that the kernel may not cache, so
    /// using it looks it up and gets the error.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.entries(ino.0, offset) {
            Ok(entries) => {
                for (i, e) in (offset..).zip(entries) {
                    let (ttl, attr) = match e.attr {
                        Some(attr) => (TTL, attr),
                        None => (Duration::ZERO, placeholder_attr(e.ino)),
                    };
                    let name = OsStr::from_bytes(&e.name);
                    if reply.add(INodeNo(e.ino), i + 1, name, &ttl, &attr, Generation(0)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(errno) => reply.error(errno),
        }
    }
}

/// The snapshots the mount shows: every readable one. A file that cannot be read is left out
/// with a line on stderr, so one damaged snapshot never hides the others.
fn readable_snapshots(repo: &Repository) -> vmstash_repo::Result<Vec<(Id, Manifest)>> {
    let listing = repo.snapshot_listing()?;
    for (name, e) in &listing.damaged {
        eprintln!("vmstash mount: leaving out snapshot {name}: {e}");
    }
    Ok(listing.snapshots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_answer_eio_whoever_is_at_fault_and_answers_their_own_errno() {
        let repo = Arc::new(vmstash_repo::Error::BlobNotFound("1a2b".into()));
        for e in [
            FsError::corrupt("ext4", "bad extent"),
            FsError::unsupported("ntfs", "compressed files"),
            FsError::Read(repo),
        ] {
            assert!(e.is_failure());
            assert_eq!(errno(&e), Errno::EIO, "{e}");
        }
        assert_eq!(errno(&FsError::NotFound), Errno::ENOENT);
        assert_eq!(errno(&FsError::NotDir), Errno::ENOTDIR);
        assert_eq!(errno(&FsError::IsDir), Errno::EISDIR);
        assert_eq!(errno(&FsError::NotSymlink), Errno::EINVAL);
    }
}
