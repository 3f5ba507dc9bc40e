//! vmstash's hypervisor-side helper, as a library.
//!
//! The `vmstash-hashblocks` helper runs next to a VM's disk (started by the CLI over SSH), hashes
//! the disk's chunks at local-disk speed on every core, and reports each chunk's SHA-256 — or
//! that it reads as zeros — so that the CLI fetches only the chunks the repository lacks.
//!
//! - [`protocol`]: the versioned, length-prefixed wire protocol (spec/FORMAT.md §19), with a
//!   bounded decoder for the bytes the other side sends.
//! - [`hasher`]: hashing a range of chunks of a disk on several threads.
//! - [`source`]: reading disk images (raw files and block devices, qcow2 with backing chains, NBD
//!   exports with a dirty bitmap),
//!   the same readers the CLI backs up local disks with.
//! - [`run`]: running a command on the hypervisor for the client, so that a backup needs one
//!   SSH channel and not one per `virsh` call.
//! - [`nbd`]: a small NBD client, for reading a running VM's disk as of a point in time and its
//!   dirty bitmap from QEMU (spec/FORMAT.md §22).
//! - [`qmp`]: a small QMP client, for backing up a QEMU that no libvirt manages (§19.8).

pub mod hasher;
pub mod nbd;
pub mod protocol;
pub mod qmp;
pub mod run;
pub mod source;
