//! Blocking SFTP on top of russh-sftp's request/response session.
//!
//! Each [`Sftp`] is one `sftp` subsystem channel on the connection, with its own server process
//! (`sftp-server`) on the host. Its methods take `&self` and may be called from several threads
//! at once: russh-sftp matches answers to requests by id, so requests from different threads
//! interleave on the channel. Large reads and writes are pipelined (see [`crate::transfer`]).
//!
//! The OpenSSH extensions vmstash relies on are used when the server announces them:
//! `fsync@openssh.com` (make written data durable before a rename publishes it),
//! `posix-rename@openssh.com` (rename over an existing file atomically; plain SFTP rename fails
//! if the target exists) and `limits@openssh.com` (request sizes the server accepts).

use std::sync::Arc;
use std::time::Duration;

use russh::ChannelMsg;
use russh_sftp::client::error::Error as RawError;
use russh_sftp::client::rawsession::Limits;
use russh_sftp::client::{Config, RawSftpSession};
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};

use crate::error::{SftpFailure, SshError};
use crate::runtime;
use crate::session::Connection;
use crate::transfer::{self, REQUEST_LEN};

/// Limit for one SFTP request's answer (the pipelined reads of a large buffer share it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest SFTP packet accepted from the server (OpenSSH sends at most 256 KiB).
const MAX_INCOMING_PACKET: u32 = 1 << 20;
/// Largest file [`Sftp::read`] returns, to bound memory.
const MAX_SMALL_FILE: u64 = 256 << 20;
/// Most directory entries [`Sftp::read_dir`] returns, to bound memory.
const MAX_DIR_ENTRIES: usize = 1_000_000;

/// The file type bits of a Unix mode.
const MODE_TYPE_MASK: u32 = 0o170_000;
/// Directory.
const MODE_DIR: u32 = 0o040_000;
/// Regular file.
const MODE_FILE: u32 = 0o100_000;
/// Block device.
const MODE_BLOCK_DEVICE: u32 = 0o060_000;

/// An SFTP channel. Cheap to clone; clones share the channel.
#[derive(Clone)]
pub struct Sftp {
    /// The shared channel state.
    inner: Arc<Inner>,
}

/// The state of one SFTP channel.
struct Inner {
    /// The request/response session.
    raw: RawSftpSession,
    /// `user@host:port`, for messages.
    host: String,
    /// The connection, kept open while the channel is in use (even if every
    /// [`crate::SshSession`] clone was dropped).
    _connection: Arc<Connection>,
    /// Bytes per read request.
    read_len: usize,
    /// Bytes per write request.
    write_len: usize,
    /// Whether the server has `fsync@openssh.com`.
    fsync: bool,
    /// Whether the server has `posix-rename@openssh.com`.
    posix_rename: bool,
}

/// What `stat` says about a remote file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SftpMetadata {
    /// Size in bytes (0 if the server did not say, and for block devices).
    pub size: u64,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Whether it is a regular file.
    pub is_file: bool,
    /// The Unix mode: type and permission bits (0 if the server did not say).
    pub mode: u32,
    /// Last modification, seconds since the Unix epoch (if the server said).
    pub modified: Option<u32>,
}

impl SftpMetadata {
    /// Converts the SFTP attributes.
    fn from_attrs(attrs: &FileAttributes) -> Self {
        let mode = attrs.permissions.unwrap_or(0);
        Self {
            size: attrs.size.unwrap_or(0),
            is_dir: mode & MODE_TYPE_MASK == MODE_DIR,
            is_file: mode & MODE_TYPE_MASK == MODE_FILE,
            mode,
            modified: attrs.mtime,
        }
    }

    /// Whether it is a block device (whose size SFTP reports as 0).
    pub fn is_block_device(&self) -> bool {
        self.mode & MODE_TYPE_MASK == MODE_BLOCK_DEVICE
    }
}

/// A remote file open for reading.
pub struct SftpFile {
    /// The channel.
    inner: Arc<Inner>,
    /// The server's handle.
    handle: String,
    /// The path it was opened by.
    path: String,
    /// Its size when opened.
    size: u64,
}

/// A remote file open for writing (created or truncated).
pub struct SftpWriter {
    /// The channel.
    inner: Arc<Inner>,
    /// The server's handle; `None` once closed.
    handle: Option<String>,
    /// The path it was opened by.
    path: String,
    /// Where [`SftpWriter::write_all`] writes next.
    position: u64,
}

