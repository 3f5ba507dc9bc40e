//! Repository verification: `vmstash check [--read-data]`.
//!
//! Without `read_data`: every index and snapshot decodes, every pack an
//! index names exists and is long enough, every blob a snapshot needs is
//! indexed, and every map blob decodes. With it, every pack is read whole:
//! its name is its SHA-256, its header matches the index, and every blob
//! passes GCM and SHA-256. Damage is reported with the file and the
//! snapshots it affects.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::backend::{relative_path, FileKind};
use crate::id::Id;
use crate::index::{IndexedPack, MasterIndex};
use crate::pack;
use crate::repository::Repository;
use crate::snapshot::Manifest;
use crate::Result;

/// What `check` found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CheckReport {
    /// Damage: the repository cannot restore something.
    pub errors: Vec<String>,
    /// Harmless findings, e.g. packs left by an interrupted backup.
    pub warnings: Vec<String>,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Packs in the repository.
    pub packs: usize,
    /// Distinct blobs indexed.
    pub blobs: usize,
    /// Packs read whole (with `read_data`).
    pub packs_read: usize,
}

impl CheckReport {
    /// True when nothing is damaged.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Checks `repo`; `on_pack` is called after each pack read (for progress).
pub fn check(
    repo: &Repository,
    read_data: bool,
    on_pack: &(dyn Fn(u64) + Sync),
) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let mut index_files = Vec::new();
    for (name, _) in repo.backend().list(FileKind::Index)? {
        match repo
            .read_file(FileKind::Index, crate::sealed::FileType::Index, &name)
            .and_then(|p| crate::index::decode(&p, &relative_path(FileKind::Index, &name)))
        {
            Ok(packs) => index_files.push(packs),
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    let indexed: HashMap<Id, IndexedPack> = index_files
        .iter()
        .flatten()
        .map(|p| (p.id, p.clone()))
        .collect();
    let index = MasterIndex::build(index_files);
    report.blobs = index.len();

    let mut bad_blobs = check_pack_files(repo, &indexed, &mut report)?;
    if read_data {
        bad_blobs.extend(read_all_packs(repo, &indexed, &mut report, on_pack)?);
    }
    check_snapshots(repo, &index, &bad_blobs, &mut report)?;
    Ok(report)
}

/// Packs named by indexes exist and are long enough; unindexed packs are
/// noted. Returns the blobs of missing packs.
fn check_pack_files(
    repo: &Repository,
    indexed: &HashMap<Id, IndexedPack>,
    report: &mut CheckReport,
) -> Result<HashSet<Id>> {
    let present: HashMap<String, u64> = repo.backend().list(FileKind::Pack)?.into_iter().collect();
    report.packs = present.len();
    let mut bad = HashSet::new();
    for (id, p) in indexed {
        let name = id.to_hex();
        let need = p.blobs.iter().map(|b| b.end()).max().unwrap_or(0);
        match present.get(&name) {
            None => {
                report.errors.push(format!(
                    "{} is listed in the index but missing",
                    relative_path(FileKind::Pack, &name)
                ));
                bad.extend(p.blobs.iter().map(|b| b.id));
            }
            Some(&len) if len < need => {
                report.errors.push(format!(
                    "{} is truncated: {len} bytes, the index needs {need}",
                    relative_path(FileKind::Pack, &name)
                ));
                bad.extend(p.blobs.iter().map(|b| b.id));
            }
            Some(_) => {}
        }
    }
    for name in present.keys() {
        let known = Id::from_hex(name).is_some_and(|id| indexed.contains_key(&id));
        if !known {
            report.warnings.push(format!(
                "{} is in no index (left by an interrupted backup; harmless)",
                relative_path(FileKind::Pack, name)
            ));
        }
    }
    Ok(bad)
}

/// Reads every indexed pack whole, on two threads; returns the blobs of
/// damaged packs.
fn read_all_packs(
    repo: &Repository,
    indexed: &HashMap<Id, IndexedPack>,
    report: &mut CheckReport,
    on_pack: &(dyn Fn(u64) + Sync),
) -> Result<HashSet<Id>> {
    let work: Mutex<std::collections::hash_map::Values<'_, Id, IndexedPack>> =
        Mutex::new(indexed.values());
    let found: Mutex<(Vec<String>, HashSet<Id>, usize)> =
        Mutex::new((Vec::new(), HashSet::new(), 0));
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let next = work
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .next();
                let Some(p) = next else { return };
                let result = verify_pack(repo, p);
                let size = result.as_ref().map_or(0, |n| *n);
                let mut f = found
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                f.2 += 1;
                if let Err(e) = result {
                    f.0.push(e.to_string());
                    f.1.extend(p.blobs.iter().map(|b| b.id));
                }
                drop(f);
                on_pack(size);
            });
        }
    });
    let (errors, bad, read) = found
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    report.errors.extend(errors);
    report.packs_read = read;
    Ok(bad)
}

