//! The hashblocks wire protocol, version 3 (spec/FORMAT.md §19).
//!
//! Both directions are a stream of frames: a 4-byte big-endian length, then that many bytes, the
//! first of which is the frame type. The helper speaks first ([`Frame::Hello`]); then the client
//! sends one request at a time. To a [`Frame::HashRequest`] the helper answers with
//! [`Frame::DiskInfo`], any number of [`Frame::ZeroRun`] and [`Frame::Hashes`] frames (chunks in
//! any order, each exactly once), and one [`Frame::End`] or [`Frame::Error`]; to a
//! [`Frame::NbdHashRequest`] (a disk read through an NBD export, with a dirty bitmap) the same,
//! with [`Frame::UnchangedRun`] for chunks the bitmap saw no write to. To a
//! [`Frame::Run`] (a command to run on the host, so that a backup needs one remote channel, not
//! one per `virsh` call) it answers with [`Frame::Output`] frames and one [`Frame::Exit`] or
//! [`Frame::Error`]. After an NBD hash request, [`Frame::NbdRead`] reads bytes of the same export
//! ([`Frame::Data`] frames); [`Frame::OnExit`] leaves commands the helper runs if the client
//! vanishes (the cleanup of a VM's backup job).
//!
//! Every frame read is bounded before anything is allocated: [`read_frame`] refuses a length
//! above [`MAX_FRAME_LEN`], and every count and string length inside a frame is checked against
//! the bytes actually present and against its own limit.

use std::io::{self, Read, Write};

pub use crate::source::ImageFormat;

/// The magic at the start of the helper's hello.
pub const MAGIC: &[u8; 18] = b"vmstash-hashblocks";
/// The protocol version this crate speaks.
pub const VERSION: u16 = 3;
/// Largest frame body (type byte included) either side accepts.
pub const MAX_FRAME_LEN: u32 = 64 << 10;
/// Most hashes in one [`Frame::Hashes`].
pub const MAX_HASHES_PER_FRAME: u32 = 1024;
/// Longest path in a request, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest error message, in bytes.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Longest NBD export or bitmap name in a [`Frame::NbdHashRequest`], in bytes (the NBD limit).
pub const MAX_NAME_LEN: usize = 4096;
/// Most arguments in a [`Frame::Run`], the program included.
pub const MAX_RUN_ARGS: usize = 256;
/// Longest argument of a [`Frame::Run`], in bytes.
pub const MAX_ARG_LEN: usize = 16 << 10;
/// Most bytes of a command's standard output, and of its standard error, the helper forwards;
/// the rest is read and dropped, and [`Frame::Exit`] says so.
pub const MAX_RUN_OUTPUT: usize = 16 << 20;
/// Most bytes in one [`Frame::Output`].
pub const MAX_OUTPUT_CHUNK: usize = 60 << 10;
/// Most NBD exports a helper keeps open in one session.
pub const MAX_OPEN_EXPORTS: usize = 256;
/// Most bytes one [`Frame::NbdRead`] may ask for (the largest chunk size).
pub const MAX_READ_LEN: u32 = 8 << 20;
/// Most bytes in one [`Frame::Data`].
pub const MAX_DATA_CHUNK: usize = 60 << 10;
/// Most commands in one [`Frame::OnExit`].
pub const MAX_ON_EXIT_COMMANDS: usize = 8;
/// Smallest and largest chunk size a request may ask for.
pub const CHUNK_SIZE_RANGE: std::ops::RangeInclusive<u32> = (4 << 10)..=(8 << 20);

/// Frame type bytes.
mod kind {
    pub(super) const HELLO: u8 = 0x01;
    pub(super) const HASH_REQUEST: u8 = 0x02;
    pub(super) const RUN: u8 = 0x03;
    pub(super) const NBD_HASH_REQUEST: u8 = 0x04;
    pub(super) const NBD_READ: u8 = 0x05;
    pub(super) const ON_EXIT: u8 = 0x06;
    pub(super) const DISK_INFO: u8 = 0x10;
    pub(super) const ZERO_RUN: u8 = 0x11;
    pub(super) const HASHES: u8 = 0x12;
    pub(super) const OUTPUT: u8 = 0x13;
    pub(super) const EXIT: u8 = 0x14;
    pub(super) const UNCHANGED_RUN: u8 = 0x15;
    pub(super) const DATA: u8 = 0x16;
    pub(super) const ERROR: u8 = 0x1e;
    pub(super) const END: u8 = 0x1f;
}

/// Why a request failed on the helper's side, so the client can decide what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request was malformed or asked for something out of range.
    BadRequest,
    /// The image could not be opened (missing, permission denied).
    Open,
    /// Reading the image failed midway.
    Read,
    /// The image is damaged or uses a feature the helper cannot read.
    Unsupported,
    /// A command could not be started (no such program, not executable).
    Spawn,
    /// The NBD export offers no dirty bitmap of the name asked for.
    NoBitmap,
    /// A code this version does not know (from a newer helper).
    Other(u16),
}

