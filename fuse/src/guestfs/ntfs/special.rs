//! Symbolic links and other special files, as ntfs-3g shows them.
//!
//! NTFS has no file types besides files and directories. ntfs-3g (Debian 12: 2022.10.3)
//! stores POSIX special files in one of two ways, and reads Windows' links too:
//!
//! - Interix (ntfs-3g's default, `special_files=interix`): a file with the SYSTEM attribute
//!   whose unnamed data is `IntxLNK\1` followed by the target in UTF-16 (a symlink),
//!   `IntxBLK\0` / `IntxCHR\0` followed by major and minor (devices), or empty / one byte
//!   long without HIDDEN (a FIFO / a socket). `ln -s` on an ntfs-3g mount makes these.
//! - WSL (`special_files=wsl`): reparse points `IO_REPARSE_TAG_LX_SYMLINK` (type 2, then the
//!   target in UTF-8) and, with no data and the RECALL_ON_OPEN attribute, `AF_UNIX`,
//!   `LX_FIFO`, `LX_CHR`, `LX_BLK`.
//! - Windows: reparse points `IO_REPARSE_TAG_SYMLINK` and `IO_REPARSE_TAG_MOUNT_POINT`
//!   (junctions). A relative target gets `/` for `\`. An absolute one (`\??\C:\dir`, `C:\dir`,
//!   `\dir`) is taken to mean this volume, as ntfs-3g does when no `.NTFS-3G/C:` link says
//!   otherwise, but is made relative to the link's directory (`../dir`) instead of ntfs-3g's
//!   `<mount point>/dir`: the mount point is not known here, and a relative link stays
//!   inside the mount. Volume-GUID and network targets are not followed.
//!
//! Any other reparse point on a file reads, as in ntfs-3g, as a symlink to
//! `unsupported reparse tag 0x…` (deduplicated, cloud or WOF-compressed files: their data is
//! not in the file). A directory with an unknown tag stays a directory: its index is real.
//! Layouts: ntfs-3g's `include/ntfs-3g/layout.h` (`REPARSE_POINT`, `INTX_FILE`) and
//! `libntfs-3g/reparse.c` (`valid_reparse_data`, `ntfs_make_symlink`).

use crate::guestfs::Kind;

/// The tag of a Windows symbolic link.
const TAG_SYMLINK: u32 = 0xA000_000C;
/// The tag of a junction (a directory mount point).
const TAG_MOUNT_POINT: u32 = 0xA000_0003;
/// The tag of a WSL symbolic link.
const TAG_LX_SYMLINK: u32 = 0xA000_001D;
/// WSL special files: socket, FIFO, character and block device.
const TAG_AF_UNIX: u32 = 0x8000_0023;
const TAG_LX_FIFO: u32 = 0x8000_0024;
const TAG_LX_CHR: u32 = 0x8000_0025;
const TAG_LX_BLK: u32 = 0x8000_0026;
/// Tags with this bit are Microsoft's and have no GUID in their header.
const TAG_IS_MICROSOFT: u32 = 0x8000_0000;
/// Reparse data header: tag (u32), data length (u16), reserved (u16).
const REPARSE_HEADER: usize = 8;
/// The GUID that follows the header of a non-Microsoft tag.
const REPARSE_GUID: usize = 16;
/// Symlink flag: the target is relative to the link's directory.
const SYMLINK_RELATIVE: u32 = 1;
/// The largest reparse data Windows allows (`MAXIMUM_REPARSE_DATA_BUFFER_SIZE`).
pub(super) const MAX_REPARSE_DATA: u64 = 16 * 1024;

/// Interix magic numbers (the first 8 bytes of the data).
const INTX_SYMLINK: &[u8; 8] = b"IntxLNK\x01";
const INTX_BLOCK: &[u8; 8] = b"IntxBLK\x00";
const INTX_CHAR: &[u8; 8] = b"IntxCHR\x00";
/// An Interix device file: magic, major (u64), minor (u64).
const INTX_DEVICE_LEN: u64 = 24;
/// ntfs-3g reads Interix targets of up to `PATH_MAX` UTF-16 units after the magic.
pub(super) const MAX_INTERIX_LEN: u64 = 8 + 2 * 4096;

