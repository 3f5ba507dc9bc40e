//! `KeyFile::decode` on arbitrary bytes: it refuses them as corrupt or
//! incompatible, or the key file it accepts re-encodes to bytes that decode
//! to the same key file (compared by encoding: `KeyFile` has no
//! `PartialEq`). `unwrap_key` is not called: argon2id is too slow to fuzz.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstash_fuzz::assert_rejected;
use vmstash_repo::keyfile::{KeyFile, MAX_KEY_FILE_LEN};

fuzz_target!(|data: &[u8]| {
    match KeyFile::decode(data, "k") {
        Ok(key) => {
            let bytes = key.encode();
            // Pretty-printing adds some 60 bytes of indentation, so a
            // compact key file just under the cap re-encodes past it; the
            // cap then refuses the re-encoding, as it should.
            if bytes.len() > MAX_KEY_FILE_LEN {
                return;
            }
            let again = KeyFile::decode(&bytes, "k").expect("an encoded key file decodes");
            assert_eq!(
                again.encode(),
                bytes,
                "encode(decode(encode(k))) != encode(k)"
            );
        }
        Err(e) => assert_rejected(&e),
    }
});
