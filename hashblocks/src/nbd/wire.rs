//! The bytes of the NBD subset the client speaks (spec/FORMAT.md §22; the protocol itself is
//! NetworkBlockDevice/nbd `doc/proto.md`): constants under the NBD spec's names, encoders for
//! what the client sends, and pure decoders for what the server sends.
//!
//! The decoders take bytes already read and never panic; anything the NBD spec forbids (or
//! that this client refuses to trust) is an [`NbdError::Protocol`]. Lengths come first: a
//! header decoder checks the length it announces against the limits below, so the client
//! allocates a payload only after it is known to be small, and a read's data goes straight
//! into the caller's buffer. All integers are big-endian.

use std::io::Read;

use super::error::{bad_request, protocol, NbdError};

/// The server's first 8 bytes, ASCII `NBDMAGIC` (also known as `INIT_PASSWD`).
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// ASCII `IHAVEOPT`: the newstyle greeting's second magic, and the start of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// `cliserv_magic`: the oldstyle greeting's second magic (refused as unsupported).
pub const CLISERV_MAGIC: u64 = 0x0000_4202_8186_1253;
/// The magic of an option reply (`NBD_REP_MAGIC`).
pub const NBD_REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The magic of a transmission request.
pub const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
/// The magic of a simple reply.
pub const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// The magic of a structured reply chunk.
pub const NBD_STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: the server speaks fixed newstyle negotiation (required by this client).
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server may omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle negotiation.
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: no zero padding (sent only when the server offers [`NBD_FLAG_NO_ZEROES`]).
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;
/// Transmission flag: always set by a server.
pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;

/// Option: end the negotiation (sent when the client gives up after a refused option).
pub const NBD_OPT_ABORT: u32 = 2;
/// Option: choose the export and enter the transmission phase, with errors reported.
pub const NBD_OPT_GO: u32 = 7;
/// Option: use structured replies in the transmission phase.
pub const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
/// Option: select the metadata contexts `NBD_CMD_BLOCK_STATUS` reports.
pub const NBD_OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply: the option succeeded (and, for lists, the list is complete).
pub const NBD_REP_ACK: u32 = 1;
/// Option reply: a description of an export (not used by this client).
pub const NBD_REP_SERVER: u32 = 2;
/// Option reply: one piece of information about the export (`NBD_INFO_*`).
pub const NBD_REP_INFO: u32 = 3;
/// Option reply: one selected metadata context, its id and name.
pub const NBD_REP_META_CONTEXT: u32 = 4;
/// Bit 31 of an option reply type: the reply is an error.
pub const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
/// Option error: the server does not know the option.
pub const NBD_REP_ERR_UNSUP: u32 = NBD_REP_FLAG_ERROR | 1;
/// Option error: the server's policy forbids the option.
pub const NBD_REP_ERR_POLICY: u32 = NBD_REP_FLAG_ERROR | 2;
/// Option error: the option is invalid.
pub const NBD_REP_ERR_INVALID: u32 = NBD_REP_FLAG_ERROR | 3;
/// Option error: not supported on the server's platform.
pub const NBD_REP_ERR_PLATFORM: u32 = NBD_REP_FLAG_ERROR | 4;
/// Option error: TLS is required first.
pub const NBD_REP_ERR_TLS_REQD: u32 = NBD_REP_FLAG_ERROR | 5;
/// Option error: the export does not exist.
pub const NBD_REP_ERR_UNKNOWN: u32 = NBD_REP_FLAG_ERROR | 6;
/// Option error: the server is shutting down.
pub const NBD_REP_ERR_SHUTDOWN: u32 = NBD_REP_FLAG_ERROR | 7;
/// Option error: the client must request `NBD_INFO_BLOCK_SIZE`.
pub const NBD_REP_ERR_BLOCK_SIZE_REQD: u32 = NBD_REP_FLAG_ERROR | 8;
/// Option error: the request or reply is too large.
pub const NBD_REP_ERR_TOO_BIG: u32 = NBD_REP_FLAG_ERROR | 9;
/// Option error: extended headers are required (an experimental extension).
pub const NBD_REP_ERR_EXT_HEADER_REQD: u32 = NBD_REP_FLAG_ERROR | 10;

