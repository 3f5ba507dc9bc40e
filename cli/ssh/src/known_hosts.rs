//! Host key verification against an OpenSSH `known_hosts` file.
//!
//! # Why not russh's helpers
//!
//! `russh::keys::check_known_hosts_path` handles hashed names and `[host]:port`, but it splits
//! lines on single spaces (a tab-separated line is never found), does not understand markers (an
//! `@revoked` line is silently ignored, so a revoked key would be reported as merely unknown and
//! then *learned* under `--accept-new-host-key`), ignores wildcards and negations, and fails the
//! whole check on one undecodable line. This module reads the format as sshd(8) describes it.
//!
//! # Format
//!
//! `[@marker] hostpatterns keytype base64-key [comment]`, fields separated by blanks; `#` starts a
//! comment line. The host field is a comma-separated list of patterns (`*`, `?`, `!negation`),
//! `[host]:port` for ports other than 22, or a hashed name `|1|base64(salt)|base64(HMAC-SHA1(salt,
//! name))` as written by `ssh-keygen -H` or `HashKnownHosts yes`. Markers: `@revoked` (the key
//! must never be accepted) and `@cert-authority` (a CA for host certificates; vmstash does not ask
//! for host certificates, so these lines are skipped). Lines that cannot be parsed (garbage,
//! unknown markers, key types vmstash cannot decode) are skipped, as OpenSSH does.
//!
//! # Verdicts
//!
//! For the name the host is looked up under ([`lookup_name`]), a presented key is, in this order
//! of precedence: revoked (matches an `@revoked` line), known (matches a plain line), changed (a
//! plain line holds a different key of the same type) or unknown. Changed and revoked keys are
//! refused whatever the options; unknown keys are refused unless the user accepts new keys, in
//! which case [`append`] records them, like `StrictHostKeyChecking=accept-new`.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_encoding::base64::{Base64, Encoding};
use russh::keys::ssh_key::{Algorithm, PublicKey};

use crate::error::SshError;
use crate::pattern;

/// The prefix of a hashed host name.
const HASHED_PREFIX: &str = "|1|";

/// Size of the HMAC-SHA1 in a hashed host name.
const HASHED_LEN: usize = 20;

/// The marker at the start of a known_hosts line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Marker {
    /// `@cert-authority`: the key signs host certificates.
    CertAuthority,
    /// `@revoked`: the key must never be accepted.
    Revoked,
}

/// One usable line of a known_hosts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The (1-based) line number.
    pub line: usize,
    /// The marker, if the line has one.
    pub marker: Option<Marker>,
    /// The host field as written (patterns or a hashed name).
    pub hosts: String,
    /// The recorded key.
    pub key: PublicKey,
}

/// What known_hosts says about a presented host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The key is recorded for the host.
    Known,
    /// Nothing is recorded for the host under this key type.
    Unknown {
        /// Other key types recorded for the host (in file order, without repeats).
        other_types: Vec<String>,
    },
    /// A different key of the same type is recorded for the host.
    Changed {
        /// The line of the first such key.
        line: usize,
    },
    /// The key is marked `@revoked`.
    Revoked {
        /// The line of the `@revoked` entry.
        line: usize,
    },
}

/// The parsed content of a known_hosts file.
#[derive(Debug, Clone, Default)]
pub(crate) struct KnownHosts {
    /// The usable lines, in file order.
    entries: Vec<Entry>,
}

