//! FAT12, FAT16 and FAT32 (with long names) through `fatfs`.
//!
//! `fatfs`'s filesystem is not `Sync` and its open files borrow it, so each FAT filesystem is
//! served by a thread of its own that owns it and keeps the file it read last open (seeking
//! in a FAT file walks its cluster chain; a sequential reader should not walk it from the
//! start for every request). A request that reads more of the partition than any sane one
//! could (a cluster chain that loops) fails instead of spinning, and a panic inside `fatfs`
//! fails that request only.
//!
//! FAT has no owners, permissions, links or time zones: files belong to the user who mounted,
//! directories are `0o755` and files `0o644` (`0o444` when read-only), and the local times
//! FAT stores are shown as if they were UTC.

use std::collections::HashSet;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fatfs::{Date, DateTime, FileAttributes, FileSystem, FsOptions};
use lru::LruCache;

use super::inodes::{join, PathInodes};
use super::{usable_name, Attr, Device, DeviceCursor, DirEntry, FsError, GuestFs, Kind, Owner};

/// The filesystem's name in errors.
const FS: &str = "vfat";
/// The root directory's inode number.
const ROOT_INO: u64 = 1;
/// Bytes of the partition one request may read beyond what it returns: twice the partition
/// (every cluster and its FAT entry) plus a MiB, at most 256 MiB.
fn read_budget(partition: u64) -> u64 {
    partition
        .saturating_mul(2)
        .saturating_add(1 << 20)
        .min(256 << 20)
}
/// Deepest directory listed: FAT has no inode numbers to show a directory that contains its
/// own ancestor (a damaged cluster chain) as a loop, so the path would grow forever.
const MAX_DEPTH: usize = 128;
/// Attributes kept from listings.
const ATTRS_CACHED: usize = 4096;
/// Most entries listed from one directory (FAT allows 65,536 slots).
const MAX_DIR_ENTRIES: usize = 65_536;

/// Whether the partition starts with a FAT boot sector.
pub fn recognises(head: &[u8]) -> bool {
    let signed = head.get(510..512) == Some(&[0x55, 0xAA]);
    let fat_label =
        head.get(54..57) == Some(b"FAT".as_slice()) || head.get(82..87) == Some(b"FAT32");
    let bytes_per_sector = head
        .get(11..13)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .unwrap_or(0);
    signed && fat_label && matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
}

/// The partition as `fatfs` reads it, counting what each request reads.
struct FatDisk {
    cursor: DeviceCursor,
    read: Arc<AtomicU64>,
    budget: Arc<AtomicU64>,
}

impl Read for FatDisk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        let total = self.read.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        if total > self.budget.load(Ordering::Relaxed) {
            return Err(io::Error::other(
                "one request read far more of the partition than it asked for (a cluster chain loops?)",
            ));
        }
        self.cursor.read(buf)
    }
}

impl Seek for FatDisk {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.cursor.seek(to)
    }
}

impl Write for FatDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.cursor.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

type Fs = FileSystem<FatDisk>;
type OpenFile<'a> = fatfs::File<'a, FatDisk>;

/// What the serving thread holds.
struct Worker<'a> {
    fs: &'a Fs,
    last_file: Option<(u64, OpenFile<'a>)>,
}

type Job = Box<dyn for<'a> FnOnce(&mut Worker<'a>) + Send>;

/// A FAT filesystem.
pub struct FatFs {
    jobs: Mutex<mpsc::Sender<Job>>,
    inodes: Arc<PathInodes>,
    owner: Owner,
    read: Arc<AtomicU64>,
    budget: Arc<AtomicU64>,
    budget_base: u64,
    /// Attributes from recent listings: FAT keeps them in the parent directory, so without
    /// this every `attr` would list the parent again.
    attrs: Mutex<LruCache<u64, Attr>>,
}

/// Damage; also what a panic in `fatfs` is called (it panics only on bytes it did not expect,
/// but cannot say which).
fn corrupt(e: impl ToString) -> FsError {
    FsError::corrupt(FS, e)
}

