//! Ctrl-C and SIGTERM: a command that can stop cleanly turns them into a
//! [`CancelToken`](vmstash_repo::CancelToken) the engine polls, and says in one line what
//! happened once it has stopped.

use anyhow::{Context, Result};
use vmstash_repo::CancelToken;

/// A token that SIGINT and SIGTERM cancel (instead of killing the process), for the rest of the
/// process's life.
pub fn cancel_on_signals() -> Result<CancelToken> {
    let cancel = CancelToken::new();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, cancel.flag()).context("installing the signal handler")?;
    }
    Ok(cancel)
}