/// Information type: the export's size and transmission flags (mandatory before a GO's ACK).
pub const NBD_INFO_EXPORT: u16 = 0;
/// Information type: the export's canonical name (ignored).
pub const NBD_INFO_NAME: u16 = 1;
/// Information type: a description of the export (ignored).
pub const NBD_INFO_DESCRIPTION: u16 = 2;
/// Information type: the server's size constraints; requested by this client, which obeys them.
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

/// Command: read bytes of the export.
pub const NBD_CMD_READ: u16 = 0;
/// Command: end the session (no reply).
pub const NBD_CMD_DISC: u16 = 2;
/// Command: report metadata (allocation, dirtiness) of a range, per selected context.
pub const NBD_CMD_BLOCK_STATUS: u16 = 7;

/// Structured reply flag: the last chunk of the reply.
pub const NBD_REPLY_FLAG_DONE: u16 = 1 << 0;
/// Chunk type: no payload; ends a reply.
pub const NBD_REPLY_TYPE_NONE: u16 = 0;
/// Chunk type: an offset and that many bytes of data (`NBD_CMD_READ`).
pub const NBD_REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Chunk type: an offset and a length that read as zeros (`NBD_CMD_READ`).
pub const NBD_REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Chunk type: a context id and its extents (`NBD_CMD_BLOCK_STATUS`).
pub const NBD_REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Chunk type: an error value and message.
pub const NBD_REPLY_TYPE_ERROR: u16 = REPLY_TYPE_ERROR_BIT | 1;
/// Chunk type: an error value, message and the offset it concerns.
pub const NBD_REPLY_TYPE_ERROR_OFFSET: u16 = REPLY_TYPE_ERROR_BIT | 2;
/// Bit 15 of a chunk type: an error chunk (unknown ones are errors too, not damage).
pub const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;

