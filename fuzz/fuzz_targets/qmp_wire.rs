//! The QMP client (`vmstash_hashblocks::qmp`, spec/FORMAT.md §19.8) with arbitrary bytes as
//! everything QEMU sends, and its message decoder on arbitrary lines.
//!
//! Input: byte 0 chooses the mode.
//!
//! - Even: a session over an in-memory stream: the greeting and capabilities negotiation, then
//!   three commands (`query-block`, `query-named-block-nodes`, `block-job-cancel`) and a wait
//!   for a job to be gone. Properties: no panic; an I/O error is only the input running out
//!   (`Closed`, or `Io` of kind `UnexpectedEof`); a refused `qmp_capabilities` is `Refused`.
//! - Odd: the rest is one line for the decoder: whatever it accepts is of a known kind, an
//!   error always with its class and description.
//!
//! Seeds (`seeds/qmp_wire/`): a session as QEMU 7.2 answered it here (greeting, events between
//! replies, an error), a refused negotiation, and decoder lines.
#![no_main]

use std::io::{self, Read, Write};

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use vmstash_hashblocks::qmp::wire::decode;
use vmstash_hashblocks::qmp::{Message, QmpClient, QmpError};

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 0 => session(rest),
        Some((_, rest)) => line(rest),
        None => {}
    }
});

/// QEMU's bytes as a stream; what the client writes is dropped.
struct Qemu<'a> {
    input: &'a [u8],
}

impl Read for Qemu<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Qemu<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn session(input: &[u8]) {
    let mut client = match QmpClient::negotiate(Qemu { input }) {
        Ok(client) => client,
        Err(e) => return assert_expected(&e),
    };
    assert!(!client.version().is_empty());
    for command in [
        json!({"execute": "query-block"}),
        json!({"execute": "query-named-block-nodes", "arguments": {"flat": true}}),
        json!({"execute": "block-job-cancel", "arguments": {"device": "vmstash-backup-0"}}),
    ] {
        if let Err(e) = client.execute(&command) {
            return assert_expected(&e);
        }
    }
    if let Err(e) = client.await_job_gone("vmstash-backup-0") {
        assert_expected(&e);
    }
}

/// The errors a session over finite, arbitrary bytes may end in.
fn assert_expected(e: &QmpError) {
    match e {
        QmpError::Io { source, .. } => {
            assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof, "{e}")
        }
        QmpError::Closed | QmpError::Protocol(_) | QmpError::Refused(_) => {}
        QmpError::Timeout(what) => panic!("a timeout reading memory: {what}"),
    }
}

fn line(bytes: &[u8]) {
    match decode(bytes) {
        Ok(Message::Error { class, desc }) => {
            let _ = (class.len(), desc.len());
        }
        Ok(Message::Greeting { version }) => assert!(!version.is_empty()),
        Ok(Message::Return(_) | Message::Event { .. }) => {}
        Err(e) => assert!(matches!(e, QmpError::Protocol(_)), "{e}"),
    }
}
