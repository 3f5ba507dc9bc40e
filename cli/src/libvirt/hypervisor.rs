//! A hypervisor as vmstash uses it: virsh there (locally or over SSH), its disk images opened
//! for reading (local files, or SFTP with the host's own `qemu-img map` for the data ranges and
//! `blockdev` for block device sizes), and the hashblocks helper running there.

use std::path::Path;
use std::sync::{Arc, PoisonError};

use anyhow::Result;
use vmstash_libvirt_xml::DiskDef;
use vmstash_repo::Id;
use vmstash_ssh::{SshOptions, SshSession, SshTarget};

use crate::exit::usage;
use crate::helper::{NoBitmap, RemoteHelper};
use crate::libvirt::nbd_disk::{self, NbdDisk, NbdExport};
use crate::libvirt::shell::{LocalShell, SharedHelper, Shell, SshShell};
use crate::libvirt::uri::{ConnectUri, Transport};
use crate::libvirt::virsh::Virsh;
use crate::source::{self, DiskSource, ImageFormat};

/// A hypervisor: where commands run and how its disk images are read.
pub struct Hypervisor {
    /// virsh there (unused behind a QMP socket).
    pub virsh: Virsh,
    uri: ConnectUri,
    /// The URI as the user gave it, for messages that say what command to run next.
    given: String,
    /// The SSH session of a remote hypervisor.
    ssh: Option<SshSession>,
    /// The hashblocks helper running there, once started; commands go through it too.
    helper: SharedHelper,
}
impl Hypervisor {
    /// Connects to the hypervisor named by a connection URI (libvirt's, or a QMP socket's).
    pub fn connect(given: &str, ssh: &SshOptions) -> Result<Hypervisor> {
        let uri = ConnectUri::parse(given).map_err(|e| usage(format!("{e:#}")))?;
        let helper = SharedHelper::default();
        let (shell, ssh): (Arc<dyn Shell>, _) = match &uri.transport {
            Transport::Local => (Arc::new(LocalShell), None),
            Transport::Ssh { user, host, port } => {
                let target = SshTarget {
                    user: user.clone(),
                    host: host.clone(),
                    port: *port,
                };
                let session = SshSession::connect(&target, ssh)?;
                let shell = SshShell::new(session.clone(), Arc::clone(&helper));
                (Arc::new(shell), Some(session))
            }
        };
        let virsh_uri = uri.virsh_uri().unwrap_or("qemu:///system");
        Ok(Hypervisor {
            virsh: Virsh::new(shell, virsh_uri),
            uri,
            given: given.to_owned(),
            ssh,
            helper,
        })
    }

    /// Starts the hashblocks helper on a remote hypervisor, so that disks are hashed there and
    /// only chunks the repository lacks are read. `Err` says why it cannot run (the caller
    /// warns and the disks are read whole over SFTP); a local hypervisor needs no helper.
    pub fn start_helper(&self) -> Result<(), String> {
        let Some(ssh) = &self.ssh else {
            return Ok(());
        };
        let helper = RemoteHelper::start(ssh).map_err(|why| {
            format!(
                "not using the hashblocks helper on {}: {why}",
                ssh.describe()
            )
        })?;
        *self.helper.lock().unwrap_or_else(PoisonError::into_inner) = Some(helper);
        Ok(())
    }

    /// The connection URI as the user gave it (for `--connect` in messages).
    pub fn uri(&self) -> &str {
        &self.given
    }

    /// The QMP socket's path on the hypervisor, when the URI names one (not libvirt).
    pub fn qmp_socket(&self) -> Option<&str> {
        self.uri.qmp_socket()
    }

    /// The helper's path on a remote hypervisor, for commands that run it (`qmp`); `None`
    /// when no helper runs there.
    pub fn helper_path(&self) -> Option<String> {
        let helper = self.helper.lock().unwrap_or_else(PoisonError::into_inner);
        helper.as_ref().map(RemoteHelper::command_path)
    }

    /// True when the hypervisor is this host.
    pub fn is_local(&self) -> bool {
        self.ssh.is_none()
    }

    /// The hypervisor's host name, for tags (`host:<name>`).
    pub fn host_label(&self) -> String {
        self.uri.host_label()
    }

