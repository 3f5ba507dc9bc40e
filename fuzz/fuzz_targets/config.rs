//! `Config::decode` on arbitrary bytes: it refuses them as corrupt or
//! incompatible, or it accepts them and then the config survives
//! encode → decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstash_fuzz::assert_rejected;
use vmstash_repo::config::Config;

fuzz_target!(|data: &[u8]| {
    match Config::decode(data) {
        Ok(cfg) => {
            let again = Config::decode(&cfg.encode()).expect("an encoded config decodes");
            assert_eq!(again, cfg, "decode(encode(c)) != c");
        }
        Err(e) => assert_rejected(&e),
    }
});
