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
use crate::cancel::CancelToken;
use crate::id::Id;
use crate::index::{IndexedPack, MasterIndex};
use crate::pack;
use crate::repository::Repository;
use crate::snapshot::Manifest;
use crate::{Error, Result};

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
    /// Packs a prune marked for deletion (in no index, deleted by a later prune, §20).
    pub packs_marked: usize,
    /// Packs whose bytes are damaged or cut short (`repair packs` salvages what still reads).
    pub damaged_packs: Vec<String>,
    /// Snapshots (ids) that need chunks that are missing or damaged (`repair snapshots`).
    pub damaged_snapshots: Vec<String>,
}

impl CheckReport {
    /// True when nothing is damaged.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Which indexed packs `check` reads whole.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    /// None: structure only.
    None,
    /// Every pack.
    All,
    /// Group `n` of `of` (1-based): the packs whose id's first byte modulo `of` is `n − 1`, so
    /// that `of` runs with n = 1 … `of` read every pack once (restic's `n/t`).
    Group {
        /// Which group, 1 … `of`.
        n: u32,
        /// How many groups.
        of: u32,
    },
    /// A random share of the packs, in hundredths of a percent: 1 … 10,000 (restic's `N%`).
    Share(u32),
    /// Random packs up to about this many bytes (restic's `SIZE`).
    Bytes(u64),
}

impl ReadData {
    /// Parses `--read-data-subset`: `n/t`, `N%` or a size (`500M`, `2G`, `1024`).
    pub fn parse_subset(text: &str) -> Result<ReadData> {
        let bad = |why: &str| {
            Error::InvalidParameter(format!(
                "read-data subset {text:?}: {why}; give n/t (1 ≤ n ≤ t), a percentage like 10% or a size like 500M"
            ))
        };
        let text = text.trim();
        if let Some((n, of)) = text.split_once('/') {
            let (n, of): (u32, u32) = (
                n.parse().map_err(|_| bad("n is not a number"))?,
                of.parse().map_err(|_| bad("t is not a number"))?,
            );
            if n == 0 || n > of || of > 256 {
                return Err(bad("n must be 1 … t and t at most 256"));
            }
            return Ok(ReadData::Group { n, of });
        }
        if let Some(pct) = text.strip_suffix('%') {
            return match crate::units::parse_hundredths(pct) {
                Some(h @ 1..=10_000) => Ok(ReadData::Share(h)),
                Some(_) => Err(bad("the percentage must be above 0 and at most 100")),
                None => Err(bad("not a percentage (at most two decimals)")),
            };
        }
        let bytes =
            crate::units::parse_size(text).ok_or_else(|| bad("not a size, or too large"))?;
        if bytes == 0 {
            return Err(bad("a size of 0 reads nothing"));
        }
        Ok(ReadData::Bytes(bytes))
    }

    /// The packs of `packs` (with their sizes) to read.
    fn select<'a>(&self, packs: Vec<(&'a IndexedPack, u64)>) -> Vec<&'a IndexedPack> {
        use rand::seq::SliceRandom;
        let mut packs = packs;
        match *self {
            ReadData::None => Vec::new(),
            ReadData::All => packs.into_iter().map(|p| p.0).collect(),
            ReadData::Group { n, of } => packs
                .into_iter()
                .filter(|(p, _)| u32::from(p.id.as_bytes()[0]) % of == n - 1)
                .map(|p| p.0)
                .collect(),
            ReadData::Share(hundredths) => {
                packs.shuffle(&mut rand::thread_rng());
                let len = u64::try_from(packs.len()).unwrap_or(u64::MAX);
                let take = len.saturating_mul(u64::from(hundredths)).div_ceil(10_000);
                packs
                    .into_iter()
                    .take(usize::try_from(take).unwrap_or(usize::MAX))
                    .map(|p| p.0)
                    .collect()
            }
            ReadData::Bytes(limit) => {
                packs.shuffle(&mut rand::thread_rng());
                let mut total = 0u64;
                packs
                    .into_iter()
                    .take_while(|(_, size)| {
                        let fits = total < limit;
                        total = total.saturating_add(*size);
                        fits
                    })
                    .map(|p| p.0)
                    .collect()
            }
        }
    }
}

/// Checks `repo`, reading the packs `read` names whole; `on_pack` is called after each pack
/// read (for progress).
pub fn check(
    repo: &Repository,
    read: ReadData,
    on_pack: &(dyn Fn(u64) + Sync),
) -> Result<CheckReport> {
    check_until(repo, read, on_pack, &CancelToken::new())
}

/// [`check`], stopping with [`Error::Cancelled`] between packs once `cancel` is set (a check
/// only reads: nothing is left to undo).
pub fn check_until(
    repo: &Repository,
    read: ReadData,
    on_pack: &(dyn Fn(u64) + Sync),
    cancel: &CancelToken,
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
    if read != ReadData::None {
        let sizes: HashMap<String, u64> =
            repo.backend().list(FileKind::Pack)?.into_iter().collect();
        let candidates = indexed
            .values()
            .filter_map(|p| sizes.get(&p.id.to_hex()).map(|size| (p, *size)))
            .collect();
        let chosen = read.select(candidates);
        bad_blobs.extend(read_packs(repo, &chosen, &mut report, on_pack, cancel)?);
    }
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
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
                report.damaged_packs.push(name.clone());
                report.errors.push(format!(
                    "{} is truncated: {len} bytes, the index needs {need}",
                    relative_path(FileKind::Pack, &name)
                ));
                bad.extend(p.blobs.iter().map(|b| b.id));
            }
            Some(_) => {}
        }
    }
    let marked = match repo.marked_packs() {
        Ok(m) => m,
        Err(e) => {
            report.errors.push(format!(
                "{e}; a prune deletes nothing that mark lists: run `vmstash prune` after removing the damaged file under marks/"
            ));
            HashSet::new()
        }
    };
    for name in present.keys() {
        let id = Id::from_hex(name);
        let known = id.is_some_and(|id| indexed.contains_key(&id));
        if id.is_some_and(|id| marked.contains(&id)) && !known {
            report.packs_marked += 1;
        } else if !known {
            report.warnings.push(format!(
                "{} is in no index (left by an interrupted backup; harmless)",
                relative_path(FileKind::Pack, name)
            ));
        }
    }
    Ok(bad)
}

