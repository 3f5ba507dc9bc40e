//! The daemon's configuration (spec/SERVE.md §1), read once at start: TOML that refuses keys
//! it does not know, then checked as a whole — every problem found is reported with its
//! file, line and column, not only the first. A [`Config`] that exists is valid.

mod checks;
mod raw;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use globset::GlobSet;
use vmstash_repo::check::ReadData;
use vmstash_repo::policy::KeepPolicy;
use vmstash_repo::prune::PruneOptions;

pub(crate) use checks::is_name;

use crate::error::{ConfigIssue, ServeError};
use crate::schedule::Schedule;

/// Where the daemon listens by default: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// The state directory when none is configured.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vmstash";
/// Jobs running at once when `max_jobs` is not given.
pub const DEFAULT_MAX_JOBS: usize = 2;
/// Finished jobs kept in the history when `keep_history` is not given.
pub const DEFAULT_KEEP_HISTORY: usize = 1000;
/// Failed authentications an address may make in a minute when `max_auth_failures` is not
/// given.
pub const DEFAULT_MAX_AUTH_FAILURES: usize = 10;

/// The whole configuration, checked.
#[derive(Debug)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// `[server]`.
    pub server: Server,
    /// `[repositories.<name>]`, by name.
    pub repositories: BTreeMap<String, RepositoryDef>,
    /// `[hypervisors.<name>]`, by name.
    pub hypervisors: BTreeMap<String, HypervisorDef>,
    /// `[jobs.<name>]`, by name.
    pub jobs: BTreeMap<String, JobDef>,
    /// `[notifications.<name>]`, by name.
    pub notifications: BTreeMap<String, NotificationDef>,
    /// What is allowed but unwise (a password file others can read), one line each.
    pub warnings: Vec<String>,
}

/// `[server]`.
#[derive(Debug)]
pub struct Server {
    /// The address the API listens on.
    pub listen: SocketAddr,
    /// How connections are secured.
    pub transport: Transport,
    /// History, tokens, schedule state and the generated certificate (§2).
    pub state_dir: PathBuf,
    /// Jobs running at once.
    pub max_jobs: NonZeroUsize,
    /// The time zone of schedules that name none.
    pub time_zone: Tz,
    /// Finished jobs kept.
    pub keep_history: usize,
    /// Failed authentications an address may make in a minute before it is refused (429)
    /// for a minute.
    pub max_auth_failures: usize,
    /// The directories of the daemon's host that restore jobs without a hypervisor may
    /// write below (§6.3); none: such restores are refused.
    pub restore_dirs: Vec<PathBuf>,
}

/// How the API's connections are secured (§5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// TLS with the configured certificate chain and key (PEM files).
    Tls {
        /// The certificate chain.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
    /// TLS with a certificate the daemon generates in its state directory.
    SelfSigned,
    /// Plain HTTP, on a loopback address only.
    PlainHttp,
}

/// Where a repository's password comes from; never the password itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// The first line of this file.
    File(PathBuf),
    /// The first line this shell command prints.
    Command(String),
}

/// `[repositories.<name>]`.
#[derive(Debug, Clone)]
pub struct RepositoryDef {
    /// Its name in the configuration and the API.
    pub name: String,
    /// As `vmstash -r`: a path, `sftp://…` or `s3://…`.
    pub location: String,
    /// Its password's source.
    pub password: PasswordSource,
    /// The tenant it belongs to; `None`: the global tenant.
    pub tenant: Option<String>,
    /// The S3 region, for an S3 location.
    pub s3_region: Option<String>,
    /// The SSH key, for an SFTP location.
    pub identity: Option<PathBuf>,
    /// The known-hosts file, for an SFTP location.
    pub known_hosts: Option<PathBuf>,
}

/// `[hypervisors.<name>]`.
#[derive(Debug)]
pub struct HypervisorDef {
    /// Its name in the configuration and the API.
    pub name: String,
    /// The libvirt URI (`qemu+ssh://…`).
    pub uri: String,
    /// The SSH key.
    pub identity: Option<PathBuf>,
    /// The known-hosts file.
    pub known_hosts: Option<PathBuf>,
    /// Trust and record an unknown host key on first connection.
    pub accept_new_host_key: bool,
    /// The tenant it belongs to.
    pub tenant: Option<String>,
}

/// Which VMs of a hypervisor a job backs up.
#[derive(Debug)]
pub struct VmSelection {
    /// Every VM (`all = true`), else those matching `names`.
    pub all: bool,
    /// Names and globs, as written.
    pub names: Vec<String>,
    names_set: GlobSet,
    /// Names and globs left out, as written.
    pub exclude: Vec<String>,
    exclude_set: GlobSet,
}

