//! One VM's backup: the context both ways of reading a running VM share (changed-block
//! tracking in [`super::cbt`], or an external snapshot in [`super::vm`]), and reading a VM's
//! disks from their images.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use vmstash_libvirt_xml::{DiskDef, DomainDef};
use vmstash_repo::backup::{BackupDisk, BackupPlan, BackupReport};
use vmstash_repo::snapshot::QemuConfig;
use vmstash_repo::{CancelToken, Repository};

use super::cbt_summary::CbtSummary;
use super::sink::BackupSink;
use super::store;
use crate::args::BackupArgs;
use crate::libvirt::hypervisor::{declared_format, Hypervisor};

/// A VM's configuration as a snapshot keeps it.
pub(super) enum VmConfig {
    /// A libvirt domain's XML.
    Libvirt(String),
    /// A QEMU's command line (and Proxmox configuration), for one backed up through QMP.
    Qemu(QemuConfig),
}

/// One VM's backup: what both ways of reading a running VM (changed-block tracking, or an
/// external snapshot) share.
pub(super) struct VmBackup<'a> {
    pub say: &'a dyn Fn(&str),
    /// Who hears of the snapshot's progress and summary.
    pub sink: &'a dyn BackupSink,
    pub repo: &'a Repository,
    pub hv: &'a Hypervisor,
    pub name: &'a str,
    pub a: &'a BackupArgs,
    /// When this VM's share of the work began, for the summary's duration.
    pub since: Instant,
    pub cancel: &'a CancelToken,
    /// The VM's configuration to store with the snapshot.
    pub config: VmConfig,
    /// The VM's disks (a libvirt domain's, or a QEMU's as `query-block` shows them).
    pub dom: DomainDef,
    /// The disks to back up.
    pub disks: Vec<DiskDef>,
}

impl VmBackup<'_> {
    /// What names the domain in files on the hypervisor: its UUID, else its name.
    pub fn key(&self) -> &str {
        self.dom.uuid.as_deref().unwrap_or(self.name)
    }

    /// Stores the snapshot of `inputs`, taken at `time` (RFC 3339; `None`: now or `--time`),
    /// after `adjust` has had its say on the plan.
    pub fn store(
        &self,
        inputs: Vec<BackupDisk>,
        time: Option<String>,
        adjust: impl FnOnce(&mut BackupPlan),
    ) -> Result<BackupReport> {
        if inputs.is_empty() {
            bail!("{} has no disk with data to back up", self.name);
        }
        let mut plan = BackupPlan::new(self.name, inputs);
        plan.tags = self.a.tags.clone();
        plan.tags.push(format!("host:{}", self.hv.host_label()));
        plan.tags.push(format!("vm:{}", self.name));
        match &self.config {
            VmConfig::Libvirt(xml) => plan.domain_xml = Some(xml.clone()),
            VmConfig::Qemu(config) => plan.qemu = Some(config.clone()),
        }
        plan.started = Some(self.since);
        plan.time = time.or_else(|| self.a.time.clone());
        adjust(&mut plan);
        store(self.sink, self.repo, plan, self.cancel)
    }

    /// Prints the summary of `report`, its duration counted from [`VmBackup::since`].
    pub fn summarise(&self, report: &BackupReport, cbt: Option<&CbtSummary>) {
        let mut report = report.clone();
        report.manifest.summary.duration_seconds = self.since.elapsed().as_secs_f64();
        self.sink.summary(&report, cbt);
    }

    /// Reads every disk from its image (the helper hashing it on the host where it runs).
    pub fn read_images(&self) -> Result<BackupReport> {
        let mut inputs = Vec::new();
        for d in &self.disks {
            let disk = disk_input(self.hv, d, self.repo.config().chunk_size)?;
            if disk.reader.size() == 0 {
                (self.say)(&format!(
                    "{}: skipping disk {} (it is empty: 0 bytes)",
                    self.name, d.target
                ));
            } else {
                inputs.push(disk);
            }
        }
        self.store(inputs, None, |_| {})
    }
}

/// Opens one disk of the domain on the hypervisor, with its chunk ids when the helper runs.
fn disk_input(hv: &Hypervisor, d: &DiskDef, chunk_size: u32) -> Result<BackupDisk> {
    let path = d.source.as_deref().context("disk without a source")?;
    let format = declared_format(d);
    let src = hv
        .open_disk(path, format)
        .with_context(|| format!("opening disk {} ({path})", d.target))?;
    let ids = hv
        .chunk_ids(path, format, chunk_size, src.size())
        .with_context(|| format!("hashing disk {} ({path}) on the host", d.target))?;
    let mut disk = BackupDisk::new(d.target.clone(), path, src);
    disk.known_ids = ids;
    Ok(disk)
}