/// `base:allocation` flag: the extent is a hole (not allocated).
pub const NBD_STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` flag: the extent reads as zeros.
pub const NBD_STATE_ZERO: u32 = 1 << 1;
/// `qemu:dirty-bitmap:NAME` flag (qemu's `docs/interop/nbd.txt`): the extent is dirty.
pub const NBD_STATE_DIRTY: u32 = 1 << 0;
/// The NBD spec's allocation context.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The prefix of qemu's dirty-bitmap contexts; the bitmap's name follows.
pub const QEMU_DIRTY_BITMAP: &str = "qemu:dirty-bitmap:";

/// Longest string (export name, context name, message) in either direction, as the NBD spec
/// says.
pub const MAX_STRING_LEN: usize = 4096;
/// Most metadata contexts a client asks for.
pub const MAX_META_CONTEXTS: usize = 16;
/// Longest option reply payload accepted.
pub const MAX_OPTION_REPLY_LEN: u32 = 64 << 10;
/// Longest `NBD_CMD_READ` the client sends: the NBD spec's default maximum payload, 32 MiB.
pub const MAX_READ_LEN: u32 = 32 << 20;
/// Longest range one `NBD_CMD_BLOCK_STATUS` asks about (2 GiB, a multiple of every block size).
pub const MAX_BLOCK_STATUS_LEN: u32 = 1 << 31;
/// Most extents in one block status chunk: the NBD spec's "SHOULD NOT send more than 2^20".
pub const MAX_EXTENTS_PER_CHUNK: u32 = 1 << 20;
/// Longest block status chunk payload: a context id and [`MAX_EXTENTS_PER_CHUNK`] extents.
pub const MAX_BLOCK_STATUS_CHUNK_LEN: u32 = 4 + 8 * MAX_EXTENTS_PER_CHUNK;
/// Longest error chunk payload (an error value, a message of up to 4096 bytes, an offset, and
/// room for the fields of error types this client does not know).
pub const MAX_ERROR_CHUNK_LEN: u32 = 64 << 10;
/// Most chunks in one structured reply: a 32 MiB read in 512-byte pieces is 65,536.
pub const MAX_CHUNKS_PER_REPLY: u32 = 1 << 17;

/// Bytes of the server's greeting the client reads: two magics and the handshake flags.
pub const GREETING_LEN: usize = 18;
/// Bytes of an option reply header: magic, option, reply type, length.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Bytes of a request: magic, flags, type, cookie, offset, length.
pub const REQUEST_LEN: usize = 28;
/// Bytes of a simple reply: magic, error, cookie.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Bytes of a structured reply chunk header: magic, flags, type, cookie, length.
pub const CHUNK_HEADER_LEN: usize = 20;

/// A cursor over bytes already read that never reads past their end.
struct Cursor<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Cursor { bytes, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], NbdError> {
        if self.bytes.len() < n {
            return Err(protocol(format!(
                "{} needs {n} more bytes, has {}",
                self.what,
                self.bytes.len()
            )));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], NbdError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, NbdError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, NbdError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, NbdError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    fn finish(self) -> Result<(), NbdError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(protocol(format!(
                "{} has {} trailing bytes",
                self.what,
                self.bytes.len()
            )))
        }
    }
}

/// Decodes the server's greeting and returns its handshake flags.
///
/// An oldstyle server, or a newstyle one without fixed newstyle negotiation, is
/// [`NbdError::Unsupported`]; other bytes are not an NBD server ([`NbdError::Protocol`]).
pub fn decode_greeting(bytes: &[u8; GREETING_LEN]) -> Result<u16, NbdError> {
    let mut c = Cursor::new(bytes, "the greeting");
    let magic = c.u64()?;
    if magic != NBDMAGIC {
        return Err(protocol(format!(
            "greeting magic {magic:#018x} is not NBDMAGIC: not an NBD server"
        )));
    }
    match c.u64()? {
        IHAVEOPT => {}
        CLISERV_MAGIC => {
            return Err(NbdError::Unsupported(
                "newstyle negotiation (it greeted oldstyle)".into(),
            ))
        }
        other => {
            return Err(protocol(format!(
                "greeting's second magic {other:#018x} is neither IHAVEOPT nor oldstyle"
            )))
        }
    }
    let flags = c.u16()?;
    c.finish()?;
    if flags & NBD_FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::Unsupported(
            "fixed newstyle negotiation (NBD_FLAG_FIXED_NEWSTYLE)".into(),
        ));
    }
    Ok(flags)
}

/// The client flags answering `handshake_flags`: fixed newstyle, and no zeroes when offered.
pub fn client_flags(handshake_flags: u16) -> u32 {
    let mut flags = NBD_FLAG_C_FIXED_NEWSTYLE;
    if handshake_flags & NBD_FLAG_NO_ZEROES != 0 {
        flags |= NBD_FLAG_C_NO_ZEROES;
    }
    flags
}

/// The length of a string the client sends, after checking it is one the NBD spec allows
/// (at most [`MAX_STRING_LEN`] bytes, no NUL).
fn string_len(what: &str, s: &str) -> Result<u32, NbdError> {
    if s.len() > MAX_STRING_LEN || s.contains('\0') {
        return Err(bad_request(format!(
            "{what} {s:?} is longer than {MAX_STRING_LEN} bytes or holds a NUL"
        )));
    }
    u32::try_from(s.len()).map_err(|_| bad_request(format!("{what} is too long")))
}

/// An option as sent: `IHAVEOPT`, the option, the data's length, the data.
pub fn encode_option(option: u32, data: &[u8]) -> Result<Vec<u8>, NbdError> {
    let len = u32::try_from(data.len())
        .map_err(|_| bad_request(format!("option data of {} bytes", data.len())))?;
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

/// The data of `NBD_OPT_GO`: the export name, then the information requests.
pub fn go_data(export_name: &str, info_requests: &[u16]) -> Result<Vec<u8>, NbdError> {
    let name_len = string_len("export name", export_name)?;
    let count = u16::try_from(info_requests.len())
        .map_err(|_| bad_request("too many information requests"))?;
    let mut out = Vec::new();
    out.extend_from_slice(&name_len.to_be_bytes());
    out.extend_from_slice(export_name.as_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    for info in info_requests {
        out.extend_from_slice(&info.to_be_bytes());
    }
    Ok(out)
}

/// The data of `NBD_OPT_SET_META_CONTEXT`: the export name, then the queries (context names).
///
/// At most [`MAX_META_CONTEXTS`] distinct, non-empty names.
pub fn meta_context_data(export_name: &str, queries: &[&str]) -> Result<Vec<u8>, NbdError> {
    if queries.len() > MAX_META_CONTEXTS {
        return Err(bad_request(format!(
            "{} metadata contexts (at most {MAX_META_CONTEXTS})",
            queries.len()
        )));
    }
    let name_len = string_len("export name", export_name)?;
    let count = u32::try_from(queries.len()).map_err(|_| bad_request("too many contexts"))?;
    let mut out = Vec::new();
    out.extend_from_slice(&name_len.to_be_bytes());
    out.extend_from_slice(export_name.as_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    for (i, query) in queries.iter().enumerate() {
        if query.is_empty()
            || queries
                .get(..i)
                .is_some_and(|before| before.contains(query))
        {
            return Err(bad_request(format!(
                "metadata context {query:?} is empty or repeated"
            )));
        }
        out.extend_from_slice(&string_len("metadata context", query)?.to_be_bytes());
        out.extend_from_slice(query.as_bytes());
    }
    Ok(out)
}

/// The header of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option this replies to.
    pub option: u32,
    /// `NBD_REP_*`.
    pub reply_type: u32,
    /// Bytes of payload that follow (at most [`MAX_OPTION_REPLY_LEN`]).
    pub length: u32,
}

/// Decodes an option reply header, refusing a wrong magic or a length over
/// [`MAX_OPTION_REPLY_LEN`] before anything is allocated for the payload.
pub fn decode_option_reply_header(
    bytes: &[u8; OPTION_REPLY_HEADER_LEN],
) -> Result<OptionReplyHeader, NbdError> {
    let mut c = Cursor::new(bytes, "an option reply header");
    let magic = c.u64()?;
    if magic != NBD_REP_MAGIC {
        return Err(protocol(format!(
            "option reply magic {magic:#018x} is not {NBD_REP_MAGIC:#018x}"
        )));
    }
    let header = OptionReplyHeader {
        option: c.u32()?,
        reply_type: c.u32()?,
        length: c.u32()?,
    };
    c.finish()?;
    if header.length > MAX_OPTION_REPLY_LEN {
        return Err(protocol(format!(
            "option reply of {} bytes to {} (limit {MAX_OPTION_REPLY_LEN})",
            header.length,
            option_name(header.option)
        )));
    }
    Ok(header)
}

/// The server's size constraints (`NBD_INFO_BLOCK_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Every request's offset and length are multiples of this (a power of two, ≤ 64 KiB),
    /// except a length that ends at the export's end.
    pub minimum: u32,
    /// The size at which requests are efficient.
    pub preferred: u32,
    /// The longest read the server accepts (at least `minimum`).
    pub maximum_payload: u32,
}

