//! `vmstash restore`: a snapshot's disks back to image files.
//!
//! The main thread walks the chunk map a segment at a time and queues the
//! non-zero chunks; two workers fetch, verify (GCM, then SHA-256) and write
//! them at their offsets. Zero chunks, and zero 4 KiB blocks inside
//! chunks, are never written, so the image comes out sparse. The image is
//! written under a temporary name and renamed only when every chunk has
//! been verified: a damaged repository fails loudly and leaves no
//! half-right image behind.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::bounded;
use serde_json::json;
use vmstash_repo::chunkmap::SEGMENT_ENTRIES;
use vmstash_repo::index::MasterIndex;
use vmstash_repo::snapshot::{Disk, Manifest};
use vmstash_repo::{Id, Repository};

use crate::args::{Global, RestoreArgs, RestoreFormat};
use crate::cmd::print_json;
use crate::libvirt::define::{rewrite_for_define, RestoredDisk};
use crate::restore_dest::{Dest, Sink};
use crate::vmbackup::Hypervisor;
use crate::{exit, progress};

const WORKERS: usize = 2;
/// Granularity of sparse writes.
const BLOCK: usize = 4096;

/// Runs `vmstash restore`.
pub fn run(g: &Global, repo: &Repository, a: &RestoreArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let _lock = repo.lock(false)?;
    let (id, m) = repo.find_snapshot(&a.snapshot)?;
    let disks = select_disks(&m.disks, &a.disks)?;
    let dest = Dest::open(g, &a.target)?;
    let index = repo.load_index().context("loading the repository index")?;
    let total = disks.iter().map(|d| d.size).sum();
    let bar = progress::bytes(g, total, "restore");
    let mut written = Vec::new();
    for &disk in &disks {
        let path = restore_disk(repo, &index, disk, &dest, a.format, &bar)
            .with_context(|| format!("restoring disk {} of snapshot {}", disk.name, id.short()))?;
        written.push(path);
    }
    if let Some(xml) = &m.domain_xml {
        dest.write_file("domain.xml", xml.as_bytes())?;
        written.push(dest.display("domain.xml"));
    }
    if a.define {
        let defined = define_vm(g, &m, a, &dest, &disks)?;
        written.push(defined);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if g.json {
        print_json(
            &json!({"message_type": "summary", "snapshot_id": id.to_hex(),
            "files": written,
            "bytes": total, "duration_seconds": secs}),
        );
    } else if !g.quiet {
        for p in &written {
            println!("restored {p}");
        }
        println!(
            "snapshot {} restored: {} in {secs:.1} s",
            id.short(),
            progress::human(total)
        );
    }
    Ok(exit::ok())
}

/// Defines the restored VM on the hypervisor; returns the XML file used.
fn define_vm(
    g: &Global,
    m: &Manifest,
    a: &RestoreArgs,
    dest: &Dest,
    disks: &[&Disk],
) -> Result<String> {
    let xml = m.domain_xml.as_deref().context(
        "this snapshot has no domain XML (a backup of disk files, not of a VM); there is nothing to define",
    )?;
    let ext = extension(a.format);
    let restored: Vec<RestoredDisk> = disks
        .iter()
        .map(|d| RestoredDisk {
            target: d.name.clone(),
            path: dest.path(&format!("{}.{ext}", d.name)),
            format: ext.to_string(),
        })
        .collect();
    let new_xml = rewrite_for_define(xml, a.name.as_deref(), &restored)?;
    let name = a.name.clone().unwrap_or_else(|| m.name.clone());
    let uri = a.connect.clone().unwrap_or_else(|| dest.hypervisor_uri());
    let hv = Hypervisor::connect(g, &uri)?;
    if hv.virsh.exists(&name)? {
        bail!(
            "a VM named {name:?} already exists; choose a new one with --name (the restored disks are in {})",
            dest.display("")
        );
    }
    let file = format!("{name}.define.xml");
    dest.write_file(&file, new_xml.as_bytes())?;
    hv.virsh
        .define(&dest.path(&file))
        .with_context(|| format!("defining {name}"))?;
    if !g.quiet && !g.json {
        println!("defined VM {name}; start it with `virsh start {name}`");
    }
    Ok(dest.display(&file))
}

fn extension(format: RestoreFormat) -> &'static str {
    match format {
        RestoreFormat::Raw => "raw",
        RestoreFormat::Qcow2 => "qcow2",
    }
}

