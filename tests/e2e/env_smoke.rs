//! The test environment itself, with plain OpenSSH and virsh (no vmstash):
//! the private sshd, libvirtd + QEMU under TCG, and the external snapshot /
//! block-commit sequence that vmstash's VM backup relies on. When these
//! fail, the hypervisor tests cannot mean anything.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::fixtures::libvirt::{qemu_log, virsh, virsh_output, TestVm, VmOptions};
use crate::fixtures::sshd::Sshd;
use crate::util::{describe, sh, sha256_file};

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Records how long each step took; printed at the end (`--nocapture`).
struct Timings(Vec<(&'static str, Duration)>, Instant);

impl Timings {
    fn new() -> Self {
        Timings(Vec::new(), Instant::now())
    }
    fn lap(&mut self, what: &'static str) {
        self.0.push((what, self.1.elapsed()));
        self.1 = Instant::now();
    }
    fn print(&self, test: &str) {
        for (what, d) in &self.0 {
            eprintln!("{test}: {what}: {:.3} s", d.as_secs_f64());
        }
    }
}

#[test]
fn fixtures_work() {
    if !Sshd::available() || !TestVm::available() {
        return;
    }
    let mut t = Timings::new();

    // --- sshd
    let sshd = Sshd::start();
    t.lap("Sshd::start (4 ssh-keygen + wait for banner)");
    assert_eq!(sshd.ssh_cmd("echo ok").trim(), "ok");
    t.lap("ssh echo ok");

    let out = sshd.ssh_output_with(&sshd.wrong_key, &sshd.known_hosts, "echo ok");
    assert_eq!(out.status.code(), Some(255), "{}", describe(&out));
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        describe(&out)
    );
    let out = sshd.ssh_output_with(&sshd.client_key, &sshd.wrong_known_hosts, "echo ok");
    assert_eq!(out.status.code(), Some(255), "{}", describe(&out));
    assert!(
        stderr(&out).contains("Host key verification failed"),
        "{}",
        describe(&out)
    );
    let hashed = sshd.hashed_known_hosts();
    let out = sshd.ssh_output_with(&sshd.client_key, &hashed, "echo ok");
    assert!(
        out.status.success(),
        "hashed known_hosts: {}",
        describe(&out)
    );
    assert!(sshd.host_key_fingerprint().starts_with("SHA256:"));
    assert!(sshd.host_key_pub.starts_with("ssh-ed25519 "));
    assert!(
        sshd.log().contains("Accepted publickey for root"),
        "{}",
        sshd.log()
    );
    t.lap("wrong key, changed host key, hashed known_hosts");

    // --- libvirt + QEMU
    let vm = TestVm::create("smoke");
    t.lap("TestVm::create (GPT+ext4 image, qcow2, raw, define, start)");
    assert_eq!(vm.state(), "running");
    let blk = vm.domblklist();
    let want = [
        ("vda".to_owned(), s(&vm.vda)),
        ("vdb".to_owned(), s(&vm.vdb)),
        ("hdc".to_owned(), "-".to_owned()),
    ];
    assert_eq!(blk, want);
    assert!(
        vm.xml.contains("<on_crash>destroy</on_crash>"),
        "{}",
        vm.xml
    );
    assert!(vm.dumpxml().contains("<domain type='qemu'"));
    // vda holds exactly the partitioned image (-U: QEMU holds the write lock).
    sh(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-U",
            "-f",
            "raw",
            "-F",
            "qcow2",
            &s(&vm.vda_source),
            &s(&vm.vda),
        ],
    );
    let vdb_bytes = std::fs::read(&vm.vdb).expect("read vdb");
    for (off, data) in &vm.vdb_pieces {
        let off = usize::try_from(*off).expect("offset");
        assert_eq!(&vdb_bytes[off..off + data.len()], data.as_slice());
    }
    t.lap("domblklist, dumpxml, qemu-img compare");

    // virsh on the hypervisor, over SSH: what vmstash does.
    let over_ssh = sshd.ssh_cmd(&format!("virsh -c qemu:///system domstate '{}'", vm.name));
    assert_eq!(over_ssh.trim(), "running");
    t.lap("virsh domstate over ssh");

    // A disk read over SFTP, and over scp.
    let vdb_sha = sha256_file(&vm.vdb);
    let got = sshd.dir.path().join("vdb.sftp");
    sshd.sftp_batch(&format!("get {} {}\n", s(&vm.vdb), s(&got)));
    assert_eq!(sha256_file(&got), vdb_sha);
    let got = sshd.dir.path().join("vdb.scp");
    sshd.scp_from(&s(&vm.vdb), &got);
    assert_eq!(sha256_file(&got), vdb_sha);
    t.lap("sftp get + scp of vdb (16 MiB sparse)");

    // --- the snapshot sequence vmstash uses
    let vda_sha = sha256_file(&vm.vda);
    let ova = vm.dir.join("vda.overlay.qcow2");
    let ovb = vm.dir.join("vdb.overlay.qcow2");
    virsh(&[
        "snapshot-create-as",
        &vm.name,
        "--disk-only",
        "--atomic",
        "--no-metadata",
        "--diskspec",
        &format!("vda,file={}", s(&ova)),
        "--diskspec",
        &format!("vdb,file={}", s(&ovb)),
    ]);
    t.lap("snapshot-create-as --disk-only (2 overlays)");
    let blk = vm.domblklist();
    assert_eq!(blk[0], ("vda".to_owned(), s(&ova)), "{blk:?}");
    assert_eq!(blk[1], ("vdb".to_owned(), s(&ovb)), "{blk:?}");
    assert_eq!(blk[2], ("hdc".to_owned(), "-".to_owned()), "{blk:?}");
    let info = sh("qemu-img", &["info", "-U", &s(&ova)]);
    assert!(
        info.contains(&format!("backing file: {}", s(&vm.vda))),
        "{info}"
    );
    // The base is stable and readable while the guest writes to the overlay.
    assert_eq!(sha256_file(&vm.vda), vda_sha);
    assert_eq!(sha256_file(&vm.vdb), vdb_sha);
    for disk in ["vda", "vdb"] {
        virsh(&[
            "blockcommit",
            &vm.name,
            disk,
            "--active",
            "--pivot",
            "--wait",
        ]);
    }
    t.lap("blockcommit --active --pivot --wait (vda, vdb)");
    vm.assert_on_original_disks();
    assert_eq!(vm.state(), "running");
    // libvirt leaves the overlays behind; deleting them is the caller's job.
    assert_eq!(vm.leftover_files(), vec![ova.clone(), ovb.clone()]);
    std::fs::remove_file(&ova).expect("rm overlay");
    std::fs::remove_file(&ovb).expect("rm overlay");
    assert_eq!(vm.leftover_files(), Vec::<std::path::PathBuf>::new());

    // --- quiesce without a guest agent fails, and changes nothing
    let out = virsh_output(&[
        "snapshot-create-as",
        &vm.name,
        "--disk-only",
        "--atomic",
        "--no-metadata",
        "--quiesce",
        "--diskspec",
        &format!("vda,file={}", s(&ova)),
        "--diskspec",
        &format!("vdb,file={}", s(&ovb)),
    ]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("QEMU guest agent is not configured"),
        "{}",
        describe(&out)
    );
    vm.assert_on_original_disks();
    assert!(vm.leftover_files().is_empty(), "{:?}", vm.leftover_files());
    t.lap("snapshot --quiesce refused");

    let dir = vm.dir.clone();
    let name = vm.name.clone();
    drop(vm);
    t.lap("TestVm drop (destroy, undefine, rm)");
    assert!(!dir.exists());
    let out = virsh_output(&["domstate", &name]);
    assert!(!out.status.success(), "{name} still defined");
    assert!(!qemu_log(&name).exists(), "QEMU log of {name} left behind");
    drop(sshd);
    t.print("fixtures_work");
}

