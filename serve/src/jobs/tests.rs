//! The runner and the scheduler with a fake clock and fake work (unit tests may use fakes;
//! the daemon's end-to-end tests run the real work).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::*;
use crate::config::Config;
use crate::events::Events;
use crate::scheduler::Scheduler;
use crate::state_dir::StateDir;

const PATIENCE: Duration = Duration::from_secs(10);

struct FakeClock(Mutex<DateTime<Utc>>);

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock")
    }
}

impl FakeClock {
    fn set(&self, t: &str) {
        *self.0.lock().expect("clock") = utc(t);
    }
}

fn utc(t: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(t)
        .expect("time")
        .with_timezone(&Utc)
}

/// Work that runs until released (or canceled), and notes which VMs ran at the same time.
#[derive(Default)]
struct FakeWork {
    open: Mutex<bool>,
    opened: Condvar,
    running: Mutex<Vec<Vec<String>>>,
    overlaps: Mutex<Vec<String>>,
    started: Mutex<Vec<JobId>>,
    repaired: Mutex<Vec<JobId>>,
}

impl FakeWork {
    fn release(&self) {
        *self.open.lock().expect("gate") = true;
        self.opened.notify_all();
    }
}

impl Work for FakeWork {
    fn run(&self, job: &Job, ctx: &JobContext) -> Result<(), String> {
        self.started.lock().expect("started").push(job.id.clone());
        let vms = if job.vms.is_empty() {
            vec!["web1".to_owned(), "web2".to_owned()]
        } else {
            job.vms.clone()
        };
        if job.kind == JobKind::Backup {
            let mut running = self.running.lock().expect("running");
            for vm in &vms {
                if running.iter().any(|r| r.contains(vm)) {
                    self.overlaps.lock().expect("overlaps").push(vm.clone());
                }
            }
            running.push(vms.clone());
            ctx.set_vms(vms.clone());
        }
        ctx.update(|p| p.bytes_total = 100);
        let mut open = self.open.lock().expect("gate");
        while !*open && !ctx.cancel_token().is_cancelled() {
            open = self
                .opened
                .wait_timeout(open, Duration::from_millis(20))
                .expect("gate")
                .0;
        }
        drop(open);
        self.running.lock().expect("running").retain(|r| *r != vms);
        if ctx.cancel_token().is_cancelled() {
            return Err("canceled".into());
        }
        ctx.update(|p| p.bytes_scanned = 100);
        ctx.add_snapshot(format!("snap-of-{}", job.id));
        Ok(())
    }

    fn repair(&self, job: &Job, ctx: &JobContext) -> Result<(), String> {
        ctx.log(Level::Info, "repair: web1 is on its own disks");
        self.repaired.lock().expect("repaired").push(job.id.clone());
        Ok(())
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(JobId, JobState)>>);

impl Notifier for Recorder {
    fn job_finished(&self, job: &Job, _log_tail: &str) {
        self.0
            .lock()
            .expect("notes")
            .push((job.id.clone(), job.state));
    }
}

fn config(dir: &Path, server: &str) -> Arc<Config> {
    let pass = dir.join("pass");
    std::fs::write(&pass, "pw\n").expect("write");
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let text = format!(
        r#"[server]
{server}
[repositories.main]
location = "/srv/main"
password_file = "{pass}"
[repositories.acme]
location = "/srv/acme"
password_file = "{pass}"
tenant = "acme"
[hypervisors.kvm1]
uri = "qemu+ssh://root@kvm1/system"
[hypervisors.acme-kvm]
uri = "qemu+ssh://root@kvm9/system"
tenant = "acme"
[jobs.nightly]
hypervisor = "kvm1"
repository = "main"
vms = ["web*"]
schedule = "30 2 * * *"
time_zone = "Europe/Berlin"
[jobs.nightly.retention]
keep_daily = 7
prune = true
[jobs.web1-hourly]
hypervisor = "kvm1"
repository = "main"
vms = ["web1"]
[jobs.db]
hypervisor = "kvm1"
repository = "main"
vms = ["db1"]
[jobs.acme-all]
hypervisor = "acme-kvm"
repository = "acme"
all = true
"#,
        pass = pass.display()
    );
    Arc::new(Config::parse(&dir.join("vmstash.toml"), &text).expect("valid config"))
}

struct Harness {
    _dir: tempfile::TempDir,
    state: StateDir,
    clock: Arc<FakeClock>,
    work: Arc<FakeWork>,
    notes: Arc<Recorder>,
    runner: Runner,
}

fn harness(server: &str) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    harness_in(dir, server)
}

