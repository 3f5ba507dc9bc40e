//! A depth-first walk of a directory tree of a snapshot's namespace, shared by `dump` (a tar
//! stream) and `restore SNAPSHOT:PATH` (files on disk): each file met once, hard links told
//! apart from the first name of their file, directories left after their contents (so their
//! times can be set last), and a file's bytes read in pieces through [`FileReader`].

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fuser::{FileAttr, FileType};
use vmstash_fuse::fs::Listed;
use vmstash_fuse::guestfs::decode_dev;
use vmstash_fuse::VmstashFs;

use super::browse::errno_error;

/// Bytes read from the snapshot at a time.
const PIECE: u32 = 1 << 20;

/// What the walk met at a path.
pub enum Node<'a> {
    /// A directory; its contents follow, then [`Visitor::leave`].
    Dir,
    /// A regular file (its first name), and its bytes.
    File(FileReader<'a>),
    /// A symbolic link and its target.
    Symlink(PathBuf),
    /// A block (`true`) or character device node with its major and minor numbers.
    Device(bool, u32, u32),
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
    /// Another name of a file met before at this path (relative to the walk's start).
    HardLink(&'a Path),
}

/// What a walk does with each file.
pub trait Visitor {
    /// Takes `node`, found at `path` with attributes `attr`.
    fn visit(&mut self, path: &Path, attr: &FileAttr, node: Node<'_>) -> Result<()>;
    /// Called after the contents of directory `path`.
    fn leave(&mut self, _path: &Path, _attr: &FileAttr) -> Result<()> {
        Ok(())
    }
}

/// Walks the tree of `attr` (the file at `path` as the visitor names it).
pub fn walk(fs: &VmstashFs, path: &Path, attr: &FileAttr, visitor: &mut dyn Visitor) -> Result<()> {
    Walk {
        fs,
        links: HashMap::new(),
    }
    .tree(path, attr, visitor)
}

/// One walk's state: the first path of every file with several names.
struct Walk<'a> {
    fs: &'a VmstashFs,
    links: HashMap<u64, PathBuf>,
}

impl Walk<'_> {
    fn tree(&mut self, path: &Path, attr: &FileAttr, visitor: &mut dyn Visitor) -> Result<()> {
        let ino = attr.ino.0;
        if attr.kind != FileType::Directory && attr.nlink > 1 {
            if let Some(first) = self.links.get(&ino) {
                return visitor.visit(path, attr, Node::HardLink(first));
            }
            self.links.insert(ino, path.to_owned());
        }
        let node = match attr.kind {
            FileType::Directory => Node::Dir,
            FileType::RegularFile => Node::File(FileReader::new(self.fs, attr)),
            FileType::Symlink => {
                let target = self
                    .fs
                    .link_target(ino)
                    .map_err(|e| errno_error(&format!("reading link {}", path.display()), e))?;
                Node::Symlink(PathBuf::from(OsStr::from_bytes(&target)))
            }
            FileType::BlockDevice | FileType::CharDevice => {
                let (major, minor) = decode_dev(attr.rdev);
                Node::Device(attr.kind == FileType::BlockDevice, major, minor)
            }
            FileType::NamedPipe => Node::Fifo,
            FileType::Socket => Node::Socket,
        };
        visitor.visit(path, attr, node)?;
        if attr.kind != FileType::Directory {
            return Ok(());
        }
        let children = self
            .fs
            .children(ino)
            .map_err(|e| errno_error(&format!("listing {}", path.display()), e))?;
        for Listed {
            name, attr: child, ..
        } in children
        {
            let child_path = path.join(OsStr::from_bytes(&name));
            let child = child.with_context(|| {
                format!("{}: its metadata cannot be read", child_path.display())
            })?;
            self.tree(&child_path, &child, visitor)?;
        }
        visitor.leave(path, attr)
    }
}

/// A file's bytes, read in pieces of at most [`PIECE`].
pub struct FileReader<'a> {
    fs: &'a VmstashFs,
    ino: u64,
    size: u64,
    at: u64,
}

impl<'a> FileReader<'a> {
    /// The bytes of the file `attr` describes.
    pub fn new(fs: &'a VmstashFs, attr: &FileAttr) -> FileReader<'a> {
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
