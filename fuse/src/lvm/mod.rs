//! LVM2 inside a snapshot's disks, read in user space (the host never activates a volume
//! group, so a guest's VG names never clash with the host's): physical volumes found in
//! partitions or on whole disks, their volume groups assembled across the disks of one
//! snapshot, and each linear or striped logical volume as a [`Device`] the filesystem readers
//! open like a partition.
//!
//! The on-disk format (LVM2's `lib/format_text/`, described in libyal's libvslvm
//! documentation): a label (`LABELONE`, `LVM2 001`) in one of the first four sectors, the PV
//! header after it (the PV's UUID and its data and metadata areas), a metadata area that
//! starts with a header (magic ` LVM2 x[5A%r0N*>`) naming where the current metadata text is
//! in its circular buffer, and that text: the volume group in LVM's configuration syntax.
//!
//! Every length and offset comes from the guest's disk and is checked before use; the text is
//! at most [`MAX_METADATA`] bytes, its nesting at most [`text::MAX_DEPTH`] deep; checksums are
//! LVM's own (CRC-32 without inversion, seeded `0xf597a6cf`). Anything else is an
//! [`LvmError`] saying whose fault it is, never a panic.
//!
//! - [`label`]: the label, PV header and metadata area header;
//! - [`text`]: the configuration syntax, as a tree;
//! - [`metadata`]: the volume group the tree describes;
//! - [`volume`]: a logical volume's bytes, mapped onto its physical volumes.
//!
//! Fuzzed by `fuzz/fuzz_targets/lvm_metadata.rs`.

pub mod label;
pub mod metadata;
pub mod text;
pub mod volume;

use std::sync::Arc;

use crate::guestfs::{Device, DeviceError};

pub use label::{read_physical_volume, PhysicalVolume};
pub use metadata::{LogicalVolume, Segment, VolumeGroup};
pub use volume::{assemble, Assembled, Found, LvDevice};

/// The largest metadata text read (LVM's default metadata area is 1 MiB; big ones are a few).
pub const MAX_METADATA: u64 = 16 << 20;

/// Why LVM metadata could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LvmError {
    /// The metadata is damaged: a checksum that does not match, a length past its area, text
    /// that is not LVM's syntax, a logical volume that maps outside its physical volume.
    #[error("damaged LVM metadata: {0}")]
    Corrupt(String),
    /// Valid, but not something vmstash reads (yet): a thin, RAID, cache or snapshot volume.
    #[error("not supported by vmstash: {0}")]
    Unsupported(String),
    /// The backup's bytes could not be read.
    #[error("{0}")]
    Device(#[from] DeviceError),
}

/// `len` bytes at `offset` of `dev`.
fn read(dev: &dyn Device, offset: u64, len: usize) -> Result<Vec<u8>, LvmError> {
    let mut buf = vec![0u8; len];
    dev.read_at(offset, &mut buf)?;
    Ok(buf)
}

/// LVM's checksum: the CRC-32 of IEEE 802.3 (reflected polynomial `0xedb88320`) without the
/// initial and final inversion, seeded with `0xf597a6cf` (`lib/misc/crc.c`).
pub fn lvm_crc(data: &[u8]) -> u32 {
    const INITIAL: u32 = 0xf597_a6cf;
    let mut crc = INITIAL;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// A shared device, as volumes keep their physical volumes.
pub type SharedDevice = Arc<dyn Device>;

#[cfg(test)]
mod tests;
