//! A local image file being restored: positional writes that hand the written pages to the
//! disk as the restore goes, instead of all at the final `fsync`.
//!
//! Linux starts writing dirty pages back only past `vm.dirty_background_ratio` of memory
//! (gigabytes on a host of any size) or after 30 s, so a restore of a few GiB would otherwise
//! keep every byte in the page cache and then wait, idle, for the `fsync` to write it all. Every
//! [`WRITEBACK_EVERY`] bytes written, `sync_file_range(SYNC_FILE_RANGE_WRITE)` starts the
//! write-out of what is dirty so far without waiting for it: the disk writes while the restore
//! fetches and decrypts the next chunks, and the final `fsync` (which still decides whether the
//! data is durable and reports any write error) finds little left to do.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::restore::ImageSink;

/// Bytes written between two starts of write-out.
pub const WRITEBACK_EVERY: u64 = 32 << 20;

/// A local file an image is restored into; see the module documentation.
#[derive(Debug)]
pub struct ImageFile {
    file: File,
    /// Bytes written since write-out was last started.
    unstarted: AtomicU64,
}

impl ImageFile {
    /// Wraps `file`, open for writing.
    pub fn new(file: File) -> ImageFile {
        ImageFile {
            file,
            unstarted: AtomicU64::new(0),
        }
    }

    /// Writes everything to the disk (`fsync`) and closes the file.
    pub fn sync_and_close(self) -> std::io::Result<()> {
        self.file.sync_all()
    }

    /// Starts the write-out of every dirty page of the file, without waiting for it. Only a
    /// hint: where the call is not supported or fails, the final `fsync` writes (and reports).
    fn start_writeback(&self) {
        // SAFETY: sync_file_range only reads its integer arguments; the descriptor is owned by
        // `self.file`, open for the whole call.
        #[allow(unsafe_code)]
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
}

impl ImageSink for ImageFile {
    fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(data, offset)?;
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        let before = self.unstarted.fetch_add(len, Ordering::Relaxed);
        if before.saturating_add(len) >= WRITEBACK_EVERY
            && self
                .unstarted
                .compare_exchange(
                    before.saturating_add(len),
                    0,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.start_writeback();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_land_where_asked_across_writeback_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("img");
        let file = File::create(&path).expect("create");
        let image = ImageFile::new(file);
        let block = vec![7u8; 1 << 20];
        let blocks = WRITEBACK_EVERY / (1 << 20) * 2 + 1;
        for i in (0..blocks).rev() {
            image.write_at(&block, i << 20).expect("write");
        }
        image.sync_and_close().expect("sync");
        let back = std::fs::read(&path).expect("read");
        assert_eq!(u64::try_from(back.len()).expect("len"), blocks << 20);
        assert!(back.iter().all(|&b| b == 7));
    }
}
