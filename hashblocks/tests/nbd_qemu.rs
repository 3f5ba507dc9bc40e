//! The NBD client against a real `qemu-nbd` exporting a qcow2 image with a persistent dirty
//! bitmap, the way a pull-mode backup sees a running VM's disk (spec/FORMAT.md §22).
//!
//! The image gets one write before the bitmap exists (allocated, clean) and three after it
//! (allocated, dirty), one of them 4 KiB inside a 64 KiB cluster. Then, through
//! `qemu-nbd -r -B chk0`: the dirty bitmap's extents are exactly the later writes, rounded out
//! to its 64 KiB granularity; `base:allocation` reports data exactly where the image has
//! clusters and holes elsewhere; a read of the whole disk returns the written patterns and
//! zeros; a context qemu does not have is simply not selected.
//!
//! A second image has a bitmap of 512-byte granularity with 70,000 dirty granules, one every
//! KiB: 140,000 extents, more than qemu-nbd sends in one answer (131,072), so block status
//! answers for less than asked and [`NbdClient::extents`] must ask again to cover the disk.
//!
//! Without qemu-nbd, qemu-img and qemu-io the tests are skipped, except under `CI=true`, where
//! they fail.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use vmstash_hashblocks::hasher::hash_changed;
use vmstash_hashblocks::nbd::wire::{
    BASE_ALLOCATION, NBD_STATE_DIRTY, NBD_STATE_HOLE, QEMU_DIRTY_BITMAP,
};
use vmstash_hashblocks::nbd::{Extent, NbdClient, NbdError};
use vmstash_hashblocks::protocol::Frame;
use vmstash_hashblocks::source::nbd::{NbdSource, NbdSourceError};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// The disk's virtual size.
const DISK: u64 = 64 * MIB;
/// The bitmap's name.
const BITMAP: &str = "chk0";
/// The bitmap's granularity and the image's cluster size (qemu's defaults).
const GRANULE: u64 = 64 * KIB;

/// A write made with qemu-io: offset, length, pattern byte.
type Write = (u64, u64, u8);
/// Written before the bitmap was added: allocated, not dirty.
const BEFORE_BITMAP: [Write; 1] = [(2 * MIB, MIB, 0x11)];
/// Written with the bitmap enabled: dirty.
const AFTER_BITMAP: [Write; 3] = [
    (8 * MIB, MIB, 0x5a),
    (20 * MIB, MIB, 0xa5),
    (40 * MIB + 68 * KIB, 4 * KIB, 0x33),
];

/// What the helper reports for one chunk (spec §19.6).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Zero,
    Unchanged,
    Hash([u8; 32]),
}

/// The helper's hashing through NBD (spec §19.6), on the same image: with the bitmap, a chunk
/// with data but no dirty byte is unchanged (not read), a chunk with a dirty byte is hashed from
/// the export, a hole is zeros; only the dirty chunks are read. A bitmap the export lacks is
/// `NoBitmap`, and without a bitmap every chunk with data is hashed.
#[test]
fn hashing_through_nbd_reads_only_the_chunks_the_bitmap_marks() {
    if !qemu_tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("img.qcow2");
    make_image(&image);
    let socket = dir.path().join("nbd.sock");
    let (_server, client) = QemuNbd::start(&image, &socket);
    drop(client);
    let chunk = 512 * KIB;
    let chunks = DISK / chunk;
    let mut all_writes = BEFORE_BITMAP.to_vec();
    all_writes.extend(AFTER_BITMAP);
    let disk = expected_disk(&all_writes);
    let overlaps = |ranges: &[(u64, u64)], no: u64| {
        ranges
            .iter()
            .any(|&(s, e)| s < (no + 1) * chunk && no * chunk < e)
    };
    let hash_of = |no: u64| -> [u8; 32] {
        let at = usize::try_from(no * chunk).expect("offset");
        let len = usize::try_from(chunk).expect("chunk");
        Sha256::digest(&disk[at..at + len]).into()
    };

    let src = NbdSource::connect(&socket, "", Some(BITMAP)).expect("connect with the bitmap");
    let changed = src
        .changed_ranges()
        .expect("dirty extents")
        .expect("a bitmap");
    let changed_pairs: Vec<(u64, u64)> = changed.iter().map(|r| (r.start, r.end)).collect();
    assert_eq!(changed_pairs, rounded_out(&AFTER_BITMAP));
    let (verdicts, read) = hash_all(&src, chunk, chunks, Some(&changed));
    let mut hashed = 0;
    for no in 0..chunks {
        let expected = if !overlaps(&rounded_out(&all_writes), no) {
            Verdict::Zero
        } else if overlaps(&rounded_out(&AFTER_BITMAP), no) {
            hashed += 1;
            Verdict::Hash(hash_of(no))
        } else {
            Verdict::Unchanged
        };
        assert_eq!(verdicts[&no], expected, "chunk {no}");
    }
    assert_eq!(
        hashed, 5,
        "8M..9M, 20M..21M (two 512 KiB chunks each) and 40M+68K"
    );
    assert_eq!(read, hashed * chunk, "only the dirty chunks are read");
    drop(src);

    let missing = NbdSource::connect(&socket, "", Some("nope")).expect_err("no such bitmap");
    assert!(
        matches!(&missing, NbdSourceError::NoBitmap { bitmap, .. } if bitmap == "nope"),
        "{missing}"
    );

    let whole = NbdSource::connect(&socket, "", None).expect("connect without a bitmap");
    assert_eq!(whole.changed_ranges().expect("none"), None);
    let (verdicts, read) = hash_all(&whole, chunk, chunks, None);
    for no in 0..chunks {
        let expected = if overlaps(&rounded_out(&all_writes), no) {
            Verdict::Hash(hash_of(no))
        } else {
            Verdict::Zero
        };
        assert_eq!(verdicts[&no], expected, "chunk {no} without the bitmap");
    }
    assert_eq!(read, 7 * chunk, "every chunk with data, the clean ones too");
}

