//! qcow2 images with their backing chains on a remote host, read over SFTP through imago.
//!
//! # Opening
//!
//! The chain is walked by the code that walks local chains ([`open_chain`] in `super::qcow2`):
//! the same header checks (encryption, dirty bit, unknown features, L1 size), the same limits,
//! backing names resolved against the directory of the image that names them (on the remote
//! host), declared formats trusted and probed only when none is declared. Only how files are
//! reached differs ([`SftpFiles`]):
//!
//! - every file is opened read-only over SFTP and must be a regular file: SFTP reports the size
//!   of a block device as 0, and imago needs the size of every file it reads;
//! - a chain that loops is recognised by the path of each file, compared with `.` components and
//!   repeated slashes dropped (SFTP version 3 has no inode numbers). A loop through differently
//!   spelt names (`../dir/a.qcow2`, symbolic links) is still stopped by the chain length limit.
//!
//! # Storage
//!
//! [`SftpStorage`] is imago's storage object for a remote file: reads are SFTP reads (pipelined
//! by `crate::ssh`), the bytes past the end of the file read as zeros as imago's storage contract
//! requires (a qcow2 file may end inside its last cluster), and every modification is refused.
//! Whether a read past the end is damage is decided above it, by the rule local images follow:
//! [`open_chain`] puts every file of the chain behind a `BoundedStorage`, which refuses tables and
//! clusters that the metadata places past the end of their file (a truncated image is
//! `SourceError::Corrupt`, never zeros).
//!
//! imago is built with its `sync` feature, which compiles it as plain blocking code without any
//! executor: its storage methods run on the thread that called imago, a backup thread or one of
//! the reader threads below, never on a tokio worker. That is what allows them to call the
//! blocking `SftpFile::read_at`, which runs its future on the calling thread with the SSH
//! layer's runtime (and fails with an error, never a deadlock, if called inside an async task).
//!
//! # Reading
//!
//! imago's sync build reads the parts of a request one after another. Locally that costs
//! nothing; over SFTP every part is at least a network round trip. So [`DiskSource::read_at`]
//! first asks imago for the mapping of the whole request (metadata only, cached after the first
//! use), fills what reads as zeros itself, and reads the rest as pieces, each a run of clusters
//! that is contiguous in one file of the chain (one pipelined SFTP read), up to
//! [`MAX_PARALLEL_PIECES`] at once on scoped threads. Each piece is read through imago, which
//! also inflates compressed clusters. A chunk of a freshly converted image is one piece, read
//! on the caller's thread.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use imago::io_buffers::{IoVector, IoVectorMut};
use imago::storage::drivers::CommonStorageHelper;
use imago::{FormatAccess, Mapping, Storage};
use vmstash_ssh::{Sftp, SftpFailure, SftpFile, SshError};

use super::qcow2::{imago_error, mapped_data_ranges, open_chain, relative_to_image, ChainFiles};
use super::{check_read_range, len_u64, remote, DiskSource, ImageFormat, SourceError};

/// Most pieces of one read fetched at once (each on its own thread, the caller's included).
///
/// A 512 KiB chunk of an image with 64 KiB clusters has at most 8 pieces, so all of them are in
/// flight together; each piece is itself pipelined by the SSH layer.
const MAX_PARALLEL_PIECES: usize = 8;

/// A remote chain as imago serves it: every file behind the shared end-of-file check.
type RemoteChain = FormatAccess<super::qcow2::BoundedStorage<SftpStorage>>;

/// A qcow2 image on a remote host, and its backing chain, opened read-only through imago.
struct SftpQcow2Source {
    /// `path (over SFTP)`, for error messages.
    location: PathBuf,
    /// The top image, with the rest of the chain below it.
    image: RemoteChain,
    /// Virtual size of the top image.
    size: u64,
}

/// Opens the remote qcow2 image `path` and its backing chain for reading.
///
/// Relative backing file names resolve against the directory of the image naming them, on the
/// remote host; a relative `path` is relative to the SFTP login directory.
pub(crate) fn open_sftp_qcow2(sftp: &Sftp, path: &str) -> Result<Box<dyn DiskSource>, SourceError> {
    Ok(Box::new(SftpQcow2Source::open(sftp, path)?))
}

