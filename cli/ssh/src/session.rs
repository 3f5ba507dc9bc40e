//! One authenticated SSH connection: connecting, host key checking, running commands.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use russh::client::{Config, Handle, Handler};
use russh::keys::ssh_key::{Algorithm, HashAlg, PublicKey};
use russh::keys::PublicKeyOrCertificate;
use russh::{cipher, compression, ChannelMsg, Preferred};

use crate::auth::{self, KeySources};
use crate::config::{self, HostConfig};
use crate::error::SshError;
use crate::known_hosts::{self, KnownHosts, Verdict};
use crate::{runtime, ExecOutput, SshOptions, SshTarget};

/// Limit for the TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Limit for the SSH handshake (version exchange, key exchange, host key check).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit for authentication (all keys together).
const AUTH_TIMEOUT: Duration = Duration::from_secs(60);
/// A keepalive is sent after this long without hearing from the server…
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// …and the connection is dropped after this many unanswered keepalives (about a minute).
const KEEPALIVE_MAX: usize = 4;
/// Channel window: how much the server may send before we acknowledge. Large enough for 64
/// pipelined 64 KiB SFTP reads plus headers, so reads are never throttled by flow control.
const WINDOW_SIZE: u32 = 16 << 20;
/// Largest channel data packet we accept from the server (OpenSSH's own client uses 32 KiB;
/// larger packets halve the per-packet work).
const MAX_PACKET_SIZE: u32 = 65_535;
/// Cap on the output of a remote command (each of stdout and stderr), to bound memory.
const MAX_EXEC_OUTPUT: usize = 64 << 20;

/// Ciphers in order of preference: AES-GCM first (hardware AES and carry-less multiply make it
/// the fastest on x86-64 and arm64), then ChaCha20-Poly1305, then CTR modes for old servers.
const CIPHERS: &[cipher::Name] = &[
    cipher::AES_128_GCM,
    cipher::AES_256_GCM,
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_CTR,
    cipher::AES_192_CTR,
    cipher::AES_128_CTR,
];

/// The connection state shared by all clones of an [`SshSession`](crate::SshSession).
pub(crate) struct Connection {
    /// The russh connection handle (authenticated).
    pub handle: Handle<Client>,
    /// `user@host:port`.
    pub description: String,
}

/// The russh event handler: checks the host key, ignores everything else.
pub(crate) struct Client {
    /// How to check the host key.
    check: HostKeyCheck,
}

/// What the host key check needs to know.
struct HostKeyCheck {
    /// The name the host is recorded under in known_hosts (`host` or `[host]:port`).
    lookup_name: String,
    /// The known_hosts file.
    path: PathBuf,
    /// Its content when the connection started.
    known: KnownHosts,
    /// Whether unknown keys are accepted and recorded.
    accept_new: bool,
}

/// The error type of [`Client`]: host key refusals keep their own message.
#[derive(Debug)]
pub(crate) enum ClientError {
    /// A protocol or transport error.
    Ssh(russh::Error),
    /// The host key was refused.
    HostKey(Box<SshError>),
}

impl From<russh::Error> for ClientError {
    fn from(err: russh::Error) -> Self {
        Self::Ssh(err)
    }
}

impl Handler for Client {
    type Error = ClientError;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => self
                .check
                .verify(key)
                .map(|()| true)
                .map_err(|err| ClientError::HostKey(Box::new(err))),
            PublicKeyOrCertificate::Certificate(_) => {
                Err(ClientError::HostKey(Box::new(SshError::HostCertificate {
                    host: self.check.lookup_name.clone(),
                })))
            }
        }
    }
}

impl HostKeyCheck {
    /// Accepts a known key, records a new one if allowed, refuses everything else.
    fn verify(&self, key: &PublicKey) -> Result<(), SshError> {
        let host = self.lookup_name.clone();
        let key_type = key.algorithm().to_string();
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let known_hosts = self.path.clone();
        match self.known.check(&self.lookup_name, key) {
            Verdict::Known => Ok(()),
            Verdict::Unknown { .. } if self.accept_new => {
                known_hosts::append(&self.path, &self.lookup_name, key)
            }
            Verdict::Unknown { other_types } => Err(SshError::HostKeyUnknown {
                host,
                key_type,
                fingerprint,
                known_hosts,
                other_types,
            }),
            Verdict::Changed { line } => Err(SshError::HostKeyChanged {
                host,
                key_type,
                fingerprint,
                known_hosts,
                line,
            }),
            Verdict::Revoked { line } => Err(SshError::HostKeyRevoked {
                host,
                key_type,
                fingerprint,
                known_hosts,
                line,
            }),
        }
    }
}

