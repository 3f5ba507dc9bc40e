//! vmstash over real SSH: host-key checks, identities, SFTP repositories,
//! and libvirt reached through `qemu+ssh://`.

use std::path::Path;

use crate::fixtures::libvirt::TestVm;
use crate::fixtures::sshd::Sshd;
use crate::util::{describe, random_bytes, sha256_file, sparse_image, Repo};

/// Whether qcow2 disks can be read over SFTP yet (vda of the test VM is
/// qcow2); until then the test backs up the raw disk only.
const QCOW2_OVER_SFTP: bool = true;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `qemu+ssh://root@127.0.0.1:PORT/system`
fn uri(sshd: &Sshd) -> String {
    format!("qemu+ssh://root@127.0.0.1:{}/system", sshd.port)
}

/// Global SSH options for vmstash: this identity and known_hosts file.
fn ssh_args(key: &Path, known_hosts: &Path) -> Vec<String> {
    vec![
        "--identity".into(),
        s(key),
        "--known-hosts".into(),
        s(known_hosts),
    ]
}

/// Runs vmstash with `args` (and no `-r` unless given), with a clean HOME
/// and no agent so only the given identity can log in.
fn vmstash(repo: &Repo, args: &[String]) -> std::process::Output {
    vmstash_command(repo, args).output().expect("run vmstash")
}

/// The command [`vmstash`] runs, to spawn instead.
fn vmstash_command(repo: &Repo, args: &[String]) -> std::process::Command {
    let mut cmd = std::process::Command::new(crate::util::bin());
    cmd.args(args)
        .env("VMSTASH_PASSWORD", crate::util::PASSWORD)
        .env_remove("VMSTASH_REPOSITORY")
        .stdin(std::process::Stdio::null())
        .env("HOME", repo.dir.path())
        .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
        .env_remove("SSH_AUTH_SOCK");
    cmd
}

/// Runs vmstash on the SFTP repository at `remote_dir` of `sshd`, with its identity and
/// known_hosts, from `local`'s home.
fn sftp_runner<'a>(
    sshd: &Sshd,
    local: &'a Repo,
    remote_dir: &Path,
) -> impl Fn(&[&str]) -> std::process::Output + 'a {
    let url = format!("sftp://root@127.0.0.1:{}{}", sshd.port, s(remote_dir));
    let ssh = ssh_args(&sshd.client_key, &sshd.known_hosts);
    move |extra: &[&str]| {
        let mut a = ssh.clone();
        a.extend(["-r".to_string(), url.clone()]);
        a.extend(extra.iter().map(|x| x.to_string()));
        vmstash(local, &a)
    }
}

fn vms_args(sshd: &Sshd, key: &Path, known_hosts: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = ssh_args(key, known_hosts);
    a.extend(["--json".into(), "vms".into(), "--connect".into(), uri(sshd)]);
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

#[test]
fn host_keys_and_identities_are_checked() {
    if !Sshd::available() || !TestVm::available() {
        return;
    }
    let sshd = Sshd::start();
    let repo = Repo::init();

    let ok = vmstash(
        &repo,
        &vms_args(&sshd, &sshd.client_key, &sshd.known_hosts, &[]),
    );
    assert!(ok.status.success(), "{}", describe(&ok));
    serde_json::from_slice::<serde_json::Value>(&ok.stdout).expect("vms JSON");

    let hashed = sshd.hashed_known_hosts();
    let h = vmstash(&repo, &vms_args(&sshd, &sshd.client_key, &hashed, &[]));
    assert!(h.status.success(), "hashed known_hosts: {}", describe(&h));

    let empty = repo.dir.path().join("known_hosts_new");
    std::fs::write(&empty, "").expect("write");
    let unknown = vmstash(&repo, &vms_args(&sshd, &sshd.client_key, &empty, &[]));
    assert_eq!(unknown.status.code(), Some(1), "{}", describe(&unknown));
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains(&sshd.host_key_fingerprint()),
        "must show the fingerprint: {err}"
    );
    assert!(
        err.contains("--accept-new-host-key"),
        "must say how to accept: {err}"
    );
    let accepted = vmstash(
        &repo,
        &vms_args(&sshd, &sshd.client_key, &empty, &["--accept-new-host-key"]),
    );
    assert!(accepted.status.success(), "{}", describe(&accepted));
    let learned = std::fs::read_to_string(&empty).expect("read");
    assert!(
        learned.contains(&format!("[127.0.0.1]:{}", sshd.port)),
        "not remembered: {learned}"
    );
    let again = vmstash(&repo, &vms_args(&sshd, &sshd.client_key, &empty, &[]));
    assert!(again.status.success(), "{}", describe(&again));

    let changed = vmstash(
        &repo,
        &vms_args(
            &sshd,
            &sshd.client_key,
            &sshd.wrong_known_hosts,
            &["--accept-new-host-key"],
        ),
    );
    assert_eq!(changed.status.code(), Some(1), "{}", describe(&changed));
    assert!(
        String::from_utf8_lossy(&changed.stderr)
            .to_lowercase()
            .contains("changed"),
        "a changed key must be refused loudly: {}",
        describe(&changed)
    );

    let wrong = vmstash(
        &repo,
        &vms_args(&sshd, &sshd.wrong_key, &sshd.known_hosts, &[]),
    );
    assert_eq!(wrong.status.code(), Some(1), "{}", describe(&wrong));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("root@127.0.0.1"),
        "{}",
        describe(&wrong)
    );
}

