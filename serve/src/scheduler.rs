//! Starts configured jobs when their schedules say (spec/SERVE.md §1.1): each tick looks at
//! every schedule (a job's backup, its check) and submits the ones that are due and not
//! still queued or running. What each schedule last started is kept in the state directory,
//! so a daemon that was down runs a missed job once when it comes back, never once per
//! missed time, and a job added to the configuration waits for its first time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use crate::config::Config;
use crate::error::ServeError;
use crate::jobs::{Job, JobId, JobRequest, Runner, Trigger};
use crate::schedule::Schedule;
use crate::state_dir::{ScheduleMemory, StateDir};

/// The key of a job's check schedule (a job's own schedule is keyed by its name, and names
/// have no `/`).
fn check_key(job: &str) -> String {
    format!("{job}/check")
}

struct Memory {
    saved: BTreeMap<String, ScheduleMemory>,
    last_job: HashMap<String, JobId>,
}

/// The scheduler.
pub struct Scheduler {
    runner: Runner,
    state: StateDir,
    memory: Mutex<Memory>,
}

impl Scheduler {
    /// A scheduler for `runner`'s configuration, with what `state` remembers.
    pub fn new(runner: Runner, state: StateDir) -> Result<Scheduler, ServeError> {
        let saved = state.load_schedule()?;
        Ok(Scheduler {
            runner,
            state,
            memory: Mutex::new(Memory {
                saved,
                last_job: HashMap::new(),
            }),
        })
    }

    /// Every schedule of the configuration: its key, its schedule, the request it makes.
    fn schedules(config: &Config) -> Vec<(String, &Schedule, JobRequest)> {
        let mut out = Vec::new();
        for def in config.jobs.values() {
            if let Some(s) = &def.schedule {
                out.push((
                    def.name.clone(),
                    s,
                    JobRequest::Backup {
                        job: Some(def.name.clone()),
                        hypervisor: None,
                        repository: None,
                        vms: Vec::new(),
                    },
                ));
            }
            if let Some(check) = &def.check {
                out.push((
                    check_key(&def.name),
                    &check.schedule,
                    JobRequest::Check {
                        repository: def.repository.clone(),
                        read_data_subset: check.read_data_subset.clone(),
                    },
                ));
            }
        }
        out
    }

    /// Submits the jobs due now; returns them.
    pub fn tick(&self) -> Vec<Job> {
        let now = self.runner.now();
        let config = std::sync::Arc::clone(self.runner.config());
        let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        let before = memory.saved.clone();
        let schedules = Scheduler::schedules(&config);
        memory
            .saved
            .retain(|key, _| schedules.iter().any(|(k, _, _)| k == key));
        let mut started = Vec::new();
        for (key, schedule, request) in schedules {
            let entry = *memory.saved.entry(key.clone()).or_insert(ScheduleMemory {
                seen: now,
                last_started: None,
            });
            let since = entry.last_started.unwrap_or(entry.seen);
            if !schedule.is_due(since, now) {
                continue;
            }
            let busy = memory
                .last_job
                .get(&key)
                .and_then(|id| self.runner.get(id.as_str(), None))
                .is_some_and(|j| !j.state.is_final());
            if busy {
                // Due again while still running: it runs once when it ends.
                continue;
            }
            match self.runner.submit(request, Trigger::Schedule, None, None) {
                Ok((job, _)) => {
                    memory.last_job.insert(key.clone(), job.id.clone());
                    if let Some(m) = memory.saved.get_mut(&key) {
                        m.last_started = Some(now);
                    }
                    started.push(job);
                }
                Err(e) => tracing::warn!("schedule {key}: cannot start its job: {e}"),
            }
        }
        if memory.saved != before {
            if let Err(e) = self.state.save_schedule(&memory.saved) {
                tracing::warn!("cannot save the schedule's state: {e}");
            }
        }
        started
    }
}
