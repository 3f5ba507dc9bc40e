//! Reading many blobs of one pack with one ranged read (spec §17 steps 8–11, batched).
//!
//! A backup stores a disk's chunks roughly in disk order, so the chunks a restore needs next
//! sit side by side in a few packs. Fetching them one ranged read each costs a request per
//! chunk, which on an object store is a round trip and server work per chunk (kopia#5113:
//! restores of VM disks at 5–6 MB/s for that reason). [`plan_runs`] groups the blobs of a
//! request list into *runs*: blobs of one pack whose sealed bytes follow each other (small
//! gaps included), up to [`MAX_RUN_BYTES`]; [`Repository::read_run`] reads a run with one
//! request and opens every blob in it, each verified as a single read would verify it.

use std::collections::HashMap;

use crate::backend::{relative_path, FileKind};
use crate::crypto::SALT_LEN;
use crate::entry::BlobEntry;
use crate::id::Id;
use crate::index::MasterIndex;
use crate::pack::open_blob_in_place;
use crate::repository::Repository;
use crate::{Error, Result};

/// The most bytes one run reads: a few chunks' worth, so that the threads reading runs at once
/// hold a bounded amount of memory (each holds its run and the blobs opened from it).
pub const MAX_RUN_BYTES: u64 = 8 << 20;

/// Bytes of unneeded blobs a run may read between two needed ones rather than split in two
/// requests.
pub const MAX_GAP_BYTES: u64 = 256 << 10;

/// Blobs of one pack read with one ranged read.
#[derive(Debug, Clone)]
pub struct PackRun {
    /// The pack.
    pub pack: Id,
    /// Its salt (for the blobs' keys).
    pub salt: [u8; SALT_LEN],
    /// The blobs, in pack order.
    pub blobs: Vec<BlobEntry>,
}

impl PackRun {
    /// First byte read.
    fn start(&self) -> u64 {
        self.blobs.first().map_or(0, |b| u64::from(b.offset))
    }

    /// One past the last byte read.
    fn end(&self) -> u64 {
        self.blobs.last().map_or(0, |b| {
            u64::from(b.offset).saturating_add(u64::from(b.length))
        })
    }
}

/// The runs that read every id of `ids` the index holds (each once), and the ids it does not
/// hold (for the caller to report as a single read would).
pub fn plan_runs(index: &MasterIndex, ids: &[Id]) -> (Vec<PackRun>, Vec<Id>) {
    let mut by_pack: HashMap<Id, ([u8; SALT_LEN], Vec<BlobEntry>)> = HashMap::new();
    let mut missing = Vec::new();
    for id in ids {
        match index.find(id) {
            Some(loc) => by_pack
                .entry(*loc.pack)
                .or_insert_with(|| (*loc.salt, Vec::new()))
                .1
                .push(loc.entry),
            None => missing.push(*id),
        }
    }
    let mut runs = Vec::new();
    for (pack, (salt, mut blobs)) in by_pack {
        blobs.sort_by_key(|b| b.offset);
        blobs.dedup_by_key(|b| b.id);
        let mut run = PackRun {
            pack,
            salt,
            blobs: Vec::new(),
        };
        for blob in blobs {
            let start = u64::from(blob.offset);
            let end = start.saturating_add(u64::from(blob.length));
            let joins = !run.blobs.is_empty()
                && start >= run.end()
                && start - run.end() <= MAX_GAP_BYTES
                && end - run.start() <= MAX_RUN_BYTES;
            if !joins && !run.blobs.is_empty() {
                let next = PackRun {
                    pack,
                    salt,
                    blobs: Vec::new(),
                };
                runs.push(std::mem::replace(&mut run, next));
            }
            run.blobs.push(blob);
        }
        if !run.blobs.is_empty() {
            runs.push(run);
        }
    }
    runs.sort_by_key(|r| (r.pack, r.start()));
    (runs, missing)
}