fn harness_in(dir: tempfile::TempDir, server: &str) -> Harness {
    let state = StateDir::open(&dir.path().join("state")).expect("state");
    let clock = Arc::new(FakeClock(Mutex::new(utc("2026-12-04T12:00:00Z"))));
    let work = Arc::new(FakeWork::default());
    let notes = Arc::new(Recorder::default());
    let runner = Runner::start(RunnerParts {
        config: config(dir.path(), server),
        work: Arc::<FakeWork>::clone(&work),
        notifier: Arc::<Recorder>::clone(&notes),
        clock: Arc::<FakeClock>::clone(&clock),
        state: state.clone(),
        events: Events::new(),
    })
    .expect("runner");
    Harness {
        _dir: dir,
        state,
        clock,
        work,
        notes,
        runner,
    }
}

fn backup_of(job: &str) -> JobRequest {
    JobRequest::Backup {
        job: Some(job.into()),
        hypervisor: None,
        repository: None,
        vms: Vec::new(),
    }
}

fn states(runner: &Runner) -> HashMap<String, JobState> {
    runner
        .list(None)
        .into_iter()
        .map(|j| {
            (
                format!("{:?}:{}", j.kind, j.job.unwrap_or_default()),
                j.state,
            )
        })
        .collect()
}

#[test]
fn two_jobs_on_one_vm_never_overlap() {
    let h = harness("");
    let (a, new_a) = h
        .runner
        .submit(backup_of("nightly"), Trigger::Api, None, None)
        .expect("submit");
    let (b, _) = h
        .runner
        .submit(backup_of("web1-hourly"), Trigger::Api, None, None)
        .expect("submit");
    let (c, _) = h
        .runner
        .submit(backup_of("db"), Trigger::Api, None, None)
        .expect("submit");
    assert!(new_a);
    assert_eq!(a.state, JobState::Running);
    assert_eq!(b.state, JobState::Queued, "web1 is in nightly's selection");
    assert_eq!(c.state, JobState::Running, "db1 is not");
    h.work.release();
    assert!(h.runner.wait_idle(PATIENCE));
    assert!(h.work.overlaps.lock().expect("overlaps").is_empty());
    for id in [&a.id, &b.id, &c.id] {
        let job = h.runner.get(id.as_str(), None).expect("job");
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        assert_eq!(job.snapshots, [format!("snap-of-{id}")]);
    }
    // nightly's retention followed as a forget job, and it ran too.
    let s = states(&h.runner);
    assert_eq!(s.get("Forget:nightly"), Some(&JobState::Succeeded), "{s:?}");
}

#[test]
fn the_global_limit_and_the_repository_guard_hold() {
    let h = harness("max_jobs = 2");
    let check = JobRequest::Check {
        repository: "main".into(),
        read_data_subset: Some("5%".into()),
    };
    let prune = JobRequest::Prune {
        repository: "main".into(),
    };
    let (c, _) = h
        .runner
        .submit(check, Trigger::Api, None, None)
        .expect("check");
    let (p, _) = h
        .runner
        .submit(prune, Trigger::Api, None, None)
        .expect("prune");
    let (d, _) = h
        .runner
        .submit(backup_of("db"), Trigger::Api, None, None)
        .expect("db");
    let (w, _) = h
        .runner
        .submit(backup_of("web1-hourly"), Trigger::Api, None, None)
        .expect("web");
    assert_eq!(c.state, JobState::Running);
    assert_eq!(
        p.state,
        JobState::Queued,
        "one maintenance job per repository"
    );
    assert_eq!(d.state, JobState::Running);
    assert_eq!(w.state, JobState::Queued, "two jobs at most");
    h.work.release();
    assert!(h.runner.wait_idle(PATIENCE));
    assert!(h
        .runner
        .list(None)
        .iter()
        .all(|j| j.state == JobState::Succeeded));
}