/// Starts the SFTP subsystem on a new channel of `connection`.
pub(crate) async fn start(connection: &Arc<Connection>) -> Result<Sftp, SshError> {
    let host = connection.description.clone();
    let start_error = |failure| SshError::Sftp {
        host: host.clone(),
        path: String::new(),
        action: "start the SFTP subsystem (is `Subsystem sftp` enabled in sshd_config?) for"
            .to_owned(),
        failure,
    };
    let mut channel = connection.open_session_channel().await?;
    channel
        .request_subsystem(true, "sftp")
        .await
        .map_err(|source| connection.channel_error("request the SFTP subsystem", source))?;
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Success) => break,
            Some(ChannelMsg::Failure) => {
                return Err(start_error(SftpFailure::Server(
                    "the server refused the subsystem".to_owned(),
                )))
            }
            Some(ChannelMsg::Close | ChannelMsg::Eof) | None => {
                return Err(start_error(SftpFailure::ConnectionLost))
            }
            Some(_) => {}
        }
    }
    let config = Config {
        max_packet_len: MAX_INCOMING_PACKET,
        request_timeout_secs: REQUEST_TIMEOUT.as_secs(),
        ..Config::default()
    };
    let mut raw = RawSftpSession::new_with_config(channel.into_stream(), config);
    let version = raw.init().await.map_err(|err| start_error(err.into()))?;
    let has = |name: &str| version.extensions.get(name).is_some_and(|v| v == "1");
    let (fsync, posix_rename) = (has("fsync@openssh.com"), has("posix-rename@openssh.com"));
    let (mut read_len, mut write_len) = (REQUEST_LEN, REQUEST_LEN);
    if has("limits@openssh.com") {
        let limits = Limits::from(raw.limits().await.map_err(|err| start_error(err.into()))?);
        read_len = capped(read_len, limits.read_len);
        write_len = capped(write_len, limits.write_len);
        raw.set_limits(limits);
    }
    Ok(Sftp {
        inner: Arc::new(Inner {
            raw,
            host,
            _connection: Arc::clone(connection),
            read_len,
            write_len,
            fsync,
            posix_rename,
        }),
    })
}

/// `len`, lowered to the server's limit if it has one.
fn capped(len: usize, limit: Option<u64>) -> usize {
    limit
        .and_then(|limit| usize::try_from(limit).ok())
        .filter(|&limit| limit > 0)
        .map_or(len, |limit| len.min(limit))
}

impl Inner {
    /// An SFTP error on this channel.
    fn error(&self, action: &str, path: &str, failure: impl Into<SftpFailure>) -> SshError {
        SshError::Sftp {
            host: self.host.clone(),
            path: path.to_owned(),
            action: action.to_owned(),
            failure: failure.into(),
        }
    }

    /// Opens `path` with `flags`; returns the handle.
    async fn open(&self, path: &str, flags: OpenFlags, action: &str) -> Result<String, SshError> {
        self.raw
            .open(path, flags, FileAttributes::empty())
            .await
            .map(|handle| handle.handle)
            .map_err(|err| self.error(action, path, err))
    }

    /// Closes `handle`, reporting failure (a close can report a failed delayed write).
    async fn close(&self, handle: String, path: &str) -> Result<(), SshError> {
        self.raw
            .close(handle)
            .await
            .map(|_| ())
            .map_err(|err| self.error("close", path, err))
    }

    /// Runs `body` on `handle`, then closes it; the body's error wins over the close's.
    async fn with_handle<T>(
        &self,
        handle: String,
        path: &str,
        body: impl std::future::Future<Output = Result<T, SshError>>,
    ) -> Result<T, SshError> {
        let result = body.await;
        let closed = self.close(handle, path).await;
        let value = result?;
        closed?;
        Ok(value)
    }

    /// Reads the whole file at `path` (at most [`MAX_SMALL_FILE`] bytes).
    async fn read_whole(&self, path: &str) -> Result<Vec<u8>, SshError> {
        let handle = self.open(path, OpenFlags::READ, "open").await?;
        self.with_handle(handle.clone(), path, self.read_whole_open(&handle, path))
            .await
    }

