//! qcow2 images, read through imago, with their backing chains.
//!
//! # Opening
//!
//! Each image of the chain is opened by vmstash, not by imago's implicit-open machinery, so that
//! every file is opened read-only, backing paths are resolved the way qemu resolves them, and the
//! chain is checked for loops, length and the memory its metadata would take ([`ChainLimits`]).
//! The walk ([`open_chain`]) is the same for local chains and for chains on a remote host read
//! over SFTP (the CLI's `source/sftp_qcow2.rs`); only how files are opened and told apart differs
//! ([`ChainFiles`]):
//!
//! 1. The header's first 104 bytes (qemu's `docs/interop/qcow2.txt`, "Header") are checked here
//!    ([`HeaderSummary`]): version, cluster size, encryption, incompatible feature bits, and
//!    whether the L1 table can address the whole virtual size. Bad values are `Corrupt`,
//!    features vmstash cannot read are `Unsupported`; imago does not check encryption at all,
//!    so this check is what stops an encrypted image from being backed up as ciphertext.
//! 2. imago parses the image without its dependencies (`Qcow2::open_image`, not writable).
//! 3. An external data file, if the header requires one, is opened read-only and attached.
//! 4. The backing file named in the header is opened (relative to the image's directory) in the
//!    declared format, probed by content only if none is declared, and the loop goes on with it.
//!
//! The layers are then stacked bottom-up (`Qcow2::set_backing`) into one imago `FormatAccess`,
//! which serves reads and mapping queries for the whole chain.
//!
//! # Data ranges
//!
//! `FormatAccess::get_mapping` resolves a guest offset through the chain: data in any layer
//! (plain or compressed) is a data range; clusters that are zero in the top image, unallocated
//! everywhere, or beyond the end of a shorter backing file are not.

use super::{
    check_read_range, format_of_prefix, open_image_file, push_range, read_prefix, DiskSource,
    ImageFormat, SourceError,
};
use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{FormatAccess, Mapping, Storage as ImagoStorage, StorageOpenOptions};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The first four bytes of every qcow2 image: "QFI" and 0xfb (`QCOW_MAGIC` in qemu).
pub(super) const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Most images a backing chain may have, the top image included.
///
/// qemu has no fixed limit; real chains (one image per external snapshot) stay far below this,
/// and the limit keeps a crafted chain from exhausting file descriptors.
const MAX_CHAIN_LENGTH: usize = 256;

/// Most bytes of qcow2 metadata (L1 tables and full L2 caches) imago may hold for one chain.
///
/// An ordinary image with 64 KiB clusters costs about 8 MiB (its L2 cache, filled only as
/// reads reach it), so this allows chains of some 250 such images; crafted headers with huge
/// L1 tables or 2 MiB clusters reach it after a few images instead of exhausting memory.
const MAX_CHAIN_METADATA_BYTES: u64 = 2 << 30;

/// L2 tables imago caches per qcow2 image (`MetadataCaches::new(.., 128, ..)` in imago 0.2.6).
const IMAGO_L2_CACHE_TABLES: u64 = 128;

/// Most L1 entries qemu accepts (`QCOW_MAX_L1_SIZE`, 32 MiB of 8-byte entries).
const MAX_L1_ENTRIES: u32 = 4 * 1024 * 1024;

/// Smallest and largest `cluster_bits` qemu accepts (512 bytes to 2 MiB clusters).
const CLUSTER_BITS_RANGE: std::ops::RangeInclusive<u32> = 9..=21;

/// Byte offsets and lengths of the qcow2 header fields vmstash checks (all big-endian).
mod field {
    /// Header version, 2 or 3 (`u32`).
    pub(super) const VERSION: usize = 4;
    /// log2 of the cluster size (`u32`).
    pub(super) const CLUSTER_BITS: usize = 20;
    /// Virtual disk size in bytes (`u64`).
    pub(super) const SIZE: usize = 24;
    /// 0 = none, 1 = AES, 2 = LUKS (`u32`).
    pub(super) const CRYPT_METHOD: usize = 32;
    /// Number of entries in the active L1 table (`u32`).
    pub(super) const L1_SIZE: usize = 36;
    /// Incompatible feature bits, version 3 only (`u64`).
    pub(super) const INCOMPATIBLE_FEATURES: usize = 72;
    /// Length of a version 2 header.
    pub(super) const V2_HEADER_LEN: usize = 72;
    /// Length of the fixed part of a version 3 header.
    pub(super) const V3_HEADER_LEN: usize = 104;
}

/// Incompatible feature bits (qcow2 version 3, header bytes 72..80).
mod incompatible {
    /// Refcounts may be inconsistent (lazy refcounts in use, or not closed cleanly).
    pub(super) const DIRTY: u64 = 1 << 0;
    /// qemu found the metadata corrupt and stopped writing to it.
    pub(super) const CORRUPT: u64 = 1 << 1;
    /// Guest data lives in an external data file.
    pub(super) const EXTERNAL_DATA_FILE: u64 = 1 << 2;
    /// Compressed clusters use the compression type field (zstd) instead of zlib.
    pub(super) const COMPRESSION_TYPE: u64 = 1 << 3;
    /// L2 entries are 128 bits with subcluster allocation.
    pub(super) const EXTENDED_L2: u64 = 1 << 4;
}

/// imago's storage object for local images: a file or block device read with `preadv`.
type Storage = ImagoFile;

/// A local image (or a whole local chain) as imago serves it.
type Layer = FormatAccess<Storage>;