impl BlockSize {
    /// The NBD spec's defaults, for a server that does not send `NBD_INFO_BLOCK_SIZE`.
    pub const DEFAULT: BlockSize = BlockSize {
        minimum: 1,
        preferred: 4096,
        maximum_payload: MAX_READ_LEN,
    };
}

/// One piece of `NBD_REP_INFO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    /// `NBD_INFO_EXPORT`.
    Export {
        /// The export's size in bytes.
        size: u64,
        /// `NBD_FLAG_*` transmission flags.
        transmission_flags: u16,
    },
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize(BlockSize),
    /// Any other information type (`NBD_INFO_NAME`, …): ignored, as the spec requires.
    Other(u16),
}

/// An option reply, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionReply {
    /// `NBD_REP_ACK`.
    Ack,
    /// `NBD_REP_INFO`.
    Info(Info),
    /// `NBD_REP_META_CONTEXT`: a selected context.
    MetaContext {
        /// The id block status chunks will carry.
        id: u32,
        /// The context's name (valid UTF-8, at most [`MAX_STRING_LEN`] bytes).
        name: String,
    },
    /// An `NBD_REP_ERR_*` (any type with bit 31 set).
    Error {
        /// The reply type.
        reply_type: u32,
        /// The server's message (lossy UTF-8, cut at [`MAX_STRING_LEN`] bytes).
        message: String,
    },
    /// Another reply type (`NBD_REP_SERVER`, an unknown one): never expected by this client.
    Other(u32),
}

