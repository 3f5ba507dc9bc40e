//! NTFS, read-only, through the `ntfs` crate (0.4.0).
//!
//! What is shown, and how it matches what ntfs-3g shows of the same volume:
//!
//! - Inode numbers are MFT record numbers (the root is 5), as in ntfs-3g; hard links share
//!   one. Records 0–15 (`$MFT` … `$Extend`, and reserved ones) are hidden, in every directory,
//!   as ntfs-3g hides them; so is the root's entry for itself. Files with the HIDDEN attribute
//!   are shown (ntfs-3g's default too).
//! - A name is listed once: DOS 8.3 names (namespace DOS) are skipped, names are UTF-16
//!   converted to UTF-8 (a lone surrogate becomes U+FFFD). Names that cannot be a POSIX file
//!   name (empty, `.`, `..`, containing `/` or NUL) are skipped.
//! - Attributes: size of the unnamed `$DATA` (0 for directories, the target's length for
//!   symlinks); permissions 0o755 / 0o644, 0o555 / 0o444 with the READ_ONLY attribute, 0o777
//!   for symlinks; owner and group of the user who mounted; the link count is the number of
//!   names that are not DOS names (ntfs-3g shows the record's count, which counts a DOS name
//!   too); times from `$STANDARD_INFORMATION`.
//! - Contents: the unnamed `$DATA`, resident or not, sparse or not; bytes past its initialized
//!   size read as zeros. Named streams are not shown. Compressed and encrypted data give an
//!   error (the crate cannot decompress LZNT1; EFS needs keys).
//! - Symlinks, FIFOs, sockets and device nodes: Interix files (what `ln -s` makes on an
//!   ntfs-3g mount), WSL reparse points and Windows symlinks and junctions, see [`special`].
//!   Device numbers are not shown.
//!
//! Not supported: an MFT fragmented enough to need an attribute list of its own (the crate
//! reads only the MFT's first record), index records smaller than a cluster (the crate counts
//! their VCNs in clusters), compressed and encrypted data, named streams, the `$UpCase`
//! table (names are compared byte for byte, never case-insensitively), journal replay (a
//! volume that was not cleanly unmounted shows what its metadata says, as ntfs-3g's
//! read-only mount does).
//!
//! Untrusted bytes: every file and index record the crate parses was checked first
//! ([`record`]), so that the crate never indexes outside it; directories are walked here, not
//! by the crate's iterator (which loops forever on an index whose nodes point back to each
//! other), with a cap on entries, nodes and depth; a panic in the crate all the same becomes
//! an error. Each call reads through its own cursor, so calls run concurrently.
//!
//! The parts: [`mft`] finds and checks MFT records and loads files from them, [`attributes`]
//! reads a file's attributes (names, `$STANDARD_INFORMATION`, `$DATA`), [`node`] decides what
//! a file is shown as, [`index`] walks a directory's `$I30` index; [`record`] and [`special`]
//! are the byte-level checks and the special-file formats under them. Errors say whose fault
//! they are: the crate's complaints are damage but for the limits it names as unsupported, and
//! a read of the partition that fails is the repository's error.

mod attributes;
mod index;
mod mft;
mod node;
mod record;
mod special;

#[cfg(test)]
mod fixture;

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use ntfs::{Ntfs, NtfsError};

use self::record::ValueMap;
use super::{Attr, Device, DeviceCursor, DirEntry, FsError, GuestFs, Owner};

/// The filesystem's name in errors.
const FS: &str = "ntfs";
/// The root directory's MFT record.
const ROOT: u64 = 5;
/// Records below this are metafiles or reserved (ntfs-3g's `FILE_first_user`).
const FIRST_USER_RECORD: u64 = 16;
/// File record sizes read (NTFS uses 1024, or 4096 on 4Kn disks).
const FILE_RECORD_SIZES: std::ops::RangeInclusive<u32> = 1024..=4096;

/// Whether the partition starts with an NTFS boot sector.
pub fn recognises(head: &[u8]) -> bool {
    head.get(3..11) == Some(b"NTFS    ")
}

/// An NTFS filesystem.
pub struct NtfsFs {
    dev: Arc<dyn Device>,
    ntfs: Ntfs,
    mft: ValueMap,
    owner: Owner,
}

