//! The `/v1` routes (spec/SERVE.md §6), one small handler each.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::types::{
    CheckSchedule, CreatedToken, ErrorBody, Health, HypervisorInfo, NewToken, RepositoryInfo,
    ScheduleInfo, TokenInfo, WhoAmI,
};
use crate::jobs::model::rfc3339_text;

use super::auth::Caller;
use super::extract::{Path, Query};
use super::{sse, ApiError, ApiState};
use crate::config::RepositoryDef;
use crate::jobs::{CancelError, Job, JobRequest, SubmitError, Trigger};
use crate::tokens::Role;

/// The longest idempotency key taken.
const MAX_IDEMPOTENCY_KEY: usize = 64;
/// The most jobs one list returns.
const MAX_LIST: usize = 1000;
/// The longest a token made through the API may be valid: a hundred years. More would reach
/// times that RFC 3339 cannot write (and, at some point, that chrono cannot add up to).
const MAX_EXPIRES_DAYS: u32 = 36_500;

/// Every `/v1` route.
pub fn v1() -> Router<ApiState> {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/whoami", get(whoami))
        .route("/v1/repositories", get(repositories))
        .route("/v1/repositories/{name}/snapshots", get(snapshots))
        .route("/v1/repositories/{name}/stats", get(stats))
        .route("/v1/snapshots/{id}", get(snapshot))
        .route("/v1/hypervisors", get(hypervisors))
        .route("/v1/schedules", get(schedules))
        .route("/v1/jobs", get(jobs).post(start_job))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/jobs/{id}/log", get(job_log))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/events", get(sse::job_events))
        .route("/v1/events", get(sse::all_events))
        .route("/v1/tokens", get(tokens).post(create_token))
        .route("/v1/tokens/{id}", delete(revoke_token))
}

#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "public",
    description = "Whether the daemon answers; no token needed.",
    responses((status = 200, body = Health))
)]
pub(super) async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

#[utoipa::path(
    get,
    path = "/v1/whoami",
    tag = "viewer",
    description = "The caller's token: id, name, role, tenant.",
    responses((status = 200, body = WhoAmI), (status = 401, description = "no, a wrong or an expired token", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn whoami(caller: Caller) -> Json<WhoAmI> {
    let t = caller.token;
    Json(WhoAmI {
        id: t.id,
        name: t.name,
        role: t.role,
        tenant: t.tenant,
    })
}

/// A location as the API shows it: without the user part of a URL.
fn shown_location(location: &str) -> String {
    match location.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.split_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{rest}")
        }
        None => location.to_owned(),
    }
}

/// The repository `name` if the caller's tenant sees it (a copy, for a catalog call).
fn visible_repository(
    state: &ApiState,
    caller: &Caller,
    name: &str,
) -> Result<RepositoryDef, ApiError> {
    state
        .config()
        .repositories
        .get(name)
        .filter(|r| caller.sees(r.tenant.as_deref()))
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no repository {name:?}")))
}

#[utoipa::path(
    get,
    path = "/v1/repositories",
    tag = "viewer",
    description = "The configured repositories the caller's tenant sees.",
    responses((status = 200, body = Vec<RepositoryInfo>), (status = 401, description = "no, a wrong or an expired token", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn repositories(
    State(state): State<ApiState>,
    caller: Caller,
) -> Json<Vec<RepositoryInfo>> {
    let list = state
        .config()
        .repositories
        .values()
        .filter(|r| caller.sees(r.tenant.as_deref()))
        .map(|r| RepositoryInfo {
            name: r.name.clone(),
            location: shown_location(&r.location),
            tenant: r.tenant.clone(),
        })
        .collect();
    Json(list)
}

/// Runs a catalog call; its error is the daemon's fault (500), logged.
///
/// It runs on a thread of its own, outside the async runtime: the engine's SSH and S3
/// clients block on runtimes of their own, which they may not do inside another's.
async fn catalog_call<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("catalog".into())
        .spawn(move || {
            let _ = tx.send(f());
        });
    if spawned.is_err() {
        return Err(ApiError::internal(&format!(
            "{what}: no thread could be started"
        )));
    }
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!("{what}: {e}");
            Err(ApiError::internal(&format!("{what}: {e}")))
        }
        Err(_) => Err(ApiError::internal(&format!("{what}: an internal error"))),
    }
}

