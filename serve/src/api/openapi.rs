//! The API's OpenAPI 3.1 document, generated from the handlers' annotations and the types
//! they send (utoipa), so that it cannot drift from the code. Served at `/v1/openapi.json`;
//! a copy is kept in `spec/openapi.json`, and a test fails when the two differ (run it with
//! `VMSTASH_BLESS=1` to rewrite the copy). Each operation's tag is the least role it needs.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{routes, sse, types};
use crate::jobs::model;
use crate::tokens::Role;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "vmstash serve",
        version = "1",
        description = "Backups, restores and checks of libvirt VMs on a vmstash daemon (spec/SERVE.md). Each operation's tag is the least role it needs."
    ),
    paths(
        routes::health,
        routes::whoami,
        routes::repositories,
        routes::snapshots,
        routes::stats,
        routes::snapshot,
        routes::hypervisors,
        routes::schedules,
        routes::jobs,
        routes::start_job,
        routes::job,
        routes::job_log,
        routes::cancel_job,
        sse::job_events,
        sse::all_events,
        routes::tokens,
        routes::create_token,
        routes::revoke_token,
        openapi_json,
    ),
    components(schemas(
        model::Job,
        model::JobId,
        model::JobKind,
        model::JobState,
        model::Trigger,
        model::Progress,
        model::DiskProgress,
        model::JobRequest,
        Role,
        types::ErrorBody,
        types::Health,
        types::WhoAmI,
        types::RepositoryInfo,
        types::HypervisorInfo,
        types::ScheduleInfo,
        types::CheckSchedule,
        types::TokenInfo,
        types::NewToken,
        types::CreatedToken,
    )),
    modifiers(&BearerScheme)
)]
pub struct ApiDoc;

/// Adds the bearer token scheme the operations' `security` names.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("vms_ token (vmstash serve token create)")
                        .build(),
                ),
            );
        }
    }
}

/// `GET /v1/openapi.json`.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "public",
    description = "This document; no token needed.",
    responses((status = 200, body = serde_json::Value))
)]
pub(super) async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/openapi.json")
    }

    #[test]
    fn the_kept_document_is_the_generated_one() {
        let generated = format!(
            "{}\n",
            ApiDoc::openapi().to_pretty_json().expect("serializes")
        );
        if std::env::var_os("VMSTASH_BLESS").is_some() {
            std::fs::write(kept(), &generated).expect("write spec/openapi.json");
        }
        let kept = std::fs::read_to_string(kept()).unwrap_or_default();
        assert!(
            kept == generated,
            "spec/openapi.json differs from the code's document: run `VMSTASH_BLESS=1 cargo test -p vmstash-serve openapi` and commit it"
        );
    }

    #[test]
    fn the_spec_table_lists_exactly_the_documented_routes() {
        let spec = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/SERVE.md"),
        )
        .expect("spec/SERVE.md");
        let mut in_spec: Vec<String> = spec
            .lines()
            .filter(|l| l.starts_with("| `"))
            .filter_map(|l| {
                let route = l.split('|').nth(1)?.trim().trim_matches('`');
                let (method, path) = route.split_once(' ')?;
                path.starts_with("/v1/").then(|| {
                    let path = path.split('?').next().unwrap_or(path);
                    format!("{method} {path}")
                })
            })
            .collect();
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        let mut documented: Vec<String> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .into_iter()
                    .flat_map(|o| o.keys())
                    .map(move |m| format!("{} {path}", m.to_uppercase()))
            })
            .collect();
        in_spec.sort();
        documented.sort();
        assert_eq!(in_spec, documented);
    }
}
