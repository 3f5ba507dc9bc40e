//! The client side of the hashblocks helper (spec/FORMAT.md §19): ship it to a hypervisor, run
//! it there, and learn every chunk's SHA-256 without moving the chunk.
//!
//! The helper binary is the static `vmstash-hashblocks` installed beside `vmstash` (or named by
//! `$VMSTASH_HASHBLOCKS`). It is uploaded over SFTP to `~/.cache/vmstash/hashblocks-<sha256>`
//! on the host when that file is missing or has another size, and started over an exec channel
//! by a command that first checks the file's SHA-256 on the host (`sha256sum`), so that a
//! damaged or tampered copy of the right size is replaced too, without reading it back (about
//! 2 MiB) on every backup. Each version has its own file, so two vmstash versions can use one
//! host at once; old versions are left there (about 2 MiB each).
//!
//! Once it runs, it also runs the backup's commands on the host ([`RemoteHelper::run`]): one
//! exec channel, and one login shell start-up, for the whole backup.
//! Anything that stops it from starting (no helper here, upload refused, a `noexec` home,
//! another architecture, an old protocol) is a reason to fall back to SFTP reads, which the
//! caller reports in one line. Once it runs, a failure is an error of the backup: a helper that
//! dies mid-stream must not leave a snapshot with chunks nobody read.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use vmstash_hashblocks::protocol::{
    self, read_frame, ErrorCode, Frame, ImageFormat, OutputStream, ProtocolError,
};
use vmstash_repo::Id;
use vmstash_ssh::{RemoteProcess, Sftp, SftpFailure, SshError, SshSession};

use crate::read_pipe::ReadPipe;

/// Environment variable naming the helper binary to ship.
pub const HELPER_ENV: &str = "VMSTASH_HASHBLOCKS";
/// The helper's file name beside the `vmstash` binary.
const HELPER_NAME: &str = "vmstash-hashblocks";
/// Where helpers are kept on a host, relative to the SSH user's home directory.
const REMOTE_DIR: &str = ".cache/vmstash";
/// Largest helper binary vmstash ships.
const MAX_HELPER_LEN: u64 = 64 << 20;

/// What a command run through the helper printed, and how it ended.
#[derive(Debug, Default)]
pub struct RunOutput {
    /// Exit status; 128 + the signal's number when a signal ended it.
    pub status: i32,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// True when the command printed more than the helper forwards (16 MiB per output).
    pub truncated: bool,
}

/// What the helper said of one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkReport {
    /// Its id (`Id::ZERO` when it reads as zeros).
    Id(Id),
    /// The dirty bitmap saw no write to it: its id is the parent snapshot's (§19.6).
    Unchanged,
}

/// Gathers the chunk frames of one hash request's answer (§19.3 step 3): each chunk of the
/// disk exactly once.
pub struct ChunkCollector {
    slots: Vec<Option<ChunkReport>>,
}

impl ChunkCollector {
    /// A collector for a disk of `chunks` chunks.
    pub fn new(chunks: u64) -> Result<ChunkCollector> {
        Ok(ChunkCollector {
            slots: vec![None; usize::try_from(chunks)?],
        })
    }

