//! A small reader of OpenSSH client config files (`~/.ssh/config`): host aliases only.
//!
//! vmstash reads four keywords, so that a host reachable as `ssh kvm1` is reachable as
//! `vmstash … kvm1` too: `HostName`, `User`, `Port` and `IdentityFile`. Everything else is
//! ignored. The crates that parse the whole format were not used: `russh-config` rejects options
//! before the first `Host` line and splits on single spaces only, and `ssh2-config` merges the
//! body of a `Match` block into the preceding `Host` block (applying settings meant for other
//! hosts), for thousands of lines of code this reader does not need.
//!
//! # The rules followed (ssh_config(5))
//!
//! - Lines are `Keyword arguments` or `Keyword=arguments`; keywords are case-insensitive;
//!   arguments may be double-quoted to hold spaces; `#` starts a comment line.
//! - `Host pattern…` starts a section that applies when the alias matches its patterns (`*`, `?`,
//!   `!negation`, see [`crate::pattern`]). Options before the first `Host` apply to every host.
//! - `Match` sections are not evaluated: `Match all` applies to every host, any other `Match`
//!   section is skipped whole (never applied — safer than guessing).
//! - `Include` is not followed.
//! - The first value found for `HostName`, `User` and `Port` wins; every `IdentityFile` found is
//!   kept, in order.
//! - `HostName` may use `%h` (the alias) and `%%`; `IdentityFile` may start with `~/` and use
//!   `%d` (home directory), `%h` (the alias), `%u` (local user), `%r` (remote user, once known)
//!   and `%%`.
//!
//! Malformed values (a `Port` that is not a number) in a section that applies are errors naming
//! the line; in sections that do not apply they are ignored, as nothing reads them.

use std::path::{Path, PathBuf};

use crate::error::SshError;
use crate::pattern;

/// What an SSH config file says about one host alias.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HostConfig {
    /// The real host name to connect to (`HostName`), if the alias has one.
    pub host_name: Option<String>,
    /// The user to log in as (`User`).
    pub user: Option<String>,
    /// The port (`Port`).
    pub port: Option<u16>,
    /// Private key files to try (`IdentityFile`), with `~` and `%` tokens not yet expanded.
    pub identity_files: Vec<String>,
}

/// A malformed line of an SSH config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigLineError {
    /// The (1-based) line number.
    pub line: usize,
    /// What is wrong with it.
    pub what: String,
}

impl HostConfig {
    /// Reads the config file at `path` and returns what it says about `alias`.
    pub(crate) fn load(path: &Path, alias: &str) -> Result<Self, SshError> {
        let text = std::fs::read_to_string(path).map_err(|source| SshError::Io {
            path: path.to_owned(),
            action: "read the SSH config file".to_owned(),
            source,
        })?;
        Self::parse(&text, alias).map_err(|err| SshError::Config {
            path: path.to_owned(),
            line: err.line,
            what: err.what,
        })
    }

    /// Parses config file text and returns what it says about `alias`.
    pub(crate) fn parse(text: &str, alias: &str) -> Result<Self, ConfigLineError> {
        let mut config = Self::default();
        // Options before the first Host line apply to every host.
        let mut applies = true;
        for (index, raw) in text.lines().enumerate() {
            let line = index.saturating_add(1);
            let Some((keyword, args)) = split_line(raw) else {
                continue;
            };
            match keyword.to_ascii_lowercase().as_str() {
                "host" => applies = pattern::list_matches(args.iter().map(String::as_str), alias),
                "match" => {
                    applies = args.len() == 1
                        && args
                            .first()
                            .is_some_and(|arg| arg.eq_ignore_ascii_case("all"));
                }
                _ if !applies => {}
                "hostname" => set_once(&mut config.host_name, first_arg(&args, line, "HostName")?),
                "user" => set_once(&mut config.user, first_arg(&args, line, "User")?),
                "port" => {
                    let value = first_arg(&args, line, "Port")?;
                    let port = value
                        .parse::<u16>()
                        .ok()
                        .filter(|&port| port != 0)
                        .ok_or_else(|| ConfigLineError {
                            line,
                            what: format!("Port {value:?} is not a port number"),
                        })?;
                    set_once(&mut config.port, port);
                }
                "identityfile" => {
                    config
                        .identity_files
                        .push(first_arg(&args, line, "IdentityFile")?)
                }
                _ => {}
            }
        }
        if let Some(host_name) = config.host_name.take() {
            config.host_name = Some(expand_tokens(&host_name, &[('h', alias)]));
        }
        Ok(config)
    }
}

/// Expands an `IdentityFile` value: a leading `~/` and the `%d %h %u %r %%` tokens.
pub(crate) fn expand_identity_path(
    value: &str,
    home: Option<&Path>,
    alias: &str,
    local_user: &str,
    remote_user: &str,
) -> PathBuf {
    let home_str = home.map(|home| home.to_string_lossy().into_owned());
    let home_str = home_str.as_deref().unwrap_or("~");
    let expanded = expand_tokens(
        value,
        &[
            ('d', home_str),
            ('h', alias),
            ('u', local_user),
            ('r', remote_user),
        ],
    );
    match (expanded.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(expanded),
    }
}

/// Replaces `%c` tokens by their values; `%%` is a literal `%`; unknown tokens stay as written.
fn expand_tokens(value: &str, tokens: &[(char, &str)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(token) => match tokens.iter().find(|(name, _)| *name == token) {
                Some((_, replacement)) => out.push_str(replacement),
                None => {
                    out.push('%');
                    out.push(token);
                }
            },
            None => out.push('%'),
        }
    }
    out
}