/// A qcow2 image and its backing chain, opened read-only through imago.
#[derive(Debug)]
pub(super) struct Qcow2Source {
    /// The path of the top image, for error messages.
    path: PathBuf,
    /// The top image, with the rest of the chain below it.
    image: Layer,
    /// Virtual size of the top image.
    size: u64,
}

impl Qcow2Source {
    /// Opens the qcow2 image `file` (found at `path`) and its backing chain.
    pub(super) fn open(path: &Path, file: File) -> Result<Self, SourceError> {
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

/// Lists the ranges of `image` below `size` that map to data in some layer of the chain.
pub fn mapped_data_ranges<S: ImagoStorage>(
    image: &FormatAccess<S>,
    size: u64,
) -> io::Result<Vec<Range<u64>>> {
    let mut ranges = Vec::new();
    let mut offset = 0;
    while offset < size {
        let (mapping, len) = image.get_mapping(offset, size - offset)?;
        let is_data = match mapping {
            Mapping::Eof { .. } => break,
            Mapping::Zero { .. } => false,
            // Plain data, compressed data, and whatever a later imago adds: read it.
            _ => true,
        };
        let end = offset
            .checked_add(len)
            .filter(|end| *end > offset)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("empty or overflowing mapping ({len} bytes) at guest offset {offset}"),
                )
            })?
            .min(size);
        if is_data {
            push_range(&mut ranges, offset..end);
        }
        offset = end;
    }
    Ok(ranges)
}

/// Where the files of a chain are and how they are reached: on this host ([`LocalFiles`]) or on
/// a remote one (`super::sftp_qcow2`). The walk down the chain and every rule it follows (header
/// checks, limits, how backing names resolve, which formats are trusted) are the same for all
/// ([`open_chain`]).
pub trait ChainFiles {
    /// An opened image file, not yet handed to imago.
    type File;
    /// What tells opened files apart, to recognise a chain that comes back to one.
    type Identity: PartialEq;
    /// imago's storage object for an opened file.
    type Storage: ImagoStorage;

    /// Opens, read-only, the file at `path` that the header of the image at `referrer` names as
    /// its `what` ("backing file"). Errors name both files.
    fn open_referenced(
        &self,
        path: &Path,
        what: &str,
        referrer: &Path,
    ) -> Result<Self::File, SourceError>;

    /// The identity of `file`, opened from `path`.
    fn identity(&self, path: &Path, file: &Self::File) -> Result<Self::Identity, SourceError>;

    /// Reads as much of the start of `file` as fits in `buf` (less if the file is shorter);
    /// returns how many bytes were read.
    fn read_prefix(&self, file: &Self::File, buf: &mut [u8]) -> io::Result<usize>;

    /// Hands `file`, opened from `path`, to imago.
    fn imago_storage(&self, path: &Path, file: Self::File) -> Result<Self::Storage, SourceError>;
}

/// Files on this host, opened with `O_RDONLY`, recognised by device and inode.
struct LocalFiles;

impl ChainFiles for LocalFiles {
    type File = File;
    type Identity = (u64, u64);
    type Storage = Storage;

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
    fn imago_storage(&self, path: &Path, file: File) -> Result<Storage, SourceError> {
        let options = StorageOpenOptions::new().filename(path);
        ImagoFile::from_open_file(file, options).map_err(|source| SourceError::Io {
            path: path.to_owned(),
            action: "find the size of".to_owned(),
            source,
        })
    }
}

/// A backing file named by an image header, opened but not yet parsed.
struct BackingFile<F> {
    /// Where it was found (resolved as qemu does).
    path: PathBuf,
    /// The file, opened read-only.
    file: F,
    /// Its format: declared in the referencing header, or probed if none was declared.
    format: ImageFormat,
}

/// Opens the qcow2 image `file` at `path` and everything below it, reached through `files`, and
/// stacks the layers.
pub fn open_chain<F: ChainFiles>(
    files: &F,
    path: &Path,
    file: F::File,
) -> Result<FormatAccess<F::Storage>, SourceError> {
    let mut limits = ChainLimits::new(path);
    limits.visit(path, files.identity(path, &file)?)?;
    let (mut top, mut next) = open_qcow2_layer(files, path, file, &mut limits)?;
    let mut lower = Vec::new();
    let mut base = None;
    while let Some(backing) = next.take() {
        limits.visit(&backing.path, files.identity(&backing.path, &backing.file)?)?;
        match backing.format {
            ImageFormat::Raw => base = Some(open_raw_layer(files, &backing.path, backing.file)?),
            ImageFormat::Qcow2 => {
                let (layer, further) =
                    open_qcow2_layer(files, &backing.path, backing.file, &mut limits)?;
                lower.push(layer);
                next = further;
            }
        }
    }
    let below_top = lower.into_iter().rev().fold(base, |below, mut layer| {
        layer.set_backing(below);
        Some(FormatAccess::new(layer))
    });
    top.set_backing(below_top);
    Ok(FormatAccess::new(top))
}

/// What a backing chain has used of the limits that keep a crafted chain from looping or
/// exhausting memory and file descriptors.
struct ChainLimits<I> {
    /// The top image, named in errors about the chain as a whole.
    top: PathBuf,
    /// The identity of every image visited so far.
    seen: Vec<I>,
    /// Metadata imago may keep in memory for the images opened so far, at most.
    metadata_bytes: u64,
}

