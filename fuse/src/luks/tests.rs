//! The LUKS reader on volumes made by cryptsetup (`testdata/make-luks.sh`, run once per test
//! process into a temporary directory), their data encrypted by cryptsetup itself (LUKS2) or
//! by OpenSSL through Python (LUKS1), and on damaged copies of them.

use std::sync::{Arc, OnceLock};

use serde_json::Value;

use super::*;
use crate::guestfs::{DeviceError, Owner};

const PASS: &[u8] = b"vmstash-test-passphrase";
const PASS2: &[u8] = b"second passphrase";
const MIB: usize = 1 << 20;

/// The made volumes, and the plaintexts they hold at their start.
struct Fixtures {
    /// Of `luks1` and `luks2_pbkdf2`: an ext4, then a pattern.
    plain: Vec<u8>,
    /// Of `luks2_argon2id`: a pattern.
    plain_4k: Vec<u8>,
    luks1: Vec<u8>,
    luks1_cbc: Vec<u8>,
    luks2_pbkdf2: Vec<u8>,
    luks2_argon2id: Vec<u8>,
    keys: [(String, String); 4],
}

/// The plaintext: the ext4 image of `testdata/` (256 KiB), then a pattern up to 1 MiB.
fn plaintext() -> Vec<u8> {
    let mut p = zstd::decode_all(&include_bytes!("../../testdata/ext4.img.zst")[..]).expect("zstd");
    let n = p.len();
    p.extend(&pattern()[n..]);
    p
}

/// 1 MiB of a pattern that does not repeat every sector.
fn pattern() -> Vec<u8> {
    (0..MIB)
        .map(|i| u8::try_from(i * 7 % 251).expect("byte"))
        .collect()
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vmstash-luks-test-{}", std::process::id()));
        let (plain, plain_4k) = (plaintext(), pattern());
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("plain"), &plain).expect("write plaintext");
        std::fs::write(dir.join("plain-4k"), &plain_4k).expect("write plaintext");
        let status = std::process::Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/testdata/make-luks.sh"
            ))
            .arg(&dir)
            .arg(dir.join("plain"))
            .arg(dir.join("plain-4k"))
            .status()
            .expect("run make-luks.sh (needs cryptsetup and python3-cryptography)");
        assert!(status.success(), "make-luks.sh failed");
        let read = |name: &str| std::fs::read(dir.join(name)).expect(name);
        let key = |name: &str| {
            (
                name.to_owned(),
                String::from_utf8(read(&format!("{name}.key"))).expect("hex"),
            )
        };
        let f = Fixtures {
            luks1: read("luks1.img"),
            luks1_cbc: read("luks1-cbc.img"),
            luks2_pbkdf2: read("luks2-pbkdf2.img"),
            luks2_argon2id: read("luks2-argon2id.img"),
            keys: [
                key("luks1"),
                key("luks1-cbc"),
                key("luks2-pbkdf2"),
                key("luks2-argon2id"),
            ],
            plain,
            plain_4k,
        };
        std::fs::remove_dir_all(&dir).expect("clean up");
        f
    })
}

