//! The API's certificate (spec/SERVE.md §5): the configured PEM files, or one the daemon makes
//! on its first start (ECDSA P-256, for localhost, 127.0.0.1, ::1 and the host name, valid 10
//! years) and keeps in its state directory. Its SHA-256 fingerprint is logged at every start
//! so that clients can pin it.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::error::ServeError;
use crate::state_dir::StateDir;

/// A certificate chain and key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// The self-signed certificate of the state directory, made on first use.
pub fn self_signed(state: &StateDir) -> Result<CertFiles, ServeError> {
    let dir = state.root().join("tls");
    let files = CertFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(&dir).map_err(ServeError::io(format!("creating {}", dir.display())))?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(host) = rustix::system::uname().nodename().to_str() {
        if !host.is_empty() && !names.iter().any(|n| n == host) {
            names.push(host.to_owned());
        }
    }
    let mut params = rcgen::CertificateParams::new(names)
        .map_err(|e| ServeError::State(format!("making a certificate: {e}")))?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::days(3650);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "vmstash serve");
    let key =
        rcgen::KeyPair::generate().map_err(|e| ServeError::State(format!("making a key: {e}")))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| ServeError::State(format!("signing the certificate: {e}")))?;
    state.replace(&files.key, key.serialize_pem().as_bytes())?;
    state.replace(&files.cert, cert.pem().as_bytes())?;
    Ok(files)
}

/// The SHA-256 fingerprint of the first certificate in the PEM file `cert`, as colon-separated
/// hex (what `openssl x509 -fingerprint -sha256` prints).
pub fn fingerprint(cert: &Path) -> Result<String, ServeError> {
    let text = std::fs::read_to_string(cert)
        .map_err(ServeError::io(format!("reading {}", cert.display())))?;
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| {
            ServeError::State(format!("{} holds no PEM certificate: {e}", cert.display()))
        })?;
    if der.is_empty() {
        return Err(ServeError::State(format!(
            "{} holds no PEM certificate",
            cert.display()
        )));
    }
    let digest = Sha256::digest(&der);
    Ok(digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once_and_has_a_fingerprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(dir.path()).expect("state");
        let files = self_signed(&state).expect("made");
        let first = fingerprint(&files.cert).expect("fingerprint");
        assert_eq!(first.len(), 32 * 3 - 1, "{first}");
        let again = self_signed(&state).expect("kept");
        assert_eq!(fingerprint(&again.cert).expect("fingerprint"), first);
        let key = std::fs::metadata(&files.key).expect("key");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o077,
            0,
            "the key is the daemon's only"
        );
    }
}
