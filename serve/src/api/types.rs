//! The API's answers and request bodies that are not jobs (spec/SERVE.md §6), as types, so
//! that the OpenAPI document is generated from what the handlers really send.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::tokens::Role;

/// An error: what failed and what to do.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The message.
    pub error: String,
}

/// `GET /v1/health`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always "ok" when the daemon answers.
    pub status: String,
    /// The daemon's version.
    pub version: String,
}

/// `GET /v1/whoami`: the caller's token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// The token's id.
    pub id: String,
    /// What it is for.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The tenant it is limited to.
    pub tenant: Option<String>,
}

/// A configured repository.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RepositoryInfo {
    /// Its name.
    pub name: String,
    /// Where it is, without a URL's user part.
    pub location: String,
    /// Its tenant.
    pub tenant: Option<String>,
}

/// A configured hypervisor.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HypervisorInfo {
    /// Its name.
    pub name: String,
    /// Its URI, without the user part.
    pub uri: String,
    /// Its tenant.
    pub tenant: Option<String>,
}

/// A configured job's check schedule.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckSchedule {
    /// Its cron fields.
    pub schedule: String,
    /// Its next run (UTC).
    pub next_run: Option<String>,
}

/// A configured job with its next runs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleInfo {
    /// The job's name.
    pub name: String,
    /// What it starts ("backup").
    pub kind: String,
    /// Its repository.
    pub repository: String,
    /// Its hypervisor.
    pub hypervisor: String,
    /// Its VMs: names and globs.
    pub vms: Vec<String>,
    /// Every VM of the hypervisor.
    pub all: bool,
    /// VMs left out: names and globs.
    pub exclude: Vec<String>,
    /// Its cron fields; none: it runs when asked only.
    pub schedule: Option<String>,
    /// The time zone of its schedule.
    pub time_zone: Option<String>,
    /// Its next run (UTC).
    pub next_run: Option<String>,
    /// Its check, if it has one.
    pub check: Option<CheckSchedule>,
    /// Its tenant.
    pub tenant: Option<String>,
}

/// A token as lists show it: never its secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// Its id.
    pub id: String,
    /// What it is for.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The tenant it is limited to.
    pub tenant: Option<String>,
    /// When it was made (RFC 3339).
    pub created: String,
    /// When it expires (RFC 3339).
    pub expires: Option<String>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What it is for.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Limit it to this tenant (a tenant's admin makes its own tenant's only).
    pub tenant: Option<String>,
    /// Days it is valid (at most 36500, a hundred years); none: no expiry.
    #[schema(minimum = 0, maximum = 36500)]
    pub expires_days: Option<u32>,
}

/// A new token: the secret is in this answer only.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// Its id.
    pub id: String,
    /// The secret, for `Authorization: Bearer`.
    pub token: String,
    /// What it may do.
    pub role: Role,
    /// Its tenant.
    pub tenant: Option<String>,
    /// When it expires (RFC 3339).
    pub expires: Option<String>,
}
