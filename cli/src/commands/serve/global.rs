//! The options a command would take from the command line, made from the daemon's
//! configuration: the repository (location, password source, S3 region, SSH key) and the
//! hypervisor's SSH options, with output kept quiet (the job's log says what happens).

use vmstash_serve::config::{HypervisorDef, PasswordSource, RepositoryDef};

use crate::args::{BucketLookup, Global};

/// The options for work on `repository` (and VMs of `hypervisor`).
pub fn for_repository(repository: &RepositoryDef, hypervisor: Option<&HypervisorDef>) -> Global {
    let (password_file, password_command) = match &repository.password {
        PasswordSource::File(f) => (Some(f.clone()), None),
        PasswordSource::Command(c) => (None, Some(c.clone())),
    };
    Global {
        repo: Some(repository.location.clone()),
        password_file,
        password_command,
        json: false,
        verbose: 0,
        quiet: true,
        no_lock: false,
        identity: hypervisor
            .and_then(|h| h.identity.clone())
            .or_else(|| repository.identity.clone()),
        known_hosts: hypervisor
            .and_then(|h| h.known_hosts.clone())
            .or_else(|| repository.known_hosts.clone()),
        accept_new_host_key: hypervisor.is_some_and(|h| h.accept_new_host_key),
        s3_region: repository.s3_region.clone(),
        s3_bucket_lookup: BucketLookup::Auto,
    }
}
