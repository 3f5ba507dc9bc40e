//! `vmstash-hashblocks`: the helper the vmstash CLI runs on a hypervisor over SSH.
//!
//! It speaks the protocol of spec/FORMAT.md §19 on stdin/stdout: says hello, then answers hash
//! requests, NBD reads and commands, one after another, until its input ends; then it runs the
//! commands the client left for that moment (ON_EXIT), so that a killed client still gets its
//! VM's backup job ended. Diagnostics go to stderr. It is built
//! statically (see `scripts/build-helper.sh`) so that it runs on any x86-64 Linux host without
//! installing anything.

use std::io::{self, BufReader, BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vmstash_hashblocks::hasher::{hash_changed, HashError};
use vmstash_hashblocks::protocol::{
    read_frame, write_frame, ErrorCode, Frame, ImageFormat, ProtocolError, MAX_DATA_CHUNK,
    MAX_OPEN_EXPORTS, VERSION,
};
use vmstash_hashblocks::qmp::{run_script, Step};
use vmstash_hashblocks::run::run_command;
use vmstash_hashblocks::source::nbd::{NbdSource, NbdSourceError};
use vmstash_hashblocks::source::{self, DiskSource, SourceError};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("serve") => match serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vmstash-hashblocks: {e}");
                ExitCode::FAILURE
            }
        },
        Some("qmp") => qmp(&args[1..]),
        Some("--version") => {
            println!(
                "vmstash-hashblocks {} (protocol {VERSION})",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!(
                "vmstash-hashblocks: unknown argument {other:?}; this helper is run by vmstash \
                 (usage: vmstash-hashblocks [serve | qmp [--keep-going] SOCKET STEP… | --version])"
            );
            ExitCode::from(2)
        }
    }
}

