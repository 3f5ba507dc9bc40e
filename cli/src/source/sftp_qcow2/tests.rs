//! qcow2 over SFTP, end to end: chains built by qemu-img in the directory of a private OpenSSH
//! server, read through [`open_sftp_qcow2`] and compared byte for byte with what qemu reads.
//!
//! Each test starts its own `sshd` on 127.0.0.1 ([`vmstash_test_support::Sshd`]). Without
//! `/usr/sbin/sshd` the tests skip with a message, unless `CI=true`, where they fail: CI must
//! install openssh-server (scripts/install-deps.sh).
//!
//! `sftp_qcow2_throughput` is ignored by default; run it with
//! `cargo test --release -p vmstash sftp_qcow2_throughput -- --ignored --nocapture`.

use std::error::Error;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::*;
use vmstash_hashblocks::source::test_util::{assert_ranges_cover, read_all, TestResult};
use vmstash_ssh::{SshOptions, SshSession, SshTarget};
use vmstash_test_support::Sshd;

/// What a backup reads at once.
const CHUNK: usize = 512 << 10;
/// qemu's default cluster size.
const CLUSTER: usize = 64 << 10;
/// One mebibyte.
const MIB: usize = 1 << 20;
/// The type of the qcow2 header extension that names the backing file's format.
const BACKING_FORMAT_EXTENSION: [u8; 4] = [0xe2, 0x79, 0x2a, 0xca];

/// What these tests do on the fixture's server.
trait ImageHost {
    /// An empty directory for images, created under the server's temporary directory.
    fn image_dir(&self) -> Result<PathBuf, Box<dyn Error>>;
    /// Connects (learning the host key) and opens an SFTP channel.
    fn sftp(&self) -> Result<Sftp, Box<dyn Error>>;
}

impl ImageHost for Sshd {
    fn image_dir(&self) -> Result<PathBuf, Box<dyn Error>> {
        let dir = self.path("images");
        std::fs::create_dir(&dir)?;
        Ok(dir)
    }

    fn sftp(&self) -> Result<Sftp, Box<dyn Error>> {
        std::fs::write(self.path("no_ssh_config"), "")?;
        let target = SshTarget {
            user: Some(self.user.clone()),
            host: "127.0.0.1".to_owned(),
            port: Some(self.port),
        };
        let options = SshOptions {
            identity: Some(self.client_key.clone()),
            known_hosts: Some(self.path("known_hosts")),
            accept_new_host_key: true,
            ssh_config: Some(self.path("no_ssh_config")),
        };
        Ok(SshSession::connect(&target, &options)?.sftp()?)
    }
}

/// `path` as the `&str` the tools and SFTP want.
fn arg(path: &Path) -> Result<&str, Box<dyn Error>> {
    path.to_str().ok_or_else(|| "temp path is not UTF-8".into())
}

