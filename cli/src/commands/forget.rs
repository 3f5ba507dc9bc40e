//! `vmstash forget`: removes snapshots chosen by a retention policy (restic's `--keep-*` rules,
//! per group) or by id. Only snapshot files go: the chunks they used stay in the repository
//! (a later prune frees those no snapshot needs; `--prune` runs one right after), so forget
//! takes a shared lock and never blocks backups, restores or mounts.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde_json::json;
use vmstash_repo::backend::FileKind;
use vmstash_repo::policy::{self, Decision, Keep, KeepPolicy, Span};
use vmstash_repo::repository::SnapshotListing;
use vmstash_repo::selection::{self, GroupBy, GroupKey, SnapshotFilter, TagList};
use vmstash_repo::snapshot::Manifest;
use vmstash_repo::{Id, Repository};

use crate::args::{value_error, ForgetArgs, Global};
use crate::commands::prune;
use crate::exit::{self, usage};
use crate::output::{line, print_json, snapshot_time};
use crate::repo;

/// Runs `vmstash forget`.
pub fn run(g: &Global, a: &ForgetArgs) -> Result<ExitCode> {
    let policy = keep_policy(a)?;
    if !a.ids.is_empty() && !policy.is_empty() {
        return Err(usage(
            "give snapshot ids or a --keep-* policy, not both: nothing was removed",
        ));
    }
    if a.ids.is_empty() && policy.is_empty() {
        return Err(usage(
            "no policy: say what to keep (--keep-last, --keep-daily, --keep-within, --keep-tag, …) or name snapshots by id; nothing was removed",
        ));
    }
    let prune_options = if a.prune {
        Some(prune::options(g, &a.prune_options, a.dry_run)?)
    } else {
        prune::refuse_without_prune(&a.prune_options)?;
        None
    };
    let repo = repo::open(g)?;
    let forgotten = {
        let _lock = repo::lock_for_writing(g, &repo, "forget")?;
        if a.ids.is_empty() {
            forget_by_policy(g, a, &repo, &policy)?
        } else {
            forget_by_id(g, a, &repo)?
        }
    };
    // A dry run leaves the forgotten snapshots in place: a prune now would judge them kept.
    let pruned = match prune_options {
        Some(o) if !a.dry_run => Some(prune::run_on(g, &repo, &o)?),
        _ => None,
    };
    if g.json {
        print_json(&match &pruned {
            Some(r) => json!({"forget": forgotten, "prune": r}),
            None => forgotten,
        });
    } else if let Some(r) = &pruned {
        prune::print_report(r);
    } else if a.prune {
        line("prune: not run in a dry run (the snapshots to forget are still there)");
    }
    Ok(exit::ok())
}

/// The policy the flags describe; a malformed value is a usage error.
fn keep_policy(a: &ForgetArgs) -> Result<KeepPolicy> {
    let count = |flag: &str, v: &Option<String>| -> Result<Keep> {
        v.as_deref().map_or(Ok(Keep::Off), |v| {
            Keep::parse(v).map_err(|e| usage(format!("--{flag}: {}", value_error(&e))))
        })
    };
    let span = |flag: &str, v: &Option<String>| -> Result<Option<Span>> {
        v.as_deref()
            .map(|v| Span::parse(v).map_err(|e| usage(format!("--{flag}: {}", value_error(&e)))))
            .transpose()
    };
    Ok(KeepPolicy {
        last: count("keep-last", &a.keep_last)?,
        hourly: count("keep-hourly", &a.keep_hourly)?,
        daily: count("keep-daily", &a.keep_daily)?,
        weekly: count("keep-weekly", &a.keep_weekly)?,
        monthly: count("keep-monthly", &a.keep_monthly)?,
        yearly: count("keep-yearly", &a.keep_yearly)?,
        within: span("keep-within", &a.keep_within)?,
        within_hourly: span("keep-within-hourly", &a.keep_within_hourly)?,
        within_daily: span("keep-within-daily", &a.keep_within_daily)?,
        within_weekly: span("keep-within-weekly", &a.keep_within_weekly)?,
        within_monthly: span("keep-within-monthly", &a.keep_within_monthly)?,
        within_yearly: span("keep-within-yearly", &a.keep_within_yearly)?,
        tags: a.keep_tags.iter().map(|t| TagList::parse(t)).collect(),
    })
}

