//! Where a repository (or a restore target) is, as the user writes it.
//!
//! - a local directory: `/srv/vmstash`, `./repo`, `repo`;
//! - SFTP as a URL: `sftp://[user@]host[:port]/path`;
//! - SFTP as restic writes it: `sftp:[user@]host:/absolute/path` or `sftp:[user@]host:path`
//!   (relative to the login directory).
//!
//! - S3-compatible object storage: `s3:https://host[:port]/bucket[/prefix]`, `s3:http://…`,
//!   `s3:host/bucket[/prefix]` (HTTPS) or `s3://bucket[/prefix]` (AWS), parsed by
//!   [`vmstash_s3::S3Url`].
//!
//! Any other `kind:` prefix (`b2:`, `rclone:`, `rest:`, `https://…`) names a repository
//! kind vmstash does not have: it is refused with one line saying which kinds exist, never
//! taken for a local directory called `s3:…`. A local path whose first component merely
//! contains a colon is written with `./` in front.

use anyhow::{bail, Context, Result};
use vmstash_ssh::SshTarget;

/// The kinds of repository location vmstash knows, for messages.
pub const KINDS: &str =
    "a local directory, sftp://[user@]host[:port]/path, sftp:[user@]host:/path or s3:https://host[:port]/bucket[/prefix]";

/// A parsed repository location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on this machine.
    Local(String),
    /// A directory on an SFTP server.
    Sftp(SftpUrl),
    /// A bucket (and key prefix) of an S3-compatible object store.
    S3(vmstash_s3::S3Url),
}

/// A directory on an SFTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpUrl {
    /// Where to connect.
    pub target: SshTarget,
    /// The directory on the server: absolute, or relative to the login directory.
    pub path: String,
}

impl Location {
    /// Parses a location as the user wrote it (see the module docs).
    pub fn parse(text: &str) -> Result<Location> {
        if text.starts_with("sftp://") {
            return SftpUrl::parse(text).map(Location::Sftp);
        }
        if let Some(rest) = text.strip_prefix("sftp:") {
            return SftpUrl::parse_restic(text, rest).map(Location::Sftp);
        }
        if vmstash_s3::S3Url::is_s3(text) {
            return Ok(Location::S3(vmstash_s3::S3Url::parse(text)?));
        }
        if let Some(kind) = scheme_of(text) {
            bail!(
                "{text:?}: vmstash has no {kind:?} repositories; a repository is {KINDS} (write ./{text} for a local directory with a colon in its name)"
            );
        }
        if text.is_empty() {
            bail!("an empty repository location; a repository is {KINDS}");
        }
        Ok(Location::Local(text.to_string()))
    }
}

/// The `kind` of `kind:…` or `kind://…`: a leading word of letters, digits, `+`, `-` or `.`
/// (starting with a letter) followed by a colon, before any `/`.
fn scheme_of(text: &str) -> Option<&str> {
    let (head, _) = text.split_once(':')?;
    let mut chars = head.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(head)
}

impl SftpUrl {
    /// Parses `sftp://[user@]host[:port]/path`.
    pub fn parse(url: &str) -> Result<SftpUrl> {
        let rest = url
            .strip_prefix("sftp://")
            .with_context(|| format!("{url:?} is not an sftp:// URL"))?;
        let (authority, path) = rest
            .split_once('/')
            .with_context(|| format!("{url:?}: no path; use sftp://user@host/path/to/repo"))?;
        let (user, hostport) = split_user(authority);
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                Some(
                    p.parse()
                        .with_context(|| format!("{url:?}: bad port {p:?}"))?,
                ),
            ),
            None => (hostport.to_string(), None),
        };
        if host.is_empty() || path.trim_matches('/').is_empty() {
            bail!("{url:?}: use sftp://user@host[:port]/path/to/repo");
        }
        Ok(SftpUrl {
            target: SshTarget { user, host, port },
            path: format!("/{}", path.trim_end_matches('/')),
        })
    }

    /// Parses restic's `sftp:[user@]host:path` (`rest` is what follows `sftp:`); the port, if
    /// not 22, comes from the SSH config, as with restic.
    fn parse_restic(text: &str, rest: &str) -> Result<SftpUrl> {
        let usage = || {
            format!("{text:?}: use sftp:user@host:/path/to/repo or sftp://user@host[:port]/path/to/repo")
        };
        let (authority, path) = rest.split_once(':').with_context(usage)?;
        let (user, host) = split_user(authority);
        let path = path.trim_end_matches('/');
        if host.is_empty() || host.contains('/') || path.is_empty() {
            bail!(usage());
        }
        Ok(SftpUrl {
            target: SshTarget {
                user,
                host: host.to_string(),
                port: None,
            },
            path: path.to_string(),
        })
    }
}

/// `user@host` → (Some(user), host); `host` → (None, host).
fn split_user(authority: &str) -> (Option<String>, &str) {
    match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sftp(text: &str) -> SftpUrl {
        match Location::parse(text).expect("parses") {
            Location::Sftp(u) => u,
            other => panic!("{text} taken as {other:?}"),
        }
    }

    #[test]
    fn urls() {
        let u = SftpUrl::parse("sftp://backup@nas:2222/srv/vmstash/").expect("url");
        assert_eq!(u.target.user.as_deref(), Some("backup"));
        assert_eq!(u.target.host, "nas");
        assert_eq!(u.target.port, Some(2222));
        assert_eq!(u.path, "/srv/vmstash");
        for bad in [
            "sftp://nas",
            "sftp://nas/",
            "sftp:///x",
            "sftp://h:x/p",
            "/local",
        ] {
            assert!(SftpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn restic_style_sftp_addresses_are_sftp_repositories() {
        let u = sftp("sftp:backup@nas:/srv/vmstash");
        assert_eq!(u.target.user.as_deref(), Some("backup"));
        assert_eq!((u.target.host.as_str(), u.target.port), ("nas", None));
        assert_eq!(u.path, "/srv/vmstash");
        let rel = sftp("sftp:nas:backups/vm/");
        assert_eq!((rel.target.user, rel.path.as_str()), (None, "backups/vm"));
        for bad in ["sftp:nas", "sftp:nas:", "sftp::/x", "sftp:a/b:/x"] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_kinds_are_refused_and_local_paths_are_local() {
        assert!(matches!(
            Location::parse("s3:https://s3.amazonaws.com/bucket"),
            Ok(Location::S3(_))
        ));
        for other in [
            "b2:bucket:path",
            "rclone:remote:path",
            "rest:http://host:8000/",
            "https://example.com/repo",
            "backup:2024",
        ] {
            let err = Location::parse(other).expect_err(other).to_string();
            assert!(err.contains("sftp:"), "{other}: {err}");
        }
        for local in ["/srv/vmstash", "./backup:2024", "repo", "../x:y", "/a:b"] {
            assert_eq!(
                Location::parse(local).expect(local),
                Location::Local(local.to_string())
            );
        }
    }
}
