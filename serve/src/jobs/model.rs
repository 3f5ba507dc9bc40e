//! A job as the API shows it and the history keeps it (spec/SERVE.md §6.1), and what can be
//! asked of the daemon (§6.3).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Back up VMs of a hypervisor.
    Backup,
    /// Restore a snapshot.
    Restore,
    /// Check a repository.
    Check,
    /// Apply a retention policy (and optionally prune).
    Forget,
    /// Prune a repository.
    Prune,
    /// Copy snapshots to another repository.
    Copy,
}

impl JobKind {
    /// The kind's name, as the API writes it.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Restore => "restore",
            JobKind::Check => "check",
            JobKind::Forget => "forget",
            JobKind::Prune => "prune",
            JobKind::Copy => "copy",
        }
    }
}

/// Where a job is in its life. The last three are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for its VMs, its repository or a free slot.
    Queued,
    /// Running.
    Running,
    /// Done, as asked.
    Succeeded,
    /// Stopped by an error.
    Failed,
    /// Stopped because it was asked to.
    Canceled,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Canceled
        )
    }

    /// The state's name, as the API writes it.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }
}

/// Who started a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// Its configured schedule (or a configured job's follow-up: retention, copy).
    Schedule,
    /// A request to the API.
    Api,
}

/// A disk's share of a backup's progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DiskProgress {
    /// The VM.
    pub vm: String,
    /// The disk (its target, `vda`).
    pub disk: String,
    /// Its virtual size.
    pub bytes_total: u64,
    /// How much of it has been looked at.
    pub bytes_scanned: u64,
}

/// How far a running job is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// Bytes the job will look at (a backup: the disks' virtual sizes).
    pub bytes_total: u64,
    /// Bytes looked at so far.
    pub bytes_scanned: u64,
    /// Bytes read from the source (changed-block tracking and the helper skip the rest).
    pub bytes_read: u64,
    /// Bytes added to the repository (compressed, encrypted).
    pub bytes_stored: u64,
    /// Chunks the repository did not have.
    pub chunks_new: u64,
    /// Chunks it had.
    pub chunks_known: u64,
    /// Bytes scanned per second, over the last few seconds.
    pub rate: f64,
    /// Seconds left at that rate; `None` when unknown.
    pub eta_seconds: Option<u64>,
    /// Per disk.
    pub disks: Vec<DiskProgress>,
}

/// What can be asked of the daemon: the body of `POST /v1/jobs` (§6.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum JobRequest {
    /// Back up: a configured job now, or VMs of a configured hypervisor into a repository.
    Backup {
        /// A configured job.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<String>,
        /// Or: the hypervisor …
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hypervisor: Option<String>,
        /// … the repository …
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repository: Option<String>,
        /// … and the VMs (names).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        vms: Vec<String>,
    },
    /// Restore a snapshot's disks (`<disk>.raw`) and domain XML into a directory.
    Restore {
        /// The repository.
        repository: String,
        /// The snapshot: an id, a unique prefix of one, or `latest`.
        snapshot: String,
        /// With `latest`: the newest snapshot of this VM.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vm: Option<String>,
        /// The configured hypervisor whose host gets the files (over SFTP) and defines the
        /// VM; none: the daemon's host, below one of `restore_dirs`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hypervisor: Option<String>,
        /// The directory (absolute; created when missing).
        target: String,
        /// Define the restored VM in libvirt.
        #[serde(default)]
        define: bool,
        /// The restored VM's name (with `define`; it then also gets a new UUID and new MAC
        /// addresses).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Check a repository.
    Check {
        /// The repository.
        repository: String,
        /// Read this share of the packs (`5%`, `1/7`); none: structure only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        read_data_subset: Option<String>,
    },
    /// Forget snapshots by a configured job's retention policy.
    Forget {
        /// The repository.
        repository: String,
        /// The configured job whose retention applies.
        job: String,
        /// Prune afterwards.
        #[serde(default)]
        prune: bool,
    },
    /// Prune a repository.
    Prune {
        /// The repository.
        repository: String,
    },
    /// Copy snapshots between repositories.
    Copy {
        /// From.
        from: String,
        /// To.
        to: String,
        /// Only this VM's snapshots.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vm: Option<String>,
    },
}

impl JobRequest {
    /// What kind of job it asks for.
    pub fn kind(&self) -> JobKind {
        match self {
            JobRequest::Backup { .. } => JobKind::Backup,
            JobRequest::Restore { .. } => JobKind::Restore,
            JobRequest::Check { .. } => JobKind::Check,
            JobRequest::Forget { .. } => JobKind::Forget,
            JobRequest::Prune { .. } => JobKind::Prune,
            JobRequest::Copy { .. } => JobKind::Copy,
        }
    }
}

