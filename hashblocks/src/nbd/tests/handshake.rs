//! The handshake: what the client sends, what it accepts, and how refusals and damaged option
//! replies are reported.

use super::*;

/// Runs a handshake asking for [`CONTEXTS`] against `input`.
fn handshake_against(input: Vec<u8>) -> (Result<NbdClient<Memory>, NbdError>, Written) {
    let (stream, output) = memory(input);
    let result = NbdClient::handshake(stream, "", &CONTEXTS);
    let sent = written(&output.borrow());
    (result, sent)
}

#[test]
fn handshake_asks_for_structured_replies_contexts_and_block_sizes() {
    let (result, sent) = handshake_against(handshake());
    let client = result.expect("handshake");
    assert_eq!(client.size(), SIZE);
    assert_eq!(
        client.transmission_flags(),
        NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY
    );
    assert_eq!(client.context_id("base:allocation"), Some(7));
    assert_eq!(client.context_id("qemu:dirty-bitmap:bitmap0"), Some(9));
    assert_eq!(client.block_size().maximum_payload, 32 << 20);

    assert_eq!(sent.flags, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    let mut meta = vec![0, 0, 0, 0, 0, 0, 0, 2];
    for name in CONTEXTS {
        meta.extend_from_slice(&u32::try_from(name.len()).expect("short").to_be_bytes());
        meta.extend_from_slice(name.as_bytes());
    }
    let go = vec![0, 0, 0, 0, 0, 1, 0, 3];
    assert_eq!(
        sent.options,
        [
            (NBD_OPT_STRUCTURED_REPLY, vec![]),
            (NBD_OPT_SET_META_CONTEXT, meta),
            (NBD_OPT_GO, go),
        ]
    );
    assert!(sent.requests.is_empty());
}

#[test]
fn no_zeroes_is_only_asked_for_when_offered() {
    let mut input = greeting(NBD_FLAG_FIXED_NEWSTYLE);
    input.extend_from_slice(&handshake()[GREETING_LEN..]);
    let (result, sent) = handshake_against(input);
    result.expect("handshake");
    assert_eq!(sent.flags, NBD_FLAG_C_FIXED_NEWSTYLE);
}

#[test]
fn an_export_name_goes_into_both_options() {
    let (stream, output) = memory(handshake());
    NbdClient::handshake(stream, "sda", &CONTEXTS).expect("handshake");
    let sent = written(&output.borrow());
    assert!(sent.options[1].1.starts_with(b"\0\0\0\x03sda\0\0\0\x02"));
    assert_eq!(sent.options[2].1, b"\0\0\0\x03sda\0\x01\0\x03");
}

#[test]
fn without_contexts_no_meta_context_option_is_sent() {
    let (stream, output) = memory(handshake_with(SIZE, None, QEMU_BLOCK_SIZES));
    let client = NbdClient::handshake(stream, "", &[]).expect("handshake");
    assert!(client.contexts().is_empty());
    let options: Vec<u32> = written(&output.borrow())
        .options
        .iter()
        .map(|o| o.0)
        .collect();
    assert_eq!(options, [NBD_OPT_STRUCTURED_REPLY, NBD_OPT_GO]);
}

#[test]
fn a_context_the_server_does_not_select_is_not_available() {
    let input = handshake_with(SIZE, Some(&SELECTED[..1]), QEMU_BLOCK_SIZES);
    let (result, _) = handshake_against(input);
    let mut client = result.expect("handshake");
    assert!(client.has_context("base:allocation"));
    assert!(!client.has_context("qemu:dirty-bitmap:bitmap0"));
    let err = client
        .block_status(0, SIZE, "qemu:dirty-bitmap:bitmap0")
        .expect_err("not selected");
    assert!(matches!(err, NbdError::BadRequest(_)), "{err}");
}

#[test]
fn a_server_without_structured_replies_is_unsupported_and_told_goodbye() {
    let mut input = greeting(NBD_FLAG_FIXED_NEWSTYLE);
    input.extend(opt_reply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_UNSUP, &[]));
    let (result, sent) = handshake_against(input);
    let err = result.expect_err("no structured replies");
    assert!(
        matches!(&err, NbdError::Unsupported(what) if what.contains("structured")),
        "{err}"
    );
    let options: Vec<u32> = sent.options.iter().map(|o| o.0).collect();
    assert_eq!(options, [NBD_OPT_STRUCTURED_REPLY, NBD_OPT_ABORT]);
}

