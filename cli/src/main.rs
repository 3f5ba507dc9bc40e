//! `vmstash`: back up VM disks into an encrypted, deduplicating repository
//! and restore them bit for bit. See README.md for the commands and the
//! exit codes, spec/FORMAT.md for the repository format.

// A binary has no public API: `pub` here marks each module's interface.
#![allow(unreachable_pub)]

mod args;
mod backup;
mod cmd;
mod exit;
mod helper;
mod libvirt;
mod mount;
mod password;
mod pipeline;
mod progress;
mod restore;
mod restore_dest;
mod sftp_repo;
mod source;
mod ssh;
mod vmbackup;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("vmstash: {err:#}");
            if exit::is_disk_full(&err) {
                eprintln!("vmstash: the disk is full: free space and run the command again; the repository was not changed by the failed write");
            }
            exit::code_for(&err)
        }
    }
}
