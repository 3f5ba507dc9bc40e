//! Reads and block status: well-formed replies in their several shapes, and damaged ones, which
//! must end the session with a protocol error (never a panic, never a wrong answer).

use super::*;
use crate::nbd::Extent;

/// `len` bytes of a pattern that depends on `seed`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 251).expect("small") ^ seed)
        .collect()
}

/// Extents from `(offset, length, flags)`.
fn extents(list: &[(u64, u64, u32)]) -> Vec<Extent> {
    list.iter()
        .map(|&(offset, length, flags)| Extent {
            offset,
            length,
            flags,
        })
        .collect()
}

#[test]
fn a_read_assembles_data_and_holes_in_any_order() {
    let bytes = pattern(4096, 0x5a);
    let (mut client, output) = connected(&[
        chunk(0, NBD_REPLY_TYPE_OFFSET_HOLE, 1, &hole(4096 + 8192, 4096)),
        chunk(0, NBD_REPLY_TYPE_OFFSET_DATA, 1, &data(4096, &bytes)),
        chunk(0, NBD_REPLY_TYPE_OFFSET_HOLE, 1, &hole(4096 + 4096, 4096)),
        done(NBD_REPLY_TYPE_NONE, 1, &[]),
    ]);
    let mut buf = vec![0xffu8; 3 * 4096];
    client.read(4096, &mut buf).expect("read");
    assert_eq!(&buf[..4096], &bytes[..]);
    assert!(buf[4096..].iter().all(|&b| b == 0));
    assert_eq!(
        written(&output.borrow()).requests,
        [request(NBD_CMD_READ, 1, 4096, 3 * 4096)]
    );
}

#[test]
fn a_content_chunk_may_be_the_last() {
    let bytes = pattern(512, 1);
    let (mut client, _) = connected(&[done(NBD_REPLY_TYPE_OFFSET_DATA, 1, &data(0, &bytes))]);
    let mut buf = vec![0u8; 512];
    client.read(0, &mut buf).expect("read");
    assert_eq!(buf, bytes);
}

#[test]
fn reads_are_split_at_the_servers_maximum_payload() {
    let mut input = handshake_with(SIZE, Some(&SELECTED), [512, 4096, 64 << 10]);
    let lens = [64 << 10, 64 << 10, 32 << 10];
    let mut at = 0u64;
    for (cookie, len) in (1..).zip(lens) {
        input.extend(done(NBD_REPLY_TYPE_OFFSET_HOLE, cookie, &hole(at, len)));
        at += u64::from(len);
    }
    let (stream, output) = memory(input);
    let mut client = NbdClient::handshake(stream, "", &CONTEXTS).expect("handshake");
    let mut buf = vec![1u8; 160 << 10];
    client.read(0, &mut buf).expect("read");
    assert!(buf.iter().all(|&b| b == 0));
    let sent = written(&output.borrow()).requests;
    assert_eq!(
        sent,
        [
            request(NBD_CMD_READ, 1, 0, 64 << 10),
            request(NBD_CMD_READ, 2, 64 << 10, 64 << 10),
            request(NBD_CMD_READ, 3, 128 << 10, 32 << 10),
        ]
    );
}

#[test]
fn requests_outside_the_export_or_unaligned_are_refused_unsent() {
    let input = handshake_with(SIZE, Some(&SELECTED), [512, 4096, 32 << 20]);
    let (stream, output) = memory(input);
    let mut client = NbdClient::handshake(stream, "", &CONTEXTS).expect("handshake");
    let mut buf = vec![0u8; 1024];
    for offset in [SIZE - 512, SIZE, u64::MAX - 100, 100] {
        let err = client.read(offset, &mut buf).expect_err("refused");
        assert!(matches!(err, NbdError::BadRequest(_)), "{offset}: {err}");
    }
    let err = client
        .read(0, &mut buf[..100])
        .expect_err("unaligned length");
    assert!(matches!(err, NbdError::BadRequest(_)), "{err}");
    for (offset, len) in [(SIZE, 512), (100, 512), (0, 100)] {
        let err = client
            .block_status(offset, len, "base:allocation")
            .expect_err("refused");
        assert!(
            matches!(err, NbdError::BadRequest(_)),
            "{offset}+{len}: {err}"
        );
    }
    let err = client
        .extents("base:allocation", SIZE - 512, 1024)
        .expect_err("refused");
    assert!(matches!(err, NbdError::BadRequest(_)), "{err}");
    assert!(written(&output.borrow()).requests.is_empty());
    assert!(
        client.read(0, &mut []).is_ok(),
        "an empty read sends nothing"
    );
}

