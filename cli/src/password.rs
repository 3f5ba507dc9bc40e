//! Where passwords come from: a command, a file, the environment, or a
//! prompt on the terminal — in that order, as restic does.

use std::io::IsTerminal;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::args::{FromRepoArgs, Global, NewPassword};

/// The password that opens the repository.
pub fn current(g: &Global) -> Result<String> {
    if let Some(cmd) = &g.password_command {
        return from_command(cmd);
    }
    if let Some(f) = &g.password_file {
        return from_file(f);
    }
    if let Ok(p) = std::env::var("VMSTASH_PASSWORD") {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password("enter password for repository: ")
            .context("reading the password from the terminal");
    }
    bail!("no password given: set VMSTASH_PASSWORD, or use --password-file or --password-command")
}

/// The password of the source repository of `copy` (`--from-password-command`,
/// `--from-password-file`, `VMSTASH_FROM_PASSWORD`, a prompt).
pub fn source(from: &FromRepoArgs) -> Result<String> {
    if let Some(cmd) = &from.from_password_command {
        return from_command(cmd);
    }
    if let Some(f) = &from.from_password_file {
        return from_file(f);
    }
    if let Ok(p) = std::env::var("VMSTASH_FROM_PASSWORD") {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password("enter password for the source repository: ")
            .context("reading the password from the terminal");
    }
    bail!("no password given for the source repository: set VMSTASH_FROM_PASSWORD, or use --from-password-file or --from-password-command")
}

/// The password for a new repository or key: asked twice on a terminal.
pub fn new(g: Option<&Global>, args: Option<&NewPassword>) -> Result<String> {
    if let Some(f) = args.and_then(|a| a.new_password_file.as_ref()) {
        return from_file(f);
    }
    if let Ok(p) = std::env::var("VMSTASH_NEW_PASSWORD") {
        return Ok(p);
    }
    if let Some(g) = g {
        if g.password_command.is_some()
            || g.password_file.is_some()
            || std::env::var_os("VMSTASH_PASSWORD").is_some()
        {
            return current(g);
        }
    }
    if !std::io::stdin().is_terminal() {
        if args.is_some() {
            bail!("no new password given: use --new-password-file or set VMSTASH_NEW_PASSWORD");
        }
        bail!("no password given for the new repository: use --password-file or --password-command, or set VMSTASH_PASSWORD");
    }
    let first = rpassword::prompt_password("enter new password: ")?;
    let again = rpassword::prompt_password("enter the new password again: ")?;
    if first != again {
        bail!("the two passwords differ; nothing was changed");
    }
    Ok(first)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

fn from_file(path: &Path) -> Result<String> {
    let s = std::fs::read_to_string(path)
        .with_context(|| format!("reading the password file {}", path.display()))?;
    Ok(first_line(&s))
}

fn from_command(cmd: &str) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::inherit())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running the password command {cmd:?}"))?;
    if !out.status.success() {
        bail!("the password command {cmd:?} failed ({})", out.status);
    }
    Ok(first_line(&String::from_utf8_lossy(&out.stdout)))
}
