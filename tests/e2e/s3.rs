//! S3 repositories against real S3 servers: moto in server mode (enforces conditional writes)
//! and `rclone serve s3` (checks signatures, ignores conditional writes), both from the venv
//! `scripts/install-deps.sh` makes. Without the venv the tests skip with a message, except under
//! CI=true, where they fail.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use vmstash_repo::backend::conformance::check_backend;
use vmstash_repo::prune::{PruneLock, PRUNE_PURPOSE};
use vmstash_repo::{Error, Repository};
use vmstash_s3::{Credentials, S3Backend, S3Options, S3Url};
use vmstash_test_support::{FaultProxy, Faults, S3Server};

use crate::util::{
    describe, partitioned_image, random_bytes, sha256_file, sparse_image, stderr, unique, Repo,
    PASSWORD,
};

/// The credentials of the shared moto server (it takes any pair) for the binary's environment.
pub const MOTO_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
];

/// The shared moto server, or `None` (skip) when the venv is missing outside CI.
pub fn moto() -> Option<&'static S3Server> {
    S3Server::shared_moto().expect("start moto")
}

/// A new repository under a fresh prefix of the shared moto server.
pub fn s3_repo(server: &S3Server) -> Repo {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Repo {
        dir,
        path: PathBuf::from(server.url(&format!("repo-{}", unique()))),
    };
    repo.ok(&["init", "--chunk-size", "256KiB"]);
    repo
}

fn backend(server: &S3Server, endpoint: &str, prefix: &str) -> S3Backend {
    let url = S3Url::parse(&format!("s3:{endpoint}/{}/{prefix}", server.bucket())).expect("url");
    let (access_key_id, secret_access_key) = server.credentials();
    let options = S3Options {
        credentials: Some(Credentials {
            access_key_id,
            secret_access_key,
        }),
        ..S3Options::default()
    };
    S3Backend::new(&url, &options).expect("backend")
}

#[test]
fn s3_backend_keeps_the_backend_contract() {
    let Some(server) = moto() else { return };
    let b = backend(
        server,
        &server.endpoint(),
        &format!("contract-{}", unique()),
    );
    check_backend(&b).expect("moto");
    let Some(rclone) = S3Server::start_rclone("vmstash", "s3cret-key").expect("rclone") else {
        return;
    };
    let b = backend(&rclone, &rclone.endpoint(), "contract");
    check_backend(&b).expect("rclone serve s3 (no conditional writes)");
}

#[test]
fn round_trip_over_s3_backup_restore_mount_check() {
    let Some(server) = moto() else { return };
    let repo = s3_repo(server);
    let img = sparse_image(
        repo.dir.path(),
        "d.img",
        48 << 20,
        &[
            (0, random_bytes(61, 5 << 20)),
            (40 << 20, random_bytes(62, 1 << 20)),
        ],
    );
    repo.backup(&[&img]);
    let out = repo.restore("latest");
    assert_eq!(sha256_file(&out.join("d.raw")), sha256_file(&img));
    repo.ok(&["check", "--read-data"]);

    if !crate::util::have(
        &["sgdisk", "mkfs.ext4", "losetup", "mount", "fusermount3"],
        true,
    ) {
        return;
    }
    let src = repo.dir.path().join("src");
    std::fs::create_dir(&src).expect("src dir");
    let disk = partitioned_image(&src, 64);
    let name = disk
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .into_owned();
    repo.backup(&[&disk]);
    let mnt = repo.dir.path().join("mnt");
    let mounted = crate::mount::Mounted::start(&repo, &mnt);
    let fstab = mnt.join(format!("vms/{name}/latest/{name}/p1/etc/fstab"));
    let read = std::fs::read_to_string(&fstab);
    let (status, err) = mounted.stop();
    assert_eq!(
        read.expect("read /etc/fstab inside the partition through the mount"),
        "UUID=1234 / ext4 defaults 0 1\n"
    );
    assert!(status.success(), "mount exited with {status}: {err}");
}

/// Runs vmstash on the repository `prefix` of the moto bucket through `endpoint`.
fn through(
    endpoint: &str,
    server: &S3Server,
    prefix: &str,
    dir: &Path,
    args: &[&str],
) -> std::process::Output {
    let url = format!("s3:{endpoint}/{}/{prefix}", server.bucket());
    std::process::Command::new(crate::util::bin())
        .arg("-r")
        .arg(url)
        .args(args)
        .current_dir(dir)
        .env("VMSTASH_PASSWORD", PASSWORD)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .envs(MOTO_ENV)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run vmstash")
}

