//! `vmstash copy`: snapshots of another repository (`--from-repo`) copied into this one — local
//! to S3 for an offsite copy, S3 to local, any two kinds. The engine is
//! [`vmstash_repo::copy`]: each snapshot is decrypted with the source's key and stored under
//! the destination's, chunks the destination has are not read, and snapshots it holds
//! (identified by content) are skipped, so a repeated copy transfers nothing.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde_json::json;
use vmstash_repo::copy::{copy_snapshots, plan_copy, Copied, CopyPlan};
use vmstash_repo::selection::SnapshotFilter;
use vmstash_repo::snapshot::Manifest;
use vmstash_repo::Id;

use crate::args::{CopyArgs, Global};
use crate::exit;
use crate::output::{human, line, print_json};
use crate::{interrupt, progress, repo};

/// Runs `vmstash copy`.
pub fn run(g: &Global, a: &CopyArgs) -> Result<ExitCode> {
    let src = repo::open_source(g, &a.from)?;
    let dst = repo::open(g)?;
    if src.config().id == dst.config().id {
        bail!("--from-repo and -r name the same repository; nothing to copy");
    }
    let _src_lock = repo::lock_for_reading(g, &src, "copy").context("locking the source")?;
    let _dst_lock = repo::lock_for_writing(g, &dst, "copy")?;
    let (listing, _) = repo::snapshots_warning_of_damage(&src)?;
    let chosen: Vec<(Id, Manifest)> = if a.ids.is_empty() {
        let filter = a.filter.filter();
        listing
            .snapshots
            .iter()
            .filter(|(_, m)| filter.matches(m))
            .cloned()
            .collect()
    } else {
        a.ids
            .iter()
            .map(|spec| listing.find(spec, &SnapshotFilter::default()))
            .collect::<vmstash_repo::Result<_>>()?
    };
    let plan = plan_copy(&dst, chosen).context("listing the destination's snapshots")?;
    let (from_chunk, to_chunk) = (src.config().chunk_size, dst.config().chunk_size);
    if from_chunk != to_chunk && !plan.missing.is_empty() && !g.quiet {
        eprintln!(
            "vmstash: the repositories' chunk sizes differ ({} and {}): every disk is read whole and nothing deduplicates with the source; a destination made with `vmstash init --from-repo SRC --copy-chunker-params` avoids this",
            human(u64::from(from_chunk)),
            human(u64::from(to_chunk))
        );
    }
    if g.verbose > 0 && !g.json {
        for (from, there) in &plan.present {
            line(format_args!(
                "snapshot {} is already there as {}",
                from.short(),
                there.short()
            ));
        }
    }
    let cancel = interrupt::cancel_on_signals()?;
    let bar = progress::bytes(g, plan.bytes(), "copying");
    let copied = copy_snapshots(&src, &dst, &plan, &|n| bar.inc(n), &cancel);
    bar.finish_and_clear();
    let copied = copied.with_context(|| {
        format!(
            "copying snapshots from {} to {}",
            src.backend().location(),
            dst.backend().location()
        )
    })?;
    report(g, &plan, &copied);
    Ok(exit::ok())
}

fn report(g: &Global, plan: &CopyPlan, copied: &[Copied]) {
    let read: u64 = copied
        .iter()
        .map(|c| c.report.manifest.summary.bytes_read)
        .sum();
    let added: u64 = copied
        .iter()
        .map(|c| c.report.manifest.summary.bytes_added)
        .sum();
    if g.json {
        let list: Vec<_> = copied
            .iter()
            .map(|c| {
                let m = &c.report.manifest;
                json!({
                    "source": c.source.to_hex(),
                    "id": c.report.id.to_hex(),
                    "name": m.name,
                    "time": m.time,
                    "bytes_read": m.summary.bytes_read,
                    "bytes_added": m.summary.bytes_added,
                    "new_chunks": m.summary.new_chunks,
                })
            })
            .collect();
        let skipped: Vec<_> = plan
            .present
            .iter()
            .map(|(from, there)| json!({"source": from.to_hex(), "id": there.to_hex()}))
            .collect();
        print_json(&json!({
            "message_type": "summary",
            "copied": list,
            "already_present": skipped,
            "bytes_read": read,
            "bytes_added": added,
        }));
        return;
    }
    if g.quiet {
        return;
    }
    for c in copied {
        let m = &c.report.manifest;
        line(format_args!(
            "snapshot {} of {} ({}) copied as {}: read {}, added {}",
            c.source.short(),
            m.name,
            m.time,
            c.report.id.short(),
            human(m.summary.bytes_read),
            human(m.summary.bytes_added)
        ));
    }
    line(format_args!(
        "copied {} snapshot(s), {} already there; read {} from the source, added {}",
        copied.len(),
        plan.present.len(),
        human(read),
        human(added)
    ));
}
