//! A qcow2 image on this host, with its backing chain, as a [`DiskSource`].
//!
//! The chain is opened by the shared walk ([`open_chain`]) over [`LocalFiles`]: files opened
//! with `O_RDONLY` (regular files or block devices, whose size imago finds with an ioctl), told
//! apart by device and inode, and read by imago with `preadv`.

use super::chain::{open_chain, Chain, ChainFiles};
use super::{imago_error, mapped_data_ranges};
use crate::source::{
    check_read_range, open_image_file, read_prefix, DiskSource, ImageFormat, SourceError,
};
use imago::file::File as ImagoFile;
use imago::StorageOpenOptions;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A qcow2 image and its backing chain, opened read-only through imago.
#[derive(Debug)]
pub(in crate::source) struct Qcow2Source {
    /// The path of the top image, for error messages.
    path: PathBuf,
    /// The top image, with the rest of the chain below it.
    image: Chain<ImagoFile>,
    /// Virtual size of the top image.
    size: u64,
}

impl Qcow2Source {
    /// Opens the qcow2 image `file` (found at `path`) and its backing chain.
    pub(in crate::source) fn open(path: &Path, file: File) -> Result<Self, SourceError> {
        let image = open_chain(&LocalFiles, path, file)?;
        let size = image.size();
        Ok(Self {
            path: path.to_owned(),
            image,
            size,
        })
    }
}

impl DiskSource for Qcow2Source {
    fn format(&self) -> ImageFormat {
        ImageFormat::Qcow2
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        check_read_range(&self.path, offset, buf.len(), self.size)?;
        let len = buf.len();
        self.image.read(buf, offset).map_err(|err| {
            imago_error(
                &self.path,
                format!("read {len} bytes at offset {offset} of"),
                err,
            )
        })
    }

    fn data_ranges(&self) -> Result<Vec<Range<u64>>, SourceError> {
        mapped_data_ranges(&self.image, self.size)
            .map_err(|err| imago_error(&self.path, "map the clusters of".to_owned(), err))
    }
}

/// Files on this host, opened with `O_RDONLY`, recognised by device and inode.
struct LocalFiles;

impl ChainFiles for LocalFiles {
    type File = File;
    type Identity = (u64, u64);
    type Storage = ImagoFile;

    fn open_referenced(
        &self,
        path: &Path,
        what: &str,
        referrer: &Path,
    ) -> Result<File, SourceError> {
        open_image_file(path, &format!("open the {what} of {}:", referrer.display()))
    }

    fn identity(&self, path: &Path, file: &File) -> Result<(u64, u64), SourceError> {
        file_identity(path, file)
    }

    fn read_prefix(&self, file: &File, buf: &mut [u8]) -> io::Result<usize> {
        read_prefix(file, buf)
    }

    /// Keeps the path, so that imago's messages name the file.
    fn imago_storage(&self, path: &Path, file: File) -> Result<ImagoFile, SourceError> {
        let options = StorageOpenOptions::new().filename(path);
        ImagoFile::from_open_file(file, options).map_err(|source| SourceError::Io {
            path: path.to_owned(),
            action: "find the size of".to_owned(),
            source,
        })
    }
}

/// Device and inode of an opened file, to recognise it when a chain comes back to it.
fn file_identity(path: &Path, file: &File) -> Result<(u64, u64), SourceError> {
    let metadata = file.metadata().map_err(|source| SourceError::Io {
        path: path.to_owned(),
        action: "stat".to_owned(),
        source,
    })?;
    Ok((metadata.dev(), metadata.ino()))
}
