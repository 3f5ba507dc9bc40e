//! The errors of the SSH layer: what failed, on which host or path, and what to do about it.
//!
//! Every message names the host (`user@host:port` once authenticated, `host:port` before) and,
//! for file operations, the remote path, so a backup of several hypervisors tells the user where
//! to look. Host key errors are deliberately verbose: they are the ones a user must not wave away.

use std::io;
use std::path::PathBuf;

/// Why an SSH connection, command or SFTP operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {host}: {source}; check the host name and port, and that sshd runs there")]
    Connect {
        /// `host:port` as dialled.
        host: String,
        /// What the operating system reported.
        source: io::Error,
    },

    /// A stage of the connection took too long.
    #[error(
        "{stage} with {host} timed out after {secs} s; check that the host is up and reachable"
    )]
    Timeout {
        /// `host:port` or `user@host:port`.
        host: String,
        /// What was being done ("the SSH handshake", "authentication").
        stage: &'static str,
        /// The limit that was exceeded.
        secs: u64,
    },

    /// The SSH handshake (version exchange, key exchange) failed.
    #[error("the SSH handshake with {host} failed: {source}")]
    Handshake {
        /// `host:port`.
        host: String,
        /// The protocol error.
        source: Box<russh::Error>,
    },

    /// The server's host key is not in known_hosts.
    #[error(
        "the host key of {host} is not known: its {key_type} key {fingerprint} is not in {}{}; \
         check the fingerprint on the host (`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub`), then \
         re-run with --accept-new-host-key to trust it and add it to that file",
        known_hosts.display(),
        other_types_note(other_types)
    )]
    HostKeyUnknown {
        /// The name the key was looked up under (`host` or `[host]:port`).
        host: String,
        /// The key's algorithm name (`ssh-ed25519`, …).
        key_type: String,
        /// `SHA256:…`, as `ssh-keygen -l` prints it.
        fingerprint: String,
        /// The known_hosts file that was searched.
        known_hosts: PathBuf,
        /// Key types known for this host under which the presented key was not found.
        other_types: Vec<String>,
    },

    /// The server presented a different key than the one recorded for it: refused, always.
    #[error(
        "@@@ WARNING: THE HOST KEY OF {host} HAS CHANGED! @@@ It now presents the {key_type} key \
         {fingerprint}, but line {line} of {} records a different {key_type} key for it. Someone \
         could be intercepting the connection (a man-in-the-middle attack), or the host was \
         reinstalled. vmstash refuses to connect, with or without --accept-new-host-key. If the \
         change is expected, verify the new fingerprint on the host, remove the old key with \
         `ssh-keygen -R '{host}' -f {}` and connect again",
        known_hosts.display(),
        known_hosts.display()
    )]
    HostKeyChanged {
        /// The name the key was looked up under.
        host: String,
        /// The presented key's algorithm name.
        key_type: String,
        /// The presented key's `SHA256:…` fingerprint.
        fingerprint: String,
        /// The known_hosts file.
        known_hosts: PathBuf,
        /// The (1-based) line that records the other key.
        line: usize,
    },

    /// The server presented a key that known_hosts marks `@revoked`.
    #[error(
        "the host key of {host} is REVOKED: its {key_type} key {fingerprint} is marked @revoked \
         on line {line} of {}; vmstash refuses to connect. Ask the host's administrator for its \
         current key",
        known_hosts.display()
    )]
    HostKeyRevoked {
        /// The name the key was looked up under.
        host: String,
        /// The presented key's algorithm name.
        key_type: String,
        /// The presented key's `SHA256:…` fingerprint.
        fingerprint: String,
        /// The known_hosts file.
        known_hosts: PathBuf,
        /// The (1-based) line of the `@revoked` entry.
        line: usize,
    },

    /// The server presented a host certificate, which vmstash does not ask for nor verify.
    #[error("{host} presented a host certificate instead of a plain host key; vmstash only checks plain keys against known_hosts")]
    HostCertificate {
        /// `host:port`.
        host: String,
    },

    /// A local file (key, known_hosts, SSH config) could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// The local file.
        path: PathBuf,
        /// What was being done, phrased to precede the path ("read the identity").
        action: String,
        /// What the operating system reported.
        source: io::Error,
    },

    /// A private key file exists but cannot be used.
    #[error("cannot use the identity {}: {reason}", path.display())]
    Identity {
        /// The key file.
        path: PathBuf,
        /// Why, and what to do.
        reason: String,
    },

    /// The SSH config file has a line vmstash cannot make sense of.
    #[error("{}, line {line}: {what}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// The (1-based) line.
        line: usize,
        /// What is wrong with it.
        what: String,
    },

    /// No user name was given and none could be found.
    #[error("no user name to log in to {host} as: give one as USER@{host} or set User in the SSH config")]
    NoUser {
        /// The host as given.
        host: String,
    },

    /// The server accepted none of the keys offered.
    #[error(
        "{user}@{host} refused every key vmstash offered (tried: {}); add the right public key \
         to ~{user}/.ssh/authorized_keys on the host, or point --identity at the right key",
        tried_list(tried)
    )]
    Auth {
        /// The user name.
        user: String,
        /// `host:port`.
        host: String,
        /// One description per key (or source of keys) tried or skipped, in order.
        tried: Vec<String>,
    },

    /// Opening or using an SSH channel failed.
    #[error("cannot {what} on {host}: {source}")]
    Channel {
        /// `user@host:port`.
        host: String,
        /// What was being done ("open a session channel").
        what: String,
        /// The protocol error.
        source: Box<russh::Error>,
    },

    /// A remote command could not be run to completion.
    #[error("command `{command}` on {host}: {what}")]
    Exec {
        /// `user@host:port`.
        host: String,
        /// The command line.
        command: String,
        /// What went wrong.
        what: String,
    },

    /// An SFTP operation failed.
    #[error("cannot {action} {path} on {host} over SFTP: {failure}")]
    Sftp {
        /// `user@host:port`.
        host: String,
        /// The remote path.
        path: String,
        /// What was being done ("open", "read 4194304 bytes at offset 0 of").
        action: String,
        /// Why.
        failure: SftpFailure,
    },

    /// The SSH layer was used in a way it cannot work (a bug in the caller) or could not start.
    #[error("internal error in the SSH layer: {what}")]
    Runtime {
        /// What happened.
        what: String,
    },
}