impl NtfsFs {
    /// Opens the filesystem in `dev`; files belong to `owner`.
    pub fn open(dev: Arc<dyn Device>, owner: Owner) -> Result<NtfsFs, FsError> {
        guarded(|| {
            // Read here first: the crate panics when it cannot read the whole boot sector.
            let mut boot = [0u8; 512];
            if dev.len() < 512 {
                return Err(corrupt("the partition is smaller than a boot sector"));
            }
            dev.read_at(0, &mut boot)
                .map_err(|e| FsError::device(FS, e))?;
            let mut cursor = DeviceCursor::new(Arc::clone(&dev));
            let ntfs = Ntfs::new(&mut cursor).map_err(crate_error)?;
            check_record_size(ntfs.file_record_size())?;
            if ntfs.size() > dev.len() {
                return Err(corrupt(format!(
                    "the filesystem is {} bytes long, its partition only {}",
                    ntfs.size(),
                    dev.len()
                )));
            }
            let mft = mft::map(&ntfs, &*dev)?;
            let fs = NtfsFs {
                dev,
                ntfs,
                mft,
                owner,
            };
            let root = fs.load(&mut cursor, ROOT).map_err(|e| match e {
                FsError::NotFound => {
                    corrupt("the root directory's record is outside the MFT or free")
                }
                e => e,
            })?;
            if !root.raw.is_directory() {
                return Err(corrupt("the root is not a directory"));
            }
            Ok(fs)
        })
    }

    fn cursor(&self) -> DeviceCursor {
        DeviceCursor::new(Arc::clone(&self.dev))
    }

    fn read_dir_unguarded(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let mut cursor = self.cursor();
        let dir = self.file(&mut cursor, ino)?;
        if !self.is_dir(&mut cursor, &dir)? {
            return Err(FsError::NotDir);
        }
        self.list(&mut cursor, &dir)
    }

    fn read_unguarded(&self, ino: u64, offset: u64, len: u32) -> Result<Vec<u8>, FsError> {
        let mut cursor = self.cursor();
        let f = self.file(&mut cursor, ino)?;
        if self.is_dir(&mut cursor, &f)? {
            return Err(FsError::IsDir);
        }
        self.read_data(&mut cursor, &f, offset, len)
    }

    fn read_link_unguarded(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let mut cursor = self.cursor();
        let f = self.file(&mut cursor, ino)?;
        let info = attributes::std_info(&f.raw)?;
        self.kind(&mut cursor, &f, &info)?
            .1
            .ok_or(FsError::NotSymlink)
    }
}

impl GuestFs for NtfsFs {
    fn type_name(&self) -> &'static str {
        FS
    }

    fn root(&self) -> u64 {
        ROOT
    }

    fn attr(&self, ino: u64) -> Result<Attr, FsError> {
        guarded(|| {
            let mut cursor = self.cursor();
            let f = self.file(&mut cursor, ino)?;
            Ok(self.attr_of(&self.inspect(&mut cursor, &f)?))
        })
    }

    fn read_dir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        guarded(|| self.read_dir_unguarded(ino))
    }

    fn read(&self, ino: u64, offset: u64, len: u32) -> Result<Vec<u8>, FsError> {
        guarded(|| self.read_unguarded(ino, offset, len))
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        guarded(|| self.read_link_unguarded(ino))
    }
}

/// Refuses file records of a size the checks and the crate are not made for: a size that is
/// not a power of two is damage, another power of two is a layout vmstash does not read.
fn check_record_size(size: u32) -> Result<(), FsError> {
    if FILE_RECORD_SIZES.contains(&size) && size.is_power_of_two() {
        Ok(())
    } else if size.is_power_of_two() {
        Err(FsError::unsupported(
            FS,
            format!("file records of {size} bytes"),
        ))
    } else {
        Err(corrupt(format!("file records of {size} bytes")))
    }
}

/// The crate's error, by whose fault it is: a failed read of the partition is the device's
/// error (carried through the cursor, or through the crate's own `io::Error` wrapping of its
/// errors); the three limits the crate calls unsupported are unsupported; everything else it
/// says is about bytes it found wrong: damage.
fn crate_error(e: NtfsError) -> FsError {
    match e {
        NtfsError::Io(io) => io_error(io),
        e @ (NtfsError::UnsupportedAttributeType { .. }
        | NtfsError::UnsupportedClusterSize { .. }
        | NtfsError::UnsupportedSectorSize { .. }) => FsError::unsupported(FS, e),
        // `UnsupportedFileNamespace` is damage: no NTFS version defines namespaces past 3.
        e => corrupt(e),
    }
}