/// `fatfs`'s error: the device's when it carries one, not found, or else damage. `fatfs`
/// reports everything else as a message (`ErrorKind::Other`) that does not tell damage from
/// something it does not support; the one unsupported thing it refuses, a FAT32 version
/// other than 0.0, is caught before it is opened ([`fat32_version`]).
fn from_io(e: io::Error) -> FsError {
    match e.kind() {
        io::ErrorKind::NotFound => FsError::NotFound,
        _ => FsError::from_io(FS, e),
    }
}

/// Offset of the BPB's sectors per FAT (16-bit field; 0 on FAT32).
const SECTORS_PER_FAT_16_AT: usize = 22;
/// Offset of FAT32's version field (a u16: minor in the low byte, major in the high one).
const FAT32_VERSION_AT: usize = 42;

/// The FAT32 version in boot sector `boot` (`None` for FAT12/16). Only 0.0 exists; `fatfs`
/// refuses any other, and so does Linux.
fn fat32_version(boot: &[u8]) -> Option<[u8; 2]> {
    let fat16_size = boot.get(SECTORS_PER_FAT_16_AT..SECTORS_PER_FAT_16_AT + 2)?;
    if fat16_size != [0, 0] {
        return None;
    }
    boot.get(FAT32_VERSION_AT..FAT32_VERSION_AT + 2)?
        .try_into()
        .ok()
}

/// Refuses a FAT32 volume of a version `fatfs` does not read, as unsupported rather than
/// damaged.
fn check_version(dev: &dyn Device) -> Result<(), FsError> {
    if dev.len() < 512 {
        // Too short for a boot sector: `fatfs` says so.
        return Ok(());
    }
    let mut boot = [0u8; 512];
    dev.read_at(0, &mut boot)
        .map_err(|e| FsError::device(FS, e))?;
    match fat32_version(&boot) {
        Some([minor, major]) if [minor, major] != [0, 0] => Err(FsError::unsupported(
            FS,
            format!("FAT32 version {major}.{minor}"),
        )),
        _ => Ok(()),
    }
}

impl FatFs {
    /// Opens the filesystem in `dev` (its boot sector must be valid); files belong to `owner`.
    pub fn open(dev: Arc<dyn Device>, owner: Owner) -> Result<FatFs, FsError> {
        check_version(dev.as_ref())?;
        let read = Arc::new(AtomicU64::new(0));
        let budget_base = read_budget(dev.len());
        let budget = Arc::new(AtomicU64::new(budget_base));
        let disk = FatDisk {
            cursor: DeviceCursor::new(dev),
            read: Arc::clone(&read),
            budget: Arc::clone(&budget),
        };
        let (jobs, queue) = mpsc::channel::<Job>();
        let (opened, open_result) = mpsc::channel();
        std::thread::Builder::new()
            .name("vmstash-vfat".to_owned())
            .spawn(move || serve(disk, &queue, &opened))
            // The host's fault, not the backup's: of the three kinds, "vmstash cannot read
            // this" is the one that says so.
            .map_err(|e| {
                FsError::unsupported(FS, format!("cannot start its reader thread: {e}"))
            })?;
        open_result
            .recv()
            .unwrap_or_else(|_| Err(corrupt("its reader stopped while opening it")))?;
        Ok(FatFs {
            jobs: Mutex::new(jobs),
            inodes: Arc::new(PathInodes::new(ROOT_INO, ROOT_INO + 1)),
            owner,
            read,
            budget,
            budget_base,
            attrs: Mutex::new(LruCache::new(
                NonZeroUsize::new(ATTRS_CACHED).unwrap_or(NonZeroUsize::MIN),
            )),
        })
    }

    /// Runs `f` on the serving thread, allowing it `extra` bytes of reads beyond the budget.
    fn call<R: Send + 'static>(
        &self,
        extra: u64,
        f: impl for<'a> FnOnce(&mut Worker<'a>) -> Result<R, FsError> + Send + 'static,
    ) -> Result<R, FsError> {
        let (reply, answer) = mpsc::channel();
        let job: Job = Box::new(move |w| {
            let result = catch_unwind(AssertUnwindSafe(|| f(w)))
                .unwrap_or_else(|_| Err(corrupt("the FAT reader failed on this request")));
            let _ = reply.send(result);
        });
        {
            let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            self.read.store(0, Ordering::Relaxed);
            self.budget
                .store(self.budget_base.saturating_add(extra), Ordering::Relaxed);
            jobs.send(job)
                .map_err(|_| corrupt("its reader thread has stopped"))?;
            answer
                .recv()
                .unwrap_or_else(|_| Err(corrupt("its reader thread has stopped")))
        }
    }
}

