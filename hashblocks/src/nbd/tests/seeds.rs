//! The fuzz target `nbd_reply`'s seeds: server sessions that take the client through the calls
//! the target makes (a read of `min(size, 128 KiB)` at 0, block status at 0 per selected
//! context, then `extents` of the first), checked here, and two decoder payloads.
//!
//! `VMSTASH_NBD_SEED_DIR=$PWD/fuzz/seeds/nbd_reply cargo test -p vmstash-hashblocks
//! nbd::tests::seeds`, from the workspace's root (tests run in the crate's directory), writes
//! them, each prefixed with the target's mode byte (0: session, 1: decoders) and, for
//! sessions, the contexts byte.

use super::*;

/// The fuzz target's session mode and its contexts byte (bit 0: `base:allocation`, bit 1: the
/// dirty bitmap).
fn session_seed(contexts: u8, server: &[u8]) -> Vec<u8> {
    let mut seed = vec![0, contexts];
    seed.extend_from_slice(server);
    seed
}

/// The fuzz target's decoder mode: a request (offset, length, export size), then a payload.
fn decoder_seed(offset: u64, length: u32, size: u64, payload: &[u8]) -> Vec<u8> {
    let mut seed = vec![1];
    seed.extend_from_slice(&offset.to_be_bytes());
    seed.extend_from_slice(&length.to_be_bytes());
    seed.extend_from_slice(&size.to_be_bytes());
    seed.extend_from_slice(payload);
    seed
}

/// Writes `seed` as `name` when `VMSTASH_NBD_SEED_DIR` names a directory.
fn save(name: &str, seed: &[u8]) {
    if let Some(dir) = std::env::var_os("VMSTASH_NBD_SEED_DIR") {
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir).expect("seed directory");
        std::fs::write(dir.join(name), seed).expect("write seed");
    }
}

const READ_LEN: u32 = 128 << 10;

#[test]
fn seed_session_with_both_contexts() {
    let head = pattern_bytes(512);
    let allocation = status(7, &[(65536, 0), (983040, NBD_STATE_HOLE | NBD_STATE_ZERO)]);
    let dirty = status(9, &[(65536, NBD_STATE_DIRTY), (983040, 0)]);
    let mut server = handshake();
    for reply in [
        chunk(0, NBD_REPLY_TYPE_OFFSET_DATA, 1, &data(0, &head)),
        done(NBD_REPLY_TYPE_OFFSET_HOLE, 1, &hole(512, READ_LEN - 512)),
        chunk(0, NBD_REPLY_TYPE_BLOCK_STATUS, 2, &allocation),
        done(NBD_REPLY_TYPE_BLOCK_STATUS, 2, &dirty),
        chunk(0, NBD_REPLY_TYPE_BLOCK_STATUS, 3, &dirty),
        done(NBD_REPLY_TYPE_BLOCK_STATUS, 3, &allocation),
        // Less than asked, then the rest.
        chunk(0, NBD_REPLY_TYPE_BLOCK_STATUS, 4, &status(7, &[(65536, 0)])),
        done(NBD_REPLY_TYPE_BLOCK_STATUS, 4, &status(9, &[(65536, 1)])),
        chunk(
            0,
            NBD_REPLY_TYPE_BLOCK_STATUS,
            5,
            &status(9, &[(983040, 0)]),
        ),
        chunk(
            0,
            NBD_REPLY_TYPE_BLOCK_STATUS,
            5,
            &status(7, &[(983040, 3)]),
        ),
        done(NBD_REPLY_TYPE_NONE, 5, &[]),
    ] {
        server.extend(reply);
    }
    let (stream, _) = memory(server.clone());
    let mut client = NbdClient::handshake(stream, "", &CONTEXTS).expect("handshake");
    let mut buf = vec![1u8; 128 << 10];
    client.read(0, &mut buf).expect("read");
    assert_eq!(&buf[..512], &head[..]);
    for context in CONTEXTS {
        assert_eq!(
            client.block_status(0, SIZE, context).expect("status").len(),
            2
        );
    }
    let got = client.extents(CONTEXTS[0], 0, SIZE).expect("extents");
    assert_eq!(got.len(), 2);
    save("session-both-contexts", &session_seed(3, &server));
}

