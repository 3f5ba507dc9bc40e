//! [`NbdClient`]: one NBD session over any byte stream, one command at a time
//! (spec/FORMAT.md §22).
//!
//! The handshake asks for structured replies, selects the caller's metadata contexts and enters
//! the export with `NBD_OPT_GO`; after that, [`NbdClient::read`] and
//! [`NbdClient::block_status`] each send one request and read its whole reply before returning,
//! so the stream is always between replies when they return. An I/O or protocol error leaves
//! it somewhere inside one, so it ends the session: every later call fails without touching
//! the stream, and dropping the client closes it without `NBD_CMD_DISC`.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::coverage::Coverage;
use super::error::{bad_request, protocol, NbdError};
use super::wire::{
    check_chunk_length, client_flags, decode_block_status, decode_error_chunk, decode_greeting,
    decode_offset_hole, decode_option_reply, decode_option_reply_header, encode_option, go_data,
    meta_context_data, option_name, read_reply_header, rep_error_name, BlockSize, ChunkHeader,
    Extent, Info, OptionReply, ReplyHeader, Request, GREETING_LEN, MAX_BLOCK_STATUS_LEN,
    MAX_CHUNKS_PER_REPLY, MAX_READ_LEN, NBD_CMD_BLOCK_STATUS, NBD_CMD_DISC, NBD_CMD_READ,
    NBD_INFO_BLOCK_SIZE, NBD_OPT_ABORT, NBD_OPT_GO, NBD_OPT_SET_META_CONTEXT,
    NBD_OPT_STRUCTURED_REPLY, NBD_REPLY_TYPE_NONE, NBD_REPLY_TYPE_OFFSET_DATA,
    NBD_REPLY_TYPE_OFFSET_HOLE, NBD_REP_ERR_UNSUP, OPTION_REPLY_HEADER_LEN,
};

/// How long one read or write of the socket may block before the session fails
/// ([`NbdClient::connect_unix`]): a hung server must not hang the helper.
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// Most extents [`NbdClient::extents`] returns (after merging neighbours with equal flags).
pub const MAX_EXTENTS_PER_CALL: usize = 1 << 20;

/// A metadata context the server selected, and the id its block status chunks carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContext {
    /// The name asked for (`base:allocation`, `qemu:dirty-bitmap:NAME`).
    pub name: String,
    /// The server's id for it in this session.
    pub id: u32,
}

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between replies: commands may be sent.
    Open,
    /// An I/O or protocol error left the stream inside a reply.
    Broken,
    /// `NBD_CMD_DISC` was sent.
    Closed,
}

/// What the export is, from `NBD_OPT_GO`'s replies.
#[derive(Debug, Clone, Copy)]
struct Export {
    size: u64,
    transmission_flags: u16,
    block_size: BlockSize,
}

/// A client session with an NBD server, in the transmission phase.
pub struct NbdClient<S: Read + Write = UnixStream> {
    stream: S,
    export: Export,
    contexts: Vec<MetaContext>,
    next_cookie: u64,
    state: State,
}

impl<S: Read + Write> fmt::Debug for NbdClient<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbdClient")
            .field("export", &self.export)
            .field("contexts", &self.contexts)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl NbdClient<UnixStream> {
    /// Connects to the server listening on the Unix socket `path` (qemu-nbd's `-k`, libvirt's
    /// pull-mode backup socket) and runs the handshake: see [`NbdClient::handshake`]. Reads and
    /// writes of the socket time out after [`IO_TIMEOUT`].
    pub fn connect_unix(
        path: impl AsRef<Path>,
        export_name: &str,
        contexts: &[&str],
    ) -> Result<Self, NbdError> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Self::handshake(stream, export_name, contexts)
    }
}

