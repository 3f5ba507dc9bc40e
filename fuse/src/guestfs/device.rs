//! The bytes of a partition, as the filesystem adapters read them.

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
    /// Fills `buf` from `offset`; an error (naming the cause) when any of it is past the end
    /// or cannot be read.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String>;
}

impl Device for Vec<u8> {
    fn len(&self) -> u64 {
        u64::try_from(self.as_slice().len()).unwrap_or(u64::MAX)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let start = usize::try_from(offset).map_err(|_| "offset out of range".to_owned())?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| {
                format!(
                    "{} bytes at {offset} are past the end ({} bytes)",
                    buf.len(),
                    self.as_slice().len()
                )
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A filesystem asked for bytes past the end of its partition: its metadata is damaged (or
/// the partition table cut it short), which is not the same as the bytes being unreadable.
#[derive(Debug, thiserror::Error)]
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
/// adapter is read-only.
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
    fn reads_past_the_end_fail() {
        let dev = vec![1u8; 4];
        let mut buf = [0u8; 4];
        assert!(dev.read_at(1, &mut buf).is_err());
        assert!(dev.read_at(u64::MAX, &mut buf).is_err());
        dev.read_at(0, &mut buf).expect("in range");
    }
}