impl VmSelection {
    /// Of the hypervisor's VMs, those this job backs up, in the hypervisor's order.
    pub fn select<'a>(&self, vms: &'a [String]) -> Vec<&'a str> {
        vms.iter()
            .map(String::as_str)
            .filter(|v| (self.all || self.names_set.is_match(v)) && !self.exclude_set.is_match(v))
            .collect()
    }

    /// Whether `vm` is one of this job's VMs.
    pub fn contains(&self, vm: &str) -> bool {
        !self.select(&[vm.to_owned()]).is_empty()
    }
}

/// What `forget` (and optionally `prune`) does after each run of a job.
#[derive(Debug)]
pub struct Retention {
    /// The `--keep-*` rules.
    pub policy: KeepPolicy,
    /// Prune afterwards with these options; `None`: forget only.
    pub prune: Option<PruneOptions>,
}

/// `[jobs.<name>.check]`.
#[derive(Debug)]
pub struct CheckDef {
    /// When.
    pub schedule: Schedule,
    /// Which packs to read beyond the structure.
    pub read_data: ReadData,
    /// That share as written (`5%`), for the check job's request.
    pub read_data_subset: Option<String>,
}

/// `[jobs.<name>]`.
#[derive(Debug)]
pub struct JobDef {
    /// Its name.
    pub name: String,
    /// The hypervisor the VMs run on.
    pub hypervisor: String,
    /// The repository the snapshots go to.
    pub repository: String,
    /// Which VMs.
    pub vms: VmSelection,
    /// Disks (targets, `vdb`) left out of every VM.
    pub exclude_disks: Vec<String>,
    /// When it runs by itself; `None`: only when asked.
    pub schedule: Option<Schedule>,
    /// Tags added to every snapshot.
    pub tags: Vec<String>,
    /// A repository the new snapshots are copied to afterwards.
    pub copy_to: Option<String>,
    /// The notifications told when it ends.
    pub notify: Vec<String>,
    /// Forget (and prune) after each run.
    pub retention: Option<Retention>,
    /// A scheduled check of its repository.
    pub check: Option<CheckDef>,
    /// Its tenant: its repository's.
    pub tenant: Option<String>,
}

/// A final state a notification can be sent for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyOn {
    /// The job failed.
    Failed,
    /// It was canceled.
    Canceled,
    /// It succeeded.
    Succeeded,
}

/// Email through SMTP.
#[derive(Debug, Clone)]
pub struct Email {
    /// Recipients.
    pub to: Vec<lettre::message::Mailbox>,
    /// Sender.
    pub from: lettre::message::Mailbox,
    /// SMTP server.
    pub server: String,
    /// Its port.
    pub port: u16,
    /// How the connection is secured.
    pub security: SmtpSecurity,
    /// Login, when the server needs one.
    pub user: Option<String>,
    /// The login's password file.
    pub password_file: Option<PathBuf>,
}

/// How the connection to an SMTP server is secured (`smtp_security`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain, then upgraded with STARTTLS, which must succeed (default; port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only to an SMTP server on a loopback address (port 25).
    Plain,
}

impl SmtpSecurity {
    /// The port used when `smtp_port` is not given.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::Plain => 25,
        }
    }
}

/// `[notifications.<name>]`.
#[derive(Debug)]
pub struct NotificationDef {
    /// Its name.
    pub name: String,
    /// The final states it is sent for.
    pub on: Vec<NotifyOn>,
    /// A URL the job is POSTed to.
    pub webhook: Option<String>,
    /// An email.
    pub email: Option<Email>,
}

impl Config {
    /// Reads and checks the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ServeError> {
        let text = std::fs::read_to_string(path).map_err(ServeError::io(format!(
            "reading the configuration {}",
            path.display()
        )))?;
        Config::parse(path, &text)
    }

    /// Checks the configuration `text` (read from `path`, which the errors name).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ServeError> {
        let file: raw::File = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            ServeError::Config(vec![ConfigIssue::at(
                path,
                text,
                at,
                e.message().trim_end().to_owned(),
            )])
        })?;
        checks::check(path, text, file)
    }

    /// The tenant of the repository named `name` (`None` also when there is none).
    pub fn tenant_of_repository(&self, name: &str) -> Option<&str> {
        self.repositories.get(name)?.tenant.as_deref()
    }
}
