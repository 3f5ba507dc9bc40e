//! Headers that are cut short, damaged, encrypted or ask for features vmstash cannot read.

use super::*;

#[test]
fn truncated_header_is_corrupt() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("disk.qcow2");
    create(&path, Some("1M"), None)?;
    let image = std::fs::read(&path)?;
    for len in [4, 50, 71, 80, 103] {
        std::fs::write(&path, image.get(..len).ok_or("image too short")?)?;
        let err = open_err(&path)?;
        assert!(matches!(err, SourceError::Corrupt { .. }), "{len}: {err}");
    }
    Ok(())
}

#[test]
fn garbage_after_magic_gives_errors_not_panics() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("garbage.img");
    let mut seed = 0x1234_5678_u32;
    for round in 0..50 {
        let mut bytes = MAGIC.to_vec();
        for _ in 0..(round * 97 % 4096) + 8 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            bytes.push(seed.to_be_bytes()[0]);
        }
        std::fs::write(&path, &bytes)?;
        // Whatever happens, it must not panic; reading what opened must not panic either.
        if let Ok(source) = open(&path) {
            let _ = source.data_ranges();
            let mut buf = vec![0u8; 4096.min(usize::try_from(source.size())?)];
            let _ = source.read_at(&mut buf, 0);
        }
    }
    Ok(())
}

#[test]
fn damaged_header_fields_give_errors_not_panics() -> TestResult {
    let dir = tempfile::tempdir()?;
    let raw = dir.path().join("disk.raw");
    let qcow2 = dir.path().join("disk.qcow2");
    let damaged = dir.path().join("damaged.qcow2");
    patterned_raw(&raw)?;
    convert(&raw, &qcow2, &[])?;
    let image = std::fs::read(&qcow2)?;
    // Every byte of the header and the first header extensions, set to 0xff and to 0x80.
    for at in 4..256 {
        for value in [0xff, 0x80] {
            let mut bytes = image.clone();
            if let Some(byte) = bytes.get_mut(at) {
                *byte = value;
            }
            std::fs::write(&damaged, &bytes)?;
            if let Ok(source) = open(&damaged) {
                let _ = source.data_ranges();
                let mut buf = vec![0u8; MIB.min(usize::try_from(source.size())?)];
                let _ = source.read_at(&mut buf, 0);
            }
        }
    }
    Ok(())
}

#[test]
fn encrypted_image_is_unsupported() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("secret.qcow2");
    let secret = "secret,id=sec0,data=123456";
    let luks = "encrypt.format=luks,encrypt.key-secret=sec0";
    let args = [
        "create", "-q", "-f", "qcow2", "--object", secret, "-o", luks,
    ];
    // qemu-img 7.2 times 32768 PBKDF2 rounds to choose the LUKS iteration count and gives up
    // ("Unable to get accurate CPU usage") when they take under its 1 ms clock tick, which a
    // fast CPU sometimes manages: try a few times.
    let argv = [&args[..], &[arg(&path)?, "1M"]].concat();
    let created = (0..5).find_map(|_| qemu("qemu-img", &argv).ok());
    created.ok_or("qemu-img could not create a LUKS-encrypted qcow2 image in 5 tries")?;
    let err = open_err(&path)?;
    assert!(matches!(err, SourceError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("LUKS"), "{err}");
    Ok(())
}

#[test]
fn incompatible_feature_bits_are_refused_with_advice() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("disk.qcow2");
    create(&path, Some("1M"), None)?;
    let image = std::fs::read(&path)?;
    let last = field::INCOMPATIBLE_FEATURES + 7;
    for (bit, expect_corrupt, hint) in [
        (0u8, false, "dirty"),
        (1, true, "check -r all"),
        (3, false, "zstd"),
        (4, false, "extended L2"),
        (7, false, "0x80"),
    ] {
        let mut bytes = image.clone();
        if let Some(byte) = bytes.get_mut(last) {
            *byte |= 1 << bit;
        }
        std::fs::write(&path, &bytes)?;
        let err = open_err(&path)?;
        let corrupt = matches!(err, SourceError::Corrupt { .. });
        assert_eq!(corrupt, expect_corrupt, "bit {bit}: {err}");
        assert!(err.to_string().contains(hint), "bit {bit}: {err}");
    }
    Ok(())
}

#[test]
fn virtual_size_beyond_the_l1_table_is_corrupt() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("disk.qcow2");
    create(&path, Some("1M"), None)?;
    let mut bytes = std::fs::read(&path)?;
    if let Some(size) = bytes.get_mut(field::SIZE..field::SIZE + 8) {
        size.copy_from_slice(&u64::MAX.to_be_bytes());
    }
    std::fs::write(&path, &bytes)?;
    let err = open_err(&path)?;
    assert!(matches!(err, SourceError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("L1 table"), "{err}");
    Ok(())
}