fn dev(bytes: &[u8]) -> Arc<dyn Device> {
    Arc::new(bytes.to_vec())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read_all(d: &dyn Device, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    d.read_at(0, &mut buf).expect("read");
    buf
}

/// Opens `img`, checks the volume key against cryptsetup's and the data against the
/// plaintext.
fn opens_and_decrypts(img: &[u8], key_name: &str, pass: &[u8]) -> LuksDevice {
    let f = fixtures();
    let plain = if key_name == "luks2-argon2id" {
        &f.plain_4k
    } else {
        &f.plain
    };
    let header = Header::read(&img.to_vec()).expect("header");
    let key = unlock::unlock(&header, &img.to_vec(), pass, &KdfLimits::DEFAULT).expect("unlock");
    let (_, expected) = f.keys.iter().find(|(n, _)| n == key_name).expect("key");
    assert_eq!(&hex(&key.0), expected, "the volume key cryptsetup dumps");
    let luks = open(dev(img), pass).expect("open");
    assert!(
        read_all(&luks, plain.len()) == *plain,
        "{key_name}: the plaintext"
    );
    luks
}

#[test]
fn luks1_pbkdf2_sha256_opens_and_decrypts() {
    let f = fixtures();
    let luks = opens_and_decrypts(&f.luks1, "luks1", PASS);
    assert_eq!(
        luks.len(),
        u64::try_from(MIB).expect("fits"),
        "payload to the end"
    );
    let h = luks.header();
    assert_eq!(h.version, 1);
    assert_eq!(h.uuid.len(), 36);
    assert_eq!(h.segment.offset, 2 << 20);
    assert_eq!(h.keyslots.len(), 1);
    assert!(recognises(&f.luks1));
}

#[test]
fn luks1_aes_cbc_essiv_sha256_with_pbkdf2_sha1() {
    let f = fixtures();
    let luks = opens_and_decrypts(&f.luks1_cbc, "luks1-cbc", PASS);
    assert_eq!(luks.header().segment.encryption, "aes-cbc-essiv:sha256");
}

#[test]
fn luks2_pbkdf2_and_its_second_key_slot() {
    let f = fixtures();
    let luks = opens_and_decrypts(&f.luks2_pbkdf2, "luks2-pbkdf2", PASS);
    let h = luks.header();
    assert_eq!((h.version, h.label.as_str()), (2, "vmstash-test"));
    assert_eq!(h.copy, HeaderCopy::Primary);
    assert_eq!(h.segment.sector_size, 512);
    assert_eq!(h.segment.size, None, "dynamic");
    assert_eq!(luks.len(), 2 << 20, "the device less the 1 MiB header");
    let kdfs: Vec<(u32, &str)> = h
        .keyslots
        .iter()
        .map(|k| (k.id, k.kdf_name.as_str()))
        .collect();
    assert_eq!(kdfs, [(0, "pbkdf2"), (1, "pbkdf2")]);
    opens_and_decrypts(&f.luks2_pbkdf2, "luks2-pbkdf2", PASS2);
}

#[test]
fn luks2_argon2id_with_4096_byte_sectors() {
    let f = fixtures();
    let luks = opens_and_decrypts(&f.luks2_argon2id, "luks2-argon2id", PASS);
    assert_eq!(luks.header().segment.sector_size, 4096);
    assert_eq!(luks.header().keyslots[0].kdf_name, "argon2id");
}

#[test]
fn a_wrong_passphrase_is_said_so() {
    let f = fixtures();
    for img in [&f.luks1, &f.luks1_cbc, &f.luks2_pbkdf2, &f.luks2_argon2id] {
        let e = open(dev(img), b"not the passphrase")
            .err()
            .expect("refused");
        assert!(matches!(e, LuksError::WrongPassphrase), "{e}");
        assert_eq!(e.to_string(), "no key slot opens with this passphrase");
    }
}

#[test]
fn reads_at_odd_offsets_and_lengths() {
    let f = fixtures();
    for (img, plain) in [
        (&f.luks1, &f.plain),
        (&f.luks1_cbc, &f.plain),
        (&f.luks2_pbkdf2, &f.plain),
        (&f.luks2_argon2id, &f.plain_4k),
    ] {
        let luks = open(dev(img), PASS).expect("open");
        for (at, len) in [
            (0usize, 1usize),
            (1, 7),
            (511, 2),
            (513, 1000),
            (4095, 4098),
            (4097, 12_345),
            (300_001, 99_999),
            (MIB - 3, 3),
        ] {
            let mut buf = vec![0u8; len];
            luks.read_at(u64::try_from(at).expect("fits"), &mut buf)
                .expect("read");
            assert!(buf == plain[at..at + len], "{len} bytes at {at}");
        }
        // A read longer than one run (MAX_RUN), against the same bytes read in pieces.
        let len = usize::try_from(luks.len()).expect("fits") - 5;
        let mut whole = vec![0u8; len];
        luks.read_at(3, &mut whole).expect("long read");
        for (i, piece) in whole.chunks(70_001).enumerate() {
            let mut again = vec![0u8; piece.len()];
            luks.read_at(3 + u64::try_from(i * 70_001).expect("fits"), &mut again)
                .expect("piece");
            assert!(again == piece, "piece {i}");
        }
        let mut b = [0u8; 2];
        assert!(matches!(
            luks.read_at(luks.len() - 1, &mut b),
            Err(DeviceError::PastEnd(_))
        ));
        assert!(luks.read_at(u64::MAX, &mut b).is_err());
    }
}

#[test]
fn the_filesystem_inside_opens() {
    let f = fixtures();
    for img in [&f.luks1, &f.luks2_pbkdf2] {
        let luks: Arc<dyn Device> = Arc::new(open(dev(img), PASS).expect("open"));
        let fs = crate::guestfs::open(luks, Owner { uid: 0, gid: 0 })
            .expect("open the filesystem")
            .expect("a filesystem");
        assert_eq!(fs.type_name(), "ext4");
        let names: Vec<String> = fs
            .read_dir(fs.root())
            .expect("root")
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect();
        assert!(names.iter().any(|n| n == "hello"), "{names:?}");
    }
}

#[test]
fn recognises_only_primary_headers_of_versions_1_and_2() {
    let f = fixtures();
    assert!(recognises(&f.luks2_pbkdf2));
    assert!(!recognises(&f.luks2_pbkdf2[16384..]), "the secondary");
    assert!(!recognises(b"LUKS\xba\xbe\x00\x03"));
    assert!(!recognises(b"LUKS"));
    assert!(!recognises(&[0u8; 4096]));
}

/// The header size of the LUKS2 volume `img`.
fn hdr_size(img: &[u8]) -> usize {
    usize::try_from(u64::from_be_bytes(img[8..16].try_into().expect("8 bytes"))).expect("fits")
}

/// Edits the JSON of both header copies of `img` with `edit` and reseals their checksums.
fn rewrite_json(img: &mut [u8], edit: impl Fn(&mut Value)) {
    let size = hdr_size(img);
    for at in [0, size] {
        let copy = &mut img[at..at + size];
        let area = &mut copy[luks2::BINARY_LEN..];
        let end = area.iter().position(|&c| c == 0).expect("NUL");
        let mut json: Value = serde_json::from_slice(&area[..end]).expect("json");
        edit(&mut json);
        let text = serde_json::to_vec(&json).expect("json");
        area.fill(0);
        area[..text.len()].copy_from_slice(&text);
        luks2::reseal(copy);
    }
}

#[test]
fn a_damaged_primary_header_gives_way_to_the_secondary() {
    let f = fixtures();
    let mut img = f.luks2_pbkdf2.clone();
    img[4096 + 20] ^= 1; // inside the primary's JSON: its checksum fails
    let luks = open(dev(&img), PASS).expect("open through the secondary");
    assert_eq!(luks.header().copy, HeaderCopy::Secondary);
    assert_eq!(read_all(&luks, 4096), f.plain[..4096]);
    // The primary wiped out: not recognised, but the header is still there.
    img[..4096].fill(0);
    assert!(!recognises(&img));
    let h = Header::read(&img).expect("secondary");
    assert_eq!(
        (h.copy, h.label.as_str()),
        (HeaderCopy::Secondary, "vmstash-test")
    );
}

#[test]
fn both_copies_damaged_is_corrupt() {
    let f = fixtures();
    let mut img = f.luks2_pbkdf2.clone();
    let size = hdr_size(&img);
    img[4096 + 20] ^= 1;
    img[size + 4096 + 20] ^= 1;
    let e = open(dev(&img), PASS).err().expect("damaged");
    assert!(
        matches!(&e, LuksError::Corrupt(m) if m.contains("both") && m.contains("checksum")),
        "{e}"
    );
    let e = Header::read(&vec![0u8; 1 << 20]).expect_err("nothing");
    assert!(matches!(e, LuksError::Corrupt(_)), "{e}");
}

#[test]
fn damaged_json_with_good_checksums_is_corrupt() {
    let f = fixtures();
    let mut img = f.luks2_pbkdf2.clone();
    let size = hdr_size(&img);
    for at in [0, size] {
        let copy = &mut img[at..at + size];
        copy[luks2::BINARY_LEN] = b'[';
        luks2::reseal(copy);
    }
    let e = open(dev(&img), PASS).err().expect("damaged");
    assert!(
        matches!(&e, LuksError::Corrupt(m) if m.contains("JSON")),
        "{e}"
    );
    let mut img = f.luks2_pbkdf2.clone();
    rewrite_json(&mut img, |j| j["segments"]["0"]["offset"] = "x".into());
    let e = open(dev(&img), PASS).err().expect("damaged");
    assert!(
        matches!(&e, LuksError::Corrupt(m) if m.contains("segment offset")),
        "{e}"
    );
}

#[test]
fn huge_argon2_memory_is_refused_without_allocating() {
    let f = fixtures();
    let mut img = f.luks2_argon2id.clone();
    rewrite_json(&mut img, |j| {
        j["keyslots"]["0"]["kdf"]["memory"] = Value::from(u32::MAX);
    });
    // 4 TiB of memory: were it allocated, the test would fail with an allocation error.
    let e = open(dev(&img), PASS).err().expect("refused");
    assert!(
        matches!(&e, LuksError::TooCostly(m) if m.contains("key slot 0") && m.contains("KiB")),
        "{e}"
    );
    let mut img = f.luks2_pbkdf2.clone();
    rewrite_json(&mut img, |j| {
        j["keyslots"]["0"]["kdf"]["iterations"] = Value::from(u32::MAX);
    });
    // Slot 0 refused, slot 1 (the second passphrase) still opens.
    let luks = open(dev(&img), PASS2).expect("slot 1");
    assert_eq!(read_all(&luks, 512), f.plain[..512]);
    let e = open_with_limits(
        dev(&f.luks2_argon2id),
        PASS,
        &KdfLimits {
            max_argon2_memory_kib: 16,
            ..KdfLimits::FUZZ
        },
    )
    .err()
    .expect("refused");
    assert!(matches!(e, LuksError::TooCostly(_)), "{e}");
    open_with_limits(dev(&f.luks2_argon2id), PASS, &KdfLimits::FUZZ).expect("cheap enough");
}

#[test]
fn fixed_size_segments_and_unsupported_ciphers() {
    let f = fixtures();
    let mut img = f.luks2_pbkdf2.clone();
    rewrite_json(&mut img, |j| j["segments"]["0"]["size"] = "524288".into());
    let luks = open(dev(&img), PASS).expect("open");
    assert_eq!(luks.len(), 524_288);
    rewrite_json(&mut img, |j| {
        j["segments"]["0"]["size"] = "1073741824".into()
    });
    let e = open(dev(&img), PASS).err().expect("too long");
    assert!(
        matches!(&e, LuksError::Corrupt(m) if m.contains("past the device's end")),
        "{e}"
    );
    let mut img = f.luks2_pbkdf2.clone();
    rewrite_json(&mut img, |j| {
        j["segments"]["0"]["encryption"] = "serpent-xts-plain64".into();
    });
    let e = open(dev(&img), PASS).err().expect("unsupported");
    assert!(
        matches!(&e, LuksError::Unsupported(m) if m.contains("serpent-xts-plain64")),
        "{e}"
    );
    assert!(Header::read(&img).is_ok(), "a locked volume still shows");
    let mut img = f.luks2_pbkdf2.clone();
    rewrite_json(&mut img, |j| {
        j["segments"]["0"]["sector_size"] = Value::from(1000)
    });
    assert!(matches!(open(dev(&img), PASS), Err(LuksError::Corrupt(_))));
}

#[test]
fn a_truncated_device_and_damaged_luks1_slots() {
    let f = fixtures();
    // Cut inside slot 0's key material: it cannot be read, and that is damage.
    let short = f.luks1[..8192].to_vec();
    let header = Header::read(&short).expect("header");
    let e = unlock::unlock(&header, &short, PASS, &KdfLimits::DEFAULT)
        .err()
        .expect("short");
    assert!(
        matches!(&e, LuksError::Corrupt(m) if m.contains("key slot 0")),
        "{e}"
    );
    let mut img = f.luks1.clone();
    img[208..212].copy_from_slice(&[1, 2, 3, 4]); // slot 0's state
    assert!(matches!(open(dev(&img), PASS), Err(LuksError::Corrupt(_))));
    let mut img = f.luks1.clone();
    img[8..40].fill(0);
    img[8..11].copy_from_slice(b"des");
    let e = open(dev(&img), PASS).err().expect("unsupported");
    assert!(
        matches!(&e, LuksError::Unsupported(m) if m.contains("des-xts-plain64")),
        "{e}"
    );
}

#[test]
fn the_fuzz_seeds_open_under_the_fuzz_limits() {
    // fuzz/seeds/luks_header: mode byte 1, then the start of a device padded to 4 MiB.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds/luks_header");
    for name in [
        "luks1-pbkdf2-sha256",
        "luks1-cbc-essiv-sha1",
        "luks2-pbkdf2",
        "luks2-argon2id-4k",
        "luks2-primary-wiped",
    ] {
        let seed = std::fs::read(format!("{dir}/{name}")).expect(name);
        let mut bytes = seed[1..].to_vec();
        bytes.resize(4 << 20, 0);
        let luks = open_with_limits(dev(&bytes), b"vmstash-fuzz", &KdfLimits::FUZZ)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(luks.len() >= 2 << 20, "{name}");
    }
}

/// Decryption throughput, reading 64 MiB in 128 KiB requests (as FUSE asks) from each test
/// volume padded to that size: `cargo test --release -p vmstash-fuse luks::tests::throughput
/// -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn throughput() {
    let f = fixtures();
    for (name, img) in [
        ("LUKS1 aes-xts-plain64 256-bit, 512 B sectors", &f.luks1),
        (
            "LUKS1 aes-cbc-essiv:sha256 256-bit, 512 B sectors",
            &f.luks1_cbc,
        ),
        (
            "LUKS2 aes-xts-plain64 512-bit, 512 B sectors",
            &f.luks2_pbkdf2,
        ),
        (
            "LUKS2 aes-xts-plain64 256-bit, 4 KiB sectors",
            &f.luks2_argon2id,
        ),
    ] {
        let mut bytes = img.clone();
        bytes.resize(bytes.len() + (64 << 20), 0);
        let luks = open(dev(&bytes), PASS).expect("open");
        let mut buf = vec![0u8; 128 << 10];
        let start = std::time::Instant::now();
        let mut at = 0u64;
        while at + 128 * 1024 <= 64 << 20 {
            luks.read_at(at, &mut buf).expect("read");
            at += 128 * 1024;
        }
        let secs = start.elapsed().as_secs_f64();
        println!("{name}: {:.0} MB/s", 64.0 * 1.048_576 / secs);
    }
}
