//! Connection URIs: where the hypervisor is (this host, or a host reached by SSH) and what
//! manages its VMs there: libvirt (`qemu:///system`, `qemu+ssh://[user@]host[:port]/system`) or
//! a QEMU's own monitor socket (`qmp:///path/to/qmp.sock`,
//! `qmp+ssh://[user@]host[:port]/path/to/qmp.sock`, spec/FORMAT.md §19.8).

use anyhow::{bail, Context, Result};

/// How commands reach the hypervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// This host.
    Local,
    /// A remote host over SSH.
    Ssh {
        /// Login user (else the SSH config's or the local user).
        user: Option<String>,
        /// Host name or address.
        host: String,
        /// SSH port (else the SSH config's or 22).
        port: Option<u16>,
    },
}

/// What manages the VMs there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manager {
    /// libvirt; virsh runs on the hypervisor with this URI (`qemu:///system`).
    Libvirt {
        /// The URI for virsh there.
        virsh_uri: String,
    },
    /// One QEMU, through its QMP socket at this absolute path on the hypervisor.
    Qmp {
        /// The socket's path.
        socket: String,
    },
}

/// A parsed connection URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectUri {
    /// How commands reach the hypervisor.
    pub transport: Transport,
    /// What manages the VMs there.
    pub manager: Manager,
}

impl ConnectUri {
    /// Parses a URI of the forms above.
    pub fn parse(uri: &str) -> Result<ConnectUri> {
        let (scheme, rest) = uri.split_once("://").with_context(|| {
            format!("{uri:?} is not a libvirt URI like qemu+ssh://user@host/system (or qmp+ssh://user@host/path/to/qmp.sock)")
        })?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (kind, ssh) = match scheme.split_once('+') {
            None => (scheme, false),
            Some((kind, "ssh")) => (kind, true),
            Some((_, other)) => bail!("{uri:?}: unsupported transport {other:?}; vmstash talks to hypervisors over SSH only (qemu+ssh://, qmp+ssh://)"),
        };
        let manager = match kind {
            "qemu" => Manager::Libvirt {
                virsh_uri: format!("qemu:///{}", libvirt_instance(uri, path)?),
            },
            "qmp" => Manager::Qmp {
                socket: qmp_socket(uri, path)?,
            },
            other => bail!("{uri:?}: unsupported hypervisor {other:?}; use qemu:///system, qemu+ssh://user@host/system or qmp+ssh://user@host/path/to/qmp.sock"),
        };
        let transport = match (ssh, authority.is_empty()) {
            (false, true) => Transport::Local,
            (false, false) => bail!("{uri:?}: a remote host needs {kind}+ssh://; vmstash talks to hypervisors over SSH only"),
            (true, true) => bail!("{uri:?}: no host name"),
            (true, false) => ssh_transport(uri, authority)?,
        };
        Ok(ConnectUri { transport, manager })
    }

    /// The host name for tags and messages ("localhost" for local).
    pub fn host_label(&self) -> String {
        match &self.transport {
            Transport::Local => "localhost".to_string(),
            Transport::Ssh { host, .. } => host.clone(),
        }
    }

    /// The URI virsh uses on the hypervisor; `None` for a QMP socket.
    pub fn virsh_uri(&self) -> Option<&str> {
        match &self.manager {
            Manager::Libvirt { virsh_uri } => Some(virsh_uri),
            Manager::Qmp { .. } => None,
        }
    }

    /// The QMP socket's path on the hypervisor; `None` under libvirt.
    pub fn qmp_socket(&self) -> Option<&str> {
        match &self.manager {
            Manager::Qmp { socket } => Some(socket),
            Manager::Libvirt { .. } => None,
        }
    }
}

/// `system` or `session` from a libvirt URI's path (default `system`).
fn libvirt_instance<'a>(uri: &str, path: &'a str) -> Result<&'a str> {
    match path.split('?').next().unwrap_or("") {
        "" => Ok("system"),
        instance @ ("system" | "session") => Ok(instance),
        other => bail!("{uri:?}: unknown libvirt instance {other:?} (use /system or /session)"),
    }
}

/// The absolute socket path of a QMP URI (its path, which must name a file).
fn qmp_socket(uri: &str, path: &str) -> Result<String> {
    let socket = format!("/{path}");
    if path.is_empty() || socket.ends_with('/') || socket.contains('\0') {
        bail!("{uri:?}: give the QMP socket's path, e.g. qmp+ssh://root@pve1/var/run/qemu-server/100.qmp");
    }
    Ok(socket)
}

/// The SSH transport of `[user@]host[:port]`.
fn ssh_transport(uri: &str, authority: &str) -> Result<Transport> {
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    };
    let (host, port) =
        split_host_port(hostport).with_context(|| format!("{uri:?}: bad host or port"))?;
    if host.is_empty() {
        bail!("{uri:?}: no host name");
    }
    Ok(Transport::Ssh { user, host, port })
}

fn split_host_port(s: &str) -> Result<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').context("unclosed '['")?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse()?),
            None if after.is_empty() => None,
            None => bail!("junk after ']'"),
        };
        return Ok((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_string(), Some(p.parse()?))),
        None => Ok((s.to_string(), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libvirt(instance: &str) -> Manager {
        Manager::Libvirt {
            virsh_uri: format!("qemu:///{instance}"),
        }
    }

    #[test]
    fn parses_local_and_ssh() {
        let parse = |u: &str| ConnectUri::parse(u).expect(u);
        assert_eq!(
            parse("qemu:///system"),
            ConnectUri {
                transport: Transport::Local,
                manager: libvirt("system")
            }
        );
        assert_eq!(
            parse("qemu+ssh://root@kvm1:2222/system?keyfile=x"),
            ConnectUri {
                transport: Transport::Ssh {
                    user: Some("root".into()),
                    host: "kvm1".into(),
                    port: Some(2222),
                },
                manager: libvirt("system")
            }
        );
        assert_eq!(
            parse("qemu+ssh://[::1]/session"),
            ConnectUri {
                transport: Transport::Ssh {
                    user: None,
                    host: "::1".into(),
                    port: None,
                },
                manager: libvirt("session")
            }
        );
    }

    #[test]
    fn parses_qmp_sockets() {
        let parse = |u: &str| ConnectUri::parse(u).expect(u);
        let pve = parse("qmp+ssh://root@pve1/var/run/qemu-server/100.qmp");
        assert_eq!(pve.qmp_socket(), Some("/var/run/qemu-server/100.qmp"));
        assert_eq!(pve.virsh_uri(), None);
        assert_eq!(pve.host_label(), "pve1");
        let local = parse("qmp:///tmp/vm.sock");
        assert_eq!(local.transport, Transport::Local);
        assert_eq!(local.qmp_socket(), Some("/tmp/vm.sock"));
    }

    #[test]
    fn rejects_others() {
        for bad in [
            "xen:///",
            "qemu+tcp://h/system",
            "qemu://h/system",
            "qemu+ssh:///system",
            "kvm1",
            "qemu+ssh://h:x/system",
            "qemu:///foo",
            "qmp://h/tmp/x.sock",
            "qmp+ssh://h/",
            "qmp:///",
            "qmp+ssh://h/tmp/dir/",
            "qmp+tcp://h/x.sock",
        ] {
            assert!(ConnectUri::parse(bad).is_err(), "{bad}");
        }
    }
}