/// What reading packs whole found.
#[derive(Default)]
struct PackFindings {
    errors: Vec<String>,
    bad_blobs: HashSet<Id>,
    read: usize,
    damaged: Vec<String>,
}

/// Reads every indexed pack whole, on two threads; returns the blobs of
/// damaged packs.
fn read_packs(
    repo: &Repository,
    packs: &[&IndexedPack],
    report: &mut CheckReport,
    on_pack: &(dyn Fn(u64) + Sync),
    cancel: &CancelToken,
) -> Result<HashSet<Id>> {
    let work = Mutex::new(packs.iter().copied());
    let found = Mutex::new(PackFindings::default());
    std::thread::scope(|s| {
        for _ in 0..crate::threads::io_workers() {
            s.spawn(|| loop {
                let next = work
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .next();
                let Some(p) = next.filter(|_| !cancel.is_cancelled()) else {
                    return;
                };
                let result = verify_pack(repo, p);
                let size = result.as_ref().map_or(0, |n| *n);
                let mut f = found
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                f.read += 1;
                if let Err(e) = result {
                    f.errors.push(e.to_string());
                    f.bad_blobs.extend(p.blobs.iter().map(|b| b.id));
                    f.damaged.push(p.id.to_hex());
                }
                drop(f);
                on_pack(size);
            });
        }
    });
    let f = found
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    report.errors.extend(f.errors);
    report.damaged_packs.extend(f.damaged);
    report.damaged_packs.sort();
    report.packs_read = f.read;
    Ok(f.bad_blobs)
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
        let (problems, warnings) = snapshot_problems(repo, index, bad, &m);
        if !problems.is_empty() {
            report.damaged_snapshots.push(name.clone());
        }
        for w in warnings {
            report
                .warnings
                .push(format!("snapshot {short} ({}): {w}", m.name));
        }
        for problem in problems {
            report
                .errors
                .push(format!("snapshot {short} ({}): {problem}", m.name));
        }
    }
    Ok(())
}

/// What is wrong with snapshot `m`: errors, and warnings for bytes a repaired snapshot records
/// as lost (`repair snapshots`: readers refuse them, or give zeros when asked).
fn snapshot_problems(
    repo: &Repository,
    index: &MasterIndex,
    bad: &HashSet<Id>,
    m: &Manifest,
) -> (Vec<String>, Vec<String>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    for disk in &m.disks {
        match crate::lost::unreadable_ranges(repo, index, bad, disk) {
            Err(e) => errors.push(format!("disk {}: {e}", disk.name)),
            Ok(found) if found.is_empty() => {}
            Ok(found) => {
                let bytes = crate::lost::total(&found);
                if crate::lost::all_recorded(&found, &disk.lost) {
                    warnings.push(format!(
                        "disk {}: {bytes} bytes in {} ranges are lost, as this repaired snapshot records",
                        disk.name,
                        found.len()
                    ));
                } else {
                    errors.push(format!(
                        "disk {}: {bytes} bytes in {} ranges are missing or damaged (chunks, or whole map segments)",
                        disk.name,
                        found.len()
                    ));
                }
            }
        }
    }
    (errors, warnings)
}

#[cfg(test)]
mod tests {
    use super::ReadData;

    #[test]
    fn subsets_parse_like_restic() {
        assert_eq!(
            ReadData::parse_subset("2/5").expect("n/t"),
            ReadData::Group { n: 2, of: 5 }
        );
        assert_eq!(
            ReadData::parse_subset("10%").expect("%"),
            ReadData::Share(1_000)
        );
        assert_eq!(
            ReadData::parse_subset("0.5%").expect("%"),
            ReadData::Share(50)
        );
        assert_eq!(
            ReadData::parse_subset("100%").expect("%"),
            ReadData::Share(10_000)
        );
        assert_eq!(
            ReadData::parse_subset("500M").expect("size"),
            ReadData::Bytes(500 << 20)
        );
        for bad in [
            "0/5", "6/5", "1/0", "1/300", "0%", "101%", "1.234%", "-5%", "x", "5Q", "0", "%",
        ] {
            assert!(ReadData::parse_subset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_groups_of_one_split_cover_every_pack_once() {
        let packs: Vec<crate::index::IndexedPack> = (0..200u32)
            .map(|i| crate::index::IndexedPack {
                id: crate::Id::of(&i.to_le_bytes()),
                salt: [0; 32],
                blobs: Vec::new(),
            })
            .collect();
        let mut seen = 0;
        for n in 1..=3 {
            let chosen =
                ReadData::Group { n, of: 3 }.select(packs.iter().map(|p| (p, 1)).collect());
            seen += chosen.len();
        }
        assert_eq!(seen, packs.len());
        let share = ReadData::Share(2_500).select(packs.iter().map(|p| (p, 1)).collect());
        assert_eq!(share.len(), 50);
        let bytes = ReadData::Bytes(10).select(packs.iter().map(|p| (p, 4)).collect());
        assert_eq!(
            bytes.len(),
            3,
            "4 + 4 + 4 ≥ 10: reading stops at the pack that reaches it"
        );
    }
}