impl Repository {
    /// Reads `run` with one ranged read and opens each of its blobs: per blob, its verified
    /// plaintext or why it does not open (the error a single read of it would give). The outer
    /// error is the read's own (the pack is gone, shorter than the index says, or the store
    /// failed).
    pub fn read_run(&self, run: &PackRun) -> Result<Vec<(Id, Result<Vec<u8>>)>> {
        let name = run.pack.to_hex();
        let file = relative_path(FileKind::Pack, &name);
        let start = run.start();
        let len = u32::try_from(run.end().saturating_sub(start))
            .map_err(|_| Error::InvalidParameter(format!("a run of {file} longer than 4 GiB")))?;
        let mut bytes = self
            .backend()
            .read_range(FileKind::Pack, &name, start, len)?;
        Ok(run
            .blobs
            .iter()
            .map(|blob| {
                let from = usize::try_from(u64::from(blob.offset) - start).unwrap_or(usize::MAX);
                let plain = from
                    .checked_add(usize::try_from(blob.length).unwrap_or(usize::MAX))
                    .and_then(|to| bytes.get_mut(from..to))
                    .ok_or_else(|| Error::corrupt(&file, "a blob lies outside the bytes read"))
                    .and_then(|sealed| {
                        open_blob_in_place(self.master(), &run.salt, blob, sealed, &file)
                    });
                (blob.id, plain)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testing::{back_up_bytes, memory_repository, noise};

    #[test]
    fn runs_read_every_blob_once_with_few_reads_and_the_same_bytes() {
        let (_, repo) = memory_repository();
        let data = noise(5, 64 * 65536);
        let report = back_up_bytes(&repo, data.clone()).expect("backup");
        let index = Arc::new(repo.load_index().expect("index"));
        let reader = crate::DiskReader::new(
            repo.clone(),
            index.clone(),
            Arc::new(report.manifest.disks[0].clone()),
        );
        let mut ids = reader.segment(0).expect("segment");
        ids.truncate(64);
        // Asked twice, and one id the index lacks.
        let mut asked = ids.clone();
        asked.push(ids[3]);
        asked.push(Id::of(b"not stored"));
        let (runs, missing) = plan_runs(&index, &asked);
        assert_eq!(missing, vec![Id::of(b"not stored")]);
        // 4 MiB of noise in 1 MiB packs: a run per pack, not per chunk.
        assert!(runs.len() <= 8, "{} runs for 64 chunks", runs.len());
        let mut seen = HashMap::new();
        for run in &runs {
            for (id, plain) in repo.read_run(run).expect("read") {
                assert!(
                    seen.insert(id, plain.expect("opens")).is_none(),
                    "read twice"
                );
            }
        }
        for (no, id) in ids.iter().enumerate() {
            assert_eq!(seen[id], data[no * 65536..(no + 1) * 65536]);
        }
    }

    #[test]
    fn a_damaged_blob_fails_alone() {
        let (backend, repo) = memory_repository();
        let data = noise(6, 8 * 65536);
        let report = back_up_bytes(&repo, data).expect("backup");
        let index = repo.load_index().expect("index");
        let reader = crate::DiskReader::new(
            repo.clone(),
            Arc::new(repo.load_index().expect("index")),
            Arc::new(report.manifest.disks[0].clone()),
        );
        let ids: Vec<Id> = reader
            .segment(0)
            .expect("segment")
            .into_iter()
            .take(8)
            .collect();
        let victim = index.find(&ids[2]).expect("found");
        let (pack, at) = (*victim.pack, victim.entry.offset);
        backend.tamper(FileKind::Pack, &pack.to_hex(), |v| {
            v[usize::try_from(at).expect("usize") + 5] ^= 1;
        });
        let (runs, _) = plan_runs(&index, &ids);
        let results: Vec<_> = runs
            .iter()
            .flat_map(|r| repo.read_run(r).expect("read"))
            .collect();
        assert_eq!(results.len(), 8);
        for (id, plain) in results {
            assert_eq!(plain.is_err(), id == ids[2], "{id:?}");
        }
    }
}