#[test]
fn an_error_chunk_fails_the_read_and_the_session_goes_on() {
    let bytes = pattern(512, 2);
    let (mut client, _) = connected(&[
        chunk(0, NBD_REPLY_TYPE_OFFSET_DATA, 1, &data(0, &bytes)),
        chunk(
            0,
            NBD_REPLY_TYPE_ERROR_OFFSET,
            1,
            &error(5, "bad sector", Some(512)),
        ),
        done(NBD_REPLY_TYPE_NONE, 1, &[]),
        done(NBD_REPLY_TYPE_ERROR, 2, &error(22, "", None)),
        // An unknown error type, with a field this client does not know.
        done(0x8005, 3, &[0, 0, 0, 12, 0, 1, b'x', 9, 9]),
        simple(28, 4),
        done(NBD_REPLY_TYPE_OFFSET_DATA, 5, &data(0, &bytes)),
    ]);
    let mut buf = vec![0u8; 1024];
    match client.read(0, &mut buf) {
        Err(NbdError::Server { errno: 5, message }) => assert_eq!(message, "bad sector"),
        other => panic!("{other:?}"),
    }
    for errno in [22, 12, 28] {
        match client.read(0, &mut buf[..512]) {
            Err(err @ NbdError::Server { .. }) => {
                assert!(!err.ends_session());
                assert!(matches!(err, NbdError::Server { errno: e, .. } if e == errno));
            }
            other => panic!("{other:?}"),
        }
    }
    client
        .read(0, &mut buf[..512])
        .expect("the session goes on");
    assert_eq!(&buf[..512], &bytes[..]);
}

#[test]
fn a_simple_reply_to_a_read_is_accepted() {
    let bytes = pattern(512, 3);
    let mut reply = simple(0, 1);
    reply.extend_from_slice(&bytes);
    let (mut client, _) = connected(&[reply]);
    let mut buf = vec![0u8; 512];
    client.read(0, &mut buf).expect("read");
    assert_eq!(buf, bytes);
}

#[test]
fn block_status_returns_the_asked_contexts_extents() {
    let (mut client, output) = connected(&[
        chunk(
            0,
            NBD_REPLY_TYPE_BLOCK_STATUS,
            1,
            &status(9, &[(1 << 20, 0)]),
        ),
        done(
            NBD_REPLY_TYPE_BLOCK_STATUS,
            1,
            &status(7, &[(65536, 0), (983040, NBD_STATE_HOLE | NBD_STATE_ZERO)]),
        ),
    ]);
    let got = client
        .block_status(0, SIZE, "base:allocation")
        .expect("block status");
    assert_eq!(got, extents(&[(0, 65536, 0), (65536, 983040, 3)]));
    assert_eq!(
        written(&output.borrow()).requests,
        [request(NBD_CMD_BLOCK_STATUS, 1, 0, 1 << 20)]
    );
}

