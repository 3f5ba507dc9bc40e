//! `vmstash mount` with real FUSE (fusermount3): whole disks read back bit-identical, a snapshot
//! added while mounted appears, a corrupted pack gives EIO on the reads that need it (and a log
//! line naming it) while the rest keeps working, and SIGTERM unmounts cleanly.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::util::{have, random_bytes, sha256_file, sparse_image, Repo};

/// A running `vmstash mount`; unmounted and reaped on drop.
pub struct Mounted {
    child: Option<Child>,
    dir: PathBuf,
}

impl Mounted {
    pub fn start(repo: &Repo, dir: &Path) -> Mounted {
        Mounted::start_with(repo, dir, &[])
    }

    /// Mounts with extra options of `vmstash mount`.
    pub fn start_with(repo: &Repo, dir: &Path, options: &[&str]) -> Mounted {
        std::fs::create_dir_all(dir).expect("mountpoint");
        let dir_s = dir.display().to_string();
        let mut args = vec!["mount", dir_s.as_str()];
        args.extend_from_slice(options);
        let child = repo
            .cmd(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmstash mount");
        let mounted = Mounted {
            child: Some(child),
            dir: dir.to_owned(),
        };
        wait_for(Duration::from_secs(20), "the mount to appear", || {
            dir.join("vms").is_dir()
        });
        mounted
    }

    /// Sends SIGTERM; returns the exit status and stderr.
    pub fn stop(self) -> (std::process::ExitStatus, String) {
        self.signal("-TERM")
    }

    /// Sends `signal` (`-INT` is Ctrl-C); returns the exit status and stderr.
    pub fn signal(self, signal: &str) -> (std::process::ExitStatus, String) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        crate::util::sh("kill", &[signal, &pid]);
        self.wait_exit()
    }

    /// Waits for the mount process to end by itself; returns its exit status and stderr.
    pub fn wait_exit(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("vmstash mount did not end");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        (status, stderr)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::process::Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.dir)
                .output();
        }
    }
}

pub fn wait_for(timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn is_mounted(dir: &Path) -> bool {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&canonical.display().to_string()))
}

#[test]
fn mount_shows_every_backup_as_a_raw_image_and_follows_new_snapshots() {
    if !have(&["fusermount3", "qemu-img"], false) {
        return;
    }
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir(&src).expect("src dir");
    let disk = sparse_image(
        &src,
        "web1.img",
        24 << 20,
        &[
            (0, random_bytes(1, 300_000)),
            (9 << 20, random_bytes(2, 2 << 20)),
            ((24 << 20) - 4096, vec![7; 4096]),
        ],
    );
    let first = repo.backup(&[&disk]);
    let short = first["short_id"].as_str().expect("short id").to_owned();
    let mnt = repo.dir.path().join("mnt");
    let mounted = Mounted::start(&repo, &mnt);

    let latest = mnt.join("vms/web1/latest/web1.raw");
    assert_eq!(
        sha256_file(&latest),
        sha256_file(&disk),
        "whole-disk SHA-256"
    );
    assert_eq!(std::fs::metadata(&latest).expect("stat").len(), 24 << 20);
    let by_id = mnt.join(format!("snapshots/{short}/web1.raw"));
    assert_eq!(sha256_file(&by_id), sha256_file(&disk));
    assert!(
        std::fs::write(&latest, b"x").is_err(),
        "the mount is read-only"
    );

    // Instant recovery: the image in the mount backs a qcow2 overlay that reads as the disk.
    let overlay = repo.dir.path().join("overlay.qcow2");
    let overlay_arg = overlay.display().to_string();
    let backing = by_id.display().to_string();
    let create = [
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        &backing,
        "-F",
        "raw",
        &overlay_arg,
    ];
    crate::util::sh("qemu-img", &create);
    let disk_arg = disk.display().to_string();
    let compare = [
        "compare",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        &overlay_arg,
        &disk_arg,
    ];
    crate::util::sh("qemu-img", &compare);

    // A second backup while mounted shows up, and `latest` follows it.
    crate::util::write_at(&disk, 5 << 20, &random_bytes(3, 1 << 20));
    let second = repo.backup(&[&disk]);
    let second_short = second["short_id"].as_str().expect("short id").to_owned();
    let second_dir = mnt.join(format!("snapshots/{second_short}"));
    wait_for(Duration::from_secs(20), "the new snapshot", || {
        second_dir.is_dir()
    });
    wait_for(Duration::from_secs(20), "latest to follow", || {
        sha256_file(&latest) == sha256_file(&disk)
    });
    let runs = std::fs::read_dir(mnt.join("vms/web1"))
        .expect("list")
        .count();
    assert_eq!(runs, 3, "two timestamped snapshots and latest");

    let (status, stderr) = mounted.stop();
    assert!(status.success(), "mount exited with {status}: {stderr}");
    assert!(!is_mounted(&mnt), "still mounted after SIGTERM");
}

