//! The commands, one module each (or one per group): each parses nothing, opens what it needs
//! from the global options, calls the engine, and prints. Everything below (`libvirt`,
//! `restore_target`, `repo`, `output`, …) is shared by them and imports none of them.

mod backup;
mod browse;
mod cat;
mod check;
mod copy;
mod diff;
mod dump;
mod find;
mod forget;
mod init;
mod key;
mod ls;
mod mount;
mod prune;
mod repair;
mod restore;
mod restore_files;
mod serve;
mod snapshots;
mod stats;
mod tag;
mod unlock;
mod vm_repair;
mod vms;
mod walk;

use std::process::ExitCode;

use anyhow::Result;

use crate::args::{Cli, Command};

/// Runs one command.
pub fn run(cli: &Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match &cli.command {
        Command::Init(a) => init::run(g, a),
        Command::Backup(a) => backup::run(g, a),
        Command::Vms(a) => vms::run(g, a),
        Command::VmRepair(a) => vm_repair::run(g, a),
        Command::Mount(a) => mount::run(g, a),
        Command::Snapshots(a) => snapshots::run(g, a),
        Command::Forget(a) => forget::run(g, a),
        Command::Prune(a) => prune::run(g, &a.options, a.dry_run),
        Command::Tag(a) => tag::run(g, a),
        Command::Unlock(a) => unlock::run(g, a),
        Command::Repair(c) => repair::run(g, c),
        Command::Diff(a) => diff::run(g, a),
        Command::Restore(a) => restore::run(g, a),
        Command::Ls(a) => ls::run(g, a),
        Command::Dump(a) => dump::run(g, a),
        Command::Find(a) => find::run(g, a),
        Command::Serve(a) => serve::run(g, a),
        Command::Copy(a) => copy::run(g, a),
        Command::Check(a) => check::run(g, a),
        Command::Cat(a) => cat::run(g, a),
        Command::Key(k) => key::run(g, k),
        Command::Stats => stats::run(g),
    }
}
