//! A private OpenSSH server on 127.0.0.1 for one test.
//!
//! [`Sshd::start`] generates fresh host and client keys in a temporary directory, writes a config
//! that lets the current user (root in CI) in by key only, starts `sshd -D -e` on a free port and
//! waits for its banner. The server is killed, and the directory removed, when the [`Sshd`] is
//! dropped. Nothing outside that directory is touched except `/run/sshd` (sshd's privilege
//! separation directory, which only the service unit creates), created if missing when running as
//! root.
//!
//! Besides the key that logs in, the fixture holds what the failure tests need: a key the server
//! does not accept ([`Sshd::wrong_key`]) and a known_hosts file that records another host key for
//! the server ([`Sshd::wrong_known_hosts`]). The names `known_hosts` and `ssh_config` in
//! [`Sshd::dir`] are left free, for tests that start with no known host.
//!
//! ```no_run
//! # fn test() -> Result<(), vmstash_test_support::SshdError> {
//! use vmstash_test_support::Sshd;
//!
//! let Some(sshd) = Sshd::start()? else {
//!     return Ok(()); // no sshd here, and not CI: skipped with a message
//! };
//! assert_eq!(sshd.ssh_cmd("echo ok")?.trim(), "ok");
//! // a client gets: sshd.port, sshd.user, sshd.client_key, sshd.known_hosts
//! # Ok(())
//! # }
//! ```

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where Debian (and most distributions) install the server.
pub const SSHD: &str = "/usr/sbin/sshd";

/// OpenSSH's SFTP server, which a stock Debian sshd runs; `internal-sftp` serves where it is
/// missing.
const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

/// Attempts at starting: another process may take the free port between probe and bind.
const START_ATTEMPTS: usize = 5;

/// How long one attempt may take to answer with the SSH banner.
const BANNER_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the fixture, or a command run through it, failed.
#[derive(Debug, thiserror::Error)]
pub enum SshdError {
    /// sshd is not installed, and `CI=true` forbids skipping.
    #[error("{SSHD} is missing under CI=true: install openssh-server (scripts/install-deps.sh)")]
    Missing,

    /// A local file or directory could not be created, read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, phrased to precede the path ("write").
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the operating system reported.
        source: io::Error,
    },

    /// A program could not be started (or waited for).
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// What the operating system reported.
        source: io::Error,
    },

    /// A program ran and failed.
    #[error("{command} failed with {status}\nstdout: {stdout}\nstderr: {stderr}{log}")]
    Failed {
        /// The command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// What it wrote to stdout.
        stdout: String,
        /// What it wrote to stderr.
        stderr: String,
        /// sshd's log, for commands run against the server (empty otherwise).
        log: String,
    },

    /// sshd did not answer with its banner.
    #[error("sshd did not start on 127.0.0.1 in {START_ATTEMPTS} attempts; last log:\n{log}")]
    NotStarted {
        /// The log of the last attempt.
        log: String,
    },

    /// A program's output was not what the fixture expects.
    #[error("unexpected output of {command}: {output:?}")]
    Unexpected {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },
}

/// A running private sshd; killed, and its directory removed, on drop.
#[derive(Debug)]
pub struct Sshd {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// The user the client key logs in as: whoever runs the test (root in CI; a server started
    /// by another user can log in only that user).
    pub user: String,
    /// The server's public host key line, `ssh-ed25519 AAAA... comment`.
    pub host_key_pub: String,
    /// A private ed25519 key (no passphrase) that the server accepts for [`Sshd::user`].
    pub client_key: PathBuf,
    /// A private ed25519 key (no passphrase) that the server does not accept.
    pub wrong_key: PathBuf,
    /// A known_hosts file with one plain line: `[127.0.0.1]:PORT <host key>`.
    pub known_hosts: PathBuf,
    /// A known_hosts file recording another ed25519 key for `[127.0.0.1]:PORT`, as after a
    /// reinstall or during an attack: a client must refuse the server.
    pub wrong_known_hosts: PathBuf,
    /// The file sshd logs to (`-e`, `LogLevel VERBOSE`); see [`Sshd::log`].
    pub log_path: PathBuf,
    /// Holds the keys, the config and the log; free for the test's own files.
    pub dir: tempfile::TempDir,
    /// The server process.
    child: Child,
}

