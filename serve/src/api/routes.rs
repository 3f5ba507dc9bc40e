//! The `/v1` routes (spec/SERVE.md §6), one small handler each.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::{sse, ApiError, ApiState};
use crate::config::RepositoryDef;
use crate::jobs::{CancelError, Job, JobRequest, SubmitError, Trigger};
use crate::tokens::Role;

/// The longest idempotency key taken.
const MAX_IDEMPOTENCY_KEY: usize = 64;
/// The most jobs one list returns.
const MAX_LIST: usize = 1000;

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

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

async fn whoami(caller: Caller) -> Json<Value> {
    let t = &caller.token;
    Json(json!({ "id": t.id, "name": t.name, "role": t.role, "tenant": t.tenant }))
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

/// The repository `name` if the caller's tenant sees it.
fn visible_repository<'s>(
    state: &'s ApiState,
    caller: &Caller,
    name: &str,
) -> Result<&'s RepositoryDef, ApiError> {
    state
        .config()
        .repositories
        .get(name)
        .filter(|r| {
            caller
                .scope()
                .is_none_or(|t| r.tenant.as_deref() == Some(t))
        })
        .ok_or_else(|| ApiError::not_found(format!("no repository {name:?}")))
}

async fn repositories(State(state): State<ApiState>, caller: Caller) -> Json<Value> {
    let list: Vec<Value> = state
        .config()
        .repositories
        .values()
        .filter(|r| caller.scope().is_none_or(|t| r.tenant.as_deref() == Some(t)))
        .map(|r| json!({ "name": r.name, "location": shown_location(&r.location), "tenant": r.tenant }))
        .collect();
    Json(Value::Array(list))
}

/// Runs a catalog call on a blocking thread; its error is the daemon's fault (500), logged.
async fn catalog_call<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!("{what}: {e}");
            Err(ApiError::internal(&format!("{what}: {e}")))
        }
        Err(_) => Err(ApiError::internal(&format!("{what}: an internal error"))),
    }
}

#[derive(Deserialize)]
struct SnapshotQuery {
    vm: Option<String>,
    tag: Option<String>,
}

async fn snapshots(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<SnapshotQuery>,
) -> Result<Json<Value>, ApiError> {
    visible_repository(&state, &caller, &name)?;
    let catalog = state.catalog.clone();
    let runner = state.runner.clone();
    let list = catalog_call(format!("listing the snapshots of {name}"), move || {
        let repo = runner
            .config()
            .repositories
            .get(&name)
            .ok_or_else(|| format!("no repository {name:?}"))?;
        catalog.snapshots(repo, q.vm.as_deref(), q.tag.as_deref())
    })
    .await?;
    Ok(Json(Value::Array(list)))
}

async fn stats(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    visible_repository(&state, &caller, &name)?;
    let catalog = state.catalog.clone();
    let runner = state.runner.clone();
    let stats = catalog_call(format!("the statistics of {name}"), move || {
        let repo = runner
            .config()
            .repositories
            .get(&name)
            .ok_or_else(|| format!("no repository {name:?}"))?;
        catalog.stats(repo)
    })
    .await?;
    Ok(Json(stats))
}

