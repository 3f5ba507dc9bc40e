//! Running commands on the hypervisor: here, or over SSH.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};

use crate::helper::RemoteHelper;

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
    /// Writes `bytes` to the file at `path` (replacing it), for the commands that read their
    /// input from a file (`virsh backup-begin --backupxml FILE`).
    fn write_file(&self, path: &str, bytes: &[u8]) -> Result<()>;
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

    fn write_file(&self, path: &str, bytes: &[u8]) -> Result<()> {
        std::fs::write(path, bytes).with_context(|| format!("writing {path}"))
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

/// Commands on a hypervisor reached over SSH: through the hashblocks helper once it runs there
/// (one channel for all of them), else each over an exec channel of its own, through the user's
/// login shell, whose rc files may take a good part of a second on each call. Files are listed
/// and removed over SFTP.
pub struct SshShell {
    session: vmstash_ssh::SshSession,
    /// The SFTP channel for file operations, opened on first use.
    sftp: std::sync::OnceLock<vmstash_ssh::Sftp>,
    /// The helper, shared with the [`Hypervisor`](crate::libvirt::hypervisor::Hypervisor) that
    /// starts it.
    helper: SharedHelper,
}

/// The hashblocks helper on a host, once started; shared by whatever sends it requests.
pub type SharedHelper = Arc<Mutex<Option<RemoteHelper>>>;

impl SshShell {
    /// Commands over `session`, through `helper` whenever it holds a running helper.
    pub fn new(session: vmstash_ssh::SshSession, helper: SharedHelper) -> SshShell {
        SshShell {
            session,
            sftp: std::sync::OnceLock::new(),
            helper,
        }
    }

    /// Runs `argv` through the helper; `None` when none runs. A helper that fails is dropped and
    /// the command (and every later one) runs over an exec channel of its own: the commands
    /// that put a VM back on its disks after a failed backup must not depend on the helper.
    fn run_by_helper(&self, argv: &[&str]) -> Option<Result<CmdOutput>> {
        let mut helper = self.helper.lock().unwrap_or_else(PoisonError::into_inner);
        let out = match helper.as_mut()?.run(argv) {
            Ok(out) => out,
            Err(_) => {
                *helper = None;
                return None;
            }
        };
        if out.truncated {
            return Some(Err(anyhow::anyhow!(
                "{} on {} printed more than vmstash reads (16 MiB)",
                argv.first().copied().unwrap_or_default(),
                self.session.describe()
            )));
        }
        Some(Ok(CmdOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }))
    }

    /// The SFTP channel, opened if needed.
    fn sftp(&self) -> Result<&vmstash_ssh::Sftp> {
        if let Some(sftp) = self.sftp.get() {
            return Ok(sftp);
        }
        let opened = self.session.sftp()?;
        Ok(self.sftp.get_or_init(|| opened))
    }
}

impl Shell for SshShell {
    fn run(&self, argv: &[&str]) -> Result<CmdOutput> {
        if let Some(out) = self.run_by_helper(argv) {
            return out;
        }
        let line = shlex::try_join(argv.iter().copied())
            .map_err(|e| anyhow::anyhow!("cannot quote {argv:?} for the remote shell: {e}"))?;
        let out = self.session.exec(&line)?;
        Ok(CmdOutput {
            status: i32::try_from(out.status).unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn write_file(&self, path: &str, bytes: &[u8]) -> Result<()> {
        let mut file = self.sftp()?.create(path)?;
        file.write_all(bytes)?;
        Ok(file.close()?)
    }

    fn remove_file(&self, path: &str) -> Result<()> {
        match self.sftp()?.remove(path) {
            Err(vmstash_ssh::SshError::Sftp {
                failure: vmstash_ssh::SftpFailure::NotFound,
                ..
            }) => Ok(()),
            other => Ok(other?),
        }
    }

    fn list_dir(&self, dir: &str) -> Result<Vec<String>> {
        Ok(self
            .sftp()?
            .read_dir(dir)?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    fn describe(&self) -> String {
        self.session.describe()
    }
}