impl KnownHosts {
    /// Reads the known_hosts file at `path`; a missing file is an empty one.
    pub(crate) fn load(path: &Path) -> Result<Self, SshError> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Self::parse(&String::from_utf8_lossy(&bytes))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(SshError::Io {
                path: path.to_owned(),
                action: "read the known hosts file".to_owned(),
                source,
            }),
        }
    }

    /// Parses known_hosts text, skipping comments, blank lines and lines that cannot be parsed.
    pub(crate) fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .enumerate()
            .filter_map(|(index, line)| parse_line(line, index.saturating_add(1)))
            .collect();
        Self { entries }
    }

    /// The usable lines, in file order.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Checks `key` as presented by the host known as `name` (see [`lookup_name`]).
    pub(crate) fn check(&self, name: &str, key: &PublicKey) -> Verdict {
        let algorithm = key.key_data().algorithm();
        let mut known = false;
        let mut changed = None;
        let mut other_types: Vec<String> = Vec::new();
        for entry in self
            .entries
            .iter()
            .filter(|e| host_field_matches(&e.hosts, name))
        {
            let same_key = entry.key.key_data() == key.key_data();
            match entry.marker {
                Some(Marker::Revoked) if same_key => return Verdict::Revoked { line: entry.line },
                Some(_) => {}
                None if same_key => known = true,
                None if entry.key.key_data().algorithm() == algorithm => {
                    changed.get_or_insert(entry.line);
                }
                None => {
                    let other = entry.key.key_data().algorithm().to_string();
                    if !other_types.contains(&other) {
                        other_types.push(other);
                    }
                }
            }
        }
        match (known, changed) {
            (true, _) => Verdict::Known,
            (false, Some(line)) => Verdict::Changed { line },
            (false, None) => Verdict::Unknown { other_types },
        }
    }

    /// The key algorithms recorded (without marker) for the host known as `name`, in file order,
    /// without repeats: the client prefers these so the server shows the key that is on file.
    pub(crate) fn known_algorithms(&self, name: &str) -> Vec<Algorithm> {
        let mut algorithms = Vec::new();
        for entry in &self.entries {
            if entry.marker.is_none() && host_field_matches(&entry.hosts, name) {
                let algorithm = entry.key.key_data().algorithm();
                if !algorithms.contains(&algorithm) {
                    algorithms.push(algorithm);
                }
            }
        }
        algorithms
    }
}

/// The name a host is recorded under: `host` for port 22, `[host]:port` otherwise, lowercased.
pub(crate) fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// Appends `name key` to the known_hosts file at `path`, creating it (and its directory) if
/// needed, after a newline if the file does not end in one.
pub(crate) fn append(path: &Path, name: &str, key: &PublicKey) -> Result<(), SshError> {
    let io_error = |action: &str| {
        let path = path.to_owned();
        let action = action.to_owned();
        move |source| SshError::Io {
            path,
            action,
            source,
        }
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error("create the directory of"))?;
    }
    let key_text = key
        .to_openssh()
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))
        .map_err(io_error("encode the host key for"))?;
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("open for appending"))?;
    let len = file.metadata().map_err(io_error("inspect"))?.len();
    let mut last = [b'\n'];
    if let Some(last_offset) = len.checked_sub(1) {
        file.read_exact_at(&mut last, last_offset)
            .map_err(io_error("read the end of"))?;
    }
    let separator = if last == [b'\n'] { "" } else { "\n" };
    let line = format!("{separator}{name} {key_text}\n");
    file.write_all(line.as_bytes())
        .map_err(io_error("add the host key to"))?;
    file.sync_all().map_err(io_error("flush"))
}

/// Parses one line; `None` for comments, blank lines and lines that cannot be used.
fn parse_line(raw: &str, line: usize) -> Option<Entry> {
    let text = raw.trim();
    if text.is_empty() || text.starts_with('#') {
        return None;
    }
    let mut fields = text.split_ascii_whitespace();
    let first = fields.next()?;
    let (marker, hosts) = match first {
        "@cert-authority" => (Some(Marker::CertAuthority), fields.next()?),
        "@revoked" => (Some(Marker::Revoked), fields.next()?),
        unknown if unknown.starts_with('@') => return None,
        hosts => (None, hosts),
    };
    let key_type = fields.next()?;
    let key_base64 = fields.next()?;
    let key = PublicKey::from_openssh(&format!("{key_type} {key_base64}")).ok()?;
    Some(Entry {
        line,
        marker,
        hosts: hosts.to_owned(),
        key,
    })
}

/// Whether a host field (pattern list, or hashed name) selects `name`.
fn host_field_matches(field: &str, name: &str) -> bool {
    if field.starts_with(HASHED_PREFIX) {
        hashed_name_matches(field, name)
    } else {
        pattern::list_matches(field.split(','), name)
    }
}

