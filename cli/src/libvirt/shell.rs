//! Running commands on the hypervisor: here, or over SSH.

use std::process::{Command, Stdio};

use anyhow::{Context, Result};

/// What a command printed and how it ended.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// Exit status; 0 is success.
    pub status: i32,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

/// Where hypervisor commands run.
pub trait Shell: Send + Sync {
    /// Runs `argv` (no shell interpretation on this side).
    fn run(&self, argv: &[&str]) -> Result<CmdOutput>;
    /// Deletes a file on the hypervisor; a missing file is not an error.
    fn remove_file(&self, path: &str) -> Result<()>;
    /// Names of the entries of a directory on the hypervisor.
    fn list_dir(&self, dir: &str) -> Result<Vec<String>>;
    /// "localhost" or user@host:port, for messages.
    fn describe(&self) -> String;
}

/// Commands on this host.
pub struct LocalShell;

impl Shell for LocalShell {
    fn run(&self, argv: &[&str]) -> Result<CmdOutput> {
        let (cmd, args) = argv.split_first().context("empty command")?;
        let out = Command::new(cmd)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {cmd} (is it installed?)"))?;
        Ok(CmdOutput {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn remove_file(&self, path: &str) -> Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {path}"))
            }
            _ => Ok(()),
        }
    }

    fn list_dir(&self, dir: &str) -> Result<Vec<String>> {
        let rd = std::fs::read_dir(dir).with_context(|| format!("listing {dir}"))?;
        Ok(rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }

    fn describe(&self) -> String {
        "localhost".to_string()
    }
}

/// Commands on a hypervisor reached over SSH.
pub struct SshShell {
    session: crate::ssh::SshSession,
}

impl SshShell {
    /// Commands over `session`.
    pub fn new(session: crate::ssh::SshSession) -> SshShell {
        SshShell { session }
    }
}

impl Shell for SshShell {
    fn run(&self, argv: &[&str]) -> Result<CmdOutput> {
        let line = shlex::try_join(argv.iter().copied())
            .map_err(|e| anyhow::anyhow!("cannot quote {argv:?} for the remote shell: {e}"))?;
        let out = self.session.exec(&line)?;
        Ok(CmdOutput {
            status: i32::try_from(out.status).unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn remove_file(&self, path: &str) -> Result<()> {
        let out = self.run(&["rm", "-f", "--", path])?;
        if out.status != 0 {
            anyhow::bail!(
                "removing {path} on {}: {}",
                self.describe(),
                out.stderr.trim()
            );
        }
        Ok(())
    }

    fn list_dir(&self, dir: &str) -> Result<Vec<String>> {
        let out = self.run(&["ls", "-1A", "--", dir])?;
        if out.status != 0 {
            anyhow::bail!(
                "listing {dir} on {}: {}",
                self.describe(),
                out.stderr.trim()
            );
        }
        Ok(out.stdout.lines().map(str::to_string).collect())
    }

    fn describe(&self) -> String {
        self.session.describe()
    }
}