/// The key pairs of one server, generated in its directory.
struct Keys {
    /// The server's host key.
    host: PathBuf,
    /// The key in `authorized_keys`.
    client: PathBuf,
    /// A key in no `authorized_keys`.
    wrong_client: PathBuf,
    /// Another host key, recorded in the wrong known_hosts file.
    other_host: PathBuf,
}

impl Keys {
    /// Generates the four key pairs in `dir`.
    fn generate(dir: &Path) -> Result<Keys, SshdError> {
        let make = |name: &str| -> Result<PathBuf, SshdError> {
            let path = dir.join(name);
            keygen(&path, "", &format!("vmstash-test-{name}"))?;
            Ok(path)
        };
        Ok(Keys {
            host: make("host_ed25519")?,
            client: make("client_ed25519")?,
            wrong_client: make("wrong_client_ed25519")?,
            other_host: make("other_host_ed25519")?,
        })
    }
}

impl Sshd {
    /// Starts a server, or returns `None` when sshd is not installed: the test is then skipped,
    /// with a message on stderr. Under `CI=true` a missing sshd is an error, never a skip.
    pub fn start() -> Result<Option<Sshd>, SshdError> {
        if !Path::new(SSHD).exists() {
            if std::env::var("CI").as_deref() == Ok("true") {
                return Err(SshdError::Missing);
            }
            eprintln!("skipping: {SSHD} is missing (install openssh-server)");
            return Ok(None);
        }
        Self::start_installed().map(Some)
    }

    /// Generates the keys and starts sshd on a free port, retrying on another port if the
    /// server does not come up.
    fn start_installed() -> Result<Sshd, SshdError> {
        let dir = tempfile::Builder::new()
            .prefix("vmstash-sshd-")
            .tempdir()
            .map_err(io_error("create a directory in", &std::env::temp_dir()))?;
        let d = dir.path();
        let user = run("id", &["-un"])?.trim().to_owned();
        if user == "root" {
            let privsep = Path::new("/run/sshd");
            std::fs::create_dir_all(privsep).map_err(io_error("create", privsep))?;
        }
        let keys = Keys::generate(d)?;
        let host_key_pub = read_pub(&keys.host)?;
        let authorized = d.join("authorized_keys");
        write(&authorized, &(read_pub(&keys.client)? + "\n"))?;
        let log_path = d.join("sshd.log");
        let known_hosts = d.join("trusted_known_hosts");
        let wrong_known_hosts = d.join("wrong_known_hosts");
        let other_host_pub = read_pub(&keys.other_host)?;
        let mut last_log = String::new();
        for _attempt in 0..START_ATTEMPTS {
            let Some((port, child)) = try_start(d, &keys.host, &authorized, &log_path)? else {
                last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
                continue;
            };
            // From here on, a failure drops the server, which kills it.
            let sshd = Sshd {
                port,
                user,
                host_key_pub,
                client_key: keys.client,
                wrong_key: keys.wrong_client,
                known_hosts,
                wrong_known_hosts,
                log_path,
                dir,
                child,
            };
            write(
                &sshd.known_hosts,
                &known_hosts_line(port, &sshd.host_key_pub),
            )?;
            write(
                &sshd.wrong_known_hosts,
                &known_hosts_line(port, &other_host_pub),
            )?;
            return Ok(sshd);
        }
        Err(SshdError::NotStarted { log: last_log })
    }

    /// A file in the server's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The host sshd listens on.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// `user@host` for OpenSSH's tools.
    pub fn destination(&self) -> String {
        format!("{}@{}", self.user, self.host())
    }

    /// The host key's SHA256 fingerprint as OpenSSH prints it (`SHA256:...`).
    pub fn host_key_fingerprint(&self) -> Result<String, SshdError> {
        let mut command = Command::new("ssh-keygen");
        command
            .args(["-l", "-E", "sha256", "-f"])
            .arg(self.path("host_ed25519.pub"));
        let output = checked(&mut command, None)?;
        match output.split_whitespace().nth(1) {
            Some(fingerprint) if fingerprint.starts_with("SHA256:") => Ok(fingerprint.to_owned()),
            _ => Err(SshdError::Unexpected {
                command: format!("{command:?}"),
                output,
            }),
        }
    }

