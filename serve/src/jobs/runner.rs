//! The job runner: one table of every job (running, queued and the history), a thread per
//! running job, guards that keep conflicting jobs apart (see [`super::guards`]), at most
//! `max_jobs` at once, and every change saved to the state directory before it is announced
//! on the event stream.
//!
//! A job's life: [`Runner::submit`] (queued, saved) → dispatch (running, its thread calls
//! [`Work::run`]) → finish (final state, saved; a configured backup's retention and copy
//! queued as follow-up jobs; notifications). At start, jobs the previous daemon left queued
//! or running are failed with the reason, and an interrupted backup's VMs are repaired.

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::context::{JobContext, Level};
use super::guards::{claims, conflict};
use super::model::{Job, JobId, JobKind, JobRequest, JobState, Progress, Trigger};
use super::resolve::{in_scope, resolve, Scope, SubmitError};
use crate::config::Config;
use crate::error::ServeError;
use crate::events::{EventKind, Events};
use crate::state_dir::StateDir;

/// How long an idempotency key is remembered.
const IDEMPOTENCY_HOURS: i64 = 24;

/// The work itself, done by the binary on the engine: the daemon only schedules it.
pub trait Work: Send + Sync + 'static {
    /// Does `job`'s work, reporting through `ctx`. When `ctx.cancel_token()` is set it stops
    /// as soon as it safely can: no VM left on an overlay or in a backup job, nothing
    /// half-written in a repository. The error says what failed and what to do.
    fn run(&self, job: &Job, ctx: &JobContext) -> Result<(), String>;

    /// Puts the VMs of `job`, a backup the previous daemon did not finish, back on their own
    /// disks (no overlay, no backup job). Says what it did in `ctx`'s log.
    fn repair(&self, job: &Job, ctx: &JobContext) -> Result<(), String>;
}

/// Told when a job ends (webhooks, email).
pub trait Notifier: Send + Sync + 'static {
    /// `job` reached a final state; `log_tail` is the end of its log.
    fn job_finished(&self, job: &Job, log_tail: &str);
}

/// The time, from the system or (in tests) from a fake clock.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Why a job was not canceled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CancelError {
    /// No such job (for this tenant).
    #[error("no job {0}")]
    NotFound(String),
    /// It has already ended.
    #[error("job {0} has already ended ({1})")]
    Finished(String, &'static str),
}

struct Table {
    jobs: BTreeMap<JobId, Job>,
    running: BTreeMap<JobId, Arc<JobContext>>,
    threads: Vec<JoinHandle<()>>,
    idempotency: HashMap<(String, String), (JobId, JobRequest, DateTime<Utc>)>,
    stopping: bool,
}

struct Shared {
    config: Arc<Config>,
    work: Arc<dyn Work>,
    notifier: Arc<dyn Notifier>,
    clock: Arc<dyn Clock>,
    state: StateDir,
    events: Events,
    table: Mutex<Table>,
    changed: Condvar,
}

/// The job runner; cheap to clone.
#[derive(Clone)]
pub struct Runner {
    shared: Arc<Shared>,
}

/// Everything the runner works with.
pub struct RunnerParts {
    /// The configuration.
    pub config: Arc<Config>,
    /// The work.
    pub work: Arc<dyn Work>,
    /// Who is told of finished jobs.
    pub notifier: Arc<dyn Notifier>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The state directory.
    pub state: StateDir,
    /// The event stream.
    pub events: Events,
}