/// Decodes an option reply's payload.
pub fn decode_option_reply(reply_type: u32, payload: &[u8]) -> Result<OptionReply, NbdError> {
    match reply_type {
        NBD_REP_ACK => {
            Cursor::new(payload, "NBD_REP_ACK").finish()?;
            Ok(OptionReply::Ack)
        }
        NBD_REP_INFO => decode_info(payload).map(OptionReply::Info),
        NBD_REP_META_CONTEXT => decode_meta_context(payload),
        t if t & NBD_REP_FLAG_ERROR != 0 => Ok(OptionReply::Error {
            reply_type: t,
            message: lossy_message(payload),
        }),
        other => Ok(OptionReply::Other(other)),
    }
}

fn decode_info(payload: &[u8]) -> Result<Info, NbdError> {
    let mut c = Cursor::new(payload, "NBD_REP_INFO");
    let info = match c.u16()? {
        NBD_INFO_EXPORT => {
            c.what = "NBD_INFO_EXPORT";
            Info::Export {
                size: c.u64()?,
                transmission_flags: c.u16()?,
            }
        }
        NBD_INFO_BLOCK_SIZE => {
            c.what = "NBD_INFO_BLOCK_SIZE";
            let sizes = BlockSize {
                minimum: c.u32()?,
                preferred: c.u32()?,
                maximum_payload: c.u32()?,
            };
            check_block_size(sizes)?;
            Info::BlockSize(sizes)
        }
        other => {
            c.rest();
            Info::Other(other)
        }
    };
    c.finish()?;
    Ok(info)
}

/// The constraints the client relies on: a power-of-two minimum of at most 64 KiB, and a
/// maximum payload no smaller than it.
fn check_block_size(sizes: BlockSize) -> Result<(), NbdError> {
    if !sizes.minimum.is_power_of_two() || sizes.minimum > (64 << 10) {
        return Err(protocol(format!(
            "minimum block size {} is not a power of two up to 64 KiB",
            sizes.minimum
        )));
    }
    if sizes.maximum_payload < sizes.minimum {
        return Err(protocol(format!(
            "maximum payload {} is below the minimum block size {}",
            sizes.maximum_payload, sizes.minimum
        )));
    }
    Ok(())
}

fn decode_meta_context(payload: &[u8]) -> Result<OptionReply, NbdError> {
    let mut c = Cursor::new(payload, "NBD_REP_META_CONTEXT");
    let id = c.u32()?;
    let name = c.rest();
    if name.len() > MAX_STRING_LEN {
        return Err(protocol(format!(
            "metadata context name of {} bytes (limit {MAX_STRING_LEN})",
            name.len()
        )));
    }
    let name = std::str::from_utf8(name)
        .map_err(|_| protocol("metadata context name is not UTF-8"))?
        .to_owned();
    Ok(OptionReply::MetaContext { id, name })
}

/// A message for the user: lossy UTF-8, cut at [`MAX_STRING_LEN`] bytes.
fn lossy_message(bytes: &[u8]) -> String {
    let cut = bytes.get(..MAX_STRING_LEN).unwrap_or(bytes);
    String::from_utf8_lossy(cut).into_owned()
}