impl<I: PartialEq> ChainLimits<I> {
    /// Limits for the chain below the image at `top`.
    fn new(top: &Path) -> Self {
        Self {
            top: top.to_owned(),
            seen: Vec::new(),
            metadata_bytes: 0,
        }
    }

    /// Records that the chain reaches the file at `path`, with `identity`; refuses loops and
    /// overlong chains.
    fn visit(&mut self, path: &Path, identity: I) -> Result<(), SourceError> {
        if self.seen.contains(&identity) {
            return Err(SourceError::Corrupt {
                path: path.to_owned(),
                what: format!(
                    "the backing chain of {} loops back to this file; \
                     point the image at the right backing file with `qemu-img rebase -u`",
                    self.top.display()
                ),
            });
        }
        self.seen.push(identity);
        if self.seen.len() > MAX_CHAIN_LENGTH {
            return Err(self.too_big(format!("is longer than {MAX_CHAIN_LENGTH} images")));
        }
        Ok(())
    }

    /// Accounts for the metadata imago will keep in memory for an image with `header`.
    fn charge(&mut self, header: &HeaderSummary) -> Result<(), SourceError> {
        self.metadata_bytes = self.metadata_bytes.saturating_add(header.metadata_bytes());
        if self.metadata_bytes > MAX_CHAIN_METADATA_BYTES {
            return Err(self.too_big(format!(
                "needs more than {} MiB of qcow2 metadata in memory",
                MAX_CHAIN_METADATA_BYTES >> 20
            )));
        }
        Ok(())
    }

    /// The error for a chain that `what` ("is longer than 256 images").
    fn too_big(&self, what: String) -> SourceError {
        SourceError::Unsupported {
            path: self.top.clone(),
            what: format!(
                "its backing chain {what}; shorten it with `qemu-img commit` \
                 or flatten it with `qemu-img convert`"
            ),
        }
    }
}

/// A qcow2 image of a chain, without its backing image yet, and the backing file it names.
type OpenedLayer<F> = (
    Qcow2<<F as ChainFiles>::Storage>,
    Option<BackingFile<<F as ChainFiles>::File>>,
);

/// Opens one qcow2 image of a chain (with its external data file, if any), without a backing
/// image attached yet, and opens the backing file its header names.
fn open_qcow2_layer<F: ChainFiles>(
    files: &F,
    path: &Path,
    file: F::File,
    limits: &mut ChainLimits<F::Identity>,
) -> Result<OpenedLayer<F>, SourceError> {
    let header = check_header(files, path, &file)?;
    limits.charge(&header)?;
    let storage = files.imago_storage(path, file)?;
    let mut image = Qcow2::<F::Storage>::open_image(storage, false)
        .map_err(|err| imago_error(path, "open the qcow2 image".to_owned(), err))?;
    let data_file = open_data_file(files, path, &image)?;
    image.set_data_file(data_file);
    let backing = open_backing_file(files, path, &image)?;
    Ok((image, backing))
}

/// Opens the raw file at the bottom of a chain.
fn open_raw_layer<F: ChainFiles>(
    files: &F,
    path: &Path,
    file: F::File,
) -> Result<FormatAccess<F::Storage>, SourceError> {
    let storage = files.imago_storage(path, file)?;
    let raw = Raw::open_image(storage, false)
        .map_err(|err| imago_error(path, "open the raw backing file".to_owned(), err))?;
    Ok(FormatAccess::new(raw))
}

/// Opens the external data file of `image` (at `path`) read-only, if its header requires one.
fn open_data_file<F: ChainFiles>(
    files: &F,
    path: &Path,
    image: &Qcow2<F::Storage>,
) -> Result<Option<F::Storage>, SourceError> {
    if !image.requires_external_data_file() {
        return Ok(None);
    }
    let Some(name) = image.implicit_external_data_file() else {
        return Err(SourceError::Corrupt {
            path: path.to_owned(),
            what: "the header requires an external data file but does not name one".to_owned(),
        });
    };
    let what = "external data file";
    let data_path = resolve_reference(path, name, what)?;
    let file = files.open_referenced(&data_path, what, path)?;
    files.imago_storage(&data_path, file).map(Some)
}

/// Opens the backing file named in the header of `image` (at `path`), if it names one, and
/// decides its format.
fn open_backing_file<F: ChainFiles>(
    files: &F,
    path: &Path,
    image: &Qcow2<F::Storage>,
) -> Result<Option<BackingFile<F::File>>, SourceError> {
    let Some(name) = image.implicit_backing_file() else {
        return Ok(None);
    };
    let declared = match image.implicit_backing_format().map(String::as_str) {
        None => None,
        Some("qcow2") => Some(ImageFormat::Qcow2),
        Some("raw" | "file" | "host_device") => Some(ImageFormat::Raw),
        Some(other) => {
            return Err(SourceError::Unsupported {
                path: path.to_owned(),
                what: format!(
                    "its backing file {name} is in {other} format, and vmstash follows only \
                     qcow2 and raw backing files; flatten the chain with \
                     `qemu-img convert -O qcow2`"
                ),
            })
        }
    };
    let what = "backing file";
    let backing_path = resolve_reference(path, name, what)?;
    let file = files.open_referenced(&backing_path, what, path)?;
    let format = match declared {
        Some(format) => format,
        None => probe_format(files, &backing_path, &file)?,
    };
    Ok(Some(BackingFile {
        path: backing_path,
        file,
        format,
    }))
}

