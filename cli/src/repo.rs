//! Opening the repository the global options name: its storage (local, or SFTP with a local
//! cache of index and snapshot files), and the password.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use vmstash_repo::backend::{Backend, CachedBackend, LocalBackend};
use vmstash_repo::lock::LockGuard;
use vmstash_repo::Repository;
use vmstash_ssh::SshSession;

use crate::args::Global;
use crate::exit::usage;
use crate::location::{Location, KINDS};
use crate::sftp_repo::SftpBackend;
use crate::{failpoint, password};

/// The storage behind `-r`, and, for a remote one, its metadata cache.
pub struct Store {
    /// Where the files are.
    pub backend: Arc<dyn Backend>,
    cache: Option<Arc<CachedBackend<SftpBackend>>>,
}

/// The storage `-r`/`VMSTASH_REPOSITORY` names, connected (for SFTP) but not opened.
pub fn store(g: &Global) -> Result<Store> {
    let Some(repo) = &g.repo else {
        bail!("no repository given: use -r/--repo or set VMSTASH_REPOSITORY ({KINDS})");
    };
    match Location::parse(repo).map_err(|e| usage(format!("-r/--repo: {e:#}")))? {
        Location::Sftp(url) => {
            let session = SshSession::connect(&url.target, &g.ssh_options())
                .with_context(|| format!("connecting to the repository server of {repo}"))?;
            let sftp = SftpBackend::new(&session, &url.path)?;
            let cache = Arc::new(CachedBackend::new(sftp, cache_root()));
            Ok(Store {
                backend: cache.clone(),
                cache: Some(cache),
            })
        }
        Location::Local(dir) => Ok(Store {
            backend: Arc::new(LocalBackend::new(dir)),
            cache: None,
        }),
    }
}

/// `$XDG_CACHE_HOME/vmstash`, else `~/.cache/vmstash`.
fn cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("vmstash")
}

/// Opens the repository named by the global options.
pub fn open(g: &Global) -> Result<Repository> {
    let store = store(g)?;
    let location = store.backend.location();
    let pw = password::current(g)?;
    let repo = Repository::open(failpoint::wrap(store.backend), pw.as_bytes())
        .with_context(|| format!("opening repository {location}"))?;
    if let Some(cache) = store.cache {
        cache.enable(&repo.config().id);
    }
    Ok(repo)
}

/// The repository's snapshots, with a warning on stderr for each file that cannot be read
/// (it is left out, and the rest stay usable); `true` in the second place when there was one.
pub fn snapshots_warning_of_damage(
    repo: &Repository,
) -> Result<(vmstash_repo::repository::SnapshotListing, bool)> {
    let listing = repo.snapshot_listing().context("listing snapshots")?;
    for (name, e) in &listing.damaged {
        eprintln!(
            "vmstash: warning: skipping snapshot {} ({e}); `vmstash check` reports the damage, `vmstash forget {}` removes the file",
            name.get(..8).unwrap_or(name),
            name.get(..8).unwrap_or(name),
        );
    }
    let damaged = !listing.damaged.is_empty();
    Ok((listing, damaged))
}

/// A shared lock for a command that only reads, or none with `--no-lock`. A lock that cannot be
/// written on read-only storage says to use `--no-lock`.
pub fn lock_for_reading(g: &Global, repo: &Repository, command: &str) -> Result<Option<LockGuard>> {
    if g.no_lock {
        return Ok(None);
    }
    match repo.lock(command, false) {
        Ok(guard) => Ok(Some(guard)),
        Err(e) if is_read_only(&e) => Err(anyhow::Error::new(e)
            .context("cannot write a lock: on read-only storage, read without one with --no-lock")),
        Err(e) => Err(e.into()),
    }
}

/// A shared lock for a command that writes; `--no-lock` is refused.
pub fn lock_for_writing(g: &Global, repo: &Repository, command: &str) -> Result<LockGuard> {
    if g.no_lock {
        return Err(usage(format!(
            "--no-lock is for commands that only read; {command} writes to the repository"
        )));
    }
    Ok(repo.lock(command, false)?)
}

/// An exclusive lock, for a command that rewrites what others read (`repair`); `--no-lock` is
/// refused.
pub fn lock_exclusively(g: &Global, repo: &Repository, command: &str) -> Result<LockGuard> {
    if g.no_lock {
        return Err(usage(format!(
            "--no-lock is for commands that only read; {command} writes to the repository"
        )));
    }
    Ok(repo.lock(command, true)?)
}

/// True for a write refused because the storage is read-only (or not ours to write).
fn is_read_only(e: &vmstash_repo::Error) -> bool {
    use rustix::io::Errno;
    let vmstash_repo::Error::Io { source, .. } = e else {
        return false;
    };
    source.raw_os_error().is_some_and(|code| {
        [Errno::ROFS, Errno::ACCESS, Errno::PERM]
            .iter()
            .any(|errno| errno.raw_os_error() == code)
    })
}
