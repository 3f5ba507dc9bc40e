//! `vmstash mount`: the repository as a read-only FUSE filesystem (crate `vmstash-fuse`), in the
//! foreground until Ctrl-C, SIGTERM or `fusermount3 -u`, holding a shared lock meanwhile so
//! that no prune removes what the mount shows.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use fuser::{Config, MountOption, SessionACL};
use vmstash_fuse::VmstashFs;
use vmstash_repo::Repository;

use crate::args::{Global, MountArgs};
use crate::exit;

/// Threads serving FUSE requests: reads of cold chunks block on I/O and decryption, so more
/// than the cores.
const FUSE_THREADS: usize = 4;

/// Runs `vmstash mount`.
pub fn run(g: &Global, repo: &Repository, a: &MountArgs) -> Result<ExitCode> {
    let _lock = repo.lock(false)?;
    let fs = VmstashFs::new(repo.clone(), a.cache_size).context("reading the repository")?;
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
    config.n_threads = Some(FUSE_THREADS);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing the signal handler")?;
    }
    let session = fuser::spawn_mount(fs, &a.mountpoint, &config).with_context(|| {
        format!(
            "mounting on {} (is fuse3 installed, and the directory empty?)",
            a.mountpoint.display()
        )
    })?;
    if !g.quiet {
        eprintln!(
            "vmstash: repository mounted on {}; Ctrl-C or `fusermount3 -u {}` unmounts it",
            a.mountpoint.display(),
            a.mountpoint.display()
        );
    }
    while !stop.load(Ordering::Relaxed) && !session.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    if session.guard.is_finished() {
        session
            .join()
            .context("the FUSE session ended with an error")?;
    } else {
        session
            .umount_and_join()
            .with_context(|| format!("unmounting {}", a.mountpoint.display()))?;
    }
    if !g.quiet {
        eprintln!("vmstash: {} unmounted", a.mountpoint.display());
    }
    Ok(exit::ok())
}
