//! From a request to what the job works on: every name looked up in the configuration, in
//! the caller's tenant only (another tenant's repository is "not found", spec/SERVE.md §4).

use vmstash_repo::check::ReadData;

use super::model::{JobKind, JobRequest};
use crate::config::{Config, HypervisorDef, JobDef};

/// Who is asking: the tenant a token is limited to (`None`: every tenant).
pub type Scope<'a> = Option<&'a str>;

/// Why a job was not created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// It names something that is not configured (or not the caller's tenant's).
    #[error("{0}")]
    NotFound(String),
    /// It is well formed but cannot be done.
    #[error("{0}")]
    Invalid(String),
    /// It reuses an idempotency key with another request.
    #[error("{0}")]
    Conflict(String),
    /// The daemon is stopping.
    #[error("the daemon is stopping: no new job is started")]
    Stopping,
}

/// What a request resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The job's kind.
    pub kind: JobKind,
    /// The configured job it runs.
    pub job: Option<String>,
    /// Its tenant.
    pub tenant: Option<String>,
    /// The repository.
    pub repository: Option<String>,
    /// The hypervisor.
    pub hypervisor: Option<String>,
    /// The VMs named (empty for a selection of globs, known when it runs).
    pub vms: Vec<String>,
}

/// Whether an object of `tenant` is seen by a caller limited to `scope`.
pub fn in_scope(tenant: Option<&str>, scope: Scope<'_>) -> bool {
    scope.is_none_or(|s| tenant == Some(s))
}

/// The repository `name`, if the scope sees it; returns its tenant.
fn repository(
    config: &Config,
    name: &str,
    scope: Scope<'_>,
) -> Result<Option<String>, SubmitError> {
    config
        .repositories
        .get(name)
        .filter(|r| in_scope(r.tenant.as_deref(), scope))
        .map(|r| r.tenant.clone())
        .ok_or_else(|| SubmitError::NotFound(format!("no repository {name:?}")))
}

/// The hypervisor `name`, if the scope sees it and it is of `tenant`.
fn hypervisor_def<'c>(
    config: &'c Config,
    name: &str,
    tenant: Option<&str>,
    scope: Scope<'_>,
) -> Result<&'c HypervisorDef, SubmitError> {
    config
        .hypervisors
        .get(name)
        .filter(|h| in_scope(h.tenant.as_deref(), scope) && h.tenant.as_deref() == tenant)
        .ok_or_else(|| SubmitError::NotFound(format!("no hypervisor {name:?}")))
}

fn configured_job<'c>(
    config: &'c Config,
    name: &str,
    scope: Scope<'_>,
) -> Result<&'c JobDef, SubmitError> {
    config
        .jobs
        .get(name)
        .filter(|j| in_scope(j.tenant.as_deref(), scope))
        .ok_or_else(|| SubmitError::NotFound(format!("no configured job {name:?}")))
}