/// One group's outcome.
/// What a policy decided for one group of snapshots.
pub struct GroupPlan {
    key: GroupKey,
    decisions: Vec<(Decision, Manifest)>,
}

/// Applies `policy` at `now` to `considered`, grouped `by`: each group's decisions with their
/// snapshots.
pub fn plan_groups(
    considered: Vec<(Id, Manifest)>,
    by: &GroupBy,
    policy: &KeepPolicy,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<GroupPlan> {
    selection::group(considered, by)
        .into_iter()
        .map(|(key, snapshots)| {
            let decisions = policy::apply(policy, &snapshots, now)
                .into_iter()
                .map(|d| {
                    let m = snapshots
                        .iter()
                        .find(|(id, _)| *id == d.id)
                        .map(|(_, m)| m.clone())
                        .unwrap_or_else(|| unreachable!("apply decides on the group it is given"));
                    (d, m)
                })
                .collect();
            GroupPlan { key, decisions }
        })
        .collect()
}

/// The snapshots `plans` remove.
pub fn removals(plans: &[GroupPlan]) -> Vec<Id> {
    plans
        .iter()
        .flat_map(|p| {
            p.decisions
                .iter()
                .filter(|(d, _)| !d.keep)
                .map(|(d, _)| d.id)
        })
        .collect()
}

/// Forgets by the policy; prints the table (unless --json) and returns the JSON report.
fn forget_by_policy(
    g: &Global,
    a: &ForgetArgs,
    repo: &Repository,
    policy: &KeepPolicy,
) -> Result<serde_json::Value> {
    let filter: SnapshotFilter = a.filter.filter();
    // A damaged snapshot is left alone (and named): the policy judges the readable ones.
    let considered: Vec<(Id, Manifest)> = repo::snapshots_warning_of_damage(repo)?
        .0
        .snapshots
        .into_iter()
        .filter(|(_, m)| filter.matches(m))
        .collect();
    let now = chrono::DateTime::<chrono::Utc>::from(SystemTime::now());
    let plans = plan_groups(considered, &a.group_by.unwrap_or_default(), policy, now);
    let remove = removals(&plans);
    if !g.json {
        for plan in &plans {
            print_group(plan);
        }
    }
    let removed = if a.dry_run {
        0
    } else {
        remove_all(repo, &remove)?
    };
    let report = json!({
        "dry_run": a.dry_run,
        "removed": removed,
        "groups": plans.iter().map(group_json).collect::<Vec<_>>(),
    });
    if g.json {
        // Printed by the caller, with the prune's report when there is one.
        return Ok(report);
    }
    if a.dry_run {
        line(format_args!(
            "would remove {} snapshots (dry run: nothing changed)",
            remove.len()
        ));
    } else if removed == 0 {
        line("nothing to remove");
    } else {
        line(format_args!(
            "removed {removed} snapshots; the chunks only they used stay in the repository until a prune"
        ));
    }
    Ok(report)
}

/// Forgets the snapshots named by id; prints them (unless --json) and returns the JSON report.
fn forget_by_id(g: &Global, a: &ForgetArgs, repo: &Repository) -> Result<serde_json::Value> {
    let listing = repo.snapshot_listing().context("listing snapshots")?;
    let mut chosen = Vec::new();
    let mut damaged = Vec::new();
    for spec in &a.ids {
        if spec == "latest" {
            return Err(usage(
                "forget takes snapshot ids, not \"latest\": find the id with `vmstash snapshots`",
            ));
        }
        match listing.find(spec, &SnapshotFilter::default()) {
            Ok((id, m)) => {
                if !chosen.iter().any(|(c, _)| *c == id) {
                    chosen.push((id, m));
                }
            }
            // A file that cannot be read can still be named, and removed, by its id.
            Err(e) => match damaged_file(&listing, spec) {
                Some(name) => damaged.push(name),
                None => return Err(e.into()),
            },
        }
    }
    if !a.dry_run {
        for name in &damaged {
            repo.backend()
                .remove(FileKind::Snapshot, name)
                .with_context(|| format!("removing the damaged snapshot file snapshots/{name}"))?;
        }
    }
    for name in &damaged {
        let verb = if a.dry_run { "would remove" } else { "removed" };
        eprintln!("vmstash: {verb} the damaged snapshot file snapshots/{name}");
    }
    let ids: Vec<Id> = chosen.iter().map(|(id, _)| *id).collect();
    let removed = if a.dry_run {
        0
    } else {
        remove_all(repo, &ids)?
    };
    let report = json!({
        "dry_run": a.dry_run,
        "removed": removed,
        "remove": chosen.iter().map(|(id, m)| snapshot_json(id, m, &[])).collect::<Vec<_>>(),
    });
    if g.json {
        return Ok(report);
    }
    for (id, m) in &chosen {
        let verb = if a.dry_run { "would remove" } else { "removed" };
        line(format_args!(
            "{verb} snapshot {} ({} of {})",
            id.short(),
            m.name,
            snapshot_time(&m.time)
        ));
    }
    Ok(report)
}

/// The one damaged snapshot file whose name starts with `spec`, if exactly one does and no
/// readable snapshot does.
fn damaged_file(listing: &SnapshotListing, spec: &str) -> Option<String> {
    let spec = spec.to_ascii_lowercase();
    let readable = listing
        .snapshots
        .iter()
        .any(|(id, _)| id.to_hex().starts_with(&spec));
    let mut names = listing
        .damaged
        .iter()
        .filter(|(name, _)| !spec.is_empty() && name.starts_with(&spec));
    match (readable, names.next(), names.next()) {
        (false, Some((name, _)), None) => Some(name.clone()),
        _ => None,
    }
}

/// Deletes the snapshot files; returns how many went. Stops at the first failure, naming it.
pub fn remove_all(repo: &Repository, ids: &[Id]) -> Result<usize> {
    for (done, id) in ids.iter().enumerate() {
        repo.remove_snapshot(id).with_context(|| {
            format!(
                "removing snapshot {} ({done} of {} removed before it)",
                id.short(),
                ids.len()
            )
        })?;
    }
    Ok(ids.len())
}

fn print_group(plan: &GroupPlan) {
    line(format_args!("snapshots of {}:", plan.key));
    for keep in [true, false] {
        let rows: Vec<_> = plan
            .decisions
            .iter()
            .filter(|(d, _)| d.keep == keep)
            .collect();
        if rows.is_empty() {
            continue;
        }
        line(format_args!(
            "{} {} snapshots:",
            if keep { "keep" } else { "remove" },
            rows.len()
        ));
        line(format_args!(
            "  {:<8}  {:<20}  {:<16}  reasons",
            "ID", "Time (UTC)", "Tags"
        ));
        // Oldest first, as `snapshots` lists them.
        for (d, m) in rows.iter().rev() {
            line(format_args!(
                "  {:<8}  {:<20}  {:<16}  {}",
                d.id.short(),
                snapshot_time(&m.time),
                m.tags.join(","),
                d.reasons.join(", ")
            ));
        }
    }
    line("");
}

fn group_json(plan: &GroupPlan) -> serde_json::Value {
    let side = |keep: bool| {
        plan.decisions
            .iter()
            .rev()
            .filter(|(d, _)| d.keep == keep)
            .map(|(d, m)| snapshot_json(&d.id, m, &d.reasons))
            .collect::<Vec<_>>()
    };
    json!({"group_key": plan.key, "keep": side(true), "remove": side(false)})
}

fn snapshot_json(id: &Id, m: &Manifest, reasons: &[String]) -> serde_json::Value {
    json!({
        "id": id.to_hex(), "short_id": id.short(), "time": m.time, "name": m.name,
        "hostname": m.hostname, "tags": m.tags, "reasons": reasons,
    })
}
