//! vmstash's FUSE filesystem over an open repository (DESIGN.md, "The mount"). This crate's one
//! job is to show every backup, read-only, as disk images and the files inside them; reading the
//! repository is `vmstash-repo`'s (its `DiskReader`), mounting and signals are the CLI's.
//!
//! ```text
//! MNT/vms/<vm>/<timestamp>/domain.xml
//! MNT/vms/<vm>/<timestamp>/<disk>.raw        whole disk, virtual size
//! MNT/vms/<vm>/<timestamp>/<disk>/p<N>.raw   each partition (GPT, or MBR with logical ones)
//! MNT/vms/<vm>/<timestamp>/<disk>/<vg>/<lv>.raw   each LVM logical volume (and <lv>/ its files)
//! MNT/vms/<vm>/latest -> <timestamp>
//! MNT/snapshots/<short-id>/...               the same, by snapshot id
//! ```
//!
//! - [`tree`]: the namespace, rebuilt when snapshots come or go, with inode numbers that stay
//!   the same for the same path for as long as the mount lives.
//! - [`partition`]: GPT and MBR partition tables, parsed defensively.
//! - [`lvm`]: LVM2 physical volumes, volume groups and logical volumes, read in user space;
//!   [`volumes`]: each snapshot's logical volumes as the mount shows them.
//! - [`image`]: reading a disk image of a snapshot: chunk map segments and verified chunks,
//!   both in LRU caches, zero chunks without reading anything.
//! - [`fs`]: the `fuser` filesystem, read-only, serving requests on several threads.

mod be;
pub mod fs;
pub mod guestfs;
pub mod guests;
pub mod image;
mod ints;
mod le;
pub mod luks;
pub mod lvm;
pub mod partition;
pub mod tree;
pub mod volumes;

pub use fs::VmstashFs;
