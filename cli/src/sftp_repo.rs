//! Repositories on an SFTP server: `-r sftp://user@host[:port]/path` or `-r sftp:user@host:/path`
//! (parsed by [`crate::location`]).
//!
//! The same layout and format as a local repository (spec/FORMAT.md §1).
//! Writes go to a temporary name, are fsynced (`fsync@openssh.com`, when
//! the server has it) and renamed into place (`posix-rename@openssh.com`),
//! so a crash or a dropped connection leaves a whole file or a `.tmp-*`
//! file that no reader looks at. Index and snapshot files are cached
//! locally by [`vmstash_repo::backend::CachedBackend`].

use std::io;

use anyhow::Result;
use vmstash_repo::backend::{
    check_name, is_listed_name, is_temporary_path, relative_path, temporary_dirs, Backend,
    FileKind, TemporaryFile,
};
use vmstash_repo::{Error as RepoError, Id, Result as RepoResult};
use vmstash_ssh::{Sftp, SshError, SshSession};

/// The repository files behind one SFTP channel.
pub struct SftpBackend {
    sftp: Sftp,
    root: String,
    location: String,
}

impl SftpBackend {
    /// Opens an SFTP channel on `session` for the repository at `root`.
    pub fn new(session: &SshSession, root: &str) -> Result<SftpBackend> {
        let sftp = session.sftp()?;
        Ok(SftpBackend {
            sftp,
            root: root.trim_end_matches('/').to_string(),
            location: if root.starts_with('/') {
                format!("sftp://{}{root}", session.describe())
            } else {
                format!("sftp://{}/~/{root}", session.describe())
            },
        })
    }

    /// Writes `bytes` to a temporary file beside `name` (fsynced when the server can), and lets
    /// `publish` give it its final name (§15); the temporary file is removed on failure.
    fn place(
        &self,
        kind: FileKind,
        name: &str,
        bytes: &[u8],
        publish: impl FnOnce(&str) -> RepoResult<()>,
    ) -> RepoResult<()> {
        let dir = self.dir(kind, name);
        let tmp = format!(
            "{dir}/.tmp-{}",
            hex::encode(Id::of(&rand_bytes()).as_bytes())
        );
        let result = (|| -> RepoResult<()> {
            let mut w = match self.sftp.create(&tmp) {
                Err(e) if e.is_not_found() => {
                    self.sftp.mkdir_all(&dir).map_err(io_err(&dir))?;
                    self.sftp.create(&tmp).map_err(io_err(&tmp))?
                }
                other => other.map_err(io_err(&tmp))?,
            };
            w.write_all(bytes).map_err(io_err(&tmp))?;
            if self.sftp.has_fsync() {
                w.fsync().map_err(io_err(&tmp))?;
            }
            w.close().map_err(io_err(&tmp))?;
            publish(&tmp)
        })();
        if result.is_err() {
            let _ = self.sftp.remove(&tmp);
        }
        result
    }

    fn path(&self, kind: FileKind, name: &str) -> String {
        format!("{}/{}", self.root, relative_path(kind, name))
    }

    fn dir(&self, kind: FileKind, name: &str) -> String {
        let p = self.path(kind, name);
        p.rsplit_once('/').map_or(p.clone(), |(d, _)| d.to_string())
    }
}

/// The engine's error for a failed SFTP operation on `path`.
fn io_err(path: &str) -> impl FnOnce(SshError) -> RepoError + '_ {
    move |e| {
        let kind = if e.is_not_found() {
            io::ErrorKind::NotFound
        } else {
            io::ErrorKind::Other
        };
        RepoError::io(path, io::Error::new(kind, e.to_string()))
    }
}

impl Backend for SftpBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn create(&self) -> RepoResult<()> {
        match self.sftp.read_dir(&self.root) {
            Ok(entries) if !entries.is_empty() => {
                return Err(RepoError::AlreadyExists(self.location()))
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(io_err(&self.root)(e)),
        }
        for kind in FileKind::DIRS {
            let d = format!("{}/{}", self.root, kind.dir());
            self.sftp.mkdir_all(&d).map_err(io_err(&d))?;
        }
        for i in 0..=255u8 {
            let d = format!("{}/data/{}", self.root, hex::encode([i]));
            self.sftp.mkdir_all(&d).map_err(io_err(&d))?;
        }
        Ok(())
    }

