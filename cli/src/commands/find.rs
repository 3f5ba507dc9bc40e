//! `vmstash find [--vm NAME] PATTERN…`: which snapshots hold a matching file in a guest
//! filesystem, with its size and modification time, and whether it changed from the previous
//! snapshot that was searched ("when did /etc/nginx/nginx.conf change?").
//!
//! A pattern starting with `/` is a path from a filesystem's root (`/etc/fstab`,
//! `/etc/nginx/*.conf`), matched in every filesystem of every disk, partition and logical
//! volume; without glob characters it is looked up directly, never walked. Any other pattern
//! is a glob on file names (`*.conf`, `fstab`), matched in a walk of every filesystem.
//! Snapshots are searched oldest first through one namespace (the mount's), so chunks shared
//! between snapshots are read and verified once.
//!
//! A file is "changed" when its size, modification or change time differs from the previous
//! snapshot's, "new" when the previous one did not have it, "deleted" when this one does not.
//!
//! Unchanged directories are not listed twice: in filesystems whose directories' change time
//! moves with every change of their entries (ext4, XFS, Btrfs), a directory with the same
//! size, modification and change time as in the series' previous snapshot keeps the names
//! found there (its matches and subdirectories), and only those are looked up again — for
//! their own, possibly new, attributes.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use fuser::{FileAttr, FileType};
use globset::{GlobBuilder, GlobMatcher};
use serde_json::json;
use vmstash_fuse::fs::Listed;
use vmstash_fuse::guests::split_ino;
use vmstash_fuse::VmstashFs;
use vmstash_repo::snapshot::Manifest;
use vmstash_repo::Id;

use crate::args::{FindArgs, Global};
use crate::output::{human, line, print_json, snapshot_time};
use crate::{exit, repo};

/// Most files one walk of one filesystem looks at (a guard against a damaged directory
/// that names itself).
const MAX_FILES_PER_FS: usize = 20_000_000;

/// What a pattern matches.
enum Pattern {
    /// A path from a filesystem's root, without glob characters.
    Path(String),
    /// A glob on the whole path from a filesystem's root.
    PathGlob(GlobMatcher),
    /// A glob on file names.
    Name(GlobMatcher),
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern> {
        let glob = |t: &str| -> Result<GlobMatcher> {
            Ok(GlobBuilder::new(t)
                .literal_separator(true)
                .build()
                .with_context(|| format!("pattern {text:?}"))?
                .compile_matcher())
        };
        Ok(if !text.starts_with('/') {
            Pattern::Name(glob(text)?)
        } else if text.contains(['*', '?', '[', '{']) {
            Pattern::PathGlob(glob(text)?)
        } else {
            Pattern::Path(text.trim_end_matches('/').to_owned())
        })
    }
}

/// One version of a found file: the file as one snapshot has it.
#[derive(Clone)]
struct Version {
    snapshot: Id,
    time: String,
    attr: Option<FileAttr>,
    status: &'static str,
}

/// Runs `vmstash find`.
pub fn run(g: &Global, a: &FindArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let patterns = a
        .patterns
        .iter()
        .map(|p| Pattern::parse(p))
        .collect::<Result<Vec<_>>>()?;
    let repo = repo::open(g)?;
    let _lock = repo::lock_for_reading(g, &repo, "find")?;
    let (listing, _) = repo::snapshots_warning_of_damage(&repo)?;
    let filter = a.filter.filter();
    let mut snapshots: Vec<(Id, Manifest)> = listing
        .snapshots
        .into_iter()
        .filter(|(_, m)| filter.matches(m))
        .collect();
    snapshots.sort_by(|x, y| x.1.time.cmp(&y.1.time));
    let passphrases = super::browse::luks_passphrases(&a.luks)?;
    let fs = VmstashFs::unlocking(repo.clone(), a.cache_size, passphrases)
        .context("reading the repository")?;
    // Found files by where they are (series, filesystem, path): their versions, oldest first.
    let mut found: BTreeMap<(String, String, String), Vec<Version>> = BTreeMap::new();
    // What each series' filesystems' directories held in its previous snapshot.
    let mut memos: HashMap<(String, String), DirMemos> = HashMap::new();
    let mut reused = 0usize;
    for (id, m) in &snapshots {
        let roots = filesystem_roots(&fs, id)?;
        let mut here: BTreeMap<(String, String), FileAttr> = BTreeMap::new();
        for (place, root) in &roots {
            let memo = memos.entry((m.name.clone(), place.clone())).or_default();
            let (matches, kept) = matches_in(&fs, root, &patterns, memo)?;
            reused += kept;
            for (path, attr) in matches {
                here.insert((place.clone(), path), attr);
            }
        }
        record(&mut found, (id, m), &roots, here);
    }
    let secs = started.elapsed().as_secs_f64();
    print(g, a, &found);
    if !g.json && !g.quiet {
        eprintln!(
            "searched {} snapshots in {secs:.1} s: {} files matched",
            snapshots.len(),
            found.len()
        );
        if g.verbose > 0 {
            eprintln!("{reused} unchanged directories were not listed again");
        }
    }
    Ok(exit::ok())
}

