//! Where `vmstash restore` writes images: a local directory, or a
//! directory on a host reached by SFTP (`sftp://user@host[:port]/path`).
//! Images are written under a temporary name and renamed into place only
//! once complete and verified.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use vmstash_repo::image_file::ImageFile;
use vmstash_repo::restore::ImageSink;
use vmstash_ssh::{Sftp, SftpWriter, SshSession};

use crate::args::Global;
use crate::exit::usage;
use crate::location::{Location, SftpUrl};

/// An image file being written.
pub enum Partial {
    /// A local file, handed to the disk as it is written.
    Local(ImageFile),
    /// A remote file.
    Remote(SftpWriter),
}

/// Restored bytes go straight into the file, local or remote.
impl ImageSink for Partial {
    fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        match self {
            Partial::Local(f) => f.write_at(data, offset),
            Partial::Remote(w) => w.write_at(data, offset).map_err(std::io::Error::other),
        }
    }
}

/// A restore destination.
pub enum Dest {
    /// A local directory.
    Local(PathBuf),
    /// A directory on an SFTP server.
    Remote {
        /// The SSH session (for qemu-img and virsh there).
        session: SshSession,
        /// Its SFTP channel.
        sftp: Sftp,
        /// The parsed URL.
        url: SftpUrl,
    },
}

impl Dest {
    /// Parses `--target` (a directory, `sftp://user@host[:port]/path` or `sftp:user@host:/path`)
    /// and creates the directory.
    pub fn open(g: &Global, target: &str) -> Result<Dest> {
        let target = match Location::parse(target).map_err(|e| usage(format!("--target: {e}")))? {
            Location::Sftp(url) => {
                let session = SshSession::connect(&url.target, &g.ssh_options())?;
                let sftp = session.sftp()?;
                sftp.mkdir_all(&url.path)?;
                return Ok(Dest::Remote { session, sftp, url });
            }
            Location::S3(url) => {
                return Err(usage(format!(
                    "--target: {url} is object storage; restore to a directory (local or sftp://) and copy the images from there"
                )))
            }
            Location::Local(dir) => dir,
        };
        fs::create_dir_all(&target).with_context(|| format!("creating {target}"))?;
        let dir = fs::canonicalize(&target).with_context(|| format!("resolving {target}"))?;
        Ok(Dest::Local(dir))
    }

    /// The absolute path of `name` in the destination, as the host that
    /// holds it sees it.
    pub fn path(&self, name: &str) -> String {
        match self {
            Dest::Local(dir) => dir.join(name).display().to_string(),
            Dest::Remote { url, .. } => format!("{}/{name}", url.path),
        }
    }

    /// How the user sees `name`: a path, or an sftp:// URL.
    pub fn display(&self, name: &str) -> String {
        match self {
            Dest::Local(_) => self.path(name),
            Dest::Remote { session, .. } => {
                format!("sftp://{}{}", session.describe(), self.path(name))
            }
        }
    }

    /// True when `name` exists.
    pub fn exists(&self, name: &str) -> bool {
        match self {
            Dest::Local(dir) => dir.join(name).exists(),
            Dest::Remote { sftp, .. } => sftp.metadata(&self.path(name)).is_ok(),
        }
    }

    /// Creates `name` of `size` bytes (sparse), for writing.
    pub fn create(&self, name: &str, size: u64) -> Result<Partial> {
        let path = self.path(name);
        match self {
            Dest::Local(_) => {
                let f = File::create(&path).with_context(|| format!("creating {path}"))?;
                f.set_len(size).with_context(|| format!("sizing {path}"))?;
                Ok(Partial::Local(ImageFile::new(f)))
            }
            Dest::Remote { sftp, .. } => {
                let w = sftp.create(&path)?;
                sftp.set_len(&path, size)?;
                Ok(Partial::Remote(w))
            }
        }
    }

    /// Makes a written file durable and closes it.
    pub fn finish(&self, partial: Partial) -> Result<()> {
        match partial {
            Partial::Local(f) => Ok(f.sync_and_close()?),
            Partial::Remote(w) => {
                if let Dest::Remote { sftp, .. } = self {
                    if sftp.has_fsync() {
                        w.fsync()?;
                    }
                }
                Ok(w.close()?)
            }
        }
    }

    /// Renames `from` to `to` within the destination.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (f, t) = (self.path(from), self.path(to));
        match self {
            Dest::Local(_) => fs::rename(&f, &t).with_context(|| format!("renaming {f} to {t}")),
            Dest::Remote { sftp, .. } => Ok(sftp.rename(&f, &t)?),
        }
    }

    /// Deletes `name`, if it is there.
    pub fn remove(&self, name: &str) {
        let p = self.path(name);
        match self {
            Dest::Local(_) => {
                let _ = fs::remove_file(p);
            }
            Dest::Remote { sftp, .. } => {
                let _ = sftp.remove(&p);
            }
        }
    }

    /// Writes a small file whole.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let p = self.path(name);
        match self {
            Dest::Local(_) => fs::write(&p, bytes).with_context(|| format!("writing {p}")),
            Dest::Remote { sftp, .. } => Ok(sftp.write(&p, bytes)?),
        }
    }

    /// Converts raw `from` to qcow2 `to` with qemu-img where the files are.
    pub fn convert_to_qcow2(&self, from: &str, to: &str) -> Result<()> {
        let (f, t) = (self.path(from), self.path(to));
        let argv = [
            "qemu-img",
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            f.as_str(),
            t.as_str(),
        ];
        let failed = match self {
            Dest::Local(_) => {
                let status = Command::new(argv[0])
                    .args(&argv[1..])
                    .status()
                    .context("running qemu-img (install qemu-utils to restore as qcow2)")?;
                (!status.success()).then(|| status.to_string())
            }
            Dest::Remote { session, .. } => {
                let line = shlex::try_join(argv).context("quoting the qemu-img command")?;
                let out = session.exec(&line)?;
                (out.status != 0).then(|| String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
        };
        if let Some(why) = failed {
            self.remove(to);
            bail!("qemu-img convert to {} failed: {why}", self.display(to));
        }
        Ok(())
    }

    /// The libvirt URI of the host holding the destination, for --define.
    pub fn hypervisor_uri(&self) -> String {
        match self {
            Dest::Local(_) => "qemu:///system".to_string(),
            Dest::Remote { url, .. } => {
                let user = url
                    .target
                    .user
                    .as_ref()
                    .map_or(String::new(), |u| format!("{u}@"));
                let port = url.target.port.map_or(String::new(), |p| format!(":{p}"));
                format!("qemu+ssh://{user}{}{port}/system", url.target.host)
            }
        }
    }
}