impl<S: Read + Write> NbdClient<S> {
    /// Runs the fixed newstyle handshake on `stream`: structured replies, then (when `contexts`
    /// is not empty) `NBD_OPT_SET_META_CONTEXT` with those names, then `NBD_OPT_GO` for
    /// `export_name` (`""` is the server's default export) asking for its block sizes.
    ///
    /// A context the server does not select is not an error: ask [`NbdClient::has_context`].
    /// When the server refuses an option, the client sends `NBD_OPT_ABORT` before returning.
    /// Names the NBD spec does not allow (over 4096 bytes, with a NUL, an empty or repeated
    /// context, more than 16 contexts) are refused before anything is read or sent.
    pub fn handshake(
        mut stream: S,
        export_name: &str,
        contexts: &[&str],
    ) -> Result<Self, NbdError> {
        let meta = meta_context_data(export_name, contexts)?;
        let go = go_data(export_name, &[NBD_INFO_BLOCK_SIZE])?;
        let mut greeting = [0u8; GREETING_LEN];
        stream.read_exact(&mut greeting)?;
        let handshake_flags = decode_greeting(&greeting)?;
        stream.write_all(&client_flags(handshake_flags).to_be_bytes())?;
        match negotiate(&mut stream, contexts, &meta, &go) {
            Ok((contexts, export)) => Ok(NbdClient {
                stream,
                export,
                contexts,
                next_cookie: 1,
                state: State::Open,
            }),
            Err(err) => {
                if !err.ends_session() {
                    // Best effort: the server learns the client is leaving; the error is the
                    // refusal either way.
                    let _ = send_option(&mut stream, NBD_OPT_ABORT, &[]);
                }
                Err(err)
            }
        }
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.export.size
    }

    /// The export's `NBD_FLAG_*` transmission flags.
    pub fn transmission_flags(&self) -> u16 {
        self.export.transmission_flags
    }

    /// The server's size constraints ([`BlockSize::DEFAULT`] when it sent none), which every
    /// request obeys.
    pub fn block_size(&self) -> BlockSize {
        self.export.block_size
    }

    /// The metadata contexts the server selected.
    pub fn contexts(&self) -> &[MetaContext] {
        &self.contexts
    }

    /// True when the server selected the context `name`.
    pub fn has_context(&self, name: &str) -> bool {
        self.context_id(name).is_some()
    }

    /// The server's id of the selected context `name`.
    pub fn context_id(&self, name: &str) -> Option<u32> {
        self.contexts.iter().find(|c| c.name == name).map(|c| c.id)
    }

