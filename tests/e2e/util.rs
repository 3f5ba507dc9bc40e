//! Test harness: the real `vmstash` binary, real images, real tools.
//!
//! Prerequisites (qemu-img, sgdisk, mkfs.ext4, losetup, root for loop
//! mounts) are installed by `scripts/install-deps.sh`. When `CI=true` a
//! missing one fails the test; elsewhere the test says why it is skipped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use sha2::{Digest, Sha256};

/// The password every test repository uses.
pub const PASSWORD: &str = "correct horse battery staple";

/// Path of the vmstash binary built beside this test binary.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VMSTASH_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let p = profile_dir.join("vmstash");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release -p vmstash` first",
        p.display()
    );
    p
}

/// True when every tool is on PATH (and we are root, if `root`); under
/// CI a missing prerequisite panics instead.
pub fn have(tools: &[&str], root: bool) -> bool {
    let missing: Vec<_> = tools.iter().filter(|t| which(t).is_none()).collect();
    let not_root = root && !rustix_is_root();
    if missing.is_empty() && !not_root {
        return true;
    }
    let why = format!(
        "missing tools {missing:?}{}",
        if not_root { ", not root" } else { "" }
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "prerequisite missing under CI: {why}"
    );
    eprintln!("SKIPPED: {why} (run scripts/install-deps.sh)");
    false
}

fn rustix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|d| d.join(tool))
            .find(|p| p.exists())
    })
}

/// A repository in a temporary directory, with the password set.
pub struct Repo {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// The repository path.
    pub path: PathBuf,
}

impl Repo {
    /// `vmstash init` into a fresh directory.
    pub fn init() -> Repo {
        Repo::init_with(&[])
    }

    /// `vmstash init` with extra arguments.
    pub fn init_with(args: &[&str]) -> Repo {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("repo");
        let repo = Repo { dir, path };
        let mut a = vec!["init"];
        a.extend_from_slice(args);
        repo.ok(&a);
        repo
    }

    /// A command on this repository, not yet run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("-r").arg(&self.path).args(args);
        c.env("VMSTASH_PASSWORD", PASSWORD)
            .env_remove("VMSTASH_REPOSITORY");
        if self.path.to_string_lossy().starts_with("s3:") {
            // A repository of the shared moto server (s3.rs), which takes any key pair.
            c.envs(crate::s3::MOTO_ENV);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Runs and returns the output, whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run vmstash")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "vmstash {args:?} failed:\n{}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs with --json and parses the last line of stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        let last = out.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| panic!("bad JSON {last:?}: {e}"))
    }

    /// Backs up `disks`; returns the summary.
    pub fn backup(&self, disks: &[&Path]) -> serde_json::Value {
        let mut a = vec!["backup".to_string()];
        for d in disks {
            a.push("--disk".into());
            a.push(d.display().to_string());
        }
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        self.json(&refs)
    }

    /// Spawns a backup without waiting.
    pub fn spawn_backup(&self, disk: &Path) -> Child {
        self.cmd(&["backup", "--disk", &disk.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn backup")
    }

    /// Restores `snapshot` into a new directory; returns it.
    pub fn restore(&self, snapshot: &str) -> PathBuf {
        let target = self.dir.path().join(format!("restore-{}", unique()));
        self.ok(&[
            "restore",
            snapshot,
            "--target",
            &target.display().to_string(),
        ]);
        target
    }

    /// Files of a kind, full paths.
    pub fn files(&self, dir: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.path.join(dir), &mut out);
        out.retain(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        });
        out.sort();
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// A process-unique number.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Exit code, stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A command's stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Replaces the bytes of a repository file (written read-only), to damage it in a test.
pub fn overwrite(p: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::write(p, bytes).expect("write");
}

/// Runs a tool and asserts it succeeded.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed:\n{}",
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// SHA-256 of a file, hex.
pub fn sha256_file(p: &Path) -> String {
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).expect("hash");
    hex::encode(h.finalize())
}

