//! Who is calling (spec/SERVE.md §3): the bearer token checked against the tokens file, the
//! role a route needs, and a limit on failed attempts per address (`max_auth_failures` a
//! minute, 10 by default, then 429 for a minute, whatever is sent).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};

use super::{ApiError, ApiState};
use crate::jobs::resolve::in_scope;
use crate::tokens::{Role, TokenRecord, Verdict};

/// The window failures are counted in, and how long an address is refused after.
const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most (the oldest entries go first when full).
const MAX_TRACKED: usize = 10_000;

/// Failed authentications per address.
pub struct FailureLimiter {
    max: usize,
    failures: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

impl FailureLimiter {
    /// A limiter that refuses an address after `max` failures within a minute.
    pub fn new(max: usize) -> FailureLimiter {
        FailureLimiter {
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` is refused now: it failed `max` times within the window.
    fn refused(&self, ip: IpAddr, now: Instant) -> bool {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(times) = failures.get_mut(&ip) else {
            return false;
        };
        times.retain(|t| now.duration_since(*t) < WINDOW);
        times.len() >= self.max
    }

    /// Counts a failure of `ip`.
    fn failed(&self, ip: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&ip) {
            failures.retain(|_, times| {
                times.retain(|t| now.duration_since(*t) < WINDOW);
                !times.is_empty()
            });
            if failures.len() >= MAX_TRACKED {
                return;
            }
        }
        failures.entry(ip).or_default().push(now);
    }
}

/// The caller of a route: a valid token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its token's record.
    pub token: TokenRecord,
}

impl Caller {
    /// The tenant its token is limited to (`None`: every tenant).
    pub fn scope(&self) -> Option<&str> {
        self.token.tenant.as_deref()
    }

    /// Whether the caller sees an object of `tenant`.
    pub fn sees(&self, tenant: Option<&str>) -> bool {
        in_scope(tenant, self.scope())
    }

    /// Refuses (403) unless the token's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.token.role >= role {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this needs a token with role {} or above; token {} has role {}",
                    role.name(),
                    self.token.id,
                    self.token.role.name()
                ),
            ))
        }
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message.to_owned())
        .with_header(header::WWW_AUTHENTICATE, "Bearer")
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Caller, ApiError> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let now = Instant::now();
        if let Some(ip) = ip {
            if state.limiter.refused(ip, now) {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed authentications from this address: wait a minute".into(),
                )
                .with_header(header::RETRY_AFTER, "60"));
            }
        }
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let fail = |message: &str| {
            if let Some(ip) = ip {
                state.limiter.failed(ip, now);
            }
            unauthorized(message)
        };
        let Some(presented) = presented.filter(|p| !p.is_empty()) else {
            return Err(fail("no token: send Authorization: Bearer <token>"));
        };
        let verdict =
            tokio::task::block_in_place(|| state.tokens.verify(presented, chrono::Utc::now()))
                .map_err(|e| {
                    tracing::error!("tokens: {e}");
                    ApiError::internal("the tokens cannot be read (see the daemon's log)")
                })?;
        match verdict {
            Verdict::Valid(token) => Ok(Caller { token }),
            Verdict::Expired => Err(fail("this token has expired: ask for a new one")),
            Verdict::Unknown => Err(fail("unknown token")),
        }
    }
}
