//! Writes the seed inputs in `seeds/<target>/`: one or a few valid files
//! per decoder, so that the fuzzer starts from inputs that get past the
//! first checks (a zstd frame, a pack sealed under the fuzz key, JSON with
//! every field) instead of having to find them by chance.
//!
//! `cargo run --example make_seeds` from `fuzz/`. Salts and nonces are
//! random, so the bytes differ from run to run; any run's seeds will do.

use std::fs;
use std::path::Path;

use vmstash_fuzz::master;
use vmstash_repo::blob::BlobType;
use vmstash_repo::chunkmap;
use vmstash_repo::config::{ChunkSize, Config, DEFAULT_CHUNK_SIZE};
use vmstash_repo::entry::BlobEntry;
use vmstash_repo::id::Id;
use vmstash_repo::index::{self, IndexedPack};
use vmstash_repo::keyfile::{KdfParams, KeyFile};
use vmstash_repo::pack::PackWriter;
use vmstash_repo::payload;
use vmstash_repo::sealed::{self, FileType};
use vmstash_repo::snapshot::{Disk, Manifest, Summary};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn main() -> Result {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let write = |target: &str, name: &str, bytes: &[u8]| -> Result {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(name), bytes)?;
        Ok(())
    };

    let chunk = ChunkSize::new(DEFAULT_CHUNK_SIZE)?;
    write(
        "config",
        "default",
        &Config::new(chunk, 3, "2026-11-26T10:00:00Z")?.encode(),
    )?;

    let cheap = KdfParams {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    };
    let key = KeyFile::create(&master(), b"pw", cheap, "u", "h", "2026-11-26T10:00:00Z")?;
    write("keyfile", "cheap-kdf", &key.encode())?;

    let mut m = manifest();
    write("manifest", "one-disk", &m.encode())?;
    // Encoded as 7.3588302070000005: a float that needs exact parsing.
    m.summary.duration_seconds = std::time::Duration::new(7, 358_830_207).as_secs_f64();
    write("manifest", "17-digit-duration", &m.encode())?;

    let packs = vec![indexed(b"p1", 2), indexed(b"p2", 1)];
    write("index", "two-packs", &index::encode(&packs))?;
    write("index", "empty", &index::encode(&[]))?;

    // pack_header: mode 0 (forged header), mode 1 (tampered real pack),
    // and a real pack under the fuzz key for the raw half.
    let mut forged = vec![0, 0, 1];
    let entries = &packs[0].blobs;
    forged.extend_from_slice(&u32::try_from(entries.len())?.to_le_bytes());
    for e in entries {
        e.encode_into(&mut forged);
    }
    write("pack_header", "forged", &forged)?;
    let mut choices = vec![1, 40, 0, 1, 3];
    for (spec, run) in [
        (0x30u8, &b"abc"[..]),
        (0x01, b"map"),
        (0x02, b"lie"),
        (0xf0, b"z"),
    ] {
        choices.extend_from_slice(&[spec, u8::try_from(run.len())?]);
        choices.extend_from_slice(run);
    }
    write("pack_header", "tampered", &choices)?;
    let mut w = PackWriter::new(&master(), 1024);
    let text = b"hello ".repeat(50);
    w.add(
        BlobType::Data,
        Id::of(&text),
        u32::try_from(text.len())?,
        &payload::encode(&text, 3),
    )?;
    write("pack_header", "real-pack", &w.finish().bytes)?;

    write(
        "sealed",
        "zstd-payload",
        &payload::encode(&b"vmstash ".repeat(64), 3),
    )?;
    write("sealed", "stored-payload", &payload::encode(b"\x8f\x01", 3))?;
    write(
        "sealed",
        "index-file",
        &sealed::seal(&master(), FileType::Index, &index::encode(&packs), 3),
    )?;
    write(
        "sealed",
        "map-segment",
        &chunkmap::encode_segment(&[Id::ZERO, Id::of(b"x")]),
    )?;
    Ok(())
}

fn manifest() -> Manifest {
    Manifest {
        version: 1,
        time: "2026-11-26T10:00:00Z".into(),
        hostname: "host".into(),
        username: "user".into(),
        name: "web1".into(),
        tags: vec!["nightly".into()],
        parent: Some(Id::of(b"parent")),
        disks: vec![Disk {
            name: "vda".into(),
            source: "/var/lib/libvirt/images/web1.qcow2".into(),
            format: "qcow2".into(),
            size: 300 * 1024 * 1024,
            chunk_size: DEFAULT_CHUNK_SIZE,
            map: vec![Id::ZERO, Id::of(b"segment")],
        }],
        domain_xml: Some("<domain/>".into()),
        summary: Summary {
            disk_bytes: 300 * 1024 * 1024,
            bytes_read: 1 << 20,
            bytes_added: 4096,
            chunks: 1200,
            zero_chunks: 1000,
            new_chunks: 3,
            duration_seconds: 12.375,
        },
    }
}

fn indexed(tag: &[u8], blobs: u32) -> IndexedPack {
    IndexedPack {
        id: Id::of(tag),
        salt: [3; 32],
        blobs: (0..blobs)
            .map(|i| BlobEntry {
                ty: if i % 2 == 0 {
                    BlobType::Data
                } else {
                    BlobType::Map
                },
                id: Id::of(&i.to_le_bytes()),
                offset: 34 + 100 * i,
                length: 100,
                raw_length: 60,
            })
            .collect(),
    }
}