    /// Reads `buf.len()` bytes at `offset`, holes as zeros, in commands of at most 32 MiB (or
    /// the server's maximum payload).
    ///
    /// The range must lie inside the export and be aligned to the minimum block size (its end
    /// may be the export's end). Every byte must be covered exactly once by the reply's chunks.
    /// After an error `buf` holds an unspecified mix of old and new bytes.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        let len = u64::try_from(buf.len()).map_err(|_| bad_request("read too long"))?;
        self.check_range(offset, len)?;
        let piece = self.read_piece_len()?;
        let mut at = offset;
        for part in buf.chunks_mut(piece) {
            self.guarded(|c| c.read_command(at, part))?;
            at += u64::try_from(part.len()).map_err(|_| bad_request("read too long"))?;
        }
        Ok(())
    }

    /// The extents of `context` from `offset` on, as one `NBD_CMD_BLOCK_STATUS` answers them:
    /// consecutive, starting at `offset`, covering at least one byte and at most `len` bytes —
    /// possibly fewer (the server may answer for less; ask again from the end, or use
    /// [`NbdClient::extents`]). The range asked is cut at the export's end and at 2 GiB.
    pub fn block_status(
        &mut self,
        offset: u64,
        len: u64,
        context: &str,
    ) -> Result<Vec<Extent>, NbdError> {
        let id = self
            .context_id(context)
            .ok_or_else(|| bad_request(format!("metadata context {context:?} was not selected")))?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let length = self.block_status_len(offset, len)?;
        self.guarded(|c| c.block_status_command(offset, length, id))
    }

    /// The extents of `context` covering exactly `offset..offset + len` (inside the export),
    /// asking as many times as the server needs; neighbours with equal flags are merged.
    /// Refuses to return more than [`MAX_EXTENTS_PER_CALL`] extents (ask for a shorter range).
    pub fn extents(
        &mut self,
        context: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Extent>, NbdError> {
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= self.export.size)
            .ok_or_else(|| {
                bad_request(format!(
                    "extents of {len} bytes at {offset}: past the export's end {}",
                    self.export.size
                ))
            })?;
        self.guarded(|c| c.extents_until(context, offset, end))
    }

    /// The loop of [`NbdClient::extents`]: block status from `offset` until `end`.
    fn extents_until(
        &mut self,
        context: &str,
        offset: u64,
        end: u64,
    ) -> Result<Vec<Extent>, NbdError> {
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        while at < end {
            let batch = self.block_status(at, end - at, context)?;
            let reached = batch
                .iter()
                .try_fold(at, |pos, e| pos.checked_add(e.length))
                .filter(|&reached| reached > at)
                .ok_or_else(|| protocol(format!("block status at {at} made no progress")))?;
            for extent in batch {
                push_merged(&mut out, extent)?;
            }
            at = reached;
            let minimum = self.export.block_size.minimum;
            if at < end && !at.is_multiple_of(u64::from(minimum)) {
                return Err(protocol(format!(
                    "block status extents end at {at}, not a multiple of the minimum block size \
                     {minimum}"
                )));
            }
        }
        Ok(out)
    }

    /// Ends the session with `NBD_CMD_DISC` (dropping the client does the same, ignoring
    /// errors).
    pub fn close(mut self) -> Result<(), NbdError> {
        self.usable()?;
        self.state = State::Closed;
        self.send_request(NBD_CMD_DISC, 0, 0).map(drop)
    }

    /// Fails when the session can no longer be used.
    fn usable(&self) -> Result<(), NbdError> {
        match self.state {
            State::Open => Ok(()),
            State::Broken => Err(NbdError::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "the NBD session ended after an earlier error",
            ))),
            State::Closed => Err(NbdError::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "the NBD session was closed",
            ))),
        }
    }

    /// Runs one command, marking the session broken when its error leaves the stream inside a
    /// reply.
    fn guarded<T>(
        &mut self,
        command: impl FnOnce(&mut Self) -> Result<T, NbdError>,
    ) -> Result<T, NbdError> {
        self.usable()?;
        let result = command(self);
        if result.as_ref().is_err_and(NbdError::ends_session) {
            self.state = State::Broken;
        }
        result
    }

    /// Checks that `len` bytes at `offset` lie inside the export and are aligned to its minimum
    /// block size (the end may instead be the export's end).
    fn check_range(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        let size = self.export.size;
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= size)
            .ok_or_else(|| {
                bad_request(format!(
                    "{len} bytes at {offset}: past the export's end {size}"
                ))
            })?;
        let min = u64::from(self.export.block_size.minimum);
        if !offset.is_multiple_of(min) || (!len.is_multiple_of(min) && end != size) {
            return Err(bad_request(format!(
                "{len} bytes at {offset}: not aligned to the minimum block size {min}"
            )));
        }
        Ok(())
    }

    /// The longest read command: the server's maximum payload, at most 32 MiB, rounded down to
    /// its minimum block size.
    fn read_piece_len(&self) -> Result<usize, NbdError> {
        let sizes = self.export.block_size;
        let max = sizes.maximum_payload.min(MAX_READ_LEN);
        let piece = (max - max % sizes.minimum).max(sizes.minimum);
        usize::try_from(piece).map_err(|_| bad_request("read piece does not fit in memory"))
    }

    /// The length one block status request asks for: `len` cut at the export's end and at
    /// [`MAX_BLOCK_STATUS_LEN`], then down to the minimum block size unless it reaches the end.
    fn block_status_len(&self, offset: u64, len: u64) -> Result<u32, NbdError> {
        let size = self.export.size;
        let left = size
            .checked_sub(offset)
            .filter(|&left| left > 0)
            .ok_or_else(|| bad_request(format!("block status at {offset}: past the end {size}")))?;
        let min = u64::from(self.export.block_size.minimum);
        let mut n = len.min(left).min(u64::from(MAX_BLOCK_STATUS_LEN));
        if n != left {
            n -= n % min;
        }
        if !offset.is_multiple_of(min) || n == 0 {
            return Err(bad_request(format!(
                "block status of {len} bytes at {offset}: not aligned to the minimum block size \
                 {min}"
            )));
        }
        u32::try_from(n).map_err(|_| bad_request("block status range too long"))
    }

    /// Sends one request with the next cookie.
    fn send_request(
        &mut self,
        command: u16,
        offset: u64,
        length: u32,
    ) -> Result<Request, NbdError> {
        let request = Request {
            flags: 0,
            command,
            cookie: self.next_cookie,
            offset,
            length,
        };
        self.next_cookie = self.next_cookie.wrapping_add(1);
        self.stream.write_all(&request.encode())?;
        self.stream.flush()?;
        Ok(request)
    }

    /// One `NBD_CMD_READ` of `buf.len()` (≤ 32 MiB) bytes at `offset`, and its reply.
    fn read_command(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        let length = u32::try_from(buf.len()).map_err(|_| bad_request("read piece too long"))?;
        let request = self.send_request(NBD_CMD_READ, offset, length)?;
        let mut coverage = Coverage::new(offset, u64::from(length));
        let end = read_reply(&mut self.stream, &request, |stream, header| {
            read_content(stream, header, offset, buf, &mut coverage)
        })?;
        match end {
            ReplyEnd::Simple => Ok(self.stream.read_exact(buf)?),
            ReplyEnd::Chunks => match coverage.first_gap() {
                None => Ok(()),
                Some(gap) => Err(protocol(format!(
                    "the reply to NBD_CMD_READ of {length} bytes at {offset} succeeded without \
                     byte {gap}"
                ))),
            },
        }
    }

    /// One `NBD_CMD_BLOCK_STATUS` of `length` bytes at `offset`, and its reply: one chunk per
    /// selected context; returns the extents of the context `wanted`.
    fn block_status_command(
        &mut self,
        offset: u64,
        length: u32,
        wanted: u32,
    ) -> Result<Vec<Extent>, NbdError> {
        let request = self.send_request(NBD_CMD_BLOCK_STATUS, offset, length)?;
        let size = self.export.size;
        let contexts = &self.contexts;
        let mut answered: Vec<u32> = Vec::with_capacity(contexts.len());
        let mut extents = None;
        let end = read_reply(&mut self.stream, &request, |stream, header| {
            let payload = read_payload(stream, header.length)?;
            let chunk = decode_block_status(&payload, offset, length, size)?;
            let id = chunk.context_id;
            if !contexts.iter().any(|c| c.id == id) || answered.contains(&id) {
                return Err(protocol(format!(
                    "block status for context id {id}, which was not selected or already answered"
                )));
            }
            answered.push(id);
            if id == wanted {
                extents = Some(chunk.extents);
            }
            Ok(())
        })?;
        if end == ReplyEnd::Simple {
            return Err(protocol(
                "a simple reply without error to NBD_CMD_BLOCK_STATUS",
            ));
        }
        if answered.len() != contexts.len() {
            return Err(protocol(format!(
                "block status answered for {} of {} contexts",
                answered.len(),
                contexts.len()
            )));
        }
        extents.ok_or_else(|| protocol("block status without the context asked for"))
    }
}