/// The NBD spec's name of an option this client sends.
pub fn option_name(option: u32) -> &'static str {
    match option {
        NBD_OPT_ABORT => "NBD_OPT_ABORT",
        NBD_OPT_GO => "NBD_OPT_GO",
        NBD_OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        NBD_OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        _ => "an option this client never sends",
    }
}

/// The NBD spec's name of an option error reply.
pub fn rep_error_name(reply_type: u32) -> &'static str {
    match reply_type {
        NBD_REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP",
        NBD_REP_ERR_POLICY => "NBD_REP_ERR_POLICY",
        NBD_REP_ERR_INVALID => "NBD_REP_ERR_INVALID",
        NBD_REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM",
        NBD_REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD",
        NBD_REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN (no such export)",
        NBD_REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
        NBD_REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        NBD_REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG",
        NBD_REP_ERR_EXT_HEADER_REQD => "NBD_REP_ERR_EXT_HEADER_REQD",
        _ => "an unknown error reply",
    }
}

/// The NBD spec's name of a command this client sends.
pub fn command_name(command: u16) -> &'static str {
    match command {
        NBD_CMD_READ => "NBD_CMD_READ",
        NBD_CMD_DISC => "NBD_CMD_DISC",
        NBD_CMD_BLOCK_STATUS => "NBD_CMD_BLOCK_STATUS",
        _ => "a command this client never sends",
    }
}

/// A transmission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// `NBD_CMD_FLAG_*` (none are used by this client).
    pub flags: u16,
    /// `NBD_CMD_*`.
    pub command: u16,
    /// The opaque value every reply to this request carries.
    pub cookie: u64,
    /// Offset in the export.
    pub offset: u64,
    /// Length of the range.
    pub length: u32,
}

impl Request {
    /// The request's bytes.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let bytes = NBD_REQUEST_MAGIC
            .to_be_bytes()
            .into_iter()
            .chain(self.flags.to_be_bytes())
            .chain(self.command.to_be_bytes())
            .chain(self.cookie.to_be_bytes())
            .chain(self.offset.to_be_bytes())
            .chain(self.length.to_be_bytes());
        let mut out = [0u8; REQUEST_LEN];
        for (slot, byte) in out.iter_mut().zip(bytes) {
            *slot = byte;
        }
        out
    }
}

/// The header of a transmission reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply (no payload follows, except after a successful read that was answered
    /// without structured replies).
    Simple {
        /// 0, or an NBD error value.
        error: u32,
        /// The request's cookie.
        cookie: u64,
    },
    /// A structured reply chunk; its payload follows.
    Chunk(ChunkHeader),
}

/// The header of a structured reply chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// `NBD_REPLY_FLAG_*`.
    pub flags: u16,
    /// `NBD_REPLY_TYPE_*`.
    pub kind: u16,
    /// The request's cookie.
    pub cookie: u64,
    /// Bytes of payload that follow.
    pub length: u32,
}

impl ChunkHeader {
    /// True for the reply's last chunk.
    pub fn is_done(&self) -> bool {
        self.flags & NBD_REPLY_FLAG_DONE != 0
    }

    /// True for an error chunk (bit 15 of the type), known or not.
    pub fn is_error(&self) -> bool {
        self.kind & REPLY_TYPE_ERROR_BIT != 0
    }
}

/// The length of the reply header that starts with `magic`.
pub fn reply_header_len(magic: [u8; 4]) -> Result<usize, NbdError> {
    match u32::from_be_bytes(magic) {
        NBD_SIMPLE_REPLY_MAGIC => Ok(SIMPLE_REPLY_LEN),
        NBD_STRUCTURED_REPLY_MAGIC => Ok(CHUNK_HEADER_LEN),
        other => Err(protocol(format!(
            "reply magic {other:#010x} is neither a simple nor a structured reply"
        ))),
    }
}

