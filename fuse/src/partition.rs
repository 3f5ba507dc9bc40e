//! Partition tables of a disk image: GPT, and MBR with extended and logical partitions, so the
//! mount can show each partition as `<disk>/p<N>.raw`.
//!
//! A parser of our own (about the size of the glue either crate would need, since the disk is
//! read through the repository, not a `Read + Seek` device), written for untrusted bytes: every
//! field is range-checked against the disk before use, the GPT entry array and the chain of
//! extended boot records are capped, and loops are refused. It has a fuzz target
//! (`fuzz/fuzz_targets/partition_table.rs`).
//!
//! Sectors are 512 bytes (4Kn disks are not recognised and show no partitions). Numbering is
//! the kernel's: GPT entries by slot (p1 is slot 1, empty slots skipped), MBR primaries 1–4 by
//! slot, logical partitions from 5 in chain order. The extended partition itself is only a
//! container for the logical ones and is not listed.

use std::sync::Arc;

use crate::le::{u16_at, u32_at, u64_at};

/// Bytes per sector.
const SECTOR: u64 = 512;
/// Most GPT entries read (the usual array has 128).
const MAX_GPT_ENTRIES: u32 = 1024;
/// Largest GPT entry accepted.
const MAX_GPT_ENTRY_SIZE: u32 = 4096;
/// Most logical partitions followed in an extended partition.
const MAX_LOGICAL: usize = 128;

/// One partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// Its number (p1, p2, …).
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Why the table could not be read, by whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// The backup's bytes of the table could not be read (a damaged pack, a missing blob):
    /// the repository's error, unchanged.
    #[error("cannot read the backup's partition table: {0}")]
    Read(Arc<vmstash_repo::Error>),
    /// The table is damaged: the bytes were read, and make no valid table.
    #[error("damaged partition table: {0}")]
    Corrupt(String),
}

fn corrupt(what: impl Into<String>) -> PartitionError {
    PartitionError::Corrupt(what.into())
}

/// Reads `len` bytes at `offset` of the disk: fewer at its end (the table is then damaged),
/// the repository's error when the backup's bytes cannot be read.
pub type ReadAt<'a> = dyn FnMut(u64, usize) -> Result<Vec<u8>, Arc<vmstash_repo::Error>> + 'a;

fn sector(read: &mut ReadAt<'_>, lba: u64) -> Result<Vec<u8>, PartitionError> {
    let offset = lba
        .checked_mul(SECTOR)
        .ok_or_else(|| corrupt(format!("sector {lba} is beyond any disk")))?;
    let data = read(offset, 512).map_err(PartitionError::Read)?;
    if data.len() != 512 {
        return Err(corrupt(format!(
            "sector {lba} is beyond the end of the disk"
        )));
    }
    Ok(data)
}

/// The partitions of a disk of `size` bytes; empty when it has no partition table.
pub fn partitions(read: &mut ReadAt<'_>, size: u64) -> Result<Vec<Partition>, PartitionError> {
    if size < 2 * SECTOR {
        return Ok(Vec::new());
    }
    let mbr = sector(read, 0)?;
    if u16_at(&mbr, 510) != Some(0xaa55) {
        return Ok(Vec::new());
    }
    let entries: Vec<MbrEntry> = (0..4)
        .filter_map(|i| MbrEntry::at(&mbr, 446 + 16 * i))
        .collect();
    if entries.iter().any(|e| e.kind == 0xee) {
        return gpt(read, size);
    }
    mbr_partitions(read, size, &entries)
}

/// A 16-byte MBR partition entry.
#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    kind: u8,
    first: u64,
    sectors: u64,
}

impl MbrEntry {
    fn at(b: &[u8], at: usize) -> Option<MbrEntry> {
        Some(MbrEntry {
            kind: *b.get(at + 4)?,
            first: u64::from(u32_at(b, at + 8)?),
            sectors: u64::from(u32_at(b, at + 12)?),
        })
    }

    fn is_extended(&self) -> bool {
        matches!(self.kind, 0x05 | 0x0f | 0x85)
    }

    fn is_used(&self) -> bool {
        self.kind != 0 && self.sectors != 0
    }
}

/// A partition from a start sector and a count, checked against the disk.
fn checked(number: u32, first: u64, sectors: u64, size: u64) -> Result<Partition, PartitionError> {
    let start = first.checked_mul(SECTOR);
    let len = sectors.checked_mul(SECTOR);
    match (start, len) {
        (Some(start), Some(len))
            if start > 0 && start.checked_add(len).is_some_and(|e| e <= size) =>
        {
            Ok(Partition { number, start, len })
        }
        _ => Err(corrupt(format!(
            "partition {number} (sectors {first}+{sectors}) lies outside the {size}-byte disk"
        ))),
    }
}

