//! The qcow2 header check (`vmstash_hashblocks::source::qcow2::header`), which runs on every
//! image of a chain before imago sees it.
//!
//! Input: the length of the image file (8 bytes, big-endian), then the file's first bytes. The
//! check must never panic, and must decide exactly as an independent statement of its rules
//! below ([`expected`]: qemu's `docs/interop/qcow2.txt` field offsets, `u128` arithmetic, no
//! early-out helpers) decides: accepted, damaged (`Corrupt`) or unsupported (`Unsupported`),
//! with the first failing rule choosing the kind. So a header whose checked field is moved out
//! of range by a mutation is refused exactly then, and an accepted header has a cluster size of
//! 512 bytes to 2 MiB, an L1 table of at most 32 MiB that covers the virtual size, and every
//! table it points at inside the file. Whatever parses also survives being re-encoded: the
//! fields written into a fresh header parse back to the same summary and get the same verdict.
//!
//! Seeds (`seeds/qcow2_header/`): the file length and first 1 KiB of images made by
//! `qemu-img create -f qcow2` 7.2: version 3, version 2 (`-o compat=0.10`), with a backing
//! file, with `extended_l2=on`, with 512-byte clusters, LUKS-encrypted, with an internal
//! snapshot, and the report's 512 MiB image with 30 MiB written, cut at 100000 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstash_hashblocks::source::qcow2::header::{HeaderProblem, HeaderSummary};

/// What the check should say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accept,
    Corrupt,
    Unsupported,
}

fuzz_target!(|data: &[u8]| {
    let (file_len, header) = match data.split_first_chunk::<8>() {
        Some((len, rest)) => (u64::from_be_bytes(*len), rest),
        None => (0, data),
    };
    let parsed = HeaderSummary::parse(header);
    let verdict = match &parsed {
        Ok(summary) => verdict_of(summary.check(file_len)),
        Err(problem) => verdict_of(Err(problem.clone())),
    };
    let want = expected(header, file_len);
    assert_eq!(verdict, want, "file_len {file_len}, header {parsed:?}");
    if let Ok(summary) = parsed {
        assert_decoded(&summary, header);
        assert_reencodes(&summary, file_len, verdict);
        if verdict == Verdict::Accept {
            assert_bounded(&summary, file_len);
        }
    }
});

/// The verdict of a check's result.
fn verdict_of(result: Result<(), HeaderProblem>) -> Verdict {
    match result {
        Ok(()) => Verdict::Accept,
        Err(HeaderProblem::Corrupt(_)) => Verdict::Corrupt,
        Err(HeaderProblem::Unsupported(_)) => Verdict::Unsupported,
    }
}

/// The big-endian number of `N` bytes at `at` of `header`, 0 if the header is shorter.
fn be<const N: usize>(header: &[u8], at: usize) -> u128 {
    header.get(at..at + N).map_or(0, |bytes| {
        bytes.iter().fold(0, |n, b| n << 8 | u128::from(*b))
    })
}

/// The header's fields, decoded independently of the check.
struct Fields {
    version: u128,
    backing_file_offset: u128,
    backing_file_size: u128,
    cluster_bits: u128,
    size: u128,
    crypt_method: u128,
    l1_size: u128,
    l1_table_offset: u128,
    refcount_table_offset: u128,
    refcount_table_clusters: u128,
    nb_snapshots: u128,
    snapshots_offset: u128,
    incompatible_features: u128,
}

impl Fields {
    /// The fields of `header` (qcow2.txt, "Header"); features only for version 3.
    fn of(header: &[u8]) -> Self {
        let version = be::<4>(header, 4);
        Self {
            version,
            backing_file_offset: be::<8>(header, 8),
            backing_file_size: be::<4>(header, 16),
            cluster_bits: be::<4>(header, 20),
            size: be::<8>(header, 24),
            crypt_method: be::<4>(header, 32),
            l1_size: be::<4>(header, 36),
            l1_table_offset: be::<8>(header, 40),
            refcount_table_offset: be::<8>(header, 48),
            refcount_table_clusters: be::<4>(header, 56),
            nb_snapshots: be::<4>(header, 60),
            snapshots_offset: be::<8>(header, 64),
            incompatible_features: if version == 3 { be::<8>(header, 72) } else { 0 },
        }
    }
}

/// Whether `len` bytes at `start` are in a file of `file_len` bytes: all of them (`cluster`
/// `None`), or each in a cluster that starts before the end of the file.
fn in_file(start: u128, len: u128, file_len: u64, cluster: Option<u128>) -> bool {
    let end = start + len;
    let file_len = u128::from(file_len);
    let limit = match cluster {
        None => file_len,
        Some(cluster) => file_len.div_ceil(cluster) * cluster,
    };
    len == 0 || (end <= u128::from(u64::MAX) && end <= limit)
}

