//! The client against fake servers: scripted bytes in memory (what a server sends does not
//! depend on what the client writes, since cookies count from 1), and a server thread on a
//! socket pair for the exchanges where it does.
//!
//! - `handshake`: greetings, options, refusals, and the limits on option replies;
//! - `commands`: reads and block status, well-formed and damaged replies;
//! - `socket`: whole sessions over a Unix socket with a server thread that answers block status
//!   for less than asked, and a refused handshake ending with `NBD_OPT_ABORT`;
//! - `seeds`: the fuzz target's seeds, checked (and written on request).

mod commands;
mod handshake;
mod seeds;
mod socket;

use super::wire::*;
use super::{NbdClient, NbdError};
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;

/// The export size most tests use: 1 MiB.
const SIZE: u64 = 1 << 20;
/// The contexts most tests ask for.
const CONTEXTS: [&str; 2] = ["base:allocation", "qemu:dirty-bitmap:bitmap0"];
/// The ids the fake server gives them.
const SELECTED: [(&str, u32); 2] = [("base:allocation", 7), ("qemu:dirty-bitmap:bitmap0", 9)];

/// The greeting of a fixed newstyle server offering `flags`.
fn greeting(flags: u16) -> Vec<u8> {
    let mut out = NBDMAGIC.to_be_bytes().to_vec();
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out
}

/// An option reply.
fn opt_reply(option: u32, reply_type: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = NBD_REP_MAGIC.to_be_bytes().to_vec();
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&u32::try_from(payload.len()).expect("short").to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `NBD_INFO_EXPORT`'s payload.
fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut out = NBD_INFO_EXPORT.to_be_bytes().to_vec();
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out
}

/// `NBD_INFO_BLOCK_SIZE`'s payload.
fn info_block_size([minimum, preferred, maximum]: [u32; 3]) -> Vec<u8> {
    let mut out = NBD_INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    for v in [minimum, preferred, maximum] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

/// `NBD_REP_META_CONTEXT`'s payload.
fn meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(name.as_bytes());
    out
}

/// The block sizes qemu-nbd 7.2 sends for a qcow2 image.
const QEMU_BLOCK_SIZES: [u32; 3] = [1, 4096, 32 << 20];

/// A well-behaved server's side of the handshake: structured replies accepted, the contexts
/// `selected` (None: the client asks for none), an export of `size` bytes with `block_sizes`.
fn handshake_with(size: u64, selected: Option<&[(&str, u32)]>, block_sizes: [u32; 3]) -> Vec<u8> {
    let mut out = greeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    out.extend(opt_reply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[]));
    if let Some(selected) = selected {
        for (name, id) in selected {
            out.extend(opt_reply(
                NBD_OPT_SET_META_CONTEXT,
                NBD_REP_META_CONTEXT,
                &meta_context(*id, name),
            ));
        }
        out.extend(opt_reply(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[]));
    }
    let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY;
    out.extend(opt_reply(
        NBD_OPT_GO,
        NBD_REP_INFO,
        &info_export(size, flags),
    ));
    out.extend(opt_reply(
        NBD_OPT_GO,
        NBD_REP_INFO,
        &info_block_size(block_sizes),
    ));
    out.extend(opt_reply(NBD_OPT_GO, NBD_REP_ACK, &[]));
    out
}

/// [`handshake_with`] a 1 MiB export, both [`SELECTED`] contexts and qemu's block sizes.
fn handshake() -> Vec<u8> {
    handshake_with(SIZE, Some(&SELECTED), QEMU_BLOCK_SIZES)
}

