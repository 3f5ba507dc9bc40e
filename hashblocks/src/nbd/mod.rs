//! A small NBD client (Network Block Device, client side), for reading a point-in-time view of
//! a running VM's disk and its dirty bitmap from QEMU (spec/FORMAT.md §22).
//!
//! # Why
//!
//! An incremental backup of a running VM should read only what the guest changed since the last
//! backup, from a view of the disk that does not move while it is read. QEMU offers exactly that
//! over NBD: libvirt's `backup-begin` in pull mode (or `qemu-nbd -r -B BITMAP -k SOCK`) exports
//! the disk as of the backup's start, with the metadata contexts `base:allocation` (holes) and
//! `qemu:dirty-bitmap:NAME` (the clusters written since the bitmap was created). The helper runs
//! next to QEMU and talks to that export over a Unix socket.
//!
//! # What
//!
//! Only the subset that job needs: fixed newstyle negotiation, structured replies, metadata
//! contexts and `NBD_OPT_GO`, then `NBD_CMD_READ` and `NBD_CMD_BLOCK_STATUS`, one command at a
//! time, and `NBD_CMD_DISC`. No TLS (the socket is local), no writes, no pipelining.
//!
//! The server is not trusted more than a disk image is: every length it sends is checked
//! against a limit before anything is allocated, every reply is checked against the request it
//! answers (cookie, range, exactly-once coverage of a read, block status extents inside the
//! request and the export), and anything else is an [`NbdError`] saying whose fault it is,
//! never a panic.
//!
//! - [`wire`]: constants under the NBD spec's names, encoders, and the pure decoders (fuzzed by
//!   `fuzz/fuzz_targets/nbd_reply.rs`);
//! - `client`: [`NbdClient`], the session: handshake, reads, block status;
//! - `coverage`: which bytes of a read the reply has covered;
//! - `error`: [`NbdError`].

mod client;
mod coverage;
mod error;
pub mod wire;

pub use client::{MetaContext, NbdClient, IO_TIMEOUT, MAX_EXTENTS_PER_CALL};
pub use error::NbdError;
pub use wire::{BlockSize, Extent};

#[cfg(test)]
mod tests;
