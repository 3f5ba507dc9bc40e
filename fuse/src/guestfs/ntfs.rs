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

mod record;
mod special;

use std::collections::HashSet;
use std::io::{ErrorKind, SeekFrom};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::SystemTime;

use ntfs::attribute_value::NtfsAttributeValue;
use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{
    NtfsFileName, NtfsFileNamespace, NtfsIndexAllocation, NtfsIndexRoot,
};
use ntfs::types::Vcn;
use ntfs::{
    Ntfs, NtfsAttributeFlags, NtfsAttributeItem, NtfsAttributeType, NtfsError, NtfsFile,
    NtfsIndexEntry, NtfsIndexEntryFlags, NtfsReadSeek,
};

use self::record::{FileRecord, ValueMap};
use self::special::Special;
use super::{
    time_from_unix, Attr, Device, DeviceCursor, DirEntry, FsError, GuestFs, Kind, Owner,
    MAX_LOCAL_INO,
};

/// The filesystem's name in errors.
const FS: &str = "ntfs";
/// The root directory's MFT record.
const ROOT: u64 = 5;
/// Records below this are metafiles or reserved (ntfs-3g's `FILE_first_user`).
const FIRST_USER_RECORD: u64 = 16;
/// The attribute type codes read from raw records.
const TYPE_STANDARD_INFORMATION: u32 = 0x10;
const TYPE_ATTRIBUTE_LIST: u32 = 0x20;
const TYPE_DATA: u32 = 0x80;
/// The name of a directory's file name index.
const DIRECTORY_INDEX: &str = "$I30";
/// File attributes (`$STANDARD_INFORMATION`) that change what a file is shown as.
const READ_ONLY: u32 = 0x0001;
const HIDDEN: u32 = 0x0002;
const SYSTEM: u32 = 0x0004;
const REPARSE_POINT: u32 = 0x0400;
const RECALL_ON_OPEN: u32 = 0x0004_0000;
/// 100-ns intervals from 1601-01-01 (NTFS times) to 1970-01-01.
const NT_TO_UNIX: i128 = 116_444_736_000_000_000;
const NT_TICKS_PER_SECOND: i128 = 10_000_000;

// Caps on what a damaged or hostile volume can make one call do.
/// Entries of one directory.
const MAX_DIR_ENTRIES: usize = 1_000_000;
/// Index nodes read for one directory (a million names fill some 40,000 of 4 KiB).
const MAX_INDEX_NODES: usize = 100_000;
/// B-tree depth (a real one is 3 or 4 deep).
const MAX_INDEX_DEPTH: u32 = 64;
/// Attributes of one file, counting those in extension records.
const MAX_ATTRIBUTES: usize = 65_536;
/// An attribute list's bytes (32 per attribute in another record: 32,768 of them).
const MAX_ATTRIBUTE_LIST: u64 = 1 << 20;
/// Directories between a Windows symlink and the root.
const MAX_PATH_DEPTH: usize = 1024;

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

/// A file's record, as the crate's file and as checked bytes.
struct Loaded<'n> {
    file: NtfsFile<'n>,
    raw: FileRecord,
}

/// `$STANDARD_INFORMATION`: NTFS times and file attributes.
struct StdInfo {
    created: u64,
    modified: u64,
    changed: u64,
    accessed: u64,
    attributes: u32,
}

/// What a file is shown as.
struct Node {
    kind: Kind,
    size: u64,
    nlink: u32,
    info: StdInfo,
}

/// The state of one directory walk.
struct Walk<'a, 'n, 'f> {
    cursor: &'a mut DeviceCursor,
    allocation: Option<(
        &'a NtfsIndexAllocation<'n, 'f>,
        &'a NtfsAttributeValue<'n, 'f>,
    )>,
    record_size: u32,
    visited: HashSet<i64>,
    entries: Vec<(u64, NtfsFileName)>,
}

impl NtfsFs {
    /// Opens the filesystem in `dev`; files belong to `owner`.
    pub fn open(dev: Arc<dyn Device>, owner: Owner) -> Result<NtfsFs, FsError> {
        guarded(|| {
            // Read here first: the crate panics when it cannot read the whole boot sector.
            let mut boot = [0u8; 512];
            if dev.len() < 512 {
                return Err(FsError::damaged(
                    FS,
                    "the partition is smaller than a boot sector",
                ));
            }
            dev.read_at(0, &mut boot).map_err(FsError::Read)?;
            let mut cursor = DeviceCursor::new(Arc::clone(&dev));
            let ntfs = Ntfs::new(&mut cursor).map_err(crate_error)?;
            let record_size = ntfs.file_record_size();
            if !(1024..=4096).contains(&record_size) || !record_size.is_power_of_two() {
                return Err(FsError::damaged(
                    FS,
                    format!("file records of {record_size} bytes are not supported"),
                ));
            }
            if ntfs.size() > dev.len() {
                return Err(FsError::damaged(
                    FS,
                    format!(
                        "the filesystem is {} bytes long, its partition only {}",
                        ntfs.size(),
                        dev.len()
                    ),
                ));
            }
            let mft = Self::mft_map(&ntfs, &*dev)?;
            let fs = NtfsFs {
                dev,
                ntfs,
                mft,
                owner,
            };
            let root = fs.load(&mut cursor, ROOT)?;
            if !root.raw.is_directory() {
                return Err(FsError::damaged(FS, "the root is not a directory"));
            }
            Ok(fs)
        })
    }