#[test]
fn cancel_stops_a_running_job_and_drops_a_queued_one() {
    let h = harness("");
    let (a, _) = h
        .runner
        .submit(backup_of("nightly"), Trigger::Api, None, None)
        .expect("a");
    let (b, _) = h
        .runner
        .submit(backup_of("web1-hourly"), Trigger::Api, None, None)
        .expect("b");
    let b = h.runner.cancel(b.id.as_str(), None).expect("cancel queued");
    assert_eq!(b.state, JobState::Canceled);
    h.runner
        .cancel(a.id.as_str(), None)
        .expect("cancel running");
    assert!(h.runner.wait_idle(PATIENCE));
    let a = h.runner.get(a.id.as_str(), None).expect("a");
    assert_eq!(a.state, JobState::Canceled);
    assert!(h
        .state
        .read_log(&a.id)
        .expect("log")
        .contains("cancel requested"));
    assert_eq!(
        h.runner.cancel(a.id.as_str(), None),
        Err(CancelError::Finished(a.id.to_string(), "canceled"))
    );
    assert!(
        !states(&h.runner).contains_key("Forget:nightly"),
        "no retention after a canceled backup"
    );
    let notes = h.notes.0.lock().expect("notes");
    assert!(
        notes.contains(&(a.id.clone(), JobState::Canceled)),
        "{notes:?}"
    );
}

#[test]
fn an_idempotency_key_returns_the_first_job_and_refuses_another_body() {
    let h = harness("");
    let key = Some(("token1".to_owned(), "k-1".to_owned()));
    let (a, new) = h
        .runner
        .submit(backup_of("db"), Trigger::Api, None, key.clone())
        .expect("first");
    let (again, new_again) = h
        .runner
        .submit(backup_of("db"), Trigger::Api, None, key.clone())
        .expect("again");
    assert!(new && !new_again);
    assert_eq!(a.id, again.id);
    let other = h
        .runner
        .submit(backup_of("nightly"), Trigger::Api, None, key);
    assert!(matches!(other, Err(SubmitError::Conflict(_))), "{other:?}");
    // The same request without a key, while it runs: the running job back.
    let (same, new_same) = h
        .runner
        .submit(backup_of("db"), Trigger::Api, None, None)
        .expect("same");
    assert!(!new_same);
    assert_eq!(same.id, a.id);
    h.work.release();
    assert!(h.runner.wait_idle(PATIENCE));
}

#[test]
fn a_tenant_sees_and_touches_only_its_own() {
    let h = harness("");
    let (global, _) = h
        .runner
        .submit(backup_of("db"), Trigger::Api, None, None)
        .expect("global");
    assert_eq!(h.runner.get(global.id.as_str(), Some("acme")), None);
    assert!(matches!(
        h.runner.cancel(global.id.as_str(), Some("acme")),
        Err(CancelError::NotFound(_))
    ));
    assert!(matches!(
        h.runner
            .submit(backup_of("db"), Trigger::Api, Some("acme"), None),
        Err(SubmitError::NotFound(_))
    ));
    let prune_main = JobRequest::Prune {
        repository: "main".into(),
    };
    assert!(matches!(
        h.runner
            .submit(prune_main, Trigger::Api, Some("acme"), None),
        Err(SubmitError::NotFound(_))
    ));
    let (own, _) = h
        .runner
        .submit(backup_of("acme-all"), Trigger::Api, Some("acme"), None)
        .expect("own");
    assert_eq!(own.tenant.as_deref(), Some("acme"));
    let seen: Vec<JobId> = h
        .runner
        .list(Some("acme"))
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(seen, [own.id]);
    h.work.release();
    assert!(h.runner.wait_idle(PATIENCE));
}

#[test]
fn a_job_the_previous_daemon_left_running_fails_with_its_vms_repaired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = harness_in(dir, "");
    let (a, _) = h
        .runner
        .submit(backup_of("db"), Trigger::Api, None, None)
        .expect("a");
    // The daemon dies (kill -9): its threads are gone, the files stay as they were.
    let Harness { _dir: dir, .. } = h;
    let saved: Job = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!("state/jobs/{}.json", a.id))).expect("file"),
    )
    .expect("job");
    assert_eq!(saved.state, JobState::Running);
    let h = harness_in(dir, "");
    let a = h.runner.get(a.id.as_str(), None).expect("a");
    assert_eq!(a.state, JobState::Failed);
    assert!(
        a.error
            .as_deref()
            .unwrap_or_default()
            .contains("the daemon stopped while the job was running"),
        "{a:?}"
    );
    assert_eq!(
        *h.work.repaired.lock().expect("repaired"),
        std::slice::from_ref(&a.id)
    );
    let log = h.state.read_log(&a.id).expect("log");
    assert!(log.contains("repair: web1 is on its own disks"), "{log}");
    assert!(log.contains("its VMs were repaired"), "{log}");
}

