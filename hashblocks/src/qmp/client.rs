//! [`QmpClient`]: one QMP connection: the greeting, capabilities negotiation, then commands one
//! at a time, skipping the events QEMU sends in between.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::wire::{read_message, Message};
use super::QmpError;

/// How long a command may take to be answered, events in between included: QMP commands
/// answer at once (jobs run in the background), so this only ends a hung QEMU or a wait for a
/// socket another client holds.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`QmpClient::await_job_gone`] waits for a cancelled block job to end.
const JOB_GONE_TIMEOUT: Duration = Duration::from_secs(30);

/// The process at the other end of a QMP socket (`SO_PEERCRED`): QEMU itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Its process id.
    pub pid: u32,
    /// The user it runs as (files it must open are given to it).
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

/// A command's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// It succeeded, returning this.
    Return(Value),
    /// QEMU refused it.
    Error {
        /// The error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

impl Reply {
    /// The reply as QEMU wrote it: `{"return": …}` or `{"error": {"class": …, "desc": …}}`.
    pub fn to_json(&self) -> Value {
        match self {
            Reply::Return(value) => json!({ "return": value }),
            Reply::Error { class, desc } => json!({"error": {"class": class, "desc": desc}}),
        }
    }
}

/// A negotiated QMP connection over `S`.
pub struct QmpClient<S: Read + Write> {
    stream: BufReader<S>,
    version: String,
}

impl QmpClient<UnixStream> {
    /// Connects to the monitor socket at `socket` and negotiates; also says who QEMU is.
    pub fn connect(socket: &Path) -> Result<(Self, Option<Peer>), QmpError> {
        let io = |action: &str| {
            let action = format!("{action} {}", socket.display());
            move |source| QmpError::Io { action, source }
        };
        let stream = UnixStream::connect(socket).map_err(io("connecting to"))?;
        stream
            .set_read_timeout(Some(COMMAND_TIMEOUT))
            .map_err(io("setting a timeout on"))?;
        stream
            .set_write_timeout(Some(COMMAND_TIMEOUT))
            .map_err(io("setting a timeout on"))?;
        let peer = rustix::net::sockopt::get_socket_peercred(&stream)
            .ok()
            .map(|cred| Peer {
                pid: u32::try_from(cred.pid.as_raw_nonzero().get()).unwrap_or(0),
                uid: cred.uid.as_raw(),
                gid: cred.gid.as_raw(),
            });
        Ok((QmpClient::negotiate(stream)?, peer))
    }
}

impl<S: Read + Write> QmpClient<S> {
    /// Reads the greeting and enters command mode (`qmp_capabilities`).
    pub fn negotiate(stream: S) -> Result<Self, QmpError> {
        let mut stream = BufReader::new(stream);
        let version = match read_message(&mut stream) {
            Ok(Message::Greeting { version }) => version,
            Ok(other) => {
                return Err(QmpError::Protocol(format!(
                    "{other:?} where the greeting belongs"
                )))
            }
            Err(QmpError::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(QmpError::Timeout("the greeting".to_owned()))
            }
            Err(e) => return Err(e),
        };
        let mut client = QmpClient { stream, version };
        match client.execute(&json!({"execute": "qmp_capabilities"}))? {
            Reply::Return(_) => Ok(client),
            Reply::Error { desc, .. } => Err(QmpError::Refused(desc)),
        }
    }

    /// QEMU's version, as its greeting said (`7.2.22`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Sends `command` (`{"execute": …, "arguments": …}`) and returns its reply.
    pub fn execute(&mut self, command: &Value) -> Result<Reply, QmpError> {
        let name = command
            .get("execute")
            .and_then(Value::as_str)
            .unwrap_or("a command")
            .to_owned();
        let mut line = serde_json::to_vec(command)
            .map_err(|e| QmpError::Protocol(format!("cannot encode {name}: {e}")))?;
        line.push(b'\n');
        let stream = self.stream.get_mut();
        stream
            .write_all(&line)
            .and_then(|()| stream.flush())
            .map_err(|source| QmpError::Io {
                action: format!("sending {name}"),
                source,
            })?;
        let started = Instant::now();
        loop {
            if started.elapsed() > COMMAND_TIMEOUT {
                return Err(QmpError::Timeout(name));
            }
            match read_message(&mut self.stream) {
                Ok(Message::Event { .. }) => {}
                Ok(Message::Return(value)) => return Ok(Reply::Return(value)),
                Ok(Message::Error { class, desc }) => return Ok(Reply::Error { class, desc }),
                Ok(Message::Greeting { .. }) => {
                    return Err(QmpError::Protocol(format!(
                        "a second greeting in answer to {name}"
                    )))
                }
                Err(QmpError::Io { source, .. })
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(QmpError::Timeout(name))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until no block job named `id` is left (`query-block-jobs`): a cancelled job
    /// still holds its nodes until it has ended. `Ok(false)` when it is still there after 30 s.
    pub fn await_job_gone(&mut self, id: &str) -> Result<bool, QmpError> {
        let started = Instant::now();
        loop {
            let jobs = match self.execute(&json!({"execute": "query-block-jobs"}))? {
                Reply::Return(Value::Array(jobs)) => jobs,
                Reply::Return(_) => {
                    return Err(QmpError::Protocol(
                        "query-block-jobs returned no list".to_owned(),
                    ))
                }
                Reply::Error { desc, .. } => return Err(QmpError::Refused(desc)),
            };
            if !jobs.iter().any(|j| j["device"].as_str() == Some(id)) {
                return Ok(true);
            }
            if started.elapsed() > JOB_GONE_TIMEOUT {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
