//! Images cut short: whatever their metadata points at past the end of the file is damage
//! (`SourceError::Corrupt`, naming the file), never zeros. Images qemu made, which may end inside
//! their last cluster, still read exactly as qemu reads them.

use super::*;
use std::path::PathBuf;

/// qemu's default cluster size.
const CLUSTER: u64 = 64 << 10;

/// The image of the report: `qemu-img create -f qcow2 <name> 512M`, then
/// `qemu-io -c 'write -P 0x5a 0 30M'`.
fn written_512m(dir: &Path, name: &str) -> Result<PathBuf, Box<dyn Error>> {
    let path = dir.join(name);
    create(&path, Some("512M"), None)?;
    qemu_io(&path, &["write -P 0x5a 0 30M"])?;
    Ok(path)
}

/// Writes the first `len` bytes of `image` to `to` (`head -c len image > to`).
fn cut(image: &Path, to: &Path, len: usize) -> TestResult {
    let bytes = std::fs::read(image)?;
    std::fs::write(to, bytes.get(..len).ok_or("image shorter than the cut")?)?;
    Ok(())
}

/// Asserts that `err` is `Corrupt` about `path`, and that its message says the image is damaged,
/// names the file and contains every one of `hints`.
fn assert_corrupt(err: &SourceError, path: &Path, hints: &[&str]) -> TestResult {
    let SourceError::Corrupt { path: about, .. } = err else {
        return Err(format!("not Corrupt: {err}").into());
    };
    assert_eq!(about, path, "{err}");
    let message = err.to_string();
    assert!(message.contains("is damaged"), "{message}");
    assert!(message.contains(arg(path)?), "{message}");
    for hint in hints {
        assert!(message.contains(hint), "{hint}: {message}");
    }
    Ok(())
}

/// The error of a read of `len` bytes at guest `offset` of `source`, which must fail.
fn read_err(source: &dyn DiskSource, offset: u64, len: usize) -> Result<SourceError, String> {
    let mut buf = vec![0u8; len];
    match source.read_at(&mut buf, offset) {
        Ok(()) => Err(format!("the read at {offset} succeeded")),
        Err(err) => Ok(err),
    }
}

#[test]
fn image_cut_in_its_metadata_is_corrupt_at_open() -> TestResult {
    let dir = tempfile::tempdir()?;
    let base = written_512m(dir.path(), "base.qcow2")?;
    let cut_path = dir.path().join("t.qcow2");
    cut(&base, &cut_path, 100_000)?;
    let err = open_err(&cut_path)?;
    assert_corrupt(
        &err,
        &cut_path,
        &["L1 table at bytes 196608..196616", "(100000 bytes)"],
    )
}

#[test]
fn image_cut_in_its_data_is_corrupt_not_zeros() -> TestResult {
    let dir = tempfile::tempdir()?;
    let base = written_512m(dir.path(), "base.qcow2")?;
    let cut_path = dir.path().join("t20.qcow2");
    cut(&base, &cut_path, 20 * MIB)?;
    // The header, L1 and L2 tables are whole: the image opens.
    let source = open(&cut_path)?;

    // Guest offset 0 is stored at byte 0x50000, after the header, the refcount table and block,
    // and the L1 and L2 tables: the first cluster missing is the one at the cut.
    let err = source.data_ranges().err().ok_or("data ranges listed")?;
    let missing = "guest offset 20643840 is stored at byte 20971520 of";
    assert_corrupt(&err, &cut_path, &[missing, "past the end"])?;
    let err = read_err(source.as_ref(), 25 << 20, MIB)?;
    assert_corrupt(&err, &cut_path, &["past the end"])?;
    // A read reaching from the clusters that are there into those that are not fails too.
    let err = read_err(source.as_ref(), 19 << 20, 2 * MIB)?;
    assert_corrupt(&err, &cut_path, &["past the end"])?;

    // What is there still reads.
    let mut buf = vec![0u8; MIB];
    source.read_at(&mut buf, 0)?;
    assert!(buf.iter().all(|byte| *byte == 0x5a));
    Ok(())
}

#[test]
fn image_cut_in_an_l2_table_is_corrupt_at_open() -> TestResult {
    let dir = tempfile::tempdir()?;
    let base = written_512m(dir.path(), "base.qcow2")?;
    let bytes = std::fs::read(&base)?;
    let be_u64 = |at: usize| -> Result<u64, Box<dyn Error>> {
        let field = bytes.get(at..at + 8).ok_or("image too short")?;
        Ok(u64::from_be_bytes(field.try_into()?))
    };
    let l1_table = usize::try_from(be_u64(40)?)?;
    let l2_table = usize::try_from(be_u64(l1_table)? & 0x00ff_ffff_ffff_fe00)?;
    assert_ne!(l2_table, 0, "no L2 table");

    let cut_path = dir.path().join("t.qcow2");
    cut(&base, &cut_path, l2_table + 4096)?;
    let err = open_err(&cut_path)?;
    assert_corrupt(&err, &cut_path, &["L1 entry 0", "L2 table"])
}

