//! `vmstash key`: the passwords (key files) that open the repository.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use vmstash_repo::backend::FileKind;
use vmstash_repo::keyfile::KdfParams;

use super::cat::resolve;
use crate::args::{Global, KeyCommand};
use crate::exit;
use crate::output::{line, print_json};
use crate::{password, repo};

/// Runs `vmstash key …`.
pub fn run(g: &Global, k: &KeyCommand) -> Result<ExitCode> {
    let repo = &repo::open(g)?;
    match k {
        KeyCommand::List => {
            let keys = repo.list_keys()?;
            if g.json {
                print_json(&json!(keys.iter().map(|(n, k)| json!({
                    "id": n, "current": n == repo.key_name(), "username": k.username, "hostname": k.hostname, "created": k.created,
                })).collect::<Vec<_>>()));
            } else {
                line(format_args!(
                    " {:<8}  {:<12}  {:<16}  created",
                    "ID", "User", "Host"
                ));
                for (n, k) in keys {
                    let cur = if n == repo.key_name() { "*" } else { " " };
                    line(format_args!(
                        "{cur}{:<8}  {:<12}  {:<16}  {}",
                        n.get(..8).unwrap_or(&n),
                        k.username,
                        k.hostname,
                        k.created
                    ));
                }
            }
        }
        KeyCommand::Add(np) => {
            let pw = password::new(None, Some(np))?;
            let name = repo.add_key(pw.as_bytes(), KdfParams::DEFAULT)?;
            report(g, "key_added", &name);
        }
        KeyCommand::Passwd(np) => {
            let pw = password::new(None, Some(np))?;
            let name = repo.change_password(pw.as_bytes(), KdfParams::DEFAULT)?;
            report(g, "password_changed", &name);
        }
        KeyCommand::Remove { id } => {
            let name = resolve(repo, FileKind::Key, id)?;
            repo.remove_key(&name)?;
            report(g, "key_removed", &name);
        }
    }
    Ok(exit::ok())
}

fn report(g: &Global, what: &str, key: &str) {
    if g.json {
        print_json(&json!({"message_type": what, "id": key}));
    } else if !g.quiet {
        line(format_args!(
            "{}: key {}",
            what.replace('_', " "),
            key.get(..8).unwrap_or(key)
        ));
    }
}