#[test]
fn seed_session_without_contexts() {
    let bytes = pattern_bytes(4096);
    let mut server = handshake_with(4096, None, [512, 4096, 32 << 20]);
    server.extend(chunk(
        0,
        NBD_REPLY_TYPE_OFFSET_DATA,
        1,
        &data(2048, &bytes[2048..]),
    ));
    server.extend(done(
        NBD_REPLY_TYPE_OFFSET_DATA,
        1,
        &data(0, &bytes[..2048]),
    ));
    let (stream, _) = memory(server.clone());
    let mut client = NbdClient::handshake(stream, "", &[]).expect("handshake");
    let mut buf = vec![0u8; 4096];
    client.read(0, &mut buf).expect("read");
    assert_eq!(buf, bytes);
    save("session-no-contexts", &session_seed(0, &server));
}

#[test]
fn seed_session_refused() {
    let mut server = greeting(NBD_FLAG_FIXED_NEWSTYLE);
    server.extend(opt_reply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[]));
    server.extend(opt_reply(NBD_OPT_SET_META_CONTEXT, NBD_REP_ERR_UNSUP, &[]));
    let (stream, _) = memory(server.clone());
    let err = NbdClient::handshake(stream, "", &CONTEXTS[..1]).expect_err("refused");
    assert!(matches!(err, NbdError::Unsupported(_)), "{err}");
    save("session-refused", &session_seed(1, &server));
}

#[test]
fn seed_session_with_errors() {
    let mut server = handshake_with(SIZE, Some(&SELECTED[..1]), QEMU_BLOCK_SIZES);
    for reply in [
        chunk(
            0,
            NBD_REPLY_TYPE_ERROR_OFFSET,
            1,
            &error(5, "bad sector", Some(4096)),
        ),
        done(NBD_REPLY_TYPE_NONE, 1, &[]),
        simple(22, 2),
        done(NBD_REPLY_TYPE_BLOCK_STATUS, 3, &status(7, &[(524288, 0)])),
        done(NBD_REPLY_TYPE_BLOCK_STATUS, 4, &status(7, &[(524288, 3)])),
    ] {
        server.extend(reply);
    }
    let (stream, _) = memory(server.clone());
    let mut client = NbdClient::handshake(stream, "", &CONTEXTS[..1]).expect("handshake");
    let mut buf = vec![0u8; 128 << 10];
    let err = client.read(0, &mut buf).expect_err("read error");
    assert!(matches!(err, NbdError::Server { errno: 5, .. }), "{err}");
    let err = client
        .block_status(0, SIZE, CONTEXTS[0])
        .expect_err("status error");
    assert!(matches!(err, NbdError::Server { errno: 22, .. }), "{err}");
    let got = client.extents(CONTEXTS[0], 0, SIZE).expect("extents");
    assert_eq!(got.len(), 2);
    save("session-errors", &session_seed(1, &server));
}

#[test]
fn seed_decoder_payloads() {
    let payload = status(7, &[(65536, 0), (983040, 3)]);
    let chunk = decode_block_status(&payload, 0, 1 << 20, SIZE).expect("decodes");
    assert_eq!(chunk.extents.len(), 2);
    save(
        "decoders-block-status",
        &decoder_seed(0, 1 << 20, SIZE, &payload),
    );
    let payload = error(5, "bad sector", Some(4096));
    let chunk = decode_error_chunk(NBD_REPLY_TYPE_ERROR_OFFSET, &payload).expect("decodes");
    assert_eq!(chunk.offset, Some(4096));
    save(
        "decoders-error-chunk",
        &decoder_seed(0, 8192, SIZE, &payload),
    );
}

/// `len` bytes of a pattern.
fn pattern_bytes(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 253).expect("small"))
        .collect()
}
