//! The walk down a qcow2 backing chain, shared by local chains and chains read over SFTP.
//!
//! Each image of the chain is opened by vmstash, not by imago's implicit-open machinery, so that
//! every file is opened read-only, backing paths are resolved the way qemu resolves them, and the
//! chain is checked for loops, length and the memory its metadata would take
//! ([`super::limits`]). The walk ([`open_chain`]) is the same wherever the files are; only how
//! they are opened and told apart differs ([`ChainFiles`]: `super::local` for this host, the
//! CLI's `source/sftp_qcow2.rs` for a remote one). For each qcow2 image:
//!
//! 1. its header is checked against the file's length ([`super::header`]), its metadata charged
//!    to the chain's limits, and its L2 tables checked to lie in the file ([`super::eof`]);
//! 2. imago parses the image without its dependencies (`Qcow2::open_image`, not writable), on a
//!    storage object that refuses reads past the end of the file ([`BoundedStorage`]);
//! 3. an external data file, if the header requires one, is opened read-only and attached;
//! 4. the backing file named in the header is opened (relative to the image's directory) in the
//!    declared format, probed by content only if none is declared, and the walk goes on with it.
//!
//! The layers are then stacked bottom-up (`Qcow2::set_backing`) into one imago `FormatAccess`
//! ([`Chain`]), which serves reads and mapping queries for the whole chain.

use super::eof::{check_l2_tables, BoundedStorage};
use super::header::{field, HeaderSummary};
use super::limits::ChainLimits;
use super::presence::Presence;
use super::{imago_error, MAGIC};
use crate::source::{format_of_prefix, ImageFormat, SourceError};
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{FormatAccess, Storage as ImagoStorage};
use std::io;
use std::path::{Path, PathBuf};

/// A whole chain as imago serves it: every file behind a [`BoundedStorage`].
pub type Chain<S> = FormatAccess<BoundedStorage<S>>;

/// Where the files of a chain are and how they are reached: on this host (`super::local`) or on
/// a remote one (the CLI's `source/sftp_qcow2.rs`). The walk down the chain and every rule it
/// follows (header checks, limits, how backing names resolve, which formats are trusted, what
/// lies past the end of a file) are the same for all ([`open_chain`]).
pub trait ChainFiles {
    /// An opened image file, not yet handed to imago.
    type File;
    /// What tells opened files apart, to recognise a chain that comes back to one.
    type Identity: PartialEq;
    /// imago's storage object for an opened file (which reads zeros past its end, as imago's
    /// storage contract requires; [`BoundedStorage`] decides when that is damage).
    type Storage: ImagoStorage + 'static;

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
) -> Result<Chain<F::Storage>, SourceError> {
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

/// A qcow2 image of a chain, without its backing image yet, and the backing file it names.
type OpenedLayer<F> = (
    Qcow2<BoundedStorage<<F as ChainFiles>::Storage>>,
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
    let header = read_header(files, path, &file)?;
    let storage = files.imago_storage(path, file)?;
    let file_len = storage_len(path, &storage)?;
    header
        .check(file_len)
        .map_err(|problem| problem.into_error(path))?;
    limits.charge(&header)?;
    check_l2_tables(&storage, path, &header, file_len)?;
    let presence = Presence::InClusters(header.cluster_size());
    let storage = BoundedStorage::new(storage, path, file_len, presence);
    let mut image = Qcow2::open_image(storage, false)
        .map_err(|err| imago_error(path, "open the qcow2 image".to_owned(), err))?;
    let data_file = open_data_file(files, path, &image, presence)?;
    image.set_data_file(data_file);
    let backing = open_backing_file(files, path, &image)?;
    Ok((image, backing))
}

/// Opens the raw file at the bottom of a chain; imago reads it only up to its end, so all of
/// what it reads must be in the file.
fn open_raw_layer<F: ChainFiles>(
    files: &F,
    path: &Path,
    file: F::File,
) -> Result<Chain<F::Storage>, SourceError> {
    let storage = bounded_storage(files, path, file, Presence::Whole)?;
    let raw = Raw::open_image(storage, false)
        .map_err(|err| imago_error(path, "open the raw backing file".to_owned(), err))?;
    Ok(FormatAccess::new(raw))
}

/// Hands `file` (at `path`) to imago behind a [`BoundedStorage`] with `presence`.
fn bounded_storage<F: ChainFiles>(
    files: &F,
    path: &Path,
    file: F::File,
    presence: Presence,
) -> Result<BoundedStorage<F::Storage>, SourceError> {
    let storage = files.imago_storage(path, file)?;
    let file_len = storage_len(path, &storage)?;
    Ok(BoundedStorage::new(storage, path, file_len, presence))
}

/// The length of the file at `path`, as its imago `storage` reports it.
fn storage_len<S: ImagoStorage>(path: &Path, storage: &S) -> Result<u64, SourceError> {
    storage.size().map_err(|source| SourceError::Io {
        path: path.to_owned(),
        action: "find the size of".to_owned(),
        source,
    })
}

/// Opens the external data file of `image` (at `path`) read-only, if its header requires one;
/// its clusters must be in it as `presence` (the image's) requires.
fn open_data_file<F: ChainFiles>(
    files: &F,
    path: &Path,
    image: &Qcow2<BoundedStorage<F::Storage>>,
    presence: Presence,
) -> Result<Option<BoundedStorage<F::Storage>>, SourceError> {
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
    bounded_storage(files, &data_path, file, presence).map(Some)
}

/// Opens the backing file named in the header of `image` (at `path`), if it names one, and
/// decides its format.
fn open_backing_file<F: ChainFiles>(
    files: &F,
    path: &Path,
    image: &Qcow2<BoundedStorage<F::Storage>>,
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
/// `crate::source::detect_format` does for local files.
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

/// Reads and parses the header of the qcow2 image `file` at `path` (checked later, against the
/// file's length).
fn read_header<F: ChainFiles>(
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
    HeaderSummary::parse(header).map_err(|problem| problem.into_error(path))
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
