//! The Btrfs reader on arbitrary metadata: it opens the filesystem or refuses it (as damaged
//! or unsupported, never as a read error: the bytes are in memory), and a walk of what it
//! opened never panics and gives consistent answers (see `vmstash_fuzz::walk_guest`).
//!
//! A Btrfs filesystem is at least ~110 MiB, mostly zeros, so the input is a compact form of
//! one: records of a 4-byte little-endian block number and 4,096 bytes (the last record
//! zero-padded), laid into a 256 MiB device of zeros at `number & 0xffff` × 4 KiB. When bit
//! 31 of the number is set, the block's CRC32C (bytes 0–3, over bytes 32–4095) is made
//! right first, so that mutations reach the structural checks behind the checksum.
//! `fuse/testdata/make-btrfs-seed.sh` makes the seed `seeds/guest_btrfs/small` (every
//! non-zero block of a small real filesystem); `small-checksums-fixed` is the same with bit 31
//! set in every record.
#![no_main]

use std::collections::HashMap;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmstash_fuse::guestfs::btrfs::BtrfsFs;
use vmstash_fuse::guestfs::device::PastEnd;
use vmstash_fuse::guestfs::{Device, DeviceError};

const BLOCK: usize = 4096;
const DEVICE_LEN: u64 = 256 << 20;

/// A device of zeros but for some 4 KiB blocks.
struct Sparse(HashMap<u64, Vec<u8>>);

impl Device for Sparse {
    fn len(&self) -> u64 {
        DEVICE_LEN
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let past = PastEnd {
            offset,
            len: buf.len(),
            size: DEVICE_LEN,
        };
        let end = offset
            .checked_add(u64::try_from(buf.len()).map_err(|_| past.clone())?)
            .ok_or(past.clone())?;
        if end > DEVICE_LEN {
            return Err(past.into());
        }
        let mut at = offset;
        for piece in buf.chunks_mut(BLOCK) {
            // Each piece of up to a block spans at most two blocks.
            let mut done = 0;
            while done < piece.len() {
                let pos = at + done as u64;
                let within = (pos % BLOCK as u64) as usize;
                let n = (BLOCK - within).min(piece.len() - done);
                let dst = &mut piece[done..done + n];
                match self.0.get(&(pos / BLOCK as u64)) {
                    Some(b) => dst.copy_from_slice(&b[within..within + n]),
                    None => dst.fill(0),
                }
                done += n;
            }
            at += piece.len() as u64;
        }
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut blocks = HashMap::new();
    for record in data.chunks(4 + BLOCK) {
        let Some((number, bytes)) = record.split_first_chunk::<4>() else {
            continue;
        };
        let number = u32::from_le_bytes(*number);
        let mut block = bytes.to_vec();
        block.resize(BLOCK, 0);
        if number & (1 << 31) != 0 {
            let crc = vmstash_fuzz::crc32c(&block[32..]);
            block[..4].copy_from_slice(&crc.to_le_bytes());
        }
        blocks.insert(u64::from(number & 0xffff), block);
    }
    match BtrfsFs::open(Arc::new(Sparse(blocks))) {
        Ok(fs) => vmstash_fuzz::walk_guest(&fs, None),
        Err(e) => vmstash_fuzz::assert_refused(&e),
    }
});
