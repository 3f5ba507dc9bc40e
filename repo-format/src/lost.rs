//! Which bytes of a snapshot's disk cannot be read: the ranges of chunks whose blob is missing
//! or damaged, and of whole map segments that are. `check` reports them; `repair snapshots`
//! records them in a new snapshot (`lost`, spec §13).

use std::collections::HashSet;

use crate::chunkmap::SEGMENT_ENTRIES;
use crate::disk_reader::map_segment;
use crate::id::Id;
use crate::index::MasterIndex;
use crate::repository::Repository;
use crate::snapshot::{Disk, LostRange};
use crate::{Error, Result};

/// The byte ranges of `disk` that cannot be read through `index` (blobs in `bad` count as
/// damaged), sorted, disjoint and merged. Only an I/O error reading a map segment is an error.
pub fn unreadable_ranges(
    repo: &Repository,
    index: &MasterIndex,
    bad: &HashSet<Id>,
    disk: &Disk,
) -> Result<Vec<LostRange>> {
    let chunk = u64::from(disk.chunk_size);
    let per_segment = u64::try_from(SEGMENT_ENTRIES).unwrap_or(u64::MAX);
    let mut out: Vec<LostRange> = Vec::new();
    let mut add = |offset: u64, length: u64| {
        let length = length.min(disk.size.saturating_sub(offset));
        match out.last_mut() {
            Some(last) if last.offset + last.length == offset => last.length += length,
            _ if length > 0 => out.push(LostRange { offset, length }),
            _ => {}
        }
    };
    let readable = |id: &Id| id.is_zero() || (!bad.contains(id) && index.contains(id));
    for (seg, seg_id) in disk.map.iter().enumerate() {
        let first = u64::try_from(seg)
            .unwrap_or(u64::MAX)
            .saturating_mul(per_segment);
        let start = first.saturating_mul(chunk);
        let ids = if readable(seg_id) {
            match map_segment(repo, index, disk, seg) {
                Ok(ids) => Some(ids),
                Err(Error::Corrupt { .. } | Error::BlobNotFound(_)) => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        match ids {
            None => add(start, per_segment.saturating_mul(chunk)),
            Some(ids) => {
                for (j, id) in ids.iter().enumerate() {
                    if !readable(id) {
                        let no = first + u64::try_from(j).unwrap_or(u64::MAX);
                        add(no.saturating_mul(chunk), chunk);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Total bytes of `ranges`.
pub fn total(ranges: &[LostRange]) -> u64 {
    ranges.iter().map(|r| r.length).sum()
}

/// True when every range of `found` lies inside one range of `recorded`.
pub fn all_recorded(found: &[LostRange], recorded: &[LostRange]) -> bool {
    found.iter().all(|f| {
        recorded
            .iter()
            .any(|r| r.offset <= f.offset && f.offset + f.length <= r.offset + r.length)
    })
}
