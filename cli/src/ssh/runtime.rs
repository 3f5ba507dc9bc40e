//! The tokio runtime behind the blocking SSH API.
//!
//! russh and russh-sftp are async; the CLI is synchronous and multi-threaded. One process-wide
//! multi-threaded runtime (two worker threads, created on first use and never shut down) runs the
//! connection tasks: the SSH transport (decryption, window management) and each SFTP channel's
//! reader and writer. A blocking call enters it with [`block_on`], which may be called from any
//! number of plain threads at once; the future runs on the calling thread while the connection
//! tasks run on the workers, so several backup threads reading one disk keep both cores busy.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

use super::error::SshError;

/// Worker threads of the runtime: the SSH transport task and the SFTP reader task of a busy
/// channel each keep one core busy at full speed; the callers' threads do the rest.
const WORKER_THREADS: usize = 2;

/// The runtime, created on first use.
static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The process-wide runtime, created if needed.
fn runtime() -> Result<&'static Runtime, SshError> {
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let built = Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
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
pub(super) fn block_on<F: Future>(future: F) -> Result<F::Output, SshError> {
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
pub(super) fn spawn_detached<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    if let Ok(runtime) = runtime() {
        drop(runtime.spawn(future));
    }
}