impl ErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            Self::BadRequest => 1,
            Self::Open => 2,
            Self::Read => 3,
            Self::Unsupported => 4,
            Self::Spawn => 5,
            Self::NoBitmap => 6,
            Self::Other(code) => code,
        }
    }

    fn from_u16(code: u16) -> Self {
        match code {
            1 => Self::BadRequest,
            2 => Self::Open,
            3 => Self::Read,
            4 => Self::Unsupported,
            5 => Self::Spawn,
            6 => Self::NoBitmap,
            other => Self::Other(other),
        }
    }
}

/// A command's standard output or standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// Standard output (1 on the wire).
    Stdout,
    /// Standard error (2 on the wire).
    Stderr,
}

/// One frame of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Helper → client, first: who it is and which protocol version it speaks.
    Hello {
        /// Protocol version.
        version: u16,
        /// Threads the helper hashes on.
        threads: u16,
    },
    /// Client → helper: hash chunks `first_chunk..end_chunk` of the image at `path`.
    HashRequest {
        /// How to read the image.
        format: ImageFormat,
        /// Chunk size in bytes (a power of two in [`CHUNK_SIZE_RANGE`]).
        chunk_size: u32,
        /// First chunk to report.
        first_chunk: u64,
        /// One past the last chunk to report; `u64::MAX` for "to the end of the disk".
        end_chunk: u64,
        /// The image's path on the helper's host (bytes, as the OS names files).
        path: Vec<u8>,
    },
    /// Client → helper: hash every chunk of the disk exported over NBD at the Unix socket
    /// `socket` on the helper's host (spec §19.6), skipping the chunks the dirty bitmap `bitmap`
    /// (when not empty) says were not written since its checkpoint.
    NbdHashRequest {
        /// Chunk size in bytes (a power of two in [`CHUNK_SIZE_RANGE`]).
        chunk_size: u32,
        /// The export's Unix socket (bytes, as the OS names files; 1 to [`MAX_PATH_LEN`]).
        socket: Vec<u8>,
        /// The export's name (empty: the server's default export).
        export: Vec<u8>,
        /// The dirty bitmap's name (empty: none, every chunk with data is hashed).
        bitmap: Vec<u8>,
    },
    /// Client → helper: read `length` bytes at `offset` of an export an earlier
    /// [`Frame::NbdHashRequest`] hashed (spec §19.6), answered by [`Frame::Data`] frames.
    NbdRead {
        /// Which export: the number of NBD hash requests answered with END before the one that
        /// opened it, in this session.
        export: u32,
        /// Byte offset in the export.
        offset: u64,
        /// Bytes to read: 1 to [`MAX_READ_LEN`].
        length: u32,
    },
    /// Helper → client: the next bytes of an [`Frame::NbdRead`]'s answer, in order.
    Data {
        /// 1 to [`MAX_DATA_CHUNK`] bytes.
        data: Vec<u8>,
    },
    /// Client → helper: the commands to run, in order, if the helper's input ends or breaks
    /// before another ON_EXIT replaces them (spec §19.7): what puts a VM back as it was when
    /// the client is killed. Answered by [`Frame::Exit`] with status 0.
    OnExit {
        /// 0 (clears the list) to [`MAX_ON_EXIT_COMMANDS`] commands, each as [`Frame::Run`]'s.
        commands: Vec<Vec<Vec<u8>>>,
    },
    /// Client → helper: run a program on the helper's host, stdin from `/dev/null`, and send back
    /// what it prints and how it ends.
    Run {
        /// The program (looked up in the helper's `PATH`) and its arguments, unquoted: no shell
        /// reads them. 1 to [`MAX_RUN_ARGS`] of them, each at most [`MAX_ARG_LEN`] bytes, no NUL.
        argv: Vec<Vec<u8>>,
    },
    /// Helper → client: the next bytes a running command wrote to one of its outputs.
    Output {
        /// Which output.
        stream: OutputStream,
        /// 1 to [`MAX_OUTPUT_CHUNK`] bytes.
        data: Vec<u8>,
    },
    /// Helper → client: the command ended; nothing more follows for it.
    Exit {
        /// Its exit code; 128 + the signal's number when a signal ended it.
        status: i32,
        /// True when it wrote more than [`MAX_RUN_OUTPUT`] bytes to an output, which the helper
        /// did not forward.
        truncated: bool,
    },
    /// Helper → client, first answer to a request: the disk's virtual size and the chunks it
    /// will report.
    DiskInfo {
        /// Virtual size in bytes.
        size: u64,
        /// First chunk reported.
        first_chunk: u64,
        /// One past the last chunk reported (clamped to the disk).
        end_chunk: u64,
    },
    /// Chunks `first..first + count` were not written since the bitmap's checkpoint: their ids
    /// are the parent snapshot's.
    UnchangedRun {
        /// First chunk of the run.
        first: u64,
        /// Chunks in the run (at least 1).
        count: u64,
    },
    /// Chunks `first..first + count` read as zeros.
    ZeroRun {
        /// First chunk of the run.
        first: u64,
        /// Chunks in the run (at least 1).
        count: u64,
    },
    /// The SHA-256 of chunks `first..first + hashes.len()`.
    Hashes {
        /// First chunk.
        first: u64,
        /// One hash per chunk (1 to [`MAX_HASHES_PER_FRAME`]).
        hashes: Vec<[u8; 32]>,
    },
    /// The request failed; nothing more follows for it.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// A message for the user, naming the file and the cause.
        message: String,
    },
    /// Every chunk of the request was reported.
    End {
        /// Chunks reported.
        chunks: u64,
        /// Bytes the helper read from the image.
        bytes_read: u64,
    },
}