impl SftpQcow2Source {
    /// Opens the remote qcow2 image `path` and its backing chain.
    fn open(sftp: &Sftp, path: &str) -> Result<Self, SourceError> {
        let remote = Path::new(path);
        let file = open_remote(sftp, remote)?;
        let image = open_chain(&SftpFiles { sftp }, remote, file)?;
        let size = image.size();
        Ok(Self {
            location: PathBuf::from(format!("{path} (over SFTP)")),
            image,
            size,
        })
    }
}

impl DiskSource for SftpQcow2Source {
    fn format(&self) -> ImageFormat {
        ImageFormat::Qcow2
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        check_read_range(&self.location, offset, buf.len(), self.size)?;
        let len = buf.len();
        let error = |err| {
            let action = format!("read {len} bytes at offset {offset} of");
            imago_error(&self.location, action, err)
        };
        let pieces = data_pieces(&self.image, buf, offset).map_err(error)?;
        read_pieces(&self.image, pieces).map_err(error)
    }

    fn data_ranges(&self) -> Result<Vec<Range<u64>>, SourceError> {
        mapped_data_ranges(&self.image, self.size)
            .map_err(|err| imago_error(&self.location, "map the clusters of".to_owned(), err))
    }

    fn concurrent_reads(&self) -> usize {
        super::sftp::CONCURRENT_SFTP_READS
    }
}

/// A part of a read that holds data in some file of the chain: where it starts on the disk, and
/// the caller's bytes for it.
struct Piece<'a> {
    /// Guest offset of the first byte.
    offset: u64,
    /// Where its bytes go.
    buf: &'a mut [u8],
}

/// Splits a read of `buf` at guest `offset` of `image` along the mapping: fills the parts that
/// read as zeros and returns the others, each a run contiguous in one file.
fn data_pieces<'a>(
    image: &RemoteChain,
    mut buf: &'a mut [u8],
    mut offset: u64,
) -> io::Result<Vec<Piece<'a>>> {
    let mut pieces = Vec::new();
    while !buf.is_empty() {
        let (mapping, len) = image.get_mapping(offset, len_u64(buf.len()))?;
        let len = usize::try_from(len).map_or(buf.len(), |len| len.min(buf.len()));
        if len == 0 || matches!(mapping, Mapping::Eof { .. }) {
            // Past the end of the top image (not reached: reads are checked against its size).
            buf.fill(0);
            break;
        }
        let (part, rest) = std::mem::take(&mut buf).split_at_mut(len);
        match mapping {
            Mapping::Zero { .. } => part.fill(0),
            // Plain data, compressed data, and whatever a later imago adds: imago reads it.
            _ => pieces.push(Piece { offset, buf: part }),
        }
        offset = offset.checked_add(len_u64(len)).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "read past the largest offset")
        })?;
        buf = rest;
    }
    Ok(pieces)
}

/// Reads `pieces` through imago, up to [`MAX_PARALLEL_PIECES`] at once; returns the first error.
fn read_pieces(image: &RemoteChain, pieces: Vec<Piece<'_>>) -> io::Result<()> {
    let threads = pieces.len().min(MAX_PARALLEL_PIECES);
    if threads <= 1 {
        for piece in pieces {
            image.read(piece.buf, piece.offset)?;
        }
        return Ok(());
    }
    let queue = Mutex::new(pieces.into_iter());
    let failed = AtomicBool::new(false);
    let work = || -> io::Result<()> {
        while !failed.load(Ordering::Relaxed) {
            let next = match queue.lock() {
                Ok(mut queue) => queue.next(),
                Err(poisoned) => poisoned.into_inner().next(),
            };
            let Some(piece) = next else {
                break;
            };
            if let Err(err) = image.read(piece.buf, piece.offset) {
                failed.store(true, Ordering::Relaxed);
                return Err(err);
            }
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        // A helper that cannot be started leaves its share to the others.
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(scope, work).ok())
            .collect();
        let mut result = work();
        for helper in helpers {
            let joined = helper
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a disk reader thread panicked")));
            result = result.and(joined);
        }
        result
    })
}