/// Decodes a whole reply header (simple or structured, magic included).
pub fn decode_reply_header(bytes: &[u8]) -> Result<ReplyHeader, NbdError> {
    let mut c = Cursor::new(bytes, "a reply header");
    let header = match reply_header_len(c.array()?)? {
        SIMPLE_REPLY_LEN => ReplyHeader::Simple {
            error: c.u32()?,
            cookie: c.u64()?,
        },
        _ => ReplyHeader::Chunk(ChunkHeader {
            flags: c.u16()?,
            kind: c.u16()?,
            cookie: c.u64()?,
            length: c.u32()?,
        }),
    };
    c.finish()?;
    Ok(header)
}

/// Reads one reply header from `r`: the magic, then exactly the rest of its header.
pub fn read_reply_header(r: &mut impl Read) -> Result<ReplyHeader, NbdError> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    let len = reply_header_len(magic)?;
    let mut buf = [0u8; CHUNK_HEADER_LEN];
    let header = buf
        .get_mut(..len)
        .ok_or_else(|| protocol("reply header longer than its buffer"))?;
    let (head, rest) = header.split_at_mut(magic.len());
    head.copy_from_slice(&magic);
    r.read_exact(rest)?;
    decode_reply_header(header)
}

/// Checks a chunk's header against the command it answers before its payload is read: the
/// type must be one that command may receive, and the length must fit the type (for
/// `NBD_REPLY_TYPE_OFFSET_DATA`, no more than the `request_len` bytes asked for).
pub fn check_chunk_length(
    header: &ChunkHeader,
    command: u16,
    request_len: u32,
) -> Result<(), NbdError> {
    let len = header.length;
    let ok = match header.kind {
        NBD_REPLY_TYPE_NONE => {
            if !header.is_done() {
                return Err(protocol("NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE"));
            }
            len == 0
        }
        NBD_REPLY_TYPE_OFFSET_DATA if command == NBD_CMD_READ => {
            len >= 9 && u64::from(len) <= 8 + u64::from(request_len)
        }
        NBD_REPLY_TYPE_OFFSET_HOLE if command == NBD_CMD_READ => len == 12,
        NBD_REPLY_TYPE_BLOCK_STATUS if command == NBD_CMD_BLOCK_STATUS => {
            (12..=MAX_BLOCK_STATUS_CHUNK_LEN).contains(&len) && (len - 4).is_multiple_of(8)
        }
        NBD_REPLY_TYPE_ERROR_OFFSET => (14..=MAX_ERROR_CHUNK_LEN).contains(&len),
        kind if kind & REPLY_TYPE_ERROR_BIT != 0 => (6..=MAX_ERROR_CHUNK_LEN).contains(&len),
        kind => {
            return Err(protocol(format!(
                "chunk type {kind} in reply to {}",
                command_name(command)
            )))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(protocol(format!(
            "chunk type {} with a payload of {len} bytes in reply to {} of {request_len} bytes",
            header.kind,
            command_name(command)
        )))
    }
}

/// `NBD_REPLY_TYPE_OFFSET_HOLE`'s payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hole {
    /// Offset in the export.
    pub offset: u64,
    /// Bytes that read as zeros (not 0).
    pub length: u32,
}

/// Decodes an `NBD_REPLY_TYPE_OFFSET_HOLE` payload (exactly 12 bytes, a non-zero length).
pub fn decode_offset_hole(payload: &[u8]) -> Result<Hole, NbdError> {
    let mut c = Cursor::new(payload, "NBD_REPLY_TYPE_OFFSET_HOLE");
    let hole = Hole {
        offset: c.u64()?,
        length: c.u32()?,
    };
    c.finish()?;
    if hole.length == 0 {
        return Err(protocol("NBD_REPLY_TYPE_OFFSET_HOLE of length 0"));
    }
    Ok(hole)
}

/// An error chunk's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorChunk {
    /// The NBD error value (not 0).
    pub errno: u32,
    /// The server's message (lossy UTF-8).
    pub message: String,
    /// The offset the error concerns (`NBD_REPLY_TYPE_ERROR_OFFSET` only).
    pub offset: Option<u64>,
}

