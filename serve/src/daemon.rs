//! The daemon put together: the state directory, the runner (which fails what a previous
//! daemon left unfinished), a ticker that sends progress every second and starts due
//! schedules, and the HTTPS server. It stops when `shutdown` completes (SIGTERM): running
//! jobs are canceled and waited for — their VMs back on their own disks — and only then does
//! the server close.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::api::{self, ApiState, Catalog};
use crate::config::{Config, Transport};
use crate::error::ServeError;
use crate::events::Events;
use crate::jobs::{Notifier, Runner, RunnerParts, SystemClock, Work};
use crate::scheduler::Scheduler;
use crate::state_dir::StateDir;
use crate::tls;
use crate::tokens::Tokens;

/// How often the ticker runs: progress events at least this often.
const TICK: Duration = Duration::from_secs(1);
/// How long a stopping daemon waits for its jobs to end safely.
const STOP_PATIENCE: Duration = Duration::from_secs(600);

/// What the binary gives the daemon.
pub struct Parts {
    /// The configuration.
    pub config: Arc<Config>,
    /// The work.
    pub work: Arc<dyn Work>,
    /// The repositories' contents for the API.
    pub catalog: Arc<dyn Catalog>,
    /// Who hears of finished jobs.
    pub notifier: Arc<dyn Notifier>,
}

/// Runs the daemon until `shutdown` completes.
pub async fn run(parts: Parts, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let config = Arc::clone(&parts.config);
    let state_dir = config.server.state_dir.clone();
    let state = tokio::task::block_in_place(|| StateDir::open(&state_dir))?;
    // Recovery repairs VMs over SSH, whose client blocks on a runtime of its own: it runs on
    // a plain thread, outside this one's.
    let runner_parts = RunnerParts {
        config: Arc::clone(&config),
        work: parts.work,
        notifier: parts.notifier,
        clock: Arc::new(SystemClock),
        state: state.clone(),
        events: Events::new(),
    };
    let runner = tokio::task::block_in_place(|| {
        std::thread::scope(|s| s.spawn(|| Runner::start(runner_parts)).join())
    })
    .map_err(|_| ServeError::State("recovering interrupted jobs failed (see the log)".into()))??;
    let scheduler = Scheduler::new(runner.clone(), state.clone())?;
    let stop_ticker = Arc::new(AtomicBool::new(false));
    let ticker = {
        let runner = runner.clone();
        let stop = Arc::clone(&stop_ticker);
        std::thread::Builder::new()
            .name("ticker".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    runner.tick_progress();
                    scheduler.tick();
                    std::thread::sleep(TICK);
                }
            })
            .map_err(ServeError::io("starting the ticker thread".into()))?
    };
    let app = api::router(ApiState {
        runner: runner.clone(),
        tokens: Arc::new(Tokens::new(state.clone())),
        catalog: parts.catalog,
        limiter: Arc::new(crate::api::auth::FailureLimiter::new(
            config.server.max_auth_failures,
        )),
    })
    .into_make_service_with_connect_info::<SocketAddr>();
    let handle = axum_server::Handle::new();
    let listen = config.server.listen;
    let server = {
        let handle = handle.clone();
        async move {
            match &config.server.transport {
                Transport::PlainHttp => {
                    tracing::info!("serving plain HTTP on http://{listen} (loopback only)");
                    axum_server::bind(listen)
                        .handle(handle)
                        .serve(app)
                        .await
                        .map_err(ServeError::io(format!("serving on {listen}")))
                }
                transport => {
                    let files = match transport {
                        Transport::Tls { cert, key } => tls::CertFiles {
                            cert: cert.clone(),
                            key: key.clone(),
                        },
                        _ => tokio::task::block_in_place(|| tls::self_signed(&state))?,
                    };
                    let fingerprint = tls::fingerprint(&files.cert)?;
                    tracing::info!(
                        "serving HTTPS on https://{listen}; certificate {} SHA-256 fingerprint {fingerprint}",
                        files.cert.display()
                    );
                    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(
                        &files.cert,
                        &files.key,
                    )
                    .await
                    .map_err(ServeError::io(format!(
                        "loading the certificate {} and key {}",
                        files.cert.display(),
                        files.key.display()
                    )))?;
                    axum_server::bind_rustls(listen, tls)
                        .handle(handle)
                        .serve(app)
                        .await
                        .map_err(ServeError::io(format!("serving on {listen}")))
                }
            }
        }
    };
    tokio::pin!(server);
    let served = tokio::select! {
        // The server could not start (an address in use, a bad certificate).
        served = &mut server => {
            tokio::task::block_in_place(|| runner.shutdown(STOP_PATIENCE));
            served
        }
        () = shutdown => {
            tracing::info!("stopping: canceling running jobs and waiting for them to end safely");
            let left = tokio::task::block_in_place(|| runner.shutdown(STOP_PATIENCE));
            if left > 0 {
                tracing::error!("{left} job(s) did not end within {STOP_PATIENCE:?}; their VMs may need `vmstash vm-repair`");
            }
            handle.graceful_shutdown(Some(Duration::from_secs(2)));
            server.await
        }
    };
    stop_ticker.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    served
}
