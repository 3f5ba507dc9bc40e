//! A VM disk read through an NBD export on the hypervisor (spec/FORMAT.md §19.6): the
//! point-in-time view a pull-mode backup job exports, with the dirty bitmap of the checkpoint the
//! parent snapshot was taken at.
//!
//! On a remote host the hashblocks helper connects to the export's socket there (NBD never
//! leaves the host): it hashes the chunks the bitmap marks and reads, on request, the ones the
//! repository lacks. On this host vmstash does the same itself.

use std::path::Path;
use std::sync::{Arc, PoisonError};

use anyhow::{anyhow, Result};
use vmstash_hashblocks::hasher::hash_changed;
use vmstash_hashblocks::source::nbd::{NbdSource, NbdSourceError};
use vmstash_hashblocks::source::{whole_disk, SourceError};

use crate::helper::{ChunkCollector, ChunkReport, NoBitmap};
use crate::libvirt::shell::SharedHelper;
use crate::read_pipe::ReadPipe;
use crate::source::{DiskSource, ImageFormat};

/// Where a disk's export is: the Unix socket on the hypervisor, the export's name, and the
/// dirty bitmap to use (none: hash every chunk).
#[derive(Debug, Clone)]
pub struct NbdExport {
    /// The socket's path on the hypervisor.
    pub socket: String,
    /// The export's name.
    pub name: String,
    /// The dirty bitmap's name, if the backup is incremental.
    pub bitmap: Option<String>,
}

/// A disk hashed through its export: every chunk's report, and the reader of its bytes.
pub struct NbdDisk {
    /// Reads the export (on the hypervisor).
    pub reader: Box<dyn DiskSource>,
    /// One report per chunk.
    pub chunks: Vec<ChunkReport>,
    /// Bytes read through NBD to hash it.
    pub bytes_hashed: u64,
}

/// Hashes `export` through the helper running on the hypervisor; the reader it returns reads
/// through the same helper. `Ok(Err(NoBitmap))` when the export lacks the bitmap.
pub fn hash_remote(
    helper: &SharedHelper,
    export: &NbdExport,
    chunk_size: u32,
    format: ImageFormat,
) -> Result<Result<NbdDisk, NoBitmap>> {
    let mut guard = helper.lock().unwrap_or_else(PoisonError::into_inner);
    let running = guard
        .as_mut()
        .ok_or_else(|| anyhow!("the hashblocks helper is not running on the host"))?;
    let hashed = match running.hash_nbd(
        &export.socket,
        &export.name,
        export.bitmap.as_deref(),
        chunk_size,
    )? {
        Ok(hashed) => hashed,
        Err(no) => return Ok(Err(no)),
    };
    let reader = HelperNbdReader {
        helper: SharedHelper::clone(helper),
        pipe: running.read_pipe(),
        format,
        export: hashed.export,
        size: hashed.size,
        label: format!("{}:{}", export.socket, export.name),
    };
    Ok(Ok(NbdDisk {
        reader: Box::new(reader),
        chunks: hashed.chunks,
        bytes_hashed: hashed.bytes_read,
    }))
}

/// Hashes `export` on this host (a `qemu:///` connection) on every core; the reader it returns
/// is the export itself.
pub fn hash_local(
    export: &NbdExport,
    chunk_size: u32,
    format: ImageFormat,
) -> Result<Result<NbdDisk, NoBitmap>> {
    let socket = Path::new(&export.socket);
    let src = match NbdSource::connect(socket, &export.name, export.bitmap.as_deref()) {
        Ok(src) => src,
        Err(e @ NbdSourceError::NoBitmap { .. }) => return Ok(Err(NoBitmap(e.to_string()))),
        Err(NbdSourceError::Source(e)) => return Err(e.into()),
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let src = src.with_connections(threads.min(4));
    let changed = src.changed_ranges()?;
    let chunks = src.size().div_ceil(u64::from(chunk_size));
    let mut collector = ChunkCollector::new(chunks)?;
    let mut emit = |frame| match collector.accept(&frame) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("unexpected {frame:?}")),
        Err(e) => Err(format!("hashing {e}")),
    };
    let stats = hash_changed(
        &src,
        chunk_size,
        0..chunks,
        threads,
        changed.as_deref(),
        &mut emit,
    )
    .map_err(|e| anyhow!("hashing {}: {e}", export.socket))?;
    let chunks = collector
        .finish(stats.chunks)
        .ok_or_else(|| anyhow!("hashing {} did not report every chunk", export.socket))?;
    Ok(Ok(NbdDisk {
        reader: Box::new(LocalNbdReader { src, format }),
        chunks,
        bytes_hashed: stats.bytes_read,
    }))
}

/// Reads of one export the engine keeps in flight at once: enough that the helper reads the
/// next chunk on the host while the last one crosses the network.
const PIPELINED_READS: usize = 4;

/// The bytes of an export on the hypervisor, read through the helper, pipelined: several
/// requests in flight, answered in turn ([`ReadPipe`]).
struct HelperNbdReader {
    helper: SharedHelper,
    /// The order of the reads on the helper, shared by every reader of it.
    pipe: Arc<ReadPipe>,
    /// The image's format, for the snapshot (the export itself is raw bytes).
    format: ImageFormat,
    /// The export's number in the helper's session.
    export: u32,
    size: u64,
    /// `socket:export`, for messages.
    label: String,
}

impl DiskSource for HelperNbdReader {
    fn format(&self) -> ImageFormat {
        self.format
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        let len = buf.len();
        let failed = |e: anyhow::Error| SourceError::Io {
            path: self.label.clone().into(),
            action: format!("read {len} bytes at offset {offset} of"),
            source: std::io::Error::other(format!("{e:#}")),
        };
        let ticket = self.pipe.send(self.export, offset, len).map_err(failed)?;
        self.pipe.wait_turn(ticket).map_err(failed)?;
        let received = {
            let mut guard = self.helper.lock().unwrap_or_else(PoisonError::into_inner);
            match guard.as_mut() {
                Some(helper) => helper.receive_nbd_read(buf),
                None => Err((anyhow!("the hashblocks helper stopped"), true)),
            }
        };
        self.pipe
            .done(received.as_ref().is_err_and(|(_, broken)| *broken));
        received.map_err(|(e, _)| failed(e))
    }

    fn concurrent_reads(&self) -> usize {
        PIPELINED_READS
    }

    /// Every chunk's id is known already; the engine reads only those the repository lacks.
    fn data_ranges(&self) -> Result<Vec<std::ops::Range<u64>>, SourceError> {
        Ok(whole_disk(self.size))
    }
}

/// An export on this host, read directly; it says the image's format, not the export's.
struct LocalNbdReader {
    src: NbdSource,
    format: ImageFormat,
}

impl DiskSource for LocalNbdReader {
    fn format(&self) -> ImageFormat {
        self.format
    }

    fn size(&self) -> u64 {
        self.src.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        self.src.read_at(buf, offset)
    }

    fn concurrent_reads(&self) -> usize {
        self.src.concurrent_reads()
    }

    /// Every chunk's id is known already; the engine reads only those the repository lacks.
    fn data_ranges(&self) -> Result<Vec<std::ops::Range<u64>>, SourceError> {
        Ok(whole_disk(self.src.size()))
    }
}
