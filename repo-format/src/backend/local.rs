//! The local-filesystem backend.
//!
//! Every write goes to a temporary name in the target directory, is
//! fsynced, made read-only, renamed into place, and the directory is
//! fsynced: a crash leaves either the whole file or a `.tmp-*` file that
//! no reader looks at. Files are written past the page cache where the
//! filesystem allows it ([`crate::direct`]): a backup's packs are not read
//! back soon, and the host's cache is worth more than they are.
//!
//! Range reads keep the last [`OPEN_FILES`] files open, so that a restore or
//! a mount reading blob after blob of one pack keeps the kernel's read-ahead
//! for that file instead of opening it anew (and losing it) for every blob.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::{check_name, is_listed_name, relative_path, Backend, FileKind};
use crate::{Error, Result};

/// Prefix of temporary files; readers skip them.
use super::{is_temporary_path, temporary_dirs, TemporaryFile, TMP_PREFIX};

/// Files kept open for range reads.
const OPEN_FILES: usize = 64;

/// A repository in a local directory.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
    open: Arc<Mutex<HashMap<PathBuf, Arc<fs::File>>>>,
}

impl LocalBackend {
    /// A backend rooted at `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend {
            root: root.into(),
            open: Arc::default(),
        }
    }

    /// `path`, open for reading: kept from an earlier read, or opened now and kept.
    fn open_for_reading(&self, path: &Path) -> Result<Arc<fs::File>> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = open.get(path) {
            return Ok(Arc::clone(f));
        }
        let f = Arc::new(fs::File::open(path).map_err(io_err(path))?);
        if open.len() >= OPEN_FILES {
            open.clear();
        }
        open.insert(path.to_path_buf(), Arc::clone(&f));
        Ok(f)
    }

    /// Writes `bytes` durably to a temporary file beside `name`, lets `publish` give it its
    /// final name, and makes the directory entry durable (§15).
    fn place(
        &self,
        kind: FileKind,
        name: &str,
        bytes: &[u8],
        publish: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        let dir = self.dir_of(kind, name);
        if !dir.is_dir() {
            create_dir_durably(&dir)?;
        }
        let tmp = dir.join(format!(
            "{TMP_PREFIX}{}",
            hex::encode(crate::crypto::random_salt())
        ));
        let result = write_durably(&tmp, bytes).and_then(|()| publish(&tmp));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        let d = fs::File::open(&dir).map_err(io_err(&dir))?;
        d.sync_all().map_err(io_err(&dir))
    }

    fn path(&self, kind: FileKind, name: &str) -> PathBuf {
        self.root.join(relative_path(kind, name))
    }

    fn dir_of(&self, kind: FileKind, name: &str) -> PathBuf {
        let p = self.path(kind, name);
        p.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone())
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn create(&self) -> Result<()> {
        if let Ok(mut rd) = fs::read_dir(&self.root) {
            if rd.next().is_some() {
                return Err(Error::AlreadyExists(self.location()));
            }
        }
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        for kind in FileKind::DIRS {
            let d = self.root.join(kind.dir());
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        for i in 0..=255u8 {
            let d = self.root.join("data").join(hex::encode([i]));
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        for d in [self.root.join("data"), self.root.clone()] {
            fs::File::open(&d)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&d))?;
        }
        Ok(())
    }

    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        if kind == FileKind::Config {
            let p = self.path(kind, "config");
            return match fs::metadata(&p) {
                Ok(m) => Ok(vec![("config".to_string(), m.len())]),
                // No such directory, or the location is a file: no repository there.
                Err(e)
                    if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory =>
                {
                    Ok(Vec::new())
                }
                Err(e) => Err(Error::io(p, e)),
            };
        }
        let dir = self.root.join(kind.dir());
        let mut dirs = vec![dir.clone()];
        if kind == FileKind::Pack {
            dirs = (0..=255u8).map(|i| dir.join(hex::encode([i]))).collect();
        }
        let mut out = Vec::new();
        for d in dirs {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                // A directory git or a copy did not keep is an empty one.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(d, e)),
            };
            for ent in rd {
                let ent = ent.map_err(io_err(&d))?;
                let name = ent.file_name().to_string_lossy().into_owned();
                if !is_listed_name(&name) {
                    continue;
                }
                let len = ent.metadata().map_err(io_err(&ent.path()))?.len();
                out.push((name, len));
            }
        }
        out.sort();
        Ok(out)
    }

    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        check_name(kind, name)?;
        let p = self.path(kind, name);
        fs::read(&p).map_err(io_err(&p))
    }

    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u32) -> Result<Vec<u8>> {
        check_name(kind, name)?;
        let p = self.path(kind, name);
        let f = self.open_for_reading(&p)?;
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        f.read_exact_at(&mut buf, offset).map_err(io_err(&p))?;
        Ok(buf)
    }

    fn write(&self, kind: FileKind, name: &str, bytes: &[u8]) -> Result<()> {
        check_name(kind, name)?;
        let dest = self.path(kind, name);
        self.place(kind, name, bytes, |tmp| {
            fs::rename(tmp, &dest).map_err(io_err(&dest))
        })
    }

    fn create_new(&self, kind: FileKind, name: &str, bytes: &[u8]) -> Result<bool> {
        check_name(kind, name)?;
        let dest = self.path(kind, name);
        let mut created = true;
        // link(2) fails when the name exists: exclusive creation of a complete file.
        self.place(kind, name, bytes, |tmp| {
            let linked = match fs::hard_link(tmp, &dest) {
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    created = false;
                    Ok(())
                }
                other => other.map_err(io_err(&dest)),
            };
            let _ = fs::remove_file(tmp);
            linked
        })?;
        Ok(created)
    }

    fn remove(&self, kind: FileKind, name: &str) -> Result<()> {
        check_name(kind, name)?;
        let p = self.path(kind, name);
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&p);
        fs::remove_file(&p).map_err(io_err(&p))
    }

    fn list_temporary(&self) -> Result<Vec<TemporaryFile>> {
        let mut out = Vec::new();
        for dir in temporary_dirs() {
            let d = self.root.join(&dir);
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(d, e)),
            };
            for ent in rd {
                let ent = ent.map_err(io_err(&d))?;
                let path = format!("{dir}/{}", ent.file_name().to_string_lossy());
                if is_temporary_path(&path) {
                    let modified = ent.metadata().ok().and_then(|m| m.modified().ok());
                    out.push(TemporaryFile { path, modified });
                }
            }
        }
        Ok(out)
    }

    fn remove_temporary(&self, path: &str) -> Result<()> {
        if !is_temporary_path(path) {
            return Err(Error::InvalidParameter(format!(
                "{path} is not a temporary file"
            )));
        }
        let p = self.root.join(path);
        fs::remove_file(&p).map_err(io_err(&p))
    }

    fn modified(&self, kind: FileKind, name: &str) -> Result<Option<std::time::SystemTime>> {
        check_name(kind, name)?;
        let p = self.path(kind, name);
        let meta = fs::metadata(&p).map_err(io_err(&p))?;
        Ok(meta.modified().ok())
    }
}

