//! Where an S3 repository is, as the user writes it (restic's forms, and the AWS tools'):
//!
//! - `s3:https://host[:port]/bucket[/prefix]`, `s3:http://…` (local test servers, MinIO);
//! - `s3:host[:port]/bucket[/prefix]`: HTTPS;
//! - `s3://bucket[/prefix]`: AWS S3 itself, its endpoint chosen by the region.

use std::fmt;

/// A parsed S3 repository location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    /// `scheme://host[:port]` of the service; `None` for AWS S3 (the endpoint follows the region).
    pub endpoint: Option<String>,
    /// The bucket.
    pub bucket: String,
    /// The key prefix of the repository inside the bucket, without leading or trailing `/`
    /// (empty: the bucket's root).
    pub prefix: String,
}

/// Why a location is not an S3 URL (the text says which form to use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UrlError {}

const FORMS: &str =
    "use s3:https://host[:port]/bucket[/prefix], s3:http://… for a server without TLS, or s3://bucket[/prefix] for AWS";

impl S3Url {
    /// True when `text` is meant as an S3 location (`s3:` or `s3://`).
    pub fn is_s3(text: &str) -> bool {
        text.starts_with("s3:")
    }

    /// Parses one of the forms in the module docs.
    pub fn parse(text: &str) -> Result<S3Url, UrlError> {
        let bad = |why: &str| UrlError(format!("{text:?}: {why}; {FORMS}"));
        if let Some(path) = text.strip_prefix("s3://") {
            let (bucket, prefix) = split_bucket(path).ok_or_else(|| bad("no bucket"))?;
            return Self::checked(None, bucket, prefix).map_err(|why| bad(&why));
        }
        let rest = text
            .strip_prefix("s3:")
            .ok_or_else(|| bad("not an s3: location"))?;
        let (scheme, rest) = if let Some(r) = rest.strip_prefix("https://") {
            ("https", r)
        } else if let Some(r) = rest.strip_prefix("http://") {
            ("http", r)
        } else if rest.contains("://") {
            return Err(bad("only http:// and https:// endpoints exist"));
        } else {
            ("https", rest)
        };
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("no bucket after the host"))?;
        if host.is_empty() || host.contains('@') {
            return Err(bad(
                "no host (credentials go in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, never in the URL)",
            ));
        }
        if let Some((_, port)) = host.rsplit_once(':') {
            if port.parse::<u16>().is_err() {
                return Err(bad(&format!("bad port {port:?}")));
            }
        }
        let (bucket, prefix) = split_bucket(path).ok_or_else(|| bad("no bucket"))?;
        Self::checked(Some(format!("{scheme}://{host}")), bucket, prefix).map_err(|why| bad(&why))
    }

    fn checked(endpoint: Option<String>, bucket: &str, prefix: &str) -> Result<S3Url, String> {
        if !is_bucket_name(bucket) {
            return Err(format!(
                "{bucket:?} is not a bucket name (3 to 63 of a-z, 0-9, '.', '-')"
            ));
        }
        if prefix.split('/').any(|c| c == "." || c == "..") {
            return Err("the prefix may not contain . or .. components".into());
        }
        Ok(S3Url {
            endpoint,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// True when the endpoint is AWS S3's own (virtual-host-style addressing by default).
    pub fn is_aws(&self) -> bool {
        self.endpoint.as_deref().is_none_or(|e| {
            let host = e.split_once("://").map_or(e, |(_, h)| h);
            let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
            host.ends_with(".amazonaws.com") || host == "amazonaws.com"
        })
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Some(e) => write!(f, "s3:{e}/{}", self.bucket)?,
            None => write!(f, "s3://{}", self.bucket)?,
        }
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// `bucket[/prefix…]` → (bucket, prefix without outer slashes).
fn split_bucket(path: &str) -> Option<(&str, &str)> {
    let path = path.trim_matches('/');
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    (!bucket.is_empty()).then_some((bucket, prefix.trim_matches('/')))
}

/// S3's bucket naming rules (the common subset every compatible store accepts).
fn is_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> S3Url {
        S3Url::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn the_forms_restic_and_the_aws_tools_use() {
        let u = url("s3:http://127.0.0.1:9000/backups/vm/nightly/");
        assert_eq!(u.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(
            (u.bucket.as_str(), u.prefix.as_str()),
            ("backups", "vm/nightly")
        );
        assert_eq!(u.to_string(), "s3:http://127.0.0.1:9000/backups/vm/nightly");
        assert!(!u.is_aws());

        let u = url("s3:s3.eu-west-1.amazonaws.com/my-bucket");
        assert_eq!(
            u.endpoint.as_deref(),
            Some("https://s3.eu-west-1.amazonaws.com")
        );
        assert_eq!(u.prefix, "");
        assert!(u.is_aws());

        let u = url("s3://my-bucket/host1");
        assert_eq!(
            (u.endpoint, u.bucket.as_str(), u.prefix.as_str()),
            (None, "my-bucket", "host1")
        );
    }

    #[test]
    fn malformed_locations_say_which_form_to_use() {
        for bad in [
            "s3:",
            "s3://",
            "s3:https://host",
            "s3:https://host/",
            "s3:https://host:99999/b123",
            "s3:https://key:secret@host/bucket",
            "s3:ftp://host/bucket",
            "s3:https://host/UPPER",
            "s3:https://host/ab",
            "s3:https://host/bucket/../x",
        ] {
            let e = S3Url::parse(bad).expect_err(bad);
            assert!(e.0.contains("s3:https://host"), "{bad}: {e}");
        }
    }
}
