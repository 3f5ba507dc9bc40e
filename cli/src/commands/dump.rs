//! `vmstash dump SNAPSHOT:PATH`: a file of a snapshot to standard output, read through the
//! same code as the mount; a directory as a tar stream (owners, modes, modification times,
//! symlinks, hard links and device nodes as in the guest), for scripts and machines without
//! FUSE.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};
use fuser::{FileAttr, FileType};

use super::browse::open;
use super::walk::{walk, FileReader, Node, Visitor};
use crate::args::{DumpArgs, Global};
use crate::{exit, repo};

/// Runs `vmstash dump`.
pub fn run(g: &Global, a: &DumpArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let _lock = repo::lock_for_reading(g, &repo, "dump")?;
    let opened = open(&repo, &a.target, (&a.filter, &a.luks), a.cache_size)?;
    let stdout = io::stdout().lock();
    match opened.attr.kind {
        FileType::RegularFile => {
            let mut out = io::BufWriter::with_capacity(1 << 20, stdout);
            io::copy(&mut FileReader::new(&opened.fs, &opened.attr), &mut out)
                .with_context(|| format!("dumping {:?}", opened.path))?;
            out.flush()?;
        }
        FileType::Directory => {
            let mut tar = Tar(tar::Builder::new(io::BufWriter::new(stdout)));
            let root = PathBuf::from(opened.path.rsplit('/').find(|n| !n.is_empty()).unwrap_or("."));
            walk(&opened.fs, &root, &opened.attr, &mut tar)
                .with_context(|| format!("dumping {:?} as tar", opened.path))?;
            tar.0.into_inner()?.flush()?;
        }
        other => bail!(
            "{:?} is a {other:?}, not a file or a directory: nothing to dump (`vmstash ls -l` shows it)",
            opened.path
        ),
    }
    Ok(exit::ok())
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

/// A tar stream the walk appends to.
struct Tar<W: Write>(tar::Builder<W>);

impl<W: Write> Visitor for Tar<W> {
    fn visit(&mut self, path: &Path, attr: &FileAttr, node: Node<'_>) -> Result<()> {
        let tar = &mut self.0;
        match node {
            Node::Dir => {
                tar.append_data(
                    &mut header(attr, tar::EntryType::Directory, 0),
                    path,
                    io::empty(),
                )?;
            }
            Node::HardLink(first) => {
                tar.append_link(&mut header(attr, tar::EntryType::Link, 0), path, first)?;
            }
            Node::File(bytes) => {
                let mut h = header(attr, tar::EntryType::Regular, attr.size);
                tar.append_data(&mut h, path, bytes)?;
            }
            Node::Symlink(target) => {
                tar.append_link(&mut header(attr, tar::EntryType::Symlink, 0), path, &target)?;
            }
            Node::Device(block, major, minor) => {
                let kind = if block {
                    tar::EntryType::Block
                } else {
                    tar::EntryType::Char
                };
                let mut h = header(attr, kind, 0);
                h.set_device_major(major)?;
                h.set_device_minor(minor)?;
                tar.append_data(&mut h, path, io::empty())?;
            }
            Node::Fifo => {
                tar.append_data(
                    &mut header(attr, tar::EntryType::Fifo, 0),
                    path,
                    io::empty(),
                )?;
            }
            Node::Socket => eprintln!(
                "vmstash: {}: a socket, left out of the archive",
                path.display()
            ),
        }
        Ok(())
    }
}
