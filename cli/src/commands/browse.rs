//! What `vmstash ls` and `dump` share: `SNAPSHOT[:PATH]` resolved to one snapshot's namespace
//! (the mount's, built for that snapshot alone by `vmstash_fuse`), and the file at the path.

use anyhow::{Context, Result};
use fuser::FileAttr;
use vmstash_fuse::luks::Passphrase;
use vmstash_fuse::VmstashFs;
use vmstash_repo::{Id, Repository};

use crate::args::{FilterArgs, LuksArgs};
use crate::repo;

/// A snapshot's files, opened at a path.
pub struct Opened {
    /// The snapshot's namespace.
    pub fs: VmstashFs,
    /// The snapshot.
    pub id: Id,
    /// The path as given (after the `:`), for messages.
    pub path: String,
    /// The file at the path.
    pub attr: FileAttr,
}

/// Opens `SNAPSHOT[:PATH]` of `repo`, LUKS volumes unlocked with the passphrases of `luks`;
/// the caller holds a lock for reading.
pub fn open(
    repo: &Repository,
    target: &str,
    (filter, luks): (&FilterArgs, &LuksArgs),
    cache_size: u64,
) -> Result<Opened> {
    let (snapshot, path) = target.split_once(':').unwrap_or((target, ""));
    let (listing, _) = repo::snapshots_warning_of_damage(repo)?;
    let (id, _) = listing.find(snapshot, &filter.filter())?;
    let fs = VmstashFs::of_snapshot(repo.clone(), cache_size, id, luks_passphrases(luks)?)
        .context("reading the repository")?;
    let full = format!("snapshots/{}/{path}", id.short());
    let attr = fs.path_attr(full.as_bytes()).map_err(|errno| {
        anyhow::anyhow!(
            "{path:?} in snapshot {}: {}",
            id.short(),
            std::io::Error::from_raw_os_error(errno.code())
        )
    })?;
    Ok(Opened {
        fs,
        id,
        path: path.to_owned(),
        attr,
    })
}

/// An errno of the namespace as an error naming what failed.
pub fn errno_error(what: &str, errno: fuser::Errno) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}: {}",
        std::io::Error::from_raw_os_error(errno.code())
    )
}

/// The passphrases in the files `luks` names: each file's bytes, less one trailing newline.
pub fn luks_passphrases(luks: &LuksArgs) -> Result<Vec<Passphrase>> {
    luks.files
        .iter()
        .map(|f| {
            let mut bytes = std::fs::read(f)
                .with_context(|| format!("reading passphrase file {}", f.display()))?;
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
            }
            Ok(Passphrase::new(bytes))
        })
        .collect()
}