    /// The body of [`Inner::read_whole`]: the stat'd size in one pipelined read, then whatever
    /// follows until end of file (in case the file grew meanwhile).
    async fn read_whole_open(&self, handle: &str, path: &str) -> Result<Vec<u8>, SshError> {
        let too_large = || SftpFailure::TooLarge {
            what: "the file",
            limit: format!("{} MiB", MAX_SMALL_FILE >> 20),
        };
        let attrs = self
            .raw
            .fstat(handle)
            .await
            .map_err(|err| self.error("stat", path, err))?;
        let size = attrs.attrs.size.unwrap_or(0);
        if size > MAX_SMALL_FILE {
            return Err(self.error("read", path, too_large()));
        }
        let len = usize::try_from(size).map_err(|_| self.error("read", path, too_large()))?;
        let mut data = vec![0u8; len];
        transfer::read_exact_at(&self.raw, handle, &mut data, 0, self.read_len)
            .await
            .map_err(|err| self.error("read", path, err))?;
        loop {
            let offset = u64::try_from(data.len()).unwrap_or(u64::MAX);
            let request = u32::try_from(self.read_len).unwrap_or(u32::MAX);
            match self.raw.read(handle, offset, request).await {
                Ok(more) if more.data.is_empty() => return Ok(data),
                Ok(more) => {
                    if offset.saturating_add(u64::try_from(more.data.len()).unwrap_or(u64::MAX))
                        > MAX_SMALL_FILE
                    {
                        return Err(self.error("read", path, too_large()));
                    }
                    data.extend_from_slice(&more.data);
                }
                Err(RawError::Status(status)) if status.status_code == StatusCode::Eof => {
                    return Ok(data)
                }
                Err(err) => return Err(self.error("read", path, err)),
            }
        }
    }

    /// Lists the directory at `path`.
    async fn list(&self, path: &str) -> Result<Vec<(String, SftpMetadata)>, SshError> {
        let handle = self
            .raw
            .opendir(path)
            .await
            .map(|handle| handle.handle)
            .map_err(|err| self.error("list the directory", path, err))?;
        let body = async {
            let mut entries = Vec::new();
            loop {
                match self.raw.readdir(handle.as_str()).await {
                    Ok(name) => {
                        for file in name.files {
                            if file.filename == "." || file.filename == ".." {
                                continue;
                            }
                            if entries.len() >= MAX_DIR_ENTRIES {
                                let failure = SftpFailure::TooLarge {
                                    what: "the directory listing",
                                    limit: format!("{MAX_DIR_ENTRIES} entries"),
                                };
                                return Err(self.error("list the directory", path, failure));
                            }
                            let metadata = SftpMetadata::from_attrs(&file.attrs);
                            entries.push((file.filename, metadata));
                        }
                    }
                    Err(RawError::Status(status)) if status.status_code == StatusCode::Eof => {
                        return Ok(entries)
                    }
                    Err(err) => return Err(self.error("list the directory", path, err)),
                }
            }
        };
        self.with_handle(handle.clone(), path, body).await
    }

    /// Creates every missing directory of `path`.
    async fn mkdir_all(&self, path: &str) -> Result<(), SshError> {
        if self.is_dir(path).await? {
            return Ok(());
        }
        let mut prefix = String::new();
        if path.starts_with('/') {
            prefix.push('/');
        }
        for component in path.split('/').filter(|c| !c.is_empty()) {
            if !prefix.is_empty() && !prefix.ends_with('/') {
                prefix.push('/');
            }
            prefix.push_str(component);
            if self.is_dir(&prefix).await? {
                continue;
            }
            let made = self
                .raw
                .mkdir(prefix.as_str(), FileAttributes::empty())
                .await;
            // Another process may have created it meanwhile; only a non-directory is an error.
            if let Err(err) = made {
                if !self.is_dir(&prefix).await? {
                    return Err(self.error("create the directory", &prefix, err));
                }
            }
        }
        Ok(())
    }

    /// Whether `path` is a directory (`false` if it does not exist).
    async fn is_dir(&self, path: &str) -> Result<bool, SshError> {
        match self.raw.stat(path).await {
            Ok(attrs) => Ok(SftpMetadata::from_attrs(&attrs.attrs).is_dir),
            Err(RawError::Status(status)) if status.status_code == StatusCode::NoSuchFile => {
                Ok(false)
            }
            Err(err) => Err(self.error("stat", path, err)),
        }
    }

