//! `vmstash ls SNAPSHOT[:PATH]`: a snapshot's files without mounting, as the mount shows them
//! under `snapshots/<id>/` (disks, partitions, volumes, and the files of their filesystems).

use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use anyhow::{bail, Result};
use fuser::{FileAttr, FileType};
use serde_json::json;
use vmstash_fuse::fs::Listed;

use vmstash_fuse::guestfs::decode_dev;

use super::browse::{errno_error, open};
use crate::args::{Global, LsArgs};
use crate::output::{line, print_json};
use crate::{exit, repo};

/// One entry listed: its name, attributes, and a symlink's target.
struct Row {
    name: String,
    attr: FileAttr,
    target: Option<String>,
}

/// Runs `vmstash ls`.
pub fn run(g: &Global, a: &LsArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let _lock = repo::lock_for_reading(g, &repo, "ls")?;
    let opened = open(&repo, &a.target, (&a.filter, &a.luks), a.cache_size)?;
    let entries = if opened.attr.kind == FileType::Directory {
        opened
            .fs
            .children(opened.attr.ino.0)
            .map_err(|e| errno_error(&format!("listing {:?}", opened.path), e))?
    } else {
        let name = opened.path.rsplit('/').next().unwrap_or_default();
        vec![Listed {
            name: name.as_bytes().to_vec(),
            ino: opened.attr.ino.0,
            attr: Some(opened.attr),
        }]
    };
    let mut unreadable = Vec::new();
    let mut rows = Vec::new();
    for Listed { name, ino, attr } in entries {
        let name = String::from_utf8_lossy(&name).into_owned();
        let Some(attr) = attr else {
            unreadable.push(name);
            continue;
        };
        let target = (attr.kind == FileType::Symlink)
            .then(|| opened.fs.link_target(ino).ok())
            .flatten()
            .map(|t| String::from_utf8_lossy(&t).into_owned());
        rows.push(Row { name, attr, target });
    }
    if g.json {
        let out: Vec<_> = rows.iter().map(row_json).collect();
        print_json(&serde_json::Value::Array(out));
    } else {
        for row in &rows {
            if a.long {
                line(format_args!("{}", long_line(row)));
            } else {
                line(format_args!("{}", row.name));
            }
        }
    }
    if !unreadable.is_empty() {
        bail!(
            "the metadata of {} cannot be read in snapshot {} (see `vmstash check`)",
            unreadable.join(", "),
            opened.id.short()
        );
    }
    Ok(exit::ok())
}

fn type_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Directory => "dir",
        FileType::RegularFile => "file",
        FileType::Symlink => "symlink",
        FileType::BlockDevice => "block",
        FileType::CharDevice => "char",
        FileType::NamedPipe => "fifo",
        FileType::Socket => "socket",
    }
}

/// Seconds since the epoch of its modification time (negative before it).
fn mtime(a: &FileAttr) -> i64 {
    match a.mtime.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn row_json(row: &Row) -> serde_json::Value {
    let a = &row.attr;
    let (major, minor) = decode_dev(a.rdev);
    let mut v = json!({"name": row.name, "type": type_name(a.kind), "mode": a.perm,
        "nlink": a.nlink, "uid": a.uid, "gid": a.gid, "size": a.size, "mtime": mtime(a)});
    if let Some(target) = &row.target {
        v["target"] = json!(target);
    }
    if matches!(a.kind, FileType::BlockDevice | FileType::CharDevice) {
        v["device"] = json!([major, minor]);
    }
    v
}

/// `ls -l`'s line: type and permission letters, links, owner, group, size (or device
/// numbers), modification time (UTC), name and a symlink's target.
fn long_line(row: &Row) -> String {
    let a = &row.attr;
    let kind = match a.kind {
        FileType::Directory => 'd',
        FileType::Symlink => 'l',
        FileType::BlockDevice => 'b',
        FileType::CharDevice => 'c',
        FileType::NamedPipe => 'p',
        FileType::Socket => 's',
        FileType::RegularFile => '-',
    };
    let size = match a.kind {
        FileType::BlockDevice | FileType::CharDevice => {
            let (major, minor) = decode_dev(a.rdev);
            format!("{major}, {minor}")
        }
        _ => a.size.to_string(),
    };
    let time = humantime::format_rfc3339_seconds(a.mtime).to_string();
    let mut out = format!(
        "{kind}{} {:>3} {:>6} {:>6} {size:>12} {time} {}",
        permissions(a.perm),
        a.nlink,
        a.uid,
        a.gid,
        row.name
    );
    if let Some(target) = &row.target {
        out.push_str(" -> ");
        out.push_str(target);
    }
    out
}

/// `rwxr-xr-x` with setuid, setgid and sticky bits as `ls` shows them.
fn permissions(perm: u16) -> String {
    let mut s: Vec<char> = "rwxrwxrwx"
        .chars()
        .enumerate()
        .map(|(i, c)| if perm & (0o400 >> i) != 0 { c } else { '-' })
        .collect();
    for (bit, at, set, unset) in [
        (0o4000, 2, 's', 'S'),
        (0o2000, 5, 's', 'S'),
        (0o1000, 8, 't', 'T'),
    ] {
        if perm & bit != 0 {
            s[at] = if s[at] == '-' { unset } else { set };
        }
    }
    s.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_as_ls_shows_them() {
        assert_eq!(permissions(0o755), "rwxr-xr-x");
        assert_eq!(permissions(0o4755), "rwsr-xr-x");
        assert_eq!(permissions(0o2640), "rw-r-S---");
        assert_eq!(permissions(0o1777), "rwxrwxrwt");
    }
}