fn mbr_partitions(
    read: &mut ReadAt<'_>,
    size: u64,
    entries: &[MbrEntry],
) -> Result<Vec<Partition>, PartitionError> {
    let mut out = Vec::new();
    for (slot, e) in (1u32..).zip(entries) {
        if !e.is_used() {
            continue;
        }
        let part = checked(slot, e.first, e.sectors, size)?;
        if e.is_extended() {
            logical(read, size, e, &mut out)?;
        } else {
            out.push(part);
        }
    }
    Ok(out)
}

/// Follows the chain of extended boot records of the extended partition `ext`.
fn logical(
    read: &mut ReadAt<'_>,
    size: u64,
    ext: &MbrEntry,
    out: &mut Vec<Partition>,
) -> Result<(), PartitionError> {
    let mut ebr = ext.first;
    let mut seen = Vec::new();
    for number in 5u32.. {
        if seen.contains(&ebr) {
            return Err(corrupt("the extended partition's chain loops"));
        }
        if seen.len() >= MAX_LOGICAL {
            return Err(corrupt(format!(
                "more than {MAX_LOGICAL} logical partitions"
            )));
        }
        seen.push(ebr);
        let record = sector(read, ebr)?;
        if u16_at(&record, 510) != Some(0xaa55) {
            return Err(corrupt(format!(
                "extended boot record at sector {ebr} has no signature"
            )));
        }
        let (Some(this), Some(next)) = (MbrEntry::at(&record, 446), MbrEntry::at(&record, 462))
        else {
            return Err(corrupt("short extended boot record"));
        };
        if this.is_used() {
            let first = ebr
                .checked_add(this.first)
                .ok_or_else(|| corrupt("logical partition start overflows"))?;
            out.push(checked(number, first, this.sectors, size)?);
        }
        if !next.is_used() {
            return Ok(());
        }
        ebr = ext
            .first
            .checked_add(next.first)
            .ok_or_else(|| corrupt("extended boot record offset overflows"))?;
    }
    Ok(())
}

