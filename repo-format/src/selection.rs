//! Choosing snapshots the way restic users expect: filters (`--vm`, `--host`, `--tag`) and
//! groups (`--group-by`).
//!
//! A tag list `a,b` matches a snapshot holding *all* of its tags; several tag lists match a
//! snapshot matching *any* of them (restic's `--tag a,b --tag c`). Several names or hosts match
//! any of them. An empty filter matches every snapshot.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::id::Id;
use crate::snapshot::Manifest;
use crate::{Error, Result};

/// Tags that must all be present (one `--tag a,b` or `--keep-tag a,b` value).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TagList(Vec<String>);

impl TagList {
    /// Parses `a,b,c`; empty items are ignored, so `""` matches every snapshot.
    pub fn parse(text: &str) -> TagList {
        TagList(
            text.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }

    /// True when the snapshot carries every tag of the list.
    pub fn matches(&self, tags: &[String]) -> bool {
        self.0.iter().all(|t| tags.contains(t))
    }
}

impl fmt::Display for TagList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Which snapshots a command considers.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    /// VM (snapshot) names; any of them.
    pub names: Vec<String>,
    /// Host names; any of them.
    pub hosts: Vec<String>,
    /// Tag lists; any of them.
    pub tags: Vec<TagList>,
}

impl SnapshotFilter {
    /// True when the snapshot passes every part of the filter.
    pub fn matches(&self, m: &Manifest) -> bool {
        (self.names.is_empty() || self.names.contains(&m.name))
            && (self.hosts.is_empty() || self.hosts.contains(&m.hostname))
            && (self.tags.is_empty() || self.tags.iter().any(|t| t.matches(&m.tags)))
    }

    /// True when it matches everything.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.hosts.is_empty() && self.tags.is_empty()
    }
}

/// What snapshots are grouped by before a policy or `--latest N` applies to each group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBy {
    /// The VM (snapshot) name.
    pub name: bool,
    /// The host that made the snapshot.
    pub host: bool,
    /// The set of disk names.
    pub disks: bool,
    /// The set of tags.
    pub tags: bool,
}

impl Default for GroupBy {
    /// VM name + host + disk set: one group per VM and host, a new one when disks change.
    fn default() -> Self {
        GroupBy {
            name: true,
            host: true,
            disks: true,
            tags: false,
        }
    }
}

impl GroupBy {
    /// Parses `vm,host,disks,tags` in any order and subset; `""` groups nothing (one group).
    pub fn parse(text: &str) -> Result<GroupBy> {
        let mut by = GroupBy {
            name: false,
            host: false,
            disks: false,
            tags: false,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "vm" | "name" => by.name = true,
                "host" => by.host = true,
                "disks" => by.disks = true,
                "tags" => by.tags = true,
                other => {
                    return Err(Error::InvalidParameter(format!(
                        "cannot group by {other:?}: use vm, host, disks and tags, separated by commas, or '' for one group"
                    )))
                }
            }
        }
        Ok(by)
    }

    /// The key of a snapshot's group.
    pub fn key(&self, m: &Manifest) -> GroupKey {
        let sorted = |items: Vec<&String>| {
            let mut v: Vec<String> = items.into_iter().cloned().collect();
            v.sort();
            v.dedup();
            v
        };
        GroupKey {
            name: self.name.then(|| m.name.clone()),
            hostname: self.host.then(|| m.hostname.clone()),
            disks: self
                .disks
                .then(|| sorted(m.disks.iter().map(|d| &d.name).collect())),
            tags: self.tags.then(|| sorted(m.tags.iter().collect())),
        }
    }
}

/// The values a group's snapshots share (only the grouped-by fields are set).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GroupKey {
    /// VM name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Disk names, sorted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<String>>,
    /// Tags, sorted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(n) = &self.name {
            parts.push(format!("vm {n:?}"));
        }
        if let Some(h) = &self.hostname {
            parts.push(format!("host {h:?}"));
        }
        if let Some(d) = &self.disks {
            parts.push(format!("disks [{}]", d.join(", ")));
        }
        if let Some(t) = &self.tags {
            parts.push(format!("tags [{}]", t.join(", ")));
        }
        if parts.is_empty() {
            f.write_str("all snapshots")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Snapshots split into groups, each keeping the input's order; groups ordered by key.
pub fn group(snapshots: Vec<(Id, Manifest)>, by: &GroupBy) -> Vec<(GroupKey, Vec<(Id, Manifest)>)> {
    let mut groups: BTreeMap<GroupKey, Vec<(Id, Manifest)>> = BTreeMap::new();
    for (id, m) in snapshots {
        groups.entry(by.key(&m)).or_default().push((id, m));
    }
    groups.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::sample;

    fn id(n: u8) -> Id {
        Id::of(&[n])
    }

    fn snap(name: &str, host: &str, tags: &[&str]) -> Manifest {
        let mut m = sample();
        m.name = name.into();
        m.hostname = host.into();
        m.tags = tags.iter().map(|t| t.to_string()).collect();
        m
    }

    #[test]
    fn tag_lists_are_and_inside_and_or_between() {
        let f = SnapshotFilter {
            tags: vec![TagList::parse("a,b"), TagList::parse("c")],
            ..SnapshotFilter::default()
        };
        assert!(f.matches(&snap("x", "h", &["a", "b"])));
        assert!(f.matches(&snap("x", "h", &["c"])));
        assert!(!f.matches(&snap("x", "h", &["a"])));
        assert!(!f.matches(&snap("x", "h", &[])));
    }

    #[test]
    fn names_and_hosts_match_any_and_combine_with_and() {
        let f = SnapshotFilter {
            names: vec!["web1".into(), "db1".into()],
            hosts: vec!["kvm1".into()],
            ..SnapshotFilter::default()
        };
        assert!(f.matches(&snap("db1", "kvm1", &[])));
        assert!(!f.matches(&snap("db1", "kvm2", &[])));
        assert!(!f.matches(&snap("mail", "kvm1", &[])));
        assert!(SnapshotFilter::default().matches(&snap("any", "any", &[])));
    }

    #[test]
    fn group_by_parses_subsets_and_refuses_unknown_fields() {
        assert_eq!(
            GroupBy::parse("").expect("empty"),
            GroupBy::parse(" , ").expect("blank")
        );
        let by = GroupBy::parse("host,tags").expect("parse");
        assert!(by.host && by.tags && !by.name && !by.disks);
        let err = GroupBy::parse("paths").expect_err("restic's paths is not ours");
        assert!(
            err.to_string().contains("vm, host, disks and tags"),
            "{err}"
        );
    }

    #[test]
    fn default_groups_by_vm_host_and_disk_set() {
        let a = snap("web1", "kvm1", &["x"]);
        let mut b = snap("web1", "kvm1", &["y"]);
        let c = snap("web1", "kvm2", &[]);
        let mut d = snap("web1", "kvm1", &[]);
        d.disks[0].name = "vdz".into();
        b.time = "2026-11-27T10:00:00Z".into();
        let groups = group(
            vec![(id(1), a), (id(2), b), (id(3), c), (id(4), d)],
            &GroupBy::default(),
        );
        let sizes: Vec<_> = groups.iter().map(|(_, s)| s.len()).collect();
        assert_eq!(sizes, vec![2, 1, 1], "{groups:#?}");
        assert_eq!(groups[0].1[0].0, id(1), "input order kept inside a group");
        let one = group(
            vec![(id(1), snap("a", "h", &[])), (id(2), snap("b", "g", &[]))],
            &GroupBy::parse("").expect("none"),
        );
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].0.to_string(), "all snapshots");
    }
}
