//! The state directory (spec/SERVE.md §2): its version, the job history (a JSON file and a
//! log per job) and the schedule's memory. Every file but the logs is replaced whole: written
//! to a temporary name, fsynced, renamed, so a crash leaves the old or the new version.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ServeError;
use crate::jobs::model::{Job, JobId};

/// The version this daemon writes and reads.
pub const STATE_VERSION: &str = "1";
/// The most of a job's log the API returns (its end).
pub const MAX_LOG_BYTES: u64 = 8 << 20;
/// The largest job file read back (a job is a few KiB).
const MAX_JOB_FILE: u64 = 1 << 20;

/// What the scheduler remembers of one schedule (a job's, or its check's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleMemory {
    /// When the daemon first saw the schedule: it does not run for times before.
    pub seen: DateTime<Utc>,
    /// When its last run was started.
    pub last_started: Option<DateTime<Utc>>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating it, mode 0700) the state directory at `root`; refuses one of another
    /// version.
    pub fn open(root: &Path) -> Result<StateDir, ServeError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root.join("jobs"))
            .map_err(ServeError::io(format!(
                "creating the state directory {}",
                root.display()
            )))?;
        let dir = StateDir {
            root: root.to_owned(),
        };
        let version_file = root.join("state-version");
        match std::fs::read_to_string(&version_file) {
            Ok(v) if v.trim() == STATE_VERSION => {}
            Ok(v) => {
                return Err(ServeError::State(format!(
                    "{} says version {:?}; this vmstash reads version {STATE_VERSION}: run the vmstash that wrote it, or move the directory away",
                    version_file.display(),
                    v.trim()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                dir.replace(&version_file, format!("{STATE_VERSION}\n").as_bytes())?;
            }
            Err(e) => return Err(ServeError::io(format!("reading {}", version_file.display()))(e)),
        }
        Ok(dir)
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Replaces `path` with `bytes` (mode 0600): temporary file, fsync, rename, fsync of the
    /// directory.
    pub fn replace(&self, path: &Path, bytes: &[u8]) -> Result<(), ServeError> {
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(parent) = path.parent() {
                File::open(parent)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(ServeError::io(format!("writing {}", path.display())))
    }

    fn job_file(&self, id: &JobId) -> PathBuf {
        self.root.join("jobs").join(format!("{id}.json"))
    }

    fn log_file(&self, id: &JobId) -> PathBuf {
        self.root.join("jobs").join(format!("{id}.log"))
    }

    /// Saves a job (at each change of its state).
    pub fn save_job(&self, job: &Job) -> Result<(), ServeError> {
        let bytes = serde_json::to_vec_pretty(job).map_err(|e| {
            ServeError::State(format!("job {} cannot be written as JSON: {e}", job.id))
        })?;
        self.replace(&self.job_file(&job.id), &bytes)
    }

    /// Appends a line to a job's log.
    pub fn append_log(&self, id: &JobId, line: &str) -> Result<(), ServeError> {
        let path = self.log_file(id);
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(ServeError::io(format!("opening {}", path.display())))?;
        writeln!(f, "{line}").map_err(ServeError::io(format!("writing {}", path.display())))
    }

    /// A job's log: its last [`MAX_LOG_BYTES`] (empty when it has none yet).
    pub fn read_log(&self, id: &JobId) -> Result<String, ServeError> {
        let path = self.log_file(id);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
            Err(e) => return Err(ServeError::io(format!("opening {}", path.display()))(e)),
        };
        let len = f
            .metadata()
            .map_err(ServeError::io(format!("reading {}", path.display())))?
            .len();
        if len > MAX_LOG_BYTES {
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(len - MAX_LOG_BYTES))
                .map_err(ServeError::io(format!("reading {}", path.display())))?;
        }
        let mut bytes = Vec::new();
        f.take(MAX_LOG_BYTES)
            .read_to_end(&mut bytes)
            .map_err(ServeError::io(format!("reading {}", path.display())))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Removes a job and its log (the history's oldest, beyond `keep_history`).
    pub fn remove_job(&self, id: &JobId) -> Result<(), ServeError> {
        for path in [self.job_file(id), self.log_file(id)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ServeError::io(format!("removing {}", path.display()))(e)),
            }
        }
        Ok(())
    }

    /// Every job of the history, oldest first, and a line for each file that could not be
    /// read (left in place for a person to look at).
    pub fn load_jobs(&self) -> Result<(Vec<Job>, Vec<String>), ServeError> {
        let dir = self.root.join("jobs");
        let entries = std::fs::read_dir(&dir)
            .map_err(ServeError::io(format!("listing {}", dir.display())))?;
        let mut jobs = Vec::new();
        let mut problems = Vec::new();
        for entry in entries {
            let entry = entry.map_err(ServeError::io(format!("listing {}", dir.display())))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let Some(id) = JobId::parse(stem) else {
                continue;
            };
            match read_job(&entry.path(), &id) {
                Ok(job) => jobs.push(job),
                Err(why) => problems.push(format!("{}: {why}", entry.path().display())),
            }
        }
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((jobs, problems))
    }

    fn schedule_file(&self) -> PathBuf {
        self.root.join("schedule.json")
    }

    /// What the scheduler remembers, by schedule key.
    pub fn load_schedule(&self) -> Result<BTreeMap<String, ScheduleMemory>, ServeError> {
        let path = self.schedule_file();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ServeError::State(format!(
                    "{} is damaged ({e}): remove it and every schedule starts afresh (no missed run is made up)",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(ServeError::io(format!("reading {}", path.display()))(e)),
        }
    }

    /// Saves what the scheduler remembers.
    pub fn save_schedule(
        &self,
        memory: &BTreeMap<String, ScheduleMemory>,
    ) -> Result<(), ServeError> {
        let bytes = serde_json::to_vec_pretty(memory)
            .map_err(|e| ServeError::State(format!("the schedule cannot be written: {e}")))?;
        self.replace(&self.schedule_file(), &bytes)
    }
}

/// At most the first `max` bytes of the file at `path`; `None` when there is no such file.
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>, ServeError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ServeError::io(format!("reading {}", path.display()))(e)),
    };
    let mut bytes = Vec::new();
    f.take(max)
        .read_to_end(&mut bytes)
        .map_err(ServeError::io(format!("reading {}", path.display())))?;
    Ok(Some(bytes))
}

