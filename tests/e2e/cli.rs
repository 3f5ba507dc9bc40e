//! What a new user runs into first: repository addresses, mount points, restore targets, Ctrl-C,
//! closed pipes and the messages and exit codes of each (issue 11's list, each reproduced first).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::{bin, describe, have, random_bytes, sh, sparse_image, Repo, PASSWORD};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `-r sftp:user@host:/path` and `b2:…` used to create local directories named after them.
#[test]
fn restic_style_and_unknown_repository_kinds_create_no_local_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (location, code) in [
        ("b2:bucket:path", 2),
        ("rclone:remote:path", 2),
        ("backup:2024", 2),
    ] {
        let out = std::process::Command::new(bin())
            .current_dir(dir.path())
            .args(["-r", location, "init"])
            .env("VMSTASH_PASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(code),
            "{location}: {}",
            describe(&out)
        );
        assert!(
            stderr(&out).contains("sftp:"),
            "{location}: {}",
            describe(&out)
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
        assert!(left.is_empty(), "{location} left {left:?}");
    }
    // restic's SFTP form is an SFTP repository: it tries to connect (here to a host that does
    // not resolve) instead of creating ./sftp:….
    let out = std::process::Command::new(bin())
        .current_dir(dir.path())
        .args([
            "-r",
            "sftp:backup@no-such-host.invalid:/srv/vmstash",
            "init",
        ])
        .env("VMSTASH_PASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("no-such-host.invalid"),
        "{}",
        describe(&out)
    );
    assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
}

/// An S3 repository with no credentials anywhere (no AWS_* variable, no ~/.aws, no instance
/// metadata) is refused at once with exit 14 and a line naming what to set; nothing is created
/// locally.
#[test]
fn s3_without_credentials_says_what_to_set_and_exits_14() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("home");
    let mut cmd = std::process::Command::new(bin());
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(var);
        }
    }
    let started = Instant::now();
    let out = cmd
        .current_dir(dir.path())
        .args(["-r", "s3:https://s3.amazonaws.com/bucket", "init"])
        .env("VMSTASH_PASSWORD", PASSWORD)
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_DEFAULT_REGION", "eu-west-1")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(14), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no S3 credentials")
            && err.contains("AWS_ACCESS_KEY_ID")
            && err.contains("AWS_PROFILE"),
        "{}",
        describe(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "retried a missing credential for {:?}",
        started.elapsed()
    );
    assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
}

/// `-r` naming a file (the password file, say) is "not a repository", exit 10.
#[test]
fn a_file_given_as_the_repository_exits_10() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("password.txt");
    std::fs::write(&file, "secret\n").expect("write");
    let repo = Repo {
        path: file.clone(),
        dir,
    };
    let out = repo.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(10), "{}", describe(&out));
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "secret\n");
}

