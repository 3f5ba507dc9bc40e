//! The daemon's work, on the engine and this binary's hypervisor code: a job's backup goes
//! through the same code as `vmstash backup --connect` ([`back_up_vms`]), with its lines and
//! progress going to the job ([`JobSink`]) instead of the terminal; check, prune, forget and
//! copy call the engine; a backup the previous daemon left unfinished is repaired like
//! `vmstash vm-repair`.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use chrono::Utc;
use vmstash_repo::backup::{BackupDisk, BackupReport};
use vmstash_repo::check::{check_until, ReadData};
use vmstash_repo::copy::{copy_snapshots, plan_copy};
use vmstash_repo::prune::{prune, Phase, PruneOptions, PruneProgress};
use vmstash_repo::selection::GroupBy;
use vmstash_repo::ChunkDone;
use vmstash_serve::config::{Config, HypervisorDef, JobDef, RepositoryDef};
use vmstash_serve::jobs::model::DiskProgress;
use vmstash_serve::jobs::{Job, JobContext, JobRequest, Level, Work};

use super::global;
use crate::args::{BackupArgs, CbtMode, FilterArgs, Global, LuksArgs, RestoreArgs, RestoreFormat};
use crate::commands::backup::cbt_summary::CbtSummary;
use crate::commands::backup::{back_up_vms, BackupSink};
use crate::commands::forget::{plan_groups, removals, remove_all};
use crate::commands::restore::{restore_snapshot, RestoreSink, Restored};
use crate::commands::vm_repair::repair_libvirt_vm;
use crate::libvirt::hypervisor::Hypervisor;
use crate::libvirt::uri::{ConnectUri, Transport};
use crate::output::{describe, human};
use crate::repo;

/// The daemon's work.
pub struct DaemonWork {
    config: Arc<Config>,
}

impl DaemonWork {
    /// The work for the jobs of `config`.
    pub fn new(config: Arc<Config>) -> DaemonWork {
        DaemonWork { config }
    }

    fn repository(&self, name: Option<&str>) -> Result<&RepositoryDef> {
        let name = name.context("the job names no repository")?;
        self.config
            .repositories
            .get(name)
            .ok_or_else(|| anyhow!("repository {name:?} is no longer configured"))
    }

    fn hypervisor(&self, name: Option<&str>) -> Result<&HypervisorDef> {
        let name = name.context("the job names no hypervisor")?;
        self.config
            .hypervisors
            .get(name)
            .ok_or_else(|| anyhow!("hypervisor {name:?} is no longer configured"))
    }

    fn configured(&self, job: &Job) -> Option<&JobDef> {
        job.job.as_ref().and_then(|n| self.config.jobs.get(n))
    }

    fn dispatch(&self, job: &Job, ctx: &JobContext) -> Result<()> {
        match &job.request {
            JobRequest::Backup { .. } => self.backup(job, ctx),
            JobRequest::Check {
                repository,
                read_data_subset,
            } => self.check(repository, read_data_subset.as_deref(), ctx),
            JobRequest::Prune { repository } => {
                let g = global::for_repository(self.repository(Some(repository))?, None);
                prune_with(&g, &PruneOptions::default(), ctx)
            }
            JobRequest::Forget {
                repository,
                job: name,
                prune,
            } => self.forget(repository, name, *prune, ctx),
            JobRequest::Copy { from, to, vm } => self.copy(from, to, vm.as_deref(), ctx),
            JobRequest::Restore { .. } => self.restore(job, ctx),
        }
    }

    fn backup(&self, job: &Job, ctx: &JobContext) -> Result<()> {
        let repository = self.repository(job.repository.as_deref())?;
        let hypervisor = self.hypervisor(job.hypervisor.as_deref())?;
        let def = self.configured(job);
        let g = global::for_repository(repository, Some(hypervisor));
        let a = BackupArgs {
            disks: Vec::new(),
            connect: Some(hypervisor.uri.clone()),
            vms: job.vms.clone(),
            all: false,
            exclude_disks: def.map(|d| d.exclude_disks.clone()).unwrap_or_default(),
            name: None,
            tags: def.map(|d| d.tags.clone()).unwrap_or_default(),
            time: None,
            no_helper: false,
            cbt: CbtMode::Auto,
            verify_cbt: false,
        };
        let choose = |hv: &Hypervisor| -> Result<Vec<String>> {
            let chosen = match def.filter(|_| job.vms.is_empty()) {
                Some(def) => {
                    let all = hv.virsh.list_all()?;
                    def.vms
                        .select(&all)
                        .into_iter()
                        .map(str::to_owned)
                        .collect()
                }
                None => job.vms.clone(),
            };
            ctx.set_vms(chosen.clone());
            ctx.log(Level::Info, &format!("backing up {}", chosen.join(", ")));
            Ok(chosen)
        };
        let hv = Hypervisor::connect(&hypervisor.uri, &g.ssh_options())?;
        let sink = JobSink {
            ctx,
            delay: crate::failpoint::progress_delay(),
        };
        let outcome = back_up_vms(&g, &hv, &a, &choose, &sink, ctx.cancel_token())?;
        if ctx.cancel_token().is_cancelled() {
            bail!("canceled; every VM was left on its original disks");
        }
        if outcome.failed.is_empty() {
            return Ok(());
        }
        for (name, e) in &outcome.failed {
            ctx.log(Level::Error, &format!("backing up {name}: {}", describe(e)));
        }
        let names: Vec<&str> = outcome.failed.iter().map(|(n, _)| n.as_str()).collect();
        bail!(
            "{} of {} VMs failed: {}",
            outcome.failed.len(),
            outcome.names.len(),
            names.join(", ")
        )
    }

