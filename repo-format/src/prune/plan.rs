//! Deciding what a prune does with each pack (spec/FORMAT.md §20.3 steps 3 and 5): which blobs
//! the snapshots need, which packs hold none of them (removed), and which partly used packs are
//! worth rewriting (repacked) to bring unused space under the tolerated limit.

use std::collections::HashSet;

use serde::Serialize;

use crate::blob::BlobType;
use crate::disk_reader::map_segment;
use crate::entry::BlobEntry;
use crate::id::Id;
use crate::index::{IndexedPack, MasterIndex};
use crate::repository::Repository;
use crate::snapshot::Manifest;
use crate::{CancelToken, Error, Result};

/// How much unused space a prune tolerates in the packs it keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxUnused {
    /// `p` hundredths of a percent of the packs' bytes may be unused: `unused ≤ used · p /
    /// (10000 − p)` (500 is restic's default 5 %).
    Hundredths(u32),
    /// At most this many bytes.
    Bytes(u64),
    /// Any amount: only packs with nothing used are removed.
    Unlimited,
}

impl MaxUnused {
    /// Parses `5%`, `0%`, a size (`500M`, `2G`, `1024`) or `unlimited`.
    pub fn parse(s: &str) -> Result<MaxUnused> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("unlimited") {
            return Ok(MaxUnused::Unlimited);
        }
        if let Some(p) = t.strip_suffix('%') {
            return crate::units::parse_hundredths(p.trim())
                .filter(|&h| h < 10_000)
                .map(MaxUnused::Hundredths)
                .ok_or_else(|| {
                    Error::InvalidParameter(format!(
                        "--max-unused {s:?}: a percentage must be from 0% to below 100%, with at most two decimals"
                    ))
                });
        }
        crate::units::parse_size(t)
            .map(MaxUnused::Bytes)
            .ok_or_else(|| {
                Error::InvalidParameter(format!(
                    "--max-unused {s:?}: give a percentage (5%), a size (500M, 2G) or 'unlimited'"
                ))
            })
    }

    /// The unused bytes tolerated beside `used` bytes of used blobs.
    pub fn limit(self, used: u64) -> u64 {
        match self {
            MaxUnused::Hundredths(p) => {
                let l = u128::from(used) * u128::from(p) / u128::from(10_000 - p.min(9_999));
                u64::try_from(l).unwrap_or(u64::MAX)
            }
            MaxUnused::Bytes(b) => b,
            MaxUnused::Unlimited => u64::MAX,
        }
    }
}

/// Every blob id a snapshot needs: the map segments and the chunks they list. Each distinct
/// segment is read once, so consecutive snapshots sharing most of their map cost little.
/// `on_snapshot` is called after each snapshot.
pub(super) fn needed_blobs(
    repo: &Repository,
    maps: &MasterIndex,
    snapshots: &[(Id, Manifest)],
    seen_segments: &mut HashSet<Id>,
    needed: &mut HashSet<Id>,
    cancel: &CancelToken,
    on_snapshot: &dyn Fn(),
) -> Result<()> {
    for (_, manifest) in snapshots {
        for disk in &manifest.disks {
            for (s, seg) in disk.map.iter().enumerate() {
                cancel.check()?;
                if seg.is_zero() || !seen_segments.insert(*seg) {
                    continue;
                }
                needed.insert(*seg);
                let ids = map_segment(repo, maps, disk, s)?;
                needed.extend(ids.into_iter().filter(|id| !id.is_zero()));
            }
        }
        on_snapshot();
    }
    Ok(())
}

/// The map blobs of `packs`, indexed, to read the snapshots' maps with little memory.
pub(super) fn map_index<'a>(packs: impl Iterator<Item = &'a IndexedPack>) -> MasterIndex {
    MasterIndex::build(packs.map(|p| {
        vec![IndexedPack {
            id: p.id,
            salt: p.salt,
            blobs: p
                .blobs
                .iter()
                .filter(|b| b.ty == BlobType::Map)
                .copied()
                .collect(),
        }]
    }))
}