#[test]
fn backups_and_restores_survive_failing_requests() {
    let Some(server) = moto() else { return };
    let upstream = server
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let faults = Faults {
        every: 4,
        status_500: true,
        status_503: true,
        reset: true,
        reset_after_forward: true,
        delay: Some(std::time::Duration::from_millis(1500)),
        ..Faults::default()
    };
    let proxy = FaultProxy::start(upstream, faults).expect("proxy");
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = format!("faults-{}", unique());
    let run = |args: &[&str]| through(&proxy.endpoint(), server, &prefix, dir.path(), args);
    let init = run(&["init", "--chunk-size", "256KiB"]);
    assert!(init.status.success(), "{}", describe(&init));
    let img = sparse_image(
        dir.path(),
        "f.img",
        64 << 20,
        &[
            (0, random_bytes(71, 24 << 20)),
            (50 << 20, random_bytes(72, 2 << 20)),
        ],
    );
    let b = run(&["backup", "--disk", &img.display().to_string()]);
    assert!(b.status.success(), "{}", describe(&b));
    let target = dir.path().join("out");
    let r = run(&[
        "restore",
        "latest",
        "--target",
        &target.display().to_string(),
    ]);
    assert!(r.status.success(), "{}", describe(&r));
    assert_eq!(sha256_file(&target.join("f.raw")), sha256_file(&img));
    let c = run(&["check", "--read-data"]);
    assert!(c.status.success(), "{}", describe(&c));
    assert!(
        proxy.injected() >= 10,
        "only {} faults injected in {} requests",
        proxy.injected(),
        proxy.requests()
    );
    // Straight to the server: the repository is whole.
    let direct = through(
        &server.endpoint(),
        server,
        &prefix,
        dir.path(),
        &["check", "--read-data"],
    );
    assert!(direct.status.success(), "{}", describe(&direct));
}

#[test]
fn wrong_credentials_fail_at_once_with_a_clear_line_and_write_nothing() {
    let Some(rclone) = S3Server::start_rclone("vmstash", "right-secret").expect("rclone") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let url = rclone.url("repo");
    let run = |secret: &str, args: &[&str]| {
        std::process::Command::new(crate::util::bin())
            .arg("-r")
            .arg(&url)
            .args(args)
            .env("VMSTASH_PASSWORD", PASSWORD)
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .env("AWS_ACCESS_KEY_ID", "vmstash")
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run vmstash")
    };
    let started = std::time::Instant::now();
    let denied = run("wrong-secret", &["init"]);
    assert_eq!(denied.status.code(), Some(14), "{}", describe(&denied));
    let err = stderr(&denied);
    assert!(
        err.contains("vmstash-test") && err.contains("AWS_SECRET_ACCESS_KEY"),
        "{err}"
    );
    assert!(
        !err.contains("wrong-secret"),
        "the secret must never be printed: {err}"
    );
    assert!(started.elapsed().as_secs() < 10, "a 403 is not retried");

    let ok = run("right-secret", &["init"]);
    assert!(ok.status.success(), "{}", describe(&ok));
    let img = sparse_image(
        dir.path(),
        "w.img",
        8 << 20,
        &[(0, random_bytes(81, 1 << 20))],
    );
    let b = run(
        "wrong-secret",
        &["backup", "--disk", &img.display().to_string()],
    );
    assert_eq!(b.status.code(), Some(14), "{}", describe(&b));
    let snaps = run("right-secret", &["--json", "snapshots"]);
    assert!(snaps.status.success(), "{}", describe(&snaps));
    let listed: serde_json::Value = serde_json::from_slice(&snaps.stdout).expect("snapshots JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");

    // A profile in ~/.aws/credentials, chosen by AWS_PROFILE, as the AWS tools take it.
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".aws")).expect("mkdir");
    std::fs::write(
        home.join(".aws/credentials"),
        "[default]\naws_access_key_id = vmstash\naws_secret_access_key = wrong-secret\n\n[offsite]\naws_access_key_id = vmstash\naws_secret_access_key = right-secret\n",
    )
    .expect("credentials file");
    let by_profile = std::process::Command::new(crate::util::bin())
        .args(["-v", "-r", &url, "prune", "--keep-delete", "0"])
        .env("VMSTASH_PASSWORD", PASSWORD)
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .env("HOME", &home)
        .env("AWS_PROFILE", "offsite")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run vmstash");
    assert!(by_profile.status.success(), "{}", describe(&by_profile));
    // rclone ignores If-None-Match: the prune lock falls back to write-then-recheck, and -v says so.
    assert!(
        stderr(&by_profile).contains("does not enforce conditional writes"),
        "{}",
        describe(&by_profile)
    );
}