/// Adds one snapshot's matches to `found`: each file's version with its status against the
/// previous snapshot of the same series that was searched; a file of an earlier snapshot that
/// this one lacks (in a filesystem it still has) gets a "deleted" version.
fn record(
    found: &mut BTreeMap<(String, String, String), Vec<Version>>,
    (id, m): (&Id, &Manifest),
    roots: &[(String, FileAttr)],
    here: BTreeMap<(String, String), FileAttr>,
) {
    let version = |attr: Option<FileAttr>, status| Version {
        snapshot: *id,
        time: m.time.clone(),
        attr,
        status,
    };
    for (key, versions) in found.iter_mut().filter(|(k, _)| k.0 == m.name) {
        let was_there = versions.last().is_some_and(|v| v.attr.is_some());
        let fs_here = roots.iter().any(|(place, _)| *place == key.1);
        if was_there && fs_here && !here.contains_key(&(key.1.clone(), key.2.clone())) {
            versions.push(version(None, "deleted"));
        }
    }
    for ((place, path), attr) in here {
        let versions = found.entry((m.name.clone(), place, path)).or_default();
        let status = match versions.last().and_then(|v| v.attr.as_ref()) {
            None => "new",
            Some(before) if changed(before, &attr) => "changed",
            Some(_) => "unchanged",
        };
        versions.push(version(Some(attr), status));
    }
}

/// Whether a file's contents may differ: its size, modification or change time differs.
fn changed(before: &FileAttr, now: &FileAttr) -> bool {
    (before.size, before.mtime, before.ctime) != (now.size, now.mtime, now.ctime)
        || before.kind != now.kind
}

/// The guest filesystems of snapshot `id`: where each is (`vda/p1`, `vda/rl/root`) and its
/// root directory, found by walking the snapshot's disks, partitions and volume groups down
/// to the first directory that belongs to a filesystem.
fn filesystem_roots(fs: &VmstashFs, id: &Id) -> Result<Vec<(String, FileAttr)>> {
    let top = format!("snapshots/{}", id.short());
    let attr = fs
        .path_attr(top.as_bytes())
        .map_err(|e| super::browse::errno_error(&top, e))?;
    let mut roots = Vec::new();
    let mut dirs = vec![(String::new(), attr)];
    while let Some((place, dir)) = dirs.pop() {
        let Ok(children) = fs.children(dir.ino.0) else {
            continue;
        };
        for Listed { name, attr, .. } in children {
            let Some(attr) = attr.filter(|a| a.kind == FileType::Directory) else {
                continue;
            };
            let name = String::from_utf8_lossy(&name);
            let child = if place.is_empty() {
                name.into_owned()
            } else {
                format!("{place}/{name}")
            };
            if fs.is_filesystem_root(attr.ino.0) {
                roots.push((child, attr));
            } else if split_ino(attr.ino.0).is_none() {
                dirs.push((child, attr));
            }
        }
    }
    roots.sort_by(|x, y| x.0.cmp(&y.0));
    Ok(roots)
}

/// A directory as the previous snapshot of a series had it.
struct DirMemo {
    /// Its size, modification and change time then.
    signature: (u64, SystemTime, SystemTime),
    /// The names in it that mattered: matches and subdirectories.
    names: Vec<Vec<u8>>,
}

/// A filesystem's directories by path, as its series' previous snapshot had them.
type DirMemos = HashMap<String, DirMemo>;

/// The files under filesystem root `root` that match any of `patterns`, by path from the
/// root, and how many directories `memo` spared listing (it is then brought up to date).
fn matches_in(
    fs: &VmstashFs,
    root: &FileAttr,
    patterns: &[Pattern],
    memo: &mut DirMemos,
) -> Result<(Vec<(String, FileAttr)>, usize)> {
    let mut out = Vec::new();
    let mut walk_needed = false;
    for p in patterns {
        match p {
            Pattern::Path(path) => {
                if let Some(attr) = lookup(fs, root, path) {
                    out.push((path.clone(), attr));
                }
            }
            Pattern::PathGlob(_) | Pattern::Name(_) => walk_needed = true,
        }
    }
    let mut kept = 0;
    if walk_needed {
        let memo_usable = fs.directory_ctime_tracks_entries(root.ino.0);
        if !memo_usable {
            memo.clear();
        }
        kept = walk_matching(fs, root, patterns, &mut out, memo_usable.then_some(memo));
    }
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out.dedup_by(|x, y| x.0 == y.0);
    Ok((out, kept))
}

