//! Whole sessions over a Unix socket, with a fake server on its own thread that reads what the
//! client sends and answers it: data in 256 KiB stripes (data, hole, data, …), block status
//! for at most 1 MiB per request, only `base:allocation` selected.

use super::*;
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;

/// The fake export: 4 MiB.
const EXPORT: u64 = 4 << 20;
/// Stripes of data and holes.
const STRIPE: u64 = 256 << 10;
/// The most one block status answer covers.
const STATUS_LIMIT: u64 = 1 << 20;

/// True when the stripe holding `at` is a hole.
fn is_hole(at: u64) -> bool {
    (at / STRIPE) % 2 == 1
}

/// The export's byte at `at`.
fn byte_at(at: u64) -> u8 {
    if is_hole(at) {
        0
    } else {
        u8::try_from(at % 251).expect("small")
    }
}

/// The pieces of `offset..offset + len` cut at stripe boundaries.
fn stripes(offset: u64, len: u64) -> Vec<(u64, u64)> {
    let end = offset + len;
    let mut out = Vec::new();
    let mut at = offset;
    while at < end {
        let next = ((at / STRIPE + 1) * STRIPE).min(end);
        out.push((at, next - at));
        at = next;
    }
    out
}

/// The server's end of a connection.
struct Fake {
    stream: UnixStream,
}

impl Fake {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn take<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.stream.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Reads an option: (option, data).
    fn option(&mut self) -> io::Result<(u32, Vec<u8>)> {
        let head: [u8; 16] = self.take()?;
        assert_eq!(head[..8], IHAVEOPT.to_be_bytes());
        let option = be_u32(&head[8..12]);
        let mut data = vec![0u8; usize::try_from(be_u32(&head[12..16])).expect("len")];
        self.stream.read_exact(&mut data)?;
        Ok((option, data))
    }

    /// The handshake: only `base:allocation` of the contexts asked for is selected, as id 1.
    fn handshake(&mut self) -> io::Result<()> {
        self.send(&greeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES))?;
        let flags = u32::from_be_bytes(self.take()?);
        assert_eq!(flags, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
        loop {
            match self.option()? {
                (NBD_OPT_STRUCTURED_REPLY, data) => {
                    assert!(data.is_empty());
                    self.send(&opt_reply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[]))?;
                }
                (NBD_OPT_SET_META_CONTEXT, data) => {
                    if contains(&data, BASE_ALLOCATION.as_bytes()) {
                        let reply = meta_context(1, BASE_ALLOCATION);
                        let rep = NBD_REP_META_CONTEXT;
                        self.send(&opt_reply(NBD_OPT_SET_META_CONTEXT, rep, &reply))?;
                    }
                    self.send(&opt_reply(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[]))?;
                }
                (NBD_OPT_GO, _) => {
                    let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY;
                    self.send(&opt_reply(
                        NBD_OPT_GO,
                        NBD_REP_INFO,
                        &info_export(EXPORT, flags),
                    ))?;
                    let sizes = info_block_size(QEMU_BLOCK_SIZES);
                    self.send(&opt_reply(NBD_OPT_GO, NBD_REP_INFO, &sizes))?;
                    return self.send(&opt_reply(NBD_OPT_GO, NBD_REP_ACK, &[]));
                }
                (other, _) => panic!("unexpected option {other}"),
            }
        }
    }

    /// Answers requests until `NBD_CMD_DISC`; returns how many block status requests came.
    fn serve(&mut self) -> io::Result<usize> {
        let mut status_requests = 0;
        loop {
            let r = parse_request(&self.take::<REQUEST_LEN>()?);
            match r.command {
                NBD_CMD_READ => self.answer_read(&r)?,
                NBD_CMD_BLOCK_STATUS => {
                    status_requests += 1;
                    self.answer_status(&r)?;
                }
                NBD_CMD_DISC => return Ok(status_requests),
                other => panic!("unexpected command {other}"),
            }
        }
    }

    fn answer_read(&mut self, r: &Request) -> io::Result<()> {
        for (at, len) in stripes(r.offset, u64::from(r.length)) {
            let len32 = u32::try_from(len).expect("stripe");
            if is_hole(at) {
                self.send(&chunk(
                    0,
                    NBD_REPLY_TYPE_OFFSET_HOLE,
                    r.cookie,
                    &hole(at, len32),
                ))?;
            } else {
                let bytes: Vec<u8> = (at..at + len).map(byte_at).collect();
                let payload = data(at, &bytes);
                self.send(&chunk(0, NBD_REPLY_TYPE_OFFSET_DATA, r.cookie, &payload))?;
            }
        }
        self.send(&done(NBD_REPLY_TYPE_NONE, r.cookie, &[]))
    }

    /// Answers for at most [`STATUS_LIMIT`] bytes: less than asked.
    fn answer_status(&mut self, r: &Request) -> io::Result<()> {
        let len = u64::from(r.length).min(STATUS_LIMIT);
        let extents: Vec<(u32, u32)> = stripes(r.offset, len)
            .into_iter()
            .map(|(at, len)| {
                let flags = if is_hole(at) {
                    NBD_STATE_HOLE | NBD_STATE_ZERO
                } else {
                    0
                };
                (u32::try_from(len).expect("stripe"), flags)
            })
            .collect();
        self.send(&done(
            NBD_REPLY_TYPE_BLOCK_STATUS,
            r.cookie,
            &status(1, &extents),
        ))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Listens on a socket in a temporary directory and runs `script` for the first connection.
fn listen<T: Send + 'static>(
    script: impl FnOnce(&mut Fake) -> io::Result<T> + Send + 'static,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    thread::JoinHandle<io::Result<T>>,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nbd.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept()?;
        script(&mut Fake { stream })
    });
    (dir, path, server)
}