    fn list(&self, kind: FileKind) -> RepoResult<Vec<(String, u64)>> {
        if kind == FileKind::Config {
            let p = self.path(kind, "config");
            return match self.sftp.metadata(&p) {
                Ok(m) => Ok(vec![("config".to_string(), m.size)]),
                Err(e) if e.is_not_found() => Ok(Vec::new()),
                Err(e) => Err(io_err(&p)(e)),
            };
        }
        let base = format!("{}/{}", self.root, kind.dir());
        let dirs: Vec<String> = if kind == FileKind::Pack {
            (0..=255u8)
                .map(|i| format!("{base}/{}", hex::encode([i])))
                .collect()
        } else {
            vec![base]
        };
        let mut out = Vec::new();
        for d in dirs {
            let entries = match self.sftp.read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(io_err(&d)(e)),
            };
            out.extend(
                entries
                    .into_iter()
                    .filter(|(n, m)| m.is_file && is_listed_name(n))
                    .map(|(n, m)| (n, m.size)),
            );
        }
        out.sort();
        Ok(out)
    }

    fn read(&self, kind: FileKind, name: &str) -> RepoResult<Vec<u8>> {
        check_name(kind, name)?;
        let p = self.path(kind, name);
        self.sftp.read(&p).map_err(io_err(&p))
    }

    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u32) -> RepoResult<Vec<u8>> {
        check_name(kind, name)?;
        let p = self.path(kind, name);
        let file = self.sftp.open(&p).map_err(io_err(&p))?;
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        file.read_at(&mut buf, offset).map_err(io_err(&p))?;
        Ok(buf)
    }

    fn write(&self, kind: FileKind, name: &str, bytes: &[u8]) -> RepoResult<()> {
        check_name(kind, name)?;
        let dest = self.path(kind, name);
        self.place(kind, name, bytes, |tmp| {
            self.sftp.rename(tmp, &dest).map_err(io_err(&dest))
        })
    }

    fn create_new(&self, kind: FileKind, name: &str, bytes: &[u8]) -> RepoResult<bool> {
        check_name(kind, name)?;
        let dest = self.path(kind, name);
        let mut created = true;
        self.place(kind, name, bytes, |tmp| {
            created = self
                .sftp
                .rename_no_replace(tmp, &dest)
                .map_err(io_err(&dest))?;
            if !created {
                let _ = self.sftp.remove(tmp);
            }
            Ok(())
        })?;
        Ok(created)
    }

    fn remove(&self, kind: FileKind, name: &str) -> RepoResult<()> {
        check_name(kind, name)?;
        let p = self.path(kind, name);
        self.sftp.remove(&p).map_err(io_err(&p))
    }

    fn list_temporary(&self) -> RepoResult<Vec<TemporaryFile>> {
        let mut out = Vec::new();
        for dir in temporary_dirs() {
            let d = format!("{}/{dir}", self.root);
            let entries = match self.sftp.read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(io_err(&d)(e)),
            };
            for (name, meta) in entries {
                let path = format!("{dir}/{name}");
                if meta.is_file && is_temporary_path(&path) {
                    let modified = meta.modified.map(|s| {
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(s))
                    });
                    out.push(TemporaryFile { path, modified });
                }
            }
        }
        Ok(out)
    }

    fn remove_temporary(&self, path: &str) -> RepoResult<()> {
        if !is_temporary_path(path) {
            return Err(RepoError::InvalidParameter(format!(
                "{path} is not a temporary file"
            )));
        }
        let p = format!("{}/{path}", self.root);
        self.sftp.remove(&p).map_err(io_err(&p))
    }

    fn modified(&self, kind: FileKind, name: &str) -> RepoResult<Option<std::time::SystemTime>> {
        check_name(kind, name)?;
        let p = self.path(kind, name);
        let meta = self.sftp.metadata(&p).map_err(io_err(&p))?;
        Ok(meta
            .modified
            .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(s))))
    }
}

/// Bytes unique to this write (time, process, counter), hashed into a
/// temporary name.
fn rand_bytes() -> [u8; 32] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(&nanos.to_le_bytes());
    out[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    out[20..28].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use vmstash_repo::backend::conformance::check_backend;
    use vmstash_ssh::{SshOptions, SshSession, SshTarget};
    use vmstash_test_support::Sshd;

    use super::SftpBackend;

    /// The backend contract (spec §1 rule 5) against a private OpenSSH server; skipped without
    /// sshd, except under CI=true.
    #[test]
    fn keeps_the_backend_contract() -> Result<(), Box<dyn std::error::Error>> {
        let Some(sshd) = Sshd::start()? else {
            return Ok(());
        };
        let target = SshTarget {
            user: Some(sshd.user.clone()),
            host: sshd.host().to_owned(),
            port: Some(sshd.port),
        };
        let options = SshOptions {
            identity: Some(sshd.client_key.clone()),
            known_hosts: Some(sshd.known_hosts.clone()),
            accept_new_host_key: false,
            ssh_config: Some(PathBuf::from("/dev/null")),
        };
        let session = SshSession::connect(&target, &options)?;
        let root = sshd.path("repo");
        let backend = SftpBackend::new(&session, &root.to_string_lossy())?;
        check_backend(&backend)?;
        Ok(())
    }
}