#[test]
fn a_corrupted_pack_gives_eio_only_where_it_is_needed() {
    if !have(&["fusermount3"], false) {
        return;
    }
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir(&src).expect("src dir");
    let good = sparse_image(&src, "good.img", 4 << 20, &[(0, random_bytes(6, 4 << 20))]);
    repo.backup(&[&good]);
    let packs_before: Vec<PathBuf> = repo.files("data");
    let bad = sparse_image(&src, "bad.img", 4 << 20, &[(0, random_bytes(9, 4 << 20))]);
    repo.backup(&[&bad]);
    let new_pack = repo
        .files("data")
        .into_iter()
        .find(|p| !packs_before.contains(p))
        .expect("the second backup's pack");
    let mut bytes = std::fs::read(&new_pack).expect("pack");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let mut perms = std::fs::metadata(&new_pack).expect("stat").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&new_pack, perms).expect("chmod");
    std::fs::write(&new_pack, &bytes).expect("corrupt the pack");

    let mnt = repo.dir.path().join("mnt");
    let mounted = Mounted::start(&repo, &mnt);
    let err = std::fs::read(mnt.join("vms/bad/latest/bad.raw")).expect_err("a damaged chunk");
    assert_eq!(err.raw_os_error(), Some(libc_eio()), "{err}");
    assert_eq!(
        sha256_file(&mnt.join("vms/good/latest/good.raw")),
        sha256_file(&good),
        "the other disk still reads"
    );
    let (status, stderr) = mounted.stop();
    assert!(status.success(), "{stderr}");
    let pack_name = new_pack
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        stderr.contains("vmstash mount: reading") && stderr.contains(&pack_name[..8]),
        "no log line naming the pack: {stderr}"
    );
}

/// EIO's number on Linux.
fn libc_eio() -> i32 {
    5
}

#[test]
fn partitions_show_as_files_the_kernel_can_loop_mount() {
    if !have(
        &[
            "fusermount3",
            "sgdisk",
            "mkfs.ext4",
            "losetup",
            "mount",
            "diff",
        ],
        true,
    ) {
        return;
    }
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir(&src).expect("src dir");
    let disk = crate::util::partitioned_image(&src, 64);
    let name = disk
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .into_owned();
    repo.backup(&[&disk]);
    let mnt = repo.dir.path().join("mnt");
    let mounted = Mounted::start(&repo, &mnt);
    let part = mnt.join(format!("vms/{name}/latest/{name}/p1.raw"));
    assert!(part.is_file(), "{} missing", part.display());

    // The same partition from the source image, attached by offset.
    let ours = repo.dir.path().join("ours");
    let theirs = repo.dir.path().join("theirs");
    std::fs::create_dir(&ours).expect("mkdir");
    std::fs::create_dir(&theirs).expect("mkdir");
    let part_s = part.display().to_string();
    let ours_s = ours.display().to_string();
    crate::util::sh("mount", &["-o", "loop,ro", &part_s, &ours_s]);
    let result = std::panic::catch_unwind(|| {
        let start = (2048 * 512).to_string();
        let size = std::fs::metadata(&part).expect("stat").len().to_string();
        let theirs_s = theirs.display().to_string();
        let options = format!("loop,ro,offset={start},sizelimit={size}");
        crate::util::sh(
            "mount",
            &["-o", &options, &disk.display().to_string(), &theirs_s],
        );
        let same = std::process::Command::new("diff")
            .args(["-r", "--no-dereference", &ours_s, &theirs_s])
            .output()
            .expect("diff");
        let _ = std::process::Command::new("umount").arg(&theirs).output();
        assert!(
            same.status.success(),
            "the partition's files differ: {}",
            String::from_utf8_lossy(&same.stdout)
        );
    });
    let _ = std::process::Command::new("umount").arg(&ours).output();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    let (status, stderr) = mounted.stop();
    assert!(status.success(), "{stderr}");
}

#[test]
fn allow_other_lets_other_users_in_and_fusermount_or_ctrl_c_unmount() {
    if !have(&["fusermount3", "runuser", "sha256sum"], true) {
        return;
    }
    let repo = Repo::init();
    let src = repo.dir.path().join("src");
    std::fs::create_dir(&src).expect("src dir");
    let disk = sparse_image(
        &src,
        "shared.img",
        2 << 20,
        &[(0, random_bytes(21, 1 << 20))],
    );
    repo.backup(&[&disk]);
    // Other users must be able to reach the mountpoint at all.
    let public = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mnt = public.path().join("mnt");
    let image = mnt.join("vms/shared/latest/shared.raw");
    let image_s = image.display().to_string();
    let as_nobody = || {
        std::process::Command::new("runuser")
            .args(["-u", "nobody", "--", "sha256sum", &image_s])
            .output()
            .expect("runuser")
    };

    let private = Mounted::start(&repo, &mnt);
    let denied = as_nobody();
    assert!(
        !denied.status.success(),
        "another user read the mount without --allow-other"
    );
    crate::util::sh("fusermount3", &["-u", &mnt.display().to_string()]);
    let (status, stderr) = private.wait_exit();
    assert!(
        status.success(),
        "fusermount3 -u: mount exited with {status}: {stderr}"
    );
    assert!(!is_mounted(&mnt), "still mounted after fusermount3 -u");

    let shared = Mounted::start_with(&repo, &mnt, &["--allow-other"]);
    let read = as_nobody();
    assert!(read.status.success(), "{}", crate::util::describe(&read));
    let sum = String::from_utf8_lossy(&read.stdout);
    assert!(sum.starts_with(&sha256_file(&disk)), "{sum}");
    let (status, stderr) = shared.signal("-INT");
    assert!(status.success(), "Ctrl-C: {stderr}");
    assert!(!is_mounted(&mnt), "still mounted after Ctrl-C");
}