#[test]
fn compressed_cluster_past_the_end_is_corrupt() -> TestResult {
    let dir = tempfile::tempdir()?;
    let raw = dir.path().join("disk.raw");
    let qcow2 = dir.path().join("disk.qcow2");
    // Clusters of 2 KiB of noise and 2 KiB of zeros: each compresses to a bit over 2 KiB.
    let mut data = vec![0u8; MIB];
    let mut state = 0x2545_f491_u32;
    for cluster in data.chunks_mut(4096) {
        for byte in cluster.iter_mut().take(2048) {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *byte = state.to_le_bytes()[0];
        }
    }
    std::fs::write(&raw, &data)?;
    convert(&raw, &qcow2, &["-c", "-o", "cluster_size=4096"])?;
    let len = std::fs::metadata(&qcow2)?.len();
    let cut_path = dir.path().join("cut.qcow2");
    cut(&qcow2, &cut_path, usize::try_from(len / 2 / 4096 * 4096)?)?;

    // Compressed clusters are checked when read: the image opens, its ranges list.
    let source = open(&cut_path)?;
    assert_eq!(source.data_ranges()?, vec![0..len_u64(MIB)]);
    let err = read_all(source.as_ref())
        .err()
        .ok_or("the whole image read")?;
    let err = err
        .downcast::<SourceError>()
        .map_err(|err| format!("not a source error: {err}"))?;
    assert_corrupt(&err, &cut_path, &["past the end"])?;
    let mut first = vec![0u8; 4096];
    source.read_at(&mut first, 0)?;
    assert!(first.get(..4096) == data.get(..4096));
    Ok(())
}

#[test]
fn truncated_backing_file_is_corrupt_naming_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let base = written_512m(dir.path(), "base.qcow2")?;
    let top = dir.path().join("top.qcow2");
    create(&top, None, Some(("base.qcow2", "qcow2")))?;
    qemu_io(&top, &["write -P 0x11 100M 64k"])?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&base)?
        .set_len(20 << 20)?;

    let source = open(&top)?;
    let err = source.data_ranges().err().ok_or("data ranges listed")?;
    assert_corrupt(&err, &top, &["base.qcow2", "past the end"])?;
    let err = read_err(source.as_ref(), 25 << 20, 4096)?;
    assert_corrupt(&err, &top, &["base.qcow2"])
}

#[test]
fn images_ending_inside_their_last_cluster_read_like_qemu() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut images = Vec::new();
    let mut add = |name: &str, options: &[&str], writes: &[&str]| -> TestResult {
        let path = dir.path().join(name);
        let args = [
            &["create", "-q", "-f", "qcow2"][..],
            options,
            &[arg(&path)?, "8M"],
        ]
        .concat();
        qemu("qemu-img", &args)?;
        if !writes.is_empty() {
            qemu_io(&path, writes)?;
        }
        images.push(path);
        Ok(())
    };
    let writes = ["write -P 0x5a 1000 3000", "write -P 0xa5 5M 512"];
    // Fresh: the file ends 8 bytes into the L1 table's cluster.
    add("fresh.qcow2", &[], &[])?;
    add("v2.qcow2", &["-o", "compat=0.10"], &writes)?;
    add("small-clusters.qcow2", &["-o", "cluster_size=512"], &writes)?;
    add("large-clusters.qcow2", &["-o", "cluster_size=2M"], &writes)?;
    add("metadata.qcow2", &["-o", "preallocation=metadata"], &writes)?;
    add("cut.qcow2", &[], &["write -P 0x5a 64k 4k"])?;

    // The last cluster of cut.qcow2 holds the 4 KiB written and zeros: end the file after them.
    let last = images.last().ok_or("no image")?;
    let len = std::fs::metadata(last)?.len();
    assert_eq!(len % CLUSTER, 0, "qemu wrote a whole cluster");
    let file = std::fs::OpenOptions::new().write(true).open(last)?;
    file.set_len(len - CLUSTER + 4096)?;

    // Compressed: the file ends where the last compressed cluster does.
    let raw = dir.path().join("disk.raw");
    patterned_raw(&raw)?;
    let compressed = dir.path().join("compressed.qcow2");
    convert(&raw, &compressed, &["-c"])?;
    images.push(compressed);

    for image in &images {
        qemu("qemu-img", &["check", "-q", arg(image)?])?;
        let expected = qemu_view(image)?;
        let source = open(image)?;
        assert!(
            read_all(source.as_ref())? == expected,
            "{}",
            image.display()
        );
        assert_ranges_cover(&source.data_ranges()?, &expected);
    }
    Ok(())
}
