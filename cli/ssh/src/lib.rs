//! vmstash's SSH and SFTP client: how vmstash reaches hypervisors. This crate's one job is to
//! connect, check host keys, authenticate, run commands and read and write files over SFTP; it
//! knows nothing of backups, repositories or libvirt.
//!
//! A hypervisor is reached like `ssh` reaches it: plain SSH to its sshd, keys from `--identity`,
//! ssh-agent or `~/.ssh`, host keys from `~/.ssh/known_hosts`, host aliases from `~/.ssh/config`.
//! Nothing has to be installed on the hypervisor: commands run through `exec` (`virsh`,
//! `qemu-img`) and disks are read through the SFTP subsystem OpenSSH ships.
//!
//! # Design
//!
//! - **A blocking API over an async core.** russh and russh-sftp are async; the rest of vmstash
//!   is plain threads. [`SshSession`] and [`Sftp`] hide a process-wide tokio runtime (module
//!   `runtime`): every method blocks the calling thread, and may be called from several threads
//!   at once (sessions and SFTP channels are `Send + Sync` and cheap to clone).
//! - **Host keys are checked as strictly as OpenSSH's default** (module `known_hosts`): unknown
//!   keys are refused unless `--accept-new-host-key` (then recorded, like
//!   `StrictHostKeyChecking=accept-new`); changed and revoked keys are refused, always.
//! - **No prompts** (module `auth`): vmstash runs unattended, so passphrase-protected keys are
//!   used through ssh-agent only, and the error says so.
//! - **Throughput** (module `transfer`): AES-GCM is the preferred cipher; SFTP reads and writes
//!   keep up to 64 requests of 64 KiB in flight, like OpenSSH's `sftp`, and the channel window is
//!   large enough that flow control never stalls them.
//! - **Bounded**: every network wait has a timeout (connect 20 s, handshake 30 s, authentication
//!   60 s, each SFTP request 120 s) and keepalives drop a dead connection after about a minute;
//!   command output and whole-file reads have size caps.
//!
//! Errors are one typed [`SshError`] that names the host (and the remote path), so a caller can
//! tell a refused host key from a missing file ([`SshError::is_not_found`]) without parsing text.

mod auth;
mod config;
mod error;
mod known_hosts;
mod pattern;
mod process;
mod runtime;
mod session;
mod sftp;
mod transfer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

pub use error::{SftpFailure, SshError};
pub use process::{RemoteProcess, RemoteWriter};
pub use sftp::{Sftp, SftpFile, SftpMetadata, SftpWriter};

/// Where to connect: `[user@]host[:port]` as the user wrote it. `host` may be an alias from the
/// SSH config, which can supply the real host name, user, port and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The user to log in as; default: the SSH config's `User`, else the local user name.
    pub user: Option<String>,
    /// Host name, address or SSH config alias.
    pub host: String,
    /// The port; default: the SSH config's `Port`, else 22.
    pub port: Option<u16>,
}

/// How to connect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshOptions {
    /// The private key to use, and only that one (`--identity`).
    pub identity: Option<PathBuf>,
    /// The known_hosts file; default `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    /// Whether to trust and record a host key that is not yet known (never a changed one).
    pub accept_new_host_key: bool,
    /// The SSH config file; default `~/.ssh/config` if it exists.
    pub ssh_config: Option<PathBuf>,
}

/// What a remote command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit status.
    pub status: u32,
    /// Everything it wrote to standard output.
    pub stdout: Vec<u8>,
    /// Everything it wrote to standard error.
    pub stderr: Vec<u8>,
}

/// An authenticated SSH connection. Cheap to clone; clones share the connection, which closes
/// when the last clone is dropped.
#[derive(Clone)]
pub struct SshSession {
    /// The connection.
    connection: Arc<session::Connection>,
}

impl SshSession {
    /// Connects to `target`, checks its host key and authenticates.
    pub fn connect(target: &SshTarget, opts: &SshOptions) -> Result<SshSession, SshError> {
        let connection = session::connect(target, opts)?;
        Ok(Self {
            connection: Arc::new(connection),
        })
    }

    /// Runs `command` (a shell command line, as `ssh host command` would) and waits for it.
    ///
    /// A non-zero exit status is not an error: look at [`ExecOutput::status`].
    pub fn exec(&self, command: &str) -> Result<ExecOutput, SshError> {
        self.connection.exec(command)
    }

    /// Starts `command` with its stdin and stdout streamed (see [`RemoteProcess`]).
    pub fn spawn(&self, command: &str) -> Result<RemoteProcess, SshError> {
        runtime::block_on(process::spawn(&self.connection, command))?
    }

    /// Opens a new SFTP channel.
    pub fn sftp(&self) -> Result<Sftp, SshError> {
        runtime::block_on(sftp::start(&self.connection))?
    }

    /// `user@host:port`, for messages.
    pub fn describe(&self) -> String {
        self.connection.description.clone()
    }
}

impl std::fmt::Debug for SshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SshSession").field(&self.describe()).finish()
    }
}