/// Positions of `packs`, the packs with the largest share of needed bytes first (stable).
fn most_needed_first(packs: &[IndexedPack], needed: &HashSet<Id>) -> Vec<usize> {
    let share = |p: &IndexedPack| {
        let (mut used, mut all) = (0u64, 0u64);
        for b in &p.blobs {
            all += u64::from(b.length);
            if needed.contains(&b.id) {
                used += u64::from(b.length);
            }
        }
        // Parts per million, to sort without floats.
        used.saturating_mul(1_000_000) / all.max(1)
    };
    let mut order: Vec<(u64, usize)> = packs
        .iter()
        .enumerate()
        .map(|(i, p)| (share(p), i))
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    order.into_iter().map(|(_, i)| i).collect()
}

/// How one pack is used.
#[derive(Debug, Clone)]
pub struct PackUse {
    /// Position of the pack in the list given to [`classify`].
    pub pack: usize,
    /// Sealed bytes of the blobs snapshots need (first copy of each).
    pub used_bytes: u64,
    /// Sealed bytes of the other blobs.
    pub unused_bytes: u64,
    /// The needed blobs' entries, kept only for packs with both kinds (repack candidates).
    pub used: Vec<BlobEntry>,
}

/// The packs a prune keeps, removes and repacks.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Plan {
    /// Packs examined.
    pub packs: usize,
    /// Sealed bytes of needed blobs.
    pub used_bytes: u64,
    /// Sealed bytes of blobs nothing needs (or second copies).
    pub unused_bytes: u64,
    /// Needed blobs no indexed pack holds (damage `check` reports; a marked pack may have them).
    pub missing_blobs: usize,
    /// Packs holding no needed blob: positions in the pack list.
    #[serde(skip)]
    pub remove: Vec<usize>,
    /// Packs to rewrite, with the entries of their needed blobs.
    #[serde(skip)]
    pub repack: Vec<PackUse>,
    /// Unused bytes left in kept packs after the plan.
    pub unused_after: u64,
}

