//! `Manifest::decode` on arbitrary bytes: it refuses them as corrupt or
//! incompatible, or the manifest it accepts survives encode → decode
//! unchanged (including the float `duration_seconds`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstash_fuzz::assert_rejected;
use vmstash_repo::snapshot::Manifest;

fuzz_target!(|data: &[u8]| {
    match Manifest::decode(data, "s") {
        Ok(m) => {
            let again = Manifest::decode(&m.encode(), "s").expect("an encoded manifest decodes");
            assert_eq!(again, m, "decode(encode(m)) != m");
        }
        Err(e) => assert_rejected(&e),
    }
});