fn select_disks<'a>(all: &'a [Disk], wanted: &[String]) -> Result<Vec<&'a Disk>> {
    if wanted.is_empty() {
        return Ok(all.iter().collect());
    }
    wanted
        .iter()
        .map(|w| {
            all.iter().find(|d| d.name == *w).ok_or_else(|| {
                let names: Vec<_> = all.iter().map(|d| d.name.as_str()).collect();
                anyhow!(
                    "the snapshot has no disk {w:?}; it has: {}",
                    names.join(", ")
                )
            })
        })
        .collect()
}

/// Restores one disk; returns where it was written.
fn restore_disk(
    repo: &Repository,
    index: &MasterIndex,
    disk: &Disk,
    dest: &Dest,
    format: RestoreFormat,
    bar: &indicatif::ProgressBar,
) -> Result<String> {
    let name = format!("{}.{}", disk.name, extension(format));
    if dest.exists(&name) {
        bail!(
            "{} already exists; remove it or restore into another --target",
            dest.display(&name)
        );
    }
    let tmp = format!(".{}.raw.vmstash-partial", disk.name);
    let result = dest.create(&tmp, disk.size).and_then(|partial| {
        write_raw(repo, index, disk, partial.sink(), bar)?;
        dest.finish(partial)?;
        match format {
            RestoreFormat::Raw => dest.rename(&tmp, &name),
            RestoreFormat::Qcow2 => dest.convert_to_qcow2(&tmp, &name),
        }
    });
    dest.remove(&tmp);
    result.map(|()| dest.display(&name))
}

fn write_raw(
    repo: &Repository,
    index: &MasterIndex,
    disk: &Disk,
    sink: &dyn Sink,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let chunk = u64::from(disk.chunk_size);
    let (tx, rx) = bounded::<(u64, Id)>(64);
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let rx = rx.clone();
                s.spawn(move || -> Result<()> {
                    for (offset, id) in rx {
                        let plain = repo.read_blob(index, &id)?;
                        let expected = chunk.min(disk.size - offset);
                        if u64::try_from(plain.len()).ok() != Some(expected) {
                            bail!(
                                "chunk at offset {offset} (blob {}) has {} bytes, the disk needs {expected}; the repository is damaged, run `vmstash check`",
                                id.short(),
                                plain.len()
                            );
                        }
                        write_sparse(sink, offset, &plain)
                            .with_context(|| format!("writing disk {}", disk.name))?;
                        bar.inc(u64::try_from(plain.len()).unwrap_or(0));
                    }
                    Ok(())
                })
            })
            .collect();
        drop(rx);
        let queued = queue_chunks(repo, index, disk, chunk, &tx, bar);
        drop(tx);
        let mut result = queued;
        for w in workers {
            let r = w.join().map_err(|_| anyhow!("restore worker panicked"))?;
            result = result.and(r);
        }
        result
    })
}

/// Sends every non-zero chunk's offset and id, a map segment at a time.
fn queue_chunks(
    repo: &Repository,
    index: &MasterIndex,
    disk: &Disk,
    chunk: u64,
    tx: &crossbeam_channel::Sender<(u64, Id)>,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    for seg in 0..disk.map.len() {
        let ids = repo.map_segment(index, disk, seg)?;
        let first = u64::try_from(seg * SEGMENT_ENTRIES)?;
        for (i, id) in ids.iter().enumerate() {
            let offset = (first + u64::try_from(i)?) * chunk;
            if id.is_zero() {
                bar.inc(chunk.min(disk.size - offset));
            } else if tx.send((offset, *id)).is_err() {
                // A worker failed; its error is reported by the caller.
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Writes the non-zero 4 KiB blocks of `data` at `offset`.
fn write_sparse(sink: &dyn Sink, offset: u64, data: &[u8]) -> Result<()> {
    let mut run_start: Option<usize> = None;
    let blocks = data.len().div_ceil(BLOCK);
    for b in 0..=blocks {
        let block = data.get(b * BLOCK..((b + 1) * BLOCK).min(data.len()));
        let zero = block.is_none_or(vmstash_hashblocks::hasher::is_zero);
        match (zero, run_start) {
            (false, None) => run_start = Some(b * BLOCK),
            (true, Some(start)) => {
                let end = (b * BLOCK).min(data.len());
                sink.write_at(&data[start..end], offset + u64::try_from(start)?)?;
                run_start = None;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs::{self, File};

    #[test]
    fn sparse_write_skips_zero_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        let f = File::create(&p).expect("create");
        f.set_len(5 * 4096).expect("len");
        let mut data = vec![0u8; 3 * BLOCK + 100];
        data[5] = 1;
        data[3 * BLOCK + 99] = 2;
        write_sparse(&f, 4096, &data).expect("write");
        let back = fs::read(&p).expect("read");
        assert_eq!(&back[4096..4096 + data.len()], &data[..]);
        assert!(back[..4096].iter().all(|&b| b == 0));
    }
}