#[test]
fn block_status_for_less_than_asked_is_an_answer_and_extents_asks_again() {
    let (mut client, output) = connected(&[
        chunk(0, NBD_REPLY_TYPE_BLOCK_STATUS, 1, &status(7, &[(4096, 1)])),
        done(
            NBD_REPLY_TYPE_BLOCK_STATUS,
            1,
            &status(9, &[(65536, 0), (65536, NBD_STATE_DIRTY)]),
        ),
        chunk(0, NBD_REPLY_TYPE_BLOCK_STATUS, 2, &status(7, &[(4096, 1)])),
        chunk(
            0,
            NBD_REPLY_TYPE_BLOCK_STATUS,
            2,
            &status(9, &[(65536, 1), (4096, 0)]),
        ),
        done(NBD_REPLY_TYPE_NONE, 2, &[]),
        chunk(
            0,
            NBD_REPLY_TYPE_BLOCK_STATUS,
            3,
            &status(9, &[(126976, 0)]),
        ),
        done(NBD_REPLY_TYPE_BLOCK_STATUS, 3, &status(7, &[(4096, 1)])),
    ]);
    let dirty = "qemu:dirty-bitmap:bitmap0";
    // Asked for 256 KiB, answered for 128 KiB.
    let got = client.block_status(0, 256 << 10, dirty).expect("status");
    assert_eq!(got, extents(&[(0, 65536, 0), (65536, 65536, 1)]));
    // 64 KiB..256 KiB takes two requests; the clean extents either side of the second merge.
    let got = client.extents(dirty, 65536, 192 << 10).expect("extents");
    assert_eq!(got, extents(&[(65536, 65536, 1), (131072, 131072, 0)]));
    let requests = written(&output.borrow()).requests;
    assert_eq!(
        requests,
        [
            request(NBD_CMD_BLOCK_STATUS, 1, 0, 256 << 10),
            request(NBD_CMD_BLOCK_STATUS, 2, 65536, 192 << 10),
            request(NBD_CMD_BLOCK_STATUS, 3, 135168, 126976),
        ]
    );
}

#[test]
fn a_last_extent_past_the_request_is_cut_at_its_end() {
    let (mut client, _) = connected(&[
        chunk(
            0,
            NBD_REPLY_TYPE_BLOCK_STATUS,
            1,
            &status(7, &[(4096, 0), (1 << 19, 3)]),
        ),
        done(NBD_REPLY_TYPE_BLOCK_STATUS, 1, &status(9, &[(8192, 0)])),
    ]);
    let got = client
        .block_status(0, 8192, "base:allocation")
        .expect("status");
    assert_eq!(got, extents(&[(0, 4096, 0), (4096, 4096, 3)]));
}

#[test]
fn block_status_is_cut_at_the_export_end() {
    let (mut client, output) = connected(&[
        chunk(0, NBD_REPLY_TYPE_BLOCK_STATUS, 1, &status(7, &[(4096, 0)])),
        done(NBD_REPLY_TYPE_BLOCK_STATUS, 1, &status(9, &[(4096, 0)])),
    ]);
    client
        .block_status(SIZE - 4096, u64::MAX, "base:allocation")
        .expect("status");
    assert_eq!(
        written(&output.borrow()).requests,
        [request(NBD_CMD_BLOCK_STATUS, 1, SIZE - 4096, 4096)]
    );
}

/// A block status request for 64 KiB at `SIZE - 64 KiB` answered by `replies`.
fn status_at_the_end(replies: &[Vec<u8>]) -> Result<Vec<Extent>, NbdError> {
    let (mut client, _) = connected(replies);
    client.block_status(SIZE - 65536, 65536, "base:allocation")
}