/// Why bytes from the other side are not a valid frame.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Reading or writing the stream failed.
    #[error("the helper connection failed: {0}")]
    Io(#[from] io::Error),
    /// The stream ended at a frame boundary.
    #[error("the helper connection closed")]
    Closed,
    /// A frame's declared length is 0 or above the limit.
    #[error("frame length {0} is out of range (1 to {MAX_FRAME_LEN})")]
    BadLength(u32),
    /// A frame type this version does not know.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// A frame's body does not match its type.
    #[error("malformed {frame} frame: {what}")]
    Malformed {
        /// The frame type's name.
        frame: &'static str,
        /// What is wrong.
        what: String,
    },
}

fn malformed(frame: &'static str, what: impl Into<String>) -> ProtocolError {
    ProtocolError::Malformed {
        frame,
        what: what.into(),
    }
}

/// A cursor over a frame body that never reads past its end.
struct Body<'a> {
    bytes: &'a [u8],
    frame: &'static str,
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.bytes.len() < n {
            return Err(malformed(
                self.frame,
                format!("needs {n} more bytes, has {}", self.bytes.len()),
            ));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A u16 length, then that many bytes (at most `max`).
    fn bytes16(&mut self, max: usize, what: &str) -> Result<&'a [u8], ProtocolError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(malformed(
                self.frame,
                format!("{what} of {len} bytes (limit {max})"),
            ));
        }
        self.take(len)
    }

    fn finish(self) -> Result<(), ProtocolError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(malformed(
                self.frame,
                format!("{} trailing bytes", self.bytes.len()),
            ))
        }
    }
}

impl Frame {
    /// An [`Frame::Error`] with `message` cut (at a character boundary) to
    /// [`MAX_MESSAGE_LEN`] bytes, so that it always encodes.
    pub fn error(code: ErrorCode, mut message: String) -> Frame {
        let mut cut = message.len().min(MAX_MESSAGE_LEN);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        Frame::Error { code, message }
    }

    /// Decodes a frame body (type byte first, length prefix removed).
    pub fn decode(body: &[u8]) -> Result<Frame, ProtocolError> {
        let (&ty, rest) = body.split_first().ok_or(ProtocolError::BadLength(0))?;
        let frame = match ty {
            kind::HELLO => decode_hello(rest)?,
            kind::HASH_REQUEST => decode_hash_request(rest)?,
            kind::RUN => decode_run(rest)?,
            kind::NBD_READ => decode_nbd_read(rest)?,
            kind::DATA => decode_data(rest)?,
            kind::ON_EXIT => decode_on_exit(rest)?,
            kind::NBD_HASH_REQUEST => decode_nbd_hash_request(rest)?,
            kind::UNCHANGED_RUN => decode_unchanged_run(rest)?,
            kind::OUTPUT => decode_output(rest)?,
            kind::EXIT => decode_exit(rest)?,
            kind::DISK_INFO => decode_disk_info(rest)?,
            kind::ZERO_RUN => decode_zero_run(rest)?,
            kind::HASHES => decode_hashes(rest)?,
            kind::ERROR => decode_error(rest)?,
            kind::END => decode_end(rest)?,
            other => return Err(ProtocolError::UnknownType(other)),
        };
        Ok(frame)
    }