/// The file at `path` (from the root `root`), if there is one.
fn lookup(fs: &VmstashFs, root: &FileAttr, path: &str) -> Option<FileAttr> {
    let mut attr = *root;
    for name in path.split('/').filter(|n| !n.is_empty()) {
        attr = fs.lookup_child(attr.ino.0, OsStr::new(name)).ok()?;
    }
    Some(attr)
}

/// Walks the filesystem under `root`, adding every file a walking pattern matches to `out`.
/// With `memo`, a directory unchanged since the memo's snapshot is not listed: only the names
/// that mattered there are looked up again; the memo is replaced by this walk's. Returns how
/// many directories were not listed. Directories that cannot be listed are skipped with a
/// line.
fn walk_matching(
    fs: &VmstashFs,
    root: &FileAttr,
    patterns: &[Pattern],
    out: &mut Vec<(String, FileAttr)>,
    mut memo: Option<&mut DirMemos>,
) -> usize {
    let mut fresh = DirMemos::new();
    let mut kept = 0;
    let mut dirs = vec![(String::new(), *root)];
    let mut seen = 0usize;
    while let Some((path, dir)) = dirs.pop() {
        let signature = (dir.size, dir.mtime, dir.ctime);
        let before = memo
            .as_deref_mut()
            .and_then(|m| m.remove(&path))
            .filter(|m| m.signature == signature);
        let entries: Vec<(Vec<u8>, FileAttr)> = match before {
            Some(m) => {
                kept += 1;
                m.names
                    .into_iter()
                    .filter_map(|name| {
                        let attr = fs.lookup_child(dir.ino.0, OsStr::from_bytes(&name)).ok()?;
                        Some((name, attr))
                    })
                    .collect()
            }
            None => match fs.children(dir.ino.0) {
                Ok(c) => c
                    .into_iter()
                    .filter_map(|Listed { name, attr, .. }| Some((name, attr?)))
                    .collect(),
                Err(e) => {
                    eprintln!(
                        "vmstash find: {}/: {}",
                        path,
                        std::io::Error::from_raw_os_error(e.code())
                    );
                    continue;
                }
            },
        };
        let mut names = Vec::new();
        for (name, attr) in entries {
            seen += 1;
            if seen > MAX_FILES_PER_FS {
                eprintln!("vmstash find: more than {MAX_FILES_PER_FS} files in one filesystem; the rest not searched");
                return kept;
            }
            let child = format!("{path}/{}", String::from_utf8_lossy(&name));
            let hit = patterns.iter().any(|p| match p {
                Pattern::Name(g) => g.is_match(OsStr::from_bytes(&name)),
                Pattern::PathGlob(g) => g.is_match(&child),
                Pattern::Path(_) => false,
            });
            if hit {
                out.push((child.clone(), attr));
            }
            let is_dir = attr.kind == FileType::Directory;
            if is_dir {
                dirs.push((child, attr));
            }
            if hit || is_dir {
                names.push(name);
            }
        }
        fresh.insert(path, DirMemo { signature, names });
    }
    if let Some(m) = memo {
        *m = fresh;
    }
    kept
}

/// Prints what was found: per file, the versions (all, or with `--changed` only those that
/// differ from the one before).
fn print(g: &Global, a: &FindArgs, found: &BTreeMap<(String, String, String), Vec<Version>>) {
    let shown = |v: &&Version| !a.changed || v.status != "unchanged";
    if g.json {
        let files: Vec<_> = found
            .iter()
            .map(|((vm, place, path), versions)| {
                let versions: Vec<_> = versions
                    .iter()
                    .filter(shown)
                    .map(|v| {
                        json!({"snapshot_id": v.snapshot.to_hex(), "short_id": v.snapshot.short(),
                            "time": v.time, "status": v.status,
                            "size": v.attr.map(|a| a.size), "mtime": v.attr.map(|a| unix(a.mtime))})
                    })
                    .collect();
                json!({"vm": vm, "filesystem": place, "path": path, "versions": versions})
            })
            .collect();
        print_json(&serde_json::Value::Array(files));
        return;
    }
    for ((vm, place, path), versions) in found {
        line(format!("{vm}: {place}{path}"));
        for v in versions.iter().filter(shown) {
            let (size, mtime) = v
                .attr
                .map_or((String::from("-"), String::from("-")), |attr| {
                    (
                        human(attr.size),
                        humantime::format_rfc3339_seconds(attr.mtime).to_string(),
                    )
                });
            line(format!(
                "  {}  {}  {:>10}  modified {}  {}",
                snapshot_time(&v.time),
                v.snapshot.short(),
                size,
                mtime,
                v.status
            ));
        }
    }
}

/// Seconds since the epoch (negative before it).
fn unix(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}