#[test]
fn damaged_block_status_replies_are_protocol_errors() {
    let other = |cookie| {
        chunk(
            0,
            NBD_REPLY_TYPE_BLOCK_STATUS,
            cookie,
            &status(9, &[(512, 0)]),
        )
    };
    let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
        // Extents past the export's end.
        (
            vec![
                other(1),
                done(NBD_REPLY_TYPE_BLOCK_STATUS, 1, &status(7, &[(131072, 0)])),
            ],
            "past the export's end",
        ),
        // Extents after ones that already cover the request.
        (
            vec![
                other(1),
                done(
                    NBD_REPLY_TYPE_BLOCK_STATUS,
                    1,
                    &status(7, &[(65536, 0), (512, 0)]),
                ),
            ],
            "already reach the request's end",
        ),
        // An empty extent.
        (
            vec![
                other(1),
                done(NBD_REPLY_TYPE_BLOCK_STATUS, 1, &status(7, &[(0, 0)])),
            ],
            "length 0",
        ),
        // No extents at all.
        (
            vec![
                other(1),
                done(NBD_REPLY_TYPE_BLOCK_STATUS, 1, &status(7, &[])),
            ],
            "chunk type 5 with a payload of 4 bytes",
        ),
        // A context that was not selected.
        (
            vec![
                other(1),
                done(NBD_REPLY_TYPE_BLOCK_STATUS, 1, &status(8, &[(512, 0)])),
            ],
            "context id 8",
        ),
        // The same context twice.
        (vec![other(1), other(1)], "already answered"),
        // A context missing.
        (
            vec![done(
                NBD_REPLY_TYPE_BLOCK_STATUS,
                1,
                &status(7, &[(512, 0)]),
            )],
            "1 of 2",
        ),
        // A wrong cookie.
        (vec![other(2)], "cookie 2"),
        // A read's chunk.
        (
            vec![done(NBD_REPLY_TYPE_OFFSET_HOLE, 1, &hole(0, 512))],
            "chunk type 2",
        ),
        // A simple reply without error.
        (vec![simple(0, 1)], "simple reply without error"),
        // NONE that does not end the reply.
        (
            vec![chunk(0, NBD_REPLY_TYPE_NONE, 1, &[])],
            "without NBD_REPLY_FLAG_DONE",
        ),
        // A bad magic.
        (vec![vec![0x66, 0x8e, 0x33, 0xee]], "reply magic 0x668e33ee"),
        // An error offset outside the request.
        (
            vec![done(NBD_REPLY_TYPE_ERROR_OFFSET, 1, &error(5, "", Some(0)))],
            "outside the request",
        ),
        // An error chunk whose message runs past its payload.
        (
            vec![done(NBD_REPLY_TYPE_ERROR, 1, &[0, 0, 0, 5, 0, 9, b'x'])],
            "needs 9 more bytes",
        ),
        // An error chunk with error value 0.
        (
            vec![done(NBD_REPLY_TYPE_ERROR, 1, &error(0, "", None))],
            "error value 0",
        ),
    ];
    for (replies, what) in cases {
        assert_protocol(status_at_the_end(&replies), what);
    }
}

#[test]
fn an_oversized_block_status_chunk_is_refused_before_it_is_read() {
    let mut header = chunk(0, NBD_REPLY_TYPE_BLOCK_STATUS, 1, &[]);
    header[16..20].copy_from_slice(&(MAX_BLOCK_STATUS_CHUNK_LEN + 8).to_be_bytes());
    // Nothing follows: reading the payload would be an I/O error, not a protocol error.
    assert_protocol(status_at_the_end(&[header]), "payload of 8388620 bytes");
}

/// A read of 8 KiB at 0 answered by `replies`.
fn read_8k(replies: &[Vec<u8>]) -> Result<Vec<u8>, NbdError> {
    let (mut client, _) = connected(replies);
    let mut buf = vec![0u8; 8192];
    client.read(0, &mut buf).map(|()| buf)
}