/// What a reparse point or an Interix file stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Special {
    /// A symlink with this target.
    Link(Vec<u8>),
    /// A symlink to this path from the volume's root (`/`-separated, without a leading `/`),
    /// to be made relative to the link's directory.
    VolumeLink(Vec<u8>),
    /// A special file of this kind.
    Node(Kind),
    /// A reparse point of this tag that is not understood.
    Unsupported(u32),
}

/// The symlink target ntfs-3g shows for a reparse point it does not understand.
pub(super) fn unsupported_target(tag: u32) -> Vec<u8> {
    format!("unsupported reparse tag 0x{tag:08x}").into_bytes()
}

/// Reads `$REPARSE_POINT` data. `is_dir`: the file is a directory; `recall_on_open`: its
/// RECALL_ON_OPEN attribute is set (WSL special files have it).
pub(super) fn reparse(data: &[u8], is_dir: bool, recall_on_open: bool) -> Special {
    let Some(tag) = data
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
    else {
        return Special::Unsupported(0);
    };
    let Some(body) = reparse_body(data, tag) else {
        return Special::Unsupported(tag);
    };
    let special = match tag {
        TAG_SYMLINK => symlink(body),
        TAG_MOUNT_POINT if is_dir => junction(body),
        TAG_LX_SYMLINK => wsl_symlink(body),
        TAG_AF_UNIX | TAG_LX_FIFO | TAG_LX_CHR | TAG_LX_BLK
            if body.is_empty() && recall_on_open =>
        {
            Some(Special::Node(match tag {
                TAG_AF_UNIX => Kind::Socket,
                TAG_LX_FIFO => Kind::Fifo,
                TAG_LX_CHR => Kind::CharDevice,
                _ => Kind::BlockDevice,
            }))
        }
        _ => None,
    };
    special.unwrap_or(Special::Unsupported(tag))
}

/// The data after the header (and GUID), when its length is the one the header gives.
fn reparse_body(data: &[u8], tag: u32) -> Option<&[u8]> {
    let len = usize::from(u16::from_le_bytes(data.get(4..6)?.try_into().ok()?));
    let start = if tag & TAG_IS_MICROSOFT != 0 {
        REPARSE_HEADER
    } else {
        REPARSE_HEADER + REPARSE_GUID
    };
    if tag == 0 || start.checked_add(len)? != data.len() {
        return None;
    }
    data.get(start..)
}

/// The substitute name of a symlink or junction: its offset in the path buffer and its length
/// (bytes, u16 each) start `body`; the path buffer starts at `buffer`.
fn substitute_name(body: &[u8], buffer: usize) -> Option<Vec<u16>> {
    let offset = usize::from(u16::from_le_bytes(body.get(0..2)?.try_into().ok()?));
    let length = usize::from(u16::from_le_bytes(body.get(2..4)?.try_into().ok()?));
    let start = buffer.checked_add(offset)?;
    let bytes = body.get(start..start.checked_add(length)?)?;
    Some(utf16_units(bytes))
}

/// `IO_REPARSE_TAG_SYMLINK`: substitute name offset and length, print name offset and length
/// (u16 each), flags (u32), path buffer.
fn symlink(body: &[u8]) -> Option<Special> {
    let flags = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?);
    let target = substitute_name(body, 12)?;
    let relative = flags & SYMLINK_RELATIVE != 0;
    let first = target.first().copied().unwrap_or(0);
    let second = target.get(1).copied().unwrap_or(0);
    // ntfs-3g's classification of the target (`ntfs_make_symlink`).
    if first == u16::from(b'\\') && (second == u16::from(b'?') || second == u16::from(b'\\')) {
        (!relative).then(|| volume_path(&target))?
    } else if first == u16::from(b'\\') || second == u16::from(b':') {
        relative.then(|| absolute_path(&target))?
    } else if relative {
        Some(Special::Link(posix_path(&target)))
    } else {
        None
    }
}

/// `IO_REPARSE_TAG_MOUNT_POINT`: substitute name offset and length, print name offset and
/// length (u16 each), path buffer.
fn junction(body: &[u8]) -> Option<Special> {
    volume_path(&substitute_name(body, 8)?)
}

/// `\??\X:\path`: `path` on this volume. Other full paths (`\??\Volume{…}\`, `\??\UNC\…`)
/// are not followed.
fn volume_path(target: &[u16]) -> Option<Special> {
    let head: Vec<u16> = "\\??\\".encode_utf16().collect();
    if target.get(..4)? != head.as_slice()
        || target.get(4).is_none_or(|c| *c == 0)
        || target.get(5) != Some(&u16::from(b':'))
        || target.get(6) != Some(&u16::from(b'\\'))
    {
        return None;
    }
    Some(Special::VolumeLink(posix_path(target.get(7..)?)))
}

