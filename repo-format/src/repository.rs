//! An open repository: its backend, master key and config, and the
//! operations on whole files (spec/FORMAT.md §1–§14).

use std::sync::Arc;

use crate::backend::{relative_path, Backend, FileKind};
use crate::config::{ChunkSize, Config};
use crate::crypto::MasterKey;
use crate::id::Id;
use crate::index::{self, IndexedPack, MasterIndex};
use crate::keyfile::{KdfParams, KeyFile};
use crate::sealed::{self, FileType};
use crate::selection::SnapshotFilter;
use crate::snapshot::Manifest;
use crate::{pack, Error, Result};

/// Who is using the repository: written into keys, locks and snapshots.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Login name.
    pub username: String,
    /// Host name.
    pub hostname: String,
}

impl Identity {
    /// The current user on this host.
    pub fn current() -> Identity {
        let hostname = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        let username = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| format!("uid{}", rustix::process::getuid().as_raw()));
        Identity { username, hostname }
    }
}

/// The current time as RFC 3339 UTC with microseconds, so that snapshots
/// taken within one second still sort in the order they were made.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

/// Sort key of an RFC 3339 time; unparsable times sort first.
fn time_key(t: &str) -> std::time::SystemTime {
    humantime::parse_rfc3339_weak(t).unwrap_or(std::time::UNIX_EPOCH)
}

struct Inner {
    backend: Arc<dyn Backend>,
    master: MasterKey,
    config: Config,
    key_name: String,
    identity: Identity,
}

/// An open, unlocked repository. Cheap to clone.
#[derive(Clone)]
pub struct Repository(Arc<Inner>);

impl Repository {
    /// Creates a repository in an empty `backend`.
    pub fn init(
        backend: Arc<dyn Backend>,
        password: &[u8],
        chunk_size: ChunkSize,
        compression_level: i32,
        kdf: KdfParams,
    ) -> Result<Repository> {
        let config = Config::new(chunk_size, compression_level, &now_rfc3339())?;
        Repository::init_with(backend, password, config, kdf)
    }

    /// Creates a repository with `config` in an empty `backend`.
    pub fn init_with(
        backend: Arc<dyn Backend>,
        password: &[u8],
        config: Config,
        kdf: KdfParams,
    ) -> Result<Repository> {
        let identity = Identity::current();
        let now = now_rfc3339();
        backend.create()?;
        let master = MasterKey::generate();
        let key = KeyFile::create(
            &master,
            password,
            kdf,
            &identity.username,
            &identity.hostname,
            &now,
        )?;
        let key_bytes = key.encode();
        let key_name = Id::of(&key_bytes).to_hex();
        backend.write(FileKind::Key, &key_name, &key_bytes)?;
        let cfg = sealed::seal(&master, FileType::Config, &config.encode(), 3);
        backend.write(FileKind::Config, "config", &cfg)?;
        Ok(Repository(Arc::new(Inner {
            backend,
            master,
            config,
            key_name,
            identity,
        })))
    }