    /// Restores a snapshot into a directory of the daemon's host (below one of
    /// `restore_dirs`) or of a configured hypervisor's (over SFTP), as `vmstash restore` does,
    /// and defines the VM there when asked.
    fn restore(&self, job: &Job, ctx: &JobContext) -> Result<()> {
        let JobRequest::Restore {
            repository,
            snapshot,
            vm,
            hypervisor,
            target,
            define,
            name,
        } = &job.request
        else {
            bail!("not a restore job");
        };
        let hypervisor = hypervisor
            .as_deref()
            .map(|h| self.hypervisor(Some(h)))
            .transpose()?;
        let g = global::for_repository(self.repository(Some(repository))?, hypervisor);
        let (location, connect) = match hypervisor {
            Some(h) => match ConnectUri::parse(&h.uri)?.transport {
                Transport::Ssh { user, host, port } => {
                    let user = user.map_or(String::new(), |u| format!("{u}@"));
                    let port = port.map_or(String::new(), |p| format!(":{p}"));
                    (
                        format!("sftp://{user}{host}{port}{target}"),
                        Some(h.uri.clone()),
                    )
                }
                Transport::Local => {
                    self.check_local_target(target)?;
                    (target.clone(), Some(h.uri.clone()))
                }
            },
            None => {
                self.check_local_target(target)?;
                (target.clone(), None)
            }
        };
        let a = RestoreArgs {
            snapshot: snapshot.clone(),
            target: location,
            filter: FilterArgs {
                vms: vm.iter().cloned().collect(),
                hosts: Vec::new(),
                tags: Vec::new(),
            },
            luks: LuksArgs::default(),
            disks: Vec::new(),
            format: RestoreFormat::Raw,
            zero_lost: false,
            define: *define,
            name: name.clone(),
            connect: connect.filter(|_| *define),
            keep_qemu_passthrough: false,
        };
        let sink = JobRestore { ctx };
        match restore_snapshot(&g, &a, &sink, ctx.cancel_token())? {
            Restored::Done(done) => {
                ctx.log(
                    Level::Info,
                    &format!(
                        "snapshot {} restored ({}): {}",
                        done.id.short(),
                        human(done.bytes),
                        done.files.join(", ")
                    ),
                );
                if let Some(name) = done.defined {
                    ctx.log(Level::Info, &format!("defined VM {name}"));
                }
                Ok(())
            }
            Restored::Canceled { disk, written } => bail!(
                "canceled: the partly written image of disk {disk} was removed{}",
                if written.is_empty() {
                    String::new()
                } else {
                    format!(" (restored before: {})", written.join(", "))
                }
            ),
        }
    }

    /// Refuses a directory of the daemon's host that is not below one of `restore_dirs` once
    /// symbolic links are resolved.
    fn check_local_target(&self, target: &str) -> Result<()> {
        let dirs = &self.config.server.restore_dirs;
        let resolved = resolve_existing_prefix(std::path::Path::new(target));
        let below = dirs.iter().any(|d| {
            let d = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
            resolved.starts_with(d)
        });
        if !below {
            bail!("{target} is not below one of the server's restore_dirs");
        }
        Ok(())
    }

    fn check(&self, repository: &str, subset: Option<&str>, ctx: &JobContext) -> Result<()> {
        let g = global::for_repository(self.repository(Some(repository))?, None);
        let read = subset
            .map(ReadData::parse_subset)
            .transpose()?
            .unwrap_or(ReadData::None);
        let repo = repo::open(&g)?;
        let _lock = repo::lock_for_reading(&g, &repo, "check")?;
        let report = check_until(
            &repo,
            read,
            &|n| ctx.update(|p| p.bytes_scanned += n),
            ctx.cancel_token(),
        )?;
        for w in &report.warnings {
            ctx.log(Level::Warn, w);
        }
        for e in &report.errors {
            ctx.log(Level::Error, e);
        }
        ctx.log(
            Level::Info,
            &format!(
                "checked {} snapshots, {} packs ({} read), {} blobs",
                report.snapshots, report.packs, report.packs_read, report.blobs
            ),
        );
        if !report.is_ok() {
            bail!(
                "the repository has {} errors (see the log); `vmstash repair` may help",
                report.errors.len()
            );
        }
        Ok(())
    }

