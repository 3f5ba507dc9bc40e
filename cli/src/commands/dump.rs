//! `vmstash dump SNAPSHOT:PATH`: a file of a snapshot to standard output, read through the
//! same code as the mount; a directory as a tar stream (owners, modes, modification times,
//! symlinks, hard links and device nodes as in the guest), for scripts and machines without
//! FUSE.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};
use fuser::{FileAttr, FileType};
use vmstash_fuse::fs::Listed;
use vmstash_fuse::VmstashFs;

use super::browse::{device_numbers, errno_error, open};
use crate::args::{DumpArgs, Global};
use crate::{exit, repo};

/// Bytes read from the snapshot at a time.
const PIECE: u32 = 1 << 20;

/// Runs `vmstash dump`.
pub fn run(g: &Global, a: &DumpArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let _lock = repo::lock_for_reading(g, &repo, "dump")?;
    let opened = open(&repo, &a.target, &a.filter, a.cache_size)?;
    let stdout = io::stdout().lock();
    match opened.attr.kind {
        FileType::RegularFile => {
            let mut out = io::BufWriter::with_capacity(1 << 20, stdout);
            io::copy(&mut FileReader::new(&opened.fs, &opened.attr), &mut out)
                .with_context(|| format!("dumping {:?}", opened.path))?;
            out.flush()?;
        }
        FileType::Directory => {
            let mut tar = tar::Builder::new(io::BufWriter::new(stdout));
            let mut links = HashMap::new();
            let root = PathBuf::from(opened.path.rsplit('/').find(|n| !n.is_empty()).unwrap_or("."));
            add_tree(&opened.fs, &mut tar, &root, &opened.attr, &mut links)
                .with_context(|| format!("dumping {:?} as tar", opened.path))?;
            tar.into_inner()?.flush()?;
        }
        other => bail!(
            "{:?} is a {other:?}, not a file or a directory: nothing to dump (`vmstash ls -l` shows it)",
            opened.path
        ),
    }
    Ok(exit::ok())
}

/// A file's bytes, read in pieces of [`PIECE`].
struct FileReader<'a> {
    fs: &'a VmstashFs,
    ino: u64,
    size: u64,
    at: u64,
}

impl<'a> FileReader<'a> {
    fn new(fs: &'a VmstashFs, attr: &FileAttr) -> FileReader<'a> {
        FileReader {
            fs,
            ino: attr.ino.0,
            size: attr.size,
            at: 0,
        }
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = u32::try_from(buf.len()).unwrap_or(PIECE).min(PIECE);
        let bytes = self
            .fs
            .read_bytes(self.ino, self.at, want)
            .map_err(|e| io::Error::from_raw_os_error(e.code()))?;
        if bytes.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ends at {} of its {} bytes", self.at, self.size),
            ));
        }
        buf[..bytes.len()].copy_from_slice(&bytes);
        self.at += u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        Ok(bytes.len())
    }
}

/// The header of `attr` for the entry at `path`, its size set to `size`.
fn header(attr: &FileAttr, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(u32::from(attr.perm));
    h.set_uid(u64::from(attr.uid));
    h.set_gid(u64::from(attr.gid));
    h.set_mtime(
        attr.mtime
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    h.set_size(size);
    h
}

/// Appends `attr` (the file at `path` in the archive) and, for a directory, everything in it;
/// `links` maps inode numbers already archived to their path (hard links).
fn add_tree<W: Write>(
    fs: &VmstashFs,
    tar: &mut tar::Builder<W>,
    path: &std::path::Path,
    attr: &FileAttr,
    links: &mut HashMap<u64, PathBuf>,
) -> Result<()> {
    let ino = attr.ino.0;
    match attr.kind {
        FileType::Directory => {
            tar.append_data(
                &mut header(attr, tar::EntryType::Directory, 0),
                path,
                io::empty(),
            )?;
            let children = fs
                .children(ino)
                .map_err(|e| errno_error(&format!("listing {}", path.display()), e))?;
            for Listed {
                name, attr: child, ..
            } in children
            {
                let child_path = path.join(std::ffi::OsStr::from_bytes(&name));
                let child = child.with_context(|| {
                    format!("{}: its metadata cannot be read", child_path.display())
                })?;
                add_tree(fs, tar, &child_path, &child, links)?;
            }
        }
        _ if attr.nlink > 1 && links.contains_key(&ino) => {
            let mut h = header(attr, tar::EntryType::Link, 0);
            tar.append_link(&mut h, path, &links[&ino])?;
        }
        FileType::RegularFile => {
            if attr.nlink > 1 {
                links.insert(ino, path.to_owned());
            }
            let mut h = header(attr, tar::EntryType::Regular, attr.size);
            tar.append_data(&mut h, path, FileReader::new(fs, attr))?;
        }
        FileType::Symlink => {
            let target = fs
                .link_target(ino)
                .map_err(|e| errno_error(&format!("reading link {}", path.display()), e))?;
            let target = PathBuf::from(std::ffi::OsStr::from_bytes(&target));
            tar.append_link(&mut header(attr, tar::EntryType::Symlink, 0), path, &target)?;
        }
        FileType::BlockDevice | FileType::CharDevice => {
            let kind = if attr.kind == FileType::BlockDevice {
                tar::EntryType::Block
            } else {
                tar::EntryType::Char
            };
            let mut h = header(attr, kind, 0);
            let (major, minor) = device_numbers(attr.rdev);
            h.set_device_major(major)?;
            h.set_device_minor(minor)?;
            tar.append_data(&mut h, path, io::empty())?;
        }
        FileType::NamedPipe => {
            tar.append_data(
                &mut header(attr, tar::EntryType::Fifo, 0),
                path,
                io::empty(),
            )?;
        }
        FileType::Socket => eprintln!(
            "vmstash: {}: a socket, left out of the archive",
            path.display()
        ),
    }
    Ok(())
}