/// Runs `program` with `args` (in `dir`, if given); returns its stdout, fails with its stderr.
fn run(program: &str, args: &[&str], dir: Option<&Path>) -> Result<String, Box<dyn Error>> {
    let mut command = Command::new(program);
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command.output()?;
    if !output.status.success() {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("{program} {args:?} failed: {stderr}{stdout}").into());
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Runs `qemu-img` in `dir`, so that relative backing names are written as given.
fn qemu_img(dir: &Path, args: &[&str]) -> TestResult {
    run("qemu-img", args, Some(dir)).map(drop)
}

/// Creates the qcow2 image `name` in `dir` on `backing` (name and format, as the header
/// will hold them); `size` as qemu-img takes it, `None` for the backing file's.
fn create_overlay(dir: &Path, name: &str, backing: (&str, &str), size: Option<&str>) -> TestResult {
    let (file, format) = backing;
    let mut args = vec![
        "create", "-q", "-f", "qcow2", "-b", file, "-F", format, name,
    ];
    args.extend(size);
    qemu_img(dir, &args)
}

/// Points the image `name` in `dir` at another backing file without checking it.
fn rebase_unsafe(dir: &Path, name: &str, backing: (&str, &str)) -> TestResult {
    let (file, format) = backing;
    qemu_img(dir, &["rebase", "-q", "-u", "-b", file, "-F", format, name])
}

/// Runs `qemu-io` commands ("write -P 0xab 0 64k") on the image `name` in `dir`.
fn qemu_io(dir: &Path, name: &str, commands: &[&str]) -> TestResult {
    let mut args = Vec::new();
    for command in commands {
        args.extend_from_slice(&["-c", command]);
    }
    args.push(name);
    run("qemu-io", &args, Some(dir)).map(drop)
}

/// What qemu reads from the image `name` in `dir`: converted to raw, as bytes.
fn qemu_view(dir: &Path, name: &str) -> Result<Vec<u8>, Box<dyn Error>> {
    let raw = format!("{name}.expected");
    qemu_img(dir, &["convert", "-q", "-O", "raw", name, &raw])?;
    Ok(std::fs::read(dir.join(raw))?)
}

/// Fills `bytes` with a pattern that differs per position and per `seed`.
fn pattern(bytes: &mut [u8], seed: u8) {
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = (i % 251).to_le_bytes()[0].wrapping_mul(3) ^ seed;
    }
}

/// `qemu-io` writes of a constant byte (different for each cluster) to the clusters `indexes`.
fn cluster_writes(indexes: impl Iterator<Item = usize>, first_byte: u8) -> Vec<String> {
    indexes
        .map(|index| {
            let byte = first_byte.wrapping_add(index.to_le_bytes()[0]);
            format!("write -P {byte} {} 64k", index * CLUSTER)
        })
        .collect()
}

/// Builds a three-level chain in `dir`, every backing name relative: `base.qcow2` (converted
/// from a raw image with data at 0..3 MiB and 4..6 MiB), `mid.qcow2` and `top.qcow2` (created
/// with `-b` on the image below, written with qemu-io). In the first 2 MiB the layers alternate
/// cluster by cluster, and the top's clusters are written backwards, so that one chunk is read
/// in many pieces from several files. The top also has a zero cluster over the base's data and
/// a compressed cluster; the middle a zero cluster and data in the base's hole. Returns the top
/// image's path.
fn build_chain(dir: &Path) -> Result<PathBuf, Box<dyn Error>> {
    let mut base = vec![0u8; 8 * MIB];
    for (range, seed) in [(0..3 * MIB, 0x11), (4 * MIB..6 * MIB, 0x22)] {
        pattern(base.get_mut(range).ok_or("base too small")?, seed);
    }
    std::fs::write(dir.join("base.raw"), &base)?;
    qemu_img(
        dir,
        &["convert", "-q", "-O", "qcow2", "base.raw", "base.qcow2"],
    )?;

    create_overlay(dir, "mid.qcow2", ("base.qcow2", "qcow2"), None)?;
    let mut writes = cluster_writes((0..32).step_by(2), 0x40);
    writes.push("write -P 0xa1 3200k 64k".to_owned());
    writes.push("write -z 5M 64k".to_owned());
    let writes: Vec<&str> = writes.iter().map(String::as_str).collect();
    qemu_io(dir, "mid.qcow2", &writes)?;

    create_overlay(dir, "top.qcow2", ("mid.qcow2", "qcow2"), None)?;
    let mut writes = cluster_writes((0..32).step_by(3).rev(), 0x80);
    writes.push("write -P 0xc1 7M 64k".to_owned());
    writes.push("write -z 1088k 64k".to_owned());
    writes.push("write -c -P 0x5a 4M 64k".to_owned());
    let writes: Vec<&str> = writes.iter().map(String::as_str).collect();
    qemu_io(dir, "top.qcow2", &writes)?;
    Ok(dir.join("top.qcow2"))
}

