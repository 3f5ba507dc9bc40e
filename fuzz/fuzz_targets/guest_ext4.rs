//! The ext4 adapter (`ext4-view` plus vmstash's inode-number reader) on arbitrary partition
//! contents: it opens the filesystem or refuses it (as damaged or unsupported, never as a read
//! error: the bytes are in memory), and a walk of what it opened never panics
//! and gives consistent answers (see `vmstash_fuzz::walk_guest`).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmstash_fuse::guestfs::ext4::Ext4Fs;

fuzz_target!(|data: &[u8]| {
    match Ext4Fs::open(Arc::new(data.to_vec())) {
        Ok(fs) => vmstash_fuzz::walk_guest(&fs, None),
        Err(e) => vmstash_fuzz::assert_refused(&e),
    }
});
