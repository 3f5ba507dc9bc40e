//! `vmstash prune` on real repositories with real processes: the space it frees, a prune
//! SIGKILLed after each of its writes and deletes, a backup paused by SIGSTOP while forget and
//! prune run twice, backups and a mount running during a prune, two prunes at once.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::util::{describe, have, random_bytes, sh, sha256_file, sparse_image, write_at, Repo};

const IMAGE: u64 = 24 << 20;

/// Version `v` of a disk: 16 MiB of data, 2 MiB of it rewritten by each later version.
fn version(dir: &Path, v: u64) -> PathBuf {
    let img = sparse_image(dir, "disk.img", IMAGE, &[(0, random_bytes(7, 16 << 20))]);
    for w in 1..=v {
        write_at(
            &img,
            (w * (2 << 20)) % (16 << 20),
            &random_bytes(100 + w, 2 << 20),
        );
    }
    img
}

/// Backs up versions `0..n` of the disk (times a day apart); returns each version's hash.
fn history(repo: &Repo, n: u64) -> Vec<String> {
    history_from(repo, 0, n)
}

/// Backs up versions `from..to` of the disk; returns each version's hash.
fn history_from(repo: &Repo, from: u64, to: u64) -> Vec<String> {
    let mut hashes = Vec::new();
    for v in from..to {
        let img = version(repo.dir.path(), v);
        let time = format!("2026-01-{:02} 10:00:00", v + 1);
        repo.ok(&[
            "backup",
            "--disk",
            img.to_str().expect("utf8"),
            "--time",
            &time,
        ]);
        hashes.push(sha256_file(&img));
    }
    hashes
}

