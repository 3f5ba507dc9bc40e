//! The envelope and framing of metadata files, on arbitrary bytes:
//!
//! - `sealed::open` under a fixed key refuses them as corrupt or
//!   incompatible (the fuzzer cannot forge a GCM tag); sealing them instead
//!   and opening gives them back, and one flipped bit, or the wrong file
//!   type, is refused;
//! - `payload::decode` never returns more than its cap, honours a cap of
//!   exactly the output's length and refuses one byte less; `encode` then
//!   `decode` is the identity;
//! - `chunkmap::decode_segment` accepts exactly the whole-id inputs of at
//!   most one segment, and encodes back to them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstash_fuzz::{assert_rejected, master};
use vmstash_repo::chunkmap::{self, SEGMENT_ENTRIES};
use vmstash_repo::id::ID_LEN;
use vmstash_repo::payload;
use vmstash_repo::sealed::{self, FileType, MAX_PLAINTEXT};

/// The cap `payload::decode` is fuzzed with.
const CAP: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    open_untrusted(data);
    seal_and_tamper(data);
    payload_caps(data);
    segment(data);
});

fn open_untrusted(data: &[u8]) {
    match sealed::open(&master(), FileType::Index, data, "f") {
        Ok(plain) => assert!(plain.len() <= MAX_PLAINTEXT),
        Err(e) => assert_rejected(&e),
    }
}

fn seal_and_tamper(data: &[u8]) {
    let mk = master();
    let level = i32::from(data.first().copied().unwrap_or(0) % 4);
    let bytes = sealed::seal(&mk, FileType::Index, data, level);
    let opened = sealed::open(&mk, FileType::Index, &bytes, "f").expect("a sealed file opens");
    assert_eq!(opened, data);
    assert!(sealed::open(&mk, FileType::Snapshot, &bytes, "f").is_err());
    let at = data.len().wrapping_mul(31) % bytes.len();
    let mut flipped = bytes;
    flipped[at] ^= 1 << (data.len() % 8);
    let err = sealed::open(&mk, FileType::Index, &flipped, "f").expect_err("flipped bit");
    assert_rejected(&err);
}

fn payload_caps(data: &[u8]) {
    match payload::decode(data, CAP, "f") {
        Ok(plain) => {
            assert!(plain.len() <= CAP, "{} bytes past the cap", plain.len());
            let exact = payload::decode(data, plain.len(), "f").expect("cap = length");
            assert_eq!(exact, plain);
            if let Some(less) = plain.len().checked_sub(1) {
                let err = payload::decode(data, less, "f").expect_err("cap below length");
                assert_rejected(&err);
            }
        }
        Err(e) => assert_rejected(&e),
    }
    let framed = payload::encode(data, 1);
    assert!(
        framed.len() <= data.len() + 1,
        "framing grows data by at most 1 byte"
    );
    let back = payload::decode(&framed, data.len(), "f").expect("framed payload decodes");
    assert_eq!(back, data);
}

fn segment(data: &[u8]) {
    let whole = data.len().is_multiple_of(ID_LEN) && data.len() <= SEGMENT_ENTRIES * ID_LEN;
    match chunkmap::decode_segment(data, "m") {
        Ok(ids) => {
            assert!(whole, "accepted {} bytes", data.len());
            assert_eq!(chunkmap::encode_segment(&ids), data);
        }
        Err(e) => {
            assert!(!whole, "refused {} bytes", data.len());
            assert_rejected(&e);
        }
    }
}
