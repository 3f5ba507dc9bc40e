//! The NBD client (`vmstash_hashblocks::nbd`, spec/FORMAT.md §22) with arbitrary bytes as
//! everything the server sends, and its pure decoders on arbitrary payloads.
//!
//! Input: byte 0 chooses the mode.
//!
//! - Even: a session over an in-memory stream. The low two bits of byte 1 choose the contexts
//!   asked for (`base:allocation`, `qemu:dirty-bitmap:bitmap0`); the rest is the server's
//!   bytes. After the handshake the client reads `min(size, 128 KiB)` at 0, asks block status
//!   at 0 for the whole export once per selected context (in the order asked), then the
//!   extents of the first selected context over `min(size, 16 MiB)`.
//!   Properties: the client never asks for anything out of range (no `BadRequest`); an I/O
//!   error is only the input running out, or a call after the session ended; after an error
//!   that ends the session the next call fails without reading; a selected context was asked
//!   for, with its own id; block sizes are sane; block status answers are consecutive
//!   non-empty extents from the offset, inside the request and the export; `extents` covers
//!   its range exactly, with neighbours of equal flags merged.
//! - Odd: bytes 1..21 are a request (offset u64, length u32, export size u64), the rest a
//!   payload given to every decoder. Whatever one accepts satisfies its documented limits:
//!   extents as above, error values non-zero, strings within 4096 bytes (before lossy UTF-8
//!   repair), header lengths within their caps.
//!
//! Seeds (`seeds/nbd_reply/`): captured from the unit tests' fake server
//! (`VMSTASH_NBD_SEED_DIR=$PWD/fuzz/seeds/nbd_reply cargo test -p vmstash-hashblocks
//! nbd::tests::seeds` from the workspace's root): sessions with both contexts, with none,
//! refused, with error replies, and two decoder payloads.
#![no_main]

use std::io::{self, Read, Write};

use libfuzzer_sys::fuzz_target;
use vmstash_hashblocks::nbd::wire::{
    check_chunk_length, decode_block_status, decode_error_chunk, decode_greeting,
    decode_offset_hole, decode_option_reply, decode_option_reply_header, decode_reply_header,
    BlockStatusChunk, Info, OptionReply, ReplyHeader, MAX_BLOCK_STATUS_CHUNK_LEN,
    MAX_OPTION_REPLY_LEN, MAX_STRING_LEN, NBD_CMD_BLOCK_STATUS, NBD_CMD_READ, NBD_REPLY_TYPE_ERROR,
    NBD_REPLY_TYPE_ERROR_OFFSET, NBD_REPLY_TYPE_OFFSET_DATA, NBD_REP_ACK, NBD_REP_ERR_UNKNOWN,
    NBD_REP_INFO, NBD_REP_META_CONTEXT, NBD_REP_SERVER,
};
use vmstash_hashblocks::nbd::{BlockSize, Extent, NbdClient, NbdError, MAX_EXTENTS_PER_CALL};

/// The contexts a session may ask for.
const CONTEXTS: [&str; 2] = ["base:allocation", "qemu:dirty-bitmap:bitmap0"];
/// Lossy UTF-8 repair turns one bad byte into three.
const MAX_MESSAGE_LEN: usize = 3 * MAX_STRING_LEN;

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 0 => session(rest),
        Some((_, rest)) => decoders(rest),
        None => {}
    }
});

/// The server's bytes as a stream; what the client writes is dropped.
struct Server<'a> {
    input: &'a [u8],
}

