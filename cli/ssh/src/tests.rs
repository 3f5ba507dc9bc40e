//! End-to-end checks against a real OpenSSH server started for each test.
//!
//! Each test starts its own `sshd` on 127.0.0.1 and a free port ([`vmstash_test_support::Sshd`]:
//! fresh host and client keys, login by key only) and kills it when done. Without
//! `/usr/sbin/sshd` the tests skip with a message, unless `CI=true`, where they fail: CI must
//! install openssh-server (scripts/install-deps.sh).
//!
//! `sftp_throughput` is ignored by default; run it with
//! `cargo test --release -p vmstash-ssh sftp_throughput -- --ignored --nocapture` to compare
//! vmstash with OpenSSH's `sftp` client on loopback.

use std::error::Error;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use vmstash_test_support::{keygen, run, Sshd};

use super::*;

type TestResult = Result<(), Box<dyn Error>>;

/// Size of the sparse test image.
const IMAGE_SIZE: u64 = 1 << 30;
/// Buffer size of the whole-image reads (what a backup thread would use).
const READ_BUFFER: usize = 4 << 20;
/// [`READ_BUFFER`] as a file offset increment.
const READ_BUFFER_LEN: u64 = 4 << 20;

/// How these tests reach the fixture's server: as its user, with its client key, a
/// known_hosts file that starts absent (`known_hosts` in its directory) and an empty SSH config.
trait Client {
    /// The target for this server.
    fn target(&self) -> SshTarget;
    /// Options with the client key and a known_hosts file in the temporary directory.
    fn options(&self, accept_new: bool) -> SshOptions;
    /// Connects, learning the host key.
    fn connect(&self) -> Result<SshSession, Box<dyn Error>>;
}

impl Client for Sshd {
    fn target(&self) -> SshTarget {
        SshTarget {
            user: Some(self.user.clone()),
            host: "127.0.0.1".to_owned(),
            port: Some(self.port),
        }
    }

    fn options(&self, accept_new: bool) -> SshOptions {
        SshOptions {
            identity: Some(self.client_key.clone()),
            known_hosts: Some(self.path("known_hosts")),
            accept_new_host_key: accept_new,
            ssh_config: Some(self.path("no_ssh_config")),
        }
    }

    fn connect(&self) -> Result<SshSession, Box<dyn Error>> {
        std::fs::write(self.path("no_ssh_config"), "")?;
        Ok(SshSession::connect(&self.target(), &self.options(true))?)
    }
}

/// Creates a sparse file of `size` bytes with pseudo-random data in a few places, including
/// both ends and an odd, unaligned spot.
fn make_sparse_image(path: &Path, size: u64) -> TestResult {
    let file = File::create(path)?;
    file.set_len(size)?;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect()
    };
    let spots = [
        (0, 3 << 20),
        ((1 << 20) * 300 + 12_345, 777_777),
        (size / 2 - 1, 65_537),
        (size - (5 << 20) - 3, 5 << 20),
    ];
    for (offset, len) in spots {
        file.write_all_at(&noise(len), offset)?;
    }
    Ok(())
}

/// SHA-256 of a local file.
fn local_sha256(path: &Path) -> Result<Vec<u8>, Box<dyn Error>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().to_vec());
        }
        hasher.update(buf.get(..n).ok_or("short buffer")?);
    }
}

/// SHA-256 of a remote file read with `read_at` in [`READ_BUFFER`] pieces.
fn remote_sha256(file: &SftpFile) -> Result<Vec<u8>, Box<dyn Error>> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BUFFER];
    let mut offset = 0u64;
    while offset < file.size() {
        let len = usize::try_from((file.size() - offset).min(u64::try_from(READ_BUFFER)?))?;
        let piece = buf.get_mut(..len).ok_or("short buffer")?;
        file.read_at(piece, offset)?;
        hasher.update(&*piece);
        offset += u64::try_from(len)?;
    }
    Ok(hasher.finalize().to_vec())
}