/// The verdict the rules give for an image of `file_len` bytes starting with `header`.
fn expected(header: &[u8], file_len: u64) -> Verdict {
    use Verdict::{Accept, Corrupt, Unsupported};
    if header.len() < 72 || header.get(..4) != Some(b"QFI\xfb".as_slice()) {
        return Corrupt;
    }
    let f = Fields::of(header);
    match f.version {
        2 => {}
        3 if header.len() < 104 => return Corrupt,
        3 => {}
        _ => return Unsupported,
    }
    if !(9..=21).contains(&f.cluster_bits) {
        return Corrupt;
    }
    let cluster = 1u128 << f.cluster_bits;
    let features = f.incompatible_features;
    let rules = [
        (f.crypt_method != 0, Unsupported),
        (features & 0b10 != 0, Corrupt),
        (features & !0b100 != 0, Unsupported),
        (f.l1_size > 4 << 20, Corrupt),
        (f.l1_size * (cluster / 8 * cluster) < f.size, Corrupt),
        (
            !in_file(f.l1_table_offset, f.l1_size * 8, file_len, None),
            Corrupt,
        ),
        (
            !in_file(
                f.refcount_table_offset,
                f.refcount_table_clusters * cluster,
                file_len,
                Some(cluster),
            ),
            Corrupt,
        ),
        (
            !in_file(
                f.snapshots_offset,
                f.nb_snapshots * 40,
                file_len,
                Some(cluster),
            ),
            Corrupt,
        ),
        (
            !in_file(f.backing_file_offset, f.backing_file_size, file_len, None),
            Corrupt,
        ),
    ];
    rules
        .iter()
        .find(|(broken, _)| *broken)
        .map_or(Accept, |(_, verdict)| *verdict)
}

/// The summary holds the header's fields.
fn assert_decoded(summary: &HeaderSummary, header: &[u8]) {
    let f = Fields::of(header);
    let got = [
        u128::from(summary.version),
        u128::from(summary.backing_file_offset),
        u128::from(summary.backing_file_size),
        u128::from(summary.cluster_bits),
        u128::from(summary.size),
        u128::from(summary.crypt_method),
        u128::from(summary.l1_size),
        u128::from(summary.l1_table_offset),
        u128::from(summary.refcount_table_offset),
        u128::from(summary.refcount_table_clusters),
        u128::from(summary.nb_snapshots),
        u128::from(summary.snapshots_offset),
        u128::from(summary.incompatible_features),
    ];
    let want = [
        f.version,
        f.backing_file_offset,
        f.backing_file_size,
        f.cluster_bits,
        f.size,
        f.crypt_method,
        f.l1_size,
        f.l1_table_offset,
        f.refcount_table_offset,
        f.refcount_table_clusters,
        f.nb_snapshots,
        f.snapshots_offset,
        f.incompatible_features,
    ];
    assert_eq!(got, want, "{summary:?}");
}

/// The summary's fields written into a fresh version-`summary.version` header parse back to the
/// same summary, which gets the same verdict.
fn assert_reencodes(summary: &HeaderSummary, file_len: u64, verdict: Verdict) {
    let mut header = [0u8; 104];
    let mut put = |at: usize, bytes: &[u8]| header[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, b"QFI\xfb");
    put(4, &summary.version.to_be_bytes());
    put(8, &summary.backing_file_offset.to_be_bytes());
    put(16, &summary.backing_file_size.to_be_bytes());
    put(20, &summary.cluster_bits.to_be_bytes());
    put(24, &summary.size.to_be_bytes());
    put(32, &summary.crypt_method.to_be_bytes());
    put(36, &summary.l1_size.to_be_bytes());
    put(40, &summary.l1_table_offset.to_be_bytes());
    put(48, &summary.refcount_table_offset.to_be_bytes());
    put(56, &summary.refcount_table_clusters.to_be_bytes());
    put(60, &summary.nb_snapshots.to_be_bytes());
    put(64, &summary.snapshots_offset.to_be_bytes());
    put(72, &summary.incompatible_features.to_be_bytes());
    let len = if summary.version == 2 { 72 } else { 104 };
    let again = HeaderSummary::parse(&header[..len]);
    assert_eq!(again.as_ref().ok(), Some(summary), "re-encoded: {again:?}");
    let again = again.map_or(Verdict::Corrupt, |s| verdict_of(s.check(file_len)));
    assert_eq!(again, verdict, "re-encoded {summary:?}");
}

/// An accepted header is one imago can be given: clusters of 512 bytes to 2 MiB, an L1 table
/// of at most 32 MiB that covers the virtual size and lies whole in the file.
fn assert_bounded(summary: &HeaderSummary, file_len: u64) {
    let cluster = summary.cluster_size().get();
    assert!((512..=2 << 20).contains(&cluster), "{summary:?}");
    let l1_bytes = u128::from(summary.l1_size) * 8;
    assert!(l1_bytes <= 32 << 20, "{summary:?}");
    let covered = u128::from(summary.l1_size) * u128::from(cluster / 8 * cluster);
    assert!(covered >= u128::from(summary.size), "{summary:?}");
    if l1_bytes > 0 {
        assert!(
            u128::from(summary.l1_table_offset) + l1_bytes <= u128::from(file_len),
            "{summary:?}"
        );
    }
}