/// Creates `dir` (and its parents) and fsyncs its parent, so that a file
/// renamed into it survives a crash.
fn create_dir_durably(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    if let Some(parent) = dir.parent() {
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_err(parent))?;
    }
    Ok(())
}

fn write_durably(tmp: &Path, bytes: &[u8]) -> Result<()> {
    crate::direct::write_new_file(tmp, bytes).map_err(io_err(tmp))?;
    fs::set_permissions(tmp, fs::Permissions::from_mode(0o444)).map_err(io_err(tmp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;

    #[test]
    fn write_list_read_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = LocalBackend::new(dir.path().join("repo"));
        b.create().expect("create");
        assert!(matches!(b.create(), Err(Error::AlreadyExists(_))));
        let name = Id::of(b"x").to_hex();
        b.write(FileKind::Pack, &name, b"hello world")
            .expect("write");
        assert_eq!(
            b.list(FileKind::Pack).expect("list"),
            vec![(name.clone(), 11)]
        );
        assert_eq!(
            b.read_range(FileKind::Pack, &name, 6, 5).expect("range"),
            b"world"
        );
        assert!(b.read_range(FileKind::Pack, &name, 6, 50).is_err());
        assert!(b.list(FileKind::Config).expect("list").is_empty());
        b.remove(FileKind::Pack, &name).expect("remove");
        assert!(b.read(FileKind::Pack, &name).is_err());
        assert!(b.read(FileKind::Pack, "../../etc/passwd").is_err());
    }

    #[test]
    fn a_file_where_the_repository_should_be_holds_no_repository() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("password.txt");
        fs::write(&file, "secret").expect("write");
        let b = LocalBackend::new(&file);
        assert!(b.list(FileKind::Config).expect("list").is_empty());
    }
}