    /// Writes a hashed copy of [`Sshd::known_hosts`] (`ssh-keygen -H`, the `|1|salt|hash` form
    /// of `HashKnownHosts yes`) and returns its path.
    pub fn hashed_known_hosts(&self) -> Result<PathBuf, SshdError> {
        let path = self.path(&format!("known_hosts_hashed{}", unique()));
        std::fs::copy(&self.known_hosts, &path).map_err(io_error("write", &path))?;
        let mut command = Command::new("ssh-keygen");
        command.args(["-q", "-H", "-f"]).arg(&path);
        checked(&mut command, None)?;
        let mut old = path.clone().into_os_string();
        old.push(".old");
        let _ = std::fs::remove_file(old);
        let text = std::fs::read_to_string(&path).map_err(io_error("read", &path))?;
        if !text.starts_with("|1|") {
            return Err(SshdError::Unexpected {
                command: format!("{command:?}"),
                output: text,
            });
        }
        Ok(path)
    }

    /// sshd's log so far (accepted and refused keys, sessions, subsystems).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The OpenSSH client options shared by `ssh`, `sftp` and `scp`: no user or system config,
    /// only [`Sshd::client_key`], strict host key checking against [`Sshd::known_hosts`], never a
    /// prompt. The port flag differs between tools and is not included.
    pub fn client_opts(&self) -> Vec<OsString> {
        self.client_opts_with(&self.client_key, &self.known_hosts)
    }

    /// [`Sshd::client_opts`] with another identity and known_hosts file (e.g.
    /// [`Sshd::wrong_key`], [`Sshd::wrong_known_hosts`]).
    pub fn client_opts_with(&self, key: &Path, known_hosts: &Path) -> Vec<OsString> {
        let mut user_known_hosts = OsString::from("UserKnownHostsFile=");
        user_known_hosts.push(known_hosts);
        let mut opts: Vec<OsString> = vec!["-F".into(), "/dev/null".into()];
        for opt in [
            "BatchMode=yes".into(),
            "IdentitiesOnly=yes".into(),
            "StrictHostKeyChecking=yes".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
            user_known_hosts,
            "LogLevel=ERROR".into(),
            "ConnectTimeout=10".into(),
        ] {
            opts.push("-o".into());
            opts.push(opt);
        }
        opts.push("-i".into());
        opts.push(key.into());
        opts
    }

    /// Runs `cmd` (a remote shell command line) through OpenSSH's `ssh`; returns the output,
    /// whatever the exit code.
    pub fn ssh_output(&self, cmd: &str) -> Result<Output, SshdError> {
        self.ssh_output_with(&self.client_key, &self.known_hosts, cmd)
    }

    /// [`Sshd::ssh_output`] with another identity and known_hosts file.
    pub fn ssh_output_with(
        &self,
        key: &Path,
        known_hosts: &Path,
        cmd: &str,
    ) -> Result<Output, SshdError> {
        let mut command = self.ssh_command(key, known_hosts, cmd);
        command.output().map_err(|source| SshdError::Spawn {
            command: format!("{command:?}"),
            source,
        })
    }

    /// Runs `cmd` (a remote shell command line) through OpenSSH's `ssh`; returns its stdout, or
    /// fails, with sshd's log, unless it succeeded.
    pub fn ssh_cmd(&self, cmd: &str) -> Result<String, SshdError> {
        let log = self.log_path.as_path();
        checked(
            &mut self.ssh_command(&self.client_key, &self.known_hosts, cmd),
            Some(log),
        )
    }

