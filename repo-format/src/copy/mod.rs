//! Copying snapshots from one repository to another: the engine behind `vmstash copy`.
//!
//! A snapshot is copied as a backup of its own disks into the destination: each disk is read
//! from the source through a [`DiskReader`] (decrypted with the source's key, every chunk
//! verified) and stored through the backup pipeline (compressed and encrypted under the
//! destination's key, deduplicated against its index). When both repositories use the same
//! chunk size, the source's chunk ids go to the pipeline as known ids, so a chunk the
//! destination already has is never read from the source: copying a snapshot whose data is
//! already there reads nothing but its chunk map. With different chunk sizes every disk is
//! read whole and cut anew (nothing deduplicates with the source's chunks then).
//!
//! A snapshot the destination already holds is not copied again. Snapshots are identified by
//! their content, not their file names (which differ: each repository seals with its own key):
//! the same name, time, host, user, and disks (names and sizes) make the same snapshot. The copy
//! keeps all of these, the tags and the domain XML, and records the source snapshot as its
//! `original` (spec §13).

use std::ops::Range;
use std::sync::Arc;

use crate::backup::{back_up, BackupDisk, BackupPlan, BackupReport};
use crate::cancel::CancelToken;
use crate::disk_reader::DiskReader;
use crate::id::Id;
use crate::index::MasterIndex;
use crate::progress::Progress;
use crate::repository::Repository;
use crate::snapshot::{Disk, Manifest};
use crate::source::{DiskSource, ImageFormat, SourceError};
use crate::{Error, Result};

/// What a copy would do: the source snapshots to copy, and those the destination holds already.
#[derive(Debug, Clone, Default)]
pub struct CopyPlan {
    /// Source snapshots the destination lacks, oldest first.
    pub missing: Vec<(Id, Manifest)>,
    /// Source snapshots the destination holds: (source id, destination id).
    pub present: Vec<(Id, Id)>,
}

impl CopyPlan {
    /// Guest bytes of the snapshots to copy (the progress total).
    pub fn bytes(&self) -> u64 {
        self.missing
            .iter()
            .flat_map(|(_, m)| &m.disks)
            .map(|d| d.size)
            .sum()
    }
}

/// One snapshot copied.
#[derive(Debug, Clone)]
pub struct Copied {
    /// The snapshot in the source.
    pub source: Id,
    /// The backup that wrote its copy (the new snapshot's id, what was read and stored).
    pub report: BackupReport,
}

/// The identity of a snapshot across repositories (see the module docs).
type Identity = (String, String, String, String, Vec<(String, u64)>);

fn identity(m: &Manifest) -> Identity {
    (
        m.name.clone(),
        m.time.clone(),
        m.hostname.clone(),
        m.username.clone(),
        m.disks.iter().map(|d| (d.name.clone(), d.size)).collect(),
    )
}

/// Splits `snapshots` (of the source) into those `dst` lacks and those it holds.
pub fn plan_copy(dst: &Repository, snapshots: Vec<(Id, Manifest)>) -> Result<CopyPlan> {
    let held: Vec<(Identity, Id)> = dst
        .snapshots()?
        .into_iter()
        .map(|(id, m)| (identity(&m), id))
        .collect();
    let mut plan = CopyPlan::default();
    let mut snapshots = snapshots;
    snapshots.sort_by(|a, b| a.1.time.cmp(&b.1.time));
    for (id, m) in snapshots {
        let key = identity(&m);
        match held.iter().find(|(k, _)| *k == key) {
            Some((_, there)) => plan.present.push((id, *there)),
            None => plan.missing.push((id, m)),
        }
    }
    Ok(plan)
}