/// Detects the format of the opened `file` at `path` from its first bytes, like
/// [`super::detect_format`] does for local files.
fn probe_format<F: ChainFiles>(
    files: &F,
    path: &Path,
    file: &F::File,
) -> Result<ImageFormat, SourceError> {
    let mut magic = [0u8; MAGIC.len()];
    let filled = files
        .read_prefix(file, &mut magic)
        .map_err(|source| SourceError::Io {
            path: path.to_owned(),
            action: "read the first bytes of".to_owned(),
            source,
        })?;
    Ok(format_of_prefix(magic.get(..filled).unwrap_or(&[])))
}

/// Resolves a file name from the header of the image at `image_path`, as qemu does: absolute
/// names as they are, relative ones against the image's directory.
///
/// `what` says what the name is for ("backing file"), for error messages.
fn resolve_reference(image_path: &Path, name: &str, what: &str) -> Result<PathBuf, SourceError> {
    if name.is_empty() {
        return Err(SourceError::Corrupt {
            path: image_path.to_owned(),
            what: format!("the {what} name in the header is empty"),
        });
    }
    if is_qemu_protocol(name) {
        return Err(SourceError::Unsupported {
            path: image_path.to_owned(),
            what: format!(
                "its {what} is `{name}`, a qemu protocol or JSON description rather than a \
                 file; point it at a plain path with `qemu-img rebase -u`"
            ),
        });
    }
    Ok(relative_to_image(image_path, Path::new(name)))
}

/// `reference` as seen from the image at `image_path`: absolute as it is, relative against the
/// image's directory (qemu's rule for backing and data file names).
pub fn relative_to_image(image_path: &Path, reference: &Path) -> PathBuf {
    if reference.is_absolute() {
        return reference.to_owned();
    }
    let directory = image_path.parent().unwrap_or_else(|| Path::new(""));
    directory.join(reference)
}

/// Whether qemu would read `name` as a protocol (`nbd:…`, `json:{…}`, `http://…`) rather
/// than as a file name.
fn is_qemu_protocol(name: &str) -> bool {
    const PROTOCOLS: [&str; 8] = [
        "json:", "nbd:", "rbd:", "iscsi:", "gluster:", "ssh:", "nfs:", "vxhs:",
    ];
    name.contains("://") || PROTOCOLS.iter().any(|prefix| name.starts_with(prefix))
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

/// Turns an imago error about the image at `path` into a [`SourceError`]: imago reports bad
/// metadata as `InvalidData` and unreadable features as `Unsupported`; the rest is I/O.
pub fn imago_error(path: &Path, action: String, err: io::Error) -> SourceError {
    match err.kind() {
        io::ErrorKind::InvalidData => SourceError::Corrupt {
            path: path.to_owned(),
            what: err.to_string(),
        },
        io::ErrorKind::Unsupported => SourceError::Unsupported {
            path: path.to_owned(),
            what: err.to_string(),
        },
        _ => SourceError::Io {
            path: path.to_owned(),
            action,
            source: err,
        },
    }
}

/// Reads and checks the header of the qcow2 image `file` at `path`.
fn check_header<F: ChainFiles>(
    files: &F,
    path: &Path,
    file: &F::File,
) -> Result<HeaderSummary, SourceError> {
    let mut bytes = [0u8; field::V3_HEADER_LEN];
    let filled = files
        .read_prefix(file, &mut bytes)
        .map_err(|source| SourceError::Io {
            path: path.to_owned(),
            action: "read the qcow2 header of".to_owned(),
            source,
        })?;
    let header = bytes.get(..filled).unwrap_or(&[]);
    HeaderSummary::parse(header)
        .and_then(|summary| summary.check().map(|()| summary))
        .map_err(|problem| problem.into_error(path))
}

/// What is wrong with a qcow2 header, split by whose fault it is.
#[derive(Debug, PartialEq, Eq)]
enum HeaderProblem {
    /// The header is damaged or inconsistent.
    Corrupt(String),
    /// The header is valid but asks for something vmstash cannot read; says what to do.
    Unsupported(String),
}

impl HeaderProblem {
    /// The error for the image at `path`.
    fn into_error(self, path: &Path) -> SourceError {
        match self {
            Self::Corrupt(what) => SourceError::Corrupt {
                path: path.to_owned(),
                what,
            },
            Self::Unsupported(what) => SourceError::Unsupported {
                path: path.to_owned(),
                what,
            },
        }
    }
}

/// The qcow2 header fields that decide whether vmstash can read an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeaderSummary {
    /// Header version (2 or 3 once parsed).
    version: u32,
    /// log2 of the cluster size.
    cluster_bits: u32,
    /// Virtual disk size in bytes.
    size: u64,
    /// Encryption method: 0 none, 1 AES, 2 LUKS.
    crypt_method: u32,
    /// Entries in the active L1 table.
    l1_size: u32,
    /// Incompatible feature bits (0 for version 2).
    incompatible_features: u64,
}

