//! `vmstash backup`: disk images → a snapshot (the chunking itself is in [`crate::pipeline`]).

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use vmstash_repo::repository::now_rfc3339;
use vmstash_repo::snapshot::{is_safe_name, Disk, Manifest, Summary};
use vmstash_repo::writer::WriteSession;
use vmstash_repo::{Id, Repository};

use crate::args::{BackupArgs, Global};
use crate::cmd::print_json;
use crate::pipeline::{self, DiskCounts, DiskJob};
use crate::source::{self, DiskSource};
use crate::{exit, progress};

/// One disk to back up.
pub struct DiskInput {
    /// Name in the snapshot.
    pub name: String,
    /// Where it is read from, for the manifest and messages.
    pub source: String,
    /// The reader.
    pub src: Box<dyn DiskSource>,
    /// Each chunk's id as the hashblocks helper computed it on the host, if it ran.
    pub ids: Option<Vec<Id>>,
}

/// Everything a new snapshot is made of.
pub struct SnapshotPlan {
    /// Snapshot series name (VM name, or the first disk's name).
    pub name: String,
    /// User and automatic tags.
    pub tags: Vec<String>,
    /// The libvirt domain XML of a VM backup.
    pub domain_xml: Option<String>,
    /// The disks, in order.
    pub disks: Vec<DiskInput>,
    /// When reading began (hashing on the host included), for the summary's duration.
    pub started: Instant,
}

