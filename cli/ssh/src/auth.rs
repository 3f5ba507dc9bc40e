//! Public key authentication: which keys are offered, in which order.
//!
//! vmstash never prompts (it runs from cron and systemd timers), so it only uses keys it can use
//! without a passphrase:
//!
//! 1. `--identity FILE`, if given: that key and nothing else. An unreadable file is an error. A
//!    passphrase-protected key is used through ssh-agent if the agent holds it (found by its
//!    public key, from `FILE.pub` or from the key file's unencrypted header); otherwise the error
//!    says to load it with `ssh-add`.
//! 2. Otherwise every key ssh-agent holds (`SSH_AUTH_SOCK`), then the `IdentityFile`s the SSH
//!    config names for the host or, if it names none, `~/.ssh/id_ed25519`, `id_ecdsa` and `id_rsa`
//!    (those that exist and have no passphrase; protected ones were offered through the agent if
//!    it holds them).
//!
//! Every key offered or skipped is recorded, so "permission denied" names the keys tried.
//! RSA keys sign with SHA-512 or SHA-256 when the server says it accepts them (`server-sig-algs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::client::{AuthResult, Handle, Handler};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::ssh_key::{HashAlg, PrivateKey, PublicKey};
use russh::keys::PrivateKeyWithHashAlg;
use russh::MethodKind;

use crate::error::SshError;

/// The default key files, in the order OpenSSH tries them.
const DEFAULT_KEY_FILES: [&str; 3] = ["id_ed25519", "id_ecdsa", "id_rsa"];

/// Where the keys to offer come from.
#[derive(Debug, Clone)]
pub(crate) struct KeySources {
    /// `--identity`: the only key to offer, if given.
    pub identity: Option<PathBuf>,
    /// Key files named by the SSH config for this host (already expanded).
    pub config_files: Vec<PathBuf>,
    /// The home directory, for the default key files.
    pub home: Option<PathBuf>,
}

/// Why offering one key stopped the whole authentication.
enum Stop {
    /// The server accepted a key.
    Accepted,
    /// The server will not accept public keys any more (or the connection is gone).
    GiveUp(String),
}

/// The state of one authentication attempt on a connection whose events `H` handles.
struct Attempt<'a, H: Handler> {
    /// The connection.
    handle: &'a mut Handle<H>,
    /// The user name.
    user: &'a str,
    /// How to sign with RSA keys, once asked (`None`: not asked yet).
    rsa_hash: Option<Option<HashAlg>>,
    /// Descriptions of what was tried or skipped.
    tried: Vec<String>,
}

/// Authenticates `user` on the connection `handle` to `host` with the keys from `sources`.
pub(crate) async fn authenticate<H: Handler>(
    handle: &mut Handle<H>,
    user: &str,
    host: &str,
    sources: &KeySources,
) -> Result<(), SshError> {
    let mut attempt = Attempt {
        handle,
        user,
        rsa_hash: None,
        tried: Vec::new(),
    };
    let result = match &sources.identity {
        Some(path) => attempt.explicit_identity(path).await,
        None => attempt.default_keys(sources).await,
    };
    match result? {
        Some(Stop::Accepted) => Ok(()),
        Some(Stop::GiveUp(why)) => {
            attempt.tried.push(why);
            Err(attempt.failure(host))
        }
        None => Err(attempt.failure(host)),
    }
}