    /// Applies configured job `name`'s retention to its VMs' snapshots, then prunes when
    /// asked.
    fn forget(
        &self,
        repository: &str,
        name: &str,
        and_prune: bool,
        ctx: &JobContext,
    ) -> Result<()> {
        let def = self
            .config
            .jobs
            .get(name)
            .ok_or_else(|| anyhow!("job {name:?} is no longer configured"))?;
        let retention = def
            .retention
            .as_ref()
            .ok_or_else(|| anyhow!("job {name:?} has no retention"))?;
        let g = global::for_repository(self.repository(Some(repository))?, None);
        let repo = repo::open(&g)?;
        let removed = {
            let _lock = repo::lock_for_writing(&g, &repo, "forget")?;
            let considered: Vec<_> = repo::snapshots_warning_of_damage(&repo)?
                .0
                .snapshots
                .into_iter()
                .filter(|(_, m)| def.vms.contains(&m.name))
                .collect();
            let plans = plan_groups(
                considered,
                &GroupBy::default(),
                &retention.policy,
                Utc::now(),
            );
            let remove = removals(&plans);
            remove_all(&repo, &remove)?
        };
        ctx.log(
            Level::Info,
            &format!("forgot {removed} snapshots by job {name}'s retention"),
        );
        match &retention.prune {
            Some(options) if and_prune => prune_with(&g, options, ctx),
            _ => Ok(()),
        }
    }

    /// Copies the snapshots of repository `from` (those of VM `vm` when given) that `to`
    /// lacks into `to`, as `vmstash copy` does.
    fn copy(&self, from: &str, to: &str, vm: Option<&str>, ctx: &JobContext) -> Result<()> {
        let src_g = global::for_repository(self.repository(Some(from))?, None);
        let dst_g = global::for_repository(self.repository(Some(to))?, None);
        let src = repo::open(&src_g)?;
        let dst = repo::open(&dst_g)?;
        if src.config().id == dst.config().id {
            bail!("repositories {from} and {to} are the same repository; nothing to copy");
        }
        let _src_lock = repo::lock_for_reading(&src_g, &src, "copy")?;
        let _dst_lock = repo::lock_for_writing(&dst_g, &dst, "copy")?;
        let chosen: Vec<_> = repo::snapshots_warning_of_damage(&src)?
            .0
            .snapshots
            .into_iter()
            .filter(|(_, m)| vm.is_none_or(|v| m.name == v))
            .collect();
        let plan = plan_copy(&dst, chosen).context("listing the destination's snapshots")?;
        ctx.update(|p| p.bytes_total = plan.bytes());
        let copied = copy_snapshots(
            &src,
            &dst,
            &plan,
            &|n| ctx.update(|p| p.bytes_scanned += n),
            ctx.cancel_token(),
        )
        .with_context(|| format!("copying snapshots from {from} to {to}"))?;
        for c in &copied {
            ctx.add_snapshot(c.report.id.to_hex());
        }
        ctx.log(
            Level::Info,
            &format!(
                "copied {} snapshot(s) from {from} to {to}; {} were there already",
                copied.len(),
                plan.present.len()
            ),
        );
        Ok(())
    }
}

/// `path` with its longest existing prefix resolved (symbolic links followed) and the rest
/// kept as written.
fn resolve_existing_prefix(path: &std::path::Path) -> std::path::PathBuf {
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        if let Ok(real) = std::fs::canonicalize(at) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                at = parent;
            }
            _ => return path.to_owned(),
        }
    }
}

/// Prunes the repository of `g`, its phases' progress going to the job.
fn prune_with(g: &Global, options: &PruneOptions, ctx: &JobContext) -> Result<()> {
    let repo = repo::open(g)?;
    let report = prune(&repo, options, &JobPrune { ctx }, ctx.cancel_token()).context("pruning")?;
    ctx.log(
        Level::Info,
        &format!(
            "prune: {}",
            serde_json::to_string(&report).unwrap_or_default()
        ),
    );
    Ok(())
}

impl Work for DaemonWork {
    fn run(&self, job: &Job, ctx: &JobContext) -> Result<(), String> {
        self.dispatch(job, ctx).map_err(|e| describe(&e))
    }