/// `X:\path` or `\path`: `path` on this volume.
fn absolute_path(target: &[u16]) -> Option<Special> {
    let rest = if target.get(1) == Some(&u16::from(b':')) {
        if target.first().is_none_or(|c| *c == 0) || target.get(2) != Some(&u16::from(b'\\')) {
            return None;
        }
        target.get(3..)?
    } else {
        target.get(1..)?
    };
    Some(Special::VolumeLink(posix_path(rest)))
}

/// `IO_REPARSE_TAG_LX_SYMLINK`: a version (u32, 2), then the target in UTF-8.
fn wsl_symlink(body: &[u8]) -> Option<Special> {
    if body.get(..4)? != 2u32.to_le_bytes() || body.len() <= 4 {
        return None;
    }
    let target = body.get(4..)?;
    let end = target.iter().position(|b| *b == 0).unwrap_or(target.len());
    Some(Special::Link(target.get(..end)?.to_vec()))
}

/// Reads an Interix special file: a file with the SYSTEM attribute whose unnamed data is
/// `len` bytes long, of which `head` are the first (up to [`MAX_INTERIX_LEN`]).
pub(super) fn interix(len: u64, hidden: bool, head: &[u8]) -> Option<Special> {
    if !hidden && len <= 1 {
        return Some(Special::Node(if len == 0 {
            Kind::Fifo
        } else {
            Kind::Socket
        }));
    }
    if len <= 8 || len > MAX_INTERIX_LEN {
        return None;
    }
    let magic = head.get(..8)?;
    if magic == INTX_SYMLINK {
        // ntfs-3g converts (len - 8) / 2 units, up to the first NUL.
        let units = utf16_units(head.get(8..)?);
        return Some(Special::Link(utf8(&units)));
    }
    if len == INTX_DEVICE_LEN && magic == INTX_BLOCK {
        return Some(Special::Node(Kind::BlockDevice));
    }
    if len == INTX_DEVICE_LEN && magic == INTX_CHAR {
        return Some(Special::Node(Kind::CharDevice));
    }
    None
}

/// UTF-16LE units of `bytes` (an odd last byte is dropped), up to the first NUL.
fn utf16_units(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|c| {
            u16::from_le_bytes([
                c.first().copied().unwrap_or(0),
                c.get(1).copied().unwrap_or(0),
            ])
        })
        .take_while(|u| *u != 0)
        .collect()
}

/// UTF-8 of UTF-16 units; a lone surrogate becomes U+FFFD.
pub(super) fn utf8(units: &[u16]) -> Vec<u8> {
    String::from_utf16_lossy(units).into_bytes()
}

/// A Windows path as a POSIX one: `\` becomes `/`.
fn posix_path(units: &[u16]) -> Vec<u8> {
    let slash: Vec<u16> = units
        .iter()
        .map(|u| {
            if *u == u16::from(b'\\') {
                u16::from(b'/')
            } else {
                *u
            }
        })
        .collect();
    utf8(&slash)
}

/// A volume path (`dir/file`, maybe empty) as seen from a directory `depth` levels below the
/// root: `../../dir/file`, `.` for the root itself.
pub(super) fn relative_to(depth: usize, path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = vec![b"..".as_slice(); depth];
    parts.extend(path.split(|b| *b == b'/').filter(|p| !p.is_empty()));
    if parts.is_empty() {
        return b".".to_vec();
    }
    parts.join(b"/".as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reparse_data_is_checked() {
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
        assert_eq!(relative_to(2, b"x/y"), b"../../x/y");
        assert_eq!(relative_to(0, b""), b".");
    }

    #[test]
    fn interix_links_with_a_lone_surrogate_are_lossy() {
        let mut data = b"IntxLNK\x01".to_vec();
        data.extend([0x61, 0, 0x00, 0xD8, 0x62, 0]);
        let got = interix(14, false, &data);
        assert_eq!(got, Some(Special::Link("a\u{FFFD}b".as_bytes().to_vec())));
        assert_eq!(interix(0, true, &[]), None);
        assert_eq!(interix(1, false, &[0]), Some(Special::Node(Kind::Socket)));
    }
}