/// Sets `slot` unless it already has a value (the first value found wins).
fn set_once<T>(slot: &mut Option<T>, value: T) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

/// The first argument of a keyword that needs one.
fn first_arg(args: &[String], line: usize, keyword: &str) -> Result<String, ConfigLineError> {
    args.first().cloned().ok_or_else(|| ConfigLineError {
        line,
        what: format!("{keyword} needs a value"),
    })
}

/// Splits a config line into its keyword and arguments; `None` for blank and comment lines.
///
/// The keyword ends at whitespace or `=`; one `=` between keyword and arguments is allowed.
fn split_line(raw: &str) -> Option<(String, Vec<String>)> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let keyword_end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(line.len());
    let (keyword, rest) = line.split_at(keyword_end);
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest);
    Some((keyword.to_owned(), split_args(rest)))
}

/// Splits arguments at whitespace; double quotes group words (the quotes are removed).
fn split_args(rest: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in rest.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    args.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        args.push(current);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
# global defaults come first
IdentityFile ~/.ssh/global_key

Host kvm1 kvm1.lan
    HostName 192.0.2.10
    User backup
    Port 2222
    IdentityFile ~/.ssh/kvm_key

Host kvm*  !kvm9
    User other
    Port=2200
    HostName %h.example.com

Match host kvm2 exec \"false\"
    User from-match

Host \"quoted name\"
    User quoted

Host *
    User fallback
    IdentityFile \"/keys/with space\"
";

    #[test]
    fn alias_gets_its_section_and_global_defaults() -> Result<(), ConfigLineError> {
        let config = HostConfig::parse(CONFIG, "kvm1")?;
        assert_eq!(config.host_name.as_deref(), Some("192.0.2.10"));
        assert_eq!(
            config.user.as_deref(),
            Some("backup"),
            "the first value wins"
        );
        assert_eq!(config.port, Some(2222));
        assert_eq!(
            config.identity_files,
            ["~/.ssh/global_key", "~/.ssh/kvm_key", "/keys/with space"],
            "identity files accumulate in order"
        );
        Ok(())
    }

    #[test]
    fn wildcard_section_and_hostname_token() -> Result<(), ConfigLineError> {
        let config = HostConfig::parse(CONFIG, "kvm2")?;
        assert_eq!(config.host_name.as_deref(), Some("kvm2.example.com"));
        assert_eq!(
            config.user.as_deref(),
            Some("other"),
            "Match blocks are never applied"
        );
        assert_eq!(config.port, Some(2200), "Keyword=value form");
        Ok(())
    }

    #[test]
    fn negated_pattern_excludes_the_section() -> Result<(), ConfigLineError> {
        let config = HostConfig::parse(CONFIG, "kvm9")?;
        assert_eq!(config.host_name, None);
        assert_eq!(config.user.as_deref(), Some("fallback"));
        assert_eq!(config.port, None);
        Ok(())
    }

    #[test]
    fn quoted_host_pattern() -> Result<(), ConfigLineError> {
        let config = HostConfig::parse(CONFIG, "quoted name")?;
        assert_eq!(config.user.as_deref(), Some("quoted"));
        Ok(())
    }

    #[test]
    fn unknown_alias_gets_only_global_values() -> Result<(), ConfigLineError> {
        let config = HostConfig::parse("Host a\n  User x\n", "b")?;
        assert_eq!(config, HostConfig::default());
        Ok(())
    }

    #[test]
    fn match_all_applies() -> Result<(), ConfigLineError> {
        let config = HostConfig::parse("Host a\n User x\nMatch all\n Port 23\n", "b")?;
        assert_eq!(config.port, Some(23));
        Ok(())
    }

    #[test]
    fn bad_port_in_applying_section_names_the_line() {
        let err = HostConfig::parse("Host a\n  Port 99999\n", "a").err();
        assert_eq!(err.map(|e| e.line), Some(2));
        let err = HostConfig::parse("Host a\n  Port\n", "a").err();
        assert_eq!(err.map(|e| e.line), Some(2));
    }

    #[test]
    fn bad_port_elsewhere_is_ignored() -> Result<(), ConfigLineError> {
        let config = HostConfig::parse("Host other\n  Port x\n", "a")?;
        assert_eq!(config.port, None);
        Ok(())
    }

    #[test]
    fn garbage_does_not_panic() -> Result<(), ConfigLineError> {
        let lines = [
            "=",
            "==",
            "\"",
            "Host",
            "Host \"",
            "\u{0}",
            "Port=",
            "%",
            "HostName %",
            "User \"a b",
            "IdentityFile ~",
            "hostname=%h%",
            "Port -1",
            "Match",
        ];
        for garbage in lines {
            let _ = HostConfig::parse(garbage, "x");
        }
        assert!(HostConfig::parse("Port=\n", "x").is_err());
        let config = HostConfig::parse("HostName %\nUser \"a b\n", "x")?;
        assert_eq!(config.host_name.as_deref(), Some("%"));
        assert_eq!(
            config.user.as_deref(),
            Some("a b"),
            "an unclosed quote runs to the end"
        );
        Ok(())
    }

    #[test]
    fn identity_paths_expand_home_and_tokens() {
        let home = Path::new("/home/me");
        let path = expand_identity_path("~/.ssh/%h_%r", Some(home), "kvm1", "me", "root");
        assert_eq!(path, Path::new("/home/me/.ssh/kvm1_root"));
        let path = expand_identity_path("%d/k%%%x", Some(home), "h", "me", "root");
        assert_eq!(path, Path::new("/home/me/k%%x"));
        let path = expand_identity_path("~/k", None, "h", "me", "root");
        assert_eq!(path, Path::new("~/k"));
    }
}