/// One pack: hash, header, every blob. Returns its size.
fn verify_pack(repo: &Repository, p: &IndexedPack) -> Result<u64> {
    let name = p.id.to_hex();
    let file = relative_path(FileKind::Pack, &name);
    let bytes = repo.backend().read(FileKind::Pack, &name)?;
    if Id::of(&bytes) != p.id {
        return Err(crate::Error::corrupt(
            &file,
            "content does not match its name (SHA-256)",
        ));
    }
    let (salt, entries) = pack::read_header(repo.master(), &bytes, &file)?;
    if salt != p.salt || entries != p.blobs {
        return Err(crate::Error::corrupt(
            &file,
            "pack header disagrees with the index",
        ));
    }
    for e in &entries {
        let start = usize::try_from(e.offset).unwrap_or(usize::MAX);
        let end = usize::try_from(e.end()).unwrap_or(usize::MAX);
        let sealed = bytes
            .get(start..end)
            .ok_or_else(|| crate::Error::corrupt(&file, "blob past end"))?;
        pack::open_blob(repo.master(), &salt, e, sealed, &file)?;
    }
    Ok(u64::try_from(bytes.len()).unwrap_or(0))
}

/// Every blob each snapshot needs is indexed and not damaged.
fn check_snapshots(
    repo: &Repository,
    index: &MasterIndex,
    bad: &HashSet<Id>,
    report: &mut CheckReport,
) -> Result<()> {
    for (name, _) in repo.backend().list(FileKind::Snapshot)? {
        let file = relative_path(FileKind::Snapshot, &name);
        let manifest = repo
            .read_file(FileKind::Snapshot, crate::sealed::FileType::Snapshot, &name)
            .and_then(|p| Manifest::decode(&p, &file));
        let m = match manifest {
            Ok(m) => m,
            Err(e) => {
                report.errors.push(e.to_string());
                continue;
            }
        };
        report.snapshots += 1;
        let short = name.get(..8).unwrap_or(&name);
        for problem in snapshot_problems(repo, index, bad, &m) {
            report
                .errors
                .push(format!("snapshot {short} ({}): {problem}", m.name));
        }
    }
    Ok(())
}

fn snapshot_problems(
    repo: &Repository,
    index: &MasterIndex,
    bad: &HashSet<Id>,
    m: &Manifest,
) -> Vec<String> {
    let mut problems = Vec::new();
    for disk in &m.disks {
        let mut damaged = 0u64;
        for (seg, seg_id) in disk.map.iter().enumerate() {
            if !seg_id.is_zero() && (bad.contains(seg_id) || !index.contains(seg_id)) {
                problems.push(format!(
                    "disk {}: map segment {seg} is missing or damaged",
                    disk.name
                ));
                continue;
            }
            let ids = match crate::disk_reader::map_segment(repo, index, disk, seg) {
                Ok(ids) => ids,
                Err(e) => {
                    problems.push(format!("disk {}: {e}", disk.name));
                    continue;
                }
            };
            for id in ids.iter().filter(|id| !id.is_zero()) {
                // Blobs are deduplicated by id whatever their type, so a
                // chunk may be stored as a map blob with the same bytes.
                let ok = !bad.contains(id) && index.contains(id);
                damaged += u64::from(!ok);
            }
        }
        if damaged > 0 {
            let bytes = damaged.saturating_mul(u64::from(disk.chunk_size));
            problems.push(format!(
                "disk {}: {damaged} chunks ({bytes} bytes) are missing or damaged",
                disk.name
            ));
        }
    }
    problems
}
