//! `vmstash`: back up VM disks into an encrypted, deduplicating repository, restore them bit
//! for bit, and mount every backup. See README.md for the commands and the exit codes,
//! spec/FORMAT.md for the repository format.
//!
//! The binary's modules point one way: [`commands`] (one module per command) on top; below it
//! the hypervisor side ([`libvirt`], [`helper`], [`source`]), where restores go
//! ([`restore_target`]), the repository's location and opening ([`location`], [`repo`],
//! [`sftp_repo`], [`password`]), and what the user sees ([`output`], [`progress`], [`exit`],
//! [`interrupt`]), with the clap types ([`args`]) at the bottom. The engine is `vmstash-repo`.

// A binary has no public API: `pub` here marks each module's interface.
#![allow(unreachable_pub)]

mod args;
mod commands;
mod exit;
mod failpoint;
mod helper;
mod interrupt;
mod libvirt;
mod location;
mod output;
mod password;
mod progress;
mod qemu;
mod read_pipe;
mod repo;
mod restore_target;
mod sftp_repo;
mod source;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match commands::run(&cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("vmstash: {}", output::describe(&err));
            if exit::is_disk_full(&err) {
                eprintln!("vmstash: the disk is full: free space and run the command again; the repository was not changed by the failed write");
            }
            exit::code_for(&err)
        }
    }
}