impl Read for Server<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Server<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn session(data: &[u8]) {
    let (choice, input) = data.split_first().map_or((0, data), |(c, rest)| (*c, rest));
    let asked: Vec<&str> = CONTEXTS
        .iter()
        .enumerate()
        .filter(|(i, _)| choice & (1 << i) != 0)
        .map(|(_, c)| *c)
        .collect();
    let mut client = match NbdClient::handshake(Server { input }, "", &asked) {
        Ok(client) => client,
        Err(err) => return assert_expected(&err),
    };
    check_session(&client, &asked);
    let size = client.size();
    let mut buf = vec![0u8; usize::try_from(size.min(128 << 10)).expect("small")];
    let mut ended = false;
    step(&mut client, &mut ended, |c| c.read(0, &mut buf));
    if size == 0 {
        return;
    }
    let selected: Vec<&str> = asked
        .iter()
        .copied()
        .filter(|c| client.has_context(c))
        .collect();
    for context in &selected {
        step(&mut client, &mut ended, |c| {
            let extents = c.block_status(0, size, context)?;
            check_answer(&extents, 0, size.min(1 << 31));
            Ok(())
        });
    }
    if let Some(context) = selected.first() {
        let len = size.min(16 << 20);
        step(&mut client, &mut ended, |c| {
            let extents = c.extents(context, 0, len)?;
            check_extents(&extents, len);
            Ok(())
        });
    }
}

/// Runs one call unless the session already ended; checks its error, and that a call after an
/// error that ends the session fails without reading.
fn step<'a>(
    client: &mut NbdClient<Server<'a>>,
    ended: &mut bool,
    call: impl FnOnce(&mut NbdClient<Server<'a>>) -> Result<(), NbdError>,
) {
    if *ended {
        return;
    }
    let Err(err) = call(client) else { return };
    assert_expected(&err);
    if !err.ends_session() {
        return;
    }
    *ended = true;
    // The shortest valid read: refused as not connected (or nothing to read at all).
    let len = client.size().min(u64::from(client.block_size().minimum));
    let mut buf = vec![0u8; usize::try_from(len).expect("at most 64 KiB")];
    match client.read(0, &mut buf) {
        Ok(()) => assert!(buf.is_empty(), "a broken session read {len} bytes"),
        Err(NbdError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::NotConnected),
        Err(other) => panic!("a broken session must refuse calls, got {other:?}"),
    }
}

/// The errors a session may end with on arbitrary server bytes.
fn assert_expected(err: &NbdError) {
    match err {
        NbdError::Io(e) => assert!(
            matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::NotConnected
            ),
            "unexpected I/O error {e:?}"
        ),
        NbdError::BadRequest(what) => panic!("the client asked for something invalid: {what}"),
        NbdError::Protocol(_)
        | NbdError::Unsupported(_)
        | NbdError::Refused { .. }
        | NbdError::Server { .. } => {}
    }
}

/// What a handshake that succeeded agreed on.
fn check_session(client: &NbdClient<Server<'_>>, asked: &[&str]) {
    let contexts = client.contexts();
    for (i, c) in contexts.iter().enumerate() {
        assert!(asked.contains(&c.name.as_str()), "{c:?} was not asked for");
        for other in &contexts[i + 1..] {
            assert!(other.name != c.name && other.id != c.id, "{c:?} twice");
        }
    }
    check_block_size(client.block_size());
}

fn check_block_size(sizes: BlockSize) {
    assert!(sizes.minimum.is_power_of_two() && sizes.minimum <= 64 << 10);
    assert!(sizes.maximum_payload >= sizes.minimum);
}

/// One block status answer for up to `asked` bytes at `offset`.
fn check_answer(extents: &[Extent], offset: u64, asked: u64) {
    assert!(!extents.is_empty(), "an answer covers at least one byte");
    let mut at = offset;
    for e in extents {
        assert_eq!(e.offset, at, "extents are consecutive");
        assert!(e.length > 0);
        at += e.length;
    }
    assert!(at - offset <= asked, "the answer stays inside the request");
}

/// The extents of exactly `0..len`, merged.
fn check_extents(extents: &[Extent], len: u64) {
    assert!(extents.len() <= MAX_EXTENTS_PER_CALL);
    if len == 0 {
        return assert!(extents.is_empty());
    }
    check_answer(extents, 0, len);
    assert_eq!(extents.iter().map(|e| e.length).sum::<u64>(), len);
    for pair in extents.windows(2) {
        assert_ne!(
            pair[0].flags, pair[1].flags,
            "neighbours with equal flags merge"
        );
    }
}