    /// Each chunk's id, hashed on the host by the helper; `None` without a helper.
    pub fn chunk_ids(
        &self,
        path: &str,
        format: ImageFormat,
        chunk_size: u32,
        size: u64,
    ) -> Result<Option<Vec<Id>>> {
        let mut helper = self.helper.lock().unwrap_or_else(PoisonError::into_inner);
        helper
            .as_mut()
            .map(|h| h.hash_disk(path, format, chunk_size, size))
            .transpose()
    }

    /// Opens a disk image on the hypervisor as the format libvirt declares.
    /// True when the hashblocks helper runs on a remote hypervisor (or the hypervisor is this
    /// host, where vmstash reads NBD exports itself): what changed-block tracking needs.
    pub fn can_read_nbd(&self) -> bool {
        self.ssh.is_none() || self.helper_running()
    }

    fn helper_running(&self) -> bool {
        self.helper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Hashes a disk through its NBD export on the hypervisor (spec §19.6), by the helper there
    /// or, on this host, in this process; `format` is the image's, for the snapshot.
    pub fn hash_nbd(
        &self,
        export: &NbdExport,
        chunk_size: u32,
        format: ImageFormat,
    ) -> Result<Result<NbdDisk, NoBitmap>> {
        if self.ssh.is_none() {
            nbd_disk::hash_local(export, chunk_size, format)
        } else {
            nbd_disk::hash_remote(&self.helper, export, chunk_size, format)
        }
    }

    /// Leaves `commands` with the helper to run if vmstash vanishes (spec §19.7); an empty
    /// list clears them. Does nothing without a helper (a local hypervisor: a killed backup's
    /// job is ended by the next backup or `vm-repair`).
    pub fn on_exit(&self, commands: &[Vec<String>]) -> Result<()> {
        let mut helper = self.helper.lock().unwrap_or_else(PoisonError::into_inner);
        match helper.as_mut() {
            Some(h) => h.on_exit(commands),
            None => Ok(()),
        }
    }

    pub fn open_disk(&self, path: &str, format: ImageFormat) -> Result<Box<dyn DiskSource>> {
        let Some(ssh) = &self.ssh else {
            return Ok(source::open_as(Path::new(path), format)?);
        };
        let sftp = ssh.sftp()?;
        let src = match format {
            ImageFormat::Raw => {
                let device_size = if sftp.metadata(path)?.is_block_device() {
                    self.remote_device_size(path)
                } else {
                    None
                };
                source::open_sftp_raw(sftp, path, device_size)?
            }
            ImageFormat::Qcow2 => source::open_sftp_qcow2(&sftp, path)?,
        };
        Ok(match self.remote_map(path, format) {
            Some(ranges) => source::with_data_ranges(src, ranges),
            None => src,
        })
    }

    /// The size of a remote block device (`blockdev --getsize64`), which
    /// SFTP does not report; `None` for files or when it cannot be learned.
    fn remote_device_size(&self, path: &str) -> Option<u64> {
        let out = self
            .virsh
            .shell()
            .run(&["blockdev", "--getsize64", path])
            .ok()
            .filter(|o| o.status == 0)?;
        out.stdout.trim().parse().ok()
    }

    /// The data ranges of a remote image from the hypervisor's `qemu-img
    /// map` (`-U`: the image is in use by the VM); `None` when qemu-img is
    /// missing or fails, and the whole disk is read.
    fn remote_map(&self, path: &str, format: ImageFormat) -> Option<Vec<std::ops::Range<u64>>> {
        let out = self
            .virsh
            .shell()
            .run(&[
                "qemu-img",
                "map",
                "-U",
                "--output=json",
                "-f",
                format.name(),
                path,
            ])
            .ok()
            .filter(|o| o.status == 0)?;
        source::parse_qemu_img_map(&out.stdout)
    }
}

/// The declared image format of a disk (raw when libvirt does not say).
pub fn declared_format(disk: &DiskDef) -> ImageFormat {
    match disk.format.as_deref() {
        Some("qcow2") => ImageFormat::Qcow2,
        _ => ImageFormat::Raw,
    }
}