#[test]
fn unknown_host_key_is_refused_then_learned_with_accept_new() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    std::fs::write(sshd.path("no_ssh_config"), "")?;
    let err = SshSession::connect(&sshd.target(), &sshd.options(false))
        .err()
        .ok_or("an unknown host key was accepted")?;
    let message = err.to_string();
    assert!(matches!(err, SshError::HostKeyUnknown { .. }), "{message}");
    assert!(message.contains(&sshd.host_key_fingerprint()?), "{message}");
    assert!(message.contains("ssh-ed25519"), "{message}");
    assert!(message.contains("--accept-new-host-key"), "{message}");
    assert!(
        !sshd.path("known_hosts").exists(),
        "nothing is recorded when refusing"
    );

    let session = SshSession::connect(&sshd.target(), &sshd.options(true))?;
    let known_hosts = std::fs::read_to_string(sshd.path("known_hosts"))?;
    let expected_start = format!("[127.0.0.1]:{} ssh-ed25519 ", sshd.port);
    assert!(known_hosts.starts_with(&expected_start), "{known_hosts}");
    drop(session);

    // Known now: no acceptance needed, and nothing appended again.
    SshSession::connect(&sshd.target(), &sshd.options(false))?;
    assert_eq!(
        std::fs::read_to_string(sshd.path("known_hosts"))?,
        known_hosts
    );
    Ok(())
}

#[test]
fn exec_returns_output_and_status_from_several_threads() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    let session = sshd.connect()?;
    assert_eq!(
        session.describe(),
        format!("{}@127.0.0.1:{}", sshd.user, sshd.port)
    );
    let output = session.exec("printf out; printf err >&2; exit 3")?;
    assert_eq!(output.status, 3);
    assert_eq!(output.stdout, b"out");
    assert_eq!(output.stderr, b"err");

    let threads: Vec<_> = (0..4)
        .map(|i| {
            let session = session.clone();
            std::thread::spawn(move || session.exec(&format!("echo {i}")))
        })
        .collect();
    for (i, thread) in threads.into_iter().enumerate() {
        let output = thread.join().map_err(|_| "exec thread panicked")??;
        assert_eq!(output.status, 0);
        assert_eq!(output.stdout, format!("{i}\n").into_bytes());
    }
    Ok(())
}

#[test]
fn changed_host_key_is_refused_even_with_accept_new() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    std::fs::write(sshd.path("no_ssh_config"), "")?;
    // Record another ed25519 key for the server's name, hashed by OpenSSH itself.
    let known_hosts = sshd.path("known_hosts");
    std::fs::copy(&sshd.wrong_known_hosts, &known_hosts)?;
    run(
        "ssh-keygen",
        &["-H", "-f", known_hosts.to_str().ok_or("not UTF-8")?],
    )?;
    let hashed = std::fs::read_to_string(&known_hosts)?;
    assert!(hashed.starts_with("|1|"), "{hashed}");

    let err = SshSession::connect(&sshd.target(), &sshd.options(true))
        .err()
        .ok_or("a changed host key was accepted")?;
    let message = err.to_string();
    assert!(
        matches!(err, SshError::HostKeyChanged { line: 1, .. }),
        "{message}"
    );
    assert!(message.contains("HAS CHANGED"), "{message}");
    assert!(message.contains(&sshd.host_key_fingerprint()?), "{message}");
    assert_eq!(
        std::fs::read_to_string(&known_hosts)?,
        hashed,
        "file untouched"
    );
    Ok(())
}

#[test]
fn hashed_known_host_entry_is_accepted() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    let host_key = std::fs::read_to_string(sshd.path("host_ed25519.pub"))?;
    let line = format!("[127.0.0.1]:{} {host_key}", sshd.port);
    std::fs::write(sshd.path("known_hosts"), line)?;
    let known_hosts = sshd.path("known_hosts");
    run(
        "ssh-keygen",
        &["-H", "-f", known_hosts.to_str().ok_or("not UTF-8")?],
    )?;
    std::fs::write(sshd.path("no_ssh_config"), "")?;
    SshSession::connect(&sshd.target(), &sshd.options(false))?;
    Ok(())
}

#[test]
fn wrong_identity_is_refused_naming_the_keys_tried() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    sshd.connect()?; // learn the host key
    let wrong = sshd.wrong_key.clone();
    let options = SshOptions {
        identity: Some(wrong.clone()),
        ..sshd.options(false)
    };
    let err = SshSession::connect(&sshd.target(), &options)
        .err()
        .ok_or("a key missing from authorized_keys was accepted")?;
    let message = err.to_string();
    assert!(matches!(err, SshError::Auth { .. }), "{message}");
    let who = format!("{}@127.0.0.1:{}", sshd.user, sshd.port);
    assert!(message.contains(&who), "{message}");
    assert!(message.contains(&wrong.display().to_string()), "{message}");
    Ok(())
}

