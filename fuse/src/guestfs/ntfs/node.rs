//! What a file is shown as: a directory, a file, a symlink or another special file (from its
//! reparse point or Interix data, see [`special`](super::special)), with its size, link count,
//! permissions and times.

use std::time::SystemTime;

use ntfs::structured_values::NtfsFileName;
use ntfs::{NtfsAttributeType, NtfsReadSeek};

use super::attributes::{std_info, StdInfo};
use super::mft::Loaded;
use super::special::{self, Special};
use super::{corrupt, crate_error, NtfsFs, ROOT};
use crate::guestfs::{time_from_unix, Attr, DeviceCursor, FsError, Kind};

/// File attributes (`$STANDARD_INFORMATION`) that change what a file is shown as.
const READ_ONLY: u32 = 0x0001;
const HIDDEN: u32 = 0x0002;
const SYSTEM: u32 = 0x0004;
const REPARSE_POINT: u32 = 0x0400;
const RECALL_ON_OPEN: u32 = 0x0004_0000;
/// 100-ns intervals from 1601-01-01 (NTFS times) to 1970-01-01.
const NT_TO_UNIX: i128 = 116_444_736_000_000_000;
const NT_TICKS_PER_SECOND: i128 = 10_000_000;
/// Directories between a Windows symlink and the root.
const MAX_PATH_DEPTH: usize = 1024;

/// What a file is shown as.
pub(super) struct Node {
    kind: Kind,
    size: u64,
    nlink: u32,
    info: StdInfo,
}

impl NtfsFs {
    /// What `f` is shown as.
    pub(super) fn inspect(
        &self,
        cursor: &mut DeviceCursor,
        f: &Loaded<'_>,
    ) -> Result<Node, FsError> {
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
    pub(super) fn kind(
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

    /// Whether `f` is shown as a directory.
    pub(super) fn is_dir(
        &self,
        cursor: &mut DeviceCursor,
        f: &Loaded<'_>,
    ) -> Result<bool, FsError> {
        if !f.raw.is_directory() {
            return Ok(false);
        }
        let info = std_info(&f.raw)?;
        Ok(self.kind(cursor, f, &info)?.0 == Kind::Dir)
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
                return Err(corrupt(format!("{len} bytes of reparse data")));
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
                .ok_or_else(|| corrupt("a file has no name"))
        };
        let mut parent = parent_of(names)?;
        let mut depth = 0;
        while parent != ROOT {
            depth += 1;
            if depth > MAX_PATH_DEPTH {
                return Err(corrupt("a directory is its own ancestor"));
            }
            let dir = self.load(cursor, parent)?;
            parent = parent_of(&self.names(cursor, &dir.file)?)?;
        }
        Ok(depth)
    }

    /// The attributes of a node.
    pub(super) fn attr_of(&self, node: &Node) -> Attr {
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
            rdev: 0,
        }
    }
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

/// An NTFS time (100 ns units since 1601-01-01 UTC).
fn nt_time(ticks: u64) -> SystemTime {
    let since_epoch = i128::from(ticks) - NT_TO_UNIX;
    let seconds = i64::try_from(since_epoch.div_euclid(NT_TICKS_PER_SECOND)).unwrap_or(0);
    let nanos = u32::try_from(since_epoch.rem_euclid(NT_TICKS_PER_SECOND) * 100).unwrap_or(0);
    time_from_unix(seconds, nanos)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::super::fixture::{entry, fixture, OWNER};
    use crate::guestfs::{GuestFs, Kind};

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
}