/// Files on the remote host, opened read-only over one SFTP channel.
struct SftpFiles<'a> {
    /// The channel.
    sftp: &'a Sftp,
}

impl ChainFiles for SftpFiles<'_> {
    type File = SftpFile;
    type Identity = PathBuf;
    type Storage = SftpStorage;

    fn open_referenced(
        &self,
        path: &Path,
        what: &str,
        referrer: &Path,
    ) -> Result<SftpFile, SourceError> {
        open_remote(self.sftp, path).map_err(|err| match err {
            SourceError::Remote(err) => SourceError::Io {
                path: path.to_owned(),
                action: format!("open the {what} of {}:", referrer.display()),
                source: match err.downcast::<SshError>() {
                    Ok(ssh) => to_io_error(*ssh),
                    Err(other) => io::Error::other(other),
                },
            },
            other => other,
        })
    }

    fn identity(&self, path: &Path, _file: &SftpFile) -> Result<PathBuf, SourceError> {
        Ok(path.components().collect())
    }

    fn read_prefix(&self, file: &SftpFile, buf: &mut [u8]) -> io::Result<usize> {
        let len = usize::try_from(file.size()).map_or(buf.len(), |size| size.min(buf.len()));
        let prefix = buf.get_mut(..len).unwrap_or_default();
        file.read_at(prefix, 0).map_err(to_io_error)?;
        Ok(len)
    }

    fn imago_storage(&self, path: &Path, file: SftpFile) -> Result<SftpStorage, SourceError> {
        Ok(SftpStorage::new(path, file))
    }
}

/// Opens the remote image at `path` for reading; refuses anything but a regular file.
fn open_remote(sftp: &Sftp, path: &Path) -> Result<SftpFile, SourceError> {
    let unsupported = |what: &str| SourceError::Unsupported {
        path: path.to_owned(),
        what: what.to_owned(),
    };
    let Some(name) = path.to_str() else {
        return Err(unsupported("its path is not valid UTF-8"));
    };
    let metadata = sftp.metadata(name).map_err(remote)?;
    if metadata.is_block_device() {
        return Err(unsupported(
            "it is a block device, whose size SFTP does not report, so qcow2 images on it \
             cannot be read over SFTP; run vmstash on the hypervisor (qemu:///system) instead",
        ));
    }
    if !metadata.is_file {
        return Err(unsupported("it is not a regular file"));
    }
    sftp.open(name).map_err(remote)
}

/// An SFTP error as the `io::Error` imago passes on, with the kind that says what happened.
///
/// Never `InvalidData` or `Unsupported`: [`imago_error`] reads those as damaged or unreadable
/// images, and a failed read says nothing about the image.
fn to_io_error(err: SshError) -> io::Error {
    let kind = match &err {
        SshError::Sftp { failure, .. } => match failure {
            SftpFailure::NotFound => io::ErrorKind::NotFound,
            SftpFailure::PermissionDenied => io::ErrorKind::PermissionDenied,
            SftpFailure::UnexpectedEof { .. } => io::ErrorKind::UnexpectedEof,
            SftpFailure::Timeout => io::ErrorKind::TimedOut,
            SftpFailure::ConnectionLost => io::ErrorKind::ConnectionAborted,
            _ => io::ErrorKind::Other,
        },
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, err)
}

/// imago's storage object for a file on the remote host, opened read-only over SFTP.
struct SftpStorage {
    /// The remote path, against whose directory relative names resolve.
    path: PathBuf,
    /// The open file.
    file: SftpFile,
    /// Its size when it was opened.
    size: u64,
    /// State imago keeps in every storage object (write blockers, unused here).
    helper: CommonStorageHelper,
}