#[test]
fn a_session_over_a_unix_socket() {
    let (_dir, path, server) = listen(|fake| {
        fake.handshake()?;
        fake.serve()
    });
    let mut client = NbdClient::connect_unix(&path, "", &CONTEXTS).expect("connect");
    assert_eq!(client.size(), EXPORT);
    assert!(client.has_context(BASE_ALLOCATION));
    assert!(!client.has_context(CONTEXTS[1]), "the server has no bitmap");

    let offset = (1 << 20) + (200 << 10);
    let mut buf = vec![0xeeu8; 128 << 10];
    client.read(offset, &mut buf).expect("read");
    let want: Vec<u8> = (offset..offset + (128 << 10)).map(byte_at).collect();
    assert!(buf == want, "the read crosses a data/hole boundary");

    let first = client
        .block_status(0, EXPORT, BASE_ALLOCATION)
        .expect("block status");
    let covered: u64 = first.iter().map(|e| e.length).sum();
    assert_eq!(
        covered, STATUS_LIMIT,
        "the server answers for less than asked"
    );

    let all = client.extents(BASE_ALLOCATION, 0, EXPORT).expect("extents");
    assert_eq!(all.len(), 16);
    for (i, e) in (0u64..).zip(&all) {
        assert_eq!((e.offset, e.length), (i * STRIPE, STRIPE));
        assert_eq!(e.flags != 0, is_hole(e.offset));
    }
    drop(client);
    let status_requests = server.join().expect("server thread").expect("server");
    assert_eq!(status_requests, 1 + 4, "one, then four of at most 1 MiB");
}

#[test]
fn a_refused_handshake_ends_with_nbd_opt_abort() {
    let (_dir, path, server) = listen(|fake| {
        fake.send(&greeting(NBD_FLAG_FIXED_NEWSTYLE))?;
        let _flags: [u8; 4] = fake.take()?;
        let (option, _) = fake.option()?;
        assert_eq!(option, NBD_OPT_STRUCTURED_REPLY);
        let message = b"structured replies are off";
        fake.send(&opt_reply(option, NBD_REP_ERR_POLICY, message))?;
        let (option, data) = fake.option()?;
        let mut rest = Vec::new();
        fake.stream.read_to_end(&mut rest)?;
        Ok((option, data, rest))
    });
    let err = NbdClient::connect_unix(&path, "", &[]).expect_err("refused");
    match &err {
        NbdError::Refused {
            option,
            error,
            message,
        } => {
            assert_eq!(*option, "NBD_OPT_STRUCTURED_REPLY");
            assert_eq!(*error, "NBD_REP_ERR_POLICY");
            assert_eq!(message, "structured replies are off");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "the NBD server refused NBD_OPT_STRUCTURED_REPLY with NBD_REP_ERR_POLICY: structured \
         replies are off"
    );
    let (option, data, rest) = server.join().expect("server thread").expect("server");
    assert_eq!((option, data.len(), rest.len()), (NBD_OPT_ABORT, 0, 0));
}

#[test]
fn connecting_to_no_server_is_an_io_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let err = NbdClient::connect_unix(dir.path().join("none.sock"), "", &[]).expect_err("none");
    assert!(matches!(err, NbdError::Io(_)), "{err}");
}