#[derive(Deserialize)]
pub(super) struct SnapshotQuery {
    vm: Option<String>,
    tag: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/repositories/{name}/snapshots",
    tag = "viewer",
    description = "A repository's snapshots, newest first (as `vmstash snapshots --json`).",
    params(("name" = String, Path, description = "the repository"), ("vm" = Option<String>, Query, description = "only this VM's"), ("tag" = Option<String>, Query, description = "only those with this tag")),
    responses((status = 200, body = Vec<serde_json::Value>), (status = 400, description = "a query parameter that does not parse (or is repeated)", body = ErrorBody), (status = 401, description = "no, a wrong or an expired token", body = ErrorBody), (status = 404, description = "no such object (or another tenant's)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn snapshots(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<SnapshotQuery>,
) -> Result<Json<Value>, ApiError> {
    let repo = visible_repository(&state, &caller, &name)?;
    let catalog = state.catalog.clone();
    let list = catalog_call(format!("listing the snapshots of {name}"), move || {
        catalog.snapshots(&repo, q.vm.as_deref(), q.tag.as_deref())
    })
    .await?;
    Ok(Json(Value::Array(list)))
}

#[utoipa::path(
    get,
    path = "/v1/repositories/{name}/stats",
    tag = "viewer",
    description = "Logical and stored sizes, dedup and compression ratios (as `vmstash stats --json`).",
    params(("name" = String, Path, description = "the repository")),
    responses((status = 200, body = serde_json::Value), (status = 401, description = "no, a wrong or an expired token", body = ErrorBody), (status = 404, description = "no such object (or another tenant's)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn stats(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let repo = visible_repository(&state, &caller, &name)?;
    let catalog = state.catalog.clone();
    let stats = catalog_call(format!("the statistics of {name}"), move || {
        catalog.stats(&repo)
    })
    .await?;
    Ok(Json(stats))
}

#[utoipa::path(
    get,
    path = "/v1/snapshots/{id}",
    tag = "viewer",
    description = "One snapshot by id or unique prefix, in any repository the caller sees.",
    params(("id" = String, Path, description = "the snapshot's id or a unique prefix of it", pattern = "^[0-9a-fA-F]{4,64}$")),
    responses((status = 200, body = serde_json::Value), (status = 400, description = "not 4 to 64 hex digits", body = ErrorBody), (status = 401, description = "no, a wrong or an expired token", body = ErrorBody), (status = 404, description = "no such object (or another tenant's)", body = ErrorBody), (status = 409, description = "the prefix is ambiguous", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn snapshot(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !(4..=64).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a snapshot id is 4 to 64 hex digits".into(),
        ));
    }
    let repositories: Vec<RepositoryDef> = state
        .config()
        .repositories
        .values()
        .filter(|r| caller.sees(r.tenant.as_deref()))
        .cloned()
        .collect();
    let catalog = state.catalog.clone();
    let wanted = id.to_ascii_lowercase();
    let found = catalog_call(format!("looking for snapshot {id}"), move || {
        let mut found = Vec::new();
        let mut unreadable = Vec::new();
        for repo in repositories {
            let snapshots = match catalog.snapshots(&repo, None, None) {
                Ok(s) => s,
                Err(e) => {
                    unreadable.push(format!("{}: {e}", repo.name));
                    continue;
                }
            };
            for s in snapshots {
                if s["id"].as_str().is_some_and(|i| i.starts_with(&wanted)) {
                    let mut s = s;
                    s["repository"] = json!(repo.name);
                    found.push(s);
                }
            }
        }
        // A repository that cannot be read may hold it: not "not found", then.
        if found.is_empty() && !unreadable.is_empty() {
            return Err(unreadable.join("; "));
        }
        Ok(found)
    })
    .await?;
    match found.len() {
        1 => Ok(Json(found.into_iter().next().unwrap_or_default())),
        0 => Err(ApiError::not_found(format!("no snapshot {id}"))),
        n => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{id} is the start of {n} snapshots' ids: give more of it"),
        )),
    }
}

