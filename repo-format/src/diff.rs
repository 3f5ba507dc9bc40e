//! What changed between two snapshots, disk by disk (`vmstash diff`): chunk positions whose
//! chunk differs, and the non-zero bytes at those positions on each side. Chunk maps are
//! compared one map segment at a time, so memory stays bounded whatever the disk size.

use serde::Serialize;

use crate::chunkmap::{chunk_count, SEGMENT_ENTRIES};
use crate::disk_reader::map_segment;
use crate::id::Id;
use crate::index::MasterIndex;
use crate::repository::Repository;
use crate::snapshot::{Disk, Manifest};
use crate::{Error, Result};

/// How one disk differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskDiff {
    /// The disk's name.
    pub name: String,
    /// Its size in the first snapshot (`None`: the disk is new).
    pub old_size: Option<u64>,
    /// Its size in the second snapshot (`None`: the disk is gone).
    pub new_size: Option<u64>,
    /// Chunk positions whose content differs.
    pub chunks_changed: u64,
    /// Non-zero bytes of the second snapshot at those positions.
    pub bytes_added: u64,
    /// Non-zero bytes of the first snapshot at those positions.
    pub bytes_removed: u64,
}

/// Compares every disk of `old` with the disk of the same name in `new`; disks are listed in
/// `old`'s order, then the new ones in `new`'s.
pub fn diff(
    repo: &Repository,
    index: &MasterIndex,
    old: &Manifest,
    new: &Manifest,
) -> Result<Vec<DiskDiff>> {
    let mut out = Vec::new();
    for d in &old.disks {
        let other = new.disks.iter().find(|n| n.name == d.name);
        out.push(diff_disk(repo, index, Some(d), other)?);
    }
    for d in new
        .disks
        .iter()
        .filter(|n| !old.disks.iter().any(|o| o.name == n.name))
    {
        out.push(diff_disk(repo, index, None, Some(d))?);
    }
    Ok(out)
}

fn diff_disk(
    repo: &Repository,
    index: &MasterIndex,
    old: Option<&Disk>,
    new: Option<&Disk>,
) -> Result<DiskDiff> {
    let name = old.or(new).map(|d| d.name.clone()).unwrap_or_default();
    if let (Some(a), Some(b)) = (old, new) {
        if a.chunk_size != b.chunk_size {
            return Err(Error::InvalidParameter(format!(
                "disk {name}: the snapshots use different chunk sizes ({} and {} bytes)",
                a.chunk_size, b.chunk_size
            )));
        }
    }
    let mut result = DiskDiff {
        name,
        old_size: old.map(|d| d.size),
        new_size: new.map(|d| d.size),
        chunks_changed: 0,
        bytes_added: 0,
        bytes_removed: 0,
    };
    let segments = old
        .map_or(0, |d| d.map.len())
        .max(new.map_or(0, |d| d.map.len()));
    for seg in 0..segments {
        let a = segment_of(repo, index, old, seg)?;
        let b = segment_of(repo, index, new, seg)?;
        let first = u64::try_from(seg.saturating_mul(SEGMENT_ENTRIES)).unwrap_or(u64::MAX);
        for k in 0..a.len().max(b.len()) {
            let (ia, ib) = (a.get(k), b.get(k));
            if ia == ib {
                continue;
            }
            let no = first.saturating_add(u64::try_from(k).unwrap_or(u64::MAX));
            result.chunks_changed += 1;
            result.bytes_added += nonzero_len(new, ib, no);
            result.bytes_removed += nonzero_len(old, ia, no);
        }
    }
    Ok(result)
}

/// Segment `seg` of `disk` (empty past its end, or for no disk).
fn segment_of(
    repo: &Repository,
    index: &MasterIndex,
    disk: Option<&Disk>,
    seg: usize,
) -> Result<Vec<Id>> {
    match disk {
        Some(d) if seg < d.map.len() => map_segment(repo, index, d, seg),
        _ => Ok(Vec::new()),
    }
}

/// The length of chunk `no` of `disk` when `id` is a non-zero chunk, else 0.
fn nonzero_len(disk: Option<&Disk>, id: Option<&Id>, no: u64) -> u64 {
    match (disk, id) {
        (Some(d), Some(id)) if !id.is_zero() && no < chunk_count(d.size, d.chunk_size) => {
            let start = no.saturating_mul(u64::from(d.chunk_size));
            d.size.saturating_sub(start).min(u64::from(d.chunk_size))
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{back_up, BackupDisk, BackupPlan};
    use crate::source::MemorySource;
    use crate::testing::{memory_repository, noise, CHUNK_SIZE};
    use crate::{CancelToken, NoProgress};

    fn backup(repo: &Repository, disks: Vec<(&str, Vec<u8>)>) -> Manifest {
        let disks = disks
            .into_iter()
            .map(|(name, bytes)| BackupDisk::new(name, "mem", Box::new(MemorySource::new(bytes))))
            .collect();
        back_up(
            repo,
            BackupPlan::new("vm", disks),
            &NoProgress,
            &CancelToken::new(),
        )
        .expect("backup")
        .manifest
    }

    #[test]
    fn changed_added_and_removed_bytes_per_disk() {
        let (_, repo) = memory_repository();
        let chunk = usize::try_from(CHUNK_SIZE).expect("chunk");
        let mut a = noise(1, chunk * 8);
        a[chunk * 2..chunk * 3].fill(0);
        let first = backup(&repo, vec![("vda", a.clone()), ("vdb", noise(2, chunk))]);
        let mut b = a;
        b[5] ^= 1; // chunk 0 changed
        b[chunk * 2] = 7; // chunk 2 was zero, now data
        b[chunk * 4..chunk * 5].fill(0); // chunk 4 now zero
        b.extend(noise(3, chunk / 2)); // a half chunk more
        let second = backup(&repo, vec![("vda", b), ("vdc", noise(4, chunk))]);
        let index = repo.load_index().expect("index");
        let d = diff(&repo, &index, &first, &second).expect("diff");
        let c = u64::from(CHUNK_SIZE);
        assert_eq!(d.len(), 3);
        assert_eq!((d[0].name.as_str(), d[0].chunks_changed), ("vda", 4));
        assert_eq!(
            d[0].bytes_added,
            c + c + c / 2,
            "chunks 0, 2 and the new half chunk"
        );
        assert_eq!(d[0].bytes_removed, c + c, "chunks 0 and 4");
        assert_eq!(
            (d[1].name.as_str(), d[1].new_size, d[1].bytes_removed),
            ("vdb", None, c)
        );
        assert_eq!(
            (d[2].name.as_str(), d[2].old_size, d[2].bytes_added),
            ("vdc", None, c)
        );
        let same = diff(&repo, &index, &second, &second).expect("same");
        assert!(same.iter().all(|x| x.chunks_changed == 0));
    }
}
