//! API tokens (spec/SERVE.md §3): `vms_` and 43 characters of base64url (32 random bytes),
//! shown once when made; `tokens.json` keeps only their SHA-256, role, tenant and expiry.
//! A presented token is hashed and compared with every stored hash in constant time. The
//! file is read again whenever it changes, so `vmstash serve token revoke` works on a
//! running daemon.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::config::is_name;
use crate::error::ServeError;
use crate::state_dir::{read_bounded, StateDir};

/// What every token starts with (so a leaked one is recognisable in logs and scanners).
pub const PREFIX: &str = "vms_";
/// Random bytes in a token.
const SECRET_BYTES: usize = 32;
/// Characters of the token (after the prefix) that form its public id.
const ID_CHARS: usize = 8;
/// The largest tokens file read.
const MAX_FILE: u64 = 4 << 20;

/// What a token may do; each role includes the ones before it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Also starts and cancels jobs.
    Operator,
    /// Also manages tokens.
    Admin,
}

impl Role {
    /// Parses `viewer`, `operator` or `admin`.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// A stored token: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The first characters after `vms_`, shown in lists and logs.
    pub id: String,
    /// What it is for.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The tenant it is limited to; `None`: every tenant.
    pub tenant: Option<String>,
    /// When it was made.
    pub created: DateTime<Utc>,
    /// When it stops working.
    pub expires: Option<DateTime<Utc>>,
    /// Hex SHA-256 of the whole token.
    pub sha256: String,
}

impl TokenRecord {
    /// Whether it has expired at `now`.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokensFile {
    tokens: Vec<TokenRecord>,
}

/// What a presented token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A valid token.
    Valid(TokenRecord),
    /// Known, but past its expiry.
    Expired,
    /// Not a token of this daemon.
    Unknown,
}

/// The tokens file, re-read when it changes.
pub struct Tokens {
    state: StateDir,
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, Vec<TokenRecord>)>,
}

impl Tokens {
    /// The tokens of the state directory `state`.
    pub fn new(state: StateDir) -> Tokens {
        let path = state.root().join("tokens.json");
        Tokens {
            state,
            path,
            cache: Mutex::new((None, Vec::new())),
        }
    }

    fn read(path: &Path) -> Result<Vec<TokenRecord>, ServeError> {
        let Some(bytes) = read_bounded(path, MAX_FILE)? else {
            return Ok(Vec::new());
        };
        let file: TokensFile = serde_json::from_slice(&bytes).map_err(|e| {
            ServeError::State(format!(
                "{} is damaged ({e}): no token works until it is repaired or removed",
                path.display()
            ))
        })?;
        Ok(file.tokens)
    }

