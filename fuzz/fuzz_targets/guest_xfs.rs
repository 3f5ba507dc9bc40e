//! The XFS reader (`vmstash_fuse::guestfs::xfs::XfsFs`) on arbitrary partition contents: it
//! opens the filesystem or refuses it (as damaged or unsupported, never as a read error: the
//! bytes are in memory), and a walk of what it opened never panics and gives consistent
//! answers (see `vmstash_fuzz::walk_guest`).
//!
//! An XFS filesystem is at least 16 MiB, so the input is its non-zero sectors
//! (`vmstash_fuzz::SparseSectors`: records of a sector number and 512 bytes) on a 32 MiB
//! partition. Seeds (`seeds/guest_xfs/`) are a small filesystem made by the kernel, written
//! in that form by `fuse/testdata/make-xfs.sh`.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmstash_fuse::guestfs::xfs::XfsFs;

fuzz_target!(|data: &[u8]| {
    let device = Arc::new(vmstash_fuzz::SparseSectors::new(data, 32 << 20));
    match XfsFs::open(device) {
        Ok(fs) => vmstash_fuzz::walk_guest(&fs, None),
        Err(e) => vmstash_fuzz::assert_refused(&e),
    }
});