/// `qmp [--keep-going] SOCKET STEP…` (spec §19.8): runs the steps (JSON objects) over one
/// connection to the QMP socket and prints what they answered as one JSON object. Exit status
/// 0 when the script ran (a refused command is in its output), 1 when QEMU could not be
/// reached or broke the protocol, 2 for bad arguments.
fn qmp(args: &[String]) -> ExitCode {
    let (keep_going, args) = match args.split_first() {
        Some((flag, rest)) if flag == "--keep-going" => (true, rest),
        _ => (false, args),
    };
    let Some((socket, steps)) = args.split_first() else {
        eprintln!("vmstash-hashblocks qmp: usage: qmp [--keep-going] SOCKET STEP…");
        return ExitCode::from(2);
    };
    let steps: Result<Vec<Step>, String> = steps
        .iter()
        .map(|s| {
            serde_json::from_str(s)
                .map_err(|e| format!("step {s:?} is not JSON: {e}"))
                .and_then(Step::from_json)
        })
        .collect();
    let steps = match steps {
        Ok(steps) => steps,
        Err(e) => {
            eprintln!("vmstash-hashblocks qmp: {e}");
            return ExitCode::from(2);
        }
    };
    match run_script(Path::new(socket), &steps, keep_going) {
        Ok(output) => match serde_json::to_string(&output) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vmstash-hashblocks qmp: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("vmstash-hashblocks qmp: {socket}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Answers requests on stdin until it ends, then runs the commands the client left with
/// ON_EXIT (also when the session breaks: the client was killed or lost its connection).
fn serve() -> Result<(), ProtocolError> {
    let mut on_exit = Vec::new();
    let served = serve_requests(&mut on_exit);
    for argv in &on_exit {
        let _ = run_command(argv, &mut |_| Ok(()));
    }
    served
}

/// The request loop of [`serve`]; `on_exit` holds the latest ON_EXIT list.
fn serve_requests(on_exit: &mut Vec<Vec<Vec<u8>>>) -> Result<(), ProtocolError> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut input = BufReader::new(io::stdin().lock());
    let mut output = BufWriter::with_capacity(256 << 10, io::stdout().lock());
    let hello = Frame::Hello {
        version: VERSION,
        threads: u16::try_from(threads).unwrap_or(u16::MAX),
    };
    write_frame(&mut output, &hello)?;
    output.flush()?;
    // The exports NBD hash requests opened, in order, for the NBD reads that follow.
    let mut exports: Vec<NbdSource> = Vec::new();
    loop {
        let request = match read_frame(&mut input) {
            Ok(frame) => frame,
            Err(ProtocolError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        let answered = match request {
            Frame::HashRequest {
                format,
                chunk_size,
                first_chunk,
                end_chunk,
                path,
            } => answer_file(
                &mut output,
                &path_of(path),
                format,
                chunk_size,
                first_chunk..end_chunk,
                threads,
            ),
            Frame::NbdHashRequest { .. } if exports.len() >= MAX_OPEN_EXPORTS => {
                let message = format!("more than {MAX_OPEN_EXPORTS} NBD exports in one session");
                Err(Frame::error(ErrorCode::BadRequest, message))
            }
            Frame::NbdHashRequest {
                chunk_size,
                socket,
                export: name,
                bitmap,
            } => answer_nbd(&mut output, chunk_size, &socket, &name, &bitmap, threads)
                .map(|src| exports.push(src)),
            Frame::NbdRead {
                export,
                offset,
                length,
            } => {
                let export = usize::try_from(export).ok().and_then(|i| exports.get(i));
                answer_read(&mut output, export, offset, length)
            }
            Frame::OnExit { commands } => {
                *on_exit = commands;
                let done = Frame::Exit {
                    status: 0,
                    truncated: false,
                };
                write_frame(&mut output, &done)?;
                Ok(())
            }
            Frame::Run { argv } => {
                run_command(&argv, &mut |frame| {
                    write_frame(&mut output, &frame).map_err(io::Error::other)
                })?;
                Ok(())
            }
            _ => {
                let message = "expected a request or a command".to_owned();
                Err(Frame::error(ErrorCode::BadRequest, message))
            }
        };
        if let Err(failure) = answered {
            write_frame(&mut output, &failure)?;
        }
        output.flush()?;
    }
}

/// Answers an NBD_READ: `length` bytes at `offset` of `export` as DATA frames, or the error
/// frame that says why not (no export open, out of range, the read failed).
fn answer_read(
    output: &mut impl Write,
    export: Option<&NbdSource>,
    offset: u64,
    length: u32,
) -> Result<(), Frame> {
    let export = export.ok_or_else(|| {
        let message =
            "no such NBD export: an NBD read names an export an NBD hash request opened".to_owned();
        Frame::error(ErrorCode::BadRequest, message)
    })?;
    let mut buf = vec![0u8; usize::try_from(length).unwrap_or(usize::MAX)];
    export
        .read_at(&mut buf, offset)
        .map_err(|e| source_error(&e))?;
    for piece in buf.chunks(MAX_DATA_CHUNK) {
        let data = Frame::Data {
            data: piece.to_vec(),
        };
        write_frame(output, &data)
            .map_err(|e| Frame::error(ErrorCode::Read, format!("writing results: {e}")))?;
    }
    Ok(())
}

/// Most NBD connections one export is read over: a thread each, up to the point where the
/// server (QEMU answers each connection's commands in turn) stops getting faster.
const MAX_NBD_CONNECTIONS: usize = 4;

/// The request's path as the OS names files (bytes, not necessarily UTF-8).
fn path_of(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

fn source_error(e: &SourceError) -> Frame {
    let code = match e {
        SourceError::Corrupt { .. } | SourceError::Unsupported { .. } => ErrorCode::Unsupported,
        SourceError::OutOfRange { .. } => ErrorCode::BadRequest,
        SourceError::Io { .. } | SourceError::Remote(_) => ErrorCode::Read,
    };
    Frame::error(code, e.to_string())
}

/// Answers a HASH_REQUEST: hashes chunks `chunks` of the image file at `path`; `Err` is the
/// frame that reports why it failed (DISK_INFO and some results may already have been written).
fn answer_file(
    output: &mut impl Write,
    path: &Path,
    format: ImageFormat,
    chunk_size: u32,
    chunks: Range<u64>,
    threads: usize,
) -> Result<(), Frame> {
    let src: Box<dyn DiskSource> = source::open_as(path, format).map_err(|e| {
        let mut frame = source_error(&e);
        if let Frame::Error { code, .. } = &mut frame {
            if matches!(e, SourceError::Io { .. }) {
                *code = ErrorCode::Open;
            }
        }
        frame
    })?;
    report(output, src.as_ref(), chunk_size, chunks, threads, None)
}

/// Answers an NBD_HASH_REQUEST (spec §19.6): every chunk of the export at `socket`, those the
/// bitmap (when named) did not see written reported as unchanged. Returns the export, kept open
/// for the NBD reads that follow.
fn answer_nbd(
    output: &mut impl Write,
    chunk_size: u32,
    socket: &[u8],
    export: &[u8],
    bitmap: &[u8],
    threads: usize,
) -> Result<NbdSource, Frame> {
    let (export, bitmap) = (utf8(export, "export name")?, utf8(bitmap, "bitmap name")?);
    let socket = path_of(socket.to_vec());
    let bitmap = Some(bitmap).filter(|b| !b.is_empty());
    let src = NbdSource::connect(&socket, export, bitmap)
        .map_err(|e| match e {
            NbdSourceError::NoBitmap { .. } => Frame::error(ErrorCode::NoBitmap, e.to_string()),
            NbdSourceError::Source(e) => Frame::error(ErrorCode::Open, e.to_string()),
        })?
        .with_connections(threads.min(MAX_NBD_CONNECTIONS));
    let changed = src.changed_ranges().map_err(|e| source_error(&e))?;
    report(
        output,
        &src,
        chunk_size,
        0..u64::MAX,
        threads,
        changed.as_deref(),
    )?;
    Ok(src)
}

/// `bytes` as text, or the error frame that says which name (`what`) is not UTF-8.
fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, Frame> {
    std::str::from_utf8(bytes)
        .map_err(|_| Frame::error(ErrorCode::BadRequest, format!("the {what} is not UTF-8")))
}

/// Writes DISK_INFO, the frames of every chunk of `chunks` (clamped to the disk) and END.
fn report(
    output: &mut impl Write,
    src: &dyn DiskSource,
    chunk_size: u32,
    chunks: Range<u64>,
    threads: usize,
    changed: Option<&[Range<u64>]>,
) -> Result<(), Frame> {
    let disk_chunks = src.size().div_ceil(u64::from(chunk_size));
    let end = chunks.end.min(disk_chunks);
    let first = chunks.start.min(end);
    let info = Frame::DiskInfo {
        size: src.size(),
        first_chunk: first,
        end_chunk: end,
    };
    let io_error =
        |e: ProtocolError| Frame::error(ErrorCode::Read, format!("writing results: {e}"));
    write_frame(output, &info).map_err(io_error)?;
    let mut emit = |frame: Frame| write_frame(output, &frame).map_err(|e| e.to_string());
    let stats = hash_changed(src, chunk_size, first..end, threads, changed, &mut emit).map_err(
        |e| match e {
            HashError::Read(e) | HashError::Map(e) => source_error(&e),
            HashError::Emit(e) => Frame::error(ErrorCode::Read, format!("writing results: {e}")),
        },
    )?;
    let end = Frame::End {
        chunks: stats.chunks,
        bytes_read: stats.bytes_read,
    };
    write_frame(output, &end).map_err(io_error)
}
