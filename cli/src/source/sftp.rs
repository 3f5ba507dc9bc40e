//! Raw disk images on a remote host, read over SFTP.
//!
//! The hypervisor's image file is read in place through the SSH connection's SFTP subsystem:
//! nothing is copied to local disk and nothing is installed on the host. Reads are pipelined (see
//! `vmstash_ssh`), and [`DiskSource::read_at`] may be called from several backup threads at once.
//!
//! Nothing is known about holes over SFTP, so [`DiskSource::data_ranges`] is the whole disk; the
//! caller may narrow it with the ranges `qemu-img map` reports on the host.
//!
//! Block devices (LVM volumes) are read the same way, but SFTP reports their size as 0: the
//! caller learns it on the host (e.g. `blockdev --getsize64`) and passes it in.

use std::ops::Range;
use std::path::PathBuf;

use vmstash_ssh::{Sftp, SftpFile};

use super::{check_read_range, remote, whole_disk, DiskSource, ImageFormat, SourceError};

/// Chunks a backup reads at once from a disk over SFTP: with 512 KiB chunks cut into 64 KiB
/// requests, four chunks keep 32 requests (2 MiB) in flight, as much as OpenSSH's `sftp` keeps,
/// so the connection never waits for a round trip between chunks.
pub(super) const CONCURRENT_SFTP_READS: usize = 4;

/// A raw image read over SFTP.
struct SftpRawSource {
    /// `user@host:port:/path`, for error messages.
    location: PathBuf,
    /// The open remote file.
    file: SftpFile,
    /// Its size when it was opened.
    size: u64,
}

/// Opens the remote raw image `path` for reading. `device_size` is the size of a block device
/// as learned on the host; a block device without it is refused.
pub(crate) fn open_sftp_raw(
    sftp: Sftp,
    path: &str,
    device_size: Option<u64>,
) -> Result<Box<dyn DiskSource>, SourceError> {
    let metadata = sftp.metadata(path).map_err(remote)?;
    let location = PathBuf::from(format!("{path} (over SFTP)"));
    if metadata.is_block_device() {
        let Some(size) = device_size else {
            return Err(SourceError::Unsupported {
                path: location,
                what: "it is a block device, whose size SFTP does not report".to_owned(),
            });
        };
        let file = sftp.open(path).map_err(remote)?;
        return Ok(Box::new(SftpRawSource {
            location,
            file,
            size,
        }));
    }
    if !metadata.is_file {
        return Err(SourceError::Unsupported {
            path: location,
            what: "it is not a regular file".to_owned(),
        });
    }
    let file = sftp.open(path).map_err(remote)?;
    let size = file.size();
    Ok(Box::new(SftpRawSource {
        location,
        file,
        size,
    }))
}

impl DiskSource for SftpRawSource {
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        check_read_range(&self.location, offset, buf.len(), self.size)?;
        self.file.read_at(buf, offset).map_err(remote)
    }

    fn data_ranges(&self) -> Result<Vec<Range<u64>>, SourceError> {
        Ok(whole_disk(self.size))
    }

    fn concurrent_reads(&self) -> usize {
        CONCURRENT_SFTP_READS
    }
}

#[cfg(test)]
mod tests;