impl Runner {
    /// Loads the history, fails the jobs the previous daemon left unfinished (repairing an
    /// interrupted backup's VMs first) and returns the runner with nothing running yet.
    /// Problems with single history files are logged, not fatal.
    pub fn start(parts: RunnerParts) -> Result<Runner, ServeError> {
        let (jobs, problems) = parts.state.load_jobs()?;
        for p in problems {
            tracing::warn!("job history: {p}");
        }
        let runner = Runner {
            shared: Arc::new(Shared {
                config: parts.config,
                work: parts.work,
                notifier: parts.notifier,
                clock: parts.clock,
                state: parts.state,
                events: parts.events,
                table: Mutex::new(Table {
                    jobs: jobs.into_iter().map(|j| (j.id.clone(), j)).collect(),
                    running: BTreeMap::new(),
                    threads: Vec::new(),
                    idempotency: HashMap::new(),
                    stopping: false,
                }),
                changed: Condvar::new(),
            }),
        };
        runner.recover()?;
        Ok(runner)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.shared
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The configuration the runner uses.
    pub fn config(&self) -> &Arc<Config> {
        &self.shared.config
    }

    /// The event stream.
    pub fn events(&self) -> &Events {
        &self.shared.events
    }

    fn recover(&self) -> Result<(), ServeError> {
        let interrupted: Vec<Job> = self
            .lock()
            .jobs
            .values()
            .filter(|j| !j.state.is_final())
            .cloned()
            .collect();
        let now = self.shared.clock.now();
        for mut job in interrupted {
            let ctx = self.context(&job);
            let was = job.state;
            ctx.log(
                Level::Error,
                &format!(
                    "the daemon stopped while this job was {} (restarted at {})",
                    was.name(),
                    super::model::rfc3339_text(&now)
                ),
            );
            if job.kind == JobKind::Backup && was == JobState::Running {
                match catch_unwind(AssertUnwindSafe(|| self.shared.work.repair(&job, &ctx))) {
                    Ok(Ok(())) => ctx.log(
                        Level::Info,
                        "its VMs were repaired: each is back on its own disks",
                    ),
                    Ok(Err(e)) => ctx.log(Level::Error, &format!("repairing its VMs failed: {e}")),
                    Err(_) => ctx.log(
                        Level::Error,
                        "repairing its VMs failed: an internal error (see the daemon's log)",
                    ),
                }
            }
            job.state = JobState::Failed;
            job.finished = Some(now);
            job.error = Some(format!(
                "the daemon stopped while the job was {} (it was restarted at {})",
                was.name(),
                super::model::rfc3339_text(&now)
            ));
            self.shared.state.save_job(&job)?;
            self.announce(&job);
            self.lock().jobs.insert(job.id.clone(), job);
        }
        Ok(())
    }

    fn context(&self, job: &Job) -> Arc<JobContext> {
        Arc::new(JobContext::new(
            job.id.clone(),
            job.tenant.clone(),
            self.shared.state.clone(),
            self.shared.events.clone(),
            job.progress.clone(),
        ))
    }

    /// Saves a job's new state (a failure is logged: the job goes on) and announces it.
    fn record(&self, job: &Job) {
        if let Err(e) = self.shared.state.save_job(job) {
            tracing::warn!(job = %job.id, "cannot save the job: {e}");
        }
        self.announce(job);
    }

    fn announce(&self, job: &Job) {
        self.shared
            .events
            .publish(EventKind::Job, job.id.as_str(), job.tenant.as_deref(), job);
    }

    /// Creates a job for `request` (queued, saved, announced) and starts what can start.
    /// Returns the job and whether it is new: a backup of VMs a queued or running backup
    /// already covers, or a repeated idempotency key (`(scope, key)`), returns that job.
    pub fn submit(
        &self,
        request: JobRequest,
        trigger: Trigger,
        scope: Scope<'_>,
        idempotency: Option<(String, String)>,
    ) -> Result<(Job, bool), SubmitError> {
        let now = self.shared.clock.now();
        let resolved = resolve(&self.shared.config, &request, scope)?;
        let mut table = self.lock();
        if table.stopping {
            return Err(SubmitError::Stopping);
        }
        table
            .idempotency
            .retain(|_, (_, _, at)| now - *at < TimeDelta::hours(IDEMPOTENCY_HOURS));
        if let Some(key) = &idempotency {
            if let Some((id, earlier, _)) = table.idempotency.get(key) {
                if *earlier != request {
                    return Err(SubmitError::Conflict(format!(
                        "idempotency key {:?} was used for another request (job {id})",
                        key.1
                    )));
                }
                if let Some(job) = table.jobs.get(id) {
                    return Ok((job.clone(), false));
                }
            }
        }
        if let Some(existing) = covering_backup(&table, &self.shared.config, &resolved) {
            return Ok((existing, false));
        }
        let mut id = JobId::new(now, rand::random());
        while table.jobs.contains_key(&id) {
            id = JobId::new(now, rand::random());
        }
        let job = Job {
            id: id.clone(),
            kind: request.kind(),
            state: JobState::Queued,
            trigger,
            job: resolved.job,
            tenant: resolved.tenant,
            repository: resolved.repository,
            hypervisor: resolved.hypervisor,
            vms: resolved.vms,
            created: now,
            started: None,
            finished: None,
            error: None,
            progress: Progress::default(),
            snapshots: Vec::new(),
            request: request.clone(),
        };
        self.shared
            .state
            .save_job(&job)
            .map_err(|e| SubmitError::Invalid(format!("the job could not be saved: {e}")))?;
        table.jobs.insert(id.clone(), job.clone());
        if let Some(key) = idempotency {
            table.idempotency.insert(key, (id, request, now));
        }
        self.announce(&job);
        self.dispatch(&mut table);
        let job = table.jobs.get(&job.id).cloned().unwrap_or(job);
        Ok((job, true))
    }

    /// Starts the queued jobs that may start, oldest first.
    fn dispatch(&self, table: &mut Table) {
        if table.stopping {
            return;
        }
        let config = &self.shared.config;
        let queued: Vec<JobId> = table
            .jobs
            .values()
            .filter(|j| j.state == JobState::Queued)
            .map(|j| j.id.clone())
            .collect();
        for id in queued {
            if table.running.len() >= config.server.max_jobs.get() {
                break;
            }
            let Some(job) = table.jobs.get(&id) else {
                continue;
            };
            let wanted = claims(job, config);
            let blocked = table
                .running
                .keys()
                .filter_map(|r| table.jobs.get(r))
                .any(|r| {
                    let held = claims(r, config);
                    wanted
                        .iter()
                        .any(|w| held.iter().any(|h| conflict(w, h, config)))
                });
            if !blocked {
                self.launch(table, &id);
            }
        }
    }

    fn launch(&self, table: &mut Table, id: &JobId) {
        let Some(job) = table.jobs.get_mut(id) else {
            return;
        };
        job.state = JobState::Running;
        job.started = Some(self.shared.clock.now());
        let job = job.clone();
        self.record(&job);
        let ctx = self.context(&job);
        table.running.insert(job.id.clone(), Arc::clone(&ctx));
        let runner = self.clone();
        let handle = std::thread::Builder::new()
            .name(format!("job {}", job.id))
            .spawn(move || {
                let result = catch_unwind(AssertUnwindSafe(|| runner.shared.work.run(&job, &ctx)));
                let result = result.unwrap_or_else(|_| {
                    Err("an internal error stopped the job (see the daemon's log)".to_owned())
                });
                runner.finish(&job.id, &ctx, result);
            });
        match handle {
            Ok(h) => table.threads.push(h),
            Err(e) => {
                table.running.remove(id);
                if let Some(job) = table.jobs.get_mut(id) {
                    job.state = JobState::Failed;
                    job.error = Some(format!("the job's thread could not start: {e}"));
                    job.finished = Some(self.shared.clock.now());
                }
            }
        }
    }

    fn finish(&self, id: &JobId, ctx: &JobContext, result: Result<(), String>) {
        let progress = ctx.sample();
        let (vms, snapshots) = ctx.results();
        match &result {
            Ok(()) => ctx.log(Level::Info, "succeeded"),
            Err(_) if ctx.cancel_token().is_cancelled() => ctx.log(Level::Info, "canceled"),
            Err(e) => ctx.log(Level::Error, e),
        }
        // The job stays among the running until its follow-ups are queued, so that nobody
        // waiting for the runner to be idle sees a gap between the two.
        let mut table = self.lock();
        let Some(job) = table.jobs.get_mut(id) else {
            table.running.remove(id);
            return;
        };
        job.state = match &result {
            Ok(()) => JobState::Succeeded,
            Err(_) if ctx.cancel_token().is_cancelled() => JobState::Canceled,
            Err(_) => JobState::Failed,
        };
        job.error = result.err();
        job.finished = Some(self.shared.clock.now());
        job.progress = progress;
        if !vms.is_empty() {
            job.vms = vms;
        }
        job.snapshots = snapshots;
        let job = job.clone();
        self.record(&job);
        self.trim_history(&mut table);
        drop(table);
        self.follow_up(&job);
        let log = self.shared.state.read_log(&job.id).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(50).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        self.shared.notifier.job_finished(&job, &tail.join("\n"));
        let mut table = self.lock();
        table.running.remove(id);
        self.dispatch(&mut table);
        self.shared.changed.notify_all();
    }

    /// Queues what a configured backup does after it succeeds: forget (and prune) by its
    /// retention, then a copy to its offsite repository.
    fn follow_up(&self, job: &Job) {
        if job.kind != JobKind::Backup || job.state != JobState::Succeeded {
            return;
        }
        let Some(def) = job
            .job
            .as_ref()
            .and_then(|j| self.shared.config.jobs.get(j))
        else {
            return;
        };
        let mut next = Vec::new();
        if let Some(retention) = &def.retention {
            next.push(JobRequest::Forget {
                repository: def.repository.clone(),
                job: def.name.clone(),
                prune: retention.prune.is_some(),
            });
        }
        if let Some(to) = &def.copy_to {
            next.push(JobRequest::Copy {
                from: def.repository.clone(),
                to: to.clone(),
                vm: None,
            });
        }
        for request in next {
            if let Err(e) = self.submit(request, job.trigger, None, None) {
                tracing::warn!(job = %job.id, "cannot queue its follow-up: {e}");
            }
        }
    }

    /// Drops the oldest finished jobs beyond `keep_history`.
    fn trim_history(&self, table: &mut Table) {
        let keep = self.shared.config.server.keep_history;
        let finished: Vec<JobId> = table
            .jobs
            .values()
            .filter(|j| j.state.is_final())
            .map(|j| j.id.clone())
            .collect();
        let excess = finished.len().saturating_sub(keep);
        for id in finished.into_iter().take(excess) {
            table.jobs.remove(&id);
            if let Err(e) = self.shared.state.remove_job(&id) {
                tracing::warn!(job = %id, "cannot remove the job from the history: {e}");
            }
        }
    }

    /// Sends every running job's progress (call at least once a second).
    pub fn tick_progress(&self) {
        let running: Vec<(Arc<JobContext>, Option<String>)> = {
            let table = self.lock();
            table
                .running
                .iter()
                .map(|(id, ctx)| {
                    (
                        Arc::clone(ctx),
                        table.jobs.get(id).and_then(|j| j.tenant.clone()),
                    )
                })
                .collect()
        };
        for (ctx, tenant) in running {
            let progress = ctx.sample();
            self.shared.events.publish(
                EventKind::Progress,
                ctx.id().as_str(),
                tenant.as_deref(),
                &serde_json::json!({ "id": ctx.id().as_str(), "progress": progress }),
            );
            if let Some(job) = self.lock().jobs.get_mut(ctx.id()) {
                job.progress = progress;
            }
        }
    }

    /// One job, if the scope sees it.
    pub fn get(&self, id: &str, scope: Scope<'_>) -> Option<Job> {
        let id = JobId::parse(id)?;
        self.lock()
            .jobs
            .get(&id)
            .filter(|j| visible(j, scope))
            .cloned()
    }

    /// The jobs the scope sees, newest first.
    pub fn list(&self, scope: Scope<'_>) -> Vec<Job> {
        self.lock()
            .jobs
            .values()
            .rev()
            .filter(|j| visible(j, scope))
            .cloned()
            .collect()
    }

    /// A job's log, if the scope sees the job.
    pub fn log(&self, id: &str, scope: Scope<'_>) -> Option<Result<String, ServeError>> {
        let job = self.get(id, scope)?;
        Some(self.shared.state.read_log(&job.id))
    }

    /// Cancels a queued job (at once) or a running one (its work stops safely).
    pub fn cancel(&self, id: &str, scope: Scope<'_>) -> Result<Job, CancelError> {
        let job = self
            .get(id, scope)
            .ok_or_else(|| CancelError::NotFound(id.to_owned()))?;
        let mut table = self.lock();
        if job.state.is_final() {
            return Err(CancelError::Finished(id.to_owned(), job.state.name()));
        }
        if let Some(ctx) = table.running.get(&job.id) {
            ctx.cancel_token().cancel();
            ctx.log(Level::Info, "cancel requested");
            return Ok(job);
        }
        let Some(job) = table.jobs.get_mut(&job.id) else {
            return Err(CancelError::NotFound(id.to_owned()));
        };
        if job.state.is_final() {
            return Err(CancelError::Finished(id.to_owned(), job.state.name()));
        }
        job.state = JobState::Canceled;
        job.finished = Some(self.shared.clock.now());
        let job = job.clone();
        self.record(&job);
        self.shared.changed.notify_all();
        Ok(job)
    }

    /// Stops: no new job starts, queued jobs are canceled, running ones are asked to cancel,
    /// and this waits until they have (their VMs back on their own disks) or `patience` ran
    /// out. Returns how many jobs were still running then.
    pub fn shutdown(&self, patience: Duration) -> usize {
        let queued: Vec<JobId> = {
            let mut table = self.lock();
            table.stopping = true;
            for ctx in table.running.values() {
                ctx.cancel_token().cancel();
                ctx.log(Level::Info, "the daemon is stopping: canceling");
            }
            table
                .jobs
                .values()
                .filter(|j| j.state == JobState::Queued)
                .map(|j| j.id.clone())
                .collect()
        };
        for id in queued {
            let _ = self.cancel(id.as_str(), None);
        }
        let table = self.lock();
        let (table, _) = self
            .shared
            .changed
            .wait_timeout_while(table, patience, |t| !t.running.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
        let left = table.running.len();
        let threads: Vec<JoinHandle<()>> = {
            let mut table = table;
            table.threads.drain(..).collect()
        };
        if left == 0 {
            for t in threads {
                let _ = t.join();
            }
        }
        left
    }

    /// Waits until no job runs or is queued, or `patience` ran out (for tests and shutdown).
    pub fn wait_idle(&self, patience: Duration) -> bool {
        let table = self.lock();
        let (table, _) = self
            .shared
            .changed
            .wait_timeout_while(table, patience, |t| {
                !t.running.is_empty() || t.jobs.values().any(|j| j.state == JobState::Queued)
            })
            .unwrap_or_else(PoisonError::into_inner);
        table.running.is_empty()
    }

    /// Whether a job of `kind` for the configured job `name` is queued or running.
    pub fn is_active(&self, name: &str, kind: JobKind) -> bool {
        self.lock()
            .jobs
            .values()
            .any(|j| !j.state.is_final() && j.kind == kind && j.job.as_deref() == Some(name))
    }

    /// The runner's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.shared.clock.now()
    }
}

fn visible(job: &Job, scope: Scope<'_>) -> bool {
    in_scope(job.tenant.as_deref(), scope)
}

/// A queued or running backup that already covers every VM `wanted` names.
fn covering_backup(
    table: &Table,
    config: &Config,
    wanted: &super::resolve::Resolved,
) -> Option<Job> {
    if wanted.kind != JobKind::Backup {
        return None;
    }
    table
        .jobs
        .values()
        .filter(|j| j.kind == JobKind::Backup && !j.state.is_final())
        .filter(|j| j.hypervisor == wanted.hypervisor)
        .find(|j| match (&wanted.job, &j.job) {
            (Some(a), Some(b)) => a == b,
            (None, _) => {
                !wanted.vms.is_empty()
                    && wanted.vms.iter().all(|vm| {
                        j.vms.contains(vm)
                            || j.job
                                .as_ref()
                                .and_then(|n| config.jobs.get(n))
                                .is_some_and(|d| d.vms.contains(vm))
                    })
            }
            (Some(_), None) => false,
        })
        .cloned()
}
