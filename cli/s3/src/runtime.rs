//! The tokio runtime behind the blocking backend.
//!
//! opendal is async; the repository engine calls its backend from plain threads (a backup's
//! uploaders, a restore's fetchers, the mount's readers). One process-wide multi-threaded runtime,
//! created on first use, runs the HTTP connections; each blocking call runs its future on the
//! calling thread with [`block_on`], so as many requests are in flight as threads call in.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

/// Worker threads: the HTTP connection tasks only (TLS and body transfer); the work on the data is
/// done on the callers' threads.
const WORKER_THREADS: usize = 2;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// Runs `future` to completion on the calling thread; an error when the runtime cannot start or
/// the caller is itself inside an async task (which would deadlock).
pub(crate) fn block_on<F: Future>(future: F) -> Result<F::Output, String> {
    if Handle::try_current().is_ok() {
        return Err(
            "a blocking S3 call was made from inside an async task; call it from a plain thread"
                .to_owned(),
        );
    }
    let runtime = RUNTIME.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("vmstash-s3")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))
    });
    match runtime {
        Ok(rt) => Ok(rt.block_on(future)),
        Err(e) => Err(e.clone()),
    }
}