impl HeaderSummary {
    /// Parses the first bytes of an image (as many as the file has, up to 104).
    fn parse(bytes: &[u8]) -> Result<Self, HeaderProblem> {
        if bytes.len() < field::V2_HEADER_LEN {
            return Err(HeaderProblem::Corrupt(format!(
                "the file is {} bytes long, shorter than a qcow2 header",
                bytes.len()
            )));
        }
        if bytes.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
            return Err(HeaderProblem::Corrupt(
                "the qcow2 magic is missing".to_owned(),
            ));
        }
        let version = be_u32(bytes, field::VERSION)?;
        let incompatible_features = match version {
            2 => 0,
            3 if bytes.len() < field::V3_HEADER_LEN => {
                return Err(HeaderProblem::Corrupt(format!(
                    "the file is {} bytes long, shorter than a qcow2 version 3 header",
                    bytes.len()
                )))
            }
            3 => be_u64(bytes, field::INCOMPATIBLE_FEATURES)?,
            other => {
                return Err(HeaderProblem::Unsupported(format!(
                    "it is qcow2 version {other}; vmstash reads versions 2 and 3"
                )))
            }
        };
        Ok(Self {
            version,
            cluster_bits: be_u32(bytes, field::CLUSTER_BITS)?,
            size: be_u64(bytes, field::SIZE)?,
            crypt_method: be_u32(bytes, field::CRYPT_METHOD)?,
            l1_size: be_u32(bytes, field::L1_SIZE)?,
            incompatible_features,
        })
    }

    /// Checks that vmstash (and imago) can read an image with this header.
    fn check(&self) -> Result<(), HeaderProblem> {
        if !CLUSTER_BITS_RANGE.contains(&self.cluster_bits) {
            return Err(HeaderProblem::Corrupt(format!(
                "cluster_bits is {}, outside {CLUSTER_BITS_RANGE:?}",
                self.cluster_bits
            )));
        }
        self.check_encryption()?;
        self.check_incompatible_features()?;
        self.check_l1_size()
    }

    /// Refuses encrypted images: imago would hand out the ciphertext.
    fn check_encryption(&self) -> Result<(), HeaderProblem> {
        let method = match self.crypt_method {
            0 => return Ok(()),
            1 => "legacy AES encryption".to_owned(),
            2 => "LUKS encryption".to_owned(),
            other => format!("unknown encryption method {other}"),
        };
        Err(HeaderProblem::Unsupported(format!(
            "it uses {method}; back up a decrypted copy made with `qemu-img convert`"
        )))
    }

    /// Refuses incompatible features imago cannot read, with what to do about each.
    fn check_incompatible_features(&self) -> Result<(), HeaderProblem> {
        let features = self.incompatible_features;
        if features & incompatible::CORRUPT != 0 {
            return Err(HeaderProblem::Corrupt(
                "qemu marked the image corrupt; repair it with `qemu-img check -r all`".to_owned(),
            ));
        }
        if features & incompatible::DIRTY != 0 {
            return Err(HeaderProblem::Unsupported(
                "it is marked dirty: a VM has it open with lazy refcounts, or it was not \
                 closed cleanly; back up a snapshot, or run `qemu-img check -r leaks` on it \
                 while no VM uses it"
                    .to_owned(),
            ));
        }
        if features & incompatible::COMPRESSION_TYPE != 0 {
            return Err(HeaderProblem::Unsupported(
                "its compressed clusters use zstd; convert it with \
                 `qemu-img convert -O qcow2 -o compression_type=zlib`"
                    .to_owned(),
            ));
        }
        if features & incompatible::EXTENDED_L2 != 0 {
            return Err(HeaderProblem::Unsupported(
                "it uses extended L2 entries (subclusters); convert it with \
                 `qemu-img convert -O qcow2 -o extended_l2=off`"
                    .to_owned(),
            ));
        }
        let unknown = features & !incompatible::EXTERNAL_DATA_FILE;
        if unknown != 0 {
            return Err(HeaderProblem::Unsupported(format!(
                "it has incompatible feature bits {unknown:#x} that vmstash does not know \
                 (written by a newer qemu?); convert it with `qemu-img convert -O qcow2`"
            )));
        }
        Ok(())
    }

    /// Most bytes of metadata imago keeps in memory for this image: the L1 table and a full L2
    /// cache (refcount blocks are only cached for writing). Call after [`HeaderSummary::check`].
    fn metadata_bytes(&self) -> u64 {
        let l1_table = u64::from(self.l1_size).saturating_mul(8);
        let l2_cache = IMAGO_L2_CACHE_TABLES
            .checked_shl(self.cluster_bits)
            .unwrap_or(u64::MAX);
        l1_table.saturating_add(l2_cache)
    }

    /// Checks that the L1 table is of a size qemu accepts and addresses the whole disk (as
    /// qemu does), which also bounds how far a mapping scan of the disk can go.
    fn check_l1_size(&self) -> Result<(), HeaderProblem> {
        if self.l1_size > MAX_L1_ENTRIES {
            return Err(HeaderProblem::Corrupt(format!(
                "the L1 table has {} entries, more than qemu's limit of {MAX_L1_ENTRIES}",
                self.l1_size
            )));
        }
        // One L1 entry maps one L2 table: cluster_size / 8 entries of cluster_size bytes each.
        // cluster_bits is in 9..=21 here, so the shift is 15..=39.
        let bytes_per_l1_entry = 1u64 << (2 * self.cluster_bits - 3);
        let needed = self.size.div_ceil(bytes_per_l1_entry);
        if needed > u64::from(self.l1_size) {
            return Err(HeaderProblem::Corrupt(format!(
                "the L1 table has {} entries, too few for the virtual size of {} bytes \
                 (which needs {needed})",
                self.l1_size, self.size
            )));
        }
        Ok(())
    }
}

/// Reads the big-endian `u32` at `at` of a header.
fn be_u32(bytes: &[u8], at: usize) -> Result<u32, HeaderProblem> {
    header_bytes(bytes, at).map(u32::from_be_bytes)
}

/// Reads the big-endian `u64` at `at` of a header.
fn be_u64(bytes: &[u8], at: usize) -> Result<u64, HeaderProblem> {
    header_bytes(bytes, at).map(u64::from_be_bytes)
}