async fn snapshot(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if id.len() < 4 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a snapshot id is 4 to 64 hex digits".into(),
        ));
    }
    let names: Vec<String> = state
        .config()
        .repositories
        .values()
        .filter(|r| {
            caller
                .scope()
                .is_none_or(|t| r.tenant.as_deref() == Some(t))
        })
        .map(|r| r.name.clone())
        .collect();
    let catalog = state.catalog.clone();
    let runner = state.runner.clone();
    let wanted = id.to_ascii_lowercase();
    let found = catalog_call(format!("looking for snapshot {id}"), move || {
        let mut found = Vec::new();
        for name in names {
            let Some(repo) = runner.config().repositories.get(&name) else {
                continue;
            };
            for s in catalog.snapshots(repo, None, None)? {
                if s["id"].as_str().is_some_and(|i| i.starts_with(&wanted)) {
                    let mut s = s;
                    s["repository"] = json!(name);
                    found.push(s);
                }
            }
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

async fn hypervisors(State(state): State<ApiState>, caller: Caller) -> Json<Value> {
    let list: Vec<Value> = state
        .config()
        .hypervisors
        .values()
        .filter(|h| {
            caller
                .scope()
                .is_none_or(|t| h.tenant.as_deref() == Some(t))
        })
        .map(|h| json!({ "name": h.name, "uri": shown_location(&h.uri), "tenant": h.tenant }))
        .collect();
    Json(Value::Array(list))
}

async fn schedules(State(state): State<ApiState>, caller: Caller) -> Json<Value> {
    let now = state.runner.now();
    let list: Vec<Value> = state
        .config()
        .jobs
        .values()
        .filter(|j| caller.scope().is_none_or(|t| j.tenant.as_deref() == Some(t)))
        .map(|j| {
            let next = j.schedule.as_ref().and_then(|s| s.next_after(now));
            json!({
                "name": j.name, "kind": "backup", "repository": j.repository,
                "hypervisor": j.hypervisor, "vms": j.vms.names, "all": j.vms.all,
                "exclude": j.vms.exclude,
                "schedule": j.schedule.as_ref().map(|s| s.text()),
                "time_zone": j.schedule.as_ref().map(|s| s.zone().name()),
                "next_run": next.map(|t| crate::jobs::model::rfc3339_text(&t)),
                "check": j.check.as_ref().map(|c| json!({
                    "schedule": c.schedule.text(),
                    "next_run": c.schedule.next_after(now).map(|t| crate::jobs::model::rfc3339_text(&t)),
                })),
                "tenant": j.tenant,
            })
        })
        .collect();
    Json(Value::Array(list))
}

#[derive(Deserialize)]
struct JobQuery {
    state: Option<String>,
    kind: Option<String>,
    limit: Option<usize>,
}

async fn jobs(
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

async fn start_job(
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

async fn job(
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

async fn job_log(
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

async fn cancel_job(
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

/// Whether a tenant-limited admin may see or manage a token of `tenant`.
fn manages(caller: &Caller, tenant: Option<&str>) -> bool {
    caller.scope().is_none_or(|t| tenant == Some(t))
}

async fn tokens(State(state): State<ApiState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Admin)?;
    let list = state.tokens.list().map_err(|e| {
        tracing::error!("tokens: {e}");
        ApiError::internal("the tokens cannot be read (see the daemon's log)")
    })?;
    let shown: Vec<Value> = list
        .into_iter()
        .filter(|t| manages(&caller, t.tenant.as_deref()))
        .map(|t| {
            json!({ "id": t.id, "name": t.name, "role": t.role, "tenant": t.tenant,
                    "created": t.created, "expires": t.expires })
        })
        .collect();
    Ok(Json(Value::Array(shown)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    role: Role,
    tenant: Option<String>,
    /// Days it is valid.
    expires_days: Option<u32>,
}

async fn create_token(
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
    let expires = new
        .expires_days
        .map(|d| now + chrono::TimeDelta::days(i64::from(d)));
    let (secret, record) = state
        .tokens
        .create(&new.name, new.role, tenant.as_deref(), expires, now)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "id": record.id, "token": secret, "role": record.role,
                     "tenant": record.tenant, "expires": record.expires }),
        ),
    )
        .into_response())
}

async fn revoke_token(
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
        .any(|t| t.id == id && manages(&caller, t.tenant.as_deref()));
    if !visible {
        return Err(ApiError::not_found(format!("no token {id}")));
    }
    state
        .tokens
        .revoke(&id)
        .map_err(|_| ApiError::internal("the tokens cannot be written (see the daemon's log)"))?;
    Ok(StatusCode::NO_CONTENT)
}
