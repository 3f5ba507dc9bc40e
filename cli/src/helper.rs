//! The client side of the hashblocks helper (spec/FORMAT.md §19): ship it to a hypervisor, run
//! it there, and learn every chunk's SHA-256 without moving the chunk.
//!
//! The helper binary is the static `vmstash-hashblocks` installed beside `vmstash` (or named by
//! `$VMSTASH_HASHBLOCKS`). It is uploaded over SFTP to `~/.cache/vmstash/hashblocks-<sha256>`
//! on the host, only when that file is missing or its content differs (read back and hashed, so
//! a damaged or tampered copy is replaced), made executable, and started over an exec channel.
//! Each version has its own file, so two vmstash versions can use one host at once; old
//! versions are left there (about 2 MiB each).
//! Anything that stops it from starting (no helper here, upload refused, a `noexec` home,
//! another architecture, an old protocol) is a reason to fall back to SFTP reads, which the
//! caller reports in one line. Once it runs, a failure is an error of the backup: a helper that
//! dies mid-stream must not leave a snapshot with chunks nobody read.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use vmstash_hashblocks::protocol::{self, read_frame, Frame, ImageFormat, ProtocolError};
use vmstash_repo::Id;
use vmstash_ssh::{RemoteProcess, Sftp, SftpFailure, SshError, SshSession};

/// Environment variable naming the helper binary to ship.
pub const HELPER_ENV: &str = "VMSTASH_HASHBLOCKS";
/// The helper's file name beside the `vmstash` binary.
const HELPER_NAME: &str = "vmstash-hashblocks";
/// Where helpers are kept on a host, relative to the SSH user's home directory.
const REMOTE_DIR: &str = ".cache/vmstash";
/// Largest helper binary vmstash ships.
const MAX_HELPER_LEN: u64 = 64 << 20;

/// The helper running on a hypervisor.
pub struct RemoteHelper {
    /// Its stdin/stdout.
    process: RemoteProcess,
    /// `user@host:port`, for messages.
    host: String,
    /// Where it runs from on the host.
    remote_path: String,
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

/// Makes sure `remote` on the host holds exactly `bytes` and is executable.
fn ensure_uploaded(sftp: &Sftp, remote: &str, bytes: &[u8]) -> Result<(), SshError> {
    let present = match sftp.read(remote) {
        Ok(existing) => Sha256::digest(&existing) == Sha256::digest(bytes),
        Err(SshError::Sftp {
            failure: SftpFailure::NotFound,
            ..
        }) => false,
        Err(e) => return Err(e),
    };
    if !present {
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

impl RemoteHelper {
    /// Ships the helper to the host of `ssh` if needed and starts it. `Err` is the reason it
    /// cannot be used there; the caller then reads disks over SFTP.
    pub fn start(ssh: &SshSession) -> Result<RemoteHelper, String> {
        let (local, bytes) = local_helper()?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let remote_path = format!("{REMOTE_DIR}/hashblocks-{digest}");
        let sftp = ssh.sftp().map_err(|e| e.to_string())?;
        ensure_uploaded(&sftp, &remote_path, &bytes)
            .map_err(|e| format!("cannot upload {}: {e}", local.display()))?;
        let mut process = ssh
            .spawn(&format!("exec ./{remote_path} serve"))
            .map_err(|e| e.to_string())?;
        match read_frame(&mut process) {
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
        Ok(RemoteHelper {
            process,
            host: ssh.describe(),
            remote_path,
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
        let mut wire = Vec::new();
        request.encode(&mut wire)?;
        self.process.write_all(&wire).with_context(|| {
            format!(
                "sending a request to the hashblocks helper on {}",
                self.host
            )
        })?;
        let chunks = size.div_ceil(u64::from(chunk_size));
        let mut ids: Vec<Option<Id>> = vec![None; usize::try_from(chunks)?];
        match self.next_frame(path)? {
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
        loop {
            match self.next_frame(path)? {
                Frame::ZeroRun { first, count } => {
                    for no in first..first.saturating_add(count) {
                        self.record(&mut ids, no, Id::ZERO, path)?;
                    }
                }
                Frame::Hashes { first, hashes } => {
                    for (no, hash) in (first..).zip(hashes) {
                        self.record(&mut ids, no, Id::from_bytes(hash), path)?;
                    }
                }
                Frame::End {
                    chunks: reported, ..
                } => {
                    let ids: Option<Vec<Id>> = ids.into_iter().collect();
                    return match ids {
                        Some(ids) if u64::try_from(ids.len()).ok() == Some(reported) => Ok(ids),
                        _ => Err(anyhow!(
                            "the hashblocks helper on {} ended {path} without reporting every chunk",
                            self.host
                        )),
                    };
                }
                Frame::Error { message, .. } => {
                    bail!(
                        "the hashblocks helper on {} failed on {path}: {message}",
                        self.host
                    )
                }
                other => return Err(self.unexpected(path, &other)),
            }
        }
    }

    /// The next frame, or an error that says the helper stopped.
    fn next_frame(&mut self, path: &str) -> Result<Frame> {
        read_frame(&mut self.process).map_err(|e| {
            let cause = match e {
                ProtocolError::Closed => "its output ended".to_owned(),
                other => other.to_string(),
            };
            let stderr = self.process.stderr();
            anyhow!(
                "the hashblocks helper (~/{}) on {} stopped while hashing {path}: {cause}{}",
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

    /// Stores chunk `no`'s id, refusing chunks outside the disk or reported twice.
    fn record(&self, ids: &mut [Option<Id>], no: u64, id: Id, path: &str) -> Result<()> {
        let slot = usize::try_from(no).ok().and_then(|i| ids.get_mut(i));
        match slot {
            Some(slot @ None) => {
                *slot = Some(id);
                Ok(())
            }
            Some(Some(_)) => bail!(
                "the hashblocks helper on {} reported chunk {no} of {path} twice",
                self.host
            ),
            None => bail!(
                "the hashblocks helper on {} reported chunk {no}, beyond the end of {path}",
                self.host
            ),
        }
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
