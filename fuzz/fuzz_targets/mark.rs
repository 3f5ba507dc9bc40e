//! `Mark::decode` on arbitrary bytes (the plaintext of a `marks/` file, §20.1): it refuses them
//! as corrupt, or the mark it accepts survives encode → decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstash_fuzz::assert_rejected;
use vmstash_repo::marks::Mark;

fuzz_target!(|data: &[u8]| {
    match Mark::decode(data, "m") {
        Ok(m) => {
            let again = Mark::decode(&m.encode(), "m").expect("an encoded mark decodes");
            assert_eq!(again, m, "decode(encode(m)) != m");
        }
        Err(e) => assert_rejected(&e),
    }
});
