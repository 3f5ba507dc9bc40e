//! The contract every backend keeps (spec/FORMAT.md §1 rule 5), as one test that each backend's
//! tests run against a real store: the local filesystem and memory here, SFTP against a real
//! sshd (the CLI's tests), S3 against a real S3 server (the end-to-end tests).
//!
//! Always compiled, like [`crate::testing`]: the crates above call it from their tests.

use std::io::ErrorKind;

use super::{Backend, FileKind, PRUNE_LOCK};
use crate::id::Id;
use crate::Error;

/// Runs every check against `b`, which must be an empty location; returns the first broken
/// rule, said in words.
pub fn check_backend(b: &dyn Backend) -> Result<(), String> {
    let at = |what: &'static str| move |e: Error| format!("{}: {what}: {e}", b.location());
    b.create().map_err(at("create on an empty location"))?;
    for kind in FileKind::DIRS.into_iter().chain([FileKind::Config]) {
        let listed = b.list(kind).map_err(at("list of a new repository"))?;
        if !listed.is_empty() {
            return Err(format!("a new repository lists {listed:?} in {kind:?}"));
        }
    }
    whole_files(b)?;
    ranges(b)?;
    missing_files(b)?;
    exclusive_creation(b)?;
    names(b)?;
    parallel_writes(b)?;
    b.write(FileKind::Config, "config", b"config bytes")
        .map_err(at("write config"))?;
    if b.list(FileKind::Config).map_err(at("list config"))? != [("config".into(), 12)] {
        return Err("config is not listed with its size".into());
    }
    match b.create() {
        Err(Error::AlreadyExists(_)) => Ok(()),
        other => Err(format!(
            "create over a repository must fail with AlreadyExists, got {other:?}"
        )),
    }
}

fn named(bytes: &[u8]) -> String {
    Id::of(bytes).to_hex()
}

/// `len` bytes of a pattern that repeats every `period` bytes (period ≤ 256).
fn pattern(len: usize, period: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % period.clamp(1, 256)).unwrap_or(0))
        .collect()
}

fn len64(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}

/// Writes of every kind are read back whole, listed with their sizes, and gone once removed.
fn whole_files(b: &dyn Backend) -> Result<(), String> {
    let err = |what: String| move |e: Error| format!("{what}: {e}");
    for (n, kind) in FileKind::DIRS.into_iter().enumerate() {
        let bytes = pattern(1000 + n * 7919, 251);
        let name = named(&bytes);
        b.write(kind, &name, &bytes)
            .map_err(err(format!("write {kind:?}")))?;
        // Writing the same content-addressed file again changes nothing.
        b.write(kind, &name, &bytes)
            .map_err(err(format!("write {kind:?} again")))?;
        if b.read(kind, &name).map_err(err(format!("read {kind:?}")))? != bytes {
            return Err(format!("{kind:?} {name} reads back different bytes"));
        }
        let listed = b.list(kind).map_err(err(format!("list {kind:?}")))?;
        if listed != [(name.clone(), len64(&bytes))] {
            return Err(format!(
                "{kind:?}: listed {listed:?}, wrote {name} ({} bytes)",
                bytes.len()
            ));
        }
        if let Some(when) = b
            .modified(kind, &name)
            .map_err(err(format!("modified {kind:?}")))?
        {
            let age = std::time::SystemTime::now()
                .duration_since(when)
                .unwrap_or_default();
            if age > std::time::Duration::from_secs(3600) {
                return Err(format!(
                    "{kind:?} {name} was written {age:?} ago, says the store"
                ));
            }
        }
        b.remove(kind, &name)
            .map_err(err(format!("remove {kind:?}")))?;
        if !b
            .list(kind)
            .map_err(err(format!("list {kind:?}")))?
            .is_empty()
        {
            return Err(format!("{kind:?} {name} is still listed after its removal"));
        }
    }
    Ok(())
}

