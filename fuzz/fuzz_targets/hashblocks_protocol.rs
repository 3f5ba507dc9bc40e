//! The hashblocks wire protocol's decoder on arbitrary bytes, read as a stream
//! of frames the way the CLI reads the helper's output: every frame either
//! decodes and then survives encode → decode unchanged, or is refused with a
//! protocol error; nothing panics and no frame body is allocated beyond the
//! protocol's frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstash_hashblocks::protocol::{read_frame, Frame, ProtocolError, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    loop {
        match read_frame(&mut stream) {
            Ok(frame) => {
                let mut wire = Vec::new();
                frame.encode(&mut wire).expect("a decoded frame encodes");
                let len = u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]);
                assert!(len <= MAX_FRAME_LEN);
                assert_eq!(Frame::decode(&wire[4..]).expect("re-decodes"), frame);
            }
            Err(ProtocolError::Closed | ProtocolError::Io(_)) => break,
            Err(_) => break,
        }
    }
    let _ = Frame::decode(data);
});