impl<H: Handler> Attempt<'_, H> {
    /// The error for "no key was accepted".
    fn failure(self, host: &str) -> SshError {
        SshError::Auth {
            user: self.user.to_owned(),
            host: host.to_owned(),
            tried: self.tried,
        }
    }

    /// Offers only the key in `path`, through the agent if it is passphrase-protected.
    async fn explicit_identity(&mut self, path: &Path) -> Result<Option<Stop>, SshError> {
        match load_private_key(path)? {
            LoadedKey::Plain(key) => Ok(self.offer_key(path, key).await),
            LoadedKey::Encrypted(public) => {
                let agent_has_it = match Agent::connect().await {
                    Ok(mut agent) => {
                        let stop = agent.offer_matching(self, &public).await;
                        if stop.is_some() {
                            return Ok(stop);
                        }
                        agent.holds(&public)
                    }
                    Err(_) => false,
                };
                if agent_has_it {
                    Ok(None)
                } else {
                    Err(SshError::Identity {
                        path: path.to_owned(),
                        reason: format!(
                            "it is protected by a passphrase and vmstash never asks for one; load \
                             it into ssh-agent first (`ssh-add {}`) and run vmstash where \
                             SSH_AUTH_SOCK points at that agent",
                            path.display()
                        ),
                    })
                }
            }
            LoadedKey::Absent(source) => Err(SshError::Io {
                path: path.to_owned(),
                action: "read the identity".to_owned(),
                source,
            }),
        }
    }

    /// Offers the agent's keys, then the config's or the default key files.
    async fn default_keys(&mut self, sources: &KeySources) -> Result<Option<Stop>, SshError> {
        match Agent::connect().await {
            Ok(mut agent) => {
                if let Some(stop) = agent.offer_all(self).await {
                    return Ok(Some(stop));
                }
            }
            Err(why) => self.tried.push(format!("ssh-agent ({why})")),
        }
        let files: Vec<PathBuf> = if sources.config_files.is_empty() {
            let Some(home) = &sources.home else {
                return Ok(None);
            };
            DEFAULT_KEY_FILES
                .iter()
                .map(|name| home.join(".ssh").join(name))
                .collect()
        } else {
            sources.config_files.clone()
        };
        for path in files {
            match load_private_key(&path) {
                Ok(LoadedKey::Plain(key)) => {
                    if let Some(stop) = self.offer_key(&path, key).await {
                        return Ok(Some(stop));
                    }
                }
                Ok(LoadedKey::Encrypted(_)) => self.tried.push(format!(
                    "{} (skipped: protected by a passphrase; load it with ssh-add)",
                    path.display()
                )),
                Ok(LoadedKey::Absent(_)) => {}
                Err(err) => self
                    .tried
                    .push(format!("{} (skipped: {err})", path.display())),
            }
        }
        Ok(None)
    }

    /// Offers one private key; `Some` if that ended the authentication.
    async fn offer_key(&mut self, path: &Path, key: Box<PrivateKey>) -> Option<Stop> {
        let description = format!("{} ({})", path.display(), describe_key(key.public_key()));
        let hash = self.rsa_hash_for(key.public_key()).await;
        let key = PrivateKeyWithHashAlg::new(Arc::new(*key), hash);
        let result = self.handle.authenticate_publickey(self.user, key).await;
        self.tried.push(description);
        judge(result.map_err(|err| err.to_string()))
    }

    /// The hash algorithm to sign with for `key` (only RSA keys have a choice).
    async fn rsa_hash_for(&mut self, key: &PublicKey) -> Option<HashAlg> {
        if !key.algorithm().is_rsa() {
            return None;
        }
        if let Some(hash) = self.rsa_hash {
            return hash;
        }
        // `Ok(None)`: the server did not say; old servers only know SHA-1 ("ssh-rsa").
        let hash = self
            .handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten();
        self.rsa_hash = Some(hash);
        hash
    }
}

/// Turns the server's answer to one key into "go on" (`None`) or a [`Stop`].
fn judge(result: Result<AuthResult, String>) -> Option<Stop> {
    match result {
        Ok(AuthResult::Success) => Some(Stop::Accepted),
        Ok(AuthResult::Failure {
            remaining_methods,
            partial_success,
        }) => {
            if partial_success {
                Some(Stop::GiveUp(
                    "the server wants a second factor after the key, which vmstash cannot give"
                        .to_owned(),
                ))
            } else if !remaining_methods.contains(&MethodKind::PublicKey) {
                Some(Stop::GiveUp(
                    "the server accepts no more public keys on this connection (MaxAuthTries?)"
                        .to_owned(),
                ))
            } else {
                None
            }
        }
        Err(err) => Some(Stop::GiveUp(format!("the connection failed: {err}"))),
    }
}

/// A connection to ssh-agent and the identities it holds.
struct Agent {
    /// The connection.
    client: AgentClient<tokio::net::UnixStream>,
    /// The plain keys it holds (certificates are not offered).
    keys: Vec<(PublicKey, String)>,
}