fn gpt(read: &mut ReadAt<'_>, size: u64) -> Result<Vec<Partition>, PartitionError> {
    let header = sector(read, 1)?;
    if header.get(..8) != Some(b"EFI PART".as_slice()) {
        return Err(corrupt("protective MBR but no GPT header at sector 1"));
    }
    let field =
        |v: Option<u64>, name: &str| v.ok_or_else(|| corrupt(format!("GPT header: no {name}")));
    let entries_lba = field(u64_at(&header, 72), "entry array")?;
    let count = field(u32_at(&header, 80).map(u64::from), "entry count")?;
    let entry_size = field(u32_at(&header, 84).map(u64::from), "entry size")?;
    if count > u64::from(MAX_GPT_ENTRIES)
        || !(128..=u64::from(MAX_GPT_ENTRY_SIZE)).contains(&entry_size)
        || entry_size % 8 != 0
    {
        return Err(corrupt(format!(
            "GPT header: {count} entries of {entry_size} bytes"
        )));
    }
    let array_len = count * entry_size;
    let array_start = entries_lba
        .checked_mul(SECTOR)
        .filter(|s| s.checked_add(array_len).is_some_and(|e| e <= size))
        .ok_or_else(|| corrupt("GPT entry array lies outside the disk"))?;
    let array = read(
        array_start,
        usize::try_from(array_len).unwrap_or(usize::MAX),
    )
    .map_err(PartitionError::Read)?;
    let mut out = Vec::new();
    for (slot, entry) in
        (1u32..).zip(array.chunks_exact(usize::try_from(entry_size).unwrap_or(128)))
    {
        if entry
            .get(..16)
            .is_none_or(|guid| guid.iter().all(|&b| b == 0))
        {
            continue;
        }
        let (Some(first), Some(last)) = (u64_at(entry, 32), u64_at(entry, 40)) else {
            return Err(corrupt("short GPT entry"));
        };
        let sectors = last
            .checked_sub(first)
            .and_then(|n| n.checked_add(1))
            .ok_or_else(|| corrupt(format!("GPT entry {slot} spans sectors {first}..={last}")))?;
        out.push(checked(slot, first, sectors, size)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Read = Result<Vec<u8>, Arc<vmstash_repo::Error>>;

    /// Reads `disk` as the mount reads a disk image: fewer bytes at its end.
    fn reader(disk: &[u8]) -> impl FnMut(u64, usize) -> Read + '_ {
        move |offset, len| {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(disk.len());
            let end = start.saturating_add(len).min(disk.len());
            Ok(disk.get(start..end).unwrap_or_default().to_vec())
        }
    }

    fn is_corrupt(r: &Result<Vec<Partition>, PartitionError>) -> bool {
        matches!(r, Err(PartitionError::Corrupt(_)))
    }

    fn mbr_entry(disk: &mut [u8], sector_at: usize, slot: usize, kind: u8, first: u32, n: u32) {
        let at = sector_at * 512 + 446 + 16 * slot;
        disk[at + 4] = kind;
        disk[at + 8..at + 12].copy_from_slice(&first.to_le_bytes());
        disk[at + 12..at + 16].copy_from_slice(&n.to_le_bytes());
        disk[sector_at * 512 + 510] = 0x55;
        disk[sector_at * 512 + 511] = 0xaa;
    }

    #[test]
    fn mbr_with_logical_partitions() {
        let mut disk = vec![0u8; 4 << 20];
        mbr_entry(&mut disk, 0, 0, 0x83, 2048, 1024);
        mbr_entry(&mut disk, 0, 1, 0x05, 4096, 4096);
        // EBR 1 at 4096: logical at +1 (1000 sectors), next EBR at ext + 2048.
        mbr_entry(&mut disk, 4096, 0, 0x83, 1, 1000);
        mbr_entry(&mut disk, 4096, 1, 0x05, 2048, 2048);
        mbr_entry(&mut disk, 6144, 0, 0x07, 1, 500);
        let parts = partitions(&mut reader(&disk), 4 << 20).expect("table");
        let got: Vec<(u32, u64, u64)> = parts
            .iter()
            .map(|p| (p.number, p.start / 512, p.len / 512))
            .collect();
        assert_eq!(
            got,
            [(1, 2048, 1024), (5, 4097, 1000), (6, 6145, 500)],
            "the extended container (slot 2) is not listed"
        );
    }

    #[test]
    fn a_looping_chain_and_out_of_range_entries_are_refused() {
        let mut disk = vec![0u8; 4 << 20];
        mbr_entry(&mut disk, 0, 0, 0x05, 4096, 4096);
        mbr_entry(&mut disk, 4096, 0, 0x83, 1, 10);
        mbr_entry(&mut disk, 4096, 1, 0x05, 0, 10);
        let looped = partitions(&mut reader(&disk), 4 << 20);
        assert!(is_corrupt(&looped), "loop: {looped:?}");
        let mut disk = vec![0u8; 1 << 20];
        mbr_entry(&mut disk, 0, 0, 0x83, 2048, u32::MAX);
        let beyond = partitions(&mut reader(&disk), 1 << 20);
        assert!(is_corrupt(&beyond), "beyond the disk: {beyond:?}");
    }

    #[test]
    fn no_signature_means_no_table() {
        let disk = vec![0u8; 1 << 20];
        assert!(partitions(&mut reader(&disk), 1 << 20)
            .expect("ok")
            .is_empty());
    }

    #[test]
    fn gpt_entries_by_slot() {
        let mut disk = vec![0u8; 8 << 20];
        mbr_entry(&mut disk, 0, 0, 0xee, 1, 16383);
        disk[512..520].copy_from_slice(b"EFI PART");
        disk[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        disk[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        disk[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        for (slot, first, last) in [(0usize, 2048u64, 4095u64), (2, 8192, 12287)] {
            let at = 1024 + slot * 128;
            disk[at] = 0xaf;
            disk[at + 32..at + 40].copy_from_slice(&first.to_le_bytes());
            disk[at + 40..at + 48].copy_from_slice(&last.to_le_bytes());
        }
        let parts = partitions(&mut reader(&disk), 8 << 20).expect("gpt");
        let mut huge = disk.clone();
        huge[1024 + 32..1024 + 40].copy_from_slice(&0u64.to_le_bytes());
        huge[1024 + 40..1024 + 48].copy_from_slice(&u64::MAX.to_le_bytes());
        let huge = partitions(&mut reader(&huge), 8 << 20);
        assert!(is_corrupt(&huge), "found by the fuzzer: {huge:?}");
        let got: Vec<(u32, u64, u64)> = parts
            .iter()
            .map(|p| (p.number, p.start / 512, p.len / 512))
            .collect();
        assert_eq!(got, [(1, 2048, 2048), (3, 8192, 4096)]);
        // Every truncation of the disk is damage or a smaller table, never a panic.
        for cut in (0..disk.len()).step_by(4096) {
            let cut_short = partitions(&mut reader(&disk[..cut]), u64::try_from(cut).expect("cut"));
            assert!(
                cut_short.is_ok() || is_corrupt(&cut_short),
                "{cut}: {cut_short:?}"
            );
        }
    }

    #[test]
    fn an_unreadable_table_is_the_repositorys_error_not_damage() {
        let mut disk = vec![0u8; 8 << 20];
        mbr_entry(&mut disk, 0, 0, 0xee, 1, 16383);
        let mut reads = 0;
        // The MBR reads; the GPT header's sector is in a damaged pack.
        let mut read = |offset: u64, len: usize| -> Read {
            reads += 1;
            if offset == 0 {
                return reader(&disk)(offset, len);
            }
            Err(Arc::new(vmstash_repo::Error::corrupt(
                "data/5e/5eed",
                "a blob fails its MAC",
            )))
        };
        let err = partitions(&mut read, 8 << 20).expect_err("unreadable");
        assert!(
            matches!(&err, PartitionError::Read(e) if matches!(**e, vmstash_repo::Error::Corrupt { .. })),
            "{err:?}"
        );
        assert_eq!(reads, 2);
        assert!(err
            .to_string()
            .starts_with("cannot read the backup's partition table: "));
    }
}
