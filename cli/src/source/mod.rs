//! Disk-image sources: the local readers of `vmstash_hashblocks::source` (raw files and block
//! devices, qcow2 with backing chains through imago; the same code the hypervisor-side helper
//! reads with), plus the CLI's own readers of images on a remote host over SFTP.

mod qemu_img_map;
mod sftp;
mod sftp_qcow2;

pub(crate) use qemu_img_map::parse_qemu_img_map;
pub(crate) use sftp::open_sftp_raw;
pub(crate) use sftp_qcow2::open_sftp_qcow2;
pub(crate) use vmstash_hashblocks::source::{
    check_read_range, len_u64, open, open_as, qcow2, whole_disk, with_data_ranges, DiskSource,
    ImageFormat, SourceError,
};

/// A failure of the SSH layer, as a source error (the message names the host and the path).
pub(crate) fn remote(err: vmstash_ssh::SshError) -> SourceError {
    SourceError::Remote(Box::new(err))
}