impl SftpStorage {
    /// Wraps `file`, opened from the remote `path`.
    fn new(path: &Path, file: SftpFile) -> Self {
        Self {
            path: path.to_owned(),
            size: file.size(),
            file,
            helper: CommonStorageHelper::default(),
        }
    }

    /// Fills the buffers of `bufv` with the bytes from `offset` on, one after another.
    fn read_vectored(&self, bufv: IoVectorMut<'_>, mut offset: u64) -> io::Result<()> {
        for mut buf in bufv.into_inner() {
            self.read_or_zeros(&mut buf, offset)?;
            offset = offset.checked_add(len_u64(buf.len())).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "read past the largest offset")
            })?;
        }
        Ok(())
    }

    /// Fills `buf` with the bytes at `offset`; what lies past the end of the file reads as zeros
    /// (a last cluster cut short, compressed clusters at the end of an image read with a
    /// rounded-up length). `BoundedStorage` above refuses reads that go further.
    fn read_or_zeros(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let in_file = usize::try_from(self.size.saturating_sub(offset))
            .map_or(buf.len(), |left| left.min(buf.len()));
        let (data, beyond) = buf.split_at_mut(in_file);
        if !data.is_empty() {
            self.file.read_at(data, offset).map_err(to_io_error)?;
        }
        beyond.fill(0);
        Ok(())
    }

    /// The error for any attempt to modify the file.
    fn read_only(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is opened read-only over SFTP", self.path.display()),
        )
    }
}

impl fmt::Debug for SftpStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpStorage")
            .field("path", &self.path)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SftpStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sftp:{}", self.path.display())
    }
}

// With imago's `sync` feature the trait's methods are plain blocking functions (its `async`
// declarations are compiled away), so they are implemented as such.
//
// SAFETY: imago declares `pure_readv`, `pure_writev` and `invalidate_cache` (the only `unsafe`
// methods implemented here) `unsafe` to put obligations on their callers, not to let
// implementations do anything unsound: a caller must align requests to `mem_align()` and
// `req_align()`, and accepts that the safeguards `StorageExt` keeps for concurrent writes (write
// blockers) are bypassed. This implementation depends on neither: its alignments are 1 (the
// defaults), so every request is aligned; it never writes (`pure_writev` refuses, and with it the
// default write-zeroes methods, which write through it), so there are no concurrent writes to
// guard against; and its bodies are safe code (the buffers are reached through
// `IoVectorMut::into_inner`, never through raw pointers), so no call, however made, can cause
// undefined behaviour. `pure_readv` does what its documentation requires: it fills all of `bufv`
// (zeros past the end of the file) or fails.
#[allow(unsafe_code)]
impl Storage for SftpStorage {
    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }

    /// Resolves as [`super::qcow2`] resolves local names: against the directory of this file, on
    /// the remote host. Fails where the result would be relative (a file opened by a relative
    /// name), which imago forbids.
    fn resolve_relative_path<P: AsRef<Path>>(&self, relative: P) -> io::Result<PathBuf> {
        let resolved = relative_to_image(&self.path, relative.as_ref());
        if resolved.is_absolute() {
            Ok(resolved)
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is relative to the SFTP login directory, not absolute",
                    resolved.display()
                ),
            ))
        }
    }

    fn get_filename(&self) -> Option<PathBuf> {
        Some(self.path.clone())
    }

    unsafe fn pure_readv(&self, bufv: IoVectorMut<'_>, offset: u64) -> io::Result<()> {
        self.read_vectored(bufv, offset)
    }

    unsafe fn pure_writev(&self, _bufv: IoVector<'_>, _offset: u64) -> io::Result<()> {
        Err(self.read_only())
    }

    /// Nothing is buffered: a no-op (imago flushes every image it drops).
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// Nothing was written: a no-op.
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    /// Nothing is cached: a no-op.
    unsafe fn invalidate_cache(&self) -> io::Result<()> {
        Ok(())
    }

    fn get_storage_helper(&self) -> &CommonStorageHelper {
        &self.helper
    }
}

#[cfg(test)]
mod tests;