    /// Appends the frame, length prefix included, to `out`.
    ///
    /// Fails only for a frame this side must never send (a path or message over its limit, too
    /// many hashes), so that a bug cannot put a frame on the wire that the peer would refuse.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Frame::Hello { version, threads } => {
                out.push(kind::HELLO);
                out.extend_from_slice(MAGIC);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&threads.to_be_bytes());
            }
            Frame::HashRequest {
                format,
                chunk_size,
                first_chunk,
                end_chunk,
                path,
            } => {
                out.push(kind::HASH_REQUEST);
                out.push(match format {
                    ImageFormat::Raw => 0,
                    ImageFormat::Qcow2 => 1,
                });
                out.extend_from_slice(&chunk_size.to_be_bytes());
                out.extend_from_slice(&first_chunk.to_be_bytes());
                out.extend_from_slice(&end_chunk.to_be_bytes());
                put_bytes16(out, path, MAX_PATH_LEN, "hash request", "path")?;
            }
            Frame::NbdHashRequest {
                chunk_size,
                socket,
                export,
                bitmap,
            } => {
                out.push(kind::NBD_HASH_REQUEST);
                out.extend_from_slice(&chunk_size.to_be_bytes());
                put_bytes16(out, socket, MAX_PATH_LEN, "nbd hash request", "socket")?;
                put_bytes16(out, export, MAX_NAME_LEN, "nbd hash request", "export")?;
                put_bytes16(out, bitmap, MAX_NAME_LEN, "nbd hash request", "bitmap")?;
            }
            Frame::UnchangedRun { first, count } => {
                out.push(kind::UNCHANGED_RUN);
                out.extend_from_slice(&first.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
            }
            Frame::Run { argv } => {
                out.push(kind::RUN);
                put_argv(out, argv, "run")?;
            }
            Frame::NbdRead {
                export,
                offset,
                length,
            } => {
                if !(1..=MAX_READ_LEN).contains(length) {
                    return Err(malformed("nbd read", format!("{length} bytes")));
                }
                out.push(kind::NBD_READ);
                out.extend_from_slice(&export.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(&length.to_be_bytes());
            }
            Frame::Data { data } => {
                if data.is_empty() || data.len() > MAX_DATA_CHUNK {
                    return Err(malformed("data", format!("{} bytes", data.len())));
                }
                out.push(kind::DATA);
                put_bytes16(out, data, MAX_DATA_CHUNK, "data", "data")?;
            }
            Frame::OnExit { commands } => {
                out.push(kind::ON_EXIT);
                let count = u16::try_from(commands.len())
                    .ok()
                    .filter(|_| commands.len() <= MAX_ON_EXIT_COMMANDS)
                    .ok_or_else(|| malformed("on exit", format!("{} commands", commands.len())))?;
                out.extend_from_slice(&count.to_be_bytes());
                for argv in commands {
                    put_argv(out, argv, "on exit")?;
                }
            }
            Frame::Output { stream, data } => {
                if data.is_empty() || data.len() > MAX_OUTPUT_CHUNK {
                    return Err(malformed("output", format!("{} bytes", data.len())));
                }
                out.push(kind::OUTPUT);
                out.push(match stream {
                    OutputStream::Stdout => 1,
                    OutputStream::Stderr => 2,
                });
                put_bytes16(out, data, MAX_OUTPUT_CHUNK, "output", "data")?;
            }
            Frame::Exit { status, truncated } => {
                out.push(kind::EXIT);
                out.extend_from_slice(&status.to_be_bytes());
                out.push(u8::from(*truncated));
            }
            Frame::DiskInfo {
                size,
                first_chunk,
                end_chunk,
            } => {
                out.push(kind::DISK_INFO);
                for v in [size, first_chunk, end_chunk] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
            Frame::ZeroRun { first, count } => {
                out.push(kind::ZERO_RUN);
                out.extend_from_slice(&first.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
            }
            Frame::Hashes { first, hashes } => {
                let count = u32::try_from(hashes.len())
                    .ok()
                    .filter(|n| (1..=MAX_HASHES_PER_FRAME).contains(n))
                    .ok_or_else(|| malformed("hashes", format!("{} hashes", hashes.len())))?;
                out.push(kind::HASHES);
                out.extend_from_slice(&first.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
                for h in hashes {
                    out.extend_from_slice(h);
                }
            }
            Frame::Error { code, message } => {
                out.push(kind::ERROR);
                out.extend_from_slice(&code.to_u16().to_be_bytes());
                put_bytes16(out, message.as_bytes(), MAX_MESSAGE_LEN, "error", "message")?;
            }
            Frame::End { chunks, bytes_read } => {
                out.push(kind::END);
                out.extend_from_slice(&chunks.to_be_bytes());
                out.extend_from_slice(&bytes_read.to_be_bytes());
            }
        }
        let len = u32::try_from(out.len() - start - 4)
            .ok()
            .filter(|&len| len <= MAX_FRAME_LEN)
            .ok_or_else(|| malformed("any", "frame too long"))?;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }
}

/// A command as RUN and ON_EXIT encode it: the argument count, then each argument.
fn put_argv(out: &mut Vec<u8>, argv: &[Vec<u8>], frame: &'static str) -> Result<(), ProtocolError> {
    let count = u16::try_from(argv.len())
        .ok()
        .filter(|_| (1..=MAX_RUN_ARGS).contains(&argv.len()))
        .ok_or_else(|| malformed(frame, format!("{} arguments", argv.len())))?;
    if argv.first().is_some_and(Vec::is_empty) {
        return Err(malformed(frame, "empty program name"));
    }
    out.extend_from_slice(&count.to_be_bytes());
    for arg in argv {
        if arg.contains(&0) {
            return Err(malformed(frame, "NUL in an argument"));
        }
        put_bytes16(out, arg, MAX_ARG_LEN, frame, "argument")?;
    }
    Ok(())
}

fn put_bytes16(
    out: &mut Vec<u8>,
    bytes: &[u8],
    max: usize,
    frame: &'static str,
    what: &str,
) -> Result<(), ProtocolError> {
    let len = u16::try_from(bytes.len())
        .ok()
        .filter(|_| bytes.len() <= max)
        .ok_or_else(|| malformed(frame, format!("{what} of {} bytes", bytes.len())))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn decode_hello(rest: &[u8]) -> Result<Frame, ProtocolError> {
    let mut b = Body {
        bytes: rest,
        frame: "hello",
    };
    if b.take(MAGIC.len())? != MAGIC {
        return Err(malformed(
            "hello",
            "wrong magic: not a vmstash-hashblocks helper",
        ));
    }
    let version = b.u16()?;
    let threads = b.u16()?;
    b.finish()?;
    Ok(Frame::Hello { version, threads })
}

fn decode_hash_request(rest: &[u8]) -> Result<Frame, ProtocolError> {
    let mut b = Body {
        bytes: rest,
        frame: "hash request",
    };
    let format = match b.u8()? {
        0 => ImageFormat::Raw,
        1 => ImageFormat::Qcow2,
        other => {
            return Err(malformed(
                "hash request",
                format!("unknown image format {other}"),
            ))
        }
    };
    let chunk_size = b.u32()?;
    check_chunk_size("hash request", chunk_size)?;
    let first_chunk = b.u64()?;
    let end_chunk = b.u64()?;
    if end_chunk < first_chunk {
        return Err(malformed(
            "hash request",
            format!("chunk range {first_chunk}..{end_chunk} runs backwards"),
        ));
    }
    let path = b.bytes16(MAX_PATH_LEN, "path")?.to_vec();
    if path.is_empty() || path.contains(&0) {
        return Err(malformed("hash request", "empty path or NUL in path"));
    }
    b.finish()?;
    Ok(Frame::HashRequest {
        format,
        chunk_size,
        first_chunk,
        end_chunk,
        path,
    })
}

fn decode_nbd_hash_request(rest: &[u8]) -> Result<Frame, ProtocolError> {
    const FRAME: &str = "nbd hash request";
    let mut b = Body {
        bytes: rest,
        frame: FRAME,
    };
    let chunk_size = b.u32()?;
    check_chunk_size(FRAME, chunk_size)?;
    let socket = b.bytes16(MAX_PATH_LEN, "socket")?.to_vec();
    let export = b.bytes16(MAX_NAME_LEN, "export")?.to_vec();
    let bitmap = b.bytes16(MAX_NAME_LEN, "bitmap")?.to_vec();
    b.finish()?;
    if socket.is_empty() || [&socket, &export, &bitmap].iter().any(|v| v.contains(&0)) {
        return Err(malformed(FRAME, "empty socket path, or NUL in a name"));
    }
    Ok(Frame::NbdHashRequest {
        chunk_size,
        socket,
        export,
        bitmap,
    })
}

fn decode_unchanged_run(rest: &[u8]) -> Result<Frame, ProtocolError> {
    let (first, count) = decode_chunk_run(rest, "unchanged run")?;
    Ok(Frame::UnchangedRun { first, count })
}

/// The body of ZERO_RUN and UNCHANGED_RUN: first chunk and count, at least one chunk, no
/// overflow.
fn decode_chunk_run(rest: &[u8], frame: &'static str) -> Result<(u64, u64), ProtocolError> {
    let mut b = Body { bytes: rest, frame };
    let (first, count) = (b.u64()?, b.u64()?);
    b.finish()?;
    if count == 0 || first.checked_add(count).is_none() {
        return Err(malformed(
            frame,
            format!("run {first}+{count} is empty or overflows"),
        ));
    }
    Ok((first, count))
}

/// Refuses a chunk size that is not a power of two in [`CHUNK_SIZE_RANGE`].
fn check_chunk_size(frame: &'static str, chunk_size: u32) -> Result<(), ProtocolError> {
    if chunk_size.is_power_of_two() && CHUNK_SIZE_RANGE.contains(&chunk_size) {
        Ok(())
    } else {
        Err(malformed(
            frame,
            format!("chunk size {chunk_size} is not a power of two from 4 KiB to 8 MiB"),
        ))
    }
}

fn decode_run(rest: &[u8]) -> Result<Frame, ProtocolError> {
    let mut b = Body {
        bytes: rest,
        frame: "run",
    };
    let argv = decode_argv(&mut b)?;
    b.finish()?;
    Ok(Frame::Run { argv })
}

/// One command as RUN and ON_EXIT carry it: 1 to [`MAX_RUN_ARGS`] arguments, none with a NUL,
/// the program's name not empty.
fn decode_argv(b: &mut Body<'_>) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let count = usize::from(b.u16()?);
    if !(1..=MAX_RUN_ARGS).contains(&count) {
        return Err(malformed(b.frame, format!("{count} arguments")));
    }
    let mut argv = Vec::new();
    for _ in 0..count {
        let arg = b.bytes16(MAX_ARG_LEN, "argument")?;
        if arg.contains(&0) {
            return Err(malformed(b.frame, "NUL in an argument"));
        }
        argv.push(arg.to_vec());
    }
    if argv.first().is_some_and(Vec::is_empty) {
        return Err(malformed(b.frame, "empty program name"));
    }
    Ok(argv)
}

fn decode_on_exit(rest: &[u8]) -> Result<Frame, ProtocolError> {
    let mut b = Body {
        bytes: rest,
        frame: "on exit",
    };
    let count = usize::from(b.u16()?);
    if count > MAX_ON_EXIT_COMMANDS {
        return Err(malformed("on exit", format!("{count} commands")));
    }
    let mut commands = Vec::new();
    for _ in 0..count {
        commands.push(decode_argv(&mut b)?);
    }
    b.finish()?;
    Ok(Frame::OnExit { commands })
}

fn decode_nbd_read(rest: &[u8]) -> Result<Frame, ProtocolError> {
    let mut b = Body {
        bytes: rest,
        frame: "nbd read",
    };
    let (export, offset, length) = (b.u32()?, b.u64()?, b.u32()?);
    b.finish()?;
    if !(1..=MAX_READ_LEN).contains(&length) || offset.checked_add(u64::from(length)).is_none() {
        return Err(malformed(
            "nbd read",
            format!("{length} bytes at offset {offset}"),
        ));
    }
    Ok(Frame::NbdRead {
        export,
        offset,
        length,
    })
}

fn decode_data(rest: &[u8]) -> Result<Frame, ProtocolError> {
    let mut b = Body {
        bytes: rest,
        frame: "data",
    };
    let data = b.bytes16(MAX_DATA_CHUNK, "data")?;
    b.finish()?;
    if data.is_empty() {
        return Err(malformed("data", "no bytes"));
    }
    Ok(Frame::Data {
        data: data.to_vec(),
    })
}

fn decode_output(rest: &[u8]) -> Result<Frame, ProtocolError> {
    let mut b = Body {
        bytes: rest,
        frame: "output",
    };
    let stream = match b.u8()? {
        1 => OutputStream::Stdout,
        2 => OutputStream::Stderr,
        other => return Err(malformed("output", format!("unknown stream {other}"))),
    };
    let data = b.bytes16(MAX_OUTPUT_CHUNK, "data")?;
    b.finish()?;
    if data.is_empty() {
        return Err(malformed("output", "no bytes"));
    }
    Ok(Frame::Output {
        stream,
        data: data.to_vec(),
    })
}

fn decode_exit(rest: &[u8]) -> Result<Frame, ProtocolError> {
    let mut b = Body {
        bytes: rest,
        frame: "exit",
    };
    let status = i32::from_be_bytes(b.array()?);
    let truncated = match b.u8()? {
        0 => false,
        1 => true,
        other => return Err(malformed("exit", format!("truncated flag {other}"))),
    };
    b.finish()?;
    Ok(Frame::Exit { status, truncated })
}

fn decode_disk_info(rest: &[u8]) -> Result<Frame, ProtocolError> {
    let mut b = Body {
        bytes: rest,
        frame: "disk info",
    };
    let (size, first_chunk, end_chunk) = (b.u64()?, b.u64()?, b.u64()?);
    b.finish()?;
    if end_chunk < first_chunk {
        return Err(malformed("disk info", "chunk range runs backwards"));
    }
    Ok(Frame::DiskInfo {
        size,
        first_chunk,
        end_chunk,
    })
}

fn decode_zero_run(rest: &[u8]) -> Result<Frame, ProtocolError> {
    let (first, count) = decode_chunk_run(rest, "zero run")?;
    Ok(Frame::ZeroRun { first, count })
}

fn decode_hashes(rest: &[u8]) -> Result<Frame, ProtocolError> {
    let mut b = Body {
        bytes: rest,
        frame: "hashes",
    };
    let first = b.u64()?;
    let count = b.u32()?;
    if !(1..=MAX_HASHES_PER_FRAME).contains(&count) || first.checked_add(u64::from(count)).is_none()
    {
        return Err(malformed(
            "hashes",
            format!("{count} hashes from chunk {first}"),
        ));
    }
    let n = usize::try_from(count).map_err(|_| malformed("hashes", "count"))?;
    let raw = b.take(n * 32)?;
    b.finish()?;
    let hashes = raw
        .chunks_exact(32)
        .map(|h| {
            let mut out = [0u8; 32];
            out.copy_from_slice(h);
            out
        })
        .collect();
    Ok(Frame::Hashes { first, hashes })
}

fn decode_error(rest: &[u8]) -> Result<Frame, ProtocolError> {
    let mut b = Body {
        bytes: rest,
        frame: "error",
    };
    let code = ErrorCode::from_u16(b.u16()?);
    let message = String::from_utf8_lossy(b.bytes16(MAX_MESSAGE_LEN, "message")?).into_owned();
    b.finish()?;
    Ok(Frame::Error { code, message })
}

fn decode_end(rest: &[u8]) -> Result<Frame, ProtocolError> {
    let mut b = Body {
        bytes: rest,
        frame: "end",
    };
    let (chunks, bytes_read) = (b.u64()?, b.u64()?);
    b.finish()?;
    Ok(Frame::End { chunks, bytes_read })
}

/// Reads one frame from `r`. A stream that ends cleanly before a frame gives
/// [`ProtocolError::Closed`]; one that ends inside a frame gives an I/O error.
pub fn read_frame(r: &mut impl Read) -> Result<Frame, ProtocolError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(ProtocolError::Closed),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len);
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(ProtocolError::BadLength(len));
    }
    let mut body = vec![0u8; usize::try_from(len).map_err(|_| ProtocolError::BadLength(len))?];
    r.read_exact(&mut body)?;
    Frame::decode(&body)
}

