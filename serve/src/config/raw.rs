//! The configuration file as TOML reads it (spec/SERVE.md §1): every table refuses keys it
//! does not know, and the values other tables refer to keep their place in the file, so a
//! cross-check can name the line. [`super::Config::parse`] turns this into checked types.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub repositories: BTreeMap<Spanned<String>, Repository>,
    #[serde(default)]
    pub hypervisors: BTreeMap<Spanned<String>, Hypervisor>,
    #[serde(default)]
    pub jobs: BTreeMap<Spanned<String>, Job>,
    #[serde(default)]
    pub notifications: BTreeMap<Spanned<String>, Notification>,
}

/// `[server]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Server {
    pub listen: Option<Spanned<String>>,
    pub tls_cert: Option<Spanned<PathBuf>>,
    pub tls_key: Option<Spanned<PathBuf>>,
    pub plain_http: Option<Spanned<bool>>,
    pub state_dir: Option<PathBuf>,
    pub max_jobs: Option<Spanned<i64>>,
    pub time_zone: Option<Spanned<String>>,
    pub keep_history: Option<Spanned<i64>>,
    pub max_auth_failures: Option<Spanned<i64>>,
    #[serde(default)]
    pub restore_dirs: Vec<Spanned<PathBuf>>,
}

/// `[repositories.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Repository {
    pub location: Spanned<String>,
    pub password_file: Option<Spanned<PathBuf>>,
    pub password_command: Option<Spanned<String>>,
    pub tenant: Option<Spanned<String>>,
    pub s3_region: Option<String>,
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
}

/// `[hypervisors.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Hypervisor {
    pub uri: Spanned<String>,
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    #[serde(default)]
    pub accept_new_host_key: bool,
    pub tenant: Option<Spanned<String>>,
}

/// `[jobs.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Job {
    pub hypervisor: Spanned<String>,
    pub repository: Spanned<String>,
    pub vms: Option<Spanned<Vec<String>>>,
    pub all: Option<Spanned<bool>>,
    #[serde(default)]
    pub exclude: Vec<Spanned<String>>,
    #[serde(default)]
    pub exclude_disks: Vec<String>,
    pub schedule: Option<Spanned<String>>,
    pub time_zone: Option<Spanned<String>>,
    #[serde(default)]
    pub tags: Vec<Spanned<String>>,
    pub copy_to: Option<Spanned<String>>,
    #[serde(default)]
    pub notify: Vec<Spanned<String>>,
    pub retention: Option<Spanned<Retention>>,
    pub check: Option<Check>,
}

/// A count of a `keep_*` rule: a number, or `"unlimited"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Count {
    Number(i64),
    Text(String),
}

/// `[jobs.<name>.retention]`: `vmstash forget`'s `--keep-*` flags and prune's options.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Retention {
    pub keep_last: Option<Spanned<Count>>,
    pub keep_hourly: Option<Spanned<Count>>,
    pub keep_daily: Option<Spanned<Count>>,
    pub keep_weekly: Option<Spanned<Count>>,
    pub keep_monthly: Option<Spanned<Count>>,
    pub keep_yearly: Option<Spanned<Count>>,
    pub keep_within: Option<Spanned<String>>,
    pub keep_within_hourly: Option<Spanned<String>>,
    pub keep_within_daily: Option<Spanned<String>>,
    pub keep_within_weekly: Option<Spanned<String>>,
    pub keep_within_monthly: Option<Spanned<String>>,
    pub keep_within_yearly: Option<Spanned<String>>,
    #[serde(default)]
    pub keep_tags: Vec<String>,
    #[serde(default)]
    pub prune: bool,
    pub max_unused: Option<Spanned<String>>,
}

/// `[jobs.<name>.check]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Check {
    pub schedule: Spanned<String>,
    pub read_data_subset: Option<Spanned<String>>,
}

/// `[notifications.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Notification {
    #[serde(default)]
    pub on: Vec<Spanned<String>>,
    pub webhook: Option<Spanned<String>>,
    #[serde(default)]
    pub email_to: Vec<Spanned<String>>,
    pub email_from: Option<Spanned<String>>,
    pub smtp_server: Option<String>,
    pub smtp_port: Option<Spanned<i64>>,
    pub smtp_security: Option<Spanned<String>>,
    pub smtp_user: Option<String>,
    pub smtp_password_file: Option<PathBuf>,
}