impl<S: Read + Write> Drop for NbdClient<S> {
    fn drop(&mut self) {
        if self.state == State::Open {
            self.state = State::Closed;
            // Best effort: the server closes the connection on NBD_CMD_DISC, or notices EOF.
            let _ = self.send_request(NBD_CMD_DISC, 0, 0);
        }
    }
}

/// The handshake after the greeting: structured replies, contexts, `NBD_OPT_GO`.
fn negotiate<S: Read + Write>(
    stream: &mut S,
    wanted: &[&str],
    meta: &[u8],
    go: &[u8],
) -> Result<(Vec<MetaContext>, Export), NbdError> {
    structured_replies(stream)?;
    let contexts = if wanted.is_empty() {
        Vec::new()
    } else {
        select_contexts(stream, wanted, meta)?
    };
    let export = go_export(stream, go)?;
    Ok((contexts, export))
}

/// `NBD_OPT_STRUCTURED_REPLY`: required, since reads and block status need it.
fn structured_replies<S: Read + Write>(stream: &mut S) -> Result<(), NbdError> {
    send_option(stream, NBD_OPT_STRUCTURED_REPLY, &[])?;
    match read_option_reply(stream, NBD_OPT_STRUCTURED_REPLY)? {
        OptionReply::Ack => Ok(()),
        other => Err(option_failed(
            NBD_OPT_STRUCTURED_REPLY,
            other,
            "structured replies (NBD_OPT_STRUCTURED_REPLY)",
        )),
    }
}

/// `NBD_OPT_SET_META_CONTEXT`: the contexts the server selected, each one asked for, once.
fn select_contexts<S: Read + Write>(
    stream: &mut S,
    wanted: &[&str],
    data: &[u8],
) -> Result<Vec<MetaContext>, NbdError> {
    send_option(stream, NBD_OPT_SET_META_CONTEXT, data)?;
    let mut selected: Vec<MetaContext> = Vec::new();
    loop {
        match read_option_reply(stream, NBD_OPT_SET_META_CONTEXT)? {
            OptionReply::MetaContext { id, name } => {
                if !wanted.contains(&name.as_str())
                    || selected.iter().any(|c| c.name == name || c.id == id)
                {
                    return Err(protocol(format!(
                        "selected context {name:?} (id {id}), which was not asked for or is \
                         selected twice"
                    )));
                }
                selected.push(MetaContext { name, id });
            }
            OptionReply::Ack => return Ok(selected),
            other => {
                return Err(option_failed(
                    NBD_OPT_SET_META_CONTEXT,
                    other,
                    "metadata contexts (NBD_OPT_SET_META_CONTEXT)",
                ))
            }
        }
    }
}