    fn repair(&self, job: &Job, ctx: &JobContext) -> Result<(), String> {
        let repair = || -> Result<()> {
            let repository = self.repository(job.repository.as_deref())?;
            let hypervisor = self.hypervisor(job.hypervisor.as_deref())?;
            let g = global::for_repository(repository, Some(hypervisor));
            let hv = Hypervisor::connect(&hypervisor.uri, &g.ssh_options())?;
            let vms = if job.vms.is_empty() {
                // A job of globs that had not listed its VMs yet: every VM it may have touched.
                let all = hv.virsh.list_all()?;
                match self.configured(job) {
                    Some(def) => def
                        .vms
                        .select(&all)
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                    None => Vec::new(),
                }
            } else {
                job.vms.clone()
            };
            for vm in vms {
                repair_libvirt_vm(&hv, &vm, &|m| ctx.log(Level::Info, m))?;
            }
            Ok(())
        };
        repair().map_err(|e| describe(&e))
    }
}

/// A backup's lines and progress, into its job.
struct JobSink<'a> {
    ctx: &'a JobContext,
    /// A test hook's wait at each progress report (see [`crate::failpoint`]).
    delay: Option<std::time::Duration>,
}

impl BackupSink for JobSink<'_> {
    fn say(&self, line: &str) {
        self.ctx.log(Level::Info, line);
    }

    fn starting(&self, name: &str, disks: &[BackupDisk]) {
        self.ctx.update(|p| {
            for d in disks {
                p.bytes_total += d.reader.size();
                p.disks.push(DiskProgress {
                    vm: name.to_owned(),
                    disk: d.name.clone(),
                    bytes_total: d.reader.size(),
                    bytes_scanned: 0,
                });
            }
        });
        let what: Vec<String> = disks
            .iter()
            .map(|d| format!("{} ({})", d.name, human(d.reader.size())))
            .collect();
        self.ctx
            .log(Level::Info, &format!("{name}: reading {}", what.join(", ")));
    }

    fn chunk_done(&self, done: &ChunkDone) {
        if let Some(delay) = self.delay {
            std::thread::sleep(delay);
        }
        // The engine reads a snapshot's disks one after the other: the bytes go to the first
        // disk not yet done.
        self.ctx.update(|p| {
            p.bytes_scanned += done.bytes;
            p.bytes_read += done.read;
            p.bytes_stored += done.stored;
            if done.new {
                p.chunks_new += 1;
            } else if !done.zero {
                p.chunks_known += 1;
            }
            let mut left = done.bytes;
            for d in p
                .disks
                .iter_mut()
                .filter(|d| d.bytes_scanned < d.bytes_total)
            {
                let take = left.min(d.bytes_total - d.bytes_scanned);
                d.bytes_scanned += take;
                left -= take;
                if left == 0 {
                    break;
                }
            }
        });
    }

    /// The counters moved with every chunk (see [`JobSink::chunk_done`]).
    fn ended(&self, _report: Option<&BackupReport>) {}

    fn summary(&self, report: &BackupReport, cbt: Option<&CbtSummary>) {
        self.ctx.add_snapshot(report.id.to_hex());
        let s = &report.manifest.summary;
        self.ctx.log(
            Level::Info,
            &format!(
                "{}: snapshot {} saved: {} disk(s), {}; read {}, added {} ({} new of {} chunks)",
                report.manifest.name,
                report.id.short(),
                report.manifest.disks.len(),
                human(s.disk_bytes),
                human(s.bytes_read),
                human(s.bytes_added),
                s.new_chunks,
                s.chunks
            ),
        );
        if let Some(cbt) = cbt {
            self.ctx.log(Level::Info, &cbt.line());
        }
    }
}

/// A restore's progress and warnings, into its job.
struct JobRestore<'a> {
    ctx: &'a JobContext,
}

impl RestoreSink for JobRestore<'_> {
    fn total(&self, bytes: u64) {
        self.ctx.update(|p| p.bytes_total = bytes);
    }

    fn advance(&self, bytes: u64) {
        self.ctx.update(|p| p.bytes_scanned += bytes);
    }

    fn warn(&self, line: &str) {
        self.ctx.log(Level::Warn, line);
    }
}

/// A prune's phases, into its job's progress.
struct JobPrune<'a> {
    ctx: &'a JobContext,
}

impl PruneProgress for JobPrune<'_> {
    fn start(&self, phase: Phase, total: u64) {
        self.ctx.log(Level::Info, &format!("prune: {phase:?}"));
        self.ctx.update(|p| {
            p.bytes_total = total;
            p.bytes_scanned = 0;
        });
    }

    fn advance(&self, n: u64) {
        self.ctx.update(|p| p.bytes_scanned += n);
    }
}