/// Runs `vmstash backup --disk …`.
pub fn run(g: &Global, repo: &Repository, a: &BackupArgs) -> Result<ExitCode> {
    let _lock = repo.lock(false)?;
    let started = Instant::now();
    let names = disk_names(&a.disks);
    let disks = a
        .disks
        .iter()
        .zip(names)
        .map(|(p, name)| {
            let src = source::open(p).with_context(|| format!("opening disk {}", p.display()))?;
            Ok(DiskInput {
                ids: None,
                name,
                source: p.display().to_string(),
                src,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let name = a.name.clone().unwrap_or_else(|| disks[0].name.clone());
    let plan = SnapshotPlan {
        name,
        tags: a.tags.clone(),
        domain_xml: None,
        disks,
        started,
    };
    let (id, manifest) = store(g, repo, plan, &|| false)?;
    print_summary(g, &id, &manifest);
    Ok(exit::ok())
}

/// Reads every disk of `plan` into the repository and commits the
/// snapshot. The caller holds the repository lock. `interrupted` is polled
/// while reading; when it turns true the backup stops with an error and
/// no snapshot is written.
pub fn store(
    g: &Global,
    repo: &Repository,
    plan: SnapshotPlan,
    interrupted: &(dyn Fn() -> bool + Sync),
) -> Result<(Id, Manifest)> {
    let time = now_rfc3339();
    let SnapshotPlan {
        name,
        tags,
        domain_xml,
        disks: inputs,
        started,
    } = plan;
    if let Some(bad) = std::iter::once(&name)
        .chain(inputs.iter().map(|d| &d.name))
        .find(|n| !is_safe_name(n))
    {
        bail!("{bad:?} cannot be a snapshot or disk name: it must be a non-empty file name without '/'");
    }
    let index = repo.load_index().context("loading the repository index")?;
    let parent = repo
        .snapshots()?
        .into_iter()
        .rev()
        .find(|(_, m)| m.name == name)
        .map(|(id, _)| id);

    let total: u64 = inputs.iter().map(|d| d.src.size()).sum();
    let bar = progress::bytes(g, total, "backup");
    let session = WriteSession::new(repo, &index);
    if g.verbose > 0 {
        let parent = parent.map_or_else(|| "none".to_string(), |p| p.short());
        eprintln!(
            "snapshot name {name:?}, parent snapshot {parent}, {} blobs already in the repository",
            index.len()
        );
    }
    if g.verbose > 0 {
        for input in &inputs {
            eprintln!(
                "disk {}: {} ({}), {} virtual",
                input.name,
                input.source,
                input.src.format().name(),
                progress::human(input.src.size())
            );
        }
    }
    let names: Vec<&str> = inputs.iter().map(|d| d.name.as_str()).collect();
    bar.set_message(names.join(" "));
    let jobs: Vec<DiskJob<'_>> = inputs
        .iter()
        .map(|d| DiskJob {
            src: d.src.as_ref(),
            ids: d.ids.as_deref(),
        })
        .collect();
    let chunk = u64::from(repo.config().chunk_size);
    let results = pipeline::back_up_disks(&session, &jobs, chunk, &|n| bar.inc(n), interrupted)
        .with_context(|| {
            let what: Vec<String> = inputs
                .iter()
                .map(|d| format!("{} ({})", d.name, d.source))
                .collect();
            format!("backing up disk(s) {}", what.join(", "))
        })?;
    let mut disks = Vec::new();
    let mut counts = DiskCounts::default();
    for (input, result) in inputs.iter().zip(results) {
        let c = result.counts;
        disks.push(Disk {
            name: input.name.clone(),
            source: input.source.clone(),
            format: input.src.format().name().to_string(),
            size: input.src.size(),
            chunk_size: repo.config().chunk_size,
            map: result.map,
        });
        if g.verbose > 0 {
            eprintln!(
                "disk {}: {} chunks, {} all-zero, {} new, {} read",
                input.name,
                c.chunks,
                c.zero,
                c.new,
                progress::human(c.read)
            );
        }
        counts.read += c.read;
        counts.chunks += c.chunks;
        counts.zero += c.zero;
        counts.new += c.new;
    }
    let stats = session
        .finish()
        .context("writing the last pack and index")?;
    bar.finish_and_clear();
    let mut manifest = Manifest {
        version: vmstash_repo::FORMAT_VERSION,
        time,
        hostname: repo.identity().hostname.clone(),
        username: repo.identity().username.clone(),
        name,
        tags,
        parent,
        disks,
        domain_xml,
        summary: Summary {
            disk_bytes: total,
            bytes_read: counts.read,
            bytes_added: stats.stored_bytes,
            chunks: counts.chunks,
            zero_chunks: counts.zero,
            new_chunks: counts.new,
            duration_seconds: started.elapsed().as_secs_f64(),
        },
    };
    // The snapshot's own size is part of what was added; estimate it by
    // its plaintext (it compresses well), then store the real one.
    manifest.summary.bytes_added += u64::try_from(manifest.encode().len()).unwrap_or(0) / 2;
    let (id, _) = repo
        .save_snapshot(&manifest)
        .context("saving the snapshot")?;
    Ok((id, manifest))
}

/// Prints what a backup did: one line, or the JSON summary.
pub fn print_summary(g: &Global, id: &Id, m: &Manifest) {
    let s = &m.summary;
    if g.json {
        print_json(&json!({
            "message_type": "summary", "snapshot_id": id.to_hex(), "short_id": id.short(),
            "name": m.name, "disks": m.disks.len(), "disk_bytes": s.disk_bytes,
            "bytes_read": s.bytes_read, "bytes_added": s.bytes_added, "chunks": s.chunks,
            "zero_chunks": s.zero_chunks, "new_chunks": s.new_chunks,
            "duration_seconds": s.duration_seconds,
        }));
    } else if !g.quiet {
        println!(
            "snapshot {} saved: {} disk(s), {} in {:.1} s; read {}, added {} ({} new of {} chunks, {} zero)",
            id.short(),
            m.disks.len(),
            progress::human(s.disk_bytes),
            s.duration_seconds,
            progress::human(s.bytes_read),
            progress::human(s.bytes_added),
            s.new_chunks,
            s.chunks,
            s.zero_chunks
        );
    }
}

/// Snapshot disk names: file names without extension, made unique.
fn disk_names(paths: &[std::path::PathBuf]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in paths {
        let stem = Path::new(p)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty() && s != "." && s != "..")
            .unwrap_or_else(|| "disk".to_string());
        let mut name = stem.clone();
        let mut n = 2;
        while out.contains(&name) {
            name = format!("{stem}-{n}");
            n += 1;
        }
        out.push(name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let n = disk_names(&["/a/disk.img".into(), "/b/disk.qcow2".into(), "/c/x".into()]);
        assert_eq!(n, ["disk", "disk-2", "x"]);
    }
}
