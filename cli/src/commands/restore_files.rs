//! `vmstash restore SNAPSHOT:PATH --target DIR`: files and directory trees of a snapshot's
//! guest filesystems written back as files, read through the same code as the mount, like
//! `tar -xp` of what `vmstash dump` writes: `DIR/<last name of PATH>` gets the file or tree,
//! with modes, modification and access times, symlinks, hard links, and (as root) owners,
//! device nodes and FIFOs. Nothing that exists is overwritten: the target name must be new.

use std::fs::{File, FileTimes, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};
use fuser::FileAttr;
use rustix::fs::{AtFlags, FileType as RawType, Mode, Timespec, Timestamps, CWD};
use serde_json::json;

use super::browse::open;
use super::walk::{walk, Node, Visitor};
use crate::args::{Global, RestoreArgs};
use crate::output::{human, line, print_json};
use crate::{exit, repo};

/// Memory for verified chunks while restoring files.
const CACHE_BYTES: u64 = 64 << 20;

/// Runs `vmstash restore SNAPSHOT:PATH --target DIR`.
pub fn run(g: &Global, a: &RestoreArgs) -> Result<ExitCode> {
    if !a.disks.is_empty() || a.define || a.format != crate::args::RestoreFormat::Raw {
        return Err(exit::usage(
            "--disk, --format and --define restore whole disks: give SNAPSHOT without :PATH",
        ));
    }
    if a.target.contains("://") {
        return Err(exit::usage(
            "restoring files writes to a local directory; mount or dump them to copy elsewhere",
        ));
    }
    let started = Instant::now();
    let repo = repo::open(g)?;
    let _lock = repo::lock_for_reading(g, &repo, "restore")?;
    let opened = open(&repo, &a.snapshot, (&a.filter, &a.luks), CACHE_BYTES)?;
    let name = opened
        .path
        .rsplit('/')
        .find(|n| !n.is_empty())
        .with_context(|| {
            format!(
                "{:?}: name a file or directory inside the snapshot",
                a.snapshot
            )
        })?;
    let target = PathBuf::from(&a.target);
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    let dest = target.join(name);
    if dest.symlink_metadata().is_ok() {
        bail!(
            "{} exists: restore never overwrites; choose another --target",
            dest.display()
        );
    }
    let mut writer = Writer::new(target);
    walk(&opened.fs, Path::new(name), &opened.attr, &mut writer).with_context(|| {
        format!(
            "restoring {:?} of snapshot {} ({} files written to {} before the error)",
            opened.path,
            opened.id.short(),
            writer.files,
            dest.display()
        )
    })?;
    let secs = started.elapsed().as_secs_f64();
    if g.json {
        print_json(
            &json!({"message_type": "summary", "snapshot_id": opened.id.to_hex(),
            "path": opened.path, "restored_to": dest, "files": writer.files,
            "bytes": writer.bytes, "skipped": writer.skipped, "seconds": secs}),
        );
    } else if !g.quiet {
        line(format!(
            "restored {} ({} files, {}) of snapshot {} to {} in {secs:.1} s",
            opened.path,
            writer.files,
            human(writer.bytes),
            opened.id.short(),
            dest.display()
        ));
    }
    Ok(exit::ok())
}

/// Writes what the walk meets under a directory.
struct Writer {
    /// The directory the walk's paths are relative to.
    base: PathBuf,
    /// Whether owners can be set (running as root).
    root: bool,
    /// Files written, and bytes of their contents.
    files: u64,
    bytes: u64,
    /// Files not restored (sockets; device nodes and FIFOs unless root).
    skipped: u64,
}

impl Writer {
    fn new(base: PathBuf) -> Writer {
        Writer {
            base,
            root: rustix::process::geteuid().is_root(),
            files: 0,
            bytes: 0,
            skipped: 0,
        }
    }

    /// Owner (as root), permissions (but for symlinks) and times of `path`, as in `attr`.
    fn finish(&self, path: &Path, attr: &FileAttr, symlink: bool) -> Result<()> {
        if self.root {
            std::os::unix::fs::lchown(path, Some(attr.uid), Some(attr.gid))
                .with_context(|| format!("setting the owner of {}", path.display()))?;
        }
        if !symlink {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(attr.perm.into()))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
        }
        let times = Timestamps {
            last_access: timespec(attr.atime),
            last_modification: timespec(attr.mtime),
        };
        rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
            .with_context(|| format!("setting the times of {}", path.display()))?;
        Ok(())
    }

    /// A device node or FIFO at `path`, as root; skipped with a line otherwise.
    fn special(&mut self, path: &Path, kind: RawType, dev: u64, what: &str) -> Result<bool> {
        if !self.root && kind != RawType::Fifo {
            eprintln!(
                "vmstash: {}: a {what}, not restored (needs root)",
                path.display()
            );
            self.skipped += 1;
            return Ok(false);
        }
        rustix::fs::mknodat(CWD, path, kind, Mode::from_raw_mode(0o600), dev)
            .with_context(|| format!("creating {what} {}", path.display()))?;
        Ok(true)
    }
}

impl Visitor for Writer {
    fn visit(&mut self, rel: &Path, attr: &FileAttr, node: Node<'_>) -> Result<()> {
        let path = self.base.join(rel);
        let made = match node {
            Node::Dir => {
                std::fs::create_dir(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                // Its owner now, its mode and times once its contents are written.
                if self.root {
                    std::os::unix::fs::lchown(&path, Some(attr.uid), Some(attr.gid))?;
                }
                return Ok(());
            }
            Node::File(mut bytes) => {
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                let n = io::copy(&mut bytes, &mut out)
                    .with_context(|| format!("writing {}", path.display()))?;
                out.flush()?;
                self.bytes += n;
                true
            }
            Node::HardLink(first) => {
                std::fs::hard_link(self.base.join(first), &path)
                    .with_context(|| format!("linking {}", path.display()))?;
                self.files += 1;
                return Ok(());
            }
            Node::Symlink(target) => {
                std::os::unix::fs::symlink(&target, &path)
                    .with_context(|| format!("creating symlink {}", path.display()))?;
                self.finish(&path, attr, true)?;
                self.files += 1;
                return Ok(());
            }
            Node::Device(block, major, minor) => {
                let (kind, what) = if block {
                    (RawType::BlockDevice, "block device")
                } else {
                    (RawType::CharacterDevice, "character device")
                };
                self.special(&path, kind, rustix::fs::makedev(major, minor), what)?
            }
            Node::Fifo => self.special(&path, RawType::Fifo, 0, "FIFO")?,
            Node::Socket => {
                eprintln!("vmstash: {}: a socket, not restored", path.display());
                self.skipped += 1;
                false
            }
        };
        if made {
            self.finish(&path, attr, false)?;
            self.files += 1;
        }
        Ok(())
    }

    fn leave(&mut self, rel: &Path, attr: &FileAttr) -> Result<()> {
        let path = self.base.join(rel);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(attr.perm.into()))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        File::open(&path)
            .and_then(|d| {
                d.set_times(
                    FileTimes::new()
                        .set_accessed(attr.atime)
                        .set_modified(attr.mtime),
                )
            })
            .with_context(|| format!("setting the times of {}", path.display()))?;
        self.files += 1;
        Ok(())
    }
}

/// `t` as `utimensat` takes it.
fn timespec(t: SystemTime) -> Timespec {
    let (secs, nanos) = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() == 0 {
                (secs, 0)
            } else {
                (secs - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    };
    Timespec {
        tv_sec: secs,
        tv_nsec: nanos.into(),
    }
}
