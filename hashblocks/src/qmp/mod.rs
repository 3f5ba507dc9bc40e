//! A small QMP client (the QEMU Machine Protocol), for backing up a QEMU that no libvirt manages
//! (Proxmox VE's VMs, a `qemu-system-*` started by hand) through its monitor socket
//! (spec/FORMAT.md §19.8).
//!
//! # Why
//!
//! A running QEMU can give a point-in-time view of its disks and the blocks written since a
//! persistent dirty bitmap was made: `blockdev-backup` with `sync: none` onto a scratch overlay
//! (image fleecing), an NBD export of that view with the bitmap, all over QMP. libvirt does the
//! same for its domains; without libvirt, vmstash says it itself. No crate speaks QMP without an
//! async runtime (`qapi` needs tokio or its own codegen), and the subset is small: a greeting,
//! `qmp_capabilities`, then one command at a time, each answered by `return` or `error`, with
//! asynchronous events in between.
//!
//! # What
//!
//! - [`wire`]: one message off the stream: bounded (a line of at most [`MAX_MESSAGE`] bytes),
//!   JSON, classified (greeting, return, error, event); fuzzed by `fuzz/fuzz_targets/qmp_wire.rs`;
//! - `client`: [`QmpClient`]: connect (with the peer's pid, uid and gid, from the socket),
//!   negotiate, execute, wait for a block job to be gone;
//! - `script`: [`run_script`]: a list of [`Step`]s over one connection, and what they answered
//!   ([`ScriptOutput`]), as the helper's `qmp` command prints it.
//!
//! QMP allows one client at a time per socket (a second one waits): a connection is held for
//! one script only, never for a whole backup, so that the VM's manager (Proxmox's `qm`) is not
//! kept waiting.

mod client;
mod error;
mod script;
pub mod wire;

pub use client::{Peer, QmpClient, Reply, COMMAND_TIMEOUT};
pub use error::QmpError;
pub use script::{run_script, ScriptOutput, Step, AWAIT_JOB_GONE};
pub use wire::{Message, MAX_MESSAGE};