    /// Takes `frame` if it reports chunks (`Ok(true)`); `Ok(false)` for any other frame; `Err`
    /// (phrased to follow "the helper") for a chunk outside the disk or reported twice.
    pub fn accept(&mut self, frame: &Frame) -> Result<bool, String> {
        match frame {
            Frame::ZeroRun { first, count } => {
                self.fill(*first, *count, ChunkReport::Id(Id::ZERO))?;
            }
            Frame::UnchangedRun { first, count } => {
                self.fill(*first, *count, ChunkReport::Unchanged)?;
            }
            Frame::Hashes { first, hashes } => {
                for (no, hash) in (*first..).zip(hashes) {
                    self.fill(no, 1, ChunkReport::Id(Id::from_bytes(*hash)))?;
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Every chunk's report, if every chunk was reported and `reported` (END's count) agrees.
    pub fn finish(self, reported: u64) -> Option<Vec<ChunkReport>> {
        let all: Option<Vec<ChunkReport>> = self.slots.into_iter().collect();
        all.filter(|all| u64::try_from(all.len()).ok() == Some(reported))
    }

    fn fill(&mut self, first: u64, count: u64, report: ChunkReport) -> Result<(), String> {
        for no in first..first.saturating_add(count) {
            match usize::try_from(no).ok().and_then(|i| self.slots.get_mut(i)) {
                Some(slot @ None) => *slot = Some(report),
                Some(Some(_)) => return Err(format!("reported chunk {no} twice")),
                None => return Err(format!("reported chunk {no}, beyond the end")),
            }
        }
        Ok(())
    }
}

/// Every chunk's report, and the bytes the helper read to make them.
struct ChunkReports {
    chunks: Vec<ChunkReport>,
    bytes_read: u64,
}

/// A disk hashed through NBD on the host ([`RemoteHelper::hash_nbd`]).
#[derive(Debug)]
pub struct NbdChunks {
    /// The export's size in bytes.
    pub size: u64,
    /// One report per chunk.
    pub chunks: Vec<ChunkReport>,
    /// Bytes the helper read through NBD to hash them.
    pub bytes_read: u64,
    /// The export's number, for NBD reads.
    pub export: u32,
}

/// The NBD export has no dirty bitmap of the name asked for; the helper's message says which.
#[derive(Debug)]
pub struct NoBitmap(pub String);

/// The helper running on a hypervisor.
pub struct RemoteHelper {
    /// Its stdin/stdout.
    process: RemoteProcess,
    /// `user@host:port`, for messages.
    host: String,
    /// Where it runs from on the host.
    remote_path: String,
    /// NBD exports it has opened (and keeps open) in this session.
    exports_opened: u32,
    /// The order of the NBD reads pipelined on it.
    pipe: Arc<ReadPipe>,
}

/// The helper binary to ship, and its bytes.
fn local_helper() -> Result<(PathBuf, Vec<u8>), String> {
    let path = match std::env::var_os(HELPER_ENV) {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot locate the vmstash binary: {e}"))?
            .with_file_name(HELPER_NAME),
    };
    let len = std::fs::metadata(&path)
        .map_err(|e| format!("no helper at {} ({e})", path.display()))?
        .len();
    if len > MAX_HELPER_LEN {
        return Err(format!(
            "{} is {len} bytes, too large for a helper",
            path.display()
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok((path, bytes))
}

/// Exit status of the start command when the host's copy is not the helper it should be.
const MISMATCH_STATUS: u32 = 97;

/// Uploads `bytes` to `remote` on the host (through a temporary name, then a rename) unless a
/// file of that size is already there; `force` uploads whatever is there.
fn ensure_uploaded(sftp: &Sftp, remote: &str, bytes: &[u8], force: bool) -> Result<(), SshError> {
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    let present = match sftp.metadata(remote) {
        Ok(meta) => meta.size == len,
        Err(SshError::Sftp {
            failure: SftpFailure::NotFound,
            ..
        }) => false,
        Err(e) => return Err(e),
    };
    if !present || force {
        sftp.mkdir_all(REMOTE_DIR)?;
        let tmp = format!("{remote}.tmp-{}", std::process::id());
        let mut writer = sftp.create(&tmp)?;
        let written = writer
            .write_all(bytes)
            .and_then(|()| writer.fsync())
            .and_then(|()| writer.close());
        let installed = written
            .and_then(|()| sftp.set_mode(&tmp, 0o755))
            .and_then(|()| sftp.rename(&tmp, remote));
        if let Err(e) = installed {
            let _ = sftp.remove(&tmp);
            return Err(e);
        }
    }
    sftp.set_mode(remote, 0o755)
}

/// The command that starts the helper at `remote` (relative to the home directory) only if its
/// SHA-256 is `digest`, and otherwise exits with [`MISMATCH_STATUS`]. It goes through `/bin/sh`
/// whatever the user's login shell is; the path is vmstash's own (hex digits, `/`, `.`, `-`), so
/// single quotes are safe around it.
fn start_command(remote: &str, digest: &str) -> String {
    format!(
        "exec /bin/sh -c 'if [ \"$(sha256sum < {remote} 2>/dev/null)\" = \"{digest}  -\" ]; then exec ./{remote} serve; fi; echo \"~/{remote} is not the helper this vmstash ships\" >&2; exit {MISMATCH_STATUS}'"
    )
}

impl RemoteHelper {
    /// Ships the helper to the host of `ssh` if needed and starts it. `Err` is the reason it
    /// cannot be used there; the caller then reads disks over SFTP.
    pub fn start(ssh: &SshSession) -> Result<RemoteHelper, String> {
        let (local, bytes) = local_helper()?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let remote_path = format!("{REMOTE_DIR}/hashblocks-{digest}");
        let sftp = ssh.sftp().map_err(|e| e.to_string())?;
        let upload = |force: bool| {
            ensure_uploaded(&sftp, &remote_path, &bytes, force)
                .map_err(|e| format!("cannot upload {}: {e}", local.display()))
        };
        let spawn = || {
            ssh.spawn(&start_command(&remote_path, &digest))
                .map_err(|e| e.to_string())
        };
        upload(false)?;
        let mut process = spawn()?;
        let mut hello = read_frame(&mut process);
        let ended = matches!(hello, Err(ProtocolError::Closed | ProtocolError::Io(_)));
        if ended && process.wait().ok() == Some(MISMATCH_STATUS) {
            // The host's copy has the right size but not the right bytes: replace it, once.
            upload(true)?;
            process = spawn()?;
            hello = read_frame(&mut process);
        }
        match hello {
            Ok(Frame::Hello { version, .. }) if version == protocol::VERSION => {}
            Ok(Frame::Hello { version, .. }) => {
                return Err(format!(
                    "~/{remote_path} speaks protocol {version}, this vmstash {}",
                    protocol::VERSION
                ))
            }
            Ok(other) => return Err(format!("~/{remote_path} did not say hello: {other:?}")),
            Err(e) => {
                // It ended (did not start, or crashed): its exit status and stderr say why.
                // Anything else it sent is not our helper talking; do not wait for it.
                let ended = matches!(e, ProtocolError::Closed | ProtocolError::Io(_));
                let status = if ended { process.wait().ok() } else { None };
                let stderr = process.stderr();
                return Err(format!(
                    "~/{remote_path} does not run there ({e}{}{})",
                    status
                        .map(|s| format!(", exit status {s}"))
                        .unwrap_or_default(),
                    if stderr.is_empty() {
                        String::new()
                    } else {
                        format!(": {stderr}")
                    }
                ));
            }
        }
        let pipe = Arc::new(ReadPipe::new(process.writer()));
        Ok(RemoteHelper {
            pipe,
            process,
            host: ssh.describe(),
            remote_path,
            exports_opened: 0,
        })
    }

    /// The id of every chunk of the image at `path` (`Id::ZERO` for chunks that read as zeros),
    /// hashed on the host; `size` is the disk's virtual size as the caller's reader sees it.
    pub fn hash_disk(
        &mut self,
        path: &str,
        format: ImageFormat,
        chunk_size: u32,
        size: u64,
    ) -> Result<Vec<Id>> {
        let request = Frame::HashRequest {
            format,
            chunk_size,
            first_chunk: 0,
            end_chunk: u64::MAX,
            path: path.as_bytes().to_vec(),
        };
        self.send(&request, "a request")?;
        let chunks = size.div_ceil(u64::from(chunk_size));
        match self.next_frame(&format!("hashing {path}"))? {
            Frame::DiskInfo {
                size: their_size,
                first_chunk: 0,
                end_chunk,
            } if their_size == size && end_chunk == chunks => {}
            Frame::DiskInfo { size: their_size, .. } => bail!(
                "the hashblocks helper on {} sees {path} as {their_size} bytes, vmstash as {size}; did the image change?",
                self.host
            ),
            other => return Err(self.unexpected(path, &other)),
        }
        let reported = self.chunk_reports(path, chunks)?;
        reported
            .chunks
            .into_iter()
            .map(|c| match c {
                ChunkReport::Id(id) => Ok(id),
                ChunkReport::Unchanged => Err(anyhow!(
                    "the hashblocks helper on {} reported unchanged chunks of {path}, which was not read with a bitmap",
                    self.host
                )),
            })
            .collect()
    }

    /// Every chunk of the disk exported over NBD at `socket` on the host (spec §19.6): its id,
    /// or, with a `bitmap`, [`ChunkReport::Unchanged`] where the bitmap saw no write. The export
    /// stays open for NBD reads (number [`NbdChunks::export`]). `Ok(Err(NoBitmap))` when the export has no
    /// such bitmap (the caller hashes the whole disk instead).
    pub fn hash_nbd(
        &mut self,
        socket: &str,
        export: &str,
        bitmap: Option<&str>,
        chunk_size: u32,
    ) -> Result<Result<NbdChunks, NoBitmap>> {
        let request = Frame::NbdHashRequest {
            chunk_size,
            socket: socket.as_bytes().to_vec(),
            export: export.as_bytes().to_vec(),
            bitmap: bitmap.unwrap_or_default().as_bytes().to_vec(),
        };
        self.send(&request, "a request")?;
        let what = format!("export {export:?} at {socket}");
        let size = match self.next_frame(&format!("hashing {what}"))? {
            Frame::DiskInfo {
                size,
                first_chunk: 0,
                end_chunk,
            } if end_chunk == size.div_ceil(u64::from(chunk_size)) => size,
            Frame::Error {
                code: ErrorCode::NoBitmap,
                message,
            } => return Ok(Err(NoBitmap(message))),
            Frame::Error { message, .. } => bail!(
                "the hashblocks helper on {} cannot read {what}: {message}",
                self.host
            ),
            other => return Err(self.unexpected(&what, &other)),
        };
        let reported = self.chunk_reports(&what, size.div_ceil(u64::from(chunk_size)))?;
        let export = self.exports_opened;
        self.exports_opened += 1;
        Ok(Ok(NbdChunks {
            size,
            chunks: reported.chunks,
            bytes_read: reported.bytes_read,
            export,
        }))
    }

    /// The helper's path as commands it runs (RUN, ON_EXIT) name it: relative to the home
    /// directory it was started in (spec §19.5), for `qmp` (§19.8).
    pub fn command_path(&self) -> String {
        format!("./{}", self.remote_path)
    }

    /// The order of the NBD reads pipelined on this helper (see [`ReadPipe`]).
    pub fn read_pipe(&self) -> Arc<ReadPipe> {
        Arc::clone(&self.pipe)
    }

    /// Receives the answer to the oldest NBD read sent through [`RemoteHelper::read_pipe`] and
    /// not yet answered, into `buf` (its length is the read's). `Err((e, true))` when the
    /// stream is out of step afterwards (the helper can take no more requests).
    pub fn receive_nbd_read(&mut self, buf: &mut [u8]) -> Result<(), (anyhow::Error, bool)> {
        let doing = format!("reading {} bytes through NBD", buf.len());
        let mut done = 0;
        while done < buf.len() {
            match self.next_frame(&doing).map_err(|e| (e, true))? {
                Frame::Data { data } => {
                    let Some(dst) = buf.get_mut(done..done + data.len()) else {
                        let e = anyhow!(
                            "the hashblocks helper on {} sent more bytes than asked while {doing}",
                            self.host
                        );
                        return Err((e, true));
                    };
                    dst.copy_from_slice(&data);
                    done += data.len();
                }
                Frame::Error { message, .. } => {
                    let e = anyhow!(
                        "the hashblocks helper on {} failed {doing}: {message}",
                        self.host
                    );
                    return Err((e, false));
                }
                other => return Err((self.unexpected(&doing, &other), true)),
            }
        }
        Ok(())
    }

    /// Leaves `commands` with the helper, to run if this client vanishes (killed, connection
    /// lost) before it calls this again; an empty list clears them (spec §19.7).
    pub fn on_exit(&mut self, commands: &[Vec<String>]) -> Result<()> {
        let commands = commands
            .iter()
            .map(|argv| argv.iter().map(|a| a.as_bytes().to_vec()).collect())
            .collect();
        self.send(&Frame::OnExit { commands }, "the commands to run on exit")?;
        match self.next_frame("taking the commands to run on exit")? {
            Frame::Exit { status: 0, .. } => Ok(()),
            other => Err(self.unexpected("the commands to run on exit", &other)),
        }
    }

    /// Sends `request` (`what`, for the message if it cannot be sent).
    fn send(&mut self, request: &Frame, what: &str) -> Result<()> {
        let mut wire = Vec::new();
        request.encode(&mut wire)?;
        self.process
            .write_all(&wire)
            .with_context(|| format!("sending {what} to the hashblocks helper on {}", self.host))
    }

    /// Reads the frames after DISK_INFO up to END: one report per chunk of `chunks`, each
    /// exactly once.
    fn chunk_reports(&mut self, what: &str, chunks: u64) -> Result<ChunkReports> {
        let mut collector = ChunkCollector::new(chunks)?;
        let doing = format!("hashing {what}");
        loop {
            let frame = self.next_frame(&doing)?;
            if collector
                .accept(&frame)
                .map_err(|e| anyhow!("the hashblocks helper on {} {e} of {what}", self.host))?
            {
                continue;
            }
            match frame {
                Frame::End {
                    chunks: reported,
                    bytes_read,
                } => {
                    let chunks = collector.finish(reported).ok_or_else(|| {
                        anyhow!(
                            "the hashblocks helper on {} ended {what} without reporting every chunk",
                            self.host
                        )
                    })?;
                    return Ok(ChunkReports { chunks, bytes_read });
                }
                Frame::Error { message, .. } => {
                    bail!(
                        "the hashblocks helper on {} failed on {what}: {message}",
                        self.host
                    )
                }
                other => return Err(self.unexpected(what, &other)),
            }
        }
    }

    /// Runs `argv` on the host through the helper (no shell: the arguments arrive as given) and
    /// returns what it printed and its exit status (127 when the program cannot be started, as
    /// from a shell). `Err` when the helper itself failed or stopped: it can take no more
    /// requests.
    pub fn run(&mut self, argv: &[&str]) -> Result<RunOutput> {
        let request = Frame::Run {
            argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        };
        let what = argv.first().copied().unwrap_or_default();
        self.send(&request, "a command")?;
        let mut out = RunOutput::default();
        loop {
            match self.next_frame(&format!("running {what}"))? {
                Frame::Output { stream, data } => {
                    let buf = match stream {
                        OutputStream::Stdout => &mut out.stdout,
                        OutputStream::Stderr => &mut out.stderr,
                    };
                    if buf.len().saturating_add(data.len()) > protocol::MAX_RUN_OUTPUT {
                        bail!(
                            "the hashblocks helper on {} sent more output of {what} than it may",
                            self.host
                        );
                    }
                    buf.extend_from_slice(&data);
                }
                Frame::Exit { status, truncated } => {
                    out.status = status;
                    out.truncated = truncated;
                    return Ok(out);
                }
                // As a shell says of a program it cannot find or execute.
                Frame::Error {
                    code: ErrorCode::Spawn,
                    message,
                } => {
                    return Ok(RunOutput {
                        status: 127,
                        stderr: message.into_bytes(),
                        ..RunOutput::default()
                    })
                }
                Frame::Error { message, .. } => {
                    bail!(
                        "the hashblocks helper on {} failed on {what}: {message}",
                        self.host
                    )
                }
                other => return Err(self.unexpected(what, &other)),
            }
        }
    }

    /// The next frame, or an error that says the helper stopped while `doing` ("hashing PATH").
    fn next_frame(&mut self, doing: &str) -> Result<Frame> {
        read_frame(&mut self.process).map_err(|e| {
            let cause = match e {
                ProtocolError::Closed => "its output ended".to_owned(),
                other => other.to_string(),
            };
            let stderr = self.process.stderr();
            anyhow!(
                "the hashblocks helper (~/{}) on {} stopped while {doing}: {cause}{}",
                self.remote_path,
                self.host,
                if stderr.is_empty() {
                    String::new()
                } else {
                    format!("; it said: {stderr}")
                }
            )
        })
    }

    fn unexpected(&self, path: &str, frame: &Frame) -> anyhow::Error {
        anyhow!(
            "the hashblocks helper on {} sent an unexpected frame while hashing {path}: {frame:?}",
            self.host
        )
    }
}

impl Drop for RemoteHelper {
    /// Ends the helper's input, so that it exits on its own.
    fn drop(&mut self) {
        let _ = self.process.close_stdin();
    }
}
