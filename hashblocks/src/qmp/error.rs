//! [`QmpError`]: why a QMP exchange failed, split by whose fault it is.

use std::io;

/// Why a QMP connection or command failed. A command QEMU refused is not an error of the
/// exchange: it is answered as [`Reply::Error`](super::Reply::Error).
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket failed: connecting, reading, writing, or QEMU closed it mid-exchange.
    #[error("the QMP connection failed while {action}: {source}")]
    Io {
        /// What was being done (`connecting to /run/qemu-server/100.qmp`, …).
        action: String,
        /// The error.
        source: io::Error,
    },
    /// QEMU closed the connection before answering.
    #[error("QEMU closed the QMP connection before answering")]
    Closed,
    /// QEMU sent something that is not QMP: a line over the limit, not JSON, a message of no
    /// known kind, a reply where a greeting belongs.
    #[error("QEMU sent a damaged QMP message: {0}")]
    Protocol(String),
    /// No answer within [`COMMAND_TIMEOUT`](super::COMMAND_TIMEOUT) (QEMU hung, or another
    /// client holds the socket).
    #[error(
        "QEMU did not answer {0} in time (another QMP client holding the socket, or QEMU hung?)"
    )]
    Timeout(String),
    /// QEMU refused `qmp_capabilities`, so no command can be sent.
    #[error("QEMU refused the QMP capabilities negotiation: {0}")]
    Refused(String),
}
