//! A file's bytes from its `EXTENT_DATA` items: each maps the file range starting at its
//! key's offset to inline bytes in the item, a hole (`disk_bytenr` 0, or no item at all under
//! the `NO_HOLES` feature), preallocated space (reads as zeros), or part of a disk extent
//! (`extent_offset` into it: extents are shared by reflinks and snapshots, and partly
//! overwritten ones are referenced in pieces).
//!
//! Compressed extents (zlib, LZO, zstd) are decompressed whole: Btrfs compresses at most
//! 128 KiB of file data into one extent, so anything claiming more is refused. The last few
//! decompressed extents are cached, so a sequential reader decompresses each once.

use std::io::Read;
use std::num::NonZeroUsize;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::guestfs::FsError;

use super::items::{Compression, ExtentBody, FileExtent, Key, EXTENT_DATA};
use super::lzo;
use super::tree::{TreeRoot, Trees};
use super::FS;

/// Largest decompressed (and compressed) extent: the kernel's `BTRFS_MAX_UNCOMPRESSED`.
pub(super) const MAX_COMPRESSED_EXTENT: u64 = 128 * 1024;
/// zstd's largest window in Btrfs (`ZSTD_BTRFS_MAX_WINDOWLOG`); a frame asking for more is
/// not Btrfs's, and would make the decoder allocate more.
const ZSTD_WINDOW_LOG_MAX: u32 = 17;
/// Decompressed extents kept (2 MiB at most).
const DECOMPRESSED_KEPT: usize = 16;

/// Which decompressed extent: its disk address, its length on disk and its compression.
type Source = (u64, u64, Compression);

/// Recently decompressed extents.
pub(super) struct Decompressed {
    cache: Mutex<LruCache<Source, Arc<Vec<u8>>>>,
}