#[test]
fn a_server_without_meta_contexts_is_unsupported() {
    let mut input = greeting(NBD_FLAG_FIXED_NEWSTYLE);
    input.extend(opt_reply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[]));
    input.extend(opt_reply(NBD_OPT_SET_META_CONTEXT, NBD_REP_ERR_UNSUP, &[]));
    let (result, _) = handshake_against(input);
    let err = result.expect_err("no contexts");
    assert!(
        matches!(&err, NbdError::Unsupported(what) if what.contains("metadata")),
        "{err}"
    );
}

#[test]
fn old_and_unfixed_servers_are_unsupported() {
    let mut oldstyle = NBDMAGIC.to_be_bytes().to_vec();
    oldstyle.extend_from_slice(&CLISERV_MAGIC.to_be_bytes());
    oldstyle.extend_from_slice(&[0; 2]);
    for input in [oldstyle, greeting(NBD_FLAG_NO_ZEROES)] {
        let (result, sent) = handshake_against(input.clone());
        let err = result.expect_err("unsupported");
        assert!(matches!(err, NbdError::Unsupported(_)), "{err}");
        assert!(sent.options.is_empty());
    }
}

#[test]
fn a_wrong_greeting_is_not_an_nbd_server() {
    let mut input = greeting(NBD_FLAG_FIXED_NEWSTYLE);
    input[0] ^= 1;
    assert_protocol(handshake_against(input).0, "not an NBD server");
    let mut input = greeting(NBD_FLAG_FIXED_NEWSTYLE);
    input[8] ^= 1;
    assert_protocol(handshake_against(input).0, "neither IHAVEOPT");
}

#[test]
fn go_refusals_name_the_reply_and_keep_the_message() {
    let mut input = handshake_with(SIZE, Some(&SELECTED), QEMU_BLOCK_SIZES);
    let go_at = input.len() - 3 * OPTION_REPLY_HEADER_LEN - 12 - 14;
    input.truncate(go_at);
    input.extend(opt_reply(
        NBD_OPT_GO,
        NBD_REP_ERR_UNKNOWN,
        b"no export named sda",
    ));
    let (result, sent) = handshake_against(input);
    match result.expect_err("refused") {
        NbdError::Refused {
            option,
            error,
            message,
        } => {
            assert_eq!(option, "NBD_OPT_GO");
            assert!(error.starts_with("NBD_REP_ERR_UNKNOWN"));
            assert_eq!(message, "no export named sda");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sent.options.last().map(|o| o.0), Some(NBD_OPT_ABORT));
}

/// The handshake up to (not including) the replies to `NBD_OPT_GO`.
fn before_go() -> Vec<u8> {
    let mut input = greeting(NBD_FLAG_FIXED_NEWSTYLE);
    input.extend(opt_reply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[]));
    for (name, id) in SELECTED {
        let payload = meta_context(id, name);
        input.extend(opt_reply(
            NBD_OPT_SET_META_CONTEXT,
            NBD_REP_META_CONTEXT,
            &payload,
        ));
    }
    input.extend(opt_reply(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[]));
    input
}

#[test]
fn go_unsupported_and_go_without_export_info() {
    let mut input = before_go();
    input.extend(opt_reply(NBD_OPT_GO, NBD_REP_ERR_UNSUP, &[]));
    let err = handshake_against(input).0.expect_err("unsupported");
    assert!(matches!(err, NbdError::Unsupported(_)), "{err}");

    let mut input = before_go();
    input.extend(opt_reply(
        NBD_OPT_GO,
        NBD_REP_INFO,
        &info_block_size(QEMU_BLOCK_SIZES),
    ));
    input.extend(opt_reply(NBD_OPT_GO, NBD_REP_ACK, &[]));
    assert_protocol(handshake_against(input).0, "without NBD_INFO_EXPORT");
}

#[test]
fn unknown_information_is_ignored_and_default_block_sizes_apply() {
    let mut input = before_go();
    let mut name = NBD_INFO_NAME.to_be_bytes().to_vec();
    name.extend_from_slice(b"sda");
    input.extend(opt_reply(NBD_OPT_GO, NBD_REP_INFO, &name));
    input.extend(opt_reply(NBD_OPT_GO, NBD_REP_INFO, &[0, 77, 1, 2, 3]));
    input.extend(opt_reply(NBD_OPT_GO, NBD_REP_INFO, &info_export(SIZE, 1)));
    input.extend(opt_reply(NBD_OPT_GO, NBD_REP_ACK, &[]));
    let client = handshake_against(input).0.expect("handshake");
    assert_eq!(client.block_size(), BlockSize::DEFAULT);
}