/// Classifies `packs` against `needed` (consumed: what is left in it afterwards is needed and in
/// no pack) and picks the packs to repack: the most unused first, while the unused bytes in kept
/// packs exceed `max_unused` and the bytes to copy stay within `max_repack` (sealed bytes).
///
/// A blob stored twice (two backups at once, a pack a backup recovered after a prune had
/// repacked it) is used in the pack that is the most needed otherwise, so that the other copy
/// leaves its pack unused rather than partly used: packs are taken in the order of their share
/// of needed bytes, highest first.
pub fn classify(
    packs: &[IndexedPack],
    needed: &mut HashSet<Id>,
    max_unused: MaxUnused,
    max_repack: Option<u64>,
) -> Plan {
    let mut plan = Plan {
        packs: packs.len(),
        ..Plan::default()
    };
    let mut mixed = Vec::new();
    for i in most_needed_first(packs, needed) {
        let Some(pack) = packs.get(i) else {
            continue;
        };
        let mut usage = PackUse {
            pack: i,
            used_bytes: 0,
            unused_bytes: 0,
            used: Vec::new(),
        };
        let mut used_entries = Vec::new();
        for b in &pack.blobs {
            if needed.remove(&b.id) {
                usage.used_bytes += u64::from(b.length);
                used_entries.push(*b);
            } else {
                usage.unused_bytes += u64::from(b.length);
            }
        }
        plan.used_bytes += usage.used_bytes;
        plan.unused_bytes += usage.unused_bytes;
        if used_entries.is_empty() {
            plan.remove.push(i);
        } else if usage.unused_bytes > 0 {
            usage.used = used_entries;
            mixed.push(usage);
        }
    }
    plan.remove.sort_unstable();
    plan.missing_blobs = needed.len();
    let removed_unused: u64 = plan
        .remove
        .iter()
        .filter_map(|&i| packs.get(i))
        .flat_map(|p| p.blobs.iter())
        .map(|b| u64::from(b.length))
        .sum();
    let mut unused = plan.unused_bytes - removed_unused;
    let limit = max_unused.limit(plan.used_bytes);
    mixed.sort_by(|a, b| {
        b.unused_bytes
            .cmp(&a.unused_bytes)
            .then(a.used_bytes.cmp(&b.used_bytes))
    });
    let mut copied = 0u64;
    for usage in mixed {
        if unused <= limit {
            break;
        }
        if max_repack.is_some_and(|m| copied + usage.used_bytes > m) {
            continue;
        }
        copied += usage.used_bytes;
        unused -= usage.unused_bytes;
        plan.repack.push(usage);
    }
    plan.unused_after = unused;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(n: u8, blobs: &[(u8, u32)]) -> IndexedPack {
        IndexedPack {
            id: Id::of(&[n]),
            salt: [0; 32],
            blobs: blobs
                .iter()
                .map(|&(b, len)| BlobEntry {
                    ty: BlobType::Data,
                    id: Id::of(&[b, 0xb]),
                    offset: 34,
                    length: len,
                    raw_length: len,
                })
                .collect(),
        }
    }

    fn ids(bs: &[u8]) -> HashSet<Id> {
        bs.iter().map(|&b| Id::of(&[b, 0xb])).collect()
    }

    #[test]
    fn unused_packs_are_removed_and_the_emptiest_mixed_ones_repacked() {
        let packs = [
            pack(1, &[(1, 100), (2, 100)]),   // all used
            pack(2, &[(3, 100), (4, 100)]),   // nothing used
            pack(3, &[(5, 100), (6, 900)]),   // 90 % unused
            pack(4, &[(7, 900), (8, 100)]),   // 10 % unused
            pack(5, &[(1, 100)]),             // a second copy of a used blob
            pack(6, &[(10, 100), (11, 300)]), // a second copy of blob 10, beside an unneeded one
            pack(7, &[(10, 100), (12, 100)]), // blob 10 again, in a pack needed whole
        ];
        let mut needed = ids(&[1, 2, 5, 7, 9, 10, 12]);
        let plan = classify(&packs, &mut needed, MaxUnused::Hundredths(500), None);
        assert_eq!(
            plan.remove,
            vec![1, 4, 5],
            "pack 6's copy of blob 10 is the spare one"
        );
        assert_eq!(plan.missing_blobs, 1, "blob 9 is in no pack");
        assert_eq!(plan.used_bytes, 1400);
        assert_eq!(plan.unused_bytes, 1700);
        // Limit 1400·5/95 = 73 bytes: both mixed packs go, the emptiest first.
        let order: Vec<usize> = plan.repack.iter().map(|u| u.pack).collect();
        assert_eq!(order, vec![2, 3]);
        assert_eq!(plan.repack[0].used.len(), 1);
        assert_eq!(plan.unused_after, 0);

        let mut needed = ids(&[1, 2, 5, 7]);
        let plan = classify(&packs, &mut needed, MaxUnused::Bytes(150), None);
        assert_eq!(
            plan.repack.len(),
            1,
            "one repack brings 1000 unused bytes to 100"
        );
        assert_eq!(plan.unused_after, 100);

        let mut needed = ids(&[1, 2, 5, 7]);
        let plan = classify(&packs, &mut needed, MaxUnused::Unlimited, None);
        assert!(plan.repack.is_empty());
        assert_eq!(plan.remove, vec![1, 4, 5, 6]);

        let mut needed = ids(&[1, 2, 5, 7]);
        let plan = classify(&packs, &mut needed, MaxUnused::Hundredths(0), Some(500));
        let order: Vec<usize> = plan.repack.iter().map(|u| u.pack).collect();
        assert_eq!(
            order,
            vec![2],
            "the 900-byte copy of pack 4 exceeds --max-repack-size"
        );
    }

    #[test]
    fn max_unused_and_sizes_parse() {
        assert_eq!(
            MaxUnused::parse("5%").expect("p"),
            MaxUnused::Hundredths(500)
        );
        assert_eq!(
            MaxUnused::parse("2.5%").expect("p"),
            MaxUnused::Hundredths(250)
        );
        assert_eq!(
            MaxUnused::parse("99.99%").expect("p"),
            MaxUnused::Hundredths(9999)
        );
        assert_eq!(
            MaxUnused::parse("unlimited").expect("u"),
            MaxUnused::Unlimited
        );
        assert_eq!(
            MaxUnused::parse("2G").expect("g"),
            MaxUnused::Bytes(2 << 30)
        );
        assert_eq!(
            MaxUnused::parse("500MiB").expect("m"),
            MaxUnused::Bytes(500 << 20)
        );
        assert_eq!(MaxUnused::parse("1024").expect("b"), MaxUnused::Bytes(1024));
        for bad in [
            "100%",
            "-1%",
            "x",
            "",
            "5 %%",
            "99999999999999T",
            "1.234%",
            ".5%",
        ] {
            assert!(MaxUnused::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(MaxUnused::Hundredths(5000).limit(100), 100);
        assert_eq!(MaxUnused::Hundredths(0).limit(100), 0);
    }
}