/// Copies every snapshot `plan` lists as missing from `src` to `dst`, oldest first; the caller
/// holds a shared lock on each. `progress` is told the guest bytes done.
pub fn copy_snapshots(
    src: &Repository,
    dst: &Repository,
    plan: &CopyPlan,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<Vec<Copied>> {
    let index = Arc::new(src.load_index()?);
    let mut copied = Vec::new();
    for (id, manifest) in &plan.missing {
        cancel.check()?;
        let report = copy_one(src, dst, &index, *id, manifest, progress, cancel)?;
        copied.push(Copied {
            source: *id,
            report,
        });
    }
    Ok(copied)
}

fn copy_one(
    src: &Repository,
    dst: &Repository,
    index: &Arc<MasterIndex>,
    id: Id,
    manifest: &Manifest,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<BackupReport> {
    let same_chunks = |d: &Disk| d.chunk_size == dst.config().chunk_size;
    let mut disks = Vec::new();
    for disk in &manifest.disks {
        if !disk.lost.is_empty() {
            return Err(Error::InvalidParameter(format!(
                "snapshot {} records lost bytes on disk {} (`repair snapshots`); a copy would store zeros there as data: restore it with --zero-lost and back the image up instead",
                id.short(),
                disk.name
            )));
        }
        let reader = DiskReader::new(src.clone(), Arc::clone(index), Arc::new(disk.clone()));
        let ids = chunk_ids(&reader)?;
        let source = SnapshotDisk::new(reader, ids.clone(), src.backend().requests_in_flight());
        let mut copied = BackupDisk::new(disk.name.clone(), disk.source.clone(), Box::new(source));
        copied.known_ids = same_chunks(disk).then_some(ids);
        disks.push(copied);
    }
    let mut plan = BackupPlan::new(manifest.name.clone(), disks);
    plan.tags = manifest.tags.clone();
    plan.domain_xml = manifest.domain_xml.clone();
    plan.qemu = manifest.qemu.clone();
    plan.time = Some(manifest.time.clone());
    plan.made_by = Some((manifest.hostname.clone(), manifest.username.clone()));
    plan.original = Some(manifest.original.unwrap_or(id));
    back_up(dst, plan, progress, cancel)
}

/// Every chunk id of the disk `reader` reads, in order.
fn chunk_ids(reader: &DiskReader) -> Result<Vec<Id>> {
    let chunks = usize::try_from(reader.chunk_count()).unwrap_or(usize::MAX);
    let mut ids = Vec::with_capacity(chunks.min(1 << 24));
    for seg in 0..reader.disk().map.len() {
        ids.extend(reader.segment(seg)?);
    }
    ids.truncate(chunks);
    if ids.len() != chunks {
        return Err(Error::corrupt(
            format!("snapshot disk {}", reader.disk().name),
            format!("its chunk map lists {} of {chunks} chunks", ids.len()),
        ));
    }
    Ok(ids)
}

/// A disk of a source snapshot, read as the backup pipeline reads a disk image.
struct SnapshotDisk {
    reader: DiskReader,
    ids: Vec<Id>,
    format: ImageFormat,
    in_flight: usize,
}

impl SnapshotDisk {
    fn new(reader: DiskReader, ids: Vec<Id>, in_flight: usize) -> Self {
        let format = match reader.disk().format.as_str() {
            "qcow2" => ImageFormat::Qcow2,
            _ => ImageFormat::Raw,
        };
        SnapshotDisk {
            reader,
            ids,
            format,
            in_flight,
        }
    }

    fn error(&self, e: Error) -> SourceError {
        SourceError::Remote(Box::new(e))
    }
}

impl DiskSource for SnapshotDisk {
    fn format(&self) -> ImageFormat {
        self.format
    }

    fn size(&self) -> u64 {
        self.reader.disk().size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        let chunk = self.reader.chunk_size();
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset.saturating_add(u64::try_from(done).unwrap_or(u64::MAX));
            let no = at / chunk.max(1);
            let id = usize::try_from(no)
                .ok()
                .and_then(|n| self.ids.get(n))
                .ok_or_else(|| {
                    self.error(Error::InvalidParameter(format!(
                        "read at {at} past the end of disk {}",
                        self.reader.disk().name
                    )))
                })?;
            let within = usize::try_from(at - self.reader.chunk_offset(no)).unwrap_or(0);
            let len =
                usize::try_from(self.reader.chunk_len(no).map_err(|e| self.error(e))?).unwrap_or(0);
            let take = len.saturating_sub(within).min(buf.len() - done);
            if take == 0 {
                return Err(self.error(Error::InvalidParameter(format!(
                    "empty read at {at} of disk {}",
                    self.reader.disk().name
                ))));
            }
            let out = &mut buf[done..done + take];
            if id.is_zero() {
                out.fill(0);
            } else {
                let plain = self.reader.read_chunk(no, id).map_err(|e| self.error(e))?;
                let part = plain.get(within..within + take).ok_or_else(|| {
                    self.error(Error::corrupt(
                        format!("chunk {}", id.short()),
                        "shorter than its place on the disk",
                    ))
                })?;
                out.copy_from_slice(part);
            }
            done += take;
        }
        Ok(())
    }

    fn data_ranges(&self) -> Result<Vec<Range<u64>>, SourceError> {
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for (no, id) in (0u64..).zip(&self.ids) {
            if id.is_zero() {
                continue;
            }
            let start = self.reader.chunk_offset(no);
            let end = start.saturating_add(self.reader.chunk_len(no).map_err(|e| self.error(e))?);
            match ranges.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => ranges.push(start..end),
            }
        }
        Ok(ranges)
    }

    fn concurrent_reads(&self) -> usize {
        self.in_flight.max(2)
    }
}

#[cfg(test)]
mod tests;