/// A job's id: `j-`, its creation time (UTC, basic format), `-`, 4 random hex digits; ids
/// sort by creation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "j-20261204T020000Z-3f9a")]
pub struct JobId(String);

impl JobId {
    /// A new id for a job created at `at`, with `random` as its last digits.
    pub fn new(at: DateTime<Utc>, random: u16) -> JobId {
        JobId(format!("j-{}-{random:04x}", at.format("%Y%m%dT%H%M%SZ")))
    }

    /// Parses an id from a path or a file name; `None` unless it has the id's form (so it
    /// can name a file safely).
    pub fn parse(text: &str) -> Option<JobId> {
        let rest = text.strip_prefix("j-")?;
        let (time, random) = rest.split_once('-')?;
        let time_ok = time.len() == 16
            && time.as_bytes().get(8) == Some(&b'T')
            && time.ends_with('Z')
            && time
                .bytes()
                .enumerate()
                .all(|(i, b)| i == 8 || i == 15 || b.is_ascii_digit());
        let random_ok = random.len() == 4 && random.bytes().all(|b| b.is_ascii_hexdigit());
        (time_ok && random_ok).then(|| JobId(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job: what the API shows and the history keeps (§6.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// What it does.
    pub kind: JobKind,
    /// Where it is.
    pub state: JobState,
    /// Who started it.
    pub trigger: Trigger,
    /// The configured job it runs, if any.
    pub job: Option<String>,
    /// Its tenant (its repository's); `None`: the global tenant.
    pub tenant: Option<String>,
    /// The repository it works on (a copy: the source).
    pub repository: Option<String>,
    /// The hypervisor (a backup).
    pub hypervisor: Option<String>,
    /// The VMs, once known (a backup of globs: when it starts).
    pub vms: Vec<String>,
    /// When it was created.
    #[serde(with = "rfc3339")]
    pub created: DateTime<Utc>,
    /// When it started running.
    #[serde(with = "rfc3339_opt")]
    pub started: Option<DateTime<Utc>>,
    /// When it ended.
    #[serde(with = "rfc3339_opt")]
    pub finished: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
    /// How far it is.
    pub progress: Progress,
    /// The snapshots it wrote (hex ids).
    pub snapshots: Vec<String>,
    /// What was asked.
    pub request: JobRequest,
}

/// RFC 3339 in UTC with seconds, as the API writes times.
pub fn rfc3339_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339_text(t))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

mod rfc3339_opt {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        t: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::rfc3339_text(t)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| {
                DateTime::parse_from_rfc3339(&text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation_and_only_their_form_parses() {
        let a = JobId::new(
            DateTime::parse_from_rfc3339("2026-12-04T02:00:00Z")
                .expect("time")
                .with_timezone(&Utc),
            0xffff,
        );
        let b = JobId::new(
            DateTime::parse_from_rfc3339("2026-12-04T02:00:01Z")
                .expect("time")
                .with_timezone(&Utc),
            0,
        );
        assert_eq!(a.as_str(), "j-20261204T020000Z-ffff");
        assert!(a < b);
        assert_eq!(JobId::parse(a.as_str()), Some(a));
        for bad in [
            "",
            "j-",
            "j-20261204T020000Z-fff",
            "j-20261204T020000Z-ffff/..",
            "../etc/passwd",
            "j-2026120xT020000Z-ffff",
            "j-20261204T020000Z-fffg",
        ] {
            assert_eq!(JobId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn requests_read_as_the_api_documents_them() {
        let r: JobRequest =
            serde_json::from_str(r#"{"kind":"backup","job":"nightly"}"#).expect("backup");
        assert_eq!(r.kind(), JobKind::Backup);
        let r: JobRequest = serde_json::from_str(
            r#"{"kind":"restore","repository":"main","snapshot":"3f9a","target":"/x","define":true}"#,
        )
        .expect("restore");
        assert!(matches!(r, JobRequest::Restore { define: true, .. }));
        for bad in [
            r#"{"kind":"explode"}"#,
            r#"{"kind":"prune"}"#,
            r#"{"kind":"prune","repository":"main","extra":1}"#,
        ] {
            assert!(serde_json::from_str::<JobRequest>(bad).is_err(), "{bad}");
        }
    }
}