/// The `N` header bytes at `at`.
fn header_bytes<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], HeaderProblem> {
    at.checked_add(N)
        .and_then(|end| bytes.get(at..end))
        .and_then(|slice| <[u8; N]>::try_from(slice).ok())
        .ok_or_else(|| HeaderProblem::Corrupt(format!("the header ends before byte {at}")))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_ranges_cover, qemu, read_all, TestResult};
    use super::super::{open, DiskSource, ImageFormat, SourceError};
    use super::*;
    use std::error::Error;
    use std::path::Path;

    const MIB: usize = 1 << 20;

    /// `path` as the `&str` qemu-img wants.
    fn arg(path: &Path) -> Result<&str, Box<dyn Error>> {
        path.to_str().ok_or_else(|| "temp path is not UTF-8".into())
    }

    /// A 4 MiB raw disk: patterned data at 0..200 KiB and 3 MiB..3 MiB+64 KiB, zeros elsewhere.
    fn patterned_raw(path: &Path) -> Result<Vec<u8>, Box<dyn Error>> {
        let mut data = vec![0u8; 4 * MIB];
        let pattern = (1..=253u8).cycle();
        for (byte, value) in data.iter_mut().take(200 << 10).zip(pattern.clone()) {
            *byte = value;
        }
        for (byte, value) in data.iter_mut().skip(3 * MIB).take(64 << 10).zip(pattern) {
            *byte = value.wrapping_mul(7);
        }
        std::fs::write(path, &data)?;
        Ok(data)
    }

    /// Converts `raw` to qcow2 at `qcow2` with extra `options` for `qemu-img convert`.
    fn convert(raw: &Path, qcow2: &Path, options: &[&str]) -> TestResult {
        let mut args = vec!["convert", "-q", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(options);
        args.extend_from_slice(&[arg(raw)?, arg(qcow2)?]);
        qemu("qemu-img", &args)
    }

    /// What qemu itself reads from `image`: converts it to raw and returns the bytes.
    fn qemu_view(image: &Path) -> Result<Vec<u8>, Box<dyn Error>> {
        let raw = image.with_extension("expected");
        let args = ["convert", "-q", "-O", "raw", arg(image)?, arg(&raw)?];
        qemu("qemu-img", &args)?;
        Ok(std::fs::read(raw)?)
    }

    /// Opening `path` must fail; returns the error.
    fn open_err(path: &Path) -> Result<SourceError, Box<dyn Error>> {
        match open(path) {
            Ok(_) => Err(format!("{} opened", path.display()).into()),
            Err(err) => Ok(err),
        }
    }

    /// Creates a qcow2 image at `path` with `qemu-img create`: `size` ("1M"; `None` takes the
    /// backing file's) and an optional backing file as `(name, format)`.
    fn create(path: &Path, size: Option<&str>, backing: Option<(&str, &str)>) -> TestResult {
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if let Some((name, format)) = backing {
            args.extend_from_slice(&["-b", name, "-F", format]);
        }
        args.push(arg(path)?);
        args.extend(size);
        qemu("qemu-img", &args)
    }

    /// Points the image at `path` to another backing file without checking it (`rebase -u`).
    fn rebase_unsafe(path: &Path, name: &str, format: &str) -> TestResult {
        let args = ["rebase", "-q", "-u", "-b", name, "-F", format, arg(path)?];
        qemu("qemu-img", &args)
    }

    /// Runs `qemu-io` commands ("write -P 0xab 0 64k") on the image at `path`.
    fn qemu_io(path: &Path, commands: &[&str]) -> TestResult {
        let mut args = Vec::new();
        for command in commands {
            args.extend_from_slice(&["-c", command]);
        }
        args.push(arg(path)?);
        qemu("qemu-io", &args)
    }

    #[test]
    fn converted_image_reads_like_the_raw_one() -> TestResult {
        let dir = tempfile::tempdir()?;
        let raw = dir.path().join("disk.raw");
        let qcow2 = dir.path().join("disk.qcow2");
        let expected = patterned_raw(&raw)?;
        convert(&raw, &qcow2, &[])?;

        let source = open(&qcow2)?;
        assert_eq!(source.format(), ImageFormat::Qcow2);
        assert_eq!(source.size(), 4 << 20);
        assert_eq!(read_all(source.as_ref())?, expected);

        let ranges = source.data_ranges()?;
        assert_ranges_cover(&ranges, &expected);
        let covered: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        assert!(
            covered <= 512 << 10,
            "zero clusters not excluded: {ranges:?}"
        );
        Ok(())
    }

    #[test]
    fn compressed_image_reads_like_the_raw_one() -> TestResult {
        let dir = tempfile::tempdir()?;
        let raw = dir.path().join("disk.raw");
        let qcow2 = dir.path().join("disk.qcow2");
        let expected = patterned_raw(&raw)?;
        convert(&raw, &qcow2, &["-c", "-o", "cluster_size=4096"])?;
        let source = open(&qcow2)?;
        assert_eq!(read_all(source.as_ref())?, expected);
        assert_ranges_cover(&source.data_ranges()?, &expected);
        Ok(())
    }

    #[test]
    fn backing_chain_reads_like_qemu() -> TestResult {
        let dir = tempfile::tempdir()?;
        let base_raw = dir.path().join("base.raw");
        patterned_raw(&base_raw)?;
        // mid: qcow2 over the raw base, named relative to its own directory.
        let mid = dir.path().join("mid.qcow2");
        let top = dir.path().join("top.qcow2");
        create(&mid, None, Some(("base.raw", "raw")))?;
        qemu_io(&mid, &["write -P 0xab 128k 64k", "write -z 3M 64k"])?;
        // top: qcow2 over mid, larger than mid, with its own writes.
        create(&top, Some("6M"), Some(("mid.qcow2", "qcow2")))?;
        qemu_io(&top, &["write -P 0xcd 1M 4k", "write -P 0xef 5M 8k"])?;

        let expected = qemu_view(&top)?;
        let source = open(&top)?;
        assert_eq!(source.size(), 6 << 20);
        assert_eq!(read_all(source.as_ref())?, expected);

        let ranges = source.data_ranges()?;
        assert_ranges_cover(&ranges, &expected);
        // The zeroed cluster of mid and the part of top beyond the raw base are not data.
        let zeroed = 3 << 20;
        assert!(!ranges.iter().any(|r| r.contains(&zeroed)), "{ranges:?}");
        assert!(!ranges.iter().any(|r| r.contains(&(4 << 20))), "{ranges:?}");
        Ok(())
    }

    #[test]
    fn backing_file_is_found_relative_to_the_image_not_the_cwd() -> TestResult {
        let dir = tempfile::tempdir()?;
        let sub = dir.path().join("images");
        std::fs::create_dir(&sub)?;
        let base_raw = sub.join("base.raw");
        let base = sub.join("base.qcow2");
        let expected = patterned_raw(&base_raw)?;
        convert(&base_raw, &base, &[])?;
        let top = sub.join("top.qcow2");
        create(&top, None, Some(("base.qcow2", "qcow2")))?;
        // The test's working directory has no base.qcow2, so only the right rule finds it.
        let source = open(&top)?;
        assert_eq!(read_all(source.as_ref())?, expected);
        Ok(())
    }

    #[test]
    fn external_data_file_is_read() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ext.qcow2");
        let data_file = format!("data_file={}", arg(&dir.path().join("data.raw"))?);
        let args = ["create", "-q", "-f", "qcow2", "-o", &data_file];
        qemu("qemu-img", &[&args[..], &[arg(&path)?, "1M"]].concat())?;
        qemu_io(&path, &["write -P 0x42 64k 64k"])?;
        let expected = qemu_view(&path)?;
        let source = open(&path)?;
        assert_eq!(read_all(source.as_ref())?, expected);
        assert_eq!(source.data_ranges()?, vec![65536..131072]);
        Ok(())
    }

    #[test]
    fn reads_from_several_threads_agree() -> TestResult {
        let dir = tempfile::tempdir()?;
        let raw = dir.path().join("disk.raw");
        let qcow2 = dir.path().join("disk.qcow2");
        let expected = patterned_raw(&raw)?;
        convert(&raw, &qcow2, &["-o", "cluster_size=4096"])?;
        let source = open(&qcow2)?;
        let source: &dyn DiskSource = source.as_ref();
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| read_all(source).map_err(|err| err.to_string())))
                .collect();
            for worker in workers {
                match worker.join() {
                    Ok(Ok(data)) => assert!(data == expected, "threaded read differs"),
                    Ok(Err(err)) => panic!("threaded read failed: {err}"),
                    Err(_) => panic!("reader thread panicked"),
                }
            }
        });
        Ok(())
    }

    #[test]
    fn truncated_header_is_corrupt() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("disk.qcow2");
        create(&path, Some("1M"), None)?;
        let image = std::fs::read(&path)?;
        for len in [4, 50, 71, 80, 103] {
            std::fs::write(&path, image.get(..len).ok_or("image too short")?)?;
            let err = open_err(&path)?;
            assert!(matches!(err, SourceError::Corrupt { .. }), "{len}: {err}");
        }
        Ok(())
    }

    #[test]
    fn garbage_after_magic_gives_errors_not_panics() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("garbage.img");
        let mut seed = 0x1234_5678_u32;
        for round in 0..50 {
            let mut bytes = MAGIC.to_vec();
            for _ in 0..(round * 97 % 4096) + 8 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                bytes.push(seed.to_be_bytes()[0]);
            }
            std::fs::write(&path, &bytes)?;
            // Whatever happens, it must not panic; reading what opened must not panic either.
            if let Ok(source) = open(&path) {
                let _ = source.data_ranges();
                let mut buf = vec![0u8; 4096.min(usize::try_from(source.size())?)];
                let _ = source.read_at(&mut buf, 0);
            }
        }
        Ok(())
    }

    #[test]
    fn damaged_header_fields_give_errors_not_panics() -> TestResult {
        let dir = tempfile::tempdir()?;
        let raw = dir.path().join("disk.raw");
        let qcow2 = dir.path().join("disk.qcow2");
        let damaged = dir.path().join("damaged.qcow2");
        patterned_raw(&raw)?;
        convert(&raw, &qcow2, &[])?;
        let image = std::fs::read(&qcow2)?;
        // Every byte of the header and the first header extensions, set to 0xff and to 0x80.
        for at in 4..256 {
            for value in [0xff, 0x80] {
                let mut bytes = image.clone();
                if let Some(byte) = bytes.get_mut(at) {
                    *byte = value;
                }
                std::fs::write(&damaged, &bytes)?;
                if let Ok(source) = open(&damaged) {
                    let _ = source.data_ranges();
                    let mut buf = vec![0u8; MIB.min(usize::try_from(source.size())?)];
                    let _ = source.read_at(&mut buf, 0);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn encrypted_image_is_unsupported() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("secret.qcow2");
        let secret = "secret,id=sec0,data=123456";
        let luks = "encrypt.format=luks,encrypt.key-secret=sec0";
        let args = [
            "create", "-q", "-f", "qcow2", "--object", secret, "-o", luks,
        ];
        qemu("qemu-img", &[&args[..], &[arg(&path)?, "1M"]].concat())?;
        let err = open_err(&path)?;
        assert!(matches!(err, SourceError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("LUKS"), "{err}");
        Ok(())
    }

    #[test]
    fn incompatible_feature_bits_are_refused_with_advice() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("disk.qcow2");
        create(&path, Some("1M"), None)?;
        let image = std::fs::read(&path)?;
        let last = field::INCOMPATIBLE_FEATURES + 7;
        for (bit, expect_corrupt, hint) in [
            (0u8, false, "dirty"),
            (1, true, "check -r all"),
            (3, false, "zstd"),
            (4, false, "extended L2"),
            (7, false, "0x80"),
        ] {
            let mut bytes = image.clone();
            if let Some(byte) = bytes.get_mut(last) {
                *byte |= 1 << bit;
            }
            std::fs::write(&path, &bytes)?;
            let err = open_err(&path)?;
            let corrupt = matches!(err, SourceError::Corrupt { .. });
            assert_eq!(corrupt, expect_corrupt, "bit {bit}: {err}");
            assert!(err.to_string().contains(hint), "bit {bit}: {err}");
        }
        Ok(())
    }

    #[test]
    fn virtual_size_beyond_the_l1_table_is_corrupt() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("disk.qcow2");
        create(&path, Some("1M"), None)?;
        let mut bytes = std::fs::read(&path)?;
        if let Some(size) = bytes.get_mut(field::SIZE..field::SIZE + 8) {
            size.copy_from_slice(&u64::MAX.to_be_bytes());
        }
        std::fs::write(&path, &bytes)?;
        let err = open_err(&path)?;
        assert!(matches!(err, SourceError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("L1 table"), "{err}");
        Ok(())
    }

    #[test]
    fn backing_loop_is_corrupt() -> TestResult {
        let dir = tempfile::tempdir()?;
        let a = dir.path().join("a.qcow2");
        let b = dir.path().join("b.qcow2");
        create(&a, Some("1M"), None)?;
        create(&b, None, Some(("a.qcow2", "qcow2")))?;
        rebase_unsafe(&a, "b.qcow2", "qcow2")?;
        let err = open_err(&b)?;
        assert!(matches!(err, SourceError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("loops"), "{err}");
        Ok(())
    }

    #[test]
    fn missing_backing_file_names_both_files() -> TestResult {
        let dir = tempfile::tempdir()?;
        let top = dir.path().join("top.qcow2");
        create(&top, Some("1M"), None)?;
        rebase_unsafe(&top, "gone.qcow2", "qcow2")?;
        let err = open_err(&top)?;
        assert!(matches!(err, SourceError::Io { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("gone.qcow2") && message.contains("top.qcow2"),
            "{message}"
        );
        Ok(())
    }

    #[test]
    fn unknown_backing_format_is_unsupported() -> TestResult {
        let dir = tempfile::tempdir()?;
        let top = dir.path().join("top.qcow2");
        create(&top, Some("1M"), None)?;
        rebase_unsafe(&top, "base.vmdk", "vmdk")?;
        let err = open_err(&top)?;
        assert!(matches!(err, SourceError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("vmdk"), "{err}");
        Ok(())
    }

    #[test]
    fn protocol_backing_names_are_unsupported() -> TestResult {
        let dir = tempfile::tempdir()?;
        let top = dir.path().join("top.qcow2");
        create(&top, Some("1M"), None)?;
        rebase_unsafe(&top, "nbd://host/export", "raw")?;
        let err = open_err(&top)?;
        assert!(matches!(err, SourceError::Unsupported { .. }), "{err}");
        Ok(())
    }

    #[test]
    fn chain_metadata_memory_is_bounded() {
        let huge = HeaderSummary {
            version: 3,
            cluster_bits: 21,
            size: 1 << 40,
            crypt_method: 0,
            l1_size: MAX_L1_ENTRIES,
            incompatible_features: 0,
        };
        assert_eq!(huge.check(), Ok(()));
        let mut limits = ChainLimits::<(u64, u64)>::new(Path::new("top.qcow2"));
        let accepted = (0..20).take_while(|_| limits.charge(&huge).is_ok()).count();
        assert_eq!(accepted, 7, "288 MiB per image, 2 GiB in all");
        let err = limits.charge(&huge).err().map(|err| err.to_string());
        assert!(err.is_some_and(|err| err.contains("top.qcow2")));
    }

    #[test]
    fn header_summary_rejects_short_and_unknown_versions() {
        let mut bytes = [0u8; field::V3_HEADER_LEN];
        bytes[..4].copy_from_slice(&MAGIC);
        bytes[field::VERSION + 3] = 4;
        assert!(matches!(
            HeaderSummary::parse(&bytes),
            Err(HeaderProblem::Unsupported(_))
        ));
        bytes[field::VERSION + 3] = 3;
        assert!(matches!(
            HeaderSummary::parse(&bytes[..90]),
            Err(HeaderProblem::Corrupt(_))
        ));
        bytes[field::VERSION + 3] = 2;
        assert!(HeaderSummary::parse(&bytes[..field::V2_HEADER_LEN]).is_ok());
    }
}