    /// Opens the repository in `backend` with `password`.
    pub fn open(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Repository> {
        if backend.list(FileKind::Config)?.is_empty() {
            return Err(Error::NotARepository(backend.location()));
        }
        let bytes = backend.read(FileKind::Config, "config")?;
        sealed::check_header(&bytes, FileType::Config, "config")?;
        let (key_name, master) = unlock(backend.as_ref(), password)?;
        let plain = sealed::open(&master, FileType::Config, &bytes, "config")?;
        let config = Config::decode(&plain)?;
        Ok(Repository(Arc::new(Inner {
            backend,
            master,
            config,
            key_name,
            identity: Identity::current(),
        })))
    }

    /// The storage.
    pub fn backend(&self) -> &dyn Backend {
        self.0.backend.as_ref()
    }

    pub(crate) fn master(&self) -> &MasterKey {
        &self.0.master
    }

    /// The decoded config.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// Who is using it.
    pub fn identity(&self) -> &Identity {
        &self.0.identity
    }

    /// The key file the password opened.
    pub fn key_name(&self) -> &str {
        &self.0.key_name
    }

    /// Seals and stores a metadata file named by its hash; returns the
    /// name and the stored size.
    pub fn save_file(&self, kind: FileKind, ty: FileType, plain: &[u8]) -> Result<(Id, u64)> {
        let bytes = sealed::seal(self.master(), ty, plain, self.config().compression_level);
        let id = Id::of(&bytes);
        self.backend().write(kind, &id.to_hex(), &bytes)?;
        Ok((id, u64::try_from(bytes.len()).unwrap_or(u64::MAX)))
    }

    /// Reads, checks against its name, and opens a metadata file.
    pub fn read_file(&self, kind: FileKind, ty: FileType, name: &str) -> Result<Vec<u8>> {
        let file = relative_path(kind, name);
        let bytes = self.backend().read(kind, name)?;
        if Id::of(&bytes).to_hex() != name {
            return Err(Error::corrupt(
                &file,
                "content does not match its name (SHA-256)",
            ));
        }
        sealed::open(self.master(), ty, &bytes, &file)
    }

    /// Every index file, decoded, with its name.
    pub fn index_files(&self) -> Result<Vec<(String, Vec<IndexedPack>)>> {
        let mut out = Vec::new();
        for (name, _) in self.backend().list(FileKind::Index)? {
            let plain = self.read_file(FileKind::Index, FileType::Index, &name)?;
            let packs = index::decode(&plain, &relative_path(FileKind::Index, &name))?;
            out.push((name, packs));
        }
        Ok(out)
    }

    /// Writes index files listing `packs`, at most [`INDEX_FLUSH_BLOBS`] blobs each (a pack
    /// is never split); returns how many were written.
    ///
    /// [`INDEX_FLUSH_BLOBS`]: crate::index::INDEX_FLUSH_BLOBS
    pub fn save_index(&self, packs: &[&IndexedPack]) -> Result<usize> {
        let mut written = 0;
        let mut batch: Vec<IndexedPack> = Vec::new();
        let mut blobs = 0;
        for (i, p) in packs.iter().enumerate() {
            batch.push((*p).clone());
            blobs += p.blobs.len();
            let next = packs.get(i + 1).map_or(0, |n| n.blobs.len());
            if i + 1 == packs.len() || blobs + next > index::INDEX_FLUSH_BLOBS {
                self.save_file(FileKind::Index, FileType::Index, &index::encode(&batch))?;
                written += 1;
                batch.clear();
                blobs = 0;
            }
        }
        Ok(written)
    }

    /// The index of every blob in the repository.
    pub fn load_index(&self) -> Result<MasterIndex> {
        Ok(MasterIndex::build(
            self.index_files()?.into_iter().map(|(_, packs)| packs),
        ))
    }

    /// Every snapshot that can be read, oldest first; files that cannot be read or decoded are
    /// left out (see [`Repository::snapshot_listing`] to learn of them).
    pub fn snapshots(&self) -> Result<Vec<(Id, Manifest)>> {
        Ok(self.snapshot_listing()?.snapshots)
    }

    /// Every snapshot file: the readable ones oldest first, and the ones that could not be read
    /// or decoded with their errors. One damaged file never hides the others; only failing to
    /// list `snapshots/` is an error. Whatever deletes data must not go on while any file is
    /// damaged: it cannot know what that snapshot needs.
    pub fn snapshot_listing(&self) -> Result<SnapshotListing> {
        let mut listing = SnapshotListing::default();
        for (name, _) in self.backend().list(FileKind::Snapshot)? {
            match self.read_snapshot(&name) {
                Ok(found) => listing.snapshots.push(found),
                Err(e) => listing.damaged.push((name, e)),
            }
        }
        listing.snapshots.sort_by(|a, b| {
            time_key(&a.1.time)
                .cmp(&time_key(&b.1.time))
                .then(a.0.cmp(&b.0))
        });
        listing.damaged.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(listing)
    }

    /// Reads and decodes one snapshot file.
    fn read_snapshot(&self, name: &str) -> Result<(Id, Manifest)> {
        let file = relative_path(FileKind::Snapshot, name);
        let id = Id::from_hex(name).ok_or_else(|| Error::corrupt(&file, "bad name"))?;
        let plain = self.read_file(FileKind::Snapshot, FileType::Snapshot, name)?;
        Ok((id, Manifest::decode(&plain, &file)?))
    }

    /// The snapshot named by `spec`: "latest" (the newest snapshot `filter` matches), or a
    /// unique id prefix (the filter does not apply to ids: an id names one snapshot).
    pub fn find_snapshot(&self, spec: &str, filter: &SnapshotFilter) -> Result<(Id, Manifest)> {
        self.snapshot_listing()?.find(spec, filter)
    }

    /// Deletes a snapshot file. Its data stays until a prune finds nothing else needs it.
    pub fn remove_snapshot(&self, id: &Id) -> Result<()> {
        self.backend().remove(FileKind::Snapshot, &id.to_hex())
    }

    /// Stores a manifest: the commit point of a backup.
    pub fn save_snapshot(&self, m: &Manifest) -> Result<(Id, u64)> {
        self.save_file(FileKind::Snapshot, FileType::Snapshot, &m.encode())
    }

    /// The index record of pack `id` (`size` bytes), read from the pack's own header with three
    /// small range reads (§8.1), for packs no index lists.
    pub fn read_pack_header(&self, id: Id, size: u64) -> Result<IndexedPack> {
        let name = id.to_hex();
        let file = relative_path(FileKind::Pack, &name);
        let (salt, blobs) = pack::read_header_with(self.master(), size, &file, |offset, len| {
            self.backend()
                .read_range(FileKind::Pack, &name, offset, len)
        })?;
        Ok(IndexedPack { id, salt, blobs })
    }

    /// Reads and verifies one blob.
    pub fn read_blob(&self, index: &MasterIndex, id: &Id) -> Result<Vec<u8>> {
        let loc = index
            .find(id)
            .ok_or_else(|| Error::BlobNotFound(id.to_hex()))?;
        let name = loc.pack.to_hex();
        let file = relative_path(FileKind::Pack, &name);
        let sealed = self.backend().read_range(
            FileKind::Pack,
            &name,
            u64::from(loc.entry.offset),
            loc.entry.length,
        )?;
        pack::open_blob_owned(self.master(), loc.salt, &loc.entry, sealed, &file)
    }

    /// Adds a key file for `password`; returns its name.
    pub fn add_key(&self, password: &[u8], kdf: KdfParams) -> Result<String> {
        let who = self.identity();
        let key = KeyFile::create(
            self.master(),
            password,
            kdf,
            &who.username,
            &who.hostname,
            &now_rfc3339(),
        )?;
        let bytes = key.encode();
        let name = Id::of(&bytes).to_hex();
        self.backend().write(FileKind::Key, &name, &bytes)?;
        Ok(name)
    }

    /// Every key file, decoded.
    pub fn list_keys(&self) -> Result<Vec<(String, KeyFile)>> {
        let mut out = Vec::new();
        for (name, _) in self.backend().list(FileKind::Key)? {
            let bytes = self.backend().read(FileKind::Key, &name)?;
            out.push((
                name.clone(),
                KeyFile::decode(&bytes, &relative_path(FileKind::Key, &name))?,
            ));
        }
        Ok(out)
    }

    /// Removes a key file; refuses the one in use (use `change_password`).
    pub fn remove_key(&self, name: &str) -> Result<()> {
        if name == self.key_name() {
            return Err(Error::InvalidParameter(
                "refusing to remove the key in use; open the repository with another password first".into(),
            ));
        }
        self.backend().remove(FileKind::Key, name)
    }

    /// Replaces the key in use by one for `new_password`; returns its name.
    pub fn change_password(&self, new_password: &[u8], kdf: KdfParams) -> Result<String> {
        let name = self.add_key(new_password, kdf)?;
        self.backend().remove(FileKind::Key, self.key_name())?;
        Ok(name)
    }
}

fn unlock(backend: &dyn Backend, password: &[u8]) -> Result<(String, MasterKey)> {
    let mut incompatible = None;
    let mut corrupt = None;
    let mut any_readable = false;
    for (name, _) in backend.list(FileKind::Key)? {
        let file = relative_path(FileKind::Key, &name);
        let attempt = backend
            .read(FileKind::Key, &name)
            .and_then(|b| KeyFile::decode(&b, &file))
            .and_then(|k| k.unwrap_key(password, &file));
        match attempt {
            Ok(Some(master)) => return Ok((name, master)),
            Ok(None) => any_readable = true,
            Err(e @ Error::Incompatible { .. }) => incompatible = Some(e),
            Err(e) => {
                corrupt.get_or_insert(e);
            }
        }
    }
    // A newer format is the most useful thing to tell; then a plain
    // mismatch; a damaged key file only when no key could be tried at all.
    match (incompatible, any_readable, corrupt) {
        (Some(e), _, _) => Err(e),
        (None, true, _) | (None, false, None) => Err(Error::WrongPassword),
        (None, false, Some(e)) => Err(e),
    }
}

/// The snapshot files of a repository, as [`Repository::snapshot_listing`] found them.
#[derive(Debug, Default)]
pub struct SnapshotListing {
    /// Readable snapshots, oldest first.
    pub snapshots: Vec<(Id, Manifest)>,
    /// Files (names in `snapshots/`) that could not be read or decoded, with why.
    pub damaged: Vec<(String, Error)>,
}

impl SnapshotListing {
    /// The snapshot named by `spec`: "latest" (the newest readable snapshot `filter` matches),
    /// or a unique id prefix. A prefix naming a damaged file is an error that says so.
    pub fn find(&self, spec: &str, filter: &SnapshotFilter) -> Result<(Id, Manifest)> {
        if spec == "latest" {
            return self
                .snapshots
                .iter()
                .rev()
                .find(|(_, m)| filter.matches(m))
                .cloned()
                .ok_or_else(|| {
                    Error::InvalidParameter(if filter.is_empty() {
                        "the repository has no snapshots".into()
                    } else {
                        "no snapshot matches the --vm/--host/--tag filter".into()
                    })
                });
        }
        let spec_lc = spec.to_ascii_lowercase();
        let mut hits: Vec<_> = self
            .snapshots
            .iter()
            .filter(|(id, _)| id.to_hex().starts_with(&spec_lc))
            .collect();
        let damaged: Vec<_> = self
            .damaged
            .iter()
            .filter(|(name, _)| name.starts_with(&spec_lc))
            .collect();
        match (hits.len(), damaged.as_slice()) {
            (1, []) if !spec.is_empty() => Ok(hits.remove(0).clone()),
            (0, [(name, e)]) => Err(Error::corrupt(
                relative_path(FileKind::Snapshot, name),
                format!("this snapshot cannot be read ({e})"),
            )),
            (0, []) => Err(Error::InvalidParameter(format!(
                "no snapshot matches {spec:?}"
            ))),
            _ => Err(Error::InvalidParameter(format!(
                "{spec:?} matches several snapshots; give more of the id"
            ))),
        }
    }
}