/// Ranged reads give exactly the bytes asked for, and an error past the end.
fn ranges(b: &dyn Backend) -> Result<(), String> {
    let bytes = pattern(100_000, 253);
    let name = named(&bytes);
    b.write(FileKind::Pack, &name, &bytes)
        .map_err(|e| format!("write pack: {e}"))?;
    for (offset, len) in [(0u64, 1u32), (0, 100_000), (99_999, 1), (12_345, 54_321)] {
        let got = b
            .read_range(FileKind::Pack, &name, offset, len)
            .map_err(|e| format!("read {len} bytes at {offset}: {e}"))?;
        let from = usize::try_from(offset).unwrap_or(usize::MAX);
        let want = from
            .checked_add(usize::try_from(len).unwrap_or(usize::MAX))
            .and_then(|to| bytes.get(from..to));
        if Some(got.as_slice()) != want {
            return Err(format!("read_range({offset}, {len}) returned other bytes"));
        }
    }
    for (offset, len) in [(99_999u64, 2u32), (100_000, 1), (1 << 40, 16)] {
        if b.read_range(FileKind::Pack, &name, offset, len).is_ok() {
            return Err(format!(
                "read_range({offset}, {len}) past the end succeeded"
            ));
        }
    }
    b.remove(FileKind::Pack, &name)
        .map_err(|e| format!("remove pack: {e}"))
}

/// A file that is not there is an I/O error of kind NotFound, which callers rely on.
fn missing_files(b: &dyn Backend) -> Result<(), String> {
    let name = named(b"never written");
    for kind in [FileKind::Index, FileKind::Pack, FileKind::Lock] {
        match b.read(kind, &name) {
            Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {}
            other => return Err(format!("reading a missing {kind:?}: {other:?}")),
        }
    }
    Ok(())
}

/// `create_new` creates once; a second creation leaves the first file as it was.
fn exclusive_creation(b: &dyn Backend) -> Result<(), String> {
    let err = |what: &'static str| move |e: Error| format!("{what}: {e}");
    if !b
        .create_new(FileKind::Lock, PRUNE_LOCK, b"first")
        .map_err(err("create the prune lock"))?
    {
        return Err("create_new of an absent file reported it present".into());
    }
    if b.create_new(FileKind::Lock, PRUNE_LOCK, b"second")
        .map_err(err("create the prune lock again"))?
    {
        return Err("create_new of an existing file reported it created".into());
    }
    if b.read(FileKind::Lock, PRUNE_LOCK)
        .map_err(err("read the prune lock"))?
        != b"first"
    {
        return Err("a second create_new replaced the file".into());
    }
    if b.list(FileKind::Lock)
        .map_err(err("list locks"))?
        .iter()
        .any(|(n, _)| n == PRUNE_LOCK)
    {
        return Err("listings must leave out the prune lock".into());
    }
    b.remove(FileKind::Lock, PRUNE_LOCK)
        .map_err(err("remove the prune lock"))?;
    if !b
        .create_new(FileKind::Lock, PRUNE_LOCK, b"third")
        .map_err(err("create the prune lock after its removal"))?
    {
        return Err("create_new after a removal reported the file present".into());
    }
    b.remove(FileKind::Lock, PRUNE_LOCK)
        .map_err(err("remove the prune lock"))
}

/// Names that are not repository names never reach the store.
fn names(b: &dyn Backend) -> Result<(), String> {
    for bad in ["../config", "x", "ABCDEF", "prune", ""] {
        if b.write(FileKind::Index, bad, b"x").is_ok() {
            return Err(format!("write accepted the name {bad:?}"));
        }
    }
    Ok(())
}

/// Writes from many threads at once all land, each whole.
fn parallel_writes(b: &dyn Backend) -> Result<(), String> {
    let files: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 4096 + usize::from(i)]).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|bytes| s.spawn(move || b.write(FileKind::Pack, &named(bytes), bytes)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Error::Aborted)))
            .collect::<Result<Vec<()>, Error>>()
    })
    .map_err(|e| format!("parallel writes: {e}"))?;
    let mut listed = b
        .list(FileKind::Pack)
        .map_err(|e| format!("list packs: {e}"))?;
    listed.sort();
    let mut want: Vec<(String, u64)> = files.iter().map(|f| (named(f), len64(f))).collect();
    want.sort();
    if listed != want {
        return Err(format!(
            "after 16 parallel writes the packs listed are {listed:?}"
        ));
    }
    for (name, _) in want {
        b.remove(FileKind::Pack, &name)
            .map_err(|e| format!("remove pack: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_backend;
    use crate::backend::{LocalBackend, MemoryBackend};

    #[test]
    fn the_local_and_memory_backends_keep_the_contract() {
        let dir = tempfile::tempdir().expect("tempdir");
        check_backend(&LocalBackend::new(dir.path().join("repo"))).expect("local");
        check_backend(&MemoryBackend::default()).expect("memory");
    }
}