/// Where and how to connect, after the SSH config was applied.
struct Resolved {
    /// The host name or address to dial.
    host: String,
    /// The port.
    port: u16,
    /// The user to log in as.
    user: String,
    /// The keys to offer.
    keys: KeySources,
    /// The host key check.
    check: HostKeyCheck,
}

/// Connects, checks the host key and authenticates.
pub(crate) fn connect(target: &SshTarget, opts: &SshOptions) -> Result<Connection, SshError> {
    let resolved = resolve(target, opts)?;
    runtime::block_on(connect_async(resolved))?
}

/// Applies the SSH config and the defaults to `target` and `opts`.
fn resolve(target: &SshTarget, opts: &SshOptions) -> Result<Resolved, SshError> {
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from);
    let host_config = match (&opts.ssh_config, &home) {
        (Some(path), _) => HostConfig::load(path, &target.host)?,
        (None, Some(home)) => {
            let path = home.join(".ssh").join("config");
            if path.exists() {
                HostConfig::load(&path, &target.host)?
            } else {
                HostConfig::default()
            }
        }
        (None, None) => HostConfig::default(),
    };
    let local_user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|user| !user.is_empty());
    let user = target
        .user
        .clone()
        .or(host_config.user)
        .or_else(|| local_user.clone())
        .ok_or_else(|| SshError::NoUser {
            host: target.host.clone(),
        })?;
    let host = host_config.host_name.unwrap_or_else(|| target.host.clone());
    let port = target.port.or(host_config.port).unwrap_or(22);
    let config_files = host_config
        .identity_files
        .iter()
        .map(|file| {
            config::expand_identity_path(
                file,
                home.as_deref(),
                &target.host,
                local_user.as_deref().unwrap_or(""),
                &user,
            )
        })
        .collect();
    let known_hosts_path = opts
        .known_hosts
        .clone()
        .unwrap_or_else(|| known_hosts::default_path(home.as_deref()));
    let check = HostKeyCheck {
        lookup_name: known_hosts::lookup_name(&host, port),
        known: KnownHosts::load(&known_hosts_path)?,
        path: known_hosts_path,
        accept_new: opts.accept_new_host_key,
    };
    Ok(Resolved {
        host,
        port,
        user,
        keys: KeySources {
            identity: opts.identity.clone(),
            config_files,
            home,
        },
        check,
    })
}

/// The async part of [`connect`].
async fn connect_async(resolved: Resolved) -> Result<Connection, SshError> {
    let Resolved {
        host,
        port,
        user,
        keys,
        check,
    } = resolved;
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let config = Arc::new(client_config(
        &check.known.known_algorithms(&check.lookup_name),
    ));

    let stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| SshError::Timeout {
        host: address.clone(),
        stage: "the TCP connection",
        secs: CONNECT_TIMEOUT.as_secs(),
    })?
    .map_err(|source| SshError::Connect {
        host: address.clone(),
        source,
    })?;
    // Latency matters more than packet count for request/response traffic such as SFTP.
    let _ = stream.set_nodelay(true);

    let handshake = russh::client::connect_stream(config, stream, Client { check });
    let mut handle = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| SshError::Timeout {
            host: address.clone(),
            stage: "the SSH handshake",
            secs: HANDSHAKE_TIMEOUT.as_secs(),
        })?
        .map_err(|err| match err {
            ClientError::HostKey(err) => *err,
            ClientError::Ssh(source) => SshError::Handshake {
                host: address.clone(),
                source: Box::new(source),
            },
        })?;

    let authentication = auth::authenticate(&mut handle, &user, &address, &keys);
    tokio::time::timeout(AUTH_TIMEOUT, authentication)
        .await
        .map_err(|_| SshError::Timeout {
            host: format!("{user}@{address}"),
            stage: "authentication",
            secs: AUTH_TIMEOUT.as_secs(),
        })??;
    Ok(Connection {
        handle,
        description: format!("{user}@{address}"),
    })
}