impl SshError {
    /// Whether this is an SFTP "no such file" answer (a caller probing for a file can treat it
    /// as absence rather than failure).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::Sftp {
                failure: SftpFailure::NotFound,
                ..
            }
        )
    }
}

/// Why an SFTP request failed, from the server's status code or the transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SftpFailure {
    /// `SSH_FX_NO_SUCH_FILE`.
    #[error("no such file or directory")]
    NotFound,
    /// `SSH_FX_PERMISSION_DENIED`.
    #[error("permission denied")]
    PermissionDenied,
    /// The file ended before the bytes asked for.
    #[error("the file ends before byte {at}; was it truncated while being read?")]
    UnexpectedEof {
        /// The offset at which the server reported end-of-file.
        at: u64,
    },
    /// `SSH_FX_OP_UNSUPPORTED`.
    #[error("the server does not support this operation")]
    Unsupported,
    /// No reply came in time.
    #[error("the server did not answer in time")]
    Timeout,
    /// The channel or connection went away.
    #[error("the connection to the server was lost")]
    ConnectionLost,
    /// Any other failure the server reported, with its message.
    #[error("the server reported: {0}")]
    Server(String),
    /// The server's answer did not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The result would exceed a limit vmstash sets to bound memory.
    #[error("{what} exceeds the limit of {limit}")]
    TooLarge {
        /// What is too large ("the file", "the directory listing").
        what: &'static str,
        /// The limit, with its unit.
        limit: String,
    },
}

impl From<russh_sftp::client::error::Error> for SftpFailure {
    fn from(err: russh_sftp::client::error::Error) -> Self {
        use russh_sftp::client::error::Error;
        use russh_sftp::protocol::StatusCode;
        match err {
            Error::Status(status) => match status.status_code {
                StatusCode::NoSuchFile => Self::NotFound,
                StatusCode::PermissionDenied => Self::PermissionDenied,
                StatusCode::OpUnsupported => Self::Unsupported,
                StatusCode::NoConnection | StatusCode::ConnectionLost => Self::ConnectionLost,
                StatusCode::Eof => Self::Server("end of file".to_owned()),
                code => {
                    if status.error_message.is_empty() {
                        Self::Server(code.to_string())
                    } else {
                        Self::Server(status.error_message)
                    }
                }
            },
            Error::Timeout => Self::Timeout,
            Error::IO(_) => Self::ConnectionLost,
            // russh-sftp reports a closed session as "unexpected behavior" with these texts.
            Error::UnexpectedBehavior(what)
                if what.contains("session closed")
                    || what.contains("sender dropped")
                    || what.contains("SendError") =>
            {
                Self::ConnectionLost
            }
            Error::UnexpectedBehavior(what) | Error::Limited(what) => Self::Protocol(what),
            Error::UnexpectedPacket => Self::Protocol("unexpected packet".to_owned()),
        }
    }
}

/// The tail of the unknown-host-key message when other key types are recorded for the host.
fn other_types_note(other_types: &[String]) -> String {
    if other_types.is_empty() {
        String::new()
    } else {
        format!(
            " (it records only {} keys for this host: the host may have been reinstalled, or \
             someone may be intercepting the connection)",
            other_types.join(", ")
        )
    }
}

/// The list of tried keys for the authentication error.
fn tried_list(tried: &[String]) -> String {
    if tried.is_empty() {
        "no keys: no --identity, no ssh-agent and no ~/.ssh/id_* files".to_owned()
    } else {
        tried.join("; ")
    }
}
