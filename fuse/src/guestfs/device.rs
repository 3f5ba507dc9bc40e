//! The bytes of a partition, as the filesystem adapters read them, and why a read of them
//! failed: past the partition's end (the filesystem's metadata points outside it: damage) or
//! unreadable (the repository could not give the backup's bytes).

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

/// A partition's bytes: positioned reads, safe to share between threads.
pub trait Device: Send + Sync {
    /// The partition's length in bytes.
    fn len(&self) -> u64;
    /// Whether the partition is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`: [`DeviceError::PastEnd`] when any of it is past the end,
    /// [`DeviceError::Read`] when the backup's bytes cannot be read.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError>;
}

/// Why a [`Device`] read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeviceError {
    /// The read reaches past the partition's end: whoever asked (a filesystem's metadata, a
    /// partition table that cut the filesystem short) is damaged.
    #[error(transparent)]
    PastEnd(#[from] PastEnd),
    /// The backup's bytes could not be read (a damaged pack, a missing blob, an I/O error of
    /// the repository's storage): the repository's error, unchanged, shared because several
    /// readers waiting for one chunk get the same one.
    #[error("cannot read the backup: {0}")]
    Read(Arc<vmstash_repo::Error>),
}

impl DeviceError {
    /// The device error an I/O error of a [`DeviceCursor`] carries (the filesystem crates see
    /// only `std::io::Error`s); the I/O error itself when it carries none (a crate's own).
    pub fn from_io(e: io::Error) -> Result<DeviceError, io::Error> {
        e.downcast::<DeviceError>()
    }
}

impl Device for Vec<u8> {
    fn len(&self) -> u64 {
        u64::try_from(self.as_slice().len()).unwrap_or(u64::MAX)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?))
            .ok_or(PastEnd {
                offset,
                len: buf.len(),
                size: Device::len(self),
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A filesystem asked for bytes past the end of its partition: its metadata is damaged (or
/// the partition table cut it short), which is not the same as the bytes being unreadable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{len} bytes at {offset} are past the end of the partition ({size} bytes)")]
pub struct PastEnd {
    /// Where the read started.
    pub offset: u64,
    /// How much it wanted.
    pub len: usize,
    /// The partition's length.
    pub size: u64,
}

/// Checks that `len` bytes at `offset` are inside `dev`.
pub fn check_range(dev: &dyn Device, offset: u64, len: usize) -> Result<(), PastEnd> {
    let end = offset.checked_add(u64::try_from(len).unwrap_or(u64::MAX));
    match end {
        Some(end) if end <= dev.len() => Ok(()),
        _ => Err(PastEnd {
            offset,
            len,
            size: dev.len(),
        }),
    }
}

/// A [`Device`] as a `Read + Seek` stream, for the crates that want one. Writes fail: every
/// adapter is read-only. A failed read is an `io::Error` carrying the [`DeviceError`], which
/// [`DeviceError::from_io`] gets back out of whatever the crate returns.
#[derive(Clone)]
pub struct DeviceCursor {
    dev: Arc<dyn Device>,
    pos: u64,
}

impl DeviceCursor {
    /// A stream over `dev` at its start.
    pub fn new(dev: Arc<dyn Device>) -> Self {
        DeviceCursor { dev, pos: 0 }
    }
}

impl Read for DeviceCursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.dev.len().saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            // At or past the end (a seek may go there): end of stream, as for a file.
            return Ok(0);
        }
        let (head, _) = buf.split_at_mut(n);
        self.dev.read_at(self.pos, head).map_err(io::Error::other)?;
        self.pos += u64::try_from(n).unwrap_or(0);
        Ok(n)
    }
}

impl Seek for DeviceCursor {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(at) => Some(at),
            SeekFrom::End(delta) => self.dev.len().checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

impl Write for DeviceCursor {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the backup is read-only",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guestfs::test_support::{is_pack_error, Unreadable};

    #[test]
    fn cursor_reads_seeks_and_stops_at_the_end() {
        let dev: Arc<dyn Device> = Arc::new((0u8..10).collect::<Vec<u8>>());
        let mut c = DeviceCursor::new(dev);
        c.seek(SeekFrom::Start(7)).expect("seek");
        let mut buf = [0u8; 8];
        assert_eq!(c.read(&mut buf).expect("read"), 3);
        assert_eq!(&buf[..3], &[7, 8, 9]);
        assert_eq!(c.read(&mut buf).expect("read"), 0);
        c.seek(SeekFrom::Start(1 << 40)).expect("seek past the end");
        assert_eq!(c.read(&mut buf).expect("read past the end"), 0);
        assert!(c.seek(SeekFrom::Current(-(1 << 41))).is_err());
        assert_eq!(c.seek(SeekFrom::End(-1)).expect("seek"), 9);
        assert!(c.write(b"x").is_err());
    }

    #[test]
    fn reads_past_the_end_are_past_end_errors() {
        let dev = vec![1u8; 4];
        let mut buf = [0u8; 4];
        assert!(matches!(
            dev.read_at(1, &mut buf),
            Err(DeviceError::PastEnd(PastEnd {
                offset: 1,
                len: 4,
                size: 4
            }))
        ));
        assert!(matches!(
            dev.read_at(u64::MAX, &mut buf),
            Err(DeviceError::PastEnd(PastEnd {
                offset: u64::MAX,
                ..
            }))
        ));
        dev.read_at(0, &mut buf).expect("in range");
        assert_eq!(check_range(&dev, 2, 2), Ok(()));
        assert_eq!(
            check_range(&dev, 3, 2),
            Err(PastEnd {
                offset: 3,
                len: 2,
                size: 4
            })
        );
    }

    #[test]
    fn a_cursor_carries_the_device_error_through_io() {
        let dev = Arc::new(Unreadable::new(vec![3u8; 100]));
        let mut c = DeviceCursor::new(dev.clone());
        let mut buf = [0u8; 40];
        c.read_exact(&mut buf).expect("readable");
        dev.fail();
        let err = c.read_exact(&mut buf).expect_err("unreadable");
        assert!(
            matches!(DeviceError::from_io(err), Ok(DeviceError::Read(e)) if is_pack_error(&e)),
            "the repository's error comes back out"
        );
        let plain = io::Error::new(io::ErrorKind::UnexpectedEof, "short");
        let back = DeviceError::from_io(plain).expect_err("not a device error");
        assert_eq!(back.kind(), io::ErrorKind::UnexpectedEof);
    }
}
