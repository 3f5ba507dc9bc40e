//! Opening the repository the global options name: its storage (local, or SFTP with a local
//! cache of index and snapshot files), and the password.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use vmstash_repo::backend::{Backend, CachedBackend, LocalBackend};
use vmstash_repo::lock::LockGuard;
use vmstash_repo::Repository;
use vmstash_ssh::SshSession;

use crate::args::{FromRepoArgs, Global};
use crate::exit::usage;
use crate::location::{Location, KINDS};
use crate::sftp_repo::SftpBackend;
use crate::{failpoint, password};

/// The storage behind `-r`, and, for a remote one, how to turn its metadata cache on.
pub struct Store {
    /// Where the files are.
    pub backend: Arc<dyn Backend>,
    enable_cache: Option<EnableCache>,
}

/// Turns a store's metadata cache on, given the repository's config id.
type EnableCache = Box<dyn Fn(&str)>;

impl Store {
    /// A remote store behind a local cache of its index and snapshot files.
    fn cached<B: Backend + 'static>(inner: B) -> Store {
        let cache = Arc::new(CachedBackend::new(inner, cache_root()));
        Store {
            backend: cache.clone(),
            enable_cache: Some(Box::new(move |id| cache.enable(id))),
        }
    }

    /// Turns the metadata cache (if any) on for the repository with config id `repo_id`.
    pub fn enable_cache(&self, repo_id: &str) {
        if let Some(enable) = &self.enable_cache {
            enable(repo_id);
        }
    }
}

/// The storage `-r`/`VMSTASH_REPOSITORY` names, connected (for SFTP) but not opened.
pub fn store(g: &Global) -> Result<Store> {
    let Some(repo) = &g.repo else {
        bail!("no repository given: use -r/--repo or set VMSTASH_REPOSITORY ({KINDS})");
    };
    store_at(g, repo)
}

/// The storage at `repo` (a location as `-r` takes it).
fn store_at(g: &Global, repo: &str) -> Result<Store> {
    match Location::parse(repo).map_err(|e| usage(format!("-r/--repo: {e:#}")))? {
        Location::Sftp(url) => {
            let session = SshSession::connect(&url.target, &g.ssh_options())
                .with_context(|| format!("connecting to the repository server of {repo}"))?;
            let sftp = SftpBackend::new(&session, &url.path)?;
            Ok(Store::cached(sftp))
        }
        Location::S3(url) => {
            let verbose = g.verbose > 0;
            let notice: vmstash_s3::Notice = Arc::new(move |text: &str| {
                if verbose {
                    eprintln!("vmstash: {text}");
                }
            });
            let options = vmstash_s3::S3Options {
                region: g.s3_region.clone(),
                bucket_lookup: g.s3_bucket_lookup.into(),
                notice: Some(notice),
                credentials: None,
            };
            let s3 = vmstash_s3::S3Backend::new(&url, &options)
                .with_context(|| format!("opening {url}"))?;
            Ok(Store::cached(s3))
        }
        Location::Local(dir) => Ok(Store {
            backend: Arc::new(LocalBackend::new(dir)),
            enable_cache: None,
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
    open_store(store, &password::current(g)?)
}

/// Opens the source repository of `copy` (`--from-repo`, with its own password options).
pub fn open_source(g: &Global, from: &FromRepoArgs) -> Result<Repository> {
    let Some(location) = &from.from_repo else {
        return Err(usage(format!(
            "no source repository given: use --from-repo or set VMSTASH_FROM_REPOSITORY ({KINDS})"
        )));
    };
    let store = store_at(g, location).context("the source repository (--from-repo)")?;
    open_store(store, &password::source(from)?).context("the source repository (--from-repo)")
}

fn open_store(store: Store, pw: &str) -> Result<Repository> {
    let location = store.backend.location();
    let repo = Repository::open(failpoint::wrap(store.backend.clone()), pw.as_bytes())
        .with_context(|| format!("opening repository {location}"))?;
    store.enable_cache(&repo.config().id);
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
