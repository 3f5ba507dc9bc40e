//! The LUKS reader (`vmstash_fuse::luks`): arbitrary bytes as a LUKS volume, unlocked with a
//! fixed passphrase under [`KdfLimits::FUZZ`] (key slots dearer than cryptsetup's minimum
//! costs are refused, so every input stays fast).
//!
//! Input: byte 0 chooses the mode; the rest is the device.
//!
//! - Even: the device is the bytes as they are.
//! - Odd: the bytes are the device's start, padded with zeros to 4 MiB, so that a seed
//!   holding only a header and its key material still has a data segment to decrypt.
//!
//! Properties: `recognises` and `Header::read` never panic; `open_with_limits` never panics
//! and fails only with an error (never allocating what the header asks: Argon2 memory and
//! PBKDF2 iterations are refused above the limits, the JSON area is at most 4 MiB); an opened
//! volume lies inside the device, reads at its start, middle and end succeed (the device is in
//! memory, so nothing is unreadable), and a read past its end fails.
//!
//! Seeds (`seeds/luks_header/`, mode byte 1, passphrase `vmstash-fuzz`): the header and key
//! slot 0 of volumes made by cryptsetup 2.6.1 on 4 MiB files with the cheapest costs:
//! `luksFormat --type luks2 --key-size 256 --pbkdf pbkdf2 --pbkdf-force-iterations 1000
//! --luks2-keyslots-size 256k` (512-byte sectors, label "seed"; also a copy with the primary
//! header zeroed), the same with `--sector-size 4096 --pbkdf argon2id
//! --pbkdf-force-iterations 4 --pbkdf-memory 32 --pbkdf-parallel 1`, and `--type luks1
//! --key-size 256 --hash sha256 --pbkdf-force-iterations 1000` (also with `--cipher
//! aes-cbc-essiv:sha256 --hash sha1`).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmstash_fuse::guestfs::{Device, DeviceError};
use vmstash_fuse::luks::{open_with_limits, recognises, Header, KdfLimits, LuksError};

/// The padded device's length in odd mode.
const PADDED: usize = 4 << 20;
/// The seeds' passphrase.
const PASSPHRASE: &[u8] = b"vmstash-fuzz";

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode % 2 == 1 && bytes.len() < PADDED {
        bytes.resize(PADDED, 0);
    }
    let _ = recognises(&bytes);
    let inner: Arc<dyn Device> = Arc::new(bytes);
    let header = Header::read(inner.as_ref());
    let opened = open_with_limits(Arc::clone(&inner), PASSPHRASE, &KdfLimits::FUZZ);
    let luks = match opened {
        Ok(luks) => luks,
        Err(LuksError::Device(DeviceError::Read(_))) => {
            panic!("nothing in memory is unreadable")
        }
        Err(_) => return,
    };
    assert!(header.is_ok(), "a volume that opens has a readable header");
    let len = luks.len();
    let segment = &luks.header().segment;
    assert!(
        segment
            .offset
            .checked_add(len)
            .is_some_and(|end| end <= inner.len()),
        "the volume lies inside the device"
    );
    let mut b = [0u8; 1];
    for at in [0, len / 2, len.saturating_sub(1)] {
        if at < len {
            luks.read_at(at, &mut b).expect("a read inside the volume");
        }
    }
    let mut odd = vec![0u8; 4099];
    if len >= 4100 {
        luks.read_at(1, &mut odd)
            .expect("an unaligned read inside the volume");
    }
    assert!(luks.read_at(len, &mut b).is_err(), "a read past the end");
});