/// An I/O error out of the crate: the device's error it carries, the crate's error it wraps
/// (the crate turns its errors into `io::Error`s behind `Read`), or else damage (a value cut
/// short).
fn io_error(io: io::Error) -> FsError {
    let io = match io.downcast::<NtfsError>() {
        Ok(inner) => return crate_error(inner),
        Err(io) => io,
    };
    FsError::from_io(FS, io)
}

/// Damaged metadata.
fn corrupt(detail: impl ToString) -> FsError {
    FsError::corrupt(FS, detail)
}

/// The error detail of a panic in the crate.
const PANICKED: &str = "the ntfs crate failed on this filesystem's metadata";

/// Runs `op`, turning a panic (in the crate, on bytes the checks let through) into an error:
/// damage, though the crate cannot say what it found wrong.
fn guarded<T>(op: impl FnOnce() -> Result<T, FsError>) -> Result<T, FsError> {
    catch_unwind(AssertUnwindSafe(op)).unwrap_or_else(|_| Err(corrupt(PANICKED)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::fixture::{entry, fixture, image, open, read_all, record_offset, tree, OWNER};
    use super::*;
    use crate::guestfs::test_support::{is_pack_error, Unreadable};
    use crate::guestfs::{DeviceError, Kind, MAX_LOCAL_INO};

    /// What ntfs-3g showed of the fixture (`testdata/make-ntfs.sh`).
    const EXPECTED: &str = include_str!("../../testdata/ntfs.expected");

    /// `%T@` of find: seconds, a dot, ten fractional digits.
    fn find_time(t: SystemTime) -> String {
        let d = t.duration_since(UNIX_EPOCH).expect("after 1970");
        format!("{}.{:09}0", d.as_secs(), d.subsec_nanos())
    }

    #[test]
    fn recognises_the_boot_sector() {
        let bytes = image();
        assert!(recognises(&bytes[..512]));
        assert!(!recognises(&[0u8; 512]));
        assert!(!recognises(b"EB"));
    }

    #[test]
    fn shows_what_ntfs_3g_shows() {
        let fs = fixture();
        let tree = tree(&fs);
        let mut expected_paths = Vec::new();
        for line in EXPECTED.lines() {
            let f: Vec<&str> = line.split('|').collect();
            let [path, ty, size, nlink, ino, mtime, target] = f[..] else {
                panic!("bad line {line}");
            };
            expected_paths.push(path.to_owned());
            let e = tree
                .get(path)
                .unwrap_or_else(|| panic!("{path} not listed"));
            let attr = e.attr.as_ref().expect("attr");
            let kind = match ty {
                "f" => Kind::File,
                "d" => Kind::Dir,
                "l" => Kind::Symlink,
                "p" => Kind::Fifo,
                "b" => Kind::BlockDevice,
                other => panic!("type {other}"),
            };
            assert_eq!(attr.kind, kind, "{path}");
            assert_eq!(e.ino.to_string(), ino, "{path}");
            assert_eq!(fs.attr(e.ino).expect("attr"), *attr, "{path}");
            // ntfs-3g gives directories their index's size, and counts a DOS name as a link.
            // Its absolute Windows links point at its mount point: their length differs.
            if kind != Kind::Dir && !target.starts_with("@MNT@") {
                assert_eq!(attr.size.to_string(), size, "{path}");
            }
            let links = if path == "Long file name.txt" {
                "1"
            } else {
                nlink
            };
            assert_eq!(attr.nlink.to_string(), links, "{path}");
            assert_eq!(find_time(attr.mtime), mtime, "{path}");
            if kind == Kind::Symlink {
                // ntfs-3g points absolute Windows links at its mount point; here they are
                // relative (all these links are in the root).
                let target = target.strip_prefix("@MNT@/").unwrap_or(target);
                let got = fs.read_link(e.ino).expect("read_link");
                assert_eq!(String::from_utf8(got).expect("UTF-8"), target, "{path}");
            }
        }
        let listed: Vec<&String> = tree.keys().collect();
        expected_paths.sort();
        assert_eq!(listed, expected_paths.iter().collect::<Vec<_>>());
    }

    #[test]
    fn metafiles_dos_names_and_self_are_hidden() {
        let fs = fixture();
        let root = fs.read_dir(fs.root()).expect("root");
        for e in &root {
            assert!(e.ino >= FIRST_USER_RECORD, "{e:?}");
            assert!(!e.name.starts_with(b"$") && e.name != b".", "{e:?}");
        }
        assert!(root.iter().any(|e| e.name == b"Long file name.txt"));
        assert!(!root.iter().any(|e| e.name == b"LONGFI~1.TXT"));
        for ino in [0, 1, 3, 11, 15] {
            assert!(matches!(fs.attr(ino), Err(FsError::NotFound)), "{ino}");
        }
    }

    #[test]
    fn reads_contents() {
        let fs = fixture();
        let file = |path: &str| entry(&fs, path).ino;
        assert_eq!(read_all(&fs, file("hello.txt")), b"Hello, NTFS!\n");
        assert_eq!(read_all(&fs, file("Grüße-日本.txt")), b"unicode\n");
        assert_eq!(read_all(&fs, file("empty")), b"");
        assert_eq!(read_all(&fs, file("streams.txt")), b"main\n");
        let small: Vec<u8> = (0..5000u32)
            .map(|i| u8::try_from(i % 251).expect("byte"))
            .collect();
        assert_eq!(read_all(&fs, file("small.bin")), small);
        let big: Vec<u8> = (0..307_200u32)
            .map(|i| u8::try_from(i % 253).expect("byte"))
            .collect();
        let ino = file("big.bin");
        assert_eq!(read_all(&fs, ino), big);
        // Unaligned, across clusters; short at the end; nothing past it.
        assert_eq!(fs.read(ino, 4093, 10_000).expect("read"), big[4093..14_093]);
        assert_eq!(fs.read(ino, 307_190, 100).expect("read"), big[307_190..]);
        assert!(fs.read(ino, 307_200, 100).expect("read").is_empty());
        assert!(fs.read(ino, u64::MAX, 100).expect("read").is_empty());
        let mut sparse = vec![0u8; 204_800];
        sparse.extend(b"tail!\n");
        assert_eq!(read_all(&fs, file("sparse.bin")), sparse);
    }

    #[test]
    fn hard_links_share_an_inode() {
        let fs = fixture();
        let a = entry(&fs, "hello.txt");
        let b = entry(&fs, "docs/link-to-hello.txt");
        assert_eq!(a.ino, b.ino);
        assert_eq!(a.attr.as_ref().expect("attr").nlink, 2);
        assert_eq!(a.attr, b.attr);
    }

    #[test]
    fn wrong_requests_get_their_errors() {
        let fs = fixture();
        let docs = entry(&fs, "docs").ino;
        let hello = entry(&fs, "hello.txt").ino;
        assert!(matches!(fs.read(docs, 0, 10), Err(FsError::IsDir)));
        assert!(matches!(fs.read_link(hello), Err(FsError::NotSymlink)));
        assert!(matches!(fs.read_link(docs), Err(FsError::NotSymlink)));
        assert!(matches!(fs.read_dir(hello), Err(FsError::NotDir)));
        for ino in [2, 1 << 30, MAX_LOCAL_INO, MAX_LOCAL_INO + 1, u64::MAX] {
            assert!(matches!(fs.attr(ino), Err(FsError::NotFound)), "{ino}");
            assert!(matches!(fs.read_dir(ino), Err(FsError::NotFound)), "{ino}");
        }
    }

    #[test]
    fn concurrent_calls_agree() {
        fn shared<T: Send + Sync>(_: &T) {}
        let fs = Arc::new(fixture());
        shared(&*fs);
        let big = entry(&fs, "big.bin").ino;
        let dir = entry(&fs, "bigdir").ino;
        let expected = (read_all(&fs, big), fs.read_dir(dir).expect("read_dir"));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let fs = Arc::clone(&fs);
                std::thread::spawn(move || {
                    (read_all(&fs, big), fs.read_dir(dir).expect("read_dir"))
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().expect("thread") == expected);
        }
    }

    /// Opens `bytes` and visits everything; returns the errors met. Fails on a caught panic,
    /// and on a read error (the bytes are in memory: anything wrong with them is damage, or
    /// something unsupported).
    fn explore(bytes: Vec<u8>) -> Vec<FsError> {
        let fs = match open(bytes) {
            Ok(fs) => fs,
            Err(e) => {
                assert!(!e.to_string().contains(PANICKED), "{e}");
                assert!(!matches!(e, FsError::Read(_)), "{e:?}");
                return vec![e];
            }
        };
        let mut errors = Vec::new();
        let mut queue = vec![fs.root()];
        let mut seen = HashSet::new();
        while let Some(ino) = queue.pop() {
            if !seen.insert(ino) || seen.len() > 500 {
                continue;
            }
            let results = [
                fs.attr(ino).map(|_| ()),
                fs.read(ino, 0, 70_000).map(|_| ()),
                fs.read_link(ino).map(|_| ()),
            ];
            errors.extend(results.into_iter().filter_map(Result::err));
            match fs.read_dir(ino) {
                Ok(entries) => queue.extend(entries.iter().map(|e| e.ino)),
                Err(e) => errors.push(e),
            }
        }
        for e in &errors {
            assert!(!e.to_string().contains(PANICKED), "{e}");
            assert!(!matches!(e, FsError::Read(_)), "{e:?}");
        }
        errors
    }

    #[test]
    fn damaged_images_give_errors_not_panics() {
        let good = image();
        for len in [0, 100, 512, 4096, 0x4000 + 2048, 1 << 20, good.len() - 512] {
            let errors = explore(good[..len].to_vec());
            assert!(!errors.is_empty(), "truncated to {len}");
        }
        // Pseudo-random changes to the MFT (records 0 to 300) and to everything else.
        let mft = record_offset(&good, 0);
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % u64::try_from(below).expect("u64")).expect("usize")
        };
        for round in 0..1000 {
            let mut bytes = good.clone();
            for _ in 0..1 + next(4) {
                let at = if round % 4 == 0 {
                    next(bytes.len())
                } else {
                    mft + next(300 * 1024)
                };
                bytes[at] ^= u8::try_from(1 + next(255)).expect("byte");
            }
            explore(bytes);
        }
    }

    #[test]
    fn a_truncated_volume_is_damaged() {
        let good = image();
        for len in [0, 100, 4096, 1 << 20] {
            let err = open(good[..len].to_vec()).err();
            assert!(
                matches!(err, Some(FsError::Corrupt { fs: "ntfs", .. })),
                "truncated to {len}: {err:?}"
            );
        }
    }

    #[test]
    fn unreadable_backup_bytes_are_read_errors_not_damage() {
        let dev = Arc::new(Unreadable::new(image()));
        let fs = NtfsFs::open(dev.clone(), OWNER).expect("open");
        let hello = entry(&fs, "hello.txt").ino;
        let big = entry(&fs, "big.bin").ino;
        dev.fail();
        for (what, result) in [
            ("attr", fs.attr(hello).map(drop)),
            ("read", fs.read(big, 0, 100).map(drop)),
            ("read_dir", fs.read_dir(fs.root()).map(drop)),
        ] {
            let err = result.expect_err(what);
            assert!(
                matches!(&err, FsError::Read(e) if is_pack_error(e)),
                "{what}: the repository's error, not damage: {err:?}"
            );
        }
        let err = NtfsFs::open(dev, OWNER).err();
        assert!(
            matches!(&err, Some(FsError::Read(e)) if is_pack_error(e)),
            "{err:?}"
        );
    }

    #[test]
    fn crate_errors_keep_whose_fault_they_are() {
        let repo = Arc::new(vmstash_repo::Error::BlobNotFound("1a2b".into()));
        let device = io::Error::other(DeviceError::Read(Arc::clone(&repo)));
        assert!(matches!(
            crate_error(NtfsError::Io(device)),
            FsError::Read(e) if Arc::ptr_eq(&e, &repo)
        ));
        // The crate wraps its own errors in `io::Error`s behind `Read`: unwrapped, damage.
        let wrapped = io::Error::other(NtfsError::InvalidMftLcn);
        assert!(matches!(
            crate_error(NtfsError::Io(wrapped)),
            FsError::Corrupt { fs: "ntfs", .. }
        ));
        let short = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert!(matches!(
            crate_error(NtfsError::Io(short)),
            FsError::Corrupt { .. }
        ));
        let cluster = NtfsError::UnsupportedClusterSize {
            min: 512,
            max: 2 << 20,
            actual: 4 << 20,
        };
        assert!(matches!(
            crate_error(cluster),
            FsError::Unsupported { fs: "ntfs", .. }
        ));
        assert!(check_record_size(1024).is_ok() && check_record_size(4096).is_ok());
        assert!(matches!(
            check_record_size(8192),
            Err(FsError::Unsupported { .. })
        ));
        assert!(matches!(
            check_record_size(1000),
            Err(FsError::Corrupt { .. })
        ));
    }
}