#[test]
fn damaged_read_replies_are_protocol_errors() {
    let half = pattern(4096, 4);
    let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
        // A data chunk longer than the read: refused before its data is read (none follows).
        (
            vec![{
                let mut header = chunk(0, NBD_REPLY_TYPE_OFFSET_DATA, 1, &[]);
                header[16..20].copy_from_slice(&(8192u32 + 9).to_be_bytes());
                header
            }],
            "payload of 8201 bytes",
        ),
        // Overlapping chunks.
        (
            vec![
                chunk(0, NBD_REPLY_TYPE_OFFSET_DATA, 1, &data(0, &half)),
                done(NBD_REPLY_TYPE_OFFSET_HOLE, 1, &hole(4095, 4097)),
            ],
            "overlaps",
        ),
        // A chunk past the read's end.
        (
            vec![done(NBD_REPLY_TYPE_OFFSET_DATA, 1, &data(8000, &half))],
            "outside the read",
        ),
        // Success with a byte missing.
        (
            vec![
                chunk(0, NBD_REPLY_TYPE_OFFSET_DATA, 1, &data(0, &half)),
                done(NBD_REPLY_TYPE_OFFSET_HOLE, 1, &hole(4096, 4095)),
            ],
            "without byte 8191",
        ),
        (vec![done(NBD_REPLY_TYPE_NONE, 1, &[])], "without byte 0"),
        // An empty hole, and a hole chunk of the wrong length.
        (
            vec![done(NBD_REPLY_TYPE_OFFSET_HOLE, 1, &hole(0, 0))],
            "length 0",
        ),
        (
            vec![done(NBD_REPLY_TYPE_OFFSET_HOLE, 1, &[0; 13])],
            "payload of 13 bytes",
        ),
        // A block status chunk, an unknown chunk type.
        (
            vec![done(
                NBD_REPLY_TYPE_BLOCK_STATUS,
                1,
                &status(7, &[(512, 0)]),
            )],
            "chunk type 5",
        ),
        (vec![done(77, 1, &[])], "chunk type 77"),
        // A wrong cookie on a later chunk.
        (
            vec![
                chunk(0, NBD_REPLY_TYPE_OFFSET_DATA, 1, &data(0, &half)),
                done(NBD_REPLY_TYPE_OFFSET_HOLE, 9, &hole(4096, 4096)),
            ],
            "cookie 9",
        ),
        // A simple reply after a chunk.
        (
            vec![
                chunk(0, NBD_REPLY_TYPE_OFFSET_DATA, 1, &data(0, &half)),
                simple(0, 1),
            ],
            "simple reply among",
        ),
        // A data chunk with no data.
        (
            vec![done(NBD_REPLY_TYPE_OFFSET_DATA, 1, &data(0, &[]))],
            "payload of 8 bytes",
        ),
    ];
    for (replies, what) in cases {
        assert_protocol(read_8k(&replies), what);
    }
}

#[test]
fn after_a_protocol_error_the_session_is_over() {
    let (mut client, output) = connected(&[
        done(NBD_REPLY_TYPE_NONE, 2, &[]),
        done(NBD_REPLY_TYPE_NONE, 2, &[]),
    ]);
    let mut buf = vec![0u8; 512];
    assert_protocol(client.read(0, &mut buf), "cookie 2");
    let err = client.read(0, &mut buf).expect_err("broken");
    assert!(
        matches!(&err, NbdError::Io(e) if e.kind() == io::ErrorKind::NotConnected),
        "{err}"
    );
    let err = client
        .block_status(0, 512, "base:allocation")
        .expect_err("broken");
    assert!(err.ends_session(), "{err}");
    drop(client);
    let requests = written(&output.borrow()).requests;
    assert_eq!(
        requests.len(),
        1,
        "no request after the error, no NBD_CMD_DISC"
    );
}

#[test]
fn dropping_and_closing_send_nbd_cmd_disc() {
    let (client, output) = connected(&[]);
    drop(client);
    let disc = request(NBD_CMD_DISC, 1, 0, 0);
    assert_eq!(written(&output.borrow()).requests, [disc]);
    let (client, output) = connected(&[]);
    client.close().expect("close");
    assert_eq!(written(&output.borrow()).requests, [disc]);
}

/// Found by the fuzz target: `extents`' own checks must end the session like the others.
#[test]
fn extents_ending_off_the_minimum_block_size_end_the_session() {
    let mut input = handshake_with(SIZE, Some(&SELECTED), [4096, 4096, 32 << 20]);
    input.extend(chunk(
        0,
        NBD_REPLY_TYPE_BLOCK_STATUS,
        1,
        &status(9, &[(4096, 0)]),
    ));
    input.extend(done(
        NBD_REPLY_TYPE_BLOCK_STATUS,
        1,
        &status(7, &[(4096 + 512, 0)]),
    ));
    let (stream, _) = memory(input);
    let mut client = NbdClient::handshake(stream, "", &CONTEXTS).expect("handshake");
    let result = client.extents("base:allocation", 0, SIZE);
    assert_protocol(result, "not a multiple of the minimum block size 4096");
    let err = client
        .read(0, &mut [0u8; 4096])
        .expect_err("the session is over");
    assert!(
        matches!(&err, NbdError::Io(e) if e.kind() == io::ErrorKind::NotConnected),
        "{err}"
    );
}