/// `NBD_OPT_GO`: the export's size and flags (`NBD_INFO_EXPORT`, required) and block sizes.
fn go_export<S: Read + Write>(stream: &mut S, data: &[u8]) -> Result<Export, NbdError> {
    send_option(stream, NBD_OPT_GO, data)?;
    let mut export = None;
    let mut block_size = BlockSize::DEFAULT;
    loop {
        match read_option_reply(stream, NBD_OPT_GO)? {
            OptionReply::Info(Info::Export {
                size,
                transmission_flags,
            }) => export = Some((size, transmission_flags)),
            OptionReply::Info(Info::BlockSize(sizes)) => block_size = sizes,
            OptionReply::Info(Info::Other(_)) => {}
            OptionReply::Ack => {
                let (size, transmission_flags) = export
                    .ok_or_else(|| protocol("NBD_OPT_GO succeeded without NBD_INFO_EXPORT"))?;
                return Ok(Export {
                    size,
                    transmission_flags,
                    block_size,
                });
            }
            other => return Err(option_failed(NBD_OPT_GO, other, "NBD_OPT_GO")),
        }
    }
}

/// The error for a reply that ends an option unsuccessfully.
fn option_failed(option: u32, reply: OptionReply, feature: &str) -> NbdError {
    match reply {
        OptionReply::Error {
            reply_type: NBD_REP_ERR_UNSUP,
            ..
        } => NbdError::Unsupported(feature.to_owned()),
        OptionReply::Error {
            reply_type,
            message,
        } => NbdError::Refused {
            option: option_name(option),
            error: rep_error_name(reply_type),
            message,
        },
        other => protocol(format!(
            "unexpected reply {other:?} to {}",
            option_name(option)
        )),
    }
}

fn send_option(stream: &mut impl Write, option: u32, data: &[u8]) -> Result<(), NbdError> {
    stream.write_all(&encode_option(option, data)?)?;
    stream.flush()?;
    Ok(())
}

/// Reads one reply to `option`: its header (length capped before the payload is allocated),
/// then its payload.
fn read_option_reply(stream: &mut impl Read, option: u32) -> Result<OptionReply, NbdError> {
    let mut header = [0u8; OPTION_REPLY_HEADER_LEN];
    stream.read_exact(&mut header)?;
    let header = decode_option_reply_header(&header)?;
    if header.option != option {
        return Err(protocol(format!(
            "a reply to option {} while {} was pending",
            header.option,
            option_name(option)
        )));
    }
    let payload = read_payload(stream, header.length)?;
    decode_option_reply(header.reply_type, &payload)
}

/// Reads a payload whose length was already checked against its limit.
fn read_payload(stream: &mut impl Read, length: u32) -> Result<Vec<u8>, NbdError> {
    let len = usize::try_from(length).map_err(|_| protocol("payload does not fit in memory"))?;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok(payload)
}

/// How a reply ended successfully.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyEnd {
    /// Structured chunks up to one with `NBD_REPLY_FLAG_DONE`, none an error.
    Chunks,
    /// A simple reply without error; a read's data follows it, unread.
    Simple,
}

/// Reads the reply to `request` chunk by chunk up to `NBD_REPLY_FLAG_DONE`.
///
/// Each chunk's cookie and length are checked first; error chunks are read and the first one
/// returned as [`NbdError::Server`] once the reply is complete (so the session stays usable);
/// every other chunk but `NBD_REPLY_TYPE_NONE` goes to `content`, with the stream at its
/// payload, which `content` must consume.
fn read_reply<S: Read>(
    stream: &mut S,
    request: &Request,
    mut content: impl FnMut(&mut S, &ChunkHeader) -> Result<(), NbdError>,
) -> Result<ReplyEnd, NbdError> {
    let mut failure = None;
    let mut chunks: u32 = 0;
    loop {
        let header = match read_reply_header(stream)? {
            ReplyHeader::Simple { error, cookie } => {
                check_cookie(cookie, request)?;
                return simple_reply(error, chunks);
            }
            ReplyHeader::Chunk(header) => header,
        };
        check_cookie(header.cookie, request)?;
        chunks += 1;
        if chunks > MAX_CHUNKS_PER_REPLY {
            return Err(protocol(format!(
                "more than {MAX_CHUNKS_PER_REPLY} chunks in one reply"
            )));
        }
        check_chunk_length(&header, request.command, request.length)?;
        if header.is_error() {
            let err = read_error_chunk(stream, &header, request)?;
            failure.get_or_insert(err);
        } else if header.kind != NBD_REPLY_TYPE_NONE {
            content(stream, &header)?;
        }
        if header.is_done() {
            return match failure {
                Some(err) => Err(err),
                None => Ok(ReplyEnd::Chunks),
            };
        }
    }
}

