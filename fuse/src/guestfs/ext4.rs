//! ext2, ext3 and ext4 through `ext4-view` (which replays the journal, checks metadata
//! checksums and never panics on bad input).
//!
//! `ext4-view` resolves paths, not inode numbers, and its `Ext4` is not `Send`: each FUSE
//! thread loads its own copy of a filesystem (superblock and group descriptors; a few hundred
//! KiB with its block cache) the first time it serves a request for it, and keeps the file it
//! read last open, so a sequential reader does not walk the extent tree again for every
//! request. Inode numbers and link counts come from [`super::ext4_links`], so hard links show
//! as in the guest.

use std::cell::RefCell;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ext4_view::{Ext4, Ext4Error, Ext4Read, File, FileType, Metadata};
use lru::LruCache;

use super::device::DeviceError;
use super::ext4_links::Links;
use super::inodes::{join, PathInodes};
use super::{time_from_unix, usable_name, Attr, Device, DirEntry, FsError, GuestFs, Kind};

/// The filesystem's name in errors.
const FS: &str = "ext4";
/// The root directory's inode number on every ext2/3/4 filesystem.
const ROOT_INO: u64 = 2;
/// Numbers for names whose inode number is not known start here, above ext4's 32-bit ones.
const FIRST_OWN_INO: u64 = 1 << 32;
/// Byte offset of the superblock's magic number.
const MAGIC_AT: usize = 1024 + 56;
/// Filesystems each thread keeps loaded.
const LOADED_PER_THREAD: usize = 16;
/// Most entries listed from one directory.
const MAX_DIR_ENTRIES: usize = 4_000_000;
/// Longest symlink target read (Linux's PATH_MAX). `ext4-view` allocates a symlink's whole
/// stated size before reading it, and a damaged inode can state terabytes.
const MAX_SYMLINK_LEN: u64 = 4096;

/// Whether the partition holds an ext2/3/4 superblock.
pub fn recognises(head: &[u8]) -> bool {
    head.get(MAGIC_AT..MAGIC_AT + 2) == Some(&[0x53, 0xEF])
}

/// Tells filesystems apart in the threads' caches.
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// A filesystem loaded on one thread, and the file it read last.
struct Loaded {
    fs: Ext4,
    last_file: Option<(u64, File)>,
}

impl Loaded {
    /// What `path` itself is, a symlink not followed.
    fn metadata(&self, path: &[u8]) -> Result<Metadata, FsError> {
        self.fs.symlink_metadata(path).map_err(from_ext4)
    }
}

thread_local! {
    static LOADED: RefCell<LruCache<u64, Loaded>> = RefCell::new(LruCache::new(
        NonZeroUsize::new(LOADED_PER_THREAD).unwrap_or(NonZeroUsize::MIN),
    ));
}

/// The partition as `ext4-view` reads it. Its errors are [`DeviceError`]s, which `ext4-view`
/// hands back untouched as [`Ext4Error::Io`].
struct DeviceReader(Arc<dyn Device>);

impl Ext4Read for DeviceReader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.0.read_at(start_byte, dst).map_err(Into::into)
    }
}

/// An ext2/3/4 filesystem.
pub struct Ext4Fs {
    instance: u64,
    dev: Arc<dyn Device>,
    inodes: PathInodes,
    links: Option<Links>,
}

impl Ext4Fs {
    /// Opens the filesystem in `dev`: its superblock, group descriptors and journal must be
    /// readable.
    pub fn open(dev: Arc<dyn Device>) -> Result<Ext4Fs, FsError> {
        let fs = Ext4Fs {
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            links: Links::open(Arc::clone(&dev)),
            dev,
            inodes: PathInodes::new(ROOT_INO, FIRST_OWN_INO),
        };
        fs.with(|_| Ok(()))?;
        Ok(fs)
    }

    fn load(&self) -> Result<Ext4, FsError> {
        Ext4::load(Box::new(DeviceReader(Arc::clone(&self.dev)))).map_err(from_ext4)
    }