/// Opening `path` over `sftp` must fail; returns the error.
fn open_err(sftp: &Sftp, path: &Path) -> Result<SourceError, Box<dyn Error>> {
    match open_sftp_qcow2(sftp, arg(path)?) {
        Ok(_) => Err(format!("{} opened", path.display()).into()),
        Err(err) => Ok(err),
    }
}

#[test]
fn three_level_chain_reads_like_qemu() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    let dir = sshd.image_dir()?;
    let top = build_chain(&dir)?;
    let backing = run("qemu-img", &["info", "--output=json", arg(&top)?], None)?;
    assert!(
        backing.contains("\"backing-filename\": \"mid.qcow2\""),
        "{backing}"
    );
    let expected = qemu_view(&dir, "top.qcow2")?;

    let sftp = sshd.sftp()?;
    let source = SftpQcow2Source::open(&sftp, arg(&top)?)?;
    assert_eq!(source.format(), ImageFormat::Qcow2);
    assert_eq!(source.size(), 8 << 20);
    assert!(
        read_all(&source)? == expected,
        "uneven reads differ from qemu's"
    );

    // Whole chunks, as a backup reads them, from two threads at once.
    std::thread::scope(|scope| -> TestResult {
        let readers: Vec<_> = (0..2)
            .map(|first| {
                let (source, expected) = (&source, &expected);
                scope.spawn(move || -> Result<(), String> {
                    let mut buf = vec![0u8; CHUNK];
                    for (index, want) in expected.chunks(CHUNK).enumerate().skip(first) {
                        let offset = len_u64(index * CHUNK);
                        source
                            .read_at(&mut buf, offset)
                            .map_err(|e| e.to_string())?;
                        if buf != want {
                            return Err(format!("chunk at {offset} differs"));
                        }
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

    // The first chunk comes from all three layers, in several pieces.
    let mut buf = vec![0u8; CHUNK];
    let pieces = data_pieces(&source.image, &mut buf, 0)?.len();
    assert!(pieces >= 4, "only {pieces} pieces");

    // The same data ranges as the local reader finds.
    let ranges = source.data_ranges()?;
    assert_ranges_cover(&ranges, &expected);
    assert_eq!(ranges, crate::source::open(&top)?.data_ranges()?);
    let zeroed_in_mid = len_u64(5 * MIB);
    let hole_in_base = len_u64(3 * MIB);
    for offset in [zeroed_in_mid, hole_in_base, len_u64(6 * MIB)] {
        assert!(!ranges.iter().any(|r| r.contains(&offset)), "{ranges:?}");
    }

    // Past the end: an error, not a short read.
    assert!(source.read_at(&mut buf, len_u64(8 * MIB - 1)).is_err());
    Ok(())
}

#[test]
fn raw_backing_file_reads_like_qemu_declared_or_probed() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    let dir = sshd.image_dir()?;
    let mut base = vec![0u8; 4 * MIB];
    pattern(&mut base, 0x33);
    std::fs::write(dir.join("base.img"), &base)?;
    create_overlay(&dir, "top.qcow2", ("base.img", "raw"), Some("6M"))?;
    qemu_io(
        &dir,
        "top.qcow2",
        &["write -P 0xcd 1M 4k", "write -P 0xef 5M 8k"],
    )?;
    let expected = qemu_view(&dir, "top.qcow2")?;
    let top = dir.join("top.qcow2");
    let sftp = sshd.sftp()?;

    let source = open_sftp_qcow2(&sftp, arg(&top)?)?;
    assert!(read_all(source.as_ref())? == expected);
    let ranges = source.data_ranges()?;
    assert_ranges_cover(&ranges, &expected);
    // Beyond the end of the shorter raw base, only the top's own cluster is data.
    assert!(
        !ranges.iter().any(|r| r.contains(&len_u64(4 * MIB))),
        "{ranges:?}"
    );

    // Without a declared format the backing file is probed: no qcow2 magic, so raw. (qemu-img
    // no longer writes such headers: the backing format extension is renamed to an unknown
    // one, which readers skip.)
    let mut header = std::fs::read(&top)?;
    let extension = header
        .windows(4)
        .position(|window| window == BACKING_FORMAT_EXTENSION)
        .ok_or("no backing format extension")?;
    header
        .get_mut(extension..extension + 4)
        .ok_or("header too short")?
        .copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    std::fs::write(&top, &header)?;
    let info = run("qemu-img", &["info", "--output=json", arg(&top)?], None)?;
    assert!(!info.contains("backing-filename-format"), "{info}");
    let source = open_sftp_qcow2(&sftp, arg(&top)?)?;
    assert!(read_all(source.as_ref())? == expected);
    Ok(())
}

#[test]
fn missing_backing_file_names_both_files() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    let dir = sshd.image_dir()?;
    qemu_img(&dir, &["create", "-q", "-f", "qcow2", "top.qcow2", "1M"])?;
    rebase_unsafe(&dir, "top.qcow2", ("gone.qcow2", "qcow2"))?;
    let sftp = sshd.sftp()?;
    let err = open_err(&sftp, &dir.join("top.qcow2"))?;
    let SourceError::Io { source, .. } = &err else {
        return Err(format!("not an I/O error: {err}").into());
    };
    assert_eq!(source.kind(), io::ErrorKind::NotFound, "{err}");
    let message = err.to_string();
    for part in ["gone.qcow2", "top.qcow2", "backing file", "no such file"] {
        assert!(message.contains(part), "{part}: {message}");
    }

    // A missing top image is the SSH layer's error, naming the host and the path.
    let err = open_err(&sftp, &dir.join("absent.qcow2"))?;
    assert!(matches!(err, SourceError::Remote(_)), "{err}");
    assert!(err.to_string().contains("absent.qcow2"), "{err}");
    Ok(())
}

#[test]
fn damaged_or_unreadable_images_give_errors_not_panics() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    let dir = sshd.image_dir()?;
    let sftp = sshd.sftp()?;
    let path = dir.join("disk.qcow2");

    // Not qcow2 at all, and a header cut short.
    std::fs::write(&path, "just some bytes, not an image. ".repeat(8))?;
    let err = open_err(&sftp, &path)?;
    assert!(matches!(err, SourceError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("magic"), "{err}");
    qemu_img(&dir, &["create", "-q", "-f", "qcow2", "good.qcow2", "1M"])?;
    let good = std::fs::read(dir.join("good.qcow2"))?;
    std::fs::write(&path, good.get(..80).ok_or("image too short")?)?;
    let err = open_err(&sftp, &path)?;
    assert!(matches!(err, SourceError::Corrupt { .. }), "{err}");

    // The header checks of local images apply: a dirty image is refused with advice.
    let mut dirty = good.clone();
    *dirty.get_mut(79).ok_or("image too short")? |= 1;
    std::fs::write(&path, &dirty)?;
    let err = open_err(&sftp, &path)?;
    assert!(matches!(err, SourceError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("dirty"), "{err}");

    // Garbage after the magic: whatever happens, no panic, also when reading what opened.
    let mut seed = 0x1234_5678_u32;
    for round in 0..30 {
        let mut bytes = b"QFI\xfb".to_vec();
        for _ in 0..(round * 97 % 4096) + 8 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            bytes.push(seed.to_be_bytes()[0]);
        }
        std::fs::write(&path, &bytes)?;
        if let Ok(source) = open_sftp_qcow2(&sftp, arg(&path)?) {
            let _ = source.data_ranges();
            let mut buf = vec![0u8; 4096.min(usize::try_from(source.size())?)];
            let _ = source.read_at(&mut buf, 0);
        }
    }

    // A chain that loops back to its top is refused.
    qemu_img(&dir, &["create", "-q", "-f", "qcow2", "a.qcow2", "1M"])?;
    create_overlay(&dir, "b.qcow2", ("a.qcow2", "qcow2"), None)?;
    rebase_unsafe(&dir, "a.qcow2", ("./b.qcow2", "qcow2"))?;
    let err = open_err(&sftp, &dir.join("b.qcow2"))?;
    assert!(matches!(err, SourceError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("loops"), "{err}");

    // A directory is not an image.
    let err = open_err(&sftp, &dir)?;
    assert!(matches!(err, SourceError::Unsupported { .. }), "{err}");
    Ok(())
}

#[test]
fn truncated_images_are_damaged_not_zeros() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    let dir = sshd.image_dir()?;
    qemu_img(&dir, &["create", "-q", "-f", "qcow2", "base.qcow2", "512M"])?;
    qemu_io(&dir, "base.qcow2", &["write -P 0x5a 0 30M"])?;
    let base = std::fs::read(dir.join("base.qcow2"))?;
    let sftp = sshd.sftp()?;
    let cut = dir.join("t.qcow2");

    // Cut in its metadata: the L1 table lies past the end, and the image does not open.
    std::fs::write(&cut, base.get(..100_000).ok_or("image too short")?)?;
    let err = open_err(&sftp, &cut)?;
    assert!(matches!(err, SourceError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("L1 table"), "{err}");

    // Cut in its data: it opens, but the clusters past the cut are damage, not zeros.
    std::fs::write(&cut, base.get(..20 * MIB).ok_or("image too short")?)?;
    let source = open_sftp_qcow2(&sftp, arg(&cut)?)?;
    let err = source.data_ranges().err().ok_or("data ranges listed")?;
    assert!(matches!(err, SourceError::Corrupt { .. }), "{err}");
    let mut buf = vec![0u8; CHUNK];
    let err = source
        .read_at(&mut buf, len_u64(25 * MIB))
        .err()
        .ok_or("read past the cut")?;
    assert!(matches!(err, SourceError::Corrupt { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("t.qcow2") && message.contains("past the end"),
        "{message}"
    );
    source.read_at(&mut buf, 0)?;
    assert!(buf.iter().all(|byte| *byte == 0x5a));
    Ok(())
}

#[test]
fn storage_reads_zeros_past_the_end_and_refuses_writes() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    let dir = sshd.image_dir()?;
    let path = dir.join("short.img");
    std::fs::write(&path, b"0123456789")?;
    let sftp = sshd.sftp()?;
    let storage = SftpStorage::new(&path, sftp.open(arg(&path)?)?);
    assert_eq!(Storage::size(&storage)?, 10);
    assert_eq!(storage.get_filename(), Some(path.clone()));
    assert_eq!(
        storage.resolve_relative_path("base.img")?,
        dir.join("base.img")
    );
    assert_eq!(
        storage.resolve_relative_path("/abs/base.img")?,
        PathBuf::from("/abs/base.img")
    );

    let mut buf = [0xffu8; 16];
    imago::StorageExt::read(&storage, &mut buf[..], 4)?;
    assert_eq!(&buf, b"456789\0\0\0\0\0\0\0\0\0\0");
    let err = imago::StorageExt::write(&storage, &b"x"[..], 0)
        .err()
        .ok_or("a write succeeded")?;
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    assert_eq!(std::fs::read(&path)?, b"0123456789");
    Ok(())
}

#[test]
fn loop_identity_ignores_dots_and_repeated_slashes() {
    let files_identity = |path: &str| -> PathBuf { Path::new(path).components().collect() };
    assert_eq!(
        files_identity("/images//./a.qcow2"),
        files_identity("/images/a.qcow2")
    );
    assert_ne!(
        files_identity("/images/../images/a.qcow2"),
        files_identity("/images/a.qcow2"),
        "`..` is kept: it cannot be resolved without the remote symlinks"
    );
}

#[test]
fn sftp_errors_never_read_as_damaged_images() {
    for failure in [
        SftpFailure::NotFound,
        SftpFailure::Unsupported,
        SftpFailure::Protocol("bad packet".to_owned()),
        SftpFailure::UnexpectedEof { at: 7 },
    ] {
        let err = to_io_error(SshError::Sftp {
            host: "root@host:22".to_owned(),
            path: "/images/disk.qcow2".to_owned(),
            action: "read 4096 bytes at offset 0 of".to_owned(),
            failure,
        });
        let source = imago_error(Path::new("disk.qcow2"), "read".to_owned(), err);
        assert!(matches!(source, SourceError::Io { .. }), "{source}");
        assert!(source.to_string().contains("root@host:22"), "{source}");
    }
}

/// Writes `len` bytes of pseudo-random data (incompressible) to a new file at `path`.
fn write_noise(path: &Path, len: usize) -> TestResult {
    let file = File::create(path)?;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut block = vec![0u8; 4 * MIB];
    for offset in (0..len).step_by(block.len()) {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all_at(&block, len_u64(offset))?;
    }
    Ok(())
}

/// Reads all of `size` bytes with `read` in chunks as a backup does; returns MiB/s.
fn timed(
    size: u64,
    mut read: impl FnMut(&mut [u8], u64) -> TestResult,
) -> Result<f64, Box<dyn Error>> {
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    for offset in (0..size).step_by(CHUNK) {
        read(&mut buf, offset)?;
    }
    let mib = f64::from(u32::try_from(size >> 20)?);
    Ok(mib / start.elapsed().as_secs_f64())
}

#[test]
#[ignore = "benchmark: builds 1 GiB images; run with --ignored --nocapture"]
fn sftp_qcow2_throughput() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    let dir = sshd.image_dir()?;
    let size = 1usize << 30;
    write_noise(&dir.join("disk.raw"), size)?;
    qemu_img(
        &dir,
        &["convert", "-q", "-O", "qcow2", "disk.raw", "disk.qcow2"],
    )?;
    // A fragmented chain: an overlay holding every other cluster, over the contiguous image.
    create_overlay(&dir, "top.qcow2", ("disk.qcow2", "qcow2"), None)?;
    let writes: Vec<String> = (0..size / CLUSTER)
        .step_by(2)
        .map(|index| format!("write -P 0x77 {} 64k", index * CLUSTER))
        .collect();
    let writes: Vec<&str> = writes.iter().map(String::as_str).collect();
    for batch in writes.chunks(1024) {
        qemu_io(&dir, "top.qcow2", batch)?;
    }

    let sftp = sshd.sftp()?;
    let size = len_u64(size);
    let rounds: usize = std::env::var("VMSTASH_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    println!("1 GiB of incompressible data, 512 KiB reads, loopback, MiB/s:");
    for name in ["disk.qcow2", "top.qcow2"] {
        let path = dir.join(name);
        let local = crate::source::open(&path)?;
        let remote = SftpQcow2Source::open(&sftp, arg(&path)?)?;
        for round in 1..=rounds {
            let local_imago = timed(size, |buf, offset| Ok(local.read_at(buf, offset)?))?;
            let sftp_pieces = timed(size, |buf, offset| Ok(remote.read_at(buf, offset)?))?;
            let sftp_plain_imago =
                timed(size, |buf, offset| Ok(remote.image.read(buf, offset)?))?;
            println!(
                "  {name} round {round}: local imago {local_imago:.0}, SFTP read_at {sftp_pieces:.0}, \
                 SFTP imago read alone (one piece after another) {sftp_plain_imago:.0}"
            );
        }
    }
    let raw = crate::source::open_sftp_raw(sftp, arg(&dir.join("disk.raw"))?, None)?;
    for round in 1..=rounds {
        let mib_s = timed(size, |buf, offset| Ok(raw.read_at(buf, offset)?))?;
        println!("  disk.raw round {round}: SFTP raw source {mib_s:.0}");
    }
    Ok(())
}
