//! `vmstash tag`: adds, removes or sets the tags of snapshots. A snapshot file is named by its
//! content, so each changed snapshot is written anew and the old file removed only once the new
//! one is stored: a crash in between leaves both (the same backup twice), never neither.

use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::json;
use vmstash_repo::selection::SnapshotFilter;
use vmstash_repo::snapshot::Manifest;
use vmstash_repo::Id;

use crate::args::{Global, TagArgs};
use crate::exit::{self, usage};
use crate::output::{line, print_json};
use crate::repo;

/// Runs `vmstash tag`.
pub fn run(g: &Global, a: &TagArgs) -> Result<ExitCode> {
    if a.add.is_empty() && a.remove.is_empty() && a.set.is_none() {
        return Err(usage("say what to change: --add, --remove or --set"));
    }
    let set = a.set.as_ref().map(|tags| {
        tags.iter()
            .filter(|t| !t.is_empty())
            .cloned()
            .collect::<Vec<_>>()
    });
    if let Some(bad) = a
        .add
        .iter()
        .chain(set.iter().flatten())
        .find(|t| t.is_empty())
    {
        return Err(usage(format!("--add {bad:?}: a tag must be non-empty")));
    }
    let repo = repo::open(g)?;
    let _lock = repo::lock_for_writing(g, &repo, "tag")?;
    let (listing, _) = repo::snapshots_warning_of_damage(&repo)?;
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
    let mut changed = Vec::new();
    for (old_id, m) in chosen {
        let tags = new_tags(&m.tags, &a.add, &a.remove, set.as_deref());
        if tags == m.tags {
            continue;
        }
        let mut retagged = m.clone();
        retagged.tags = tags;
        // As restic: the first snapshot of a chain of rewrites stays the original.
        retagged.original = Some(m.original.unwrap_or(old_id));
        let (new_id, _) = repo
            .save_snapshot(&retagged)
            .with_context(|| format!("storing snapshot {} with its new tags", old_id.short()))?;
        repo.remove_snapshot(&old_id).with_context(|| {
            format!(
                "removing snapshot {} (its retagged copy {} is stored)",
                old_id.short(),
                new_id.short()
            )
        })?;
        changed.push((old_id, new_id, retagged.tags));
    }
    if g.json {
        print_json(
            &json!({"changed": changed.iter().map(|(old, new, tags)| json!({
            "old_id": old.to_hex(), "new_id": new.to_hex(), "tags": tags,
        })).collect::<Vec<_>>()}),
        );
    } else {
        for (old, new, tags) in &changed {
            line(format_args!(
                "snapshot {} is now {} with tags [{}]",
                old.short(),
                new.short(),
                tags.join(",")
            ));
        }
        line(format_args!("{} snapshots changed", changed.len()));
    }
    Ok(exit::ok())
}

/// The tags after the change: `set` replaces them all; else `add` is appended (once) and
/// `remove` taken out, in that order. The order of kept tags stays.
fn new_tags(
    old: &[String],
    add: &[String],
    remove: &[String],
    set: Option<&[String]>,
) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for t in set.unwrap_or(old).iter().chain(add) {
        if !remove.contains(t) && !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::new_tags;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn add_remove_and_set_combine_like_restic() {
        let old = v(&["a", "b"]);
        assert_eq!(
            new_tags(&old, &v(&["c", "a"]), &[], None),
            v(&["a", "b", "c"])
        );
        assert_eq!(new_tags(&old, &[], &v(&["a"]), None), v(&["b"]));
        assert_eq!(new_tags(&old, &v(&["x"]), &v(&["x", "b"]), None), v(&["a"]));
        assert_eq!(new_tags(&old, &[], &[], Some(&v(&["z"]))), v(&["z"]));
        assert_eq!(new_tags(&old, &[], &[], Some(&[])), Vec::<String>::new());
    }
}
