//! `vmstash serve`, as a library (spec/SERVE.md): the configuration, when jobs run, the job
//! runner with its guards and history, tokens and tenants, and the HTTPS API with its
//! event stream and dashboard. The work itself (backing up a VM, restoring, checking,
//! pruning, copying) is the engine's, reached through the binary, which hands the daemon
//! an implementation of the work; this crate knows nothing of SSH or libvirt.

pub mod api;
pub mod config;
pub mod daemon;
pub mod error;
pub mod events;
pub mod jobs;
pub mod notify;
pub mod schedule;
pub mod scheduler;
pub mod state_dir;
pub mod tls;
pub mod tokens;

pub use config::Config;
pub use error::{ConfigIssue, ServeError};
pub use schedule::Schedule;