#[test]
fn damaged_option_replies_are_protocol_errors() {
    let cases: [(Vec<u8>, &str); 8] = [
        // A wrong reply magic.
        (
            {
                let mut r = opt_reply(NBD_OPT_GO, NBD_REP_ACK, &[]);
                r[7] ^= 1;
                r
            },
            "option reply magic",
        ),
        // A reply to another option.
        (
            opt_reply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[]),
            "while NBD_OPT_GO",
        ),
        // NBD_INFO_EXPORT of the wrong length.
        (
            opt_reply(NBD_OPT_GO, NBD_REP_INFO, &info_export(SIZE, 1)[..11]),
            "NBD_INFO_EXPORT needs",
        ),
        // A minimum block size that is not a power of two.
        (
            opt_reply(
                NBD_OPT_GO,
                NBD_REP_INFO,
                &info_block_size([3, 4096, 1 << 20]),
            ),
            "not a power of two",
        ),
        // A maximum payload below the minimum block size.
        (
            opt_reply(
                NBD_OPT_GO,
                NBD_REP_INFO,
                &info_block_size([4096, 4096, 512]),
            ),
            "below the minimum",
        ),
        // An ACK with a payload.
        (opt_reply(NBD_OPT_GO, NBD_REP_ACK, &[0]), "trailing"),
        // An unexpected reply type.
        (
            opt_reply(NBD_OPT_GO, NBD_REP_SERVER, &[0; 4]),
            "unexpected reply",
        ),
        // A context reply to GO.
        (
            opt_reply(
                NBD_OPT_GO,
                NBD_REP_META_CONTEXT,
                &meta_context(1, "base:allocation"),
            ),
            "unexpected reply",
        ),
    ];
    for (reply, what) in cases {
        let mut input = before_go();
        input.extend(reply);
        assert_protocol(handshake_against(input).0, what);
    }
}

#[test]
fn an_oversized_option_reply_is_refused_before_it_is_read() {
    let mut input = before_go();
    let mut header = opt_reply(NBD_OPT_GO, NBD_REP_INFO, &[]);
    header[16..20].copy_from_slice(&(MAX_OPTION_REPLY_LEN + 1).to_be_bytes());
    // No payload follows: reading it would be an I/O error (EOF), not a protocol error.
    input.extend(header);
    assert_protocol(handshake_against(input).0, "limit 65536");
}

#[test]
fn contexts_not_asked_for_or_selected_twice_are_refused() {
    let bad: [&[(&str, u32)]; 3] = [
        &[("base:allocation", 1), ("qemu:dirty-bitmap:other", 2)],
        &[("base:allocation", 1), ("base:allocation", 2)],
        &[("base:allocation", 1), ("qemu:dirty-bitmap:bitmap0", 1)],
    ];
    for selected in bad {
        let input = handshake_with(SIZE, Some(selected), QEMU_BLOCK_SIZES);
        assert_protocol(handshake_against(input).0, "selected context");
    }
    let mut input = greeting(NBD_FLAG_FIXED_NEWSTYLE);
    input.extend(opt_reply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[]));
    let long = vec![b'a'; MAX_STRING_LEN + 1];
    let mut payload = 1u32.to_be_bytes().to_vec();
    payload.extend_from_slice(&long);
    input.extend(opt_reply(
        NBD_OPT_SET_META_CONTEXT,
        NBD_REP_META_CONTEXT,
        &payload,
    ));
    assert_protocol(handshake_against(input).0, "limit 4096");
}

#[test]
fn bad_names_are_refused_before_anything_is_sent() {
    let too_many: Vec<String> = (0..=MAX_META_CONTEXTS)
        .map(|i| format!("x-a:{i}"))
        .collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let long = "a".repeat(MAX_STRING_LEN + 1);
    let cases: [(&str, &[&str]); 5] = [
        ("nul\0name", &CONTEXTS),
        (&long, &CONTEXTS),
        ("", &too_many),
        ("", &["base:allocation", "base:allocation"]),
        ("", &[""]),
    ];
    for (export, contexts) in cases {
        let (stream, output) = memory(handshake());
        let err = NbdClient::handshake(stream, export, contexts).expect_err("bad request");
        assert!(matches!(err, NbdError::BadRequest(_)), "{err}");
        assert!(output.borrow().is_empty());
    }
}

#[test]
fn a_server_that_hangs_up_is_an_io_error() {
    let input = handshake();
    for cut in [0, 5, GREETING_LEN + 3, input.len() - 1] {
        let (result, _) = handshake_against(input[..cut].to_vec());
        let err = result.expect_err("cut short");
        assert!(
            matches!(&err, NbdError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof),
            "cut at {cut}: {err}"
        );
    }
}
