//! The NTFS adapter on arbitrary partition contents: it opens the filesystem or refuses it
//! (as damaged or unsupported, never as a read error), and a walk of what it opened never
//! panics, neither in the adapter nor in the `ntfs` crate it feeds only checked records to,
//! and gives consistent answers (see `vmstash_fuzz::walk_guest`).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmstash_fuse::guestfs::ntfs::NtfsFs;
use vmstash_fuse::guestfs::Owner;

fuzz_target!(|data: &[u8]| {
    let owner = Owner { uid: 1, gid: 2 };
    match NtfsFs::open(Arc::new(data.to_vec()), owner) {
        Ok(fs) => vmstash_fuzz::walk_guest(&fs, Some(owner)),
        Err(e) => vmstash_fuzz::assert_refused(&e),
    }
});
