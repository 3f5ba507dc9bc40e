//! Opening the repository the global options name: its storage (local, or SFTP with a local
//! cache of index and snapshot files), and the password.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use vmstash_repo::backend::{Backend, CachedBackend, LocalBackend};
use vmstash_repo::Repository;
use vmstash_ssh::SshSession;

use crate::args::Global;
use crate::exit::usage;
use crate::location::{Location, KINDS};
use crate::password;
use crate::sftp_repo::SftpBackend;

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
    let repo = Repository::open(store.backend, pw.as_bytes())
        .with_context(|| format!("opening repository {location}"))?;
    if let Some(cache) = store.cache {
        cache.enable(&repo.config().id);
    }
    Ok(repo)
}