impl Decompressed {
    /// An empty cache.
    pub(super) fn new() -> Self {
        Decompressed {
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(DECOMPRESSED_KEPT).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    fn get(&self, key: Source) -> Option<Arc<Vec<u8>>> {
        self.lock().get(&key).cloned()
    }

    fn put(&self, key: Source, bytes: Arc<Vec<u8>>) {
        self.lock().put(key, bytes);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<Source, Arc<Vec<u8>>>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a file read needs: the trees, the sector size (LZO segments) and the cache.
pub(super) struct FileReader<'a> {
    /// The filesystem's trees.
    pub trees: &'a Trees,
    /// Sector size.
    pub sectorsize: usize,
    /// Decompressed extents.
    pub decompressed: &'a Decompressed,
}

impl FileReader<'_> {
    /// Up to `len` bytes at `offset` of inode `objectid` of `tree`, whose size is `size`.
    pub(super) fn read(
        &self,
        tree: TreeRoot,
        objectid: u64,
        size: u64,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, FsError> {
        let end = offset.saturating_add(u64::from(len)).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; usize::try_from(end - offset).unwrap_or(0)];
        // The extent covering `offset` may start before it.
        let first = self
            .trees
            .last_not_above(tree, Key::new(objectid, EXTENT_DATA, offset))?
            .filter(|k| k.objectid == objectid && k.kind == EXTENT_DATA)
            .map_or(0, |k| k.offset);
        let lo = Key::new(objectid, EXTENT_DATA, first);
        let hi = Key::new(objectid, EXTENT_DATA, end - 1);
        self.trees.walk(tree, lo, hi, &mut |key, data| {
            let extent = FileExtent::parse(key, data)?;
            let ext_end = key
                .offset
                .checked_add(extent.len)
                .ok_or_else(|| FsError::corrupt(FS, format!("extent {key}: ends past 2^64")))?;
            let (from, to) = (key.offset.max(offset), ext_end.min(end));
            if from < to {
                let dst = out
                    .get_mut(to_usize(from - offset)?..to_usize(to - offset)?)
                    .unwrap_or_default();
                self.fill(key, &extent, from - key.offset, dst)?;
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(out)
    }

    /// Fills `dst` with the bytes of `extent` (of item `key`) from `within` bytes into it.
    fn fill(
        &self,
        key: Key,
        extent: &FileExtent,
        within: u64,
        dst: &mut [u8],
    ) -> Result<(), FsError> {
        match &extent.body {
            ExtentBody::Inline(bytes) => {
                let plain;
                let src: &[u8] = if extent.compression == Compression::None {
                    bytes
                } else {
                    plain = self.decompress(key, extent.compression, bytes, extent.ram_bytes)?;
                    &plain
                };
                copy_from(src, within, dst);
                Ok(())
            }
            ExtentBody::Regular { disk_bytenr: 0, .. }
            | ExtentBody::Regular { prealloc: true, .. } => Ok(()),
            ExtentBody::Regular {
                disk_bytenr,
                disk_num_bytes,
                extent_offset,
                ..
            } => {
                let at = extent_offset.checked_add(within).ok_or_else(|| {
                    FsError::corrupt(FS, format!("extent {key}: offset past 2^64"))
                })?;
                if extent.compression == Compression::None {
                    let logical = disk_bytenr.checked_add(at).ok_or_else(|| {
                        FsError::corrupt(FS, format!("extent {key}: address past 2^64"))
                    })?;
                    return self.trees.read_logical(logical, dst);
                }
                let source = (*disk_bytenr, *disk_num_bytes, extent.compression);
                let plain = match self.decompressed.get(source) {
                    Some(plain) => plain,
                    None => {
                        if *disk_num_bytes > MAX_COMPRESSED_EXTENT {
                            return Err(FsError::corrupt(
                                FS,
                                format!("extent {key}: {disk_num_bytes} compressed bytes"),
                            ));
                        }
                        let mut raw = vec![0u8; to_usize(*disk_num_bytes)?];
                        self.trees.read_logical(*disk_bytenr, &mut raw)?;
                        let plain = Arc::new(self.decompress(
                            key,
                            extent.compression,
                            &raw,
                            extent.ram_bytes,
                        )?);
                        self.decompressed.put(source, Arc::clone(&plain));
                        plain
                    }
                };
                copy_from(&plain, at, dst);
                Ok(())
            }
        }
    }

    /// Decompresses `data` to `ram_bytes` bytes (zeros past the end of a shorter stream, as
    /// the kernel fills them).
    fn decompress(
        &self,
        key: Key,
        compression: Compression,
        data: &[u8],
        ram_bytes: u64,
    ) -> Result<Vec<u8>, FsError> {
        if ram_bytes > MAX_COMPRESSED_EXTENT {
            return Err(FsError::corrupt(
                FS,
                format!("extent {key}: {ram_bytes} bytes when decompressed"),
            ));
        }
        let max = to_usize(ram_bytes)?;
        let damaged = |e: &dyn std::fmt::Display| {
            FsError::corrupt(FS, format!("extent {key}: {compression:?} data: {e}"))
        };
        let mut out = match compression {
            Compression::None => data.to_vec(),
            Compression::Zlib => inflate(data, max).map_err(|e| damaged(&e))?,
            Compression::Zstd => unzstd(data, max).map_err(|e| damaged(&e))?,
            Compression::Lzo => {
                lzo::decompress_btrfs(data, self.sectorsize, max).map_err(|e| damaged(&e))?
            }
        };
        out.resize(max, 0);
        Ok(out)
    }
}

/// Reads at most `max` bytes of `r`; more is an error.
fn read_bounded(r: impl Read, max: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    r.take(limit).read_to_end(&mut out)?;
    if out.len() > max {
        return Err(std::io::Error::other(format!("more than {max} bytes")));
    }
    Ok(out)
}

/// A zlib stream, read as the kernel does: the 2-byte header skipped and the deflate data
/// inflated (the Adler-32 trailer is not checked; what follows the stream is padding).
fn inflate(data: &[u8], max: usize) -> std::io::Result<Vec<u8>> {
    let header_ok = match data {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && flg & 0x20 == 0 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
        }
        _ => false,
    };
    if !header_ok {
        return Err(std::io::Error::other("no zlib header"));
    }
    read_bounded(
        flate2::read::DeflateDecoder::new(data.get(2..).unwrap_or_default()),
        max,
    )
}

/// One zstd frame (what follows it is padding).
fn unzstd(data: &[u8], max: usize) -> std::io::Result<Vec<u8>> {
    // The extent is one frame, padded with zeros to whole sectors.
    let frame_len = zstd::zstd_safe::find_frame_compressed_size(data)
        .map_err(|code| std::io::Error::other(zstd::zstd_safe::get_error_name(code)))?;
    let frame = data
        .get(..frame_len)
        .ok_or_else(|| std::io::Error::other("frame longer than the extent"))?;
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decompressor = match &mut *slot {
            Some(d) => d,
            empty => {
                let mut d = zstd::bulk::Decompressor::new()?;
                d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
                    ZSTD_WINDOW_LOG_MAX,
                ))?;
                empty.insert(d)
            }
        };
        // Fails when the frame holds more than `max` bytes.
        decompressor.decompress(frame, max)
    })
}

thread_local! {
    /// Each thread's zstd decompression context, made once: a new one per extent costs more
    /// than decompressing the extent.
    static ZSTD: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Copies `src` from `at` into `dst`; what `src` does not have stays as it is (zeros).
fn copy_from(src: &[u8], at: u64, dst: &mut [u8]) {
    let start = usize::try_from(at).unwrap_or(usize::MAX);
    if let Some(tail) = src.get(start..) {
        let n = tail.len().min(dst.len());
        if let (Some(d), Some(s)) = (dst.get_mut(..n), tail.get(..n)) {
            d.copy_from_slice(s);
        }
    }
}

/// `n` as a `usize`.
fn to_usize(n: u64) -> Result<usize, FsError> {
    usize::try_from(n).map_err(|_| FsError::corrupt(FS, format!("length {n} too large")))
}