#[utoipa::path(
    get,
    path = "/v1/hypervisors",
    tag = "viewer",
    description = "The configured hypervisors the caller's tenant sees.",
    responses((status = 200, body = Vec<HypervisorInfo>), (status = 401, description = "no, a wrong or an expired token", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn hypervisors(
    State(state): State<ApiState>,
    caller: Caller,
) -> Json<Vec<HypervisorInfo>> {
    let list = state
        .config()
        .hypervisors
        .values()
        .filter(|h| caller.sees(h.tenant.as_deref()))
        .map(|h| HypervisorInfo {
            name: h.name.clone(),
            uri: shown_location(&h.uri),
            tenant: h.tenant.clone(),
        })
        .collect();
    Json(list)
}

#[utoipa::path(
    get,
    path = "/v1/schedules",
    tag = "viewer",
    description = "The configured jobs with their next runs.",
    responses((status = 200, body = Vec<ScheduleInfo>), (status = 401, description = "no, a wrong or an expired token", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn schedules(
    State(state): State<ApiState>,
    caller: Caller,
) -> Json<Vec<ScheduleInfo>> {
    let now = state.runner.now();
    let next = |s: &crate::schedule::Schedule| s.next_after(now).map(|t| rfc3339_text(&t));
    let list = state
        .config()
        .jobs
        .values()
        .filter(|j| caller.sees(j.tenant.as_deref()))
        .map(|j| ScheduleInfo {
            name: j.name.clone(),
            kind: "backup".into(),
            repository: j.repository.clone(),
            hypervisor: j.hypervisor.clone(),
            vms: j.vms.names.clone(),
            all: j.vms.all,
            exclude: j.vms.exclude.clone(),
            schedule: j.schedule.as_ref().map(|s| s.text().to_owned()),
            time_zone: j.schedule.as_ref().map(|s| s.zone().name().to_owned()),
            next_run: j.schedule.as_ref().and_then(next),
            check: j.check.as_ref().map(|c| CheckSchedule {
                schedule: c.schedule.text().to_owned(),
                next_run: next(&c.schedule),
            }),
            tenant: j.tenant.clone(),
        })
        .collect();
    Json(list)
}

#[derive(Deserialize)]
pub(super) struct JobQuery {
    state: Option<String>,
    kind: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "viewer",
    description = "Jobs the caller's tenant sees, newest first.",
    params(("state" = Option<String>, Query, description = "only jobs in this state"), ("kind" = Option<String>, Query, description = "only jobs of this kind"), ("limit" = Option<usize>, Query, description = "at most this many (1000 at most)")),
    responses((status = 200, body = Vec<Job>), (status = 400, description = "a query parameter that does not parse (limit: not a number from 0 up)", body = ErrorBody), (status = 401, description = "no, a wrong or an expired token", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn jobs(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<JobQuery>,
) -> Json<Vec<Job>> {
    let limit = q.limit.unwrap_or(MAX_LIST).min(MAX_LIST);
    let list = state
        .runner
        .list(caller.scope())
        .into_iter()
        .filter(|j| q.state.as_deref().is_none_or(|s| j.state.name() == s))
        .filter(|j| {
            q.kind
                .as_deref()
                .is_none_or(|k| serde_json::to_value(j.kind).ok() == Some(json!(k)))
        })
        .take(limit)
        .collect();
    Json(list)
}

fn job_location(job: &Job) -> String {
    format!("/v1/jobs/{}", job.id)
}

/// 202 with the job and its `Location`.
fn accepted(job: Job) -> Response {
    let location = job_location(&job);
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(job),
    )
        .into_response()
}

#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "operator",
    description = "Starts a job (spec section 6.3); a repeated Idempotency-Key returns the first job.",
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 64 printable ASCII characters")),
    request_body = JobRequest,
    responses((status = 202, description = "the job; its URL in Location", body = Job), (status = 400, description = "a malformed Idempotency-Key", body = ErrorBody), (status = 401, description = "no, a wrong or an expired token", body = ErrorBody), (status = 403, description = "the token's role is too weak", body = ErrorBody), (status = 404, description = "no such object (or another tenant's)", body = ErrorBody), (status = 409, description = "the Idempotency-Key was used for another request", body = ErrorBody), (status = 422, description = "not a job this daemon runs", body = ErrorBody), (status = 503, description = "the daemon is stopping", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn start_job(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let request: JobRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the request is not a job this daemon runs (spec/SERVE.md §6.3): {e}"),
        )
    })?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v.to_str().ok().filter(|k| {
                !k.is_empty()
                    && k.len() <= MAX_IDEMPOTENCY_KEY
                    && k.bytes().all(|b| b.is_ascii_graphic())
            });
            let key = key.ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "Idempotency-Key: 1 to 64 printable ASCII characters".into(),
                )
            })?;
            Some((caller.token.id.clone(), key.to_owned()))
        }
    };
    let runner = state.runner.clone();
    let scope = caller.token.tenant.clone();
    let submitted = tokio::task::spawn_blocking(move || {
        runner.submit(request, Trigger::Api, scope.as_deref(), key)
    })
    .await
    .map_err(|_| ApiError::internal("starting the job failed (see the daemon's log)"))?;
    match submitted {
        Ok((job, _)) => Ok(accepted(job)),
        Err(SubmitError::NotFound(m)) => Err(ApiError::not_found(m)),
        Err(SubmitError::Invalid(m)) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m)),
        Err(SubmitError::Conflict(m)) => Err(ApiError::new(StatusCode::CONFLICT, m)),
        Err(e @ SubmitError::Stopping) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "viewer",
    description = "One job.",
    params(("id" = String, Path, description = "the job's id")),
    responses((status = 200, body = Job), (status = 401, description = "no, a wrong or an expired token", body = ErrorBody), (status = 404, description = "no such object (or another tenant's)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn job(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    state
        .runner
        .get(&id, caller.scope())
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/log",
    tag = "viewer",
    description = "A job's log (its last 8 MiB), one line per event.",
    params(("id" = String, Path, description = "the job's id")),
    responses((status = 200, content_type = "text/plain", body = String), (status = 401, description = "no, a wrong or an expired token", body = ErrorBody), (status = 404, description = "no such object (or another tenant's)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn job_log(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let runner = state.runner.clone();
    let scope = caller.token.tenant.clone();
    let found = tokio::task::spawn_blocking(move || runner.log(&id, scope.as_deref()))
        .await
        .map_err(|_| ApiError::internal("reading the log failed"))?;
    match found {
        None => Err(ApiError::not_found("no such job".into())),
        Some(Err(e)) => {
            tracing::warn!("{e}");
            Err(ApiError::internal(
                "the job's log cannot be read (see the daemon's log)",
            ))
        }
        Some(Ok(text)) => {
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    tag = "operator",
    description = "Cancels a queued job, or stops a running one safely.",
    params(("id" = String, Path, description = "the job's id")),
    responses((status = 202, body = Job), (status = 401, description = "no, a wrong or an expired token", body = ErrorBody), (status = 403, description = "the token's role is too weak", body = ErrorBody), (status = 404, description = "no such object (or another tenant's)", body = ErrorBody), (status = 409, description = "the job has already ended", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn cancel_job(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    match state.runner.cancel(&id, caller.scope()) {
        Ok(job) => Ok(accepted(job)),
        Err(e @ CancelError::NotFound(_)) => Err(ApiError::not_found(e.to_string())),
        Err(e @ CancelError::Finished(..)) => {
            Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/tokens",
    tag = "admin",
    description = "The tokens (the caller's tenant's), without their secrets.",
    responses((status = 200, body = Vec<TokenInfo>), (status = 401, description = "no, a wrong or an expired token", body = ErrorBody), (status = 403, description = "the token's role is too weak", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn tokens(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    caller.require(Role::Admin)?;
    let list = state.tokens.list().map_err(|e| {
        tracing::error!("tokens: {e}");
        ApiError::internal("the tokens cannot be read (see the daemon's log)")
    })?;
    let shown = list
        .into_iter()
        .filter(|t| caller.sees(t.tenant.as_deref()))
        .map(|t| TokenInfo {
            id: t.id,
            name: t.name,
            role: t.role,
            tenant: t.tenant,
            created: rfc3339_text(&t.created),
            expires: t.expires.as_ref().map(rfc3339_text),
        })
        .collect();
    Ok(Json(shown))
}

#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "admin",
    description = "Makes a token; its secret is in this answer only.",
    request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 401, description = "no, a wrong or an expired token", body = ErrorBody), (status = 403, description = "the token's role is too weak", body = ErrorBody), (status = 404, description = "no such object (or another tenant's)", body = ErrorBody), (status = 422, description = "not a token request (or expires_days over 36500)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn create_token(
    State(state): State<ApiState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let new: NewToken = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("a token is {{\"name\", \"role\", \"tenant\"?, \"expires_days\"?}}: {e}"),
        )
    })?;
    // A tenant's admin makes tokens of its tenant only, and never a global one.
    let tenant = match (caller.scope(), new.tenant.as_deref()) {
        (Some(own), Some(t)) if t != own => {
            return Err(ApiError::not_found(format!("no tenant {t:?}")))
        }
        (Some(own), _) => Some(own.to_owned()),
        (None, t) => t.map(str::to_owned),
    };
    let now = chrono::Utc::now();
    let expires = match new.expires_days {
        None => None,
        Some(d) if d <= MAX_EXPIRES_DAYS => Some(now + chrono::TimeDelta::days(i64::from(d))),
        Some(d) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("expires_days {d}: at most {MAX_EXPIRES_DAYS}; leave it out for no expiry"),
            ))
        }
    };
    let (secret, record) = state
        .tokens
        .create(&new.name, new.role, tenant.as_deref(), expires, now)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            id: record.id,
            token: secret,
            role: record.role,
            tenant: record.tenant,
            expires: record.expires.as_ref().map(rfc3339_text),
        }),
    )
        .into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/tokens/{id}",
    tag = "admin",
    description = "Revokes a token.",
    params(("id" = String, Path, description = "the token's id")),
    responses((status = 204, description = "revoked"), (status = 401, description = "no, a wrong or an expired token", body = ErrorBody), (status = 403, description = "the token's role is too weak", body = ErrorBody), (status = 404, description = "no such object (or another tenant's)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn revoke_token(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    let visible = state
        .tokens
        .list()
        .map_err(|_| ApiError::internal("the tokens cannot be read (see the daemon's log)"))?
        .into_iter()
        .any(|t| t.id == id && caller.sees(t.tenant.as_deref()));
    if !visible {
        return Err(ApiError::not_found(format!("no token {id}")));
    }
    state
        .tokens
        .revoke(&id)
        .map_err(|_| ApiError::internal("the tokens cannot be written (see the daemon's log)"))?;
    Ok(StatusCode::NO_CONTENT)
}