    /// Runs `f` with this thread's copy of the filesystem, loading it first if needed.
    fn with<R>(&self, f: impl FnOnce(&mut Loaded) -> Result<R, FsError>) -> Result<R, FsError> {
        LOADED.with(|cell| {
            let mut loaded = cell.borrow_mut();
            if !loaded.contains(&self.instance) {
                let fs = self.load()?;
                loaded.put(
                    self.instance,
                    Loaded {
                        fs,
                        last_file: None,
                    },
                );
            }
            match loaded.get_mut(&self.instance) {
                Some(l) => f(l),
                None => Err(FsError::corrupt(FS, "filesystem not loaded")),
            }
        })
    }
}

impl Ext4Fs {
    /// The link count of `ino`; 1 where it is not known.
    fn link_count(&self, ino: u64) -> u32 {
        u32::try_from(ino)
            .ok()
            .and_then(|ino| self.links.as_ref()?.link_count(ino))
            .map_or(1, u32::from)
    }

    /// `attr` of inode `ino` with what `ext4-view` does not say: its link count and, for a
    /// device node, its device number (0 where it is not known).
    fn completed(&self, ino: u64, attr: Attr) -> Attr {
        let rdev = match attr.kind {
            Kind::BlockDevice | Kind::CharDevice => u32::try_from(ino)
                .ok()
                .and_then(|ino| self.links.as_ref()?.device_number(ino))
                .map_or(0, |(major, minor)| super::encode_dev(major, minor)),
            _ => 0,
        };
        Attr {
            nlink: self.link_count(ino),
            rdev,
            ..attr
        }
    }
}

/// `ext4-view`'s error, by whose fault it is: its `Incompatible` (a feature it does not
/// implement), `Encrypted` (no keys) and `PathTooLong` (directories nested deeper than it
/// resolves: vmstash reads ext4 by path) are unsupported, an `Io` error is the device's
/// ([`DeviceReader`]), and the rest is damage: the paths asked for are built from the
/// filesystem's own listings, so a path `ext4-view` refuses (a name it finds malformed, a
/// symlink loop) was made so by the metadata.
fn from_ext4(e: Ext4Error) -> FsError {
    match e {
        Ext4Error::NotFound => FsError::NotFound,
        Ext4Error::NotADirectory => FsError::NotDir,
        Ext4Error::IsADirectory => FsError::IsDir,
        Ext4Error::NotASymlink => FsError::NotSymlink,
        Ext4Error::Io(io) => match io.downcast::<DeviceError>() {
            Ok(device) => FsError::device(FS, *device),
            // Only `DeviceReader` reads, so this is not reached; damage is the safe answer.
            Err(other) => FsError::corrupt(FS, other),
        },
        e @ (Ext4Error::Incompatible(_) | Ext4Error::Encrypted | Ext4Error::PathTooLong) => {
            FsError::unsupported(FS, e)
        }
        other => FsError::corrupt(FS, other),
    }
}

fn kind_of(t: FileType) -> Kind {
    match t {
        FileType::BlockDevice => Kind::BlockDevice,
        FileType::CharacterDevice => Kind::CharDevice,
        FileType::Directory => Kind::Dir,
        FileType::Fifo => Kind::Fifo,
        FileType::Regular => Kind::File,
        FileType::Socket => Kind::Socket,
        FileType::Symlink => Kind::Symlink,
    }
}

fn attr_of(m: &Metadata) -> Attr {
    let time = |t: ext4_view::Timestamp| time_from_unix(t.seconds(), t.nanoseconds());
    let mtime = time(m.modified());
    Attr {
        kind: kind_of(m.file_type()),
        size: m.len(),
        perm: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        nlink: 1,
        atime: time(m.accessed()),
        mtime,
        ctime: mtime,
        crtime: m.created().map_or(mtime, time),
        rdev: 0,
    }
}

