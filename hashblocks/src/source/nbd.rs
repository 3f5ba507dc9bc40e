//! A disk read through an NBD export on this host (spec/FORMAT.md §19.6, §22): the
//! point-in-time view QEMU exports for a backup (libvirt's pull-mode `backup-begin`, or
//! `qemu-nbd -r -B BITMAP` for a disk no VM uses), with the allocation map from
//! `base:allocation` and, when a bitmap is named, what the guest wrote since its checkpoint from
//! `qemu:dirty-bitmap:NAME`.
//!
//! One NBD connection asks for the block status; reads go over it and over as many more as
//! [`NbdSource::with_connections`] opens, one command at a time on each (behind a mutex per
//! connection), so that several hashing threads read at once: a server such as QEMU answers
//! the commands of one connection in turn.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::nbd::wire::{BASE_ALLOCATION, NBD_STATE_DIRTY, NBD_STATE_ZERO, QEMU_DIRTY_BITMAP};
use crate::nbd::{Extent, NbdClient, NbdError};
use crate::source::{check_read_range, DiskSource, ImageFormat, SourceError};
/// Bytes of the export asked about per block status loop, so that one answer's extents stay
/// far below the client's limit however fragmented the disk is.
const STATUS_WINDOW: u64 = 8 << 30;

/// Why a disk cannot be read through NBD.
#[derive(Debug, thiserror::Error)]
pub enum NbdSourceError {
    /// The export offers no dirty bitmap of that name (never made, lost after a crash, or
    /// removed): the caller hashes the whole disk instead.
    #[error("the NBD export at {} offers no dirty bitmap {bitmap:?}", socket.display())]
    NoBitmap {
        /// The export's socket.
        socket: PathBuf,
        /// The bitmap asked for.
        bitmap: String,
    },
    /// Connecting, negotiating or reading failed.
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// A disk exported over NBD; see the module documentation.
#[derive(Debug)]
pub struct NbdSource {
    /// The connections; the first negotiated the meta contexts.
    clients: Vec<Mutex<NbdClient>>,
    /// Where the next read starts looking for a free connection.
    next: AtomicUsize,
    socket: PathBuf,
    export: String,
    size: u64,
    bitmap: Option<String>,
}

impl NbdSource {
    /// Connects to the export `export` (`""`: the default one) at the Unix socket `socket`,
    /// with the dirty bitmap `bitmap` when given.
    pub fn connect(
        socket: &Path,
        export: &str,
        bitmap: Option<&str>,
    ) -> Result<NbdSource, NbdSourceError> {
        let dirty = bitmap.map(|b| format!("{QEMU_DIRTY_BITMAP}{b}"));
        let mut contexts = vec![BASE_ALLOCATION];
        contexts.extend(dirty.as_deref());
        let client = NbdClient::connect_unix(socket, export, &contexts)
            .map_err(|e| nbd_error(socket, "connect to the NBD export at", e))?;
        if let (Some(bitmap), Some(dirty)) = (bitmap, &dirty) {
            if !client.has_context(dirty) {
                return Err(NbdSourceError::NoBitmap {
                    socket: socket.to_owned(),
                    bitmap: bitmap.to_owned(),
                });
            }
        }
        Ok(NbdSource {
            size: client.size(),
            clients: vec![Mutex::new(client)],
            next: AtomicUsize::new(0),
            socket: socket.to_owned(),
            export: export.to_owned(),
            bitmap: bitmap.map(str::to_owned),
        })
    }

    /// Opens more connections for reads, up to `total` in all; a server that refuses one (its
    /// connection limit) leaves fewer, never an error.
    pub fn with_connections(mut self, total: usize) -> NbdSource {
        while self.clients.len() < total {
            match NbdClient::connect_unix(&self.socket, &self.export, &[]) {
                Ok(client) if client.size() == self.size => self.clients.push(Mutex::new(client)),
                _ => break,
            }
        }
        self
    }

    /// A connection for one command: a free one if there is, else the next in turn.
    fn connection(&self) -> MutexGuard<'_, NbdClient> {
        let n = self.clients.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            if let Some(Ok(guard)) = self.clients.get((start + i) % n).map(Mutex::try_lock) {
                return guard;
            }
        }
        self.clients
            .get(start)
            .or(self.clients.first())
            .map(|c| c.lock().unwrap_or_else(PoisonError::into_inner))
            .unwrap_or_else(|| unreachable!("an NbdSource has at least one connection"))
    }

    /// The byte ranges the dirty bitmap marks as written since its checkpoint (sorted,
    /// disjoint); `None` without a bitmap.
    pub fn changed_ranges(&self) -> Result<Option<Vec<Range<u64>>>, SourceError> {
        let Some(bitmap) = &self.bitmap else {
            return Ok(None);
        };
        let context = format!("{QEMU_DIRTY_BITMAP}{bitmap}");
        self.ranges(&context, |flags| flags & NBD_STATE_DIRTY != 0)
            .map(Some)
    }

    /// The ranges of `context`'s extents whose flags `keep` accepts, over the whole export.
    fn ranges(
        &self,
        context: &str,
        keep: impl Fn(u32) -> bool,
    ) -> Result<Vec<Range<u64>>, SourceError> {
        // Block status goes over the connection that negotiated the contexts.
        let mut client = self
            .clients
            .first()
            .map(|c| c.lock().unwrap_or_else(PoisonError::into_inner))
            .unwrap_or_else(|| unreachable!("an NbdSource has at least one connection"));
        let mut out: Vec<Range<u64>> = Vec::new();
        let mut at = 0;
        while at < self.size {
            let len = STATUS_WINDOW.min(self.size - at);
            let extents = client
                .extents(context, at, len)
                .map_err(|e| nbd_error(&self.socket, "ask for the block status of", e))?;
            for Extent {
                offset,
                length,
                flags,
            } in extents
            {
                if !keep(flags) {
                    continue;
                }
                let end = offset.saturating_add(length);
                match out.last_mut() {
                    Some(last) if last.end == offset => last.end = end,
                    _ => out.push(offset..end),
                }
            }
            at += len;
        }
        Ok(out)
    }
}

impl DiskSource for NbdSource {
    /// The export is the guest's view, whatever the image's format: raw bytes.
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        check_read_range(&self.socket, offset, buf.len(), self.size)?;
        let mut client = self.connection();
        client.read(offset, buf).map_err(|e| {
            nbd_error(
                &self.socket,
                &format!(
                    "read {} bytes at offset {offset} of the NBD export at",
                    buf.len()
                ),
                e,
            )
        })
    }

    /// One read per connection at a time.
    fn concurrent_reads(&self) -> usize {
        self.clients.len()
    }

    /// Everything `base:allocation` does not promise reads as zeros (`NBD_STATE_ZERO`).
    fn data_ranges(&self) -> Result<Vec<Range<u64>>, SourceError> {
        self.ranges(BASE_ALLOCATION, |flags| flags & NBD_STATE_ZERO == 0)
    }
}

/// An NBD failure as the source error that names the socket and what was being done.
fn nbd_error(socket: &Path, action: &str, e: NbdError) -> SourceError {
    SourceError::Io {
        path: socket.to_owned(),
        action: action.to_owned(),
        source: std::io::Error::other(e),
    }
}