/// Two holders race for the prune lock on S3, ten times: exactly one wins each time, the other
/// fails naming it (threads of one process with distinct lock holders: a real race on the real
/// server, started together by a barrier).
fn prune_lock_race(server: &S3Server, endpoint: &str) {
    let prefix = format!("race-{}", unique());
    let b = Arc::new(backend(server, endpoint, &prefix));
    Repository::init_with(
        b.clone(),
        PASSWORD.as_bytes(),
        vmstash_repo::config::Config::new(
            vmstash_repo::config::ChunkSize::new(64 * 1024).expect("chunk"),
            3,
            "2026-12-03T00:00:00Z",
        )
        .expect("config"),
        vmstash_repo::testing::FAST_KDF,
    )
    .expect("init");
    for round in 0..10 {
        let barrier = Arc::new(Barrier::new(2));
        let results: Vec<Result<(), Error>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (b, barrier) = (b.clone(), barrier.clone());
                    s.spawn(move || {
                        let repo = Repository::open(b, PASSWORD.as_bytes())?;
                        let guard = repo.lock(PRUNE_PURPOSE, false)?;
                        barrier.wait();
                        let held = PruneLock::take(&repo, &guard);
                        // Hold it a moment, as a prune does, so the loser's checks see it.
                        std::thread::sleep(std::time::Duration::from_millis(300));
                        held.map(drop)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(Error::Locked { .. }))),
            "round {round}: the loser must fail as locked: {results:?}"
        );
    }
}

#[test]
fn exactly_one_of_two_racing_prunes_takes_the_lock_with_conditional_writes() {
    let Some(server) = moto() else { return };
    prune_lock_race(server, &server.endpoint());
}

#[test]
fn exactly_one_of_two_racing_prunes_takes_the_lock_without_conditional_writes() {
    let Some(rclone) = S3Server::start_rclone("vmstash", "s3cret-key").expect("rclone") else {
        return;
    };
    prune_lock_race(&rclone, &rclone.endpoint());
}

#[test]
fn copy_local_to_s3_to_local_restores_every_snapshot_and_a_second_copy_moves_nothing() {
    let Some(server) = moto() else { return };
    let first = Repo::init_with(&["--chunk-size", "256KiB"]);
    let mut images = Vec::new();
    let img = sparse_image(
        first.dir.path(),
        "c.img",
        32 << 20,
        &[(0, random_bytes(91, 6 << 20))],
    );
    for v in 0..3u64 {
        crate::util::write_at(&img, (8 + 4 * v) << 20, &random_bytes(92 + v, 1 << 20));
        first.backup(&[&img]);
        let copy = first.dir.path().join(format!("v{v}.img"));
        std::fs::copy(&img, &copy).expect("keep version");
        images.push(copy);
    }
    let s3 = s3_repo(server);
    let from = |r: &Repo| r.path.display().to_string();
    let copy_into = |dst: &Repo, src: &Repo| {
        let out = dst
            .cmd(&["--json", "copy", "--from-repo", &from(src)])
            .env("VMSTASH_FROM_PASSWORD", PASSWORD)
            .envs(MOTO_ENV)
            .output()
            .expect("copy");
        assert!(out.status.success(), "{}", describe(&out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str::<serde_json::Value>(text.lines().last().unwrap_or_default())
            .expect("copy JSON")
    };
    let to_s3 = copy_into(&s3, &first);
    assert_eq!(to_s3["copied"].as_array().map(Vec::len), Some(3), "{to_s3}");

    let last = Repo::init_with(&["--chunk-size", "256KiB"]);
    let to_last = copy_into(&last, &s3);
    assert_eq!(
        to_last["copied"].as_array().map(Vec::len),
        Some(3),
        "{to_last}"
    );
    let snaps = last.json(&["snapshots"]);
    let ids: Vec<String> = snaps
        .as_array()
        .expect("list")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    for (id, image) in ids.iter().zip(&images) {
        let out = last.restore(id);
        assert_eq!(
            sha256_file(&out.join("c.raw")),
            sha256_file(image),
            "snapshot {id}"
        );
    }
    for again in [copy_into(&s3, &first), copy_into(&last, &s3)] {
        assert_eq!(again["copied"].as_array().map(Vec::len), Some(0), "{again}");
        assert_eq!(
            again["already_present"].as_array().map(Vec::len),
            Some(3),
            "{again}"
        );
        assert_eq!(
            (again["bytes_read"].as_u64(), again["bytes_added"].as_u64()),
            (Some(0), Some(0))
        );
    }
}