impl Agent {
    /// Connects to the agent at `SSH_AUTH_SOCK` and lists its keys; `Err` says why not.
    async fn connect() -> Result<Self, String> {
        if std::env::var_os("SSH_AUTH_SOCK").is_none() {
            return Err("not used: SSH_AUTH_SOCK is not set".to_owned());
        }
        let mut client = AgentClient::connect_env()
            .await
            .map_err(|err| format!("not reachable: {err}"))?;
        let identities = client
            .request_identities()
            .await
            .map_err(|err| format!("did not list its keys: {err}"))?;
        let keys = identities
            .into_iter()
            .filter_map(|identity| match identity {
                AgentIdentity::PublicKey { key, comment } => Some((key, comment)),
                AgentIdentity::Certificate { .. } => None,
            })
            .collect::<Vec<_>>();
        if keys.is_empty() {
            return Err("holds no keys".to_owned());
        }
        Ok(Self { client, keys })
    }

    /// Whether the agent holds `key`.
    fn holds(&self, key: &PublicKey) -> bool {
        self.keys
            .iter()
            .any(|(k, _)| k.key_data() == key.key_data())
    }

    /// Offers every key the agent holds.
    async fn offer_all<H: Handler>(&mut self, attempt: &mut Attempt<'_, H>) -> Option<Stop> {
        for (key, comment) in self.keys.clone() {
            if let Some(stop) = self.offer(attempt, key, &comment).await {
                return Some(stop);
            }
        }
        None
    }

    /// Offers the agent's copy of `wanted`, if it holds it.
    async fn offer_matching<H: Handler>(
        &mut self,
        attempt: &mut Attempt<'_, H>,
        wanted: &PublicKey,
    ) -> Option<Stop> {
        let found = self
            .keys
            .iter()
            .find(|(key, _)| key.key_data() == wanted.key_data())
            .cloned();
        match found {
            Some((key, comment)) => self.offer(attempt, key, &comment).await,
            None => None,
        }
    }

    /// Offers one agent key, signing through the agent.
    async fn offer<H: Handler>(
        &mut self,
        attempt: &mut Attempt<'_, H>,
        key: PublicKey,
        comment: &str,
    ) -> Option<Stop> {
        let description = format!("ssh-agent key {comment:?} ({})", describe_key(&key));
        let hash = attempt.rsa_hash_for(&key).await;
        let result = attempt
            .handle
            .authenticate_publickey_with(attempt.user, key, hash, &mut self.client)
            .await;
        match result {
            Ok(answer) => {
                attempt.tried.push(description);
                judge(Ok(answer))
            }
            Err(err) => {
                attempt
                    .tried
                    .push(format!("{description} (the agent did not sign: {err})"));
                None
            }
        }
    }
}

/// A private key file, as far as vmstash can use it.
enum LoadedKey {
    /// Usable as it is.
    Plain(Box<PrivateKey>),
    /// Passphrase-protected; its public half, to look for in the agent.
    Encrypted(PublicKey),
    /// The file cannot be read (usually: does not exist).
    Absent(std::io::Error),
}

/// Reads the private key at `path`.
fn load_private_key(path: &Path) -> Result<LoadedKey, SshError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => return Ok(LoadedKey::Absent(err)),
    };
    match russh::keys::decode_secret_key(&text, None) {
        Ok(key) => Ok(LoadedKey::Plain(Box::new(key))),
        Err(russh::keys::Error::KeyIsEncrypted) => match encrypted_key_public_half(path, &text) {
            Some(public) => Ok(LoadedKey::Encrypted(public)),
            None => Err(SshError::Identity {
                path: path.to_owned(),
                reason: format!(
                    "it is protected by a passphrase and its public key is unknown (no {}.pub); \
                     load it into ssh-agent with `ssh-add {}`, or give vmstash a key without one",
                    path.display(),
                    path.display()
                ),
            }),
        },
        Err(err) => Err(SshError::Identity {
            path: path.to_owned(),
            reason: format!("it is not a private key vmstash can read ({err})"),
        }),
    }
}

/// The public half of a passphrase-protected key: from `PATH.pub`, else from the OpenSSH key
/// format's unencrypted public key field.
fn encrypted_key_public_half(path: &Path, private_text: &str) -> Option<PublicKey> {
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    if let Ok(public) = russh::keys::load_public_key(PathBuf::from(pub_path)) {
        return Some(public);
    }
    PrivateKey::from_openssh(private_text)
        .ok()
        .map(|key| key.public_key().clone())
}

/// `ssh-ed25519 SHA256:…`, for messages.
fn describe_key(key: &PublicKey) -> String {
    format!("{} {}", key.algorithm(), key.fingerprint(HashAlg::Sha256))
}