/// Decodes an error chunk: the error value, the message (at most [`MAX_STRING_LEN`] bytes)
/// and, for `NBD_REPLY_TYPE_ERROR_OFFSET`, the offset. Known types must have nothing else;
/// unknown error types may carry fields this client skips.
pub fn decode_error_chunk(kind: u16, payload: &[u8]) -> Result<ErrorChunk, NbdError> {
    let mut c = Cursor::new(payload, "an error chunk");
    let errno = c.u32()?;
    if errno == 0 {
        return Err(protocol("error chunk with error value 0"));
    }
    let message_len = usize::from(c.u16()?);
    if message_len > MAX_STRING_LEN {
        return Err(protocol(format!(
            "error message of {message_len} bytes (limit {MAX_STRING_LEN})"
        )));
    }
    let message = lossy_message(c.take(message_len)?);
    let offset = match kind {
        NBD_REPLY_TYPE_ERROR_OFFSET => Some(c.u64()?),
        NBD_REPLY_TYPE_ERROR => None,
        _ => {
            c.rest();
            None
        }
    };
    c.finish()?;
    Ok(ErrorChunk {
        errno,
        message,
        offset,
    })
}

/// A range of the export with the same metadata flags, in one context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the export.
    pub offset: u64,
    /// Length in bytes (not 0).
    pub length: u64,
    /// The context's flags (`NBD_STATE_HOLE`, `NBD_STATE_ZERO`, `NBD_STATE_DIRTY`, …).
    pub flags: u32,
}

/// `NBD_REPLY_TYPE_BLOCK_STATUS`'s payload, checked against its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockStatusChunk {
    /// The context the extents belong to.
    pub context_id: u32,
    /// Consecutive extents from the request's offset, inside the request (at least one).
    pub extents: Vec<Extent>,
}

/// Decodes a block status payload answering a request for `length` bytes at `offset` of an
/// export of `export_size` bytes.
///
/// The extents run consecutively from `offset`; none is empty; all but the last end before the
/// request's end; none runs past the export's end. The last may run past the request's end, as
/// the NBD spec allows, and is cut there. Fewer bytes than asked is a valid answer.
pub fn decode_block_status(
    payload: &[u8],
    offset: u64,
    length: u32,
    export_size: u64,
) -> Result<BlockStatusChunk, NbdError> {
    let mut c = Cursor::new(payload, "NBD_REPLY_TYPE_BLOCK_STATUS");
    let context_id = c.u32()?;
    let descriptors = c.rest();
    if descriptors.is_empty() || !descriptors.len().is_multiple_of(8) {
        return Err(protocol(format!(
            "block status chunk with {} bytes of extents (a positive multiple of 8)",
            descriptors.len()
        )));
    }
    let request_end = offset
        .checked_add(u64::from(length))
        .filter(|&end| end <= export_size)
        .ok_or_else(|| protocol("block status answers a request past the export's end"))?;
    let mut extents = Vec::with_capacity(descriptors.len() / 8);
    let mut at = offset;
    for descriptor in descriptors.chunks_exact(8) {
        let mut d = Cursor::new(descriptor, "a block status extent");
        let (len, flags) = (d.u32()?, d.u32()?);
        let end = next_extent_end(at, len, request_end, export_size)?;
        extents.push(Extent {
            offset: at,
            length: end.min(request_end) - at,
            flags,
        });
        at = end;
    }
    Ok(BlockStatusChunk {
        context_id,
        extents,
    })
}

/// The end of an extent of `len` bytes at `at`, after checking it may follow the extents
/// before it (which end at `at`).
fn next_extent_end(at: u64, len: u32, request_end: u64, export_size: u64) -> Result<u64, NbdError> {
    if len == 0 {
        return Err(protocol(format!("block status extent of length 0 at {at}")));
    }
    if at >= request_end {
        return Err(protocol(format!(
            "block status extent at {at}, after extents that already reach the request's end \
             {request_end}"
        )));
    }
    at.checked_add(u64::from(len))
        .filter(|&end| end <= export_size)
        .ok_or_else(|| {
            protocol(format!(
                "block status extent at {at} of {len} bytes runs past the export's end \
                 {export_size}"
            ))
        })
}