    fn cursor(&self) -> DeviceCursor {
        DeviceCursor::new(Arc::clone(&self.dev))
    }

    fn record_size(&self) -> usize {
        usize::try_from(self.ntfs.file_record_size()).unwrap_or(usize::MAX)
    }

    /// Where the MFT's records are, from its own record, which the crate reads first for
    /// every file: at the boot sector's MFT position, and again where the MFT's data starts,
    /// which must be the same place.
    fn mft_map(ntfs: &Ntfs, dev: &dyn Device) -> Result<ValueMap, FsError> {
        let at = ntfs
            .mft_position()
            .value()
            .ok_or_else(|| FsError::damaged(FS, "no MFT position"))?
            .get();
        let len = usize::try_from(ntfs.file_record_size()).unwrap_or(usize::MAX);
        let mft = FileRecord::parse(read_raw(dev, at, len)?).map_err(damaged)?;
        let map = mft
            .attributes()
            .find(|a| a.ty() == TYPE_DATA)
            .and_then(|data| data.value_map(u64::from(ntfs.cluster_size())))
            .ok_or_else(|| FsError::damaged(FS, "the MFT has no non-resident $DATA"))?;
        if map.position(0) != Some(at) {
            return Err(FsError::damaged(
                FS,
                "the MFT's data does not start where the boot sector says",
            ));
        }
        Ok(map)
    }

    /// Where MFT record `number` is (the crate reads it from there).
    fn record_position(&self, number: u64) -> Result<u64, FsError> {
        number
            .checked_mul(u64::from(self.ntfs.file_record_size()))
            .and_then(|offset| self.mft.position(offset))
            .ok_or(FsError::NotFound)
    }

    /// Reads and checks MFT record `number`.
    fn checked_record(&self, number: u64) -> Result<FileRecord, FsError> {
        let at = self.record_position(number)?;
        FileRecord::parse(read_raw(&*self.dev, at, self.record_size())?).map_err(damaged)
    }