/// Every chunk's verdict from [`hash_changed`], and the bytes it read.
fn hash_all(
    src: &NbdSource,
    chunk: u64,
    chunks: u64,
    changed: Option<&[std::ops::Range<u64>]>,
) -> (std::collections::BTreeMap<u64, Verdict>, u64) {
    let mut verdicts = std::collections::BTreeMap::new();
    let mut record =
        |no: u64, v: Verdict| assert!(verdicts.insert(no, v).is_none(), "chunk {no} twice");
    let mut frames = Vec::new();
    let stats = hash_changed(
        src,
        u32::try_from(chunk).expect("chunk size"),
        0..chunks,
        2,
        changed,
        &mut |f| {
            frames.push(f);
            Ok(())
        },
    )
    .expect("hash");
    for frame in frames {
        match frame {
            Frame::ZeroRun { first, count } => {
                (first..first + count).for_each(|n| record(n, Verdict::Zero))
            }
            Frame::UnchangedRun { first, count } => {
                (first..first + count).for_each(|n| record(n, Verdict::Unchanged))
            }
            Frame::Hashes { first, hashes } => {
                for (n, h) in (first..).zip(hashes) {
                    record(n, Verdict::Hash(h));
                }
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(stats.chunks, chunks);
    assert_eq!(u64::try_from(verdicts.len()).expect("count"), chunks);
    (verdicts, stats.bytes_read)
}

#[test]
fn qemu_nbd_exports_the_dirty_bitmap_allocation_and_data() {
    if !qemu_tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("img.qcow2");
    make_image(&image);
    let socket = dir.path().join("nbd.sock");
    let (_server, mut client) = QemuNbd::start(&image, &socket);

    assert_eq!(client.size(), DISK);
    let dirty_context = format!("{QEMU_DIRTY_BITMAP}{BITMAP}");
    assert!(client.has_context(BASE_ALLOCATION));
    assert!(client.has_context(&dirty_context));
    eprintln!("qemu-nbd block sizes: {:?}", client.block_size());
    report_first_answer(&mut client, &dirty_context);
    report_first_answer(&mut client, BASE_ALLOCATION);

    let dirty = client
        .extents(&dirty_context, 0, DISK)
        .expect("dirty extents");
    assert_covers(&dirty, DISK);
    let dirty_ranges = ranges_where(&dirty, |flags| flags & NBD_STATE_DIRTY != 0);
    assert_eq!(
        dirty_ranges,
        rounded_out(&AFTER_BITMAP),
        "dirty = the later writes"
    );

    let allocation = client
        .extents(BASE_ALLOCATION, 0, DISK)
        .expect("allocation");
    assert_covers(&allocation, DISK);
    let data_ranges = ranges_where(&allocation, |flags| flags & NBD_STATE_HOLE == 0);
    let mut all_writes = BEFORE_BITMAP.to_vec();
    all_writes.extend(AFTER_BITMAP);
    assert_eq!(
        data_ranges,
        rounded_out(&all_writes),
        "data = every cluster written"
    );
    let hole_flags: Vec<u32> = allocation
        .iter()
        .filter(|e| e.flags & NBD_STATE_HOLE != 0)
        .map(|e| e.flags)
        .collect();
    eprintln!(
        "base:allocation: {} extents, hole flags {hole_flags:?}",
        allocation.len()
    );

    let mut disk = vec![0xeeu8; usize::try_from(DISK).expect("64 MiB")];
    client.read(0, &mut disk).expect("read the whole disk");
    assert!(
        disk == expected_disk(&all_writes),
        "the disk reads as written"
    );
    let mut odd = [0u8; 300];
    client
        .read(8 * MIB - 100, &mut odd)
        .expect("an unaligned read");
    assert!(odd[..100].iter().all(|&b| b == 0) && odd[100..].iter().all(|&b| b == 0x5a));
    drop(client);

    let other = NbdClient::connect_unix(&socket, "", &[BASE_ALLOCATION, "qemu:dirty-bitmap:nope"])
        .expect("second connection");
    assert!(other.has_context(BASE_ALLOCATION));
    assert!(
        !other.has_context("qemu:dirty-bitmap:nope"),
        "no such bitmap: not selected"
    );
}

/// Dirty 512-byte granules, one every KiB: more extents than qemu-nbd puts in one answer.
const FRAGMENTS: u64 = 70_000;
/// The fragmented disk's size.
const FRAGMENTED_DISK: u64 = 128 * MIB;

#[test]
fn qemu_nbd_answers_a_fragmented_bitmap_in_parts() {
    if !qemu_tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("frag.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", arg(&image), "128M"],
    );
    run(
        "qemu-img",
        &["bitmap", "--add", "-g", "512", arg(&image), BITMAP],
    );
    let script: String = (0..FRAGMENTS)
        .map(|i| format!("write -q -P 0x77 {} 512\n", i * KIB))
        .collect();
    let commands = dir.path().join("writes.qemu-io");
    std::fs::write(&commands, script).expect("write the qemu-io commands");
    run_with_input(
        "qemu-io",
        &["-t", "unsafe", "-f", "qcow2", arg(&image)],
        &commands,
    );
    let socket = dir.path().join("nbd.sock");
    let (_server, mut client) = QemuNbd::start(&image, &socket);
    let context = format!("{QEMU_DIRTY_BITMAP}{BITMAP}");

    let first = client
        .block_status(0, FRAGMENTED_DISK, &context)
        .expect("block status");
    let covered: u64 = first.iter().map(|e| e.length).sum();
    eprintln!(
        "{context} (granularity 512): one request for {FRAGMENTED_DISK} bytes answered {covered} \
         bytes in {} extents",
        first.len()
    );
    assert!(
        covered < FRAGMENTED_DISK,
        "qemu-nbd 7.2 puts at most 131,072 extents in one answer: the rest needs more requests"
    );
    let dirty = client
        .extents(&context, 0, FRAGMENTED_DISK)
        .expect("extents");
    assert_covers(&dirty, FRAGMENTED_DISK);
    let dirty_ranges = ranges_where(&dirty, |flags| flags & NBD_STATE_DIRTY != 0);
    let want: Vec<(u64, u64)> = (0..FRAGMENTS).map(|i| (i * KIB, i * KIB + 512)).collect();
    assert!(dirty_ranges == want, "{} dirty ranges", dirty_ranges.len());
}

/// True when the qemu tools are installed; otherwise skips (or fails under `CI=true`).
fn qemu_tools_present() -> bool {
    let missing: Vec<&str> = ["qemu-nbd", "qemu-img", "qemu-io"]
        .into_iter()
        .filter(|tool| {
            !Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "prerequisite missing under CI: {missing:?} (install qemu-utils)"
    );
    eprintln!("SKIPPED: {missing:?} missing (install qemu-utils)");
    false
}

/// Runs `tool` with `args`; panics with its output when it fails.
fn run(tool: &str, args: &[&str]) {
    let out = Command::new(tool).args(args).output().expect(tool);
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `tool` with `args` and the file `input` as its standard input (qemu-io answers every
/// command with a prompt on stdout, so a pipe fed while nobody reads stdout would fill up);
/// panics when it fails.
fn run_with_input(tool: &str, args: &[&str], input: &Path) {
    let stdin = std::fs::File::open(input).expect("command file");
    let out = Command::new(tool)
        .args(args)
        .stdin(stdin)
        .output()
        .expect(tool);
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("temp path is UTF-8")
}

/// Writes `w` into `image` with qemu-io.
fn qemu_write(image: &Path, (offset, len, byte): Write) {
    let command = format!("write -P {byte:#04x} {offset} {len}");
    run("qemu-io", &["-f", "qcow2", "-c", &command, arg(image)]);
}

/// The 64 MiB qcow2 image: a write, the bitmap, three writes.
fn make_image(image: &Path) {
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", arg(image), "64M"],
    );
    for w in BEFORE_BITMAP {
        qemu_write(image, w);
    }
    run(
        "qemu-img",
        &["bitmap", "--add", "--enable", arg(image), BITMAP],
    );
    for w in AFTER_BITMAP {
        qemu_write(image, w);
    }
}

/// The disk's bytes after `writes`.
fn expected_disk(writes: &[Write]) -> Vec<u8> {
    let mut disk = vec![0u8; usize::try_from(DISK).expect("64 MiB")];
    for &(offset, len, byte) in writes {
        let start = usize::try_from(offset).expect("offset");
        let end = start + usize::try_from(len).expect("len");
        disk[start..end].fill(byte);
    }
    disk
}

/// The writes' ranges rounded out to [`GRANULE`], sorted and merged.
fn rounded_out(writes: &[Write]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = writes
        .iter()
        .map(|&(offset, len, _)| {
            let start = offset / GRANULE * GRANULE;
            (start, (offset + len).div_ceil(GRANULE) * GRANULE)
        })
        .collect();
    ranges.sort_unstable();
    merge(ranges)
}

/// The ranges (start, end) of the extents whose flags pass `keep`, merged.
fn ranges_where(extents: &[Extent], keep: impl Fn(u32) -> bool) -> Vec<(u64, u64)> {
    let ranges = extents
        .iter()
        .filter(|e| keep(e.flags))
        .map(|e| (e.offset, e.offset + e.length))
        .collect();
    merge(ranges)
}

fn merge(ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if last.1 >= start => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// Asserts the extents run consecutively from 0 to `len`.
fn assert_covers(extents: &[Extent], len: u64) {
    let mut at = 0;
    for e in extents {
        assert_eq!(e.offset, at, "extents are consecutive");
        assert!(e.length > 0);
        at += e.length;
    }
    assert_eq!(at, len, "extents cover the disk");
}

/// Prints how much of the whole disk one block status request answered for.
fn report_first_answer(client: &mut NbdClient, context: &str) {
    let first = client.block_status(0, DISK, context).expect("block status");
    let covered: u64 = first.iter().map(|e| e.length).sum();
    eprintln!(
        "{context}: one request for {DISK} bytes answered {covered} bytes in {} extents",
        first.len()
    );
}

/// A running qemu-nbd, killed on drop.
struct QemuNbd {
    child: Child,
}

impl QemuNbd {
    /// Exports `image` read-only with the bitmap on `socket`, and connects to it. When qemu-nbd
    /// refuses an enabled bitmap on a read-only export (some versions do), the bitmap is
    /// disabled and qemu-nbd started again.
    fn start(image: &Path, socket: &Path) -> (QemuNbd, NbdClient) {
        match Self::try_start(image, socket) {
            Ok(started) => started,
            Err(stderr) if stderr.contains("readonly") || stderr.contains("read-only") => {
                eprintln!("qemu-nbd refused the enabled bitmap ({stderr}); disabling it");
                run("qemu-img", &["bitmap", "--disable", arg(image), BITMAP]);
                Self::try_start(image, socket).unwrap_or_else(|e| panic!("qemu-nbd: {e}"))
            }
            Err(stderr) => panic!("qemu-nbd exited: {stderr}"),
        }
    }

    /// Starts qemu-nbd and connects; returns its stderr if it exits first.
    fn try_start(image: &Path, socket: &Path) -> Result<(QemuNbd, NbdClient), String> {
        let child = Command::new("qemu-nbd")
            .args([
                "-r",
                "-t",
                "-B",
                BITMAP,
                "-f",
                "qcow2",
                "-k",
                arg(socket),
                arg(image),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qemu-nbd");
        let mut server = QemuNbd { child };
        let dirty = format!("{QEMU_DIRTY_BITMAP}{BITMAP}");
        let contexts = [BASE_ALLOCATION, dirty.as_str()];
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = server.child.try_wait().expect("wait") {
                let mut stderr = String::new();
                if let Some(mut pipe) = server.child.stderr.take() {
                    pipe.read_to_string(&mut stderr).expect("stderr");
                }
                return Err(format!("{status}: {}", stderr.trim()));
            }
            match NbdClient::connect_unix(socket, "", &contexts) {
                Ok(client) => return Ok((server, client)),
                Err(NbdError::Io(e)) if not_listening(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("connecting to qemu-nbd on {}: {e}", socket.display()),
            }
        }
    }
}

/// True for the errors of connecting before the server listens.
fn not_listening(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