/// Whether `|1|salt|hash` is the hash of `name`; malformed hashes match nothing.
fn hashed_name_matches(field: &str, name: &str) -> bool {
    let Some((salt, hash)) = field
        .strip_prefix(HASHED_PREFIX)
        .and_then(|rest| rest.split_once('|'))
    else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (Base64::decode_vec(salt), Base64::decode_vec(hash)) else {
        return false;
    };
    if hash.len() != HASHED_LEN {
        return false;
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
    ring::hmac::verify(&key, name.to_ascii_lowercase().as_bytes(), &hash).is_ok()
}

/// The default known_hosts file: `~/.ssh/known_hosts`.
pub(crate) fn default_path(home: Option<&Path>) -> PathBuf {
    match home {
        Some(home) => home.join(".ssh").join("known_hosts"),
        None => PathBuf::from(".ssh/known_hosts"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    type TestResult = Result<(), Box<dyn Error>>;

    const ED_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const ED_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";
    const ED_C: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILIG2T/B0l0gaqj3puu510tu9N1OkQ4znY3LYuEm5zCF";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBERUTpTryq7quZ67Dm/cCMA6y1CAuU8w6VU9XbKc48s4JYSWvrbyVIW8s+3Q4TgzoPFYY1+Zd8GPkFPYdwSWGeY=";

    /// `ssh-keygen -H` of `example.com` with a fixed salt (the line russh tests with).
    const HASHED_EXAMPLE_COM: &str = "|1|O33ESRMWPVkMYIwJ1Uw+n877jTo=|nuuC5vEqXlEZ/8BXQR7m619W6Ak=";

    fn key(text: &str) -> Result<PublicKey, Box<dyn Error>> {
        Ok(PublicKey::from_openssh(text)?)
    }

    #[test]
    fn plain_port_and_hashed_entries() -> TestResult {
        let text = format!(
            "kvm1,192.0.2.1 {ED_A}\n[kvm1]:2222 {ED_B} comment words\n{HASHED_EXAMPLE_COM} {ED_C}\n"
        );
        let hosts = KnownHosts::parse(&text);
        assert_eq!(hosts.entries().len(), 3);
        assert_eq!(hosts.check("kvm1", &key(ED_A)?), Verdict::Known);
        assert_eq!(hosts.check("192.0.2.1", &key(ED_A)?), Verdict::Known);
        assert_eq!(
            hosts.check(&lookup_name("KVM1", 2222), &key(ED_B)?),
            Verdict::Known
        );
        assert_eq!(hosts.check("example.com", &key(ED_C)?), Verdict::Known);
        assert_eq!(hosts.check("EXAMPLE.com", &key(ED_C)?), Verdict::Known);
        // Same host, other port: another name, nothing recorded.
        let unknown = Verdict::Unknown {
            other_types: vec![],
        };
        assert_eq!(
            hosts.check(&lookup_name("example.com", 2222), &key(ED_C)?),
            unknown
        );
        Ok(())
    }

    #[test]
    fn different_key_of_same_type_is_changed() -> TestResult {
        let text = format!("# header\n\nkvm1 {ED_A}\nkvm1 {ED_C}\n");
        let hosts = KnownHosts::parse(&text);
        assert_eq!(
            hosts.check("kvm1", &key(ED_B)?),
            Verdict::Changed { line: 3 }
        );
        // Any matching line makes the key known, whatever other lines say.
        assert_eq!(hosts.check("kvm1", &key(ED_C)?), Verdict::Known);
        let hashed = format!("{HASHED_EXAMPLE_COM} {ED_C}\n");
        let hosts = KnownHosts::parse(&hashed);
        assert_eq!(
            hosts.check("example.com", &key(ED_A)?),
            Verdict::Changed { line: 1 }
        );
        Ok(())
    }

    #[test]
    fn other_key_type_is_unknown_and_reported() -> TestResult {
        let hosts = KnownHosts::parse(&format!("kvm1 {ECDSA}\n"));
        let verdict = hosts.check("kvm1", &key(ED_A)?);
        assert_eq!(
            verdict,
            Verdict::Unknown {
                other_types: vec!["ecdsa-sha2-nistp256".to_owned()]
            }
        );
        assert_eq!(
            hosts.known_algorithms("kvm1"),
            vec![key(ECDSA)?.algorithm()]
        );
        Ok(())
    }

    #[test]
    fn markers() -> TestResult {
        let text = format!(
            "@revoked * {ED_B}\n@cert-authority *.lan {ED_C}\n@unknown-marker kvm1 {ED_C}\nkvm1 {ED_B}\n"
        );
        let hosts = KnownHosts::parse(&text);
        assert_eq!(
            hosts.entries().len(),
            3,
            "the unknown marker line is skipped"
        );
        // Revoked wins even though line 4 records the key as known.
        assert_eq!(
            hosts.check("kvm1", &key(ED_B)?),
            Verdict::Revoked { line: 1 }
        );
        // A CA key is not a host key: neither known nor a conflicting key.
        let unknown = Verdict::Unknown {
            other_types: vec![],
        };
        assert_eq!(hosts.check("kvm2.lan", &key(ED_C)?), unknown);
        assert!(hosts.known_algorithms("kvm2.lan").is_empty());
        Ok(())
    }

    #[test]
    fn wildcards_and_negation() -> TestResult {
        let hosts = KnownHosts::parse(&format!("*.lan,!evil.lan {ED_A}\n[*]:2222 {ED_B}\n"));
        assert_eq!(hosts.check("kvm1.lan", &key(ED_A)?), Verdict::Known);
        let unknown = Verdict::Unknown {
            other_types: vec![],
        };
        assert_eq!(hosts.check("evil.lan", &key(ED_C)?), unknown);
        assert_eq!(hosts.check("[10.1.1.1]:2222", &key(ED_B)?), Verdict::Known);
        Ok(())
    }

    #[test]
    fn tabs_and_extra_blanks_separate_fields() -> TestResult {
        let (key_type, key_base64) = ED_A.split_once(' ').ok_or("no space")?;
        let text = format!("  kvm1\t{key_type}   {key_base64}\t\n");
        let hosts = KnownHosts::parse(&text);
        assert_eq!(hosts.check("kvm1", &key(ED_A)?), Verdict::Known);
        Ok(())
    }

    #[test]
    fn garbage_lines_are_skipped_without_panic() -> TestResult {
        let text = format!(
            "garbage\n\u{0}\u{1}\n@revoked\n@revoked kvm1\nkvm1 ssh-ed25519\nkvm1 ssh-ed25519 !!!notbase64\n\
             kvm1 ssh-ed25519 AAAA\nkvm1 no-such-type AAAAC3NzaC1lZDI1NTE5\n|1| {ED_A}\n|1|x {ED_A}\n\
             |1|!!|!! {ED_A}\n|1|AAAA|AAAA {ED_A}\n{} {ED_A}\n\nkvm1 {ED_A}\n",
            "é".repeat(1000)
        );
        let hosts = KnownHosts::parse(&text);
        assert_eq!(hosts.check("kvm1", &key(ED_A)?), Verdict::Known);
        assert_eq!(
            hosts.check("kvm1", &key(ED_B)?),
            Verdict::Changed { line: 15 }
        );
        Ok(())
    }

    #[test]
    fn append_adds_a_line_that_is_found_again() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sub").join("known_hosts");
        append(&path, &lookup_name("kvm1", 2222), &key(ED_A)?)?;
        std::fs::write(&path, std::fs::read_to_string(&path)? + "kvm2 " + ED_B)?; // no final newline
        append(&path, "kvm3", &key(ED_C)?)?;
        let text = std::fs::read_to_string(&path)?;
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.starts_with("[kvm1]:2222 ssh-ed25519 "), "{text}");
        let hosts = KnownHosts::parse(&text);
        assert_eq!(hosts.check("[kvm1]:2222", &key(ED_A)?), Verdict::Known);
        assert_eq!(hosts.check("kvm2", &key(ED_B)?), Verdict::Known);
        assert_eq!(hosts.check("kvm3", &key(ED_C)?), Verdict::Known);
        Ok(())
    }

    #[test]
    fn missing_file_is_empty() -> TestResult {
        let dir = tempfile::tempdir()?;
        let hosts = KnownHosts::load(&dir.path().join("absent"))?;
        assert!(hosts.entries().is_empty());
        Ok(())
    }
}
