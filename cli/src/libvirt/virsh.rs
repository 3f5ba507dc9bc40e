//! virsh, run on the hypervisor: the only way vmstash talks to libvirt, so
//! that a hypervisor needs nothing but sshd and virsh.

use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::shell::{CmdOutput, Shell};

/// How one disk takes part in an external disk-only snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// Guest device name.
    pub target: String,
    /// The overlay file to create, or `None` to leave the disk out.
    pub overlay: Option<String>,
}

/// virsh on one hypervisor.
#[derive(Clone)]
pub struct Virsh {
    shell: Arc<dyn Shell>,
    uri: String,
}

impl Virsh {
    /// virsh through `shell`, connecting to libvirt at `uri` there.
    pub fn new(shell: Arc<dyn Shell>, uri: &str) -> Virsh {
        Virsh {
            shell,
            uri: uri.to_string(),
        }
    }

    /// The shell virsh runs in.
    pub fn shell(&self) -> &Arc<dyn Shell> {
        &self.shell
    }

    fn call(&self, args: &[&str]) -> Result<CmdOutput> {
        let argv = self.argv(args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.shell.run(&argv)
    }

    /// The whole command line of `virsh ARGS` as this runs it, for a caller that leaves it to
    /// be run later (the helper's commands on exit).
    pub fn argv(&self, args: &[&str]) -> Vec<String> {
        ["virsh", "-q", "-c", &self.uri]
            .iter()
            .chain(args)
            .map(|a| (*a).to_owned())
            .collect()
    }

    /// Runs virsh and fails with its message unless it succeeds.
    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.call(args)?;
        if out.status != 0 {
            bail!(
                "virsh {} on {} failed: {}",
                args.join(" "),
                self.shell.describe(),
                out.stderr.trim()
            );
        }
        Ok(out.stdout)
    }

    /// True when a domain of this name is defined.
    pub fn exists(&self, domain: &str) -> Result<bool> {
        Ok(self.call(&["domstate", domain])?.status == 0)
    }

    /// Defines a domain from an XML file on the hypervisor.
    pub fn define(&self, xml_path: &str) -> Result<()> {
        self.ok(&["define", xml_path]).map(|_| ())
    }

