//! The HTTP API (spec/SERVE.md §6) and the dashboard's files, as one axum router. Handlers
//! are thin: they check the caller ([`auth`]), ask the runner or the catalog, and answer JSON;
//! blocking work (reading a repository) runs on tokio's blocking threads.

pub mod auth;
pub mod extract;
pub mod openapi;
pub mod routes;
pub mod sse;
pub mod types;
pub mod ui;

use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use crate::config::{Config, RepositoryDef};
use crate::jobs::Runner;
use crate::tokens::Tokens;

/// Reads a repository's snapshots and statistics for the API; the binary implements it on
/// the engine (it knows how to reach a repository and get its password).
pub trait Catalog: Send + Sync + 'static {
    /// The repository's snapshots as `vmstash snapshots --json` prints them, newest first,
    /// those of VM `vm` and with tag `tag` only when given.
    fn snapshots(
        &self,
        repository: &RepositoryDef,
        vm: Option<&str>,
        tag: Option<&str>,
    ) -> Result<Vec<Value>, String>;

    /// Logical and stored sizes, dedup and compression ratios (spec §6.2).
    fn stats(&self, repository: &RepositoryDef) -> Result<Value, String>;
}

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    /// The job runner (and through it the configuration and the event stream).
    pub runner: Runner,
    /// The tokens.
    pub tokens: Arc<Tokens>,
    /// The repositories' contents.
    pub catalog: Arc<dyn Catalog>,
    /// Failed authentications per address.
    pub limiter: Arc<auth::FailureLimiter>,
}

impl ApiState {
    /// The configuration.
    pub fn config(&self) -> &Config {
        self.runner.config()
    }
}

/// An error answer: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    header: Option<(HeaderName, &'static str)>,
}

impl ApiError {
    /// An error with `status` saying `message`.
    pub fn new(status: StatusCode, message: String) -> ApiError {
        ApiError {
            status,
            message,
            header: None,
        }
    }

    /// 404: what the caller asked for does not exist, or belongs to another tenant.
    pub fn not_found(message: String) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 500, with a message that says where to look (the details go to the daemon's log).
    pub fn internal(message: &str) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message.to_owned())
    }

    /// The same error with one more header.
    pub fn with_header(mut self, name: HeaderName, value: &'static str) -> ApiError {
        self.header = Some((name, value));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some((name, value)) = self.header {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

/// The whole router: the API under `/v1`, the dashboard at `/` and `/ui/*`.
pub fn router(state: ApiState) -> axum::Router {
    routes::v1()
        .route(
            "/v1/openapi.json",
            axum::routing::get(openapi::openapi_json),
        )
        .merge(ui::routes())
        .fallback(no_such_route)
        .with_state(state)
        .layer(axum::middleware::from_fn(security_headers))
}

/// 404 for a path no route serves, in the API's `{"error"}` form like every other error.
async fn no_such_route(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no such route: {}; the API's routes are listed in /v1/openapi.json",
        uri.path()
    ))
}

/// Headers every answer carries: no caching of API data, no sniffing, no framing.
async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        axum::http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    headers
        .entry(axum::http::header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