/// The russh client configuration: algorithms, windows, keepalives.
///
/// `known_algorithms` (host key types on file for the host) are preferred, as OpenSSH does, so a
/// server with several host keys presents the one the user already trusts.
fn client_config(known_algorithms: &[Algorithm]) -> Config {
    let defaults = Preferred::default();
    let mut host_keys: Vec<Algorithm> = defaults
        .key
        .iter()
        .filter(|algorithm| {
            known_algorithms
                .iter()
                .any(|known| same_key_type(known, algorithm))
        })
        .cloned()
        .collect();
    host_keys.extend(
        defaults
            .key
            .iter()
            .filter(|algorithm| !host_keys.contains(algorithm))
            .cloned()
            .collect::<Vec<_>>(),
    );
    Config {
        preferred: Preferred {
            key: Cow::Owned(host_keys),
            cipher: Cow::Borrowed(CIPHERS),
            compression: Cow::Borrowed(&[compression::NONE]),
            ..defaults
        },
        window_size: WINDOW_SIZE,
        maximum_packet_size: MAX_PACKET_SIZE,
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: KEEPALIVE_MAX,
        nodelay: true,
        ..Config::default()
    }
}

/// Whether a recorded key type and a host key algorithm name the same kind of key (the RSA
/// signature variants all use an RSA key).
fn same_key_type(known: &Algorithm, algorithm: &Algorithm) -> bool {
    known == algorithm
        || (matches!(known, Algorithm::Rsa { .. }) && matches!(algorithm, Algorithm::Rsa { .. }))
}

impl Connection {
    /// Runs `command` and collects its output and exit status.
    pub(crate) fn exec(&self, command: &str) -> Result<ExecOutput, SshError> {
        runtime::block_on(self.exec_async(command))?
    }

    /// The async part of [`Connection::exec`].
    async fn exec_async(&self, command: &str) -> Result<ExecOutput, SshError> {
        let exec_error = |what: String| SshError::Exec {
            host: self.description.clone(),
            command: command.to_owned(),
            what,
        };
        let mut channel = self.open_session_channel().await?;
        channel
            .exec(true, command)
            .await
            .map_err(|source| self.channel_error("start a command", source))?;
        let mut output = ExecOutput {
            status: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        let mut status = None;
        let mut signal = None;
        while let Some(message) = channel.wait().await {
            match message {
                ChannelMsg::Data { data } => {
                    append_capped(&mut output.stdout, &data, "stdout").map_err(exec_error)?
                }
                ChannelMsg::ExtendedData { data, ext: 1 } => {
                    append_capped(&mut output.stderr, &data, "stderr").map_err(exec_error)?;
                }
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::ExitSignal {
                    signal_name,
                    error_message,
                    ..
                } => signal = Some(format!("{signal_name:?} {error_message}")),
                ChannelMsg::Failure => {
                    return Err(exec_error("the server refused to run it".to_owned()));
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        match (status, signal) {
            (Some(status), _) => {
                output.status = status;
                Ok(output)
            }
            (None, Some(signal)) => Err(exec_error(format!(
                "killed by signal {}; stderr: {}",
                signal.trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ))),
            (None, None) => Err(exec_error(
                "the connection ended before the command reported an exit status".to_owned(),
            )),
        }
    }

    /// Opens a session channel (for a command or a subsystem).
    pub(crate) async fn open_session_channel(
        &self,
    ) -> Result<russh::Channel<russh::client::Msg>, SshError> {
        self.handle
            .channel_open_session()
            .await
            .map_err(|source| self.channel_error("open a session channel", source))
    }

    /// A channel error on this connection.
    pub(crate) fn channel_error(&self, what: &str, source: russh::Error) -> SshError {
        SshError::Channel {
            host: self.description.clone(),
            what: what.to_owned(),
            source: Box::new(source),
        }
    }
}

/// Appends `data` to `buffer` unless that exceeds [`MAX_EXEC_OUTPUT`].
fn append_capped(buffer: &mut Vec<u8>, data: &[u8], stream: &str) -> Result<(), String> {
    if buffer.len().saturating_add(data.len()) > MAX_EXEC_OUTPUT {
        return Err(format!(
            "its {stream} exceeds {} MiB, more than vmstash keeps in memory",
            MAX_EXEC_OUTPUT >> 20
        ));
    }
    buffer.extend_from_slice(data);
    Ok(())
}
