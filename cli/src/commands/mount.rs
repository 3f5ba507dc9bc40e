//! `vmstash mount`: the repository as a read-only FUSE filesystem (crate `vmstash-fuse`), in the
//! foreground until Ctrl-C, SIGTERM or `fusermount3 -u`, holding a shared lock meanwhile so
//! that no prune removes what the mount shows.
//!
//! The mount point must be an empty directory that nothing is mounted on: mounting over a file,
//! over files (hiding them — the password file, say) or on top of another mount is refused.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use fuser::{Config, MountOption, SessionACL};
use vmstash_fuse::VmstashFs;

use crate::args::{Global, MountArgs};
use crate::exit::{self, usage};
use crate::{interrupt, repo};

/// Threads serving FUSE requests: a read of a cold chunk blocks on I/O and decryption, so twice
/// the cores (at least 4, at most 16).
fn fuse_threads() -> usize {
    vmstash_repo::threads::workers()
        .saturating_mul(2)
        .clamp(4, 16)
}

/// How often the foreground loop looks for an unmount or a signal.
const POLL: Duration = Duration::from_millis(50);

/// Runs `vmstash mount`.
pub fn run(g: &Global, a: &MountArgs) -> Result<ExitCode> {
    let mountpoint = check_mountpoint(&a.mountpoint)?;
    let repo = repo::open(g)?;
    let _lock = repo::lock_for_reading(g, &repo, "mount")?;
    let passphrases = super::browse::luks_passphrases(&a.luks)?;
    let fs = VmstashFs::unlocking(repo.clone(), a.cache_size, passphrases)
        .context("reading the repository")?;
    fs.set_zero_lost(a.zero_lost);
    let mut config = Config::default();
    config.mount_options.extend([
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::FSName("vmstash".to_owned()),
        MountOption::Subtype("vmstash".to_owned()),
    ]);
    if a.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(fuse_threads());
    let stop = interrupt::cancel_on_signals()?;
    let shown = mountpoint.display();
    let session = fuser::spawn_mount(fs, &mountpoint, &config)
        .with_context(|| format!("mounting on {shown} (is fuse3 installed?)"))?;
    if !g.quiet {
        eprintln!("vmstash: repository mounted on {shown}; Ctrl-C or `fusermount3 -u {shown}` unmounts it");
    }
    while !stop.is_cancelled() && !session.guard.is_finished() {
        std::thread::sleep(POLL);
    }
    if session.guard.is_finished() {
        session
            .join()
            .context("the FUSE session ended with an error")?;
    } else {
        session
            .umount_and_join()
            .with_context(|| format!("unmounting {shown}"))?;
    }
    if !g.quiet {
        eprintln!("vmstash: {shown} unmounted");
    }
    Ok(exit::ok())
}

/// The mount point, absolute, once it is known to be an empty directory nothing is mounted on;
/// a usage error (exit 2) otherwise.
fn check_mountpoint(path: &Path) -> Result<PathBuf> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        usage(format!(
            "{shown}: cannot mount there ({e}); create an empty directory"
        ))
    })?;
    if !meta.is_dir() {
        return Err(usage(format!(
            "{shown} is not a directory; mount on an empty directory"
        )));
    }
    let abs = std::fs::canonicalize(path).with_context(|| format!("resolving {shown}"))?;
    if let Some(what) = mounted_on(&abs) {
        return Err(usage(format!(
            "{shown} is already a mount point ({what} is mounted there); unmount it or choose an empty directory"
        )));
    }
    let mut entries = std::fs::read_dir(&abs).with_context(|| format!("listing {shown}"))?;
    if entries.next().is_some() {
        return Err(usage(format!(
            "{shown} is not empty; mounting there would hide its files: choose an empty directory"
        )));
    }
    Ok(abs)
}

/// What is mounted exactly at `dir`, from /proc/self/mountinfo (its filesystem type and
/// source), if anything.
fn mounted_on(dir: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_at(&info, dir)
}

/// The filesystem mounted at `dir` according to a mountinfo text (the last mount wins, as it is
/// the one on top).
fn mount_at(mountinfo: &str, dir: &Path) -> Option<String> {
    let want = dir.to_str()?;
    mountinfo.lines().rev().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let point = unescape(fields.get(4)?);
        let sep = fields.iter().position(|f| *f == "-")?;
        let fstype = fields.get(sep + 1)?;
        let source = fields.get(sep + 2).copied().unwrap_or("");
        (point == want).then(|| format!("{fstype} {source}"))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space) in a path.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(rest.get(..i).unwrap_or_default());
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(b) => {
                out.push(char::from(b));
                rest = rest.get(i + 4..).unwrap_or_default();
            }
            None => {
                out.push('\\');
                rest = rest.get(i + 1..).unwrap_or_default();
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
80 22 0:45 / /mnt/my\\040backups rw,nosuid,nodev shared:40 - fuse.vmstash vmstash ro
81 80 0:46 / /mnt/my\\040backups rw - tmpfs tmpfs rw
";

    #[test]
    fn mounts_are_found_by_their_exact_path_and_the_top_one_wins() {
        assert_eq!(
            mount_at(MOUNTINFO, Path::new("/mnt/my backups")).as_deref(),
            Some("tmpfs tmpfs")
        );
        assert_eq!(mount_at(MOUNTINFO, Path::new("/mnt")), None);
        assert_eq!(
            mount_at(MOUNTINFO, Path::new("/")).as_deref(),
            Some("ext4 /dev/vda1")
        );
    }

    #[test]
    fn files_and_nonempty_directories_are_refused_as_usage_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("password");
        std::fs::write(&file, "secret").expect("write");
        for bad in [file.as_path(), dir.path(), &dir.path().join("missing")] {
            let err = check_mountpoint(bad).expect_err("refused");
            assert!(err.is::<crate::exit::UsageError>(), "{err}");
        }
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        assert!(check_mountpoint(&empty).is_ok());
        assert!(
            check_mountpoint(Path::new("/")).is_err(),
            "/ is a mount point"
        );
    }
}