fn snapshot_ids(repo: &Repo) -> Vec<String> {
    repo.json(&["snapshots"])
        .as_array()
        .expect("list")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

/// Every snapshot restores to the hash of the version it was made from (oldest first).
fn assert_restores(repo: &Repo, hashes: &[String]) {
    assert_restores_disk(repo, "disk", hashes);
}

/// [`assert_restores`] for snapshots of a disk named `disk`.
fn assert_restores_disk(repo: &Repo, disk: &str, hashes: &[String]) {
    let ids = snapshot_ids(repo);
    assert_eq!(ids.len(), hashes.len());
    for (id, want) in ids.iter().zip(hashes) {
        let out = repo.restore(id);
        assert_eq!(
            &sha256_file(&out.join(format!("{disk}.raw"))),
            want,
            "snapshot {id}"
        );
        std::fs::remove_dir_all(out).expect("rm restore");
    }
}

/// Bytes of every file of the repository.
fn repo_bytes(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let m = e.metadata().expect("meta");
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

fn prune_json(repo: &Repo, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["prune", "--keep-delete", "0"];
    args.extend_from_slice(extra);
    repo.json(&args)
}

#[test]
fn pruning_twice_leaves_no_more_than_a_fresh_repository_of_the_kept_snapshots() {
    let repo = Repo::init();
    let hashes = history(&repo, 10);
    let forgot = repo.json(&["forget", "--keep-last", "2"]);
    assert_eq!(forgot["removed"], 8);
    let first = prune_json(&repo, &[]);
    assert_eq!(
        first["deleted"]["count"], 0,
        "the first run only marks: {first}"
    );
    assert!(
        first["removed"]["count"].as_u64().expect("n") > 0,
        "{first}"
    );
    let second = prune_json(&repo, &[]);
    assert!(
        second["deleted"]["count"].as_u64().expect("n") > 0,
        "{second}"
    );
    assert!(repo.files("marks").is_empty());
    repo.ok(&["check", "--read-data"]);
    assert_restores(&repo, &hashes[8..]);

    let fresh = Repo::init();
    for v in 8..10 {
        let img = version(fresh.dir.path(), v);
        fresh.ok(&["backup", "--disk", img.to_str().expect("utf8")]);
    }
    let (pruned, clean) = (repo_bytes(&repo.path), repo_bytes(&fresh.path));
    assert!(
        pruned * 10 <= clean * 11,
        "pruned repository {pruned} bytes, a fresh one of the same 2 snapshots {clean}"
    );
}

#[test]
fn forget_prune_and_dry_run_from_the_command_line() {
    let repo = Repo::init();
    let hashes = history(&repo, 4);
    let before: Vec<PathBuf> = repo.files("data");
    let dry = repo.json(&[
        "prune",
        "--dry-run",
        "--keep-delete",
        "0",
        "--instant-delete",
    ]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(repo.files("data"), before, "a dry run deletes nothing");
    let both = repo.json(&[
        "forget",
        "--keep-last",
        "1",
        "--prune",
        "--instant-delete",
        "--max-unused",
        "0%",
    ]);
    assert_eq!(both["forget"]["removed"], 3, "{both}");
    let deleted = both["prune"]["deleted"]["count"].as_u64().expect("n");
    assert!(deleted > 0, "{both}");
    assert!(repo.files("marks").is_empty());
    assert_eq!(both["prune"]["unused_after"], 0, "{both}");
    repo.ok(&["check", "--read-data"]);
    assert_restores(&repo, &hashes[3..]);
    for bad in [
        &["prune", "--max-unused", "150%"][..],
        &["prune", "--keep-delete", "soon"],
        &["forget", "--keep-last", "1", "--instant-delete"],
        &["--no-lock", "prune"],
    ] {
        let out = repo.run(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", describe(&out));
    }
}

/// A prune SIGKILLed by the test hook right after its `n`-th write or delete.
fn kill_after(repo: &Repo, n: usize) -> std::process::Output {
    repo.cmd(&["prune", "--keep-delete", "0"])
        .env("VMSTASH_TEST_KILL_AFTER_WRITES", n.to_string())
        .output()
        .expect("run prune")
}

#[test]
fn a_prune_killed_after_any_of_its_writes_leaves_a_repository_that_restores_and_converges() {
    let base = Repo::init();
    let mut hashes = history(&base, 8);
    // Marks of an earlier run, so that the killed runs also delete; then more backups, whose
    // index files the killed runs replace.
    base.ok(&["forget", "--keep-last", "5"]);
    base.ok(&["prune", "--keep-delete", "0"]);
    hashes.extend(history_from(&base, 8, 14));
    base.ok(&["forget", "--keep-last", "2"]);
    let kept = &hashes[12..];
    let mut points = 0;
    for n in 1.. {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo {
            path: dir.path().join("repo"),
            dir,
        };
        sh(
            "cp",
            &[
                "-a",
                base.path.to_str().expect("utf8"),
                repo.path.to_str().expect("utf8"),
            ],
        );
        let out = kill_after(&repo, n);
        if out.status.success() {
            break;
        }
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(9),
            "after {n} writes: {}",
            describe(&out)
        );
        points += 1;
        repo.ok(&["check", "--read-data"]);
        assert_restores(&repo, kept);
        prune_json(&repo, &[]);
        prune_json(&repo, &[]);
        let after = prune_json(&repo, &["--dry-run"]);
        let (used, unused) = (
            after["used_bytes"].as_u64().expect("used"),
            after["unused_bytes"].as_u64().expect("unused"),
        );
        assert!(
            unused * 95 <= used * 5,
            "killed after {n} writes: {unused} unused bytes beside {used} used after two more runs"
        );
        assert_eq!(after["waiting"]["count"], 0, "after {n}: {after}");
        repo.ok(&["check", "--read-data"]);
    }
    assert!(points >= 20, "only {points} kill points");
}

/// A prune (`args`) of `repo`, SIGSTOPped while it holds `locks/prune`. A run that ended before
/// the signal reached it (a small repository prunes in milliseconds) is started again.
pub fn stopped_holding_the_prune_lock(repo: &Repo, args: &[&str]) -> std::process::Child {
    let lock = repo.path.join("locks/prune");
    for _ in 0..20 {
        let mut child = repo
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn prune");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !lock.exists() && child.try_wait().expect("try_wait").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "no prune lock appeared"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        if child.try_wait().expect("try_wait").is_none() {
            signal(child.id(), "STOP");
            if lock.exists() {
                return child;
            }
            signal(child.id(), "CONT");
        }
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{}", describe(&out));
    }
    panic!("no prune could be stopped while it held locks/prune");
}

/// Sends a signal to a process.
fn signal(pid: u32, sig: &str) {
    sh("kill", &[&format!("-{sig}"), &pid.to_string()]);
}

fn pack_bytes(repo: &Repo) -> u64 {
    repo.files("data")
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

#[test]
fn a_backup_paused_across_forget_and_two_prunes_commits_and_restores() {
    let repo = Repo::init();
    // What the paused backup deduplicates against: two older snapshots of 32 MiB each, both
    // forgotten (one per round) while it is paused.
    let (a, b) = (random_bytes(61, 32 << 20), random_bytes(63, 32 << 20));
    for (name, data) in [("old1.img", &a), ("old2.img", &b)] {
        let img = sparse_image(repo.dir.path(), name, 64 << 20, &[(0, data.clone())]);
        repo.ok(&["backup", "--disk", img.to_str().expect("utf8")]);
    }
    let new = sparse_image(
        repo.dir.path(),
        "new.img",
        160 << 20,
        &[
            (0, a),
            (32 << 20, b),
            (64 << 20, random_bytes(62, 96 << 20)),
        ],
    );
    let start = pack_bytes(&repo);
    let child = repo
        .cmd(&["backup", "--disk", new.to_str().expect("utf8")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while pack_bytes(&repo) < start + (32 << 20) {
        assert!(std::time::Instant::now() < deadline, "no packs appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    signal(child.id(), "STOP");
    for old in ["old1", "old2"] {
        let snaps = repo.json(&["snapshots", "--vm", old]);
        let id = snaps[0]["id"].as_str().expect("id").to_string();
        repo.ok(&["forget", &id]);
        prune_json(&repo, &[]);
    }
    let held = prune_json(&repo, &["--dry-run"]);
    assert!(
        held["waiting"]["count"].as_u64().expect("n") > 0,
        "the paused backup's lock keeps marked packs: {held}"
    );
    signal(child.id(), "CONT");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", describe(&out));
    repo.ok(&["check", "--read-data"]);
    let hash = sha256_file(&new);
    assert_restores_disk(&repo, "new", std::slice::from_ref(&hash));
    prune_json(&repo, &[]);
    prune_json(&repo, &[]);
    repo.ok(&["check", "--read-data"]);
    assert_restores_disk(&repo, "new", &[hash]);
}

#[test]
fn a_second_prune_names_the_first_and_runs_once_it_is_gone() {
    let repo = Repo::init();
    history(&repo, 3);
    repo.ok(&["forget", "--keep-last", "1"]);
    let first = stopped_holding_the_prune_lock(&repo, &["prune", "--keep-delete", "0"]);
    let lock = repo.path.join("locks/prune");
    let second = repo.run(&["prune", "--keep-delete", "0"]);
    signal(first.id(), "CONT");
    assert_eq!(second.status.code(), Some(11), "{}", describe(&second));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("for pruning") && err.contains(&format!("pid {}", first.id())),
        "{err}"
    );
    // A backup runs while the first prune holds its lock.
    let img = version(repo.dir.path(), 5);
    signal(first.id(), "STOP");
    repo.ok(&["backup", "--disk", img.to_str().expect("utf8")]);
    signal(first.id(), "CONT");
    let out = first.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!lock.exists());
    repo.ok(&["prune", "--keep-delete", "0"]);
    repo.ok(&["check", "--read-data"]);
}

#[test]
fn backups_and_a_mount_keep_working_while_prunes_run() {
    if !have(&["fusermount3"], false) {
        return;
    }
    let repo = Repo::init();
    let hashes = history(&repo, 6);
    let newest = snapshot_ids(&repo).pop().expect("a snapshot");
    let mnt = repo.dir.path().join("mnt");
    let mounted = crate::mount::Mounted::start(&repo, &mnt);
    let images: Vec<PathBuf> = (0..2)
        .map(|i| {
            sparse_image(
                repo.dir.path(),
                &format!("b{i}.img"),
                32 << 20,
                &[(0, random_bytes(70 + i, 24 << 20))],
            )
        })
        .collect();
    let backups: Vec<_> = images
        .iter()
        .map(|img| {
            let path = repo.path.clone();
            let img = img.clone();
            std::thread::spawn(move || {
                let r = Repo {
                    dir: tempfile::tempdir().expect("tempdir"),
                    path,
                };
                for round in 0..4u64 {
                    write_at(&img, round << 20, &random_bytes(90 + round, 1 << 20));
                    r.ok(&["backup", "--disk", img.to_str().expect("utf8")]);
                }
            })
        })
        .collect();
    // The mount reads the newest history snapshot (kept by every forget) meanwhile.
    let reader = {
        let disk = mnt.join(format!("snapshots/{}/disk.raw", &newest[..8]));
        std::thread::spawn(move || (0..4).map(|_| sha256_file(&disk)).collect::<Vec<_>>())
    };
    for _ in 0..3 {
        repo.ok(&["forget", "--keep-last", "1", "--vm", "disk"]);
        repo.ok(&["prune", "--keep-delete", "0", "--max-unused", "0%"]);
    }
    for b in backups {
        b.join().expect("a backup failed");
    }
    for h in reader.join().expect("the mount's reads failed") {
        assert_eq!(h, hashes[5], "the mount read the newest snapshot");
    }
    drop(mounted);
    repo.ok(&["prune", "--keep-delete", "0"]);
    repo.ok(&["prune", "--keep-delete", "0"]);
    repo.ok(&["check", "--read-data"]);
    assert_eq!(snapshot_ids(&repo).len(), 1 + 2 * 4);
    for img in &images {
        let name = img.file_stem().expect("stem").to_str().expect("utf8");
        let out = repo.dir.path().join(format!("r-{name}"));
        repo.ok(&[
            "restore",
            "latest",
            "--vm",
            name,
            "--target",
            out.to_str().expect("utf8"),
        ]);
        assert_eq!(
            sha256_file(&out.join(format!("{name}.raw"))),
            sha256_file(img)
        );
    }
}

/// A small ext4 filesystem on a loop device, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl SmallFs {
    fn new(mib: u64) -> SmallFs {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(mib << 20))
            .expect("image");
        let img_s = img.to_str().expect("utf8");
        sh("mkfs.ext4", &["-q", "-F", "-m", "0", img_s]);
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        sh("mount", &["-o", "loop", img_s, mnt.to_str().expect("utf8")]);
        SmallFs { dir, mnt }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
        let _ = &self.dir;
    }
}

#[test]
fn after_a_backup_filled_the_disk_a_prune_makes_room_for_a_smaller_one() {
    if !have(&["mkfs.ext4", "mount", "umount"], true) {
        return;
    }
    let fs = SmallFs::new(64);
    let repo = Repo {
        dir: tempfile::tempdir().expect("tempdir"),
        path: fs.mnt.join("repo"),
    };
    repo.ok(&["init"]);
    let big = sparse_image(
        repo.dir.path(),
        "big.img",
        128 << 20,
        &[(0, random_bytes(81, 96 << 20))],
    );
    let out = repo.run(&["backup", "--disk", big.to_str().expect("utf8")]);
    assert!(
        !out.status.success(),
        "96 MiB fit in 64: {}",
        describe(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("no space left"), "{}", describe(&out));
    assert!(repo.files("data").len() > 1, "the failed backup left packs");

    let pruned = repo.json(&["prune", "--instant-delete"]);
    assert!(
        pruned["deleted"]["count"].as_u64().expect("n") > 0,
        "the failed backup's packs go: {pruned}"
    );
    let small = sparse_image(
        repo.dir.path(),
        "small.img",
        32 << 20,
        &[(0, random_bytes(82, 16 << 20))],
    );
    repo.ok(&["backup", "--disk", small.to_str().expect("utf8")]);
    repo.ok(&["check", "--read-data"]);
    let out = repo.restore("latest");
    assert_eq!(sha256_file(&out.join("small.raw")), sha256_file(&small));
}
