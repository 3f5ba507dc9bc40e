//! Which jobs may not run at the same time (spec/SERVE.md §6.3): two jobs on one VM (two
//! backups would fight over its overlay or backup job), and two maintenance jobs (check,
//! forget, prune) on one repository.
//!
//! A backup of named VMs claims those names; a backup of a configured job whose VMs are
//! globs or `all` claims its selection, which only the hypervisor's list makes concrete, so
//! it conflicts with any named VM it would select and with any other selection on the same
//! hypervisor (which might select the same VMs).

use crate::config::Config;

use super::model::{Job, JobKind};

/// What a job holds while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// These VMs of a hypervisor.
    Vms {
        /// The hypervisor.
        hypervisor: String,
        /// The VMs' names.
        names: Vec<String>,
    },
    /// The VMs a configured job's selection picks on a hypervisor.
    Selection {
        /// The hypervisor.
        hypervisor: String,
        /// The configured job.
        job: String,
    },
    /// Maintenance of a repository.
    Maintenance(String),
}

/// What `job` claims.
pub fn claims(job: &Job, config: &Config) -> Vec<Claim> {
    match job.kind {
        JobKind::Backup => {
            let Some(hypervisor) = job.hypervisor.clone() else {
                return Vec::new();
            };
            match job.job.as_ref().and_then(|j| config.jobs.get(j)) {
                Some(def) if def.vms.all || def.vms.names.iter().any(|n| is_glob(n)) => {
                    vec![Claim::Selection {
                        hypervisor,
                        job: def.name.clone(),
                    }]
                }
                _ => vec![Claim::Vms {
                    hypervisor,
                    names: job.vms.clone(),
                }],
            }
        }
        JobKind::Check | JobKind::Forget | JobKind::Prune => job
            .repository
            .clone()
            .map(Claim::Maintenance)
            .into_iter()
            .collect(),
        JobKind::Restore | JobKind::Copy => Vec::new(),
    }
}

fn is_glob(name: &str) -> bool {
    name.contains(['*', '?', '[', '{'])
}

/// Whether two claims cannot be held at once.
pub fn conflict(a: &Claim, b: &Claim, config: &Config) -> bool {
    let selects = |job: &str, names: &[String]| {
        config
            .jobs
            .get(job)
            .is_none_or(|def| names.iter().any(|n| def.vms.contains(n)))
    };
    match (a, b) {
        (Claim::Maintenance(x), Claim::Maintenance(y)) => x == y,
        (
            Claim::Vms {
                hypervisor: h1,
                names: n1,
            },
            Claim::Vms {
                hypervisor: h2,
                names: n2,
            },
        ) => h1 == h2 && n1.iter().any(|n| n2.contains(n)),
        (Claim::Vms { hypervisor, names }, Claim::Selection { hypervisor: h, job })
        | (Claim::Selection { hypervisor: h, job }, Claim::Vms { hypervisor, names }) => {
            h == hypervisor && selects(job, names)
        }
        (Claim::Selection { hypervisor: h1, .. }, Claim::Selection { hypervisor: h2, .. }) => {
            h1 == h2
        }
        _ => false,
    }
}