fn decoders(data: &[u8]) {
    let Some((request, payload)) = data.split_first_chunk::<20>() else {
        return;
    };
    let offset = u64::from_be_bytes(request[..8].try_into().expect("8"));
    let length = u32::from_be_bytes(request[8..12].try_into().expect("4"));
    let size = u64::from_be_bytes(request[12..].try_into().expect("8"));

    if let Ok(BlockStatusChunk { extents, .. }) = decode_block_status(payload, offset, length, size)
    {
        let end = offset
            .checked_add(u64::from(length))
            .expect("accepted: no overflow");
        assert!(end <= size, "accepted: inside the export");
        assert_eq!(extents.len(), (payload.len() - 4) / 8);
        check_answer(&extents, offset, u64::from(length));
    }
    for kind in [NBD_REPLY_TYPE_ERROR, NBD_REPLY_TYPE_ERROR_OFFSET, 0x8123] {
        if let Ok(chunk) = decode_error_chunk(kind, payload) {
            assert_ne!(chunk.errno, 0);
            assert!(chunk.message.len() <= MAX_MESSAGE_LEN);
            assert_eq!(chunk.offset.is_some(), kind == NBD_REPLY_TYPE_ERROR_OFFSET);
        }
    }
    if let Ok(hole) = decode_offset_hole(payload) {
        assert_eq!(payload.len(), 12);
        assert_ne!(hole.length, 0);
    }
    for reply_type in [
        NBD_REP_ACK,
        NBD_REP_INFO,
        NBD_REP_META_CONTEXT,
        NBD_REP_SERVER,
        NBD_REP_ERR_UNKNOWN,
    ] {
        check_option_reply(reply_type, payload);
    }
    headers(payload, length);
}

fn check_option_reply(reply_type: u32, payload: &[u8]) {
    match decode_option_reply(reply_type, payload) {
        Ok(OptionReply::Ack) => assert!(payload.is_empty()),
        Ok(OptionReply::MetaContext { name, .. }) => assert!(name.len() <= MAX_STRING_LEN),
        Ok(OptionReply::Info(Info::BlockSize(sizes))) => check_block_size(sizes),
        Ok(OptionReply::Info(Info::Export { .. })) => assert_eq!(payload.len(), 12),
        Ok(OptionReply::Error { message, .. }) => assert!(message.len() <= MAX_MESSAGE_LEN),
        Ok(OptionReply::Info(Info::Other(_)) | OptionReply::Other(_)) | Err(_) => {}
    }
}

/// The header decoders on the payload's first bytes.
fn headers(payload: &[u8], request_len: u32) {
    if let Some(greeting) = payload.first_chunk() {
        let _ = decode_greeting(greeting);
    }
    if let Some(header) = payload.first_chunk() {
        if let Ok(h) = decode_option_reply_header(header) {
            assert!(h.length <= MAX_OPTION_REPLY_LEN);
        }
    }
    for len in [16, 20] {
        let Some(bytes) = payload.get(..len) else {
            continue;
        };
        let Ok(ReplyHeader::Chunk(h)) = decode_reply_header(bytes) else {
            continue;
        };
        if check_chunk_length(&h, NBD_CMD_READ, request_len).is_ok()
            && h.kind == NBD_REPLY_TYPE_OFFSET_DATA
        {
            assert!(h.length >= 9 && u64::from(h.length) <= 8 + u64::from(request_len));
        }
        if check_chunk_length(&h, NBD_CMD_BLOCK_STATUS, request_len).is_ok() {
            assert!(h.length <= MAX_BLOCK_STATUS_CHUNK_LEN.max(64 << 10));
        }
    }
}
