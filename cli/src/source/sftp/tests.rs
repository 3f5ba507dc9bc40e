//! The raw SFTP source against a private OpenSSH server ([`vmstash_test_support::Sshd`]): an image
//! in the server's directory, read through [`open_sftp_raw`] and compared with the local file.
//! Without `/usr/sbin/sshd` the tests skip with a message, unless `CI=true`, where they fail.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use vmstash_hashblocks::source::test_util::TestResult;
use vmstash_ssh::{SshOptions, SshSession, SshTarget};
use vmstash_test_support::Sshd;

use super::*;

/// Size of the sparse test image.
const IMAGE_SIZE: u64 = 1 << 30;

/// Connects to `sshd` as its user, trusting its host key, and opens an SFTP channel.
fn sftp(sshd: &Sshd) -> Result<Sftp, Box<dyn std::error::Error>> {
    let target = SshTarget {
        user: Some(sshd.user.clone()),
        host: sshd.host().to_owned(),
        port: Some(sshd.port),
    };
    let options = SshOptions {
        identity: Some(sshd.client_key.clone()),
        known_hosts: Some(sshd.known_hosts.clone()),
        accept_new_host_key: false,
        ssh_config: Some(PathBuf::from("/dev/null")),
    };
    Ok(SshSession::connect(&target, &options)?.sftp()?)
}

#[test]
fn sftp_raw_source_reads_a_sparse_image_and_refuses_a_directory() -> TestResult {
    let Some(sshd) = Sshd::start()? else {
        return Ok(());
    };
    let image = sshd.path("disk.img");
    let local = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&image)?;
    local.set_len(IMAGE_SIZE)?;
    let data: Vec<u8> = (0..8192u32)
        .map(|i| (i % 251).to_le_bytes()[0] ^ 0x5a)
        .collect();
    local.write_all_at(&data, 0)?;
    let image_str = image.to_str().ok_or("not UTF-8")?;
    let sftp = sftp(&sshd)?;

    let source = open_sftp_raw(sftp.clone(), image_str, None)?;
    assert_eq!(source.size(), IMAGE_SIZE);
    assert_eq!(source.data_ranges()?, vec![0..IMAGE_SIZE]);
    let mut head = vec![0u8; 4096];
    source.read_at(&mut head, 0)?;
    let mut expected = vec![0u8; 4096];
    local.read_exact_at(&mut expected, 0)?;
    assert!(head == expected);
    assert!(source.read_at(&mut head, IMAGE_SIZE - 1).is_err());

    let dir = sshd.dir.path().to_str().ok_or("not UTF-8")?;
    let err = open_sftp_raw(sftp, dir, None)
        .err()
        .ok_or("a directory was opened as a disk")?;
    assert!(
        matches!(&err, SourceError::Unsupported { what, .. } if what.contains("not a regular file")),
        "{err}"
    );
    Ok(())
}