#[test]
fn passphrase_protected_identity_points_to_ssh_agent() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    sshd.connect()?;
    let protected = sshd.path("protected_key");
    keygen(&protected, "correct horse battery staple", "")?;
    let options = SshOptions {
        identity: Some(protected),
        ..sshd.options(false)
    };
    let err = SshSession::connect(&sshd.target(), &options)
        .err()
        .ok_or("a passphrase-protected key was used without its passphrase")?;
    let message = err.to_string();
    assert!(matches!(err, SshError::Identity { .. }), "{message}");
    assert!(message.contains("ssh-add"), "{message}");
    Ok(())
}

#[test]
fn unreadable_identity_is_an_error() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    sshd.connect()?;
    let options = SshOptions {
        identity: Some(sshd.path("no_such_key")),
        ..sshd.options(false)
    };
    let err = SshSession::connect(&sshd.target(), &options)
        .err()
        .ok_or("a missing identity was ignored")?;
    assert!(matches!(err, SshError::Io { .. }), "{err}");
    assert!(err.to_string().contains("no_such_key"), "{err}");
    Ok(())
}

#[test]
fn ssh_config_alias_supplies_host_port_and_key() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    sshd.connect()?;
    let config = format!(
        "Host kvm-test\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n",
        sshd.port,
        sshd.user,
        sshd.client_key.display()
    );
    std::fs::write(sshd.path("ssh_config"), config)?;
    let target = SshTarget {
        user: None,
        host: "kvm-test".to_owned(),
        port: None,
    };
    let options = SshOptions {
        identity: None,
        ssh_config: Some(sshd.path("ssh_config")),
        ..sshd.options(false)
    };
    let session = SshSession::connect(&target, &options)?;
    assert_eq!(session.exec("true")?.status, 0);
    Ok(())
}

#[test]
fn sftp_reads_a_sparse_1_gib_image_exactly() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    let image = sshd.path("disk.img");
    make_sparse_image(&image, IMAGE_SIZE)?;
    let image_str = image.to_str().ok_or("not UTF-8")?;
    let sftp = sshd.connect()?.sftp()?;
    let file = sftp.open(image_str)?;
    assert_eq!(file.size(), IMAGE_SIZE);
    assert_eq!(remote_sha256(&file)?, local_sha256(&image)?);

    // Unaligned pieces crossing request boundaries, from two threads at once.
    let local = File::open(&image)?;
    std::thread::scope(|scope| -> TestResult {
        let reader = scope.spawn(|| -> Result<(), SshError> {
            let mut buf = vec![0u8; 3 << 20];
            file.read_at(&mut buf, 12_345)
        });
        for (offset, len) in [
            (1u64, 1usize),
            ((1 << 20) * 300, 1_000_001),
            (IMAGE_SIZE - 7, 7),
        ] {
            let mut remote = vec![0u8; len];
            file.read_at(&mut remote, offset)?;
            let mut expected = vec![0u8; len];
            local.read_exact_at(&mut expected, offset)?;
            assert!(remote == expected, "{len} bytes at {offset} differ");
        }
        reader.join().map_err(|_| "reader panicked")??;
        Ok(())
    })?;

    // Past the end: an error naming the path, not a short read.
    let mut buf = [0u8; 10];
    let err = file
        .read_at(&mut buf, IMAGE_SIZE - 5)
        .err()
        .ok_or("a read past the end succeeded")?;
    assert!(
        matches!(
            &err,
            SshError::Sftp {
                failure: SftpFailure::UnexpectedEof { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("disk.img"), "{err}");

    Ok(())
}

#[test]
fn sftp_file_operations() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    let sftp = sshd.connect()?.sftp()?;
    let root = sshd.dir.path().to_str().ok_or("not UTF-8")?.to_owned();
    let dir = format!("{root}/repo/data/00");
    sftp.mkdir_all(&dir)?;
    sftp.mkdir_all(&dir)?; // existing: fine
    assert!(sftp.metadata(&dir)?.is_dir);

    // A file larger than one request, written in pieces.
    let data: Vec<u8> = (0..1_000_003u32)
        .map(|i| (i % 251).to_le_bytes()[0])
        .collect();
    let tmp = format!("{dir}/pack.tmp");
    let mut writer = sftp.create(&tmp)?;
    let (first, second) = data.split_at(300_000);
    writer.write_all(first)?;
    writer.write_all(second)?;
    writer.fsync()?;
    writer.close()?;
    assert!(sftp.has_fsync());
    let metadata = sftp.metadata(&tmp)?;
    assert!(metadata.is_file && !metadata.is_dir);
    assert_eq!(metadata.size, 1_000_003);

    // posix-rename replaces an existing target.
    let target = format!("{dir}/pack");
    sftp.write(&target, b"old")?;
    sftp.rename(&tmp, &target)?;
    assert_eq!(sftp.read(&target)?, data);
    assert!(sftp.metadata(&tmp).err().is_some_and(|e| e.is_not_found()));

    sftp.write(&format!("{dir}/small"), b"hello")?;
    assert_eq!(sftp.read(&format!("{dir}/small"))?, b"hello");
    sftp.write(&format!("{dir}/empty"), b"")?;
    assert!(sftp.read(&format!("{dir}/empty"))?.is_empty());

    let mut names: Vec<String> = sftp.read_dir(&dir)?.into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(names, ["empty", "pack", "small"]);

    sftp.remove(&format!("{dir}/small"))?;
    let err = sftp
        .read(&format!("{dir}/small"))
        .err()
        .ok_or("removed file read")?;
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains("small"), "{err}");
    assert!(sftp
        .open(&format!("{root}/nope"))
        .err()
        .is_some_and(|e| e.is_not_found()));
    Ok(())
}