/// Resolves `request` for a caller limited to `scope`.
pub fn resolve(
    config: &Config,
    request: &JobRequest,
    scope: Scope<'_>,
) -> Result<Resolved, SubmitError> {
    let kind = request.kind();
    let plain = |repository: &str, tenant| Resolved {
        kind,
        job: None,
        tenant,
        repository: Some(repository.to_owned()),
        hypervisor: None,
        vms: Vec::new(),
    };
    match request {
        JobRequest::Backup {
            job: Some(name),
            hypervisor,
            repository,
            vms,
        } => {
            if hypervisor.is_some() || repository.is_some() || !vms.is_empty() {
                return Err(SubmitError::Invalid(
                    "a backup names a configured job, or a hypervisor, a repository and VMs: not both".into(),
                ));
            }
            let def = configured_job(config, name, scope)?;
            let globbed = def.vms.all
                || def
                    .vms
                    .names
                    .iter()
                    .any(|n| n.contains(['*', '?', '[', '{']));
            Ok(Resolved {
                kind,
                job: Some(def.name.clone()),
                tenant: def.tenant.clone(),
                repository: Some(def.repository.clone()),
                hypervisor: Some(def.hypervisor.clone()),
                vms: if globbed {
                    Vec::new()
                } else {
                    def.vms.names.clone()
                },
            })
        }
        JobRequest::Backup {
            job: None,
            hypervisor,
            repository: repo,
            vms,
        } => {
            let (Some(hv), Some(repo)) = (hypervisor, repo) else {
                return Err(SubmitError::Invalid(
                    "a backup names a configured job (\"job\"), or a hypervisor, a repository and VMs".into(),
                ));
            };
            let tenant = repository(config, repo, scope)?;
            let hv_def = hypervisor_def(config, hv, tenant.as_deref(), scope)?;
            if vms.is_empty() || vms.iter().any(|v| v.is_empty() || v.contains('/')) {
                return Err(SubmitError::Invalid(
                    "\"vms\" names the VMs to back up (at least one; names, not globs)".into(),
                ));
            }
            Ok(Resolved {
                kind,
                job: None,
                tenant,
                repository: Some(repo.clone()),
                hypervisor: Some(hv_def.name.clone()),
                vms: vms.clone(),
            })
        }
        JobRequest::Restore {
            repository: repo,
            snapshot,
            hypervisor: hv,
            target,
            name,
            define,
            ..
        } => {
            let tenant = repository(config, repo, scope)?;
            if snapshot.is_empty() {
                return Err(SubmitError::Invalid(
                    "a restore names a snapshot (an id, a prefix of one, or \"latest\")".into(),
                ));
            }
            if name.is_some() && !define {
                return Err(SubmitError::Invalid(
                    "\"name\" names the VM a restore defines: it needs \"define\": true".into(),
                ));
            }
            let target_path = std::path::Path::new(target);
            if !target_path.is_absolute()
                || target_path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(SubmitError::Invalid(format!(
                    "target {target:?} is not an absolute directory without '..'"
                )));
            }
            let mut r = plain(repo, tenant.clone());
            match hv {
                Some(hv) => {
                    r.hypervisor = Some(
                        hypervisor_def(config, hv, tenant.as_deref(), scope)?
                            .name
                            .clone(),
                    );
                }
                None if scope.is_some() => {
                    return Err(SubmitError::Invalid(
                        "a tenant's restore names one of its hypervisors (\"hypervisor\"): the daemon's own host is not a tenant's".into(),
                    ));
                }
                None if !config
                    .server
                    .restore_dirs
                    .iter()
                    .any(|d| target_path.starts_with(d)) =>
                {
                    return Err(SubmitError::Invalid(format!(
                        "target {target:?} is not below one of the server's restore_dirs ({}); name a hypervisor to restore onto its host",
                        if config.server.restore_dirs.is_empty() {
                            "none are configured".to_owned()
                        } else {
                            config.server.restore_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
                        }
                    )));
                }
                None => {}
            }
            Ok(r)
        }
        JobRequest::Check {
            repository: repo,
            read_data_subset,
        } => {
            let tenant = repository(config, repo, scope)?;
            if let Some(subset) = read_data_subset {
                ReadData::parse_subset(subset)
                    .map_err(|e| SubmitError::Invalid(format!("read_data_subset: {e}")))?;
            }
            Ok(plain(repo, tenant))
        }
        JobRequest::Forget {
            repository: repo,
            job,
            ..
        } => {
            let tenant = repository(config, repo, scope)?;
            let def = configured_job(config, job, scope)?;
            if def.retention.is_none() || def.repository != *repo {
                return Err(SubmitError::Invalid(format!(
                    "job {job:?} has no retention for repository {repo:?}"
                )));
            }
            let mut r = plain(repo, tenant);
            r.job = Some(def.name.clone());
            Ok(r)
        }
        JobRequest::Prune { repository: repo } => {
            let tenant = repository(config, repo, scope)?;
            Ok(plain(repo, tenant))
        }
        JobRequest::Copy { from, to, .. } => {
            let tenant = repository(config, from, scope)?;
            if repository(config, to, scope)? != tenant {
                return Err(SubmitError::NotFound(format!("no repository {to:?}")));
            }
            if from == to {
                return Err(SubmitError::Invalid("a copy needs two repositories".into()));
            }
            Ok(plain(from, tenant))
        }
    }
}
