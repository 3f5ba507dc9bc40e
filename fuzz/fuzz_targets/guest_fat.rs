//! The FAT adapter (`fatfs` on its own thread, with a read budget per request) on arbitrary
//! partition contents: it opens the filesystem or refuses it (as damaged or unsupported, never
//! as a read error), and a walk of what it opened never panics, never spins on a looping
//! cluster chain, and gives consistent answers (see `vmstash_fuzz::walk_guest`).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmstash_fuse::guestfs::fat::FatFs;
use vmstash_fuse::guestfs::Owner;

fuzz_target!(|data: &[u8]| {
    let owner = Owner { uid: 1, gid: 2 };
    match FatFs::open(Arc::new(data.to_vec()), owner) {
        Ok(fs) => vmstash_fuzz::walk_guest(&fs, Some(owner)),
        Err(e) => vmstash_fuzz::assert_refused(&e),
    }
});