/// Reads all of `file` with `threads` threads, each reading its share in [`READ_BUFFER`] calls.
fn timed_read(file: &SftpFile, threads: u64) -> Result<Duration, Box<dyn Error>> {
    let share = file.size() / threads;
    let start = Instant::now();
    std::thread::scope(|scope| -> TestResult {
        let readers: Vec<_> = (0..threads)
            .map(|i| {
                scope.spawn(move || -> Result<(), SshError> {
                    let mut buf = vec![0u8; READ_BUFFER];
                    let mut offset = i * share;
                    while offset < (i + 1) * share {
                        file.read_at(&mut buf, offset)?;
                        offset += READ_BUFFER_LEN;
                    }
                    Ok(())
                })
            })
            .collect();
        for reader in readers {
            reader.join().map_err(|_| "reader panicked")??;
        }
        Ok(())
    })?;
    Ok(start.elapsed())
}

/// Runs OpenSSH's `sftp` with the batch `commands` against `sshd`; returns the time taken.
fn timed_openssh_sftp(sshd: &Sshd, commands: &str) -> Result<Duration, Box<dyn Error>> {
    let key = sshd.client_key.display().to_string();
    let port = sshd.port.to_string();
    let destination = format!("{}@127.0.0.1", sshd.user);
    let known_hosts = format!("UserKnownHostsFile={}", sshd.path("known_hosts").display());
    let cipher = "aes128-gcm@openssh.com";
    let args = [
        "-q",
        "-i",
        &key,
        "-o",
        &known_hosts,
        "-o",
        "BatchMode=yes",
        "-P",
        &port,
        "-c",
        cipher,
        "-b",
        "-",
        &destination,
    ];
    let start = Instant::now();
    let mut child = Command::new("sftp")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(commands.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("sftp failed: {status}").into());
    }
    Ok(start.elapsed())
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn sftp_throughput() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    let image = sshd.path("disk.img");
    make_sparse_image(&image, IMAGE_SIZE)?;
    let image_str = image.to_str().ok_or("not UTF-8")?;
    let file = sshd.connect()?.sftp()?.open(image_str)?;
    let rounds: usize = std::env::var("VMSTASH_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let mib_per_s = |elapsed: Duration| f64::from(1024u32) / elapsed.as_secs_f64();
    let (mut best_one, mut best_two, mut best_openssh) = (0f64, 0f64, 0f64);
    println!("1 GiB sparse file over loopback, aes128-gcm@openssh.com, MiB/s:");
    for round in 1..=rounds {
        let one = mib_per_s(timed_read(&file, 1)?);
        let two = mib_per_s(timed_read(&file, 2)?);
        // OpenSSH's time without its connection setup, measured separately.
        let setup = timed_openssh_sftp(&sshd, "quit\n")?;
        let get = timed_openssh_sftp(&sshd, &format!("get {image_str} /dev/null\n"))?;
        let openssh = mib_per_s(get.saturating_sub(setup));
        println!(
            "  round {round}: vmstash 1 thread {one:.0}, vmstash 2 threads {two:.0}, \
             OpenSSH sftp get {openssh:.0} (setup {} ms excluded)",
            setup.as_millis()
        );
        best_one = best_one.max(one);
        best_two = best_two.max(two);
        best_openssh = best_openssh.max(openssh);
    }
    println!(
        "  best: vmstash 1 thread {best_one:.0}, vmstash 2 threads {best_two:.0}, \
         OpenSSH sftp {best_openssh:.0}"
    );
    Ok(())
}