    /// Names of every domain, running or not.
    pub fn list_all(&self) -> Result<Vec<String>> {
        Ok(self
            .ok(&["list", "--all", "--name"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// "running", "shut off", "paused", …
    pub fn state(&self, domain: &str) -> Result<String> {
        Ok(self.ok(&["domstate", domain])?.trim().to_string())
    }

    /// The live domain XML (the persistent one for a shut-off domain).
    pub fn dumpxml(&self, domain: &str) -> Result<String> {
        self.ok(&["dumpxml", domain])
    }

    /// Virtual size of a disk in bytes.
    pub fn capacity(&self, domain: &str, target: &str) -> Result<u64> {
        let out = self.ok(&["domblkinfo", domain, target])?;
        out.lines()
            .find_map(|l| l.strip_prefix("Capacity:"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no capacity in `virsh domblkinfo {domain} {target}`: {out}"))
    }

    /// True when the domain's QEMU guest agent answers a ping.
    pub fn agent_responds(&self, domain: &str) -> bool {
        self.call(&[
            "qemu-agent-command",
            domain,
            "--timeout",
            "5",
            r#"{"execute":"guest-ping"}"#,
        ])
        .is_ok_and(|o| o.status == 0)
    }

    /// Creates an external, disk-only, metadata-free snapshot: each disk
    /// with an overlay switches to it, atomically for all disks.
    pub fn snapshot_disks(&self, domain: &str, specs: &[DiskSpec], quiesce: bool) -> Result<()> {
        let mut args: Vec<String> = [
            "snapshot-create-as",
            domain,
            "--name",
            "vmstash",
            "--disk-only",
            "--atomic",
            "--no-metadata",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if quiesce {
            args.push("--quiesce".into());
        }
        for spec in specs {
            args.push("--diskspec".into());
            args.push(match &spec.overlay {
                Some(file) => format!("{},snapshot=external,file={file}", spec.target),
                None => format!("{},snapshot=no", spec.target),
            });
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&refs).map(|_| ())
    }

    /// Merges a disk's active overlay back into its base and switches the
    /// domain back to the base.
    pub fn blockcommit_pivot(&self, domain: &str, target: &str) -> Result<()> {
        self.ok(&[
            "blockcommit",
            domain,
            target,
            "--active",
            "--pivot",
            "--wait",
        ])
        .map(|_| ())
    }

    /// Aborts a block job left running (e.g. a commit interrupted before
    /// its pivot); succeeds when there was none.
    pub fn abort_block_job(&self, domain: &str, target: &str) -> Result<()> {
        let out = self.call(&["blockjob", domain, target, "--abort"])?;
        let none = out.stderr.to_ascii_lowercase();
        let nothing_to_abort = none.contains("no active block job")
            || none.contains("does not have an active block job");
        if out.status != 0 && !nothing_to_abort {
            bail!(
                "virsh blockjob --abort {domain} {target}: {}",
                out.stderr.trim()
            );
        }
        Ok(())
    }

    /// Writes each of `docs` (what, XML) to `/tmp/vmstash-PID-WHAT.xml` on the hypervisor (virsh
    /// reads its XML input from files there), runs `f` with their paths, and deletes them
    /// whatever `f` returned.
    fn with_xml_files<T>(
        &self,
        docs: &[(&str, &str)],
        f: impl FnOnce(&[String]) -> Result<T>,
    ) -> Result<T> {
        let paths: Vec<String> = docs
            .iter()
            .map(|(what, _)| format!("/tmp/vmstash-{}-{what}.xml", std::process::id()))
            .collect();
        let written = docs
            .iter()
            .zip(&paths)
            .try_for_each(|((_, xml), path)| self.shell.write_file(path, xml.as_bytes()));
        let result = written.and_then(|()| f(&paths));
        for path in &paths {
            let _ = self.shell.remove_file(path);
        }
        result
    }

    /// Starts a backup job (`backup-begin`) of `backup_xml`, making the checkpoint described in
    /// `checkpoint_xml` at the same instant.
    pub fn backup_begin(
        &self,
        domain: &str,
        backup_xml: &str,
        checkpoint_xml: &str,
        quiesce: bool,
    ) -> Result<()> {
        let docs = [("backup", backup_xml), ("checkpoint", checkpoint_xml)];
        self.with_xml_files(&docs, |files| {
            self.backup_begin_files(domain, &files[0], &files[1], quiesce)
        })
    }

    /// [`Virsh::backup_begin`] of the XML files on the hypervisor.
    fn backup_begin_files(
        &self,
        domain: &str,
        backup_xml: &str,
        checkpoint_xml: &str,
        quiesce: bool,
    ) -> Result<()> {
        let mut args = vec![
            "backup-begin",
            domain,
            "--backupxml",
            backup_xml,
            "--checkpointxml",
            checkpoint_xml,
        ];
        if quiesce {
            args.push("--quiesce");
        }
        self.ok(&args).map(|_| ())
    }

    /// The XML of the domain's running backup job, or `None` when it has none.
    pub fn backup_job_xml(&self, domain: &str) -> Result<Option<String>> {
        let out = self.call(&["backup-dumpxml", domain])?;
        if out.status == 0 {
            return Ok(Some(out.stdout));
        }
        if out.stderr.contains("no domain backup job") {
            return Ok(None);
        }
        bail!(
            "virsh backup-dumpxml {domain} on {} failed: {}",
            self.shell.describe(),
            out.stderr.trim()
        )
    }

    /// Ends the domain's backup job (`domjobabort`: how a pull-mode job ends; libvirt deletes
    /// its scratch files and socket); succeeds when there is none, also when the domain stopped.
    pub fn end_backup_job(&self, domain: &str) -> Result<()> {
        let out = self.call(&["domjobabort", domain])?;
        // A domain that stopped (QEMU crashed or was killed) has no job either.
        let none = ["no job is active", "no domain job", "domain is not running"]
            .iter()
            .any(|m| out.stderr.contains(m));
        if out.status != 0 && !none {
            bail!(
                "virsh domjobabort {domain} on {} failed: {}",
                self.shell.describe(),
                out.stderr.trim()
            );
        }
        Ok(())
    }

    /// Names of the domain's checkpoints.
    pub fn checkpoints(&self, domain: &str) -> Result<Vec<String>> {
        Ok(self
            .ok(&["checkpoint-list", domain, "--name"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// The checkpoint's XML without the domain's.
    pub fn checkpoint_xml(&self, domain: &str, name: &str) -> Result<String> {
        self.ok(&["checkpoint-dumpxml", domain, name, "--no-domain"])
    }

    /// Deletes a checkpoint (libvirt merges its bitmaps into its parent's); one whose bitmap
    /// is already gone from the image (libvirt then refuses) loses its metadata only.
    pub fn delete_checkpoint(&self, domain: &str, name: &str) -> Result<()> {
        match self.ok(&["checkpoint-delete", domain, name]) {
            Ok(_) => Ok(()),
            Err(e) => self
                .ok(&["checkpoint-delete", domain, name, "--metadata"])
                .map(|_| ())
                .map_err(|_| e),
        }
    }

    /// Registers a checkpoint made outside libvirt, or lost by it, from its XML; with
    /// `validate`, libvirt first checks that the domain's images hold its bitmaps (a running
    /// domain only).
    pub fn redefine_checkpoint(&self, domain: &str, xml: &str, validate: bool) -> Result<()> {
        self.with_xml_files(&[("redefine", xml)], |files| {
            let mut args = vec!["checkpoint-create", domain, &files[0], "--redefine"];
            if validate {
                args.push("--redefine-validate");
            }
            self.ok(&args).map(|_| ())
        })
    }

    /// Drops a checkpoint's metadata only (its bitmaps stay in the images): how a checkpoint of
    /// a shut-off domain goes, which libvirt 9 cannot delete.
    pub fn forget_checkpoint(&self, domain: &str, name: &str) -> Result<()> {
        self.ok(&["checkpoint-delete", domain, name, "--metadata"])
            .map(|_| ())
    }
}