#[test]
fn the_history_keeps_the_newest_finished_jobs() {
    let h = harness("keep_history = 2");
    h.work.release();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let prune = JobRequest::Prune {
            repository: "main".into(),
        };
        let (j, _) = h
            .runner
            .submit(prune, Trigger::Api, None, None)
            .expect("prune");
        assert!(h.runner.wait_idle(PATIENCE));
        ids.push(j.id);
        let t = h.clock.now() + TimeDelta::seconds(1);
        h.clock.set(&t.to_rfc3339());
    }
    let kept: Vec<JobId> = h.runner.list(None).into_iter().map(|j| j.id).collect();
    assert_eq!(kept, [ids[2].clone(), ids[1].clone()]);
    let (on_disk, _) = h.state.load_jobs().expect("load");
    assert_eq!(on_disk.len(), 2);
}

#[test]
fn a_nightly_job_runs_at_its_local_time_across_a_dst_change_and_missed_runs_run_once() {
    let h = harness("");
    h.work.release();
    let scheduler = Scheduler::new(h.runner.clone(), h.state.clone()).expect("scheduler");
    let backups = |runner: &Runner| {
        runner
            .list(None)
            .into_iter()
            .filter(|j| j.kind == JobKind::Backup && j.trigger == Trigger::Schedule)
            .count()
    };
    let tick_at = |t: &str| {
        h.clock.set(t);
        let started = scheduler.tick();
        assert!(h.runner.wait_idle(PATIENCE));
        started.len()
    };
    // Seen on the 27th at noon: nothing before 02:30 Berlin (CET, 01:30Z) on the 28th.
    assert_eq!(tick_at("2026-03-27T12:00:00Z"), 0);
    assert_eq!(tick_at("2026-03-28T01:29:00Z"), 0);
    assert_eq!(tick_at("2026-03-28T01:30:00Z"), 1);
    assert_eq!(tick_at("2026-03-28T01:31:00Z"), 0);
    // The 29th: 02:30 does not exist; it runs when the clock jumps, 03:00 CEST (01:00Z).
    assert_eq!(tick_at("2026-03-29T00:59:00Z"), 0);
    assert_eq!(tick_at("2026-03-29T01:00:00Z"), 1);
    // The 30th: 02:30 CEST is 00:30Z.
    assert_eq!(tick_at("2026-03-30T00:30:00Z"), 1);
    // Down from the 30th to the 2nd: one run when it comes back, not three.
    assert_eq!(tick_at("2026-04-02T09:00:00Z"), 1);
    assert_eq!(tick_at("2026-04-02T09:01:00Z"), 0);
    assert_eq!(backups(&h.runner), 4);
    // Each run's retention followed it.
    let forgets = h
        .runner
        .list(None)
        .into_iter()
        .filter(|j| j.kind == JobKind::Forget)
        .count();
    assert_eq!(forgets, 4);
    // A restarted daemon remembers: no run for times it already ran.
    let again = Scheduler::new(h.runner.clone(), h.state.clone()).expect("scheduler");
    h.clock.set("2026-04-02T10:00:00Z");
    assert!(again.tick().is_empty());
}

#[test]
fn a_schedule_due_while_its_job_still_runs_runs_once_after() {
    let h = harness("");
    let scheduler = Scheduler::new(h.runner.clone(), h.state.clone()).expect("scheduler");
    h.clock.set("2026-12-03T12:00:00Z");
    assert!(scheduler.tick().is_empty());
    h.clock.set("2026-12-04T01:30:00Z");
    assert_eq!(scheduler.tick().len(), 1);
    // Still running two nights later: nothing new while it runs.
    h.clock.set("2026-12-06T01:30:00Z");
    assert!(scheduler.tick().is_empty());
    h.work.release();
    assert!(h.runner.wait_idle(PATIENCE));
    assert_eq!(scheduler.tick().len(), 1, "once, for both missed nights");
    assert!(h.runner.wait_idle(PATIENCE));
    assert!(scheduler.tick().is_empty());
    assert!(h.work.overlaps.lock().expect("overlaps").is_empty());
}