/// The attributes of a directory entry, files belonging to `owner`.
fn entry_attr(owner: Owner, entry: &fatfs::DirEntry<'_, FatDisk>) -> Attr {
    let attrs = entry.attributes();
    let read_only = attrs.contains(FileAttributes::READ_ONLY);
    let (kind, perm, size) = if entry.is_dir() {
        (Kind::Dir, 0o755, 0)
    } else if read_only {
        (Kind::File, 0o444, entry.len())
    } else {
        (Kind::File, 0o644, entry.len())
    };
    let mtime = date_time(entry.modified());
    Attr {
        kind,
        size,
        perm,
        uid: owner.uid,
        gid: owner.gid,
        nlink: 1,
        atime: date(entry.accessed()).unwrap_or(mtime),
        mtime,
        ctime: mtime,
        crtime: date_time(entry.created()),
        rdev: 0,
    }
}

/// The root directory's attributes (FAT stores none).
fn root_attr(owner: Owner) -> Attr {
    Attr {
        kind: Kind::Dir,
        size: 0,
        perm: 0o755,
        uid: owner.uid,
        gid: owner.gid,
        nlink: 1,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        rdev: 0,
    }
}

/// The serving thread: opens the filesystem, says how that went, then runs jobs until the
/// `FatFs` is dropped.
fn serve(disk: FatDisk, queue: &mpsc::Receiver<Job>, opened: &mpsc::Sender<Result<(), FsError>>) {
    let fs = match catch_unwind(AssertUnwindSafe(|| FileSystem::new(disk, FsOptions::new()))) {
        Ok(Ok(fs)) => fs,
        Ok(Err(e)) => {
            let _ = opened.send(Err(FsError::from_io(FS, e)));
            return;
        }
        Err(_) => {
            let _ = opened.send(Err(corrupt("the boot sector could not be read")));
            return;
        }
    };
    if opened.send(Ok(())).is_err() {
        return;
    }
    let mut worker = Worker {
        fs: &fs,
        last_file: None,
    };
    for job in queue {
        job(&mut worker);
    }
}

/// `/a/b` as `fatfs` wants it: `a/b`.
fn relative(path: &[u8]) -> Result<String, FsError> {
    let path = std::str::from_utf8(path).map_err(|_| FsError::NotFound)?;
    Ok(path.trim_start_matches('/').to_owned())
}

/// The entry at `path` (`a/b`, not empty): at each level the first entry whose name is
/// exactly that component. `fatfs`'s own lookup matches long and short names without regard
/// to case, so in a damaged directory (two entries of one name, or names differing only in
/// case) it could open another entry than the one listed.
fn find_entry<'a>(fs: &'a Fs, path: &str) -> Result<fatfs::DirEntry<'a, FatDisk>, FsError> {
    let mut dir = fs.root_dir();
    let mut components = path.split('/').peekable();
    while let Some(name) = components.next() {
        let mut found = None;
        for entry in dir.iter() {
            let entry = entry.map_err(from_io)?;
            if entry.file_name() == name {
                found = Some(entry);
                break;
            }
        }
        let entry = found.ok_or(FsError::NotFound)?;
        if components.peek().is_none() {
            return Ok(entry);
        }
        if !entry.is_dir() {
            return Err(FsError::NotDir);
        }
        dir = entry.to_dir();
    }
    Err(FsError::NotFound)
}

fn open_dir<'a>(fs: &'a Fs, path: &str) -> Result<fatfs::Dir<'a, FatDisk>, FsError> {
    if path.is_empty() {
        return Ok(fs.root_dir());
    }
    let entry = find_entry(fs, path)?;
    if entry.is_dir() {
        Ok(entry.to_dir())
    } else {
        Err(FsError::NotDir)
    }
}