#[test]
fn fixtures_vm_options() {
    if !TestVm::available() {
        return;
    }
    let mut t = Timings::new();
    let opts = VmOptions {
        vda_mib: 32,
        cdrom: false,
        guest_agent_channel: true,
        start: false,
    };
    let vm = TestVm::create_with("options", opts);
    t.lap("TestVm::create_with (not started)");
    assert_eq!(vm.state(), "shut off");
    assert_eq!(vm.domblklist().len(), 2, "{:?}", vm.domblklist());
    vm.start();
    t.lap("virsh start");
    assert_eq!(vm.state(), "running");
    // The agent channel exists but nothing answers on it.
    let ov = vm.dir.join("vda.overlay.qcow2");
    let out = virsh_output(&[
        "snapshot-create-as",
        &vm.name,
        "--disk-only",
        "--atomic",
        "--no-metadata",
        "--quiesce",
        "--diskspec",
        &format!("vda,file={}", s(&ov)),
        "--diskspec",
        "vdb,snapshot=no",
    ]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("QEMU guest agent is not connected"),
        "{}",
        describe(&out)
    );
    vm.assert_on_original_disks();
    assert!(vm.leftover_files().is_empty(), "{:?}", vm.leftover_files());
    t.lap("snapshot --quiesce refused");
    vm.destroy();
    t.lap("virsh destroy");
    assert_eq!(vm.state(), "shut off");
    drop(vm);
    t.lap("TestVm drop");
    t.print("fixtures_vm_options");
}
