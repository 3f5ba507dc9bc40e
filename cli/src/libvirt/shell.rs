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
