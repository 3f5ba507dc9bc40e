//! What a running job's work reports to: its log, its progress, the VMs it found, and the
//! cancellation it must honour.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use chrono::Utc;
use serde::Serialize;
use vmstash_repo::CancelToken;

use super::model::{rfc3339_text, JobId, Progress};
use crate::events::{EventKind, Events};
use crate::state_dir::StateDir;

/// How much of a new rate sample enters the shown rate (the rest is the old rate), so the
/// rate and ETA do not jump with every read.
const RATE_SMOOTHING: f64 = 0.3;

/// A log line's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// What happened.
    Info,
    /// Something the admin should look at; the job goes on.
    Warn,
    /// Why the job failed.
    Error,
}

#[derive(Serialize)]
struct LogEvent<'a> {
    id: &'a str,
    time: String,
    level: Level,
    message: &'a str,
}

struct Sampled {
    progress: Progress,
    vms: Vec<String>,
    snapshots: Vec<String>,
    last_sample: Option<(Instant, u64)>,
}

/// The context of one running job.
pub struct JobContext {
    id: JobId,
    tenant: Option<String>,
    cancel: CancelToken,
    state: StateDir,
    events: Events,
    sampled: Mutex<Sampled>,
}

impl JobContext {
    pub(crate) fn new(
        id: JobId,
        tenant: Option<String>,
        state: StateDir,
        events: Events,
        progress: Progress,
    ) -> JobContext {
        JobContext {
            id,
            tenant,
            cancel: CancelToken::new(),
            state,
            events,
            sampled: Mutex::new(Sampled {
                progress,
                vms: Vec::new(),
                snapshots: Vec::new(),
                last_sample: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sampled> {
        self.sampled.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The job's id.
    pub fn id(&self) -> &JobId {
        &self.id
    }

    /// Set when the job is to stop: the work polls it (the engine takes it as is) and
    /// stops safely, every VM back on its own disks.
    pub fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }

    /// Writes a line to the job's log (and to the event stream). A log that cannot be
    /// written does not stop the job; the daemon's own log says so.
    pub fn log(&self, level: Level, message: &str) {
        let time = rfc3339_text(&Utc::now());
        let line = format!("{time} {} {message}", level_name(level));
        if let Err(e) = self.state.append_log(&self.id, &line) {
            tracing::warn!(job = %self.id, "cannot write the job's log: {e}");
        }
        self.events.publish(
            EventKind::Log,
            self.id.as_str(),
            self.tenant.as_deref(),
            &LogEvent {
                id: self.id.as_str(),
                time,
                level,
                message,
            },
        );
    }

    /// Changes the job's progress (the next tick sends it).
    pub fn update(&self, change: impl FnOnce(&mut Progress)) {
        change(&mut self.lock().progress);
    }

    /// Records the VMs the job turned out to cover (a backup of globs, once listed).
    pub fn set_vms(&self, vms: Vec<String>) {
        self.lock().vms = vms;
    }

    /// Records a snapshot the job wrote.
    pub fn add_snapshot(&self, id: String) {
        self.lock().snapshots.push(id);
    }

    /// The progress now, with the rate (smoothed) and ETA brought up to date.
    pub(crate) fn sample(&self) -> Progress {
        let mut s = self.lock();
        let now = Instant::now();
        let scanned = s.progress.bytes_scanned;
        if let Some((then, before)) = s.last_sample {
            let seconds = now.duration_since(then).as_secs_f64();
            if seconds > 0.0 {
                let current = approx(scanned.saturating_sub(before)) / seconds;
                s.progress.rate = if s.progress.rate == 0.0 {
                    current
                } else {
                    RATE_SMOOTHING * current + (1.0 - RATE_SMOOTHING) * s.progress.rate
                };
            }
        }
        s.last_sample = Some((now, scanned));
        let left = s.progress.bytes_total.saturating_sub(scanned);
        s.progress.eta_seconds = (s.progress.rate >= 1.0 && s.progress.bytes_total > 0)
            .then(|| whole_seconds(approx(left) / s.progress.rate));
        s.progress.clone()
    }

    /// The VMs and snapshots recorded.
    pub(crate) fn results(&self) -> (Vec<String>, Vec<String>) {
        let s = self.lock();
        (s.vms.clone(), s.snapshots.clone())
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Info => "INFO",
        Level::Warn => "WARN",
        Level::Error => "ERROR",
    }
}

/// A byte count as a float, for rates: an estimate, so rounding above 2^53 does not matter.
#[allow(clippy::as_conversions)]
fn approx(n: u64) -> f64 {
    n as f64
}

/// Seconds rounded up (saturating: `as` from a float to an integer does).
#[allow(clippy::as_conversions)]
fn whole_seconds(seconds: f64) -> u64 {
    seconds.ceil() as u64
}