#[test]
fn sftp_repository_round_trip_with_local_metadata_cache() {
    if !Sshd::available() {
        return;
    }
    let sshd = Sshd::start();
    let local = Repo::init();
    let remote_dir = local.dir.path().join("remote-repo");
    let run = sftp_runner(&sshd, &local, &remote_dir);
    let init = run(&["init"]);
    assert!(init.status.success(), "{}", describe(&init));
    assert!(remote_dir.join("config").exists());

    let img = sparse_image(
        local.dir.path(),
        "d.img",
        32 << 20,
        &[(0, random_bytes(31, 6 << 20)), (20 << 20, b"tail".to_vec())],
    );
    let b = run(&["--json", "backup", "--disk", &s(&img)]);
    assert!(b.status.success(), "{}", describe(&b));
    let target = local.dir.path().join("out");
    let r = run(&["restore", "latest", "--target", &s(&target)]);
    assert!(r.status.success(), "{}", describe(&r));
    assert_eq!(sha256_file(&target.join("d.raw")), sha256_file(&img));
    let c = run(&["check", "--read-data"]);
    assert!(c.status.success(), "{}", describe(&c));

    let cache = local.dir.path().join("cache/vmstash");
    let cached: Vec<_> = walk(&cache);
    assert!(
        cached.iter().any(|p| s(p).contains("/snapshots/")),
        "snapshots not cached: {cached:?}"
    );
    assert!(
        cached.iter().any(|p| s(p).contains("/index/")),
        "index not cached: {cached:?}"
    );
    assert!(
        !cached.iter().any(|p| s(p).contains("/data/")),
        "packs must not be cached"
    );
}