impl GuestFs for Ext4Fs {
    fn type_name(&self) -> &'static str {
        FS
    }

    fn directory_ctime_tracks_entries(&self) -> bool {
        true
    }

    fn root(&self) -> u64 {
        ROOT_INO
    }

    fn attr(&self, ino: u64) -> Result<Attr, FsError> {
        let path = self.inodes.path(ino)?;
        let attr = self.with(|l| l.metadata(&path).map(|m| attr_of(&m)))?;
        Ok(self.completed(ino, attr))
    }

    fn read_dir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let path = self.inodes.path(ino)?;
        let numbers = u32::try_from(ino)
            .ok()
            .and_then(|dir| self.links.as_ref()?.names(dir));
        self.with(|l| {
            // `read_dir` follows a symlink at the end of the path: see `MAX_SYMLINK_LEN`.
            if !l.metadata(&path)?.file_type().is_dir() {
                return Err(FsError::NotDir);
            }
            let mut out: Vec<DirEntry> = Vec::new();
            let mut listed: HashMap<Vec<u8>, usize> = HashMap::new();
            for entry in l.fs.read_dir(path.as_slice()).map_err(from_ext4)? {
                let entry = entry.map_err(from_ext4)?;
                let name = entry.file_name().as_ref().to_vec();
                if !usable_name(&name) {
                    continue;
                }
                // A name twice in one directory (damaged): a path names only one of them, and
                // the hashed lookup behind `attr` and `read` need not find the first; so it is
                // listed once, without attributes, and `attr` says what the path leads to.
                if let Some(&at) = listed.get(&name) {
                    if let Some(first) = out.get_mut(at) {
                        first.attr = None;
                    }
                    continue;
                }
                listed.insert(name.clone(), out.len());
                if out.len() >= MAX_DIR_ENTRIES {
                    // Valid ext4 (with `large_dir`), but more than the mount lists.
                    return Err(FsError::unsupported(
                        FS,
                        format!("more than {MAX_DIR_ENTRIES} entries in one directory"),
                    ));
                }
                let child = join(&path, &name);
                let ino = match numbers.as_ref().and_then(|n| n.get(&name)) {
                    Some(&number) => self.inodes.register(&child, u64::from(number)),
                    None => self.inodes.number(&child),
                };
                let attr = entry
                    .metadata()
                    .ok()
                    .map(|m| self.completed(ino, attr_of(&m)));
                out.push(DirEntry { name, ino, attr });
            }
            Ok(out)
        })
    }

    fn read(&self, ino: u64, offset: u64, len: u32) -> Result<Vec<u8>, FsError> {
        let path = self.inodes.path(ino)?;
        self.with(|l| {
            let mut file = match l.last_file.take() {
                Some((last, file)) if last == ino => file,
                _ => {
                    // `open` follows a symlink at the end of the path: see `MAX_SYMLINK_LEN`.
                    let kind = l.metadata(&path)?.file_type();
                    if kind.is_dir() {
                        return Err(FsError::IsDir);
                    }
                    if !kind.is_regular_file() {
                        // A symlink or a device node: the kernel never reads one through
                        // the mount; other callers get no contents.
                        return Err(FsError::unsupported(
                            FS,
                            "reading a file that is not a regular file",
                        ));
                    }
                    l.fs.open(path.as_slice()).map_err(from_ext4)?
                }
            };
            if file.position() != offset {
                file.seek_to(offset).map_err(from_ext4)?;
            }
            let left = file.metadata().len().saturating_sub(offset);
            let want = usize::try_from(left.min(u64::from(len))).unwrap_or(0);
            let mut buf = vec![0u8; want];
            let mut got = 0;
            while got < want {
                let n = file
                    .read_bytes(buf.get_mut(got..).unwrap_or_default())
                    .map_err(from_ext4)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            buf.truncate(got);
            l.last_file = Some((ino, file));
            Ok(buf)
        })
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let path = self.inodes.path(ino)?;
        self.with(|l| {
            let meta = l.metadata(&path)?;
            if !meta.file_type().is_symlink() {
                return Err(FsError::NotSymlink);
            }
            if meta.len() > MAX_SYMLINK_LEN {
                return Err(FsError::corrupt(
                    FS,
                    format!("a symlink target of {} bytes", meta.len()),
                ));
            }
            l.fs.read_link(path.as_slice())
                .map(|target| target.as_ref().to_vec())
                .map_err(from_ext4)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guestfs::test_support::{
        assert_reads_match, entry, is_pack_error, pattern, Unreadable,
    };
    use std::time::{Duration, UNIX_EPOCH};

    /// The image `testdata/make-ext4-fat.sh` made.
    fn image() -> Vec<u8> {
        zstd::decode_all(&include_bytes!("../../testdata/ext4.img.zst")[..]).expect("zstd")
    }

    #[test]
    fn a_name_twice_in_a_directory_is_listed_once_and_attributed_by_its_path() {
        let twin = zstd::decode_all(&include_bytes!("../../testdata/ext4-twin.img.zst")[..])
            .expect("zstd");
        let fs = Ext4Fs::open(Arc::new(twin)).expect("open");
        let root = fs.read_dir(ROOT_INO).expect("list");
        let hards: Vec<_> = root.iter().filter(|e| e.name == b"hard").collect();
        assert_eq!(hards.len(), 1, "{root:?}");
        assert_eq!(hards[0].attr, None);
        let attr = fs.attr(hards[0].ino).expect("attr");
        assert_eq!((attr.kind, attr.size), (Kind::File, 13));
        assert_eq!(
            fs.read(hards[0].ino, 0, 100).expect("read"),
            b"hello, guest\n"
        );
        let hello = entry(&fs, ROOT_INO, "hello");
        assert_eq!(
            fs.attr(hello.ino).expect("attr"),
            hello.attr.expect("listed")
        );
    }

    #[test]
    fn a_symlink_stating_a_terabyte_is_damage_not_an_allocation() {
        // The checksum-free copy with its symlink (inode 16, "hello" kept in the inode) named
        // `link` again and its size set to 2^40.
        let mut img = zstd::decode_all(&include_bytes!("../../testdata/ext4-twin.img.zst")[..])
            .expect("zstd");
        let dirent = img
            .windows(12)
            .position(|w| w == [16, 0, 0, 0, 12, 0, 4, 7, b'h', b'a', b'r', b'd'])
            .expect("the entry of inode 16");
        img[dirent + 8..dirent + 12].copy_from_slice(b"link");
        let inode = img
            .chunks(256)
            .position(|i| i.starts_with(&[0xff, 0xa1]) && i.get(40..45) == Some(b"hello"))
            .expect("the symlink's inode")
            * 256;
        img[inode + 4..inode + 8].fill(0);
        img[inode + 108..inode + 112].copy_from_slice(&0x100u32.to_le_bytes());
        let fs = Ext4Fs::open(Arc::new(img)).expect("open");
        let link = entry(&fs, ROOT_INO, "link");
        assert_eq!(fs.attr(link.ino).expect("attr").size, 1 << 40);
        assert!(matches!(
            fs.read_link(link.ino),
            Err(FsError::Corrupt { fs: "ext4", .. })
        ));
        // Not followed: a symlink's contents are not read as a file's.
        assert!(matches!(
            fs.read(link.ino, 0, 10),
            Err(FsError::Unsupported { fs: "ext4", .. })
        ));
        assert!(matches!(fs.read_dir(link.ino), Err(FsError::NotDir)));
    }

    #[test]
    fn files_links_and_attributes_are_as_in_the_image() {
        let fs = Ext4Fs::open(Arc::new(image())).expect("open");
        assert_eq!(fs.root(), 2);
        let names: Vec<Vec<u8>> = fs
            .read_dir(2)
            .expect("root")
            .into_iter()
            .map(|e| e.name)
            .collect();
        for want in ["hello", "hard", "link", "dir", "many", "lost+found"] {
            assert!(names.contains(&want.as_bytes().to_vec()), "{want} missing");
        }
        let hello = entry(&fs, 2, "hello");
        let hard = entry(&fs, 2, "hard");
        assert_eq!(hello.ino, hard.ino, "hard links share the inode number");
        let attr = hello.attr.expect("attr");
        assert_eq!(
            (attr.nlink, attr.perm, attr.uid, attr.gid),
            (2, 0o640, 1001, 42)
        );
        assert_eq!(attr.mtime, UNIX_EPOCH + Duration::from_secs(1_614_834_367));
        assert_eq!(fs.attr(hello.ino).expect("attr"), attr);
        assert_eq!(fs.read(hello.ino, 0, 100).expect("read"), b"hello, guest\n");
        let link = entry(&fs, 2, "link");
        assert_eq!(link.attr.expect("attr").kind, Kind::Symlink);
        assert_eq!(fs.read_link(link.ino).expect("readlink"), b"hello");
        assert!(matches!(fs.read_link(hello.ino), Err(FsError::NotSymlink)));
        let many = entry(&fs, 2, "many");
        assert_eq!(fs.read_dir(many.ino).expect("many").len(), 100);
    }

    #[test]
    fn reads_at_any_offset_match_the_file() {
        let fs = Ext4Fs::open(Arc::new(image())).expect("open");
        let dir = entry(&fs, 2, "dir");
        let big = entry(&fs, dir.ino, "big");
        let want = pattern(40960);
        assert_eq!(big.attr.expect("attr").size, 40960);
        assert_reads_match(&fs, big.ino, &want);
        assert!(matches!(fs.read(dir.ino, 0, 10), Err(FsError::IsDir)));
        assert!(matches!(fs.attr(999_999), Err(FsError::NotFound)));
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let mut truncated = image();
        truncated.truncate(1500);
        let err = Ext4Fs::open(Arc::new(truncated)).err();
        assert!(
            matches!(&err, Some(FsError::Corrupt { fs: "ext4", detail }) if detail.contains("past the end")),
            "a superblock cut short by the partition's end is damage: {err:?}"
        );
        let mut bad_block_size = image();
        bad_block_size[1024 + 24] = 30;
        assert!(matches!(
            Ext4Fs::open(Arc::new(bad_block_size)),
            Err(FsError::Corrupt { fs: "ext4", .. })
        ));
        // Every 1 KiB block zeroed in turn: opening and walking never panics, and never
        // reports damage in memory as an unreadable backup.
        let no_read_error = |r: Result<(), FsError>| {
            assert!(!matches!(r, Err(FsError::Read(_))), "{r:?}");
        };
        let clean = image();
        for block in 0..clean.len() / 1024 {
            let mut img = clean.clone();
            img[block * 1024..(block + 1) * 1024].fill(0xa5);
            let opened = Ext4Fs::open(Arc::new(img));
            if let Err(e) = &opened {
                assert!(matches!(e, FsError::Corrupt { .. }), "block {block}: {e:?}");
            }
            if let Ok(fs) = opened {
                if let Ok(entries) = fs.read_dir(2) {
                    for e in entries {
                        no_read_error(fs.attr(e.ino).map(drop));
                        no_read_error(fs.read(e.ino, 0, 4096).map(drop));
                        no_read_error(fs.read_dir(e.ino).map(drop));
                    }
                }
            }
        }
    }

    #[test]
    fn an_incompatible_feature_is_unsupported_not_damage() {
        // The checksum-free copy (a changed superblock still passes), with an incompatible
        // feature bit `ext4-view` does not know.
        let mut img = zstd::decode_all(&include_bytes!("../../testdata/ext4-twin.img.zst")[..])
            .expect("zstd");
        img[1024 + 0x62] |= 0x02;
        let err = Ext4Fs::open(Arc::new(img)).err();
        assert!(
            matches!(&err, Some(FsError::Unsupported { fs: "ext4", .. })),
            "{err:?}"
        );
    }

    #[test]
    fn unreadable_backup_bytes_are_read_errors_not_damage() {
        let dev = Arc::new(Unreadable::new(image()));
        let fs = Ext4Fs::open(dev.clone()).expect("open");
        dev.fail();
        let err = fs
            .read_dir(ROOT_INO)
            .expect_err("the root's blocks are unreadable");
        assert!(
            matches!(&err, FsError::Read(e) if is_pack_error(e)),
            "the repository's error, not damage: {err:?}"
        );
        let err = Ext4Fs::open(dev).err();
        assert!(
            matches!(&err, Some(FsError::Read(e)) if is_pack_error(e)),
            "{err:?}"
        );
    }
}
