//! The tokio runtime behind the blocking SSH API.
//!
//! russh and russh-sftp are async; their callers are synchronous and multi-threaded. One
//! process-wide multi-threaded runtime (one worker thread per available core, from 2 to 8; created
//! on first use and never shut down) runs the connection tasks: the SSH transport (decryption,
//! window management) and each SFTP channel's reader and writer. A blocking call enters it with
//! [`block_on`], which may be called from any number of plain threads at once; the future runs on
//! the calling thread while the connection tasks run on the workers, so several backup threads
//! reading one disk keep the cores busy.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

use crate::error::SshError;

/// The fewest worker threads: the SSH transport task and the SFTP reader task of a busy channel
/// each keep a thread busy at full speed, and with a single worker one would wait for the other to
/// yield. Also the count used when the number of cores cannot be read.
const MIN_WORKER_THREADS: usize = 2;

/// The most worker threads: the workers run only connection tasks (one transport per connection,
/// a reader and a writer per SFTP channel), each of which uses one thread at a time, and a
/// process opens a few connections at most; the work on the data (hashing, compression,
/// encryption into the repository) is done on the callers' threads. On a large host more workers
/// would sit idle, each with its own stack.
const MAX_WORKER_THREADS: usize = 8;

/// Worker threads of the runtime: one per core the process may use, within
/// [`MIN_WORKER_THREADS`]..=[`MAX_WORKER_THREADS`].
fn worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(MIN_WORKER_THREADS, usize::from)
        .clamp(MIN_WORKER_THREADS, MAX_WORKER_THREADS)
}

/// The runtime, created on first use.
static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The process-wide runtime, created if needed.
fn runtime() -> Result<&'static Runtime, SshError> {
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let built = Builder::new_multi_thread()
        .worker_threads(worker_threads())
        .thread_name("vmstash-ssh")
        .enable_io()
        .enable_time()
        .build()
        .map_err(|err| SshError::Runtime {
            what: format!("cannot start the async runtime: {err}"),
        })?;
    // Another thread may have won the race; its runtime is used and ours dropped (outside any
    // async context, which is allowed).
    let _ = RUNTIME.set(built);
    RUNTIME.get().ok_or_else(|| SshError::Runtime {
        what: "the async runtime vanished after it was created".to_owned(),
    })
}

/// Runs `future` to completion on the SSH runtime, blocking the calling thread.
///
/// Fails instead of panicking when called from inside an async task (tokio forbids nesting).
pub(crate) fn block_on<F: Future>(future: F) -> Result<F::Output, SshError> {
    if Handle::try_current().is_ok() {
        return Err(SshError::Runtime {
            what: "a blocking SSH call was made from inside an async task; call it from a plain thread"
                .to_owned(),
        });
    }
    Ok(runtime()?.block_on(future))
}

/// Starts `future` on the SSH runtime without waiting for it (best effort: used to close remote
/// handles from `Drop`, where nothing can be reported anyway).
pub(crate) fn spawn_detached<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    if let Ok(runtime) = runtime() {
        drop(runtime.spawn(future));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_threads_are_bounded() {
        let workers = worker_threads();
        assert!(
            (MIN_WORKER_THREADS..=MAX_WORKER_THREADS).contains(&workers),
            "{workers} workers"
        );
    }

    #[test]
    fn block_on_inside_an_async_task_is_refused() -> Result<(), SshError> {
        let nested = block_on(async { block_on(async {}) })?;
        assert!(
            matches!(nested, Err(SshError::Runtime { .. })),
            "{nested:?}"
        );
        Ok(())
    }
}