/// Deterministic pseudo-random bytes (xorshift), incompressible.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Asserts two raw images hold the same guest bytes (`qemu-img compare`: a hole equals zeros).
pub fn assert_raw_images_equal(a: &Path, b: &Path) {
    let (a, b) = (a.display().to_string(), b.display().to_string());
    sh(
        "qemu-img",
        &["compare", "-q", "-f", "raw", "-F", "raw", &a, &b],
    );
}

/// Writes `data` at `offset` of an existing file.
pub fn write_at(p: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .expect("open");
    f.write_all_at(data, offset).expect("write");
}

/// A sparse raw image of `size` bytes with data at the given offsets.
pub fn sparse_image(dir: &Path, name: &str, size: u64, pieces: &[(u64, Vec<u8>)]) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).expect("create image");
    f.set_len(size).expect("size image");
    for (off, data) in pieces {
        write_at(&p, *off, data);
    }
    p
}

/// A GPT disk with one ext4 partition holding text, random files, a
/// symlink, a hard link and a hole: built with sgdisk, mkfs.ext4 and a
/// real loop mount.
pub fn partitioned_image(dir: &Path, size_mib: u64) -> PathBuf {
    let img = dir.join(format!("disk{}.img", unique()));
    let f = std::fs::File::create(&img).expect("create");
    f.set_len(size_mib << 20).expect("size");
    drop(f);
    let img_s = img.display().to_string();
    sh("sgdisk", &["-o", "-n", "1:2048:0", "-t", "1:8300", &img_s]);
    // Containers often lack udev, so partition nodes (loopNp1) never
    // appear: attach the partition itself by offset and size instead.
    let (first, last) = partition_sectors(&img_s);
    let offset = (first * 512).to_string();
    let limit = ((last - first + 1) * 512).to_string();
    let loopdev = sh(
        "losetup",
        &[
            "--find",
            "--show",
            "--offset",
            &offset,
            "--sizelimit",
            &limit,
            &img_s,
        ],
    )
    .trim()
    .to_string();
    let part = loopdev.clone();
    let mnt = dir.join(format!("mnt{}", unique()));
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let mnt_s = mnt.display().to_string();
    let result = std::panic::catch_unwind(|| {
        sh("mkfs.ext4", &["-q", "-F", &part]);
        sh("mount", &[&part, &mnt_s]);
        fill_filesystem(&mnt);
        umount(&mnt_s);
    });
    let _ = Command::new("umount").arg(&mnt).output();
    sh("losetup", &["-d", &loopdev]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    img
}

/// Unmounts `mnt`, retrying while it is busy: another test thread may be
/// between fork and exec, holding a copy of a descriptor opened in it for
/// a moment (seen with 8 threads building images while others spawn tools).
fn umount(mnt: &str) {
    for _ in 0..100 {
        let out = Command::new("umount")
            .arg(mnt)
            .output()
            .expect("run umount");
        if out.status.success() {
            return;
        }
        if !String::from_utf8_lossy(&out.stderr).contains("busy") {
            panic!("umount {mnt} failed:\n{}", describe(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    sh("umount", &[mnt]);
}

/// First and last sector of partition 1, from `sgdisk -i 1`.
fn partition_sectors(img: &str) -> (u64, u64) {
    let info = sh("sgdisk", &["-i", "1", img]);
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {info}"))
    };
    (field("First sector:"), field("Last sector:"))
}

fn fill_filesystem(root: &Path) {
    let text: String = (0..20_000)
        .map(|i| format!("line {i}: the quick brown fox {}\n", i * 7919 % 1000))
        .collect();
    std::fs::create_dir_all(root.join("etc/deep/er")).expect("mkdir");
    std::fs::write(root.join("etc/fstab"), "UUID=1234 / ext4 defaults 0 1\n").expect("write");
    std::fs::write(root.join("etc/deep/er/log.txt"), text.as_bytes()).expect("write");
    let mut f = std::fs::File::create(root.join("random.bin")).expect("create");
    f.write_all(&random_bytes(42, 3 << 20)).expect("write");
    std::os::unix::fs::symlink("etc/fstab", root.join("fstab-link")).expect("symlink");
    std::fs::hard_link(root.join("etc/fstab"), root.join("fstab-hard")).expect("link");
}