/// Writes one frame to `w`.
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> Result<(), ProtocolError> {
    let mut buf = Vec::new();
    frame.encode(&mut buf)?;
    w.write_all(&buf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Hello {
                version: VERSION,
                threads: 2,
            },
            Frame::HashRequest {
                format: ImageFormat::Qcow2,
                chunk_size: 512 << 10,
                first_chunk: 3,
                end_chunk: u64::MAX,
                path: b"/var/lib/libvirt/images/web1.qcow2".to_vec(),
            },
            Frame::DiskInfo {
                size: 1 << 30,
                first_chunk: 0,
                end_chunk: 2048,
            },
            Frame::ZeroRun { first: 7, count: 9 },
            Frame::Hashes {
                first: 100,
                hashes: vec![[0xab; 32], [0x01; 32]],
            },
            Frame::Error {
                code: ErrorCode::Open,
                message: "cannot open /x: No such file".to_owned(),
            },
            Frame::Error {
                code: ErrorCode::Other(77),
                message: String::new(),
            },
            Frame::End {
                chunks: 2048,
                bytes_read: 5 << 20,
            },
            Frame::Run {
                argv: vec![b"virsh".to_vec(), b"domstate".to_vec(), b"web 1".to_vec()],
            },
            Frame::NbdHashRequest {
                chunk_size: 512 << 10,
                socket: b"/var/lib/libvirt/qemu/backup.sock".to_vec(),
                export: b"vda".to_vec(),
                bitmap: b"backup-vda".to_vec(),
            },
            Frame::NbdHashRequest {
                chunk_size: 4096,
                socket: b"/s".to_vec(),
                export: Vec::new(),
                bitmap: Vec::new(),
            },
            Frame::UnchangedRun {
                first: 12,
                count: 900,
            },
            Frame::Error {
                code: ErrorCode::NoBitmap,
                message: "no bitmap".to_owned(),
            },
            Frame::Output {
                stream: OutputStream::Stdout,
                data: b"running\n".to_vec(),
            },
            Frame::Output {
                stream: OutputStream::Stderr,
                data: vec![0xff; MAX_OUTPUT_CHUNK],
            },
            Frame::Exit {
                status: -1,
                truncated: true,
            },
            Frame::Error {
                code: ErrorCode::Spawn,
                message: "cannot run virsh: No such file or directory".to_owned(),
            },
            Frame::NbdRead {
                export: 1,
                offset: 3 << 20,
                length: 1 << 20,
            },
            Frame::Data {
                data: vec![0x5a; MAX_DATA_CHUNK],
            },
            Frame::OnExit {
                commands: vec![
                    vec![b"virsh".to_vec(), b"domjobabort".to_vec(), b"web1".to_vec()],
                    vec![b"true".to_vec()],
                ],
            },
            Frame::OnExit {
                commands: Vec::new(),
            },
        ]
    }

    #[test]
    fn every_frame_round_trips_through_a_stream() {
        let mut wire = Vec::new();
        for f in samples() {
            write_frame(&mut wire, &f).expect("encode");
        }
        let mut r = wire.as_slice();
        for f in samples() {
            assert_eq!(read_frame(&mut r).expect("decode"), f);
        }
        assert!(matches!(read_frame(&mut r), Err(ProtocolError::Closed)));
    }

    #[test]
    fn every_truncation_of_every_frame_is_an_error() {
        for f in samples() {
            let mut wire = Vec::new();
            write_frame(&mut wire, &f).expect("encode");
            for cut in 1..wire.len() {
                let mut r = &wire[..cut];
                assert!(read_frame(&mut r).is_err(), "{f:?} cut at {cut}");
            }
            let body = &wire[4..];
            for cut in 0..body.len() {
                assert!(
                    Frame::decode(&body[..cut]).is_err(),
                    "{f:?} body cut at {cut}"
                );
            }
            let mut longer = body.to_vec();
            longer.push(0);
            assert!(
                Frame::decode(&longer).is_err(),
                "{f:?} with a trailing byte"
            );
        }
    }

    #[test]
    fn lengths_are_checked_before_allocating() {
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0x12];
        assert!(matches!(
            read_frame(&mut r),
            Err(ProtocolError::BadLength(u32::MAX))
        ));
        let mut r: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut r),
            Err(ProtocolError::BadLength(0))
        ));
        let mut hashes = vec![kind::HASHES];
        hashes.extend_from_slice(&0u64.to_be_bytes());
        hashes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(
            Frame::decode(&hashes).is_err(),
            "a huge hash count is refused"
        );
    }

    #[test]
    fn requests_out_of_range_are_refused() {
        let good = Frame::HashRequest {
            format: ImageFormat::Raw,
            chunk_size: 1 << 16,
            first_chunk: 0,
            end_chunk: 1,
            path: b"/d".to_vec(),
        };
        let mut wire = Vec::new();
        good.encode(&mut wire).expect("encode");
        let body = wire[4..].to_vec();
        let mut bad_chunk = body.clone();
        bad_chunk[2..6].copy_from_slice(&3000u32.to_be_bytes());
        assert!(Frame::decode(&bad_chunk).is_err(), "not a power of two");
        let mut backwards = body.clone();
        backwards[6..14].copy_from_slice(&5u64.to_be_bytes());
        assert!(Frame::decode(&backwards).is_err(), "range runs backwards");
        let mut nul = body;
        let last = nul.len() - 1;
        nul[last] = 0;
        assert!(Frame::decode(&nul).is_err(), "NUL in path");
        assert!(matches!(
            Frame::decode(&[0x77]),
            Err(ProtocolError::UnknownType(0x77))
        ));
        let too_many = Frame::Hashes {
            first: 0,
            hashes: vec![[0; 32]; 1025],
        };
        assert!(too_many.encode(&mut Vec::new()).is_err());
        let zero_run = Frame::ZeroRun {
            first: u64::MAX,
            count: 2,
        };
        let mut wire = Vec::new();
        zero_run.encode(&mut wire).expect("encode");
        assert!(Frame::decode(&wire[4..]).is_err(), "run overflows");
    }

    #[test]
    fn commands_out_of_range_are_refused() {
        let nothing = Frame::Run { argv: Vec::new() };
        assert!(nothing.encode(&mut Vec::new()).is_err(), "no program");
        let nul = Frame::Run {
            argv: vec![b"vir\0sh".to_vec()],
        };
        assert!(nul.encode(&mut Vec::new()).is_err(), "NUL in an argument");
        let empty_program = [kind::RUN, 0, 1, 0, 0];
        assert!(Frame::decode(&empty_program).is_err(), "empty program");
        let huge_count = [kind::RUN, 0xff, 0xff];
        assert!(Frame::decode(&huge_count).is_err(), "65535 arguments");
        let empty_output = Frame::Output {
            stream: OutputStream::Stdout,
            data: Vec::new(),
        };
        assert!(empty_output.encode(&mut Vec::new()).is_err());
        assert!(
            Frame::decode(&[kind::OUTPUT, 3, 0, 1, b'x']).is_err(),
            "stream 3"
        );
        assert!(Frame::decode(&[kind::OUTPUT, 1, 0, 0]).is_err(), "no bytes");
        assert!(
            Frame::decode(&[kind::EXIT, 0, 0, 0, 0, 2]).is_err(),
            "flag 2"
        );
        let too_many = Frame::OnExit {
            commands: vec![vec![b"true".to_vec()]; MAX_ON_EXIT_COMMANDS + 1],
        };
        assert!(too_many.encode(&mut Vec::new()).is_err(), "9 commands");
        assert!(
            Frame::decode(&[kind::ON_EXIT, 0, 9]).is_err(),
            "9 commands on the wire"
        );
        assert!(Frame::decode(&[kind::DATA, 0, 0]).is_err(), "no data");
    }

    #[test]
    fn reads_out_of_range_are_refused() {
        for length in [0, MAX_READ_LEN + 1] {
            let read = Frame::NbdRead {
                export: 0,
                offset: 0,
                length,
            };
            assert!(read.encode(&mut Vec::new()).is_err(), "{length} bytes");
        }
        let mut body = vec![kind::NBD_READ, 0, 0, 0, 0];
        body.extend_from_slice(&u64::MAX.to_be_bytes());
        body.extend_from_slice(&2u32.to_be_bytes());
        assert!(Frame::decode(&body).is_err(), "offset + length overflows");
    }

    #[test]
    fn a_wrong_magic_is_not_a_helper() {
        let mut wire = Vec::new();
        Frame::Hello {
            version: 1,
            threads: 1,
        }
        .encode(&mut wire)
        .expect("encode");
        wire[6] ^= 0x20;
        let err = Frame::decode(&wire[4..]).expect_err("wrong magic");
        assert!(
            err.to_string().contains("not a vmstash-hashblocks helper"),
            "{err}"
        );
    }
}