#[test]
fn mount_reads_an_sftp_repository() {
    if !Sshd::available() || !crate::util::have(&["fusermount3"], false) {
        return;
    }
    let sshd = Sshd::start();
    let local = Repo::init();
    let remote_dir = local.dir.path().join("remote-repo");
    let url = format!("sftp://root@127.0.0.1:{}{}", sshd.port, s(&remote_dir));
    let args = |extra: &[&str]| {
        let mut a = ssh_args(&sshd.client_key, &sshd.known_hosts);
        a.extend(["-r".to_string(), url.clone()]);
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let init = vmstash(&local, &args(&["init"]));
    assert!(init.status.success(), "{}", describe(&init));
    let img = sparse_image(
        local.dir.path(),
        "web9.img",
        16 << 20,
        &[
            (0, random_bytes(41, 3 << 20)),
            (12 << 20, random_bytes(43, 1 << 20)),
        ],
    );
    let b = vmstash(&local, &args(&["backup", "--disk", &s(&img)]));
    assert!(b.status.success(), "{}", describe(&b));

    let mnt = local.dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let mut child = vmstash_command(&local, &args(&["mount", &s(&mnt)]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn vmstash mount");
    let image = mnt.join("vms/web9/latest/web9.raw");
    crate::mount::wait_for(std::time::Duration::from_secs(30), "the mount", || {
        image.is_file()
    });
    let same = sha256_file(&image) == sha256_file(&img);
    crate::util::sh("kill", &["-TERM", &child.id().to_string()]);
    let status = child.wait().expect("wait");
    assert!(
        same,
        "the image read through a mount of an SFTP repository differs"
    );
    assert!(status.success(), "vmstash mount exited with {status}");
    assert!(!crate::mount::is_mounted(&mnt));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn running_vm_backup_over_ssh_reads_disks_by_sftp() {
    if !Sshd::available() || !TestVm::available() {
        return;
    }
    let sshd = Sshd::start();
    let vm = TestVm::create("ssh");
    let repo = Repo::init();
    let mut a = ssh_args(&sshd.client_key, &sshd.known_hosts);
    a.extend([
        "-r".into(),
        s(&repo.path),
        "--json".into(),
        "backup".into(),
        "--connect".into(),
        uri(&sshd),
    ]);
    a.extend([
        "--vm".into(),
        vm.name.clone(),
        "--cbt".into(),
        "never".into(),
    ]);
    if !QCOW2_OVER_SFTP {
        a.extend(["--exclude-disk".into(), "vda".into()]);
    }
    let out = vmstash(&repo, &a);
    assert!(out.status.success(), "{}", describe(&out));
    let summary: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default(),
    )
    .expect("json");
    // Holes are found by the hypervisor's qemu-img map and never read.
    let read = summary["bytes_read"].as_u64().expect("bytes_read");
    assert!(
        read < summary["disk_bytes"].as_u64().expect("disk_bytes") / 2,
        "{summary}"
    );
    assert_eq!(vm.state(), "running");
    vm.assert_on_original_disks();
    assert!(
        vm.leftover_files().is_empty(),
        "leftovers: {:?}",
        vm.leftover_files()
    );
    let target = repo.restore("latest");
    assert_eq!(sha256_file(&target.join("vdb.raw")), sha256_file(&vm.vdb));
    if QCOW2_OVER_SFTP {
        crate::util::assert_raw_images_equal(&target.join("vda.raw"), &vm.vda_source);
    }
    let snaps = repo.json(&["snapshots"]);
    assert!(
        snaps[0]["tags"].to_string().contains("host:127.0.0.1"),
        "{snaps}"
    );
}

#[test]
fn restore_over_sftp_and_define_on_the_remote_host() {
    if !Sshd::available() || !TestVm::available() {
        return;
    }
    let sshd = Sshd::start();
    let vm = TestVm::create("rsftp");
    let repo = Repo::init();
    repo.ok(&[
        "backup",
        "--connect",
        crate::fixtures::libvirt::URI,
        "--vm",
        &vm.name,
    ]);
    let remote = vm.dir.join("remote-restore");
    let clone = format!("{}-sftpclone", vm.name);
    let mut a = ssh_args(&sshd.client_key, &sshd.known_hosts);
    a.extend([
        "-r".into(),
        s(&repo.path),
        "restore".into(),
        "latest".into(),
        "--target".into(),
    ]);
    a.push(format!("sftp://root@127.0.0.1:{}{}", sshd.port, s(&remote)));
    a.extend([
        "--format".into(),
        "qcow2".into(),
        "--define".into(),
        "--name".into(),
        clone.clone(),
    ]);
    let out = vmstash(&repo, &a);
    let result = std::panic::catch_unwind(|| {
        assert!(out.status.success(), "{}", describe(&out));
        crate::util::sh(
            "qemu-img",
            &["compare", "-q", &s(&remote.join("vdb.qcow2")), &s(&vm.vdb)],
        );
        crate::util::sh(
            "qemu-img",
            &[
                "compare",
                "-q",
                &s(&remote.join("vda.qcow2")),
                &s(&vm.vda_source),
            ],
        );
        assert!(remote.join("domain.xml").exists());
        let xml = crate::fixtures::libvirt::virsh(&["dumpxml", &clone]);
        assert!(
            xml.contains(&s(&remote.join("vda.qcow2"))) && xml.contains("type='qcow2'"),
            "{xml}"
        );
        let partials: Vec<_> = walk(&remote)
            .into_iter()
            .filter(|p| s(p).contains("partial"))
            .collect();
        assert!(partials.is_empty(), "{partials:?}");
    });
    let _ = crate::fixtures::libvirt::virsh_output(&["undefine", &clone]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// Prune over SFTP: the prune lock is created exclusively there too (a second prune, here a local
/// one holding it while stopped, is named), marks and deletions work, and the cached index
/// follows.
#[test]
fn prune_over_sftp_respects_the_prune_lock_and_frees_space() {
    if !Sshd::available() {
        return;
    }
    let sshd = Sshd::start();
    let local = Repo::init();
    let remote_dir = local.dir.path().join("remote-repo");
    let run = sftp_runner(&sshd, &local, &remote_dir);
    assert!(run(&["init"]).status.success());
    let img = sparse_image(
        local.dir.path(),
        "d.img",
        32 << 20,
        &[(0, random_bytes(33, 12 << 20))],
    );
    for v in 0..3u64 {
        crate::util::write_at(&img, v << 20, &random_bytes(40 + v, 2 << 20));
        let b = run(&["backup", "--disk", &s(&img)]);
        assert!(b.status.success(), "{}", describe(&b));
    }
    let f = run(&["forget", "--keep-last", "1"]);
    assert!(f.status.success(), "{}", describe(&f));

    // A prune of the same directory, stopped while it holds locks/prune.
    let direct = Repo {
        dir: tempfile::tempdir().expect("tempdir"),
        path: remote_dir.clone(),
    };
    let holder = crate::prune::stopped_holding_the_prune_lock(
        &direct,
        &["prune", "--keep-delete", "0", "--dry-run"],
    );
    let lock = remote_dir.join("locks/prune");
    let refused = run(&["prune", "--keep-delete", "0"]);
    crate::util::sh("kill", &["-CONT", &holder.id().to_string()]);
    let done = holder.wait_with_output().expect("wait");
    assert!(done.status.success());
    assert_eq!(refused.status.code(), Some(11), "{}", describe(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("for pruning"),
        "{}",
        describe(&refused)
    );

    let data = |d: &Path| walk(&d.join("data")).len();
    let before = data(&remote_dir);
    for _ in 0..2 {
        let p = run(&["prune", "--keep-delete", "0"]);
        assert!(p.status.success(), "{}", describe(&p));
    }
    assert!(data(&remote_dir) < before, "packs were deleted over SFTP");
    assert!(!lock.exists());
    let c = run(&["check", "--read-data"]);
    assert!(c.status.success(), "{}", describe(&c));
    let target = local.dir.path().join("out");
    let r = run(&["restore", "latest", "--target", &s(&target)]);
    assert!(r.status.success(), "{}", describe(&r));
    assert_eq!(sha256_file(&target.join("d.raw")), sha256_file(&img));
}
