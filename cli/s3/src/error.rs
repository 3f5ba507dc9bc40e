//! opendal's errors as the repository engine's: one line that names the object, and for the
//! errors that retrying cannot fix (credentials, a missing bucket) what to check.

use std::io;

use vmstash_repo::Error;

use crate::url::S3Url;

/// The engine's error for `e`, which happened on object `key` (relative to the repository).
pub(crate) fn repo_error(e: &opendal::Error, url: &S3Url, key: &str) -> Error {
    use opendal::ErrorKind as K;
    let path = format!("{url}/{key}");
    if no_credentials(e) {
        return Error::StorageDenied {
            location: url.to_string(),
            what: format!(
                "no S3 credentials for bucket {:?}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials), or AWS_PROFILE naming a profile in ~/.aws/credentials",
                url.bucket
            ),
        };
    }
    match e.kind() {
        K::NotFound => Error::Io {
            path: path.into(),
            source: io::Error::new(io::ErrorKind::NotFound, "no such object"),
        },
        K::PermissionDenied => Error::StorageDenied {
            location: url.to_string(),
            what: format!(
                "the server refused access to bucket {:?} ({}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE and ~/.aws/credentials; AWS_SESSION_TOKEN for temporary credentials, which expire) and the bucket's policy",
                url.bucket,
                summary(e)
            ),
        },
        K::ConfigInvalid if e.message().contains("NoSuchBucket") => Error::StorageDenied {
            location: url.to_string(),
            what: format!(
                "bucket {:?} does not exist at {}: create it (`aws s3 mb s3://{}`) or check the URL and the region",
                url.bucket,
                url.endpoint.as_deref().unwrap_or("AWS S3"),
                url.bucket
            ),
        },
        K::ConfigInvalid => Error::StorageDenied {
            location: url.to_string(),
            what: summary(e),
        },
        _ => Error::Io {
            path: path.into(),
            source: io::Error::other(summary(e)),
        },
    }
}

/// True when the request was never sent because no credential source (environment, profile
/// file, instance metadata) gave a key to sign it with: a mistake to fix, not to retry.
fn no_credentials(e: &opendal::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.to_string().contains("failed to load signing credential") {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The runtime failed before any request: an I/O error on the repository's location.
pub(crate) fn runtime_error(what: String, url: &S3Url) -> Error {
    Error::Io {
        path: url.to_string().into(),
        source: io::Error::other(what),
    }
}

/// The error's kind, the server's code and message (or, for a request that never got an
/// answer, why: the innermost cause, such as "Connection refused"), without opendal's context
/// dump.
fn summary(e: &opendal::Error) -> String {
    let message = e.message();
    let mut text = match (field(message, "code"), field(message, "message")) {
        (Some(code), Some(msg)) if !code.is_empty() => format!("{code}: {msg}"),
        _ => message.chars().take(300).collect(),
    };
    let mut cause = std::error::Error::source(e);
    let mut innermost = None;
    while let Some(c) = cause {
        innermost = Some(c.to_string());
        cause = c.source();
    }
    if let Some(why) = innermost.filter(|why| !text.contains(why.as_str())) {
        text = format!("{text}: {why}");
    }
    let retried = if e.is_persistent() && e.kind() != opendal::ErrorKind::PermissionDenied {
        " (still failing after retries)"
    } else {
        ""
    };
    format!("{}{retried}: {text}", e.kind())
}

/// `name: "value"` out of opendal's debug rendering of an S3 error body.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let start = text.find(&format!("{name}: \""))? + name.len() + 3;
    let rest = text.get(start..)?;
    rest.find('"').and_then(|end| rest.get(..end))
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn the_code_and_message_of_an_s3_error_body() {
        let m = r#"S3Error { code: "SignatureDoesNotMatch", message: "The request signature we calculated does not match", resource: "" }"#;
        assert_eq!(field(m, "code"), Some("SignatureDoesNotMatch"));
        assert_eq!(
            field(m, "message"),
            Some("The request signature we calculated does not match")
        );
        assert_eq!(field("plain text", "code"), None);
    }
}