fn read_job(path: &Path, id: &JobId) -> Result<Job, String> {
    let bytes = read_bounded(path, MAX_JOB_FILE)
        .map_err(|e| e.to_string())?
        .ok_or("gone while being read")?;
    let job: Job = serde_json::from_slice(&bytes).map_err(|e| format!("damaged: {e}"))?;
    if &job.id != id {
        return Err(format!("holds job {} under another name", job.id));
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::model::{JobKind, JobRequest, JobState, Progress, Trigger};

    pub(crate) fn job(id: &str) -> Job {
        Job {
            id: JobId::parse(id).expect("id"),
            kind: JobKind::Prune,
            state: JobState::Queued,
            trigger: Trigger::Api,
            job: None,
            tenant: None,
            repository: Some("main".into()),
            hypervisor: None,
            vms: Vec::new(),
            created: DateTime::parse_from_rfc3339("2026-12-04T02:00:00Z")
                .expect("time")
                .with_timezone(&Utc),
            started: None,
            finished: None,
            error: None,
            progress: Progress::default(),
            snapshots: Vec::new(),
            request: JobRequest::Prune {
                repository: "main".into(),
            },
        }
    }

    #[test]
    fn jobs_and_logs_survive_a_reopen_and_damage_is_reported_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(dir.path()).expect("open");
        let a = job("j-20261204T020000Z-0001");
        let b = job("j-20261204T010000Z-0002");
        state.save_job(&a).expect("save");
        state.save_job(&b).expect("save");
        state.append_log(&a.id, "one").expect("log");
        state.append_log(&a.id, "two").expect("log");
        std::fs::write(
            dir.path().join("jobs/j-20261204T030000Z-0003.json"),
            b"{broken",
        )
        .expect("write");
        let state = StateDir::open(dir.path()).expect("reopen");
        let (jobs, problems) = state.load_jobs().expect("load");
        assert_eq!(jobs, [b.clone(), a.clone()], "oldest first");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("damaged"), "{problems:?}");
        assert_eq!(state.read_log(&a.id).expect("log"), "one\ntwo\n");
        assert_eq!(state.read_log(&b.id).expect("no log"), "");
        state.remove_job(&a.id).expect("remove");
        assert_eq!(state.load_jobs().expect("load").0, [b]);
    }

    #[test]
    fn a_state_directory_of_another_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("state-version"), "2\n").expect("write");
        let err = StateDir::open(dir.path()).expect_err("version 2");
        assert!(err.to_string().contains("version \"2\""), "{err}");
    }

    #[test]
    fn the_schedule_memory_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(dir.path()).expect("open");
        assert!(state.load_schedule().expect("empty").is_empty());
        let mut memory = BTreeMap::new();
        let now = DateTime::parse_from_rfc3339("2026-12-04T02:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        memory.insert(
            "nightly".to_owned(),
            ScheduleMemory {
                seen: now,
                last_started: Some(now),
            },
        );
        state.save_schedule(&memory).expect("save");
        assert_eq!(state.load_schedule().expect("load"), memory);
        std::fs::write(dir.path().join("schedule.json"), b"[").expect("damage");
        assert!(state.load_schedule().is_err());
    }
}
