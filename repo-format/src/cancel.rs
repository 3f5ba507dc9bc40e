//! Telling the engine to stop: a [`CancelToken`].
//!
//! The engine polls the token between chunks. A cancelled backup stops with
//! [`Error::Cancelled`](crate::Error::Cancelled) and writes no snapshot; what it stored so far
//! is a state a crash could also leave, which `check` passes and the next backup reuses (spec
//! §15). A signal handler can set the token's flag directly (see [`CancelToken::flag`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::{Error, Result};

/// A shared "please stop" flag; clones share it.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every holder of the token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called (or the flag was set).
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Error::Cancelled)` once cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// The flag itself, for code that can only set an `AtomicBool` (a signal handler
    /// registered with `signal_hook::flag::register`).
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.0)
    }
}