    /// Renames `from` to `to`, replacing `to` atomically when the server allows it.
    async fn rename(&self, from: &str, to: &str) -> Result<(), SshError> {
        let action = "rename";
        let paths = format!("{from} to {to}");
        if !self.posix_rename {
            return self
                .raw
                .rename(from, to)
                .await
                .map(|_| ())
                .map_err(|err| self.error(action, &paths, err));
        }
        let mut request = Vec::with_capacity(from.len().saturating_add(to.len()).saturating_add(8));
        for text in [from, to] {
            let len = u32::try_from(text.len()).map_err(|_| {
                self.error(
                    action,
                    &paths,
                    SftpFailure::Protocol("path too long".to_owned()),
                )
            })?;
            request.extend_from_slice(&len.to_be_bytes());
            request.extend_from_slice(text.as_bytes());
        }
        match self.raw.extended("posix-rename@openssh.com", request).await {
            Ok(Packet::Status(status)) if status.status_code == StatusCode::Ok => Ok(()),
            Ok(Packet::Status(status)) => Err(self.error(action, &paths, RawError::Status(status))),
            Ok(_) => Err(self.error(action, &paths, RawError::UnexpectedPacket)),
            Err(err) => Err(self.error(action, &paths, err)),
        }
    }
}

impl Sftp {
    /// Opens `path` for reading.
    pub fn open(&self, path: &str) -> Result<SftpFile, SshError> {
        let inner = &self.inner;
        runtime::block_on(async {
            let handle = inner.open(path, OpenFlags::READ, "open").await?;
            match inner.raw.fstat(handle.as_str()).await {
                Ok(attrs) => Ok(SftpFile {
                    inner: Arc::clone(inner),
                    handle,
                    path: path.to_owned(),
                    size: attrs.attrs.size.unwrap_or(0),
                }),
                Err(err) => {
                    let _ = inner.close(handle, path).await;
                    Err(inner.error("stat", path, err))
                }
            }
        })?
    }

    /// `stat(path)`, following symbolic links.
    pub fn metadata(&self, path: &str) -> Result<SftpMetadata, SshError> {
        let inner = &self.inner;
        runtime::block_on(async {
            inner
                .raw
                .stat(path)
                .await
                .map(|attrs| SftpMetadata::from_attrs(&attrs.attrs))
                .map_err(|err| inner.error("stat", path, err))
        })?
    }

    /// Lists the directory `path` (without `.` and `..`), in the server's order.
    pub fn read_dir(&self, path: &str) -> Result<Vec<(String, SftpMetadata)>, SshError> {
        runtime::block_on(self.inner.list(path))?
    }

    /// Creates (or truncates) `path` for writing.
    pub fn create(&self, path: &str) -> Result<SftpWriter, SshError> {
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        let handle = runtime::block_on(self.inner.open(path, flags, "create"))??;
        Ok(SftpWriter {
            inner: Arc::clone(&self.inner),
            handle: Some(handle),
            path: path.to_owned(),
            position: 0,
        })
    }

    /// Renames `from` to `to`, atomically replacing `to` if the server has
    /// `posix-rename@openssh.com` (plain SFTP rename fails when `to` exists).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), SshError> {
        runtime::block_on(self.inner.rename(from, to))?
    }

    /// Renames `from` to `to` only if `to` does not exist: `Ok(false)` when it does. Uses the
    /// version-3 `SSH_FXP_RENAME`, which the protocol defines to fail on an existing target
    /// (OpenSSH's server links, then unlinks), never `posix-rename`.
    pub fn rename_no_replace(&self, from: &str, to: &str) -> Result<bool, SshError> {
        let inner = &self.inner;
        let renamed = runtime::block_on(async { inner.raw.rename(from, to).await.map(|_| ()) })?;
        match renamed {
            Ok(()) => Ok(true),
            Err(err) => match self.metadata(to) {
                Ok(_) => Ok(false),
                Err(_) => Err(inner.error("rename", &format!("{from} to {to}"), err)),
            },
        }
    }

    /// Removes the file `path`.
    pub fn remove(&self, path: &str) -> Result<(), SshError> {
        let inner = &self.inner;
        runtime::block_on(async {
            inner
                .raw
                .remove(path)
                .await
                .map(|_| ())
                .map_err(|err| inner.error("remove", path, err))
        })?
    }

    /// Sets the permission bits of `path` (e.g. 0o755 to make an uploaded program executable).
    pub fn set_mode(&self, path: &str, mode: u32) -> Result<(), SshError> {
        let inner = &self.inner;
        runtime::block_on(async {
            let mut attrs = russh_sftp::protocol::FileAttributes::empty();
            attrs.permissions = Some(mode);
            inner
                .raw
                .setstat(path, attrs)
                .await
                .map(|_| ())
                .map_err(|err| inner.error("set the permissions of", path, err))
        })?
    }

    /// Sets the size of `path` (truncating or extending with a hole).
    pub fn set_len(&self, path: &str, size: u64) -> Result<(), SshError> {
        let inner = &self.inner;
        runtime::block_on(async {
            let mut attrs = russh_sftp::protocol::FileAttributes::empty();
            attrs.size = Some(size);
            inner
                .raw
                .setstat(path, attrs)
                .await
                .map(|_| ())
                .map_err(|err| inner.error("set the size of", path, err))
        })?
    }

    /// Creates `path` and its missing parents; existing directories are fine.
    pub fn mkdir_all(&self, path: &str) -> Result<(), SshError> {
        runtime::block_on(self.inner.mkdir_all(path))?
    }

    /// Reads the whole (small) file `path`; files over 256 MiB are refused.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, SshError> {
        runtime::block_on(self.inner.read_whole(path))?
    }

    /// Writes `data` as the whole content of `path` (created or truncated). Not atomic and not
    /// synced: for durable replacement write a temporary name with [`Sftp::create`], call
    /// [`SftpWriter::fsync`], then [`Sftp::rename`].
    pub fn write(&self, path: &str, data: &[u8]) -> Result<(), SshError> {
        let mut writer = self.create(path)?;
        writer.write_all(data)?;
        writer.close()
    }

    /// Whether the server can make written data durable (`fsync@openssh.com`).
    pub fn has_fsync(&self) -> bool {
        self.inner.fsync
    }
}