/// The outcome of a simple reply with `error`, after `chunks` structured chunks.
fn simple_reply(error: u32, chunks: u32) -> Result<ReplyEnd, NbdError> {
    if chunks > 0 {
        return Err(protocol(
            "a simple reply among the chunks of a structured reply",
        ));
    }
    if error != 0 {
        return Err(NbdError::Server {
            errno: error,
            message: String::new(),
        });
    }
    Ok(ReplyEnd::Simple)
}

fn check_cookie(cookie: u64, request: &Request) -> Result<(), NbdError> {
    if cookie == request.cookie {
        Ok(())
    } else {
        Err(protocol(format!(
            "a reply with cookie {cookie} while only {} was pending",
            request.cookie
        )))
    }
}

/// Reads an error chunk's payload; an `NBD_REPLY_TYPE_ERROR_OFFSET` must point inside the
/// request.
fn read_error_chunk(
    stream: &mut impl Read,
    header: &ChunkHeader,
    request: &Request,
) -> Result<NbdError, NbdError> {
    let chunk = decode_error_chunk(header.kind, &read_payload(stream, header.length)?)?;
    if let Some(at) = chunk.offset {
        let inside = at
            .checked_sub(request.offset)
            .is_some_and(|d| d < u64::from(request.length));
        if !inside {
            return Err(protocol(format!(
                "error at offset {at}, outside the request of {} bytes at {}",
                request.length, request.offset
            )));
        }
    }
    Ok(NbdError::Server {
        errno: chunk.errno,
        message: chunk.message,
    })
}

/// Reads one content chunk of a read at `offset` into `buf`: data straight from the stream,
/// holes as zeros, each range recorded in `coverage` first.
fn read_content(
    stream: &mut impl Read,
    header: &ChunkHeader,
    offset: u64,
    buf: &mut [u8],
    coverage: &mut Coverage,
) -> Result<(), NbdError> {
    match header.kind {
        NBD_REPLY_TYPE_OFFSET_DATA => {
            let mut at = [0u8; 8];
            stream.read_exact(&mut at)?;
            let at = u64::from_be_bytes(at);
            let len = header
                .length
                .checked_sub(8)
                .ok_or_else(|| protocol("data chunk shorter than its offset"))?;
            coverage.insert(at, u64::from(len))?;
            stream.read_exact(part_of(buf, offset, at, len)?)?;
        }
        NBD_REPLY_TYPE_OFFSET_HOLE => {
            let mut payload = [0u8; 12];
            stream.read_exact(&mut payload)?;
            let hole = decode_offset_hole(&payload)?;
            coverage.insert(hole.offset, u64::from(hole.length))?;
            part_of(buf, offset, hole.offset, hole.length)?.fill(0);
        }
        kind => {
            return Err(protocol(format!(
                "chunk type {kind} in reply to NBD_CMD_READ"
            )))
        }
    }
    Ok(())
}

/// The part of `buf` (the read at `offset`) holding `len` bytes at `at`.
fn part_of(buf: &mut [u8], offset: u64, at: u64, len: u32) -> Result<&mut [u8], NbdError> {
    let start = at
        .checked_sub(offset)
        .and_then(|start| usize::try_from(start).ok());
    let end = start.and_then(|start| start.checked_add(usize::try_from(len).ok()?));
    start
        .zip(end)
        .and_then(|(start, end)| buf.get_mut(start..end))
        .ok_or_else(|| protocol(format!("a chunk of {len} bytes at {at} outside the read")))
}

/// Appends `extent` to `out`, merged into the last extent when they touch and have equal flags.
fn push_merged(out: &mut Vec<Extent>, extent: Extent) -> Result<(), NbdError> {
    if let Some(last) = out.last_mut() {
        if last.flags == extent.flags && last.offset.checked_add(last.length) == Some(extent.offset)
        {
            last.length += extent.length;
            return Ok(());
        }
    }
    if out.len() >= MAX_EXTENTS_PER_CALL {
        return Err(bad_request(format!(
            "more than {MAX_EXTENTS_PER_CALL} extents before {}: ask for a shorter range",
            extent.offset
        )));
    }
    out.push(extent);
    Ok(())
}
