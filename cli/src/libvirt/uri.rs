//! libvirt connection URIs: `qemu:///system` (this host) and
//! `qemu+ssh://[user@]host[:port]/system` (a hypervisor reached by SSH).

use anyhow::{bail, Context, Result};

/// Where the hypervisor is, and the URI virsh uses there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectUri {
    /// libvirt on this host; virsh runs here.
    Local {
        /// The URI for virsh, e.g. `qemu:///system`.
        virsh_uri: String,
    },
    /// libvirt on a remote host; virsh runs there over SSH.
    Ssh {
        /// Login user (else the SSH config's or the local user).
        user: Option<String>,
        /// Host name or address.
        host: String,
        /// SSH port (else the SSH config's or 22).
        port: Option<u16>,
        /// The URI for virsh on the remote host, e.g. `qemu:///system`.
        virsh_uri: String,
    },
}

impl ConnectUri {
    /// Parses a libvirt URI of the forms above.
    pub fn parse(uri: &str) -> Result<ConnectUri> {
        let (scheme, rest) = uri.split_once("://").with_context(|| {
            format!("{uri:?} is not a libvirt URI like qemu+ssh://user@host/system")
        })?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let path = path.split('?').next().unwrap_or("");
        let instance = match path {
            "system" | "session" => path,
            "" => "system",
            other => bail!("{uri:?}: unknown libvirt instance {other:?} (use /system or /session)"),
        };
        let virsh_uri = format!("qemu:///{instance}");
        match scheme {
            "qemu" if authority.is_empty() => Ok(ConnectUri::Local { virsh_uri }),
            "qemu" => bail!("{uri:?}: a remote host needs qemu+ssh://; vmstash talks to hypervisors over SSH only"),
            "qemu+ssh" => {
                let (user, hostport) = match authority.rsplit_once('@') {
                    Some((u, h)) => (Some(u.to_string()), h),
                    None => (None, authority),
                };
                let (host, port) = split_host_port(hostport)
                    .with_context(|| format!("{uri:?}: bad host or port"))?;
                if host.is_empty() {
                    bail!("{uri:?}: no host name");
                }
                Ok(ConnectUri::Ssh {
                    user,
                    host,
                    port,
                    virsh_uri,
                })
            }
            other => bail!("{uri:?}: unsupported transport {other:?}; use qemu:///system or qemu+ssh://user@host/system"),
        }
    }

    /// The host name for tags and messages ("localhost" for local).
    pub fn host_label(&self) -> String {
        match self {
            ConnectUri::Local { .. } => "localhost".to_string(),
            ConnectUri::Ssh { host, .. } => host.clone(),
        }
    }

    /// The URI virsh uses on the hypervisor.
    pub fn virsh_uri(&self) -> &str {
        match self {
            ConnectUri::Local { virsh_uri } | ConnectUri::Ssh { virsh_uri, .. } => virsh_uri,
        }
    }
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

    #[test]
    fn parses_local_and_ssh() {
        assert_eq!(
            ConnectUri::parse("qemu:///system").expect("local"),
            ConnectUri::Local {
                virsh_uri: "qemu:///system".into()
            }
        );
        assert_eq!(
            ConnectUri::parse("qemu+ssh://root@kvm1:2222/system?keyfile=x").expect("ssh"),
            ConnectUri::Ssh {
                user: Some("root".into()),
                host: "kvm1".into(),
                port: Some(2222),
                virsh_uri: "qemu:///system".into()
            }
        );
        assert_eq!(
            ConnectUri::parse("qemu+ssh://[::1]/session").expect("v6"),
            ConnectUri::Ssh {
                user: None,
                host: "::1".into(),
                port: None,
                virsh_uri: "qemu:///session".into()
            }
        );
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
        ] {
            assert!(ConnectUri::parse(bad).is_err(), "{bad}");
        }
    }
}