fn open_file<'a>(fs: &'a Fs, path: &str) -> Result<OpenFile<'a>, FsError> {
    if path.is_empty() {
        return Err(FsError::IsDir);
    }
    let entry = find_entry(fs, path)?;
    if entry.is_dir() {
        Err(FsError::IsDir)
    } else {
        Ok(entry.to_file())
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn date(d: Date) -> Option<SystemTime> {
    if !(1..=12).contains(&d.month) || !(1..=31).contains(&d.day) {
        return None;
    }
    let days = days_from_civil(i64::from(d.year), i64::from(d.month), i64::from(d.day));
    let secs = u64::try_from(days.checked_mul(86_400)?).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

fn date_time(dt: DateTime) -> SystemTime {
    let t = dt.time;
    let within_day =
        u64::from(t.hour.min(23)) * 3600 + u64::from(t.min.min(59)) * 60 + u64::from(t.sec.min(59));
    date(dt.date)
        .and_then(|d| {
            d.checked_add(
                Duration::from_secs(within_day) + Duration::from_millis(u64::from(t.millis)),
            )
        })
        .unwrap_or(UNIX_EPOCH)
}

impl GuestFs for FatFs {
    fn type_name(&self) -> &'static str {
        "vfat"
    }

    fn root(&self) -> u64 {
        ROOT_INO
    }

    fn attr(&self, ino: u64) -> Result<Attr, FsError> {
        if ino == ROOT_INO {
            return Ok(root_attr(self.owner));
        }
        let cached = self
            .attrs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ino)
            .cloned();
        if let Some(attr) = cached {
            return Ok(attr);
        }
        let path = self.inodes.path(ino)?;
        let split = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
        let (parent, name) = path.split_at(split);
        let name = name.strip_prefix(b"/").unwrap_or(name).to_vec();
        let parent_ino = self
            .inodes
            .number(if parent.is_empty() { b"/" } else { parent });
        self.read_dir(parent_ino)?
            .into_iter()
            .find(|e| e.name == name)
            .and_then(|e| e.attr)
            .ok_or(FsError::NotFound)
    }

    fn read_dir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let path = self.inodes.path(ino)?;
        if path.iter().filter(|&&b| b == b'/').count() > MAX_DEPTH {
            return Err(corrupt(format!(
                "directories nested deeper than {MAX_DEPTH} levels (a directory inside itself?)"
            )));
        }
        let rel = relative(&path)?;
        let inodes = Arc::clone(&self.inodes);
        let owner = self.owner;
        let entries = self.call(0, move |w| {
            let dir = open_dir(w.fs, &rel)?;
            let mut out = Vec::new();
            let mut names = HashSet::new();
            for entry in dir.iter() {
                let entry = entry.map_err(from_io)?;
                let name = entry.file_name().into_bytes();
                // A second entry of a name already listed (a damaged directory) could not be
                // told apart from the first by path: only the first is shown.
                if !usable_name(&name) || !names.insert(name.clone()) {
                    continue;
                }
                if out.len() >= MAX_DIR_ENTRIES {
                    return Err(corrupt(format!(
                        "more than {MAX_DIR_ENTRIES} entries in one directory"
                    )));
                }
                let ino = inodes.number(&join(&path, &name));
                out.push(DirEntry {
                    name,
                    ino,
                    attr: Some(entry_attr(owner, &entry)),
                });
            }
            Ok(out)
        })?;
        let mut attrs = self.attrs.lock().unwrap_or_else(PoisonError::into_inner);
        for e in &entries {
            if let Some(attr) = &e.attr {
                attrs.put(e.ino, attr.clone());
            }
        }
        Ok(entries)
    }

    fn read(&self, ino: u64, offset: u64, len: u32) -> Result<Vec<u8>, FsError> {
        if ino == ROOT_INO {
            return Err(FsError::IsDir);
        }
        let rel = relative(&self.inodes.path(ino)?)?;
        self.call(u64::from(len), move |w| {
            let mut file = match w.last_file.take() {
                Some((last, file)) if last == ino => file,
                _ => open_file(w.fs, &rel)?,
            };
            file.seek(SeekFrom::Start(offset)).map_err(from_io)?;
            let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
            let mut got = 0;
            while got < buf.len() {
                let n = file
                    .read(buf.get_mut(got..).unwrap_or_default())
                    .map_err(from_io)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            buf.truncate(got);
            w.last_file = Some((ino, file));
            Ok(buf)
        })
    }

    fn read_link(&self, _ino: u64) -> Result<Vec<u8>, FsError> {
        Err(FsError::NotSymlink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guestfs::test_support::{
        assert_reads_match, entry, is_pack_error, pattern, Unreadable,
    };
    use std::time::Duration;

    const OWNER: Owner = Owner { uid: 7, gid: 8 };

    /// The image `testdata/make-ext4-fat.sh` made.
    fn image() -> Vec<u8> {
        zstd::decode_all(&include_bytes!("../../testdata/fat.img.zst")[..]).expect("zstd")
    }

    #[test]
    fn files_names_and_attributes_are_as_in_the_image() {
        let fs = FatFs::open(Arc::new(image()), OWNER).expect("open");
        assert!(recognises(&image()[..2048]));
        let readme = entry(&fs, ROOT_INO, "README.TXT");
        let attr = readme.attr.clone().expect("attr");
        assert_eq!(
            (attr.uid, attr.gid, attr.perm, attr.kind),
            (7, 8, 0o644, Kind::File)
        );
        assert_eq!(attr.mtime, UNIX_EPOCH + Duration::from_secs(1_614_834_368));
        assert_eq!(fs.read(readme.ino, 0, 100).expect("read"), b"fat readme\n");
        let long = entry(&fs, ROOT_INO, "A Long Name.text");
        assert_eq!(fs.read(long.ino, 0, 100).expect("read"), b"long name\n");
        let ro = entry(&fs, ROOT_INO, "ro.txt");
        assert_eq!(ro.attr.expect("attr").perm, 0o444);
        let dir = entry(&fs, ROOT_INO, "dir");
        assert_eq!(dir.attr.expect("attr").kind, Kind::Dir);
        assert!(matches!(fs.read(dir.ino, 0, 1), Err(FsError::IsDir)));
        assert!(matches!(fs.read_link(readme.ino), Err(FsError::NotSymlink)));
        assert_eq!(fs.attr(readme.ino).expect("attr"), attr);
    }

    #[test]
    fn reads_at_any_offset_match_the_file() {
        let fs = FatFs::open(Arc::new(image()), OWNER).expect("open");
        let dir = entry(&fs, ROOT_INO, "dir");
        let big = entry(&fs, dir.ino, "big.bin");
        let want = pattern(40960);
        assert_reads_match(&fs, big.ino, &want);
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        assert!(matches!(
            FatFs::open(Arc::new(vec![0u8; 4096]), OWNER),
            Err(FsError::Corrupt { fs: "vfat", .. })
        ));
        // Damage in memory is never reported as an unreadable backup.
        let no_read_error = |r: Result<(), FsError>| {
            assert!(!matches!(r, Err(FsError::Read(_))), "{r:?}");
        };
        let clean = image();
        for sector in (0..clean.len() / 512).step_by(7) {
            let mut img = clean.clone();
            img[sector * 512..(sector + 1) * 512].fill(0xff);
            match FatFs::open(Arc::new(img), OWNER) {
                Ok(fs) => {
                    if let Ok(entries) = fs.read_dir(ROOT_INO) {
                        for e in entries {
                            no_read_error(fs.read(e.ino, 0, 65536).map(drop));
                            no_read_error(fs.read_dir(e.ino).map(drop));
                        }
                    }
                }
                Err(e) => assert!(matches!(e, FsError::Corrupt { .. }), "{e:?}"),
            }
        }
    }

    #[test]
    fn a_fat32_version_other_than_0_0_is_unsupported_not_damage() {
        assert_eq!(fat32_version(&image()[..512]), None, "FAT16");
        // The boot sector as a FAT32 one's of version 1.0 (FAT32 keeps its FAT size
        // elsewhere, the 16-bit field is 0).
        let mut img = image();
        img[SECTORS_PER_FAT_16_AT..SECTORS_PER_FAT_16_AT + 2].fill(0);
        img[FAT32_VERSION_AT..FAT32_VERSION_AT + 2].copy_from_slice(&[0, 1]);
        assert_eq!(fat32_version(&img[..512]), Some([0, 1]));
        let err = FatFs::open(Arc::new(img.clone()), OWNER).err();
        assert!(
            matches!(&err, Some(FsError::Unsupported { fs: "vfat", detail }) if detail == "FAT32 version 1.0"),
            "{err:?}"
        );
        // Version 0.0 is left to `fatfs`, which finds this no valid FAT32.
        img[FAT32_VERSION_AT..FAT32_VERSION_AT + 2].fill(0);
        assert!(matches!(
            FatFs::open(Arc::new(img), OWNER),
            Err(FsError::Corrupt { .. })
        ));
    }

    #[test]
    fn unreadable_backup_bytes_are_read_errors_not_damage() {
        let dev = Arc::new(Unreadable::new(image()));
        let fs = FatFs::open(dev.clone(), OWNER).expect("open");
        let readme = entry(&fs, ROOT_INO, "README.TXT");
        dev.fail();
        let err = fs
            .read(readme.ino, 0, 100)
            .expect_err("its cluster is unreadable");
        assert!(
            matches!(&err, FsError::Read(e) if is_pack_error(e)),
            "the repository's error, not damage: {err:?}"
        );
        let err = FatFs::open(dev, OWNER).err();
        assert!(
            matches!(&err, Some(FsError::Read(e)) if is_pack_error(e)),
            "{err:?}"
        );
    }

    /// The image with the short name of `ro.txt` (no long name) overwritten by `short`
    /// with the NT lower-case flags `case`.
    fn image_with_ro_renamed(short: &[u8; 11], case: u8) -> Vec<u8> {
        let mut img = image();
        let at = img
            .chunks(32)
            .position(|e| e.starts_with(b"RO      TXT"))
            .expect("ro.txt's entry")
            * 32;
        img[at..at + 11].copy_from_slice(short);
        img[at + 12] = case;
        img
    }

    #[test]
    fn a_name_twice_in_a_directory_is_listed_once_as_its_first_entry() {
        let fs =
            FatFs::open(Arc::new(image_with_ro_renamed(b"README  TXT", 0)), OWNER).expect("open");
        let entries = fs.read_dir(ROOT_INO).expect("list");
        let readmes: Vec<_> = entries.iter().filter(|e| e.name == b"README.TXT").collect();
        assert_eq!(readmes.len(), 1, "{entries:?}");
        let listed = readmes[0].attr.clone().expect("attr");
        assert_eq!(listed.perm, 0o644, "the first entry, not the read-only one");
        assert_eq!(fs.attr(readmes[0].ino).expect("attr"), listed);
        assert_eq!(
            fs.read(readmes[0].ino, 0, 100).expect("read"),
            b"fat readme\n"
        );
    }

    #[test]
    fn names_differing_only_in_case_open_their_own_entries() {
        let img = image_with_ro_renamed(b"README  TXT", 0x18);
        let ro_text = {
            let fs = FatFs::open(Arc::new(image()), OWNER).expect("open");
            let ro = entry(&fs, ROOT_INO, "ro.txt");
            fs.read(ro.ino, 0, 100).expect("read")
        };
        let fs = FatFs::open(Arc::new(img), OWNER).expect("open");
        let upper = entry(&fs, ROOT_INO, "README.TXT");
        let lower = entry(&fs, ROOT_INO, "readme.txt");
        assert_ne!(upper.ino, lower.ino);
        assert_eq!(fs.read(upper.ino, 0, 100).expect("read"), b"fat readme\n");
        assert_eq!(fs.read(lower.ino, 0, 100).expect("read"), ro_text);
        assert_eq!(fs.attr(lower.ino).expect("attr").perm, 0o444);
    }

    #[test]
    fn dates_convert_like_the_calendar() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(
            date(Date {
                year: 2021,
                month: 13,
                day: 1
            }),
            None
        );
        assert_eq!(read_budget(0), 1 << 20);
        assert_eq!(read_budget(u64::MAX), 256 << 20);
    }
}