/// An OS error was printed twice: `… (os error 2): No such file or directory (os error 2)`.
#[test]
fn an_os_error_is_printed_once_and_an_empty_disk_is_refused() {
    let repo = Repo::init();
    let missing = repo.dir.path().join("absent.img");
    let out = repo.run(&["backup", "--disk", &missing.display().to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        stderr(&out).matches("os error 2").count(),
        1,
        "{}",
        describe(&out)
    );
    let empty = repo.dir.path().join("empty.img");
    std::fs::write(&empty, b"").expect("write");
    let out = repo.run(&["backup", "--disk", &empty.display().to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("empty (0 bytes)"),
        "{}",
        describe(&out)
    );
    let disk = sparse_image(
        repo.dir.path(),
        "d.img",
        1 << 20,
        &[(0, random_bytes(1, 4096))],
    );
    let out = repo.run(&[
        "backup",
        "--disk",
        &disk.display().to_string(),
        "--vm",
        "web1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = repo.run(&["init", "--chunk-size", "100KiB"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a value of the wrong form: {}",
        describe(&out)
    );
    let snaps = repo.json(&["snapshots"]);
    assert_eq!(snaps.as_array().map(Vec::len), Some(0));
}

/// `vmstash cat snapshot latest | head -3` panicked with "failed printing to stdout".
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let repo = Repo::init();
    let disk = sparse_image(
        repo.dir.path(),
        "d.img",
        1 << 20,
        &[(0, random_bytes(2, 4096))],
    );
    repo.backup(&[&disk]);
    let mut child = repo
        .cmd(&["cat", "snapshot", "latest"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Close the reading end at once, as `head` does once it has its lines.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert!(!stderr(&out).contains("panicked"), "{}", describe(&out));
    assert!(
        matches!(out.status.code(), Some(0 | 141)),
        "{}",
        describe(&out)
    );
}

/// A multi-disk restore wrote the first disk before finding that the second's image exists.
#[test]
fn a_restore_checks_every_target_before_writing_anything() {
    let repo = Repo::init();
    let one = sparse_image(
        repo.dir.path(),
        "one.img",
        4 << 20,
        &[(0, random_bytes(3, 1 << 20))],
    );
    let two = sparse_image(
        repo.dir.path(),
        "two.img",
        4 << 20,
        &[(0, random_bytes(4, 1 << 20))],
    );
    repo.backup(&[&one, &two]);
    let target = repo.dir.path().join("target");
    std::fs::create_dir(&target).expect("mkdir");
    std::fs::write(target.join("two.raw"), b"keep me").expect("write");
    let out = repo.run(&[
        "restore",
        "latest",
        "--target",
        &target.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stderr(&out).contains("two.raw"), "{}", describe(&out));
    assert!(
        !target.join("one.raw").exists(),
        "nothing is written when a target exists"
    );
    assert_eq!(
        std::fs::read(target.join("two.raw")).expect("read"),
        b"keep me"
    );
    let names: Vec<_> = std::fs::read_dir(&target).expect("list").collect();
    assert_eq!(names.len(), 1, "no partial files left: {names:?}");
}

/// Mounting over the password file hid it; two mounts stacked.
#[test]
fn mount_refuses_a_file_a_non_empty_directory_and_a_mount_point() {
    if !have(&["mount", "umount", "fusermount3"], true) {
        return;
    }
    let repo = Repo::init();
    let file = repo.dir.path().join("password.txt");
    std::fs::write(&file, "secret").expect("write");
    let full = repo.dir.path().join("full");
    std::fs::create_dir(&full).expect("mkdir");
    std::fs::write(full.join("keep"), "x").expect("write");
    let mounted = repo.dir.path().join("mounted");
    std::fs::create_dir(&mounted).expect("mkdir");
    let mounted_s = mounted.display().to_string();
    sh(
        "mount",
        &["-t", "tmpfs", "-o", "size=1m", "tmpfs", &mounted_s],
    );
    let result = std::panic::catch_unwind(|| {
        for (target, says) in [
            (&file, "not a directory"),
            (&full, "not empty"),
            (&mounted, "already a mount point"),
        ] {
            let out = refused_mount(&repo, target);
            assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
            assert!(stderr(&out).contains(says), "{}", describe(&out));
        }
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "secret");
        assert!(full.join("keep").exists());
    });
    sh("umount", &[&mounted_s]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// `vmstash mount TARGET`, which must refuse at once: a mount that comes up instead (the bug)
/// is unmounted after 10 s, so the test fails instead of hanging.
fn refused_mount(repo: &Repo, target: &Path) -> std::process::Output {
    let mut child = repo
        .cmd(&["mount", &target.display().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mount");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().expect("wait").is_none() {
        let _ = std::process::Command::new("fusermount3")
            .args(["-u", "-z", &target.display().to_string()])
            .status();
        let _ = child.kill();
    }
    child.wait_with_output().expect("mount output")
}

/// Ctrl-C left the progress bar mid-line and said nothing about what happened.
#[test]
fn an_interrupted_backup_says_what_it_kept_and_writes_no_snapshot() {
    let repo = Repo::init();
    let big = sparse_image(
        repo.dir.path(),
        "big.img",
        512 << 20,
        &[(0, random_bytes(5, 384 << 20))],
    );
    let mut child = repo.spawn_backup(&big);
    let deadline = Instant::now() + Duration::from_secs(60);
    while repo.files("data").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let out = child_output(&mut child);
    assert_eq!(out.0, Some(130), "{}", out.1);
    assert!(
        out.1.contains("interrupted") && out.1.contains("no snapshot"),
        "{}",
        out.1
    );
    let snaps = repo.json(&["snapshots"]);
    assert_eq!(snaps.as_array().map(Vec::len), Some(0));
    repo.ok(&["check", "--read-data"]);
    // The next backup reuses what the interrupted one stored, and completes.
    let summary = repo.backup(&[&big]);
    assert!(summary["new_chunks"].as_u64() < summary["chunks"].as_u64());
    assert_eq!(summary["disk_bytes"].as_u64(), Some(512 << 20));
}

/// The exit code and stderr of a spawned backup.
fn child_output(child: &mut std::process::Child) -> (Option<i32>, String) {
    let status = child.wait().expect("wait");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).expect("stderr");
    }
    (status.code(), err)
}