    /// File `number`: its record and any extension records checked, then loaded by the crate.
    fn load(&self, cursor: &mut DeviceCursor, number: u64) -> Result<Loaded<'_>, FsError> {
        let raw = self.checked_record(number)?;
        if !raw.in_use() || raw.base_record() != 0 {
            return Err(FsError::NotFound);
        }
        let file = self.ntfs.file(cursor, number).map_err(crate_error)?;
        // The crate found the record through the same runs; should it have read other bytes
        // than those checked, none of its attributes are touched.
        if file.position().value().map(|p| p.get()) != Some(self.record_position(number)?) {
            return Err(FsError::damaged(FS, "the MFT's runs are ambiguous"));
        }
        if raw.attributes().any(|a| a.ty() == TYPE_ATTRIBUTE_LIST) {
            self.check_extension_records(cursor, &file)?;
        }
        Ok(Loaded { file, raw })
    }

    /// Checks the records that `file`'s attribute list points to: the crate loads them while
    /// it walks the file's attributes.
    fn check_extension_records(
        &self,
        cursor: &mut DeviceCursor,
        file: &NtfsFile<'_>,
    ) -> Result<(), FsError> {
        let mut list = None;
        for attribute in file.attributes_raw() {
            let attribute = attribute.map_err(crate_error)?;
            if attribute.ty().ok() == Some(NtfsAttributeType::AttributeList) {
                list = Some(attribute);
                break;
            }
        }
        let Some(list) = list else {
            return Ok(());
        };
        // Read here first: the crate panics on an entry cut short (it reads entry headers
        // with binrw, whose errors but plain I/O ones it takes for impossible).
        let len = list.value_length();
        if len > MAX_ATTRIBUTE_LIST {
            return Err(FsError::damaged(
                FS,
                format!("an attribute list of {len} bytes"),
            ));
        }
        let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
        let mut value = list.value(cursor).map_err(crate_error)?;
        value.read_exact(cursor, &mut bytes).map_err(crate_error)?;
        let own = file.file_record_number();
        for number in record::attribute_list_records(&bytes).map_err(damaged)? {
            if number != own {
                self.checked_record(number)?;
            }
        }
        Ok(())
    }

    /// The first attribute of `file` of type `ty` named `name` ("" for none), looking into
    /// extension records too.
    fn find_attribute<'n, 'f>(
        &self,
        cursor: &mut DeviceCursor,
        file: &'f NtfsFile<'n>,
        ty: NtfsAttributeType,
        name: &str,
    ) -> Result<Option<NtfsAttributeItem<'n, 'f>>, FsError> {
        let mut items = file.attributes();
        let mut seen = 0usize;
        while let Some(item) = items.next(cursor) {
            seen += 1;
            if seen > MAX_ATTRIBUTES {
                return Err(FsError::damaged(FS, "a file has too many attributes"));
            }
            let item = item.map_err(crate_error)?;
            let matches = {
                let attribute = item.to_attribute().map_err(crate_error)?;
                attribute.ty().ok() == Some(ty) && attribute.name().map_err(crate_error)? == name
            };
            if matches {
                return Ok(Some(item));
            }
        }
        Ok(None)
    }

    /// `file`'s names, DOS names left out.
    fn names(
        &self,
        cursor: &mut DeviceCursor,
        file: &NtfsFile<'_>,
    ) -> Result<Vec<NtfsFileName>, FsError> {
        let mut names = Vec::new();
        let mut items = file.attributes();
        let mut seen = 0usize;
        while let Some(item) = items.next(cursor) {
            seen += 1;
            if seen > MAX_ATTRIBUTES {
                return Err(FsError::damaged(FS, "a file has too many attributes"));
            }
            let item = item.map_err(crate_error)?;
            let attribute = item.to_attribute().map_err(crate_error)?;
            if attribute.ty().ok() != Some(NtfsAttributeType::FileName) {
                continue;
            }
            // Resident only: the crate reads a name with binrw, and panics on a read error.
            if !attribute.is_resident() {
                return Err(FsError::damaged(FS, "a non-resident $FILE_NAME"));
            }
            let name = attribute
                .structured_value::<_, NtfsFileName>(cursor)
                .map_err(crate_error)?;
            if name.namespace() != NtfsFileNamespace::Dos {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// The unnamed `$DATA` attribute's value length and its first `limit` bytes (none when
    /// `limit` is 0); `None` without such an attribute.
    fn data_head(
        &self,
        cursor: &mut DeviceCursor,
        file: &NtfsFile<'_>,
        limit: u64,
    ) -> Result<Option<(u64, Vec<u8>)>, FsError> {
        let Some(item) = self.find_attribute(cursor, file, NtfsAttributeType::Data, "")? else {
            return Ok(None);
        };
        let attribute = item.to_attribute().map_err(crate_error)?;
        let len = attribute.value_length();
        if limit == 0 {
            return Ok(Some((len, Vec::new())));
        }
        let mut head = vec![0u8; usize::try_from(len.min(limit)).unwrap_or(0)];
        let mut value = attribute.value(cursor).map_err(crate_error)?;
        value.read_exact(cursor, &mut head).map_err(crate_error)?;
        Ok(Some((len, head)))
    }

    /// What `f` is shown as.
    fn inspect(&self, cursor: &mut DeviceCursor, f: &Loaded<'_>) -> Result<Node, FsError> {
        let info = std_info(&f.raw)?;
        let nlink = u32::try_from(self.names(cursor, &f.file)?.len())
            .unwrap_or(u32::MAX)
            .max(1);
        let (kind, target) = self.kind(cursor, f, &info)?;
        let size = match (&kind, &target) {
            (Kind::Dir, _) => 0,
            (_, Some(target)) => u64::try_from(target.len()).unwrap_or(u64::MAX),
            _ => self
                .data_head(cursor, &f.file, 0)?
                .map_or(0, |(len, _)| len),
        };
        Ok(Node {
            kind,
            size,
            nlink,
            info,
        })
    }

    /// What `f` is, and a symlink's target.
    fn kind(
        &self,
        cursor: &mut DeviceCursor,
        f: &Loaded<'_>,
        info: &StdInfo,
    ) -> Result<(Kind, Option<Vec<u8>>), FsError> {
        let is_dir = f.raw.is_directory();
        Ok(match self.special(cursor, f, info)? {
            Some(Special::Link(target)) => (Kind::Symlink, Some(target)),
            Some(Special::VolumeLink(path)) => {
                let names = self.names(cursor, &f.file)?;
                let depth = self.depth(cursor, &names)?;
                (Kind::Symlink, Some(special::relative_to(depth, &path)))
            }
            Some(Special::Node(kind)) => (kind, None),
            Some(Special::Unsupported(_)) | None if is_dir => (Kind::Dir, None),
            Some(Special::Unsupported(tag)) => {
                (Kind::Symlink, Some(special::unsupported_target(tag)))
            }
            None => (Kind::File, None),
        })
    }

    /// The special file `f` stands for, if any (see [`special`]).
    fn special(
        &self,
        cursor: &mut DeviceCursor,
        f: &Loaded<'_>,
        info: &StdInfo,
    ) -> Result<Option<Special>, FsError> {
        let is_dir = f.raw.is_directory();
        if info.attributes & REPARSE_POINT != 0 {
            let Some(item) =
                self.find_attribute(cursor, &f.file, NtfsAttributeType::ReparsePoint, "")?
            else {
                return Ok(None);
            };
            let attribute = item.to_attribute().map_err(crate_error)?;
            let len = attribute.value_length();
            if len > special::MAX_REPARSE_DATA {
                return Err(FsError::damaged(FS, format!("{len} bytes of reparse data")));
            }
            let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
            let mut value = attribute.value(cursor).map_err(crate_error)?;
            value.read_exact(cursor, &mut data).map_err(crate_error)?;
            let recall = info.attributes & RECALL_ON_OPEN != 0;
            return Ok(Some(special::reparse(&data, is_dir, recall)));
        }
        if is_dir || info.attributes & SYSTEM == 0 {
            return Ok(None);
        }
        let Some((len, _)) = self.data_head(cursor, &f.file, 0)? else {
            return Ok(None);
        };
        let head = if len > 8 && len <= special::MAX_INTERIX_LEN {
            self.data_head(cursor, &f.file, len)?
                .map(|(_, h)| h)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(special::interix(len, info.attributes & HIDDEN != 0, &head))
    }

    /// How many directories lie between a file with `names` and the root (0 in the root).
    fn depth(&self, cursor: &mut DeviceCursor, names: &[NtfsFileName]) -> Result<usize, FsError> {
        let parent_of = |names: &[NtfsFileName]| {
            names
                .first()
                .map(|n| n.parent_directory_reference().file_record_number())
                .ok_or_else(|| FsError::damaged(FS, "a file has no name"))
        };
        let mut parent = parent_of(names)?;
        let mut depth = 0;
        while parent != ROOT {
            depth += 1;
            if depth > MAX_PATH_DEPTH {
                return Err(FsError::damaged(FS, "a directory is its own ancestor"));
            }
            let dir = self.load(cursor, parent)?;
            parent = parent_of(&self.names(cursor, &dir.file)?)?;
        }
        Ok(depth)
    }

    /// The entries of directory `file`'s `$I30` index, in index order.
    fn index_entries(
        &self,
        cursor: &mut DeviceCursor,
        file: &NtfsFile<'_>,
    ) -> Result<Vec<(u64, NtfsFileName)>, FsError> {
        let root_item = self
            .find_attribute(cursor, file, NtfsAttributeType::IndexRoot, DIRECTORY_INDEX)?
            .ok_or_else(|| FsError::damaged(FS, "a directory has no $I30 index"))?;
        let root_attribute = root_item.to_attribute().map_err(crate_error)?;
        let NtfsAttributeValue::Resident(value) =
            root_attribute.value(cursor).map_err(crate_error)?
        else {
            return Err(FsError::damaged(
                FS,
                "a directory's index root is not resident",
            ));
        };
        let record_size = record::check_index_root(value.data()).map_err(damaged)?;
        let root = root_attribute
            .resident_structured_value::<NtfsIndexRoot>()
            .map_err(crate_error)?;
        let allocation_item = if root.is_large_index() {
            if !record::INDEX_RECORD_SIZES.contains(&record_size) || !record_size.is_power_of_two()
            {
                return Err(FsError::damaged(
                    FS,
                    format!("index records of {record_size} bytes"),
                ));
            }
            Some(
                self.find_attribute(
                    cursor,
                    file,
                    NtfsAttributeType::IndexAllocation,
                    DIRECTORY_INDEX,
                )?
                .ok_or_else(|| {
                    FsError::damaged(FS, "a large directory has no $INDEX_ALLOCATION")
                })?,
            )
        } else {
            None
        };
        let allocation_attribute = allocation_item
            .as_ref()
            .map(|item| item.to_attribute())
            .transpose()
            .map_err(crate_error)?;
        let allocation_value = allocation_attribute
            .as_ref()
            .map(|a| a.value(cursor))
            .transpose()
            .map_err(crate_error)?;
        let allocation = allocation_attribute
            .as_ref()
            .map(|a| a.structured_value::<_, NtfsIndexAllocation>(cursor))
            .transpose()
            .map_err(crate_error)?;
        let mut walk = Walk {
            cursor,
            allocation: allocation.as_ref().zip(allocation_value.as_ref()),
            record_size,
            visited: HashSet::new(),
            entries: Vec::new(),
        };
        let entries = root.entries::<NtfsFileNameIndex>().map_err(crate_error)?;
        walk_node(&self.ntfs, &mut walk, entries, 0)?;
        Ok(walk.entries)
    }

    /// The attributes of a node.
    fn attr_of(&self, node: &Node) -> Attr {
        let read_only = node.info.attributes & READ_ONLY != 0;
        Attr {
            kind: node.kind,
            size: node.size,
            perm: perm(node.kind, read_only),
            uid: self.owner.uid,
            gid: self.owner.gid,
            nlink: node.nlink,
            atime: nt_time(node.info.accessed),
            mtime: nt_time(node.info.modified),
            ctime: nt_time(node.info.changed),
            crtime: nt_time(node.info.created),
        }
    }

    /// Loads file `ino` (a number the adapter hands out).
    fn file(&self, cursor: &mut DeviceCursor, ino: u64) -> Result<Loaded<'_>, FsError> {
        if ino != ROOT && !(FIRST_USER_RECORD..=MAX_LOCAL_INO).contains(&ino) {
            return Err(FsError::NotFound);
        }
        self.load(cursor, ino)
    }

    /// Whether `f` is shown as a directory.
    fn is_dir(&self, cursor: &mut DeviceCursor, f: &Loaded<'_>) -> Result<bool, FsError> {
        if !f.raw.is_directory() {
            return Ok(false);
        }
        let info = std_info(&f.raw)?;
        Ok(self.kind(cursor, f, &info)?.0 == Kind::Dir)
    }

    fn read_dir_unguarded(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let mut cursor = self.cursor();
        let dir = self.file(&mut cursor, ino)?;
        if !self.is_dir(&mut cursor, &dir)? {
            return Err(FsError::NotDir);
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (number, name) in self.index_entries(&mut cursor, &dir.file)? {
            if name.namespace() == NtfsFileNamespace::Dos
                || !(FIRST_USER_RECORD..=MAX_LOCAL_INO).contains(&number)
            {
                continue;
            }
            let bytes = name.name().to_string_lossy().into_bytes();
            if bytes.is_empty()
                || bytes == b"."
                || bytes == b".."
                || bytes.iter().any(|b| *b == b'/' || *b == 0)
                || !seen.insert(bytes.clone())
            {
                continue;
            }
            // A file whose record cannot be read still lists; using it fails.
            let attr = self
                .load(&mut cursor, number)
                .and_then(|f| self.inspect(&mut cursor, &f))
                .ok()
                .map(|node| self.attr_of(&node));
            out.push(DirEntry {
                name: bytes,
                ino: number,
                attr,
            });
        }
        Ok(out)
    }

    fn read_unguarded(&self, ino: u64, offset: u64, len: u32) -> Result<Vec<u8>, FsError> {
        let mut cursor = self.cursor();
        let f = self.file(&mut cursor, ino)?;
        if self.is_dir(&mut cursor, &f)? {
            return Err(FsError::IsDir);
        }
        let Some(item) = self.find_attribute(&mut cursor, &f.file, NtfsAttributeType::Data, "")?
        else {
            return Ok(Vec::new());
        };
        let attribute = item.to_attribute().map_err(crate_error)?;
        if attribute
            .flags()
            .intersects(NtfsAttributeFlags::COMPRESSED | NtfsAttributeFlags::ENCRYPTED)
        {
            return Err(FsError::damaged(
                FS,
                "compressed and encrypted NTFS files are not supported",
            ));
        }
        let size = attribute.value_length();
        if offset >= size {
            return Ok(Vec::new());
        }
        let n = (size - offset).min(u64::from(len));
        let mut buf =
            vec![0u8; usize::try_from(n).map_err(|_| FsError::damaged(FS, "read too large"))?];
        let mut value = attribute.value(&mut cursor).map_err(crate_error)?;
        value
            .seek(&mut cursor, SeekFrom::Start(offset))
            .map_err(crate_error)?;
        value
            .read_exact(&mut cursor, &mut buf)
            .map_err(crate_error)?;
        let initialized = f.raw.unnamed(TYPE_DATA).and_then(|a| a.initialized_size());
        if let Some(valid) = initialized.and_then(|v| v.checked_sub(offset)) {
            if let Some(tail) = usize::try_from(valid).ok().and_then(|v| buf.get_mut(v..)) {
                tail.fill(0);
            }
        } else if initialized.is_some() {
            buf.fill(0);
        }
        Ok(buf)
    }

    fn read_link_unguarded(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let mut cursor = self.cursor();
        let f = self.file(&mut cursor, ino)?;
        let info = std_info(&f.raw)?;
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

/// Walks an index node in order: each entry's subnode before the entry.
fn walk_node<'s>(
    ntfs: &Ntfs,
    walk: &mut Walk<'_, '_, '_>,
    entries: impl Iterator<Item = ntfs::Result<NtfsIndexEntry<'s, NtfsFileNameIndex>>>,
    depth: u32,
) -> Result<(), FsError> {
    for entry in entries {
        let entry = entry.map_err(crate_error)?;
        if let Some(vcn) = entry.subnode_vcn() {
            walk_subnode(ntfs, walk, vcn.map_err(crate_error)?, depth + 1)?;
        }
        if entry.flags().contains(NtfsIndexEntryFlags::LAST_ENTRY) {
            break;
        }
        if let Some(key) = entry.key() {
            if walk.entries.len() >= MAX_DIR_ENTRIES {
                return Err(FsError::damaged(
                    FS,
                    format!("a directory has more than {MAX_DIR_ENTRIES} entries"),
                ));
            }
            let number = entry.file_reference().file_record_number();
            walk.entries.push((number, key.map_err(crate_error)?));
        }
    }
    Ok(())
}

/// Walks the index record at `vcn` of the directory's `$INDEX_ALLOCATION`, once.
fn walk_subnode(
    ntfs: &Ntfs,
    walk: &mut Walk<'_, '_, '_>,
    vcn: Vcn,
    depth: u32,
) -> Result<(), FsError> {
    let (allocation, value) = walk
        .allocation
        .ok_or_else(|| FsError::damaged(FS, "an index entry points into a missing allocation"))?;
    if depth > MAX_INDEX_DEPTH || walk.visited.len() >= MAX_INDEX_NODES {
        return Err(FsError::damaged(
            FS,
            "a directory index is too deep or too large",
        ));
    }
    if !walk.visited.insert(vcn.value()) {
        return Err(FsError::damaged(
            FS,
            "a directory index node is reached twice",
        ));
    }
    // Read the record as the crate will (from the same offset of the same value) and check it.
    let offset = vcn
        .offset(ntfs)
        .ok()
        .and_then(|o| u64::try_from(o).ok())
        .ok_or_else(|| FsError::damaged(FS, format!("index record VCN {vcn} is out of range")))?;
    let mut raw_value = value.clone();
    if offset >= raw_value.len() {
        return Err(FsError::damaged(
            FS,
            format!("index record VCN {vcn} is past the index's end"),
        ));
    }
    raw_value
        .seek(walk.cursor, SeekFrom::Start(offset))
        .map_err(crate_error)?;
    let mut raw = vec![0u8; usize::try_from(walk.record_size).unwrap_or(0)];
    raw_value
        .read_exact(walk.cursor, &mut raw)
        .map_err(crate_error)?;
    record::check_index_record(raw).map_err(damaged)?;
    let node = allocation
        .record_from_vcn(walk.cursor, walk.record_size, vcn)
        .map_err(crate_error)?;
    let entries = node.entries::<NtfsFileNameIndex>().map_err(crate_error)?;
    walk_node(ntfs, walk, entries, depth)
}

/// Permission bits for a `kind` of file.
fn perm(kind: Kind, read_only: bool) -> u16 {
    match (kind, read_only) {
        (Kind::Symlink, _) => 0o777,
        (Kind::Dir, false) => 0o755,
        (Kind::Dir, true) => 0o555,
        (_, false) => 0o644,
        (_, true) => 0o444,
    }
}

/// `$STANDARD_INFORMATION`: creation, modification, MFT change and access times (u64 each),
/// then the file attributes (u32); Windows NT 4 wrote these 48 bytes, later versions more.
fn std_info(raw: &FileRecord) -> Result<StdInfo, FsError> {
    let value = raw
        .unnamed(TYPE_STANDARD_INFORMATION)
        .and_then(|a| a.resident_value())
        .ok_or_else(|| FsError::damaged(FS, "a file has no $STANDARD_INFORMATION"))?;
    let u64_at = |at: usize| {
        value
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let attributes = value
        .get(32..36)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes);
    match (u64_at(0), u64_at(8), u64_at(16), u64_at(24), attributes) {
        (Some(created), Some(modified), Some(changed), Some(accessed), Some(attributes)) => {
            Ok(StdInfo {
                created,
                modified,
                changed,
                accessed,
                attributes,
            })
        }
        _ => Err(FsError::damaged(FS, "a $STANDARD_INFORMATION is too short")),
    }
}

/// An NTFS time (100 ns units since 1601-01-01 UTC).
fn nt_time(ticks: u64) -> SystemTime {
    let since_epoch = i128::from(ticks) - NT_TO_UNIX;
    let seconds = i64::try_from(since_epoch.div_euclid(NT_TICKS_PER_SECOND)).unwrap_or(0);
    let nanos = u32::try_from(since_epoch.rem_euclid(NT_TICKS_PER_SECOND) * 100).unwrap_or(0);
    time_from_unix(seconds, nanos)
}

/// The crate's error: a read failure of the device, or damage.
fn crate_error(e: NtfsError) -> FsError {
    match e {
        NtfsError::Io(io) if io.kind() == ErrorKind::Other => FsError::Read(io.to_string()),
        e => FsError::damaged(FS, e),
    }
}

fn damaged(detail: String) -> FsError {
    FsError::damaged(FS, detail)
}

/// `len` bytes at `pos` of the partition.
fn read_raw(dev: &dyn Device, pos: u64, len: usize) -> Result<Vec<u8>, FsError> {
    let end = u64::try_from(len).ok().and_then(|l| pos.checked_add(l));
    if end.is_none_or(|end| end > dev.len()) {
        return Err(FsError::damaged(
            FS,
            format!("{len} bytes at {pos} are past the partition's end"),
        ));
    }
    let mut buf = vec![0u8; len];
    dev.read_at(pos, &mut buf).map_err(FsError::Read)?;
    Ok(buf)
}

/// The error detail of a panic in the crate.
const PANICKED: &str = "the ntfs crate failed on this filesystem's metadata";

/// Runs `op`, turning a panic (in the crate, on bytes the checks let through) into an error.
fn guarded<T>(op: impl FnOnce() -> Result<T, FsError>) -> Result<T, FsError> {
    catch_unwind(AssertUnwindSafe(op)).unwrap_or_else(|_| Err(FsError::damaged(FS, PANICKED)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    /// The fixture: `testdata/make-ntfs.sh` made it, `testdata/ntfs.expected` is what ntfs-3g
    /// showed of it.
    const IMAGE: &[u8] = include_bytes!("../../testdata/ntfs.img.zst");
    const EXPECTED: &str = include_str!("../../testdata/ntfs.expected");
    const OWNER: Owner = Owner {
        uid: 1000,
        gid: 100,
    };

    fn image() -> Vec<u8> {
        zstd::decode_all(IMAGE).expect("fixture decompresses")
    }

    fn open(bytes: Vec<u8>) -> Result<NtfsFs, FsError> {
        NtfsFs::open(Arc::new(bytes), OWNER)
    }

    fn fixture() -> NtfsFs {
        open(image()).expect("fixture opens")
    }

    /// Every file below the root, by path.
    fn tree(fs: &NtfsFs) -> BTreeMap<String, DirEntry> {
        let mut out = BTreeMap::new();
        let mut dirs = vec![(String::new(), fs.root())];
        while let Some((path, ino)) = dirs.pop() {
            for e in fs.read_dir(ino).expect("read_dir") {
                let name = String::from_utf8(e.name.clone()).expect("UTF-8 name");
                let full = if path.is_empty() {
                    name
                } else {
                    format!("{path}/{name}")
                };
                if e.attr.as_ref().expect("attr").kind == Kind::Dir {
                    dirs.push((full.clone(), e.ino));
                }
                out.insert(full, e);
            }
        }
        out
    }

    fn entry(fs: &NtfsFs, path: &str) -> DirEntry {
        tree(fs).remove(path).expect(path)
    }

    fn read_all(fs: &NtfsFs, ino: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let offset = u64::try_from(out.len()).expect("len");
            let chunk = fs.read(ino, offset, 65536).expect("read");
            if chunk.is_empty() {
                return out;
            }
            out.extend(chunk);
        }
    }

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
    fn attributes_times_and_permissions() {
        let fs = fixture();
        let attr = |path: &str| entry(&fs, path).attr.expect("attr");
        let timed = attr("times.txt");
        let set = UNIX_EPOCH + Duration::new(1_614_834_367, 123_456_700);
        assert_eq!(timed.mtime, set);
        assert_eq!(timed.atime, set);
        assert!(timed.ctime > set && timed.crtime > set);
        assert_eq!((timed.uid, timed.gid), (OWNER.uid, OWNER.gid));
        assert_eq!(timed.perm, 0o644);
        assert_eq!(attr("readonly.txt").perm, 0o444);
        assert_eq!(attr("docs").perm, 0o755);
        assert_eq!(attr("docs").size, 0);
        assert_eq!(attr("abs-link").perm, 0o777);
        let root = fs.attr(fs.root()).expect("root");
        assert_eq!((root.kind, root.nlink), (Kind::Dir, 1));
    }

    #[test]
    fn symlinks_and_special_files() {
        let fs = fixture();
        let link = |path: &str| {
            let e = entry(&fs, path);
            let target = fs.read_link(e.ino).expect("read_link");
            assert_eq!(
                e.attr.expect("attr").size,
                u64::try_from(target.len()).expect("len")
            );
            String::from_utf8(target).expect("UTF-8")
        };
        assert_eq!(link("docs/sub/to-hello"), "../../hello.txt");
        assert_eq!(link("abs-link"), "/etc/hostname");
        assert_eq!(link("wsl-link"), "docs/sub/deep.txt");
        assert_eq!(link("win-rel-link"), "docs/sub/deep.txt");
        assert_eq!(link("win-abs-link"), "hello.txt");
        assert_eq!(link("junction"), "docs/sub");
        assert_eq!(link("mystery"), "unsupported reparse tag 0x80000017");
        let kind = |path: &str| entry(&fs, path).attr.expect("attr").kind;
        assert_eq!(kind("fifo"), Kind::Fifo);
        assert_eq!(kind("wsl-fifo"), Kind::Fifo);
        assert_eq!(kind("blockdev"), Kind::BlockDevice);
    }

    #[test]
    fn a_large_directory_lists_in_order() {
        let fs = fixture();
        let dir = entry(&fs, "bigdir");
        let names: Vec<Vec<u8>> = fs
            .read_dir(dir.ino)
            .expect("read_dir")
            .into_iter()
            .map(|e| e.name)
            .collect();
        let expected: Vec<Vec<u8>> = (0..200)
            .map(|i| format!("file-{i:03}").into_bytes())
            .collect();
        assert_eq!(names, expected);
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

    /// Opens `bytes` and visits everything; returns the errors met. Fails on a caught panic.
    fn explore(bytes: Vec<u8>) -> Vec<FsError> {
        let fs = match open(bytes) {
            Ok(fs) => fs,
            Err(e) => {
                assert!(!e.to_string().contains(PANICKED), "{e}");
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
        }
        errors
    }

    /// The MFT's offset and record `n`'s.
    fn record_offset(bytes: &[u8], n: usize) -> usize {
        let sector = usize::from(u16::from_le_bytes([bytes[0x0B], bytes[0x0C]]));
        let cluster = sector * usize::from(bytes[0x0D]);
        let lcn = u64::from_le_bytes(bytes[0x30..0x38].try_into().expect("8 bytes"));
        let at = usize::try_from(lcn).expect("lcn") * cluster + n * 1024;
        // NTFS 3.1 keeps the record's own number at 0x2C: the MFT is contiguous here.
        assert_eq!(
            &bytes[at + 0x2C..at + 0x30],
            &u32::try_from(n).expect("n").to_le_bytes()
        );
        at
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
    fn a_damaged_root_or_index_is_an_error() {
        let good = image();
        let mut bytes = good.clone();
        let root = record_offset(&bytes, 5);
        bytes[root..root + 1024].fill(0);
        assert!(matches!(open(bytes), Err(FsError::Damaged { .. })));

        // bigdir's index: the root points to one node, which points to the leaves. Point
        // that node's first subnode at itself: refused, not walked forever.
        let fs = open(good.clone()).expect("opens");
        let dir = entry(&fs, "bigdir").ino;
        let at = record_offset(&good, usize::try_from(dir).expect("ino"));
        let record = &good[at..at + 1024];
        let root_value = index_root_value(record);
        let [root_vcn] = subnode_vcn_offsets(record, root_value)[..] else {
            panic!("one subnode expected (the fixture changed?)");
        };
        let vcn = &record[root_vcn..root_vcn + 8];
        let file_dash: Vec<u8> = "file-".encode_utf16().flat_map(u16::to_le_bytes).collect();
        let node = (0..good.len() / 4096)
            .map(|i| i * 4096)
            .find(|&o| {
                good[o..o + 4] == *b"INDX"
                    && good[o + 16..o + 24] == *vcn
                    && good[o..o + 4096].windows(10).any(|w| w == file_dash)
            })
            .expect("bigdir's node");
        let children = subnode_vcn_offsets(&good[node..node + 4096], 24);
        assert!(children.len() > 2, "{children:?}");
        let mut bytes = good.clone();
        let first = node + children[0];
        bytes[first..first + 8].copy_from_slice(vcn);
        let fs = open(bytes).expect("still opens");
        let err = fs.read_dir(dir).expect_err("refused");
        assert!(err.to_string().contains("reached twice"), "{err}");
        assert!(fs.read_dir(fs.root()).is_ok());
    }

    fn u16_at(bytes: &[u8], at: usize) -> usize {
        usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
    }

    fn u32_at(bytes: &[u8], at: usize) -> usize {
        usize::try_from(u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4")))
            .expect("usize")
    }

    /// The offset of a file record's `$INDEX_ROOT` value.
    fn index_root_value(record: &[u8]) -> usize {
        let mut pos = u16_at(record, 0x14);
        while u32_at(record, pos) != 0x90 {
            pos += u32_at(record, pos + 4);
        }
        pos + u16_at(record, pos + 20) + 16
    }

    /// The offsets of the subnode VCNs of the index node whose header is at `header`, in a
    /// record whose update sequence is not applied: those that do not cross a sector's end.
    fn subnode_vcn_offsets(record: &[u8], header: usize) -> Vec<usize> {
        let mut entry = header + u32_at(record, header);
        let end = header + u32_at(record, header + 4);
        let mut out = Vec::new();
        while entry < end {
            let len = u16_at(record, entry + 8);
            if record[entry + 12] & 1 != 0 {
                let vcn = entry + len - 8;
                if vcn % 512 + 8 <= 510 {
                    out.push(vcn);
                }
            }
            if record[entry + 12] & 2 != 0 {
                break;
            }
            entry += len;
        }
        out
    }

    /// The offset in `bytes` of file `ino`'s unnamed `$DATA` attribute.
    fn data_attribute(bytes: &[u8], ino: u64) -> usize {
        let at = record_offset(bytes, usize::try_from(ino).expect("ino"));
        let record = &bytes[at..at + 1024];
        let mut pos = u16_at(record, 0x14);
        while u32_at(record, pos) != 0x80 || record[pos + 9] != 0 {
            pos += u32_at(record, pos + 4);
        }
        at + pos
    }

    #[test]
    fn valid_data_length_and_compression() {
        let good = image();
        let ino = entry(&open(good.clone()).expect("opens"), "big.bin").ino;
        let data = data_attribute(&good, ino);
        // Bytes past the initialized size read as zeros; the size stays.
        let mut bytes = good.clone();
        let initialized = data + 0x38;
        assert!(initialized % 512 + 8 <= 510, "field across a sector end");
        bytes[initialized..initialized + 8].copy_from_slice(&100_000u64.to_le_bytes());
        let fs = open(bytes).expect("opens");
        let got = fs.read(ino, 99_990, 20).expect("read");
        let expected: Vec<u8> = (99_990..100_000u32)
            .map(|i| u8::try_from(i % 253).expect("byte"))
            .chain([0; 10])
            .collect();
        assert_eq!(got, expected);
        assert_eq!(fs.read(ino, 200_000, 5).expect("read"), [0; 5]);
        assert_eq!(fs.attr(ino).expect("attr").size, 307_200);
        // Compressed data is refused, not shown raw.
        let mut bytes = good;
        bytes[data + 12] |= 0x01;
        let fs = open(bytes).expect("opens");
        let err = fs.read(ino, 0, 10).expect_err("refused");
        assert!(err.to_string().contains("compressed"), "{err}");
    }

    #[test]
    fn reparse_data_is_checked() {
        use special::{reparse, Special};
        let symlink = |tag: u32, len: u16, body: &[u8]| {
            let mut d = tag.to_le_bytes().to_vec();
            d.extend(len.to_le_bytes());
            d.extend([0, 0]);
            d.extend(body);
            d
        };
        let name: Vec<u8> = "a\\b".encode_utf16().flat_map(u16::to_le_bytes).collect();
        let mut body = vec![0, 0, 6, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        body.extend(&name);
        let len = u16::try_from(body.len()).expect("len");
        let good = symlink(0xA000_000C, len, &body);
        assert_eq!(reparse(&good, false, false), Special::Link(b"a/b".to_vec()));
        // A length that does not match, a name past the buffer, a junction on a file.
        let long = symlink(0xA000_000C, len + 1, &body);
        assert_eq!(
            reparse(&long, false, false),
            Special::Unsupported(0xA000_000C)
        );
        let mut past = body.clone();
        past[2] = 60;
        let past = symlink(0xA000_000C, len, &past);
        assert_eq!(
            reparse(&past, false, false),
            Special::Unsupported(0xA000_000C)
        );
        let junction = symlink(0xA000_0003, 8, &[0; 8]);
        assert_eq!(
            reparse(&junction, false, false),
            Special::Unsupported(0xA000_0003)
        );
        assert_eq!(reparse(&[1, 2], true, false), Special::Unsupported(0));
        // WSL FIFOs need RECALL_ON_OPEN.
        let fifo = symlink(0x8000_0024, 0, &[]);
        assert_eq!(reparse(&fifo, false, true), Special::Node(Kind::Fifo));
        assert_eq!(
            reparse(&fifo, false, false),
            Special::Unsupported(0x8000_0024)
        );
        assert_eq!(special::relative_to(2, b"x/y"), b"../../x/y");
        assert_eq!(special::relative_to(0, b""), b".");
    }

    #[test]
    fn interix_links_with_a_lone_surrogate_are_lossy() {
        let mut data = b"IntxLNK\x01".to_vec();
        data.extend([0x61, 0, 0x00, 0xD8, 0x62, 0]);
        let got = special::interix(14, false, &data);
        assert_eq!(
            got,
            Some(special::Special::Link("a\u{FFFD}b".as_bytes().to_vec()))
        );
        assert_eq!(special::interix(0, true, &[]), None);
        assert_eq!(
            special::interix(1, false, &[0]),
            Some(special::Special::Node(Kind::Socket))
        );
    }
}
