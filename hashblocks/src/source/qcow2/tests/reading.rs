//! Images and chains that must read exactly as qemu reads them, from one thread or several.

use super::*;

#[test]
fn converted_image_reads_like_the_raw_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    let raw = dir.path().join("disk.raw");
    let qcow2 = dir.path().join("disk.qcow2");
    let expected = patterned_raw(&raw)?;
    convert(&raw, &qcow2, &[])?;

    let source = open(&qcow2)?;
    assert_eq!(source.format(), ImageFormat::Qcow2);
    assert_eq!(source.size(), 4 << 20);
    assert_eq!(read_all(source.as_ref())?, expected);

    let ranges = source.data_ranges()?;
    assert_ranges_cover(&ranges, &expected);
    let covered: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    assert!(
        covered <= 512 << 10,
        "zero clusters not excluded: {ranges:?}"
    );
    Ok(())
}

#[test]
fn compressed_image_reads_like_the_raw_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    let raw = dir.path().join("disk.raw");
    let qcow2 = dir.path().join("disk.qcow2");
    let expected = patterned_raw(&raw)?;
    convert(&raw, &qcow2, &["-c", "-o", "cluster_size=4096"])?;
    let source = open(&qcow2)?;
    assert_eq!(read_all(source.as_ref())?, expected);
    assert_ranges_cover(&source.data_ranges()?, &expected);
    Ok(())
}

#[test]
fn backing_chain_reads_like_qemu() -> TestResult {
    let dir = tempfile::tempdir()?;
    let base_raw = dir.path().join("base.raw");
    patterned_raw(&base_raw)?;
    // mid: qcow2 over the raw base, named relative to its own directory.
    let mid = dir.path().join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    create(&mid, None, Some(("base.raw", "raw")))?;
    qemu_io(&mid, &["write -P 0xab 128k 64k", "write -z 3M 64k"])?;
    // top: qcow2 over mid, larger than mid, with its own writes.
    create(&top, Some("6M"), Some(("mid.qcow2", "qcow2")))?;
    qemu_io(&top, &["write -P 0xcd 1M 4k", "write -P 0xef 5M 8k"])?;

    let expected = qemu_view(&top)?;
    let source = open(&top)?;
    assert_eq!(source.size(), 6 << 20);
    assert_eq!(read_all(source.as_ref())?, expected);

    let ranges = source.data_ranges()?;
    assert_ranges_cover(&ranges, &expected);
    // The zeroed cluster of mid and the part of top beyond the raw base are not data.
    let zeroed = 3 << 20;
    assert!(!ranges.iter().any(|r| r.contains(&zeroed)), "{ranges:?}");
    assert!(!ranges.iter().any(|r| r.contains(&(4 << 20))), "{ranges:?}");
    Ok(())
}

#[test]
fn backing_file_is_found_relative_to_the_image_not_the_cwd() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sub = dir.path().join("images");
    std::fs::create_dir(&sub)?;
    let base_raw = sub.join("base.raw");
    let base = sub.join("base.qcow2");
    let expected = patterned_raw(&base_raw)?;
    convert(&base_raw, &base, &[])?;
    let top = sub.join("top.qcow2");
    create(&top, None, Some(("base.qcow2", "qcow2")))?;
    // The test's working directory has no base.qcow2, so only the right rule finds it.
    let source = open(&top)?;
    assert_eq!(read_all(source.as_ref())?, expected);
    Ok(())
}

#[test]
fn external_data_file_is_read() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ext.qcow2");
    let data_file = format!("data_file={}", arg(&dir.path().join("data.raw"))?);
    let args = ["create", "-q", "-f", "qcow2", "-o", &data_file];
    qemu("qemu-img", &[&args[..], &[arg(&path)?, "1M"]].concat())?;
    qemu_io(&path, &["write -P 0x42 64k 64k"])?;
    let expected = qemu_view(&path)?;
    let source = open(&path)?;
    assert_eq!(read_all(source.as_ref())?, expected);
    assert_eq!(source.data_ranges()?, vec![65536..131072]);
    Ok(())
}

#[test]
fn reads_from_several_threads_agree() -> TestResult {
    let dir = tempfile::tempdir()?;
    let raw = dir.path().join("disk.raw");
    let qcow2 = dir.path().join("disk.qcow2");
    let expected = patterned_raw(&raw)?;
    convert(&raw, &qcow2, &["-o", "cluster_size=4096"])?;
    let source = open(&qcow2)?;
    let source: &dyn DiskSource = source.as_ref();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| read_all(source).map_err(|err| err.to_string())))
            .collect();
        for worker in workers {
            match worker.join() {
                Ok(Ok(data)) => assert!(data == expected, "threaded read differs"),
                Ok(Err(err)) => panic!("threaded read failed: {err}"),
                Err(_) => panic!("reader thread panicked"),
            }
        }
    });
    Ok(())
}