impl SftpFile {
    /// The file's size when it was opened.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fills `buf` with the bytes at `offset`; reading past the end of the file is an error.
    ///
    /// Large buffers are read with many requests in flight. Callable from several threads.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SshError> {
        let inner = &self.inner;
        let len = buf.len();
        runtime::block_on(async {
            transfer::read_exact_at(&inner.raw, &self.handle, buf, offset, inner.read_len)
                .await
                .map_err(|failure| {
                    let action = format!("read {len} bytes at offset {offset} of");
                    inner.error(&action, &self.path, failure)
                })
        })?
    }
}

impl Drop for SftpFile {
    fn drop(&mut self) {
        let inner = Arc::clone(&self.inner);
        let handle = std::mem::take(&mut self.handle);
        runtime::spawn_detached(async move {
            let _ = inner.raw.close(handle).await;
        });
    }
}

impl SftpWriter {
    /// The open handle, or an error if the writer was closed.
    fn handle(&self) -> Result<&str, SshError> {
        self.handle.as_deref().ok_or_else(|| {
            self.inner.error(
                "write",
                &self.path,
                SftpFailure::Protocol("the file was already closed".to_owned()),
            )
        })
    }

    /// Writes `data` at `offset` (pipelined).
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<(), SshError> {
        let handle = self.handle()?;
        let inner = &self.inner;
        runtime::block_on(async {
            transfer::write_all_at(&inner.raw, handle, data, offset, inner.write_len)
                .await
                .map_err(|failure| {
                    let action = format!("write {} bytes at offset {offset} of", data.len());
                    inner.error(&action, &self.path, failure)
                })
        })?
    }

    /// Writes `data` after what the previous `write_all` calls wrote.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), SshError> {
        self.write_at(data, self.position)?;
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        self.position = self.position.saturating_add(len);
        Ok(())
    }

    /// Makes the written data durable with `fsync@openssh.com`; a no-op on servers without it
    /// (see [`Sftp::has_fsync`]).
    pub fn fsync(&self) -> Result<(), SshError> {
        let handle = self.handle()?;
        if !self.inner.fsync {
            return Ok(());
        }
        let inner = &self.inner;
        runtime::block_on(async {
            inner
                .raw
                .fsync(handle)
                .await
                .map(|_| ())
                .map_err(|err| inner.error("fsync", &self.path, err))
        })?
    }

    /// Closes the file, reporting errors the server only notices at close.
    pub fn close(mut self) -> Result<(), SshError> {
        match self.handle.take() {
            Some(handle) => runtime::block_on(self.inner.close(handle, &self.path))?,
            None => Ok(()),
        }
    }
}

impl Drop for SftpWriter {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            let inner = Arc::clone(&self.inner);
            runtime::spawn_detached(async move {
                let _ = inner.raw.close(handle).await;
            });
        }
    }
}
