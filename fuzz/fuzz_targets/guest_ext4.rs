//! The ext4 adapter (`ext4-view` plus vmstash's inode-number reader) on arbitrary partition
//! contents: it opens the filesystem or refuses it, and a walk of what it opened never panics
//! and gives consistent answers (see `vmstash_fuzz::walk_guest`).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmstash_fuse::guestfs::ext4::Ext4Fs;
use vmstash_fuse::guestfs::FsError;

fuzz_target!(|data: &[u8]| {
    match Ext4Fs::open(Arc::new(data.to_vec())) {
        Ok(fs) => vmstash_fuzz::walk_guest(&fs, None),
        Err(e) => assert!(!matches!(e, FsError::Read(_)), "{e}"),
    }
});