/// A structured reply chunk.
fn chunk(flags: u16, kind: u16, cookie: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = NBD_STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&u32::try_from(payload.len()).expect("short").to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The last chunk of a reply.
fn done(kind: u16, cookie: u64, payload: &[u8]) -> Vec<u8> {
    chunk(NBD_REPLY_FLAG_DONE, kind, cookie, payload)
}

/// A simple reply.
fn simple(error: u32, cookie: u64) -> Vec<u8> {
    let mut out = NBD_SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out
}

/// `NBD_REPLY_TYPE_OFFSET_DATA`'s payload.
fn data(offset: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = offset.to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// `NBD_REPLY_TYPE_OFFSET_HOLE`'s payload.
fn hole(offset: u64, len: u32) -> Vec<u8> {
    let mut out = offset.to_be_bytes().to_vec();
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// `NBD_REPLY_TYPE_BLOCK_STATUS`'s payload.
fn status(id: u32, extents: &[(u32, u32)]) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    for (len, flags) in extents {
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
    }
    out
}

/// An error chunk's payload.
fn error(errno: u32, message: &str, offset: Option<u64>) -> Vec<u8> {
    let mut out = errno.to_be_bytes().to_vec();
    out.extend_from_slice(&u16::try_from(message.len()).expect("short").to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    if let Some(offset) = offset {
        out.extend_from_slice(&offset.to_be_bytes());
    }
    out
}

/// A stream that reads scripted server bytes and records what the client writes.
struct Memory {
    input: io::Cursor<Vec<u8>>,
    output: Rc<RefCell<Vec<u8>>>,
}

impl Read for Memory {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Memory {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A memory stream serving `input`, and a handle on what the client writes to it.
fn memory(input: Vec<u8>) -> (Memory, Rc<RefCell<Vec<u8>>>) {
    let output = Rc::new(RefCell::new(Vec::new()));
    let stream = Memory {
        input: io::Cursor::new(input),
        output: Rc::clone(&output),
    };
    (stream, output)
}

/// A client asking for [`CONTEXTS`], after [`handshake`]; the server then sends `replies`.
fn connected(replies: &[Vec<u8>]) -> (NbdClient<Memory>, Rc<RefCell<Vec<u8>>>) {
    let mut input = handshake();
    input.extend(replies.concat());
    let (stream, output) = memory(input);
    let client = NbdClient::handshake(stream, "", &CONTEXTS).expect("handshake");
    (client, output)
}

/// What a client wrote: its flags, its options (option, data) and its requests.
#[derive(Debug, Default)]
struct Written {
    flags: u32,
    options: Vec<(u32, Vec<u8>)>,
    requests: Vec<Request>,
}

/// Splits what a client wrote into flags, options and requests (nothing written: all empty);
/// panics on anything else.
fn written(bytes: &[u8]) -> Written {
    if bytes.is_empty() {
        return Written::default();
    }
    let (flags, mut rest) = bytes.split_first_chunk::<4>().expect("client flags");
    let mut out = Written {
        flags: u32::from_be_bytes(*flags),
        ..Written::default()
    };
    while !rest.is_empty() {
        if rest.starts_with(&IHAVEOPT.to_be_bytes()) {
            let option = be_u32(&rest[8..12]);
            let len = usize::try_from(be_u32(&rest[12..16])).expect("len");
            out.options.push((option, rest[16..16 + len].to_vec()));
            rest = &rest[16 + len..];
        } else {
            out.requests.push(parse_request(&rest[..REQUEST_LEN]));
            rest = &rest[REQUEST_LEN..];
        }
    }
    out
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes.try_into().expect("4 bytes"))
}

/// A request, as a server decodes it.
fn parse_request(bytes: &[u8]) -> Request {
    assert_eq!(be_u32(&bytes[..4]), NBD_REQUEST_MAGIC, "request magic");
    Request {
        flags: u16::from_be_bytes([bytes[4], bytes[5]]),
        command: u16::from_be_bytes([bytes[6], bytes[7]]),
        cookie: u64::from_be_bytes(bytes[8..16].try_into().expect("8")),
        offset: u64::from_be_bytes(bytes[16..24].try_into().expect("8")),
        length: be_u32(&bytes[24..28]),
    }
}

/// A request as this client sends it.
fn request(command: u16, cookie: u64, offset: u64, length: u32) -> Request {
    Request {
        flags: 0,
        command,
        cookie,
        offset,
        length,
    }
}

/// Asserts that `result` failed as a protocol violation whose message contains `what`.
#[track_caller]
fn assert_protocol<T: std::fmt::Debug>(result: Result<T, NbdError>, what: &str) {
    match result {
        Err(NbdError::Protocol(message)) => {
            assert!(message.contains(what), "{message:?} should say {what:?}")
        }
        other => panic!("expected a protocol error saying {what:?}, got {other:?}"),
    }
}