    /// Every stored token (re-reading the file when it changed).
    pub fn list(&self) -> Result<Vec<TokenRecord>, ServeError> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.0 != modified || modified.is_none() {
            *cache = (modified, Tokens::read(&self.path)?);
        }
        Ok(cache.1.clone())
    }

    /// What `presented` is at `now`: hashed, compared with every stored hash in constant
    /// time (all are compared, whichever matches).
    pub fn verify(&self, presented: &str, now: DateTime<Utc>) -> Result<Verdict, ServeError> {
        let hash = Sha256::digest(presented.as_bytes());
        let mut found = None;
        for record in self.list()? {
            let stored = hex::decode(&record.sha256).unwrap_or_default();
            if stored.len() == hash.len() && bool::from(stored.ct_eq(hash.as_slice())) {
                found = Some(record);
            }
        }
        Ok(match found {
            Some(r) if r.expired(now) => Verdict::Expired,
            Some(r) => Verdict::Valid(r),
            None => Verdict::Unknown,
        })
    }

    /// Makes a token; returns the secret (shown once, stored nowhere) and its record.
    pub fn create(
        &self,
        name: &str,
        role: Role,
        tenant: Option<&str>,
        expires: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(String, TokenRecord), ServeError> {
        if let Some(t) = tenant.filter(|t| !is_name(t)) {
            return Err(ServeError::State(format!(
                "tenant {t:?} is not a name: use 1 to 64 of a-z, 0-9, '_' and '-'"
            )));
        }
        let mut bytes = [0u8; SECRET_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        let secret = format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let record = TokenRecord {
            id: secret
                .get(PREFIX.len()..PREFIX.len() + ID_CHARS)
                .unwrap_or_default()
                .to_owned(),
            name: name.to_owned(),
            role,
            tenant: tenant.map(str::to_owned),
            created: now,
            expires,
            sha256: hex::encode(Sha256::digest(secret.as_bytes())),
        };
        let mut tokens = Tokens::read(&self.path)?;
        if tokens.iter().any(|t| t.id == record.id) {
            return Err(ServeError::State(
                "a token with the same id exists (a one in 2^48 chance): run the command again"
                    .into(),
            ));
        }
        tokens.push(record.clone());
        self.write(tokens)?;
        Ok((secret, record))
    }

    /// Revokes the token with id `id`; false when there is none.
    pub fn revoke(&self, id: &str) -> Result<bool, ServeError> {
        let mut tokens = Tokens::read(&self.path)?;
        let before = tokens.len();
        tokens.retain(|t| t.id != id);
        if tokens.len() == before {
            return Ok(false);
        }
        self.write(tokens)?;
        Ok(true)
    }

    fn write(&self, tokens: Vec<TokenRecord>) -> Result<(), ServeError> {
        let bytes = serde_json::to_vec_pretty(&TokensFile { tokens })
            .map_err(|e| ServeError::State(format!("the tokens cannot be written: {e}")))?;
        self.state.replace(&self.path, &bytes)?;
        // The next read must see this write even within the file time's resolution.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).0 = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-04T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_token_is_stored_as_a_hash_and_verified_until_revoked_or_expired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = Tokens::new(StateDir::open(dir.path()).expect("state"));
        let (secret, record) = tokens
            .create("ci", Role::Operator, Some("acme"), None, now())
            .expect("create");
        assert!(
            secret.starts_with(PREFIX) && secret.len() == PREFIX.len() + 43,
            "{secret}"
        );
        let file = std::fs::read_to_string(dir.path().join("tokens.json")).expect("file");
        assert!(
            !file.contains(&secret[PREFIX.len()..]),
            "the secret is not stored"
        );
        assert_eq!(
            tokens.verify(&secret, now()).expect("verify"),
            Verdict::Valid(record.clone())
        );
        let mut wrong = secret.clone();
        wrong.pop();
        wrong.push('x');
        assert_eq!(
            tokens.verify(&wrong, now()).expect("verify"),
            Verdict::Unknown
        );
        assert_eq!(tokens.verify("", now()).expect("verify"), Verdict::Unknown);
        let later = now() + chrono::TimeDelta::days(1);
        let (short, _) = tokens
            .create("short", Role::Viewer, None, Some(later), now())
            .expect("create");
        assert!(matches!(
            tokens.verify(&short, now()).expect("verify"),
            Verdict::Valid(_)
        ));
        assert_eq!(
            tokens.verify(&short, later).expect("verify"),
            Verdict::Expired
        );
        assert!(tokens.revoke(&record.id).expect("revoke"));
        assert!(!tokens.revoke(&record.id).expect("again"));
        assert_eq!(
            tokens.verify(&secret, now()).expect("verify"),
            Verdict::Unknown
        );
        assert_eq!(tokens.list().expect("list").len(), 1);
    }

    #[test]
    fn roles_include_the_ones_before() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        assert_eq!(Role::parse("operator"), Some(Role::Operator));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn a_damaged_tokens_file_lets_no_token_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = Tokens::new(StateDir::open(dir.path()).expect("state"));
        let (secret, _) = tokens
            .create("a", Role::Admin, None, None, now())
            .expect("create");
        std::fs::write(dir.path().join("tokens.json"), b"{\"tokens\": [").expect("damage");
        assert!(tokens.verify(&secret, now()).is_err());
    }
}
