//! A remote command with streaming stdin and stdout, for programs that speak a protocol over
//! them (the hashblocks helper, spec/FORMAT.md §19), unlike [`crate::SshSession::exec`] which
//! collects a short command's whole output.

use std::io;
use std::sync::Arc;

use russh::client::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};

use crate::error::SshError;
use crate::runtime;
use crate::session::Connection;

/// Most stderr kept from a streaming command (the rest is dropped; it is only for messages).
const MAX_STDERR: usize = 64 << 10;

/// A command running on the remote host. Its stdout is read through [`io::Read`]; its stdin
/// is written through [`RemoteProcess::write_all`], or through a [`RemoteWriter`] from another
/// thread while one reads (requests pipelined ahead of their answers).
pub struct RemoteProcess {
    /// What the command sends.
    reader: ChannelReadHalf,
    /// Its stdin, shared with the [`RemoteWriter`]s.
    writer: RemoteWriter,
    /// The connection, kept open while the command runs.
    _connection: Arc<Connection>,
    /// `user@host:port`, for messages.
    host: String,
    /// The command line, for messages.
    command: String,
    /// Stdout received but not yet read.
    pending: Vec<u8>,
    /// How much of `pending` was read.
    pending_pos: usize,
    /// Stderr so far (capped).
    stderr: Vec<u8>,
    /// The exit status, once reported.
    status: Option<u32>,
    /// The signal that killed it, once reported.
    signal: Option<String>,
    /// Whether the channel closed (stdout has ended).
    closed: bool,
}

/// Starts `command` on `connection`.
pub(crate) async fn spawn(
    connection: &Arc<Connection>,
    command: &str,
) -> Result<RemoteProcess, SshError> {
    let channel = connection.open_session_channel().await?;
    channel
        .exec(true, command)
        .await
        .map_err(|source| connection.channel_error("start a command", source))?;
    let (reader, writer) = channel.split();
    let host = connection.description.clone();
    Ok(RemoteProcess {
        reader,
        writer: RemoteWriter {
            half: Arc::new(writer),
            host: host.clone(),
            command: command.to_owned(),
        },
        _connection: Arc::clone(connection),
        host,
        command: command.to_owned(),
        pending: Vec::new(),
        pending_pos: 0,
        stderr: Vec::new(),
        status: None,
        signal: None,
        closed: false,
    })
}

impl RemoteProcess {
    /// An error about this command.
    fn error(&self, what: String) -> SshError {
        SshError::Exec {
            host: self.host.clone(),
            command: self.command.clone(),
            what,
        }
    }

    /// Writes `data` to the command's stdin.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), SshError> {
        self.writer.write_all(data)
    }

    /// A handle that writes to the command's stdin from any thread.
    pub fn writer(&self) -> RemoteWriter {
        self.writer.clone()
    }

    /// Closes the command's stdin (it sees end of input).
    pub fn close_stdin(&mut self) -> Result<(), SshError> {
        let sent = runtime::block_on(self.writer.half.eof())?;
        sent.map_err(|e| self.error(format!("cannot close its input: {e}")))
    }

    /// Waits for the next message; returns false once the channel closed.
    fn next_message(&mut self) -> Result<bool, SshError> {
        if self.closed {
            return Ok(false);
        }
        let message = runtime::block_on(self.reader.wait())?;
        match message {
            Some(ChannelMsg::Data { data }) => self.pending.extend_from_slice(&data),
            Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                let room = MAX_STDERR.saturating_sub(self.stderr.len());
                self.stderr
                    .extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => self.status = Some(exit_status),
            Some(ChannelMsg::ExitSignal {
                signal_name,
                error_message,
                ..
            }) => self.signal = Some(format!("{signal_name:?} {error_message}")),
            Some(ChannelMsg::Failure) => {
                return Err(self.error("the server refused to run it".to_owned()))
            }
            Some(ChannelMsg::Close) | None => {
                self.closed = true;
                return Ok(false);
            }
            Some(_) => {}
        }
        Ok(true)
    }

    /// What the command wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_owned()
    }

    /// Waits for the command to end (after its stdout ended); its exit status, or an error if
    /// it was killed or the connection ended first.
    pub fn wait(&mut self) -> Result<u32, SshError> {
        while self.status.is_none() && self.signal.is_none() && self.next_message()? {}
        while self.next_message()? {}
        match (self.status, &self.signal) {
            (Some(status), _) => Ok(status),
            (None, Some(signal)) => Err(self.error(format!(
                "killed by signal {}; stderr: {}",
                signal.trim(),
                self.stderr()
            ))),
            (None, None) => Err(self.error(
                "the connection ended before the command reported an exit status".to_owned(),
            )),
        }
    }
}

impl io::Read for RemoteProcess {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending_pos >= self.pending.len() {
            self.pending.clear();
            self.pending_pos = 0;
            if !self.next_message().map_err(io::Error::other)? {
                return Ok(0);
            }
        }
        let available = self.pending.get(self.pending_pos..).unwrap_or_default();
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.pending_pos += n;
        Ok(n)
    }
}

impl Drop for RemoteProcess {
    fn drop(&mut self) {
        if !self.closed {
            let _ = runtime::block_on(self.writer.half.close());
        }
    }
}

/// Writes to a [`RemoteProcess`]'s stdin; clones share it.
#[derive(Clone)]
pub struct RemoteWriter {
    half: Arc<ChannelWriteHalf<Msg>>,
    /// `user@host:port`, for messages.
    host: String,
    /// The command line, for messages.
    command: String,
}

impl RemoteWriter {
    /// Writes `data` to the command's stdin. Writes from several threads must be ordered by
    /// the caller (each call sends its bytes as a whole).
    pub fn write_all(&self, data: &[u8]) -> Result<(), SshError> {
        let sent = runtime::block_on(self.half.data(data))?;
        sent.map_err(|e| SshError::Exec {
            host: self.host.clone(),
            command: self.command.clone(),
            what: format!("cannot write to its input: {e}"),
        })
    }
}
