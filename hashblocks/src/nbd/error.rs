//! [`NbdError`]: why an NBD session failed, split by whose fault it is.
//!
//! The split decides what the helper does next: a failed socket ([`NbdError::Io`]) or a server
//! that broke the protocol ([`NbdError::Protocol`]) ends the session; a server that lacks a
//! feature ([`NbdError::Unsupported`]) or refused an option ([`NbdError::Refused`]) means "read
//! the disk another way"; an error the server reported for one command ([`NbdError::Server`])
//! leaves the session usable; [`NbdError::BadRequest`] is a bug or a wrong range in the caller.

use std::io;

/// `NBD_EPERM`: operation not permitted.
pub(super) const NBD_EPERM: u32 = 1;
/// `NBD_EIO`: input/output error.
pub(super) const NBD_EIO: u32 = 5;
/// `NBD_ENOMEM`: cannot allocate memory.
pub(super) const NBD_ENOMEM: u32 = 12;
/// `NBD_EINVAL`: invalid argument.
pub(super) const NBD_EINVAL: u32 = 22;
/// `NBD_ENOSPC`: no space left on device.
pub(super) const NBD_ENOSPC: u32 = 28;
/// `NBD_EOVERFLOW`: value too large.
pub(super) const NBD_EOVERFLOW: u32 = 75;
/// `NBD_ENOTSUP`: operation not supported.
pub(super) const NBD_ENOTSUP: u32 = 95;
/// `NBD_ESHUTDOWN`: the server is shutting down.
pub(super) const NBD_ESHUTDOWN: u32 = 108;

/// Why an NBD handshake or command failed.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The connection failed: connecting, reading or writing the socket, or the server closed it
    /// in the middle of a message.
    #[error("the NBD connection failed: {0}")]
    Io(#[from] io::Error),
    /// The server broke the protocol: a wrong magic or cookie, a length over a limit, a reply
    /// that does not fit the command. The session cannot go on.
    #[error("the NBD server sent a damaged reply: {0}")]
    Protocol(String),
    /// The server speaks NBD but lacks a feature this client needs (fixed newstyle negotiation,
    /// structured replies, metadata contexts, `NBD_OPT_GO`).
    #[error("the NBD server does not support {0}")]
    Unsupported(String),
    /// The server refused an option of the handshake with an `NBD_REP_ERR_*` reply (an unknown
    /// export, TLS required, policy).
    #[error("the NBD server refused {option} with {error}{}", message_suffix(.message))]
    Refused {
        /// The option refused (`NBD_OPT_GO`, …).
        option: &'static str,
        /// The reply's name (`NBD_REP_ERR_UNKNOWN`, …).
        error: &'static str,
        /// The server's message, if it sent one (lossy UTF-8, at most 4096 bytes).
        message: String,
    },
    /// The server failed one command with an NBD error value. The session stays usable.
    #[error(
        "the NBD server failed the command with {} ({errno}){}",
        errno_name(*.errno),
        message_suffix(.message)
    )]
    Server {
        /// The error value (`NBD_EIO` = 5, …).
        errno: u32,
        /// The server's message, if it sent one (lossy UTF-8, at most 4096 bytes).
        message: String,
    },
    /// The caller asked for something this client must not send: a range outside the export or
    /// not aligned to its minimum block size, a context that was not selected, a name too long.
    #[error("invalid NBD request: {0}")]
    BadRequest(String),
}

impl NbdError {
    /// True when the session cannot be used any more after this error (the stream may be out of
    /// step with the protocol).
    pub fn ends_session(&self) -> bool {
        matches!(self, NbdError::Io(_) | NbdError::Protocol(_))
    }
}

/// A [`NbdError::Protocol`] saying `what`.
pub(super) fn protocol(what: impl Into<String>) -> NbdError {
    NbdError::Protocol(what.into())
}

/// A [`NbdError::BadRequest`] saying `what`.
pub(super) fn bad_request(what: impl Into<String>) -> NbdError {
    NbdError::BadRequest(what.into())
}

/// The spec's name of an NBD error value; unknown values are treated as `NBD_EINVAL` by the
/// spec, and named so here.
fn errno_name(errno: u32) -> &'static str {
    match errno {
        NBD_EPERM => "NBD_EPERM",
        NBD_EIO => "NBD_EIO",
        NBD_ENOMEM => "NBD_ENOMEM",
        NBD_EINVAL => "NBD_EINVAL",
        NBD_ENOSPC => "NBD_ENOSPC",
        NBD_EOVERFLOW => "NBD_EOVERFLOW",
        NBD_ENOTSUP => "NBD_ENOTSUP",
        NBD_ESHUTDOWN => "NBD_ESHUTDOWN",
        _ => "an unknown error (as NBD_EINVAL)",
    }
}

/// `": message"`, or nothing for an empty message.
fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}