    /// Runs an `sftp -b` batch (one command a line, e.g. `get /x /tmp/y`); returns its stdout,
    /// or fails, with sshd's log, unless it succeeded.
    pub fn sftp_batch(&self, batch: &str) -> Result<String, SshdError> {
        let file = self.path(&format!("batch{}", unique()));
        write(&file, batch)?;
        let mut command = Command::new("sftp");
        command
            .args(self.client_opts())
            .arg("-P")
            .arg(self.port.to_string())
            .arg("-b")
            .arg(&file)
            .arg(self.destination());
        checked(&mut command, Some(&self.log_path))
    }

    /// Copies the remote file `from` to the local `to` with `scp` (SFTP protocol); fails, with
    /// sshd's log, unless it succeeded.
    pub fn scp_from(&self, from: &str, to: &Path) -> Result<(), SshdError> {
        let mut command = Command::new("scp");
        command
            .args(self.client_opts())
            .arg("-q")
            .arg("-P")
            .arg(self.port.to_string())
            .arg(format!("{}:{from}", self.destination()))
            .arg(to);
        checked(&mut command, Some(&self.log_path)).map(drop)
    }

    /// The `ssh` command that runs `cmd` on the server with `key` and `known_hosts`.
    fn ssh_command(&self, key: &Path, known_hosts: &Path, cmd: &str) -> Command {
        let mut command = Command::new("ssh");
        command
            .args(self.client_opts_with(key, known_hosts))
            .arg("-p")
            .arg(self.port.to_string())
            .arg(self.destination())
            .arg("--")
            .arg(cmd)
            .stdin(Stdio::null());
        command
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Sessions still open keep their own processes until their client leaves.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `program` with `args`; returns its stdout, or fails with its output.
pub fn run(program: &str, args: &[&str]) -> Result<String, SshdError> {
    checked(Command::new(program).args(args), None)
}

/// Generates an ed25519 key pair at `path` (private) and `path.pub`, protected by `passphrase`
/// ("" for none).
pub fn keygen(path: &Path, passphrase: &str, comment: &str) -> Result<(), SshdError> {
    let mut command = Command::new("ssh-keygen");
    command
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f"])
        .arg(path);
    checked(&mut command, None).map(drop)
}

/// Runs `command` with no stdin; returns its stdout, or fails with its output and, when it ran
/// against the server, sshd's log at `log`.
fn checked(command: &mut Command, log: Option<&Path>) -> Result<String, SshdError> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SshdError::Spawn {
            command: format!("{command:?}"),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let log = log
        .map(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            format!("\nsshd log:\n{text}")
        })
        .unwrap_or_default();
    Err(SshdError::Failed {
        command: format!("{command:?}"),
        status: output.status,
        stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        log,
    })
}

/// A process-unique number, for file names.
fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The error of `action` on `path`.
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SshdError {
    let path = path.to_owned();
    move |source| SshdError::Io {
        action,
        path,
        source,
    }
}

/// Writes `text` to `path`.
fn write(path: &Path, text: &str) -> Result<(), SshdError> {
    std::fs::write(path, text).map_err(io_error("write", path))
}

/// The `.pub` line of a key made by [`keygen`], without the newline.
fn read_pub(key: &Path) -> Result<String, SshdError> {
    let mut path = key.as_os_str().to_owned();
    path.push(".pub");
    let path = PathBuf::from(path);
    let text = std::fs::read_to_string(&path).map_err(io_error("read", &path))?;
    Ok(text.trim().to_owned())
}

/// The known_hosts line recording `key` (a `.pub` line) for the server on `port`.
fn known_hosts_line(port: u16, key: &str) -> String {
    format!("[127.0.0.1]:{port} {key}\n")
}

/// A port the kernel just handed out and released; sshd binds it next.
fn free_port() -> Result<u16, SshdError> {
    let probe =
        || -> io::Result<u16> { Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
    probe().map_err(|source| SshdError::Io {
        action: "bind",
        path: PathBuf::from("127.0.0.1:0"),
        source,
    })
}

/// Starts sshd on a free port and waits for its banner; `None`, the server killed, if it did not
/// answer (the port may have been taken between probe and bind).
fn try_start(
    dir: &Path,
    host_key: &Path,
    authorized: &Path,
    log_path: &Path,
) -> Result<Option<(u16, Child)>, SshdError> {
    let port = free_port()?;
    let mut child = spawn_sshd(dir, port, host_key, authorized, log_path)?;
    match wait_for_banner(port, &mut child) {
        Ok(true) => Ok(Some((port, child))),
        answer => {
            let _ = child.kill();
            let _ = child.wait();
            answer.map(|_| None)
        }
    }
}

/// Writes the config for `port` in `dir` and starts `sshd -D -e` on it, logging to `log_path`.
fn spawn_sshd(
    dir: &Path,
    port: u16,
    host_key: &Path,
    authorized: &Path,
    log_path: &Path,
) -> Result<Child, SshdError> {
    let config = dir.join("sshd_config");
    write(&config, &sshd_config(dir, port, host_key, authorized))?;
    let log = File::create(log_path).map_err(io_error("create", log_path))?;
    let log_err = log.try_clone().map_err(io_error("reopen", log_path))?;
    let mut command = Command::new(SSHD);
    command
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    command.spawn().map_err(|source| SshdError::Spawn {
        command: format!("{command:?}"),
        source,
    })
}

/// The server's config: this port and keys only, the current user (root included) in by key
/// only, no PAM (nothing of the host's login setup applies), OpenSSH's own SFTP server.
fn sshd_config(dir: &Path, port: u16, host_key: &Path, authorized: &Path) -> String {
    let sftp_server = if Path::new(SFTP_SERVER).exists() {
        SFTP_SERVER
    } else {
        "internal-sftp"
    };
    format!(
        "# Private sshd of one vmstash test.
Port {port}
ListenAddress 127.0.0.1
AddressFamily inet
HostKey {host_key}
PidFile {pid}
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
MaxStartups 100
LogLevel VERBOSE
Subsystem sftp {sftp_server}
",
        host_key = host_key.display(),
        pid = dir.join("sshd.pid").display(),
        authorized = authorized.display(),
    )
}

/// Waits until `port` answers with an SSH banner; false if sshd exited or stayed silent.
fn wait_for_banner(port: u16, child: &mut Child) -> Result<bool, SshdError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + BANNER_TIMEOUT;
    while Instant::now() < deadline {
        let exited = child.try_wait().map_err(|source| SshdError::Spawn {
            command: SSHD.to_owned(),
            source,
        })?;
        if exited.is_some() {
            return Ok(false);
        }
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut banner = [0u8; 8];
            if stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-2.0-" {
                return Ok(true);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_its_user_and_refuses_the_wrong_key_and_host_key() -> Result<(), SshdError> {
        let Some(sshd) = Sshd::start()? else {
            return Ok(());
        };
        assert_eq!(sshd.ssh_cmd("echo ok")?.trim(), "ok");
        assert!(sshd.host_key_pub.starts_with("ssh-ed25519 "));
        assert!(sshd.host_key_fingerprint()?.starts_with("SHA256:"));
        let log = sshd.log();
        assert!(log.contains("Accepted publickey for"), "{log}");

        let wrong_key = sshd.ssh_output_with(&sshd.wrong_key, &sshd.known_hosts, "echo ok")?;
        assert_eq!(wrong_key.status.code(), Some(255), "{wrong_key:?}");
        let wrong_host = sshd.ssh_output_with(&sshd.client_key, &sshd.wrong_known_hosts, "true")?;
        assert_eq!(wrong_host.status.code(), Some(255), "{wrong_host:?}");
        let hashed = sshd.hashed_known_hosts()?;
        let via_hashed = sshd.ssh_output_with(&sshd.client_key, &hashed, "true")?;
        assert!(via_hashed.status.success(), "{via_hashed:?}");

        let err = sshd.ssh_cmd("exit 3").err();
        assert!(
            matches!(&err, Some(SshdError::Failed { log, .. }) if log.contains("sshd log")),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn dropping_stops_the_server_and_removes_its_directory() -> Result<(), SshdError> {
        let Some(sshd) = Sshd::start()? else {
            return Ok(());
        };
        let (port, dir) = (sshd.port, sshd.dir.path().to_owned());
        drop(sshd);
        assert!(!dir.exists(), "{} is left behind", dir.display());
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still answers"
        );
        Ok(())
    }
}
