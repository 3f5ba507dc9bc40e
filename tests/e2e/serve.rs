//! `vmstash serve`: the real daemon over HTTPS (its own self-signed certificate, pinned by
//! the client), its tokens, roles and tenants on every route of its OpenAPI document, the
//! failed-authentication limit, and a real backup job of a real libvirt VM over SSH watched
//! through Server-Sent Events that are dropped and resumed.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fixtures::libvirt::TestVm;
use crate::fixtures::sshd::Sshd;
use crate::util::{assert_raw_images_equal, bin, sha256_file, Repo, PASSWORD};

/// How long the daemon may take to answer its first request.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// A running daemon on a free loopback port with its own state directory; killed on drop.
pub(crate) struct Daemon {
    pub(crate) dir: tempfile::TempDir,
    config: PathBuf,
    pub(crate) base: String,
    client: Client,
    child: Option<Child>,
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Daemon {
    /// Starts `vmstash serve` with repository `main` (the test repository), a repository
    /// `acme` of tenant acme, `server` lines added to `[server]`, and `extra` tables.
    pub(crate) fn start(repo: &Repo, server: &str, extra: &str) -> Daemon {
        Daemon::start_with(repo, server, extra, &[])
    }

    /// [`Daemon::start`] with `env` added to the daemon's environment.
    pub(crate) fn start_with(
        repo: &Repo,
        server: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let pass = dir.path().join("pass");
        std::fs::write(&pass, format!("{PASSWORD}\n")).expect("write");
        std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let port = free_port();
        let config = dir.path().join("vmstash.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{state}\"\n{server}\n\
                 [repositories.main]\nlocation = \"{main}\"\npassword_file = \"{pass}\"\n\
                 [repositories.acme]\nlocation = \"{acme}\"\npassword_file = \"{pass}\"\ntenant = \"acme\"\n{extra}",
                state = dir.path().join("state").display(),
                main = repo.path.display(),
                acme = dir.path().join("acme-repo").display(),
                pass = pass.display(),
            ),
        )
        .expect("config");
        let acme = Command::new(bin())
            .arg("-r")
            .arg(dir.path().join("acme-repo"))
            .arg("init")
            .env("VMSTASH_PASSWORD", PASSWORD)
            .output()
            .expect("init acme's repository");
        assert!(acme.status.success(), "{}", crate::util::describe(&acme));
        Daemon::spawn(dir, config, env)
    }

    /// Runs the daemon of `config` (its state in `dir`) with `env` added to its environment;
    /// returns once it answers (over HTTP when the configuration says `plain_http = true`).
    fn spawn(dir: tempfile::TempDir, config: PathBuf, env: &[(&str, &str)]) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("daemon.log"))
            .expect("log");
        let child = Command::new(bin())
            .args(["serve", "--config"])
            .arg(&config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the daemon");
        let text = std::fs::read_to_string(&config).expect("config");
        let port = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
            .and_then(|l| l.trim_end_matches('"').parse::<u16>().ok())
            .expect("the port");
        let plain = text.contains("plain_http = true");
        let cert = dir.path().join("state/tls/cert.pem");
        let started = Instant::now();
        let mut daemon = Daemon {
            base: format!(
                "{}://127.0.0.1:{port}",
                if plain { "http" } else { "https" }
            ),
            client: Client::new(),
            config,
            child: Some(child),
            dir,
        };
        loop {
            assert!(
                started.elapsed() < START_PATIENCE,
                "the daemon did not answer: {}",
                daemon.log()
            );
            // Over HTTPS, trust exactly the daemon's own certificate.
            let client = if plain {
                Some(Client::new())
            } else {
                std::fs::read(&cert).ok().and_then(|pem| {
                    reqwest::Certificate::from_pem(&pem)
                        .ok()
                        .and_then(|c| Client::builder().tls_certs_only([c]).build().ok())
                })
            };
            if let Some(client) = client {
                daemon.client = client;
                let health = daemon.client.get(daemon.url("/v1/health")).send();
                if health.is_ok_and(|r| r.status() == StatusCode::OK) {
                    return daemon;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the daemon with SIGKILL (a crash); returns its directory and configuration for
    /// [`Daemon::spawn`].
    fn kill_9(mut self) -> (tempfile::TempDir, PathBuf) {
        let mut child = self.child.take().expect("running");
        crate::util::sh("kill", &["-9", &child.id().to_string()]);
        let _ = child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        (dir, self.config.clone())
    }

    /// Waits until job `id` is in a final state; returns it.
    pub(crate) fn wait_final(&self, token: &str, id: &str, patience: Duration) -> Value {
        let started = Instant::now();
        loop {
            let (_, job) = self.json("GET", &format!("/v1/jobs/{id}"), token, None);
            if matches!(
                job["state"].as_str(),
                Some("succeeded" | "failed" | "canceled")
            ) {
                return job;
            }
            assert!(
                started.elapsed() < patience,
                "job {id} did not end: {job}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until job `id` runs and has scanned something; returns it.
    pub(crate) fn wait_scanning(&self, token: &str, id: &str, patience: Duration) -> Value {
        let started = Instant::now();
        loop {
            let (_, job) = self.json("GET", &format!("/v1/jobs/{id}"), token, None);
            if job["state"] == "running" && job["progress"]["bytes_scanned"].as_u64() > Some(0) {
                return job;
            }
            assert!(
                started.elapsed() < patience,
                "job {id} did not start reading: {job}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// A new token (`vmstash serve token create`).
    pub(crate) fn token(&self, role: &str, tenant: Option<&str>, expires: Option<&str>) -> String {
        let mut c = Command::new(bin());
        c.args(["serve", "--config"]).arg(&self.config);
        c.args(["token", "create", "--role", role]);
        if let Some(t) = tenant {
            c.args(["--tenant", t]);
        }
        if let Some(e) = expires {
            c.args(["--expires", e]);
        }
        let out = c.output().expect("token create");
        assert!(out.status.success(), "{}", crate::util::describe(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut r = self.client.request(method, self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(b);
        }
        r.send().expect("request")
    }

    pub(crate) fn json(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let r = self.request(method, path, Some(token), body);
        let status = r.status();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// SIGTERM, and the exit status once it stopped.
    pub(crate) fn stop(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        crate::util::sh("kill", &["-TERM", &child.id().to_string()]);
        let status = child.wait().expect("wait");
        (status, self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every route of the daemon's own OpenAPI document (so that a new route cannot be left
/// out): method, path and the least role (its tag; `None`: public).
fn documented_routes(daemon: &Daemon) -> Vec<(String, String, Option<String>)> {
    let doc: Value = daemon
        .request("GET", "/v1/openapi.json", None, None)
        .json()
        .expect("the OpenAPI document");
    let mut routes = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            let tag = op["tags"][0].as_str().expect("a role tag");
            let role = (tag != "public").then(|| tag.to_owned());
            routes.push((method.to_uppercase(), path.clone(), role));
        }
    }
    routes
}

#[test]
fn every_route_refuses_missing_wrong_expired_weak_and_other_tenants_tokens() {
    let repo = Repo::init();
    let daemon = Daemon::start(&repo, "max_auth_failures = 100000", "");
    let admin = daemon.token("admin", None, None);
    let operator = daemon.token("operator", None, None);
    let viewer = daemon.token("viewer", None, None);
    let acme_admin = daemon.token("admin", Some("acme"), None);
    let expired = daemon.token("admin", None, Some("1s"));
    std::thread::sleep(Duration::from_millis(1500));
    // Objects of the global tenant for the routes that name one.
    let (status, job) = daemon.json(
        "POST",
        "/v1/jobs",
        &admin,
        Some(&json!({"kind": "check", "repository": "main"})),
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job_id = job["id"].as_str().expect("job id").to_owned();
    let token_id = viewer[4..12].to_owned();
    let fill = |path: &str| {
        path.replace("{name}", "main").replace(
            "{id}",
            if path.starts_with("/v1/tokens") {
                &token_id
            } else if path.starts_with("/v1/snapshots") {
                "00000000"
            } else {
                &job_id
            },
        )
    };
    let body_for = |method: &str, path: &str| -> Option<Value> {
        (method == "POST").then(|| match path {
            "/v1/jobs" => json!({"kind": "check", "repository": "main"}),
            "/v1/tokens" => json!({"name": "t", "role": "viewer", "tenant": "other"}),
            _ => json!({}),
        })
    };
    let routes = documented_routes(&daemon);
    assert!(routes.len() >= 19, "the documented routes: {routes:?}");
    let weaker = |role: &str| match role {
        "admin" => Some(&operator),
        "operator" => Some(&viewer),
        _ => None,
    };
    let mut checked = 0;
    for (method, path, role) in &routes {
        let path = fill(path);
        let body = body_for(method, &path);
        let Some(role) = role else {
            let r = daemon.request(method, &path, None, None);
            assert!(
                r.status().is_success(),
                "{method} {path} needs no token: {}",
                r.status()
            );
            continue;
        };
        for (what, token) in [
            ("no", None),
            ("a wrong", Some("vms_not-a-token")),
            ("an expired", Some(expired.as_str())),
        ] {
            let r = daemon.request(method, &path, token, body.as_ref());
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {what} token"
            );
            assert_eq!(
                r.headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok()),
                Some("Bearer"),
                "{method} {path}"
            );
        }
        if let Some(weak) = weaker(role) {
            let r = daemon.request(method, &path, Some(weak), body.as_ref());
            assert_eq!(
                r.status(),
                StatusCode::FORBIDDEN,
                "{method} {path} with a weaker role than {role}"
            );
        }
        // Another tenant's objects do not exist for acme; lists leave them out.
        let r = daemon.request(method, &path, Some(&acme_admin), body.as_ref());
        let names_global = path.contains("/main")
            || path.contains(&job_id)
            || path.contains(&token_id)
            || path.starts_with("/v1/snapshots/")
            || method == "POST";
        if names_global {
            assert_eq!(
                r.status(),
                StatusCode::NOT_FOUND,
                "{method} {path} as tenant acme"
            );
        } else if method == "GET" && !path.ends_with("/events") {
            assert_eq!(r.status(), StatusCode::OK, "{method} {path} as tenant acme");
            let text = r.text().expect("body");
            assert!(
                !text.contains(&job_id) && !text.contains("\"main\"") && !text.contains(&token_id),
                "{method} {path} shows acme another tenant's objects: {text}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 16, "{checked} routes checked");
    let (status, _) = daemon.json("GET", "/v1/whoami", &admin, None);
    assert_eq!(status, StatusCode::OK);
    // A path no route serves: 404 in the API's error form.
    let (status, body) = daemon.json("GET", "/v1/jobs/", &admin, None);
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("no such route: /v1/jobs/")),
        "{body}"
    );
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn failed_authentications_are_limited_per_address() {
    let repo = Repo::init();
    let daemon = Daemon::start(&repo, "max_auth_failures = 5", "");
    let viewer = daemon.token("viewer", None, None);
    for _ in 0..5 {
        let r = daemon.request("GET", "/v1/jobs", Some("vms_wrong"), None);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = daemon.request("GET", "/v1/jobs", Some(&viewer), None);
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "refused whatever it sends"
    );
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("60")
    );
}

#[test]
fn a_repeated_idempotency_key_starts_nothing_new() {
    let repo = Repo::init();
    let daemon = Daemon::start(&repo, "", "");
    let operator = daemon.token("operator", None, None);
    let send = |body: &Value| {
        daemon
            .client
            .post(daemon.url("/v1/jobs"))
            .bearer_auth(&operator)
            .header("Idempotency-Key", "nightly-2026-12-04")
            .json(body)
            .send()
            .expect("post")
    };
    let check = json!({"kind": "check", "repository": "main"});
    let first = send(&check);
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let location = first.headers().get("location").cloned().expect("Location");
    let again = send(&check);
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers().get("location"), Some(&location));
    let other = send(&json!({"kind": "prune", "repository": "main"}));
    assert_eq!(other.status(), StatusCode::CONFLICT);
    let (_, jobs) = daemon.json("GET", "/v1/jobs", &operator, None);
    assert_eq!(jobs.as_array().map(Vec::len), Some(1), "{jobs}");
}

/// One Server-Sent Event, with when it arrived.
#[derive(Debug, Clone)]
struct Sse {
    id: u64,
    event: String,
    data: Value,
    at: Instant,
}

/// Reads events from `response` into `tx` until it ends or `stop` says so (after sending).
fn read_events(response: Response, tx: &mpsc::Sender<Sse>, mut stop: impl FnMut(&Sse) -> bool) {
    let mut reader = BufReader::new(response);
    let (mut id, mut event, mut data) = (None, String::new(), String::new());
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            if let Some(id) = id.take() {
                let e = Sse {
                    id,
                    event: std::mem::take(&mut event),
                    data: serde_json::from_str(&data).unwrap_or(Value::Null),
                    at: Instant::now(),
                };
                data.clear();
                let done = stop(&e);
                if tx.send(e).is_err() || done {
                    return;
                }
            }
        } else if let Some(v) = l.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if let Some(v) = l.strip_prefix("event:") {
            event = v.trim().to_owned();
        } else if let Some(v) = l.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
}

fn is_final(e: &Sse) -> bool {
    e.event == "job"
        && matches!(
            e.data["state"].as_str(),
            Some("succeeded" | "failed" | "canceled")
        )
}

/// The `[hypervisors.kvm]` table of `sshd`'s libvirt, reached as `qemu+ssh://`.
pub(crate) fn hypervisor_over_ssh(sshd: &Sshd) -> String {
    format!(
        "[hypervisors.kvm]\nuri = \"qemu+ssh://root@127.0.0.1:{}/system\"\nidentity = \"{}\"\nknown_hosts = \"{}\"\n",
        sshd.port,
        sshd.client_key.display(),
        sshd.known_hosts.display()
    )
}

/// The VM runs on its own disks, with no backup job and nothing of a backup left beside it.
pub(crate) fn assert_vm_clean(vm: &TestVm) {
    assert_eq!(vm.state(), "running");
    vm.assert_on_original_disks();
    let started = Instant::now();
    while vm.job_type() == "?" && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(vm.job_type(), "None", "a backup job is left on {}", vm.name);
    assert!(
        vm.leftover_files().is_empty(),
        "leftovers: {:?}",
        vm.leftover_files()
    );
}

/// A daemon job's backup waits this long after each chunk it reads, so that it reads for
/// seconds (the test VM's disks are small).
const SLOW_READS: (&str, &str) = ("VMSTASH_TEST_PROGRESS_DELAY_MS", "200");

pub(crate) fn backup_request(vm: &TestVm) -> Value {
    json!({"kind": "backup", "hypervisor": "kvm", "repository": "main", "vms": [vm.name]})
}

/// A real VM (named `name`) behind a real sshd, a daemon whose backups read slowly, and a
/// backup job of the VM that has started reading: (its parts, an operator token, the job's
/// id).
fn slow_backup_under_way(name: &str) -> (Sshd, TestVm, Repo, Daemon, String, String) {
    let sshd = Sshd::start();
    let vm = TestVm::create(name);
    let repo = Repo::init();
    let daemon = Daemon::start_with(&repo, "", &hypervisor_over_ssh(&sshd), &[SLOW_READS]);
    let operator = daemon.token("operator", None, None);
    let (status, job) = daemon.json("POST", "/v1/jobs", &operator, Some(&backup_request(&vm)));
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();
    daemon.wait_scanning(&operator, &id, Duration::from_secs(60));
    (sshd, vm, repo, daemon, operator, id)
}

#[test]
fn canceling_a_running_backup_job_leaves_the_vm_on_its_disks_and_no_snapshot() {
    if !Sshd::available() || !TestVm::available() {
        return;
    }
    let (_sshd, vm, repo, daemon, operator, id) = slow_backup_under_way("srvcancel");
    // The counters move with every chunk while the job runs, not only at its end.
    let started = Instant::now();
    loop {
        let (_, job) = daemon.json("GET", &format!("/v1/jobs/{id}"), &operator, None);
        assert_eq!(job["state"], "running", "{job}");
        let p = &job["progress"];
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        if n("chunks_new") > 0 {
            assert!(n("bytes_read") > 0 && n("bytes_stored") > 0, "{job}");
            assert!(n("bytes_scanned") < n("bytes_total"), "{job}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no new chunk counted while running: {job}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = daemon.json("POST", &format!("/v1/jobs/{id}/cancel"), &operator, None);
    assert_eq!(status, StatusCode::ACCEPTED);
    let job = daemon.wait_final(&operator, &id, Duration::from_secs(120));
    assert_eq!(job["state"], "canceled", "{job}\n{}", daemon.log());
    assert_vm_clean(&vm);
    assert!(
        repo.json(&["snapshots"])
            .as_array()
            .expect("array")
            .is_empty(),
        "no snapshot"
    );
    repo.ok(&["check"]);
    let (status, _) = daemon.json("POST", &format!("/v1/jobs/{id}/cancel"), &operator, None);
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a finished job cannot be canceled"
    );
}

#[test]
fn a_daemon_killed_mid_backup_fails_the_job_repairs_the_vm_and_backs_it_up_after() {
    if !Sshd::available() || !TestVm::available() {
        return;
    }
    let (_sshd, vm, repo, daemon, operator, id) = slow_backup_under_way("srvkill");
    let (dir, config) = daemon.kill_9();
    // libvirt finishes what it was asked whatever happens to its client; let it.
    std::thread::sleep(Duration::from_secs(2));
    let daemon = Daemon::spawn(dir, config, &[]);
    let (_, job) = daemon.json("GET", &format!("/v1/jobs/{id}"), &operator, None);
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap_or_default()
            .contains("the daemon stopped while the job was running"),
        "{job}"
    );
    let log = daemon
        .request("GET", &format!("/v1/jobs/{id}/log"), Some(&operator), None)
        .text()
        .expect("log");
    assert!(
        log.contains("its VMs were repaired"),
        "{log}\n{}",
        daemon.log()
    );
    assert_vm_clean(&vm);
    repo.ok(&["check"]);
    // The next run succeeds and restores bit for bit.
    let (status, next) = daemon.json("POST", "/v1/jobs", &operator, Some(&backup_request(&vm)));
    assert_eq!(status, StatusCode::ACCEPTED, "{next}");
    let next = daemon.wait_final(
        &operator,
        next["id"].as_str().expect("id"),
        Duration::from_secs(120),
    );
    assert_eq!(next["state"], "succeeded", "{next}\n{}", daemon.log());
    assert_vm_clean(&vm);
    let out = repo.restore("latest");
    assert_raw_images_equal(&out.join("vda.raw"), &vm.vda_source);
    assert_eq!(sha256_file(&out.join("vdb.raw")), sha256_file(&vm.vdb));
}

#[test]
fn a_backup_job_of_a_real_vm_streams_its_events_without_gap_across_a_reconnect() {
    if !Sshd::available() || !TestVm::available() {
        return;
    }
    let sshd = Sshd::start();
    let vm = TestVm::create("serve");
    let repo = Repo::init();
    let daemon = Daemon::start(&repo, "", &hypervisor_over_ssh(&sshd));
    let operator = daemon.token("operator", None, None);
    // A watcher that never drops: every event of the daemon, from before the job.
    let (all_tx, all_rx) = mpsc::channel();
    let watcher = daemon
        .client
        .get(daemon.url("/v1/events"))
        .bearer_auth(&operator)
        .send()
        .expect("events");
    assert_eq!(watcher.status(), StatusCode::OK);
    let watching = std::thread::spawn(move || read_events(watcher, &all_tx, is_final));
    let (status, job) = daemon.json(
        "POST",
        "/v1/jobs",
        &operator,
        Some(
            &json!({"kind": "backup", "hypervisor": "kvm", "repository": "main", "vms": [vm.name]}),
        ),
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();
    // The job's own stream from its start; dropped after three events, resumed after the
    // last one seen.
    let (tx, rx) = mpsc::channel();
    let first = daemon
        .client
        .get(daemon.url(&format!("/v1/jobs/{id}/events")))
        .bearer_auth(&operator)
        .header("Last-Event-ID", "0")
        .send()
        .expect("job events");
    let mut seen = 0;
    read_events(first, &tx, |e| {
        seen += 1;
        seen >= 3 || is_final(e)
    });
    let mut got: Vec<Sse> = rx.try_iter().collect();
    let last = got.last().map(|e| e.id).expect("events before the drop");
    if !got.iter().any(is_final) {
        let again = daemon
            .client
            .get(daemon.url(&format!("/v1/jobs/{id}/events")))
            .bearer_auth(&operator)
            .header("Last-Event-ID", last.to_string())
            .send()
            .expect("resumed events");
        read_events(again, &tx, is_final);
        got.extend(rx.try_iter());
    }
    watching.join().expect("watcher");
    let all: Vec<Sse> = all_rx
        .try_iter()
        .filter(|e| e.data["id"].as_str() == Some(id.as_str()))
        .collect();
    let ids = |v: &[Sse]| v.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(&got),
        ids(&all),
        "no gap, no duplicate across the reconnect"
    );
    let finished = got.last().expect("events");
    assert_eq!(finished.data["state"], "succeeded", "{}", daemon.log());
    // Progress at least once a second while it ran.
    let started = all
        .iter()
        .find(|e| e.event == "job" && e.data["state"] == "running")
        .map(|e| e.at)
        .expect("running");
    let mut ticks: Vec<Instant> = all
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| e.at)
        .collect();
    ticks.insert(0, started);
    ticks.push(finished.at);
    let widest = ticks
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    assert!(
        widest < Duration::from_millis(2500),
        "a {widest:?} gap between progress events"
    );
    // The counters only grow.
    let counters: Vec<(u64, u64, u64)> = all
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| {
            let p = &e.data["progress"];
            let n = |k: &str| p[k].as_u64().unwrap_or(0);
            (n("bytes_read"), n("bytes_stored"), n("chunks_new"))
        })
        .collect();
    assert!(
        counters
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1 && w[0].2 <= w[1].2),
        "counters went back: {counters:?}"
    );
    // The snapshot restores bit for bit, and the VM is back on its own disks.
    let snapshots = finished.data["snapshots"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(snapshots.len(), 1, "{}", finished.data);
    vm.assert_on_original_disks();
    let out = repo.restore("latest");
    assert_raw_images_equal(&out.join("vda.raw"), &vm.vda_source);
    assert_eq!(sha256_file(&out.join("vdb.raw")), sha256_file(&vm.vdb));
    let (_, log) = daemon.json("GET", &format!("/v1/jobs/{id}"), &operator, None);
    assert_eq!(log["vms"], json!([vm.name]));
    let text = daemon
        .request("GET", &format!("/v1/jobs/{id}/log"), Some(&operator), None)
        .text()
        .expect("log");
    assert!(
        text.contains("snapshot") && text.contains("saved"),
        "{text}"
    );
    let (status, daemon_log) = daemon.stop();
    assert!(status.success(), "{daemon_log}");
}

/// Reads one HTTP request from `stream` (headers and a Content-Length body), answers
/// `status`, and returns the body.
fn answer_one(stream: std::net::TcpStream, status: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).expect("the body");
    let mut stream = reader.into_inner();
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("answer");
    body
}

/// A daemon whose configured job `doomed` fails (its hypervisor's port refuses) and tells
/// notification `ops` (on failure, with `ops_lines`), and that job run once and failed:
/// (the daemon, the job's id, the job).
fn a_failed_job_notifying(repo: &Repo, ops_lines: &str) -> (Daemon, String, Value) {
    let refused_port = free_port();
    let extra = format!(
        "[hypervisors.down]\nuri = \"qemu+ssh://root@127.0.0.1:{refused_port}/system\"\n\
         [notifications.ops]\non = [\"failed\"]\n{ops_lines}\
         [jobs.doomed]\nhypervisor = \"down\"\nrepository = \"main\"\nvms = [\"web1\"]\nnotify = [\"ops\"]\n"
    );
    let daemon = Daemon::start(repo, "", &extra);
    let operator = daemon.token("operator", None, None);
    let (status, job) = daemon.json(
        "POST",
        "/v1/jobs",
        &operator,
        Some(&json!({"kind": "backup", "job": "doomed"})),
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();
    let job = daemon.wait_final(&operator, &id, Duration::from_secs(60));
    assert_eq!(job["state"], "failed", "{job}");
    (daemon, id, job)
}

#[test]
fn a_failed_job_posts_its_webhook_and_retries_when_refused() {
    let hook = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let hook_port = hook.local_addr().expect("address").port();
    let repo = Repo::init();
    let (daemon, id, _) = a_failed_job_notifying(
        &repo,
        &format!("webhook = \"http://127.0.0.1:{hook_port}/vmstash\"\n"),
    );
    // The first POST is refused (500); the retry a second later is taken.
    let started = Instant::now();
    let (first, _) = hook.accept().expect("the webhook's POST");
    let refused: Value =
        serde_json::from_slice(&answer_one(first, "500 Internal Server Error")).expect("JSON");
    let (second, _) = hook.accept().expect("the retry");
    let taken: Value = serde_json::from_slice(&answer_one(second, "200 OK")).expect("JSON");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "retried after a wait"
    );
    assert_eq!(refused, taken, "the same notification");
    assert_eq!(taken["event"], "job.finished");
    assert_eq!(taken["job"]["id"], id.as_str());
    assert_eq!(taken["job"]["state"], "failed");
    assert!(taken["job"]["error"].is_string(), "{taken}");
    std::thread::sleep(Duration::from_millis(300));
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("notification ops: the webhook answered 200"),
        "{log}"
    );
}

#[test]
fn a_copy_job_copies_what_the_other_repository_lacks() {
    let repo = Repo::init();
    let disk = crate::util::sparse_image(
        repo.dir.path(),
        "web1.img",
        8 << 20,
        &[(1 << 20, crate::util::random_bytes(7, 1 << 20))],
    );
    repo.ok(&["backup", "--disk", &disk.display().to_string()]);
    let offsite = Repo::init();
    let extra = format!(
        "[repositories.offsite]\nlocation = \"{}\"\npassword_command = \"printf '%s' '{PASSWORD}'\"\n",
        offsite.path.display()
    );
    let daemon = Daemon::start(&repo, "", &extra);
    let operator = daemon.token("operator", None, None);
    let copy = json!({"kind": "copy", "from": "main", "to": "offsite"});
    let (status, job) = daemon.json("POST", "/v1/jobs", &operator, Some(&copy));
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job = daemon.wait_final(
        &operator,
        job["id"].as_str().expect("id"),
        Duration::from_secs(60),
    );
    assert_eq!(job["state"], "succeeded", "{job}\n{}", daemon.log());
    let copied = offsite.json(&["snapshots"]);
    assert_eq!(copied.as_array().map(Vec::len), Some(1), "{copied}");
    assert_eq!(job["snapshots"][0], copied[0]["id"], "{job}");
    let out = offsite.restore("latest");
    assert_raw_images_equal(&out.join("web1.raw"), &disk);
    // Again: nothing new.
    let (_, again) = daemon.json("POST", "/v1/jobs", &operator, Some(&copy));
    let again = daemon.wait_final(
        &operator,
        again["id"].as_str().expect("id"),
        Duration::from_secs(60),
    );
    assert_eq!(again["state"], "succeeded", "{again}");
    assert_eq!(again["snapshots"], json!([]), "{again}");
    assert_eq!(
        offsite.json(&["snapshots"]).as_array().map(Vec::len),
        Some(1)
    );
}

/// The `[server]` line that lets restore jobs write below `dir`.
fn restore_dirs(dir: &std::path::Path) -> String {
    format!("restore_dirs = [\"{}\"]", dir.display())
}

#[test]
fn a_restore_job_writes_below_restore_dirs_only_and_never_over_an_image() {
    let repo = Repo::init();
    let disk = crate::util::sparse_image(
        repo.dir.path(),
        "web1.img",
        8 << 20,
        &[(3 << 20, crate::util::random_bytes(11, 1 << 20))],
    );
    repo.ok(&["backup", "--disk", &disk.display().to_string()]);
    let allowed = repo.dir.path().join("restores");
    let outside = repo.dir.path().join("outside");
    std::fs::create_dir_all(&allowed).expect("mkdir");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::os::unix::fs::symlink(&outside, allowed.join("escape")).expect("symlink");
    let daemon = Daemon::start(&repo, &restore_dirs(&allowed), "");
    let operator = daemon.token("operator", None, None);
    let restore = |target: &std::path::Path| {
        json!({"kind": "restore", "repository": "main", "snapshot": "latest",
               "vm": "web1", "target": target.display().to_string()})
    };
    let run = |target: &std::path::Path| {
        let (status, job) = daemon.json("POST", "/v1/jobs", &operator, Some(&restore(target)));
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        daemon.wait_final(
            &operator,
            job["id"].as_str().expect("id"),
            Duration::from_secs(60),
        )
    };

    // Outside restore_dirs: refused before a job exists.
    let (status, body) = daemon.json("POST", "/v1/jobs", &operator, Some(&restore(&outside)));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("restore_dirs"), "{body}");
    // Inside by its name, outside through a symbolic link: the job fails and writes nothing.
    let job = run(&allowed.join("escape/r"));
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap_or("").contains("restore_dirs"),
        "{job}"
    );
    assert_eq!(std::fs::read_dir(&outside).expect("ls").count(), 0);
    // `name` needs `define`; a tenant's token needs one of its hypervisors.
    let mut named = restore(&allowed.join("n"));
    named["name"] = json!("web1-copy");
    let (status, body) = daemon.json("POST", "/v1/jobs", &operator, Some(&named));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let acme = daemon.token("operator", Some("acme"), None);
    let mut theirs = restore(&allowed.join("a"));
    theirs["repository"] = json!("acme");
    let (status, body) = daemon.json("POST", "/v1/jobs", &acme, Some(&theirs));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("hypervisor"), "{body}");

    // Below restore_dirs: the disk, bit for bit, with its progress.
    let target = allowed.join("web1-r");
    let job = run(&target);
    assert_eq!(job["state"], "succeeded", "{job}\n{}", daemon.log());
    assert_raw_images_equal(&target.join("web1.raw"), &disk);
    assert_eq!(job["progress"]["bytes_total"], json!(8 << 20), "{job}");
    assert_eq!(job["progress"]["bytes_scanned"], json!(8 << 20), "{job}");
    let log = daemon
        .request(
            "GET",
            &format!("/v1/jobs/{}/log", job["id"].as_str().expect("id")),
            Some(&operator),
            None,
        )
        .text()
        .expect("the job's log");
    assert!(log.contains("web1.raw"), "{log}");
    // Again into the same directory: refused, the image untouched.
    let before = sha256_file(&target.join("web1.raw"));
    let again = run(&target);
    assert_eq!(again["state"], "failed", "{again}");
    assert!(
        again["error"]
            .as_str()
            .unwrap_or("")
            .contains("already exists"),
        "{again}"
    );
    assert_eq!(sha256_file(&target.join("web1.raw")), before);
}

#[test]
fn a_restore_job_writes_onto_a_hypervisor_over_sftp_and_defines_the_vm() {
    let sshd = Sshd::start();
    let vm = TestVm::create("srvrest");
    let repo = Repo::init();
    repo.ok(&[
        "backup",
        "--connect",
        crate::fixtures::libvirt::URI,
        "--vm",
        &vm.name,
    ]);
    let daemon = Daemon::start(&repo, "", &hypervisor_over_ssh(&sshd));
    let operator = daemon.token("operator", None, None);
    let target = vm.dir.join("restored");
    let clone = format!("{}-clone", vm.name);
    let request = json!({"kind": "restore", "repository": "main", "snapshot": "latest",
        "hypervisor": "kvm", "target": target.display().to_string(),
        "define": true, "name": clone});
    let (status, job) = daemon.json("POST", "/v1/jobs", &operator, Some(&request));
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job = daemon.wait_final(
        &operator,
        job["id"].as_str().expect("id"),
        Duration::from_secs(120),
    );
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_eq!(job["state"], "succeeded", "{job}\n{}", daemon.log());
        assert_raw_images_equal(&target.join("vda.raw"), &vm.vda_source);
        assert_raw_images_equal(&target.join("vdb.raw"), &vm.vdb);
        let xml = crate::fixtures::libvirt::virsh(&["dumpxml", &clone]);
        assert!(
            xml.contains(&target.join("vda.raw").display().to_string()),
            "{xml}"
        );
        let original = vm.dumpxml();
        let uuid = original
            .split_once("<uuid>")
            .and_then(|(_, rest)| rest.split_once("</uuid>"))
            .map(|(u, _)| u.to_owned())
            .expect("the VM's UUID");
        assert!(!xml.contains(&uuid), "the clone kept the VM's UUID: {xml}");
    }));
    let _ = crate::fixtures::libvirt::virsh_output(&["undefine", &clone]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// A real SMTP server (aiosmtpd from the test venv) on a free loopback port, delivering into
/// a maildir; killed on drop. `None` when aiosmtpd is missing outside CI.
struct SmtpServer {
    child: Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl SmtpServer {
    fn start() -> Option<SmtpServer> {
        let python = vmstash_test_support::test_venv().join("bin/python");
        let has = Command::new(&python)
            .args(["-c", "import aiosmtpd"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !has {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "prerequisite missing under CI: aiosmtpd in {}",
                python.display()
            );
            eprintln!("SKIPPED: aiosmtpd is missing (run scripts/install-deps.sh)");
            return None;
        }
        let maildir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Command::new(&python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("mail"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < START_PATIENCE,
                "aiosmtpd did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(SmtpServer {
            child,
            port,
            maildir,
        })
    }

    /// The messages delivered so far, as text.
    fn messages(&self) -> Vec<String> {
        let new = self.maildir.path().join("mail/new");
        std::fs::read_dir(new)
            .map(|entries| {
                entries
                    .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_failed_job_emails_the_end_of_its_log_through_smtp() {
    let Some(smtp) = SmtpServer::start() else {
        return;
    };
    let repo = Repo::init();
    let (daemon, id, job) = a_failed_job_notifying(
        &repo,
        &format!(
            "email_to = [\"Ops <ops@example.com>\", \"oncall@example.com\"]\n\
             email_from = \"vmstash@example.com\"\nsmtp_server = \"127.0.0.1\"\nsmtp_port = {}\nsmtp_security = \"plain\"\n",
            smtp.port
        ),
    );
    let started = Instant::now();
    let mail = loop {
        if let Some(m) = smtp.messages().pop() {
            break m;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no email arrived\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The body may be quoted-printable (long lines): undo its soft line breaks and `=3D`.
    let mail = mail
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=");
    assert!(
        mail.contains("Subject: vmstash: backup doomed failed"),
        "{mail}"
    );
    assert!(mail.contains("From: vmstash@example.com"), "{mail}");
    assert!(
        mail.contains("ops@example.com") && mail.contains("oncall@example.com"),
        "{mail}"
    );
    assert!(mail.contains(&format!("job {id}: failed")), "{mail}");
    let error = job["error"].as_str().expect("the job's error");
    let first_words: String = error.chars().take(30).collect();
    assert!(
        mail.contains(&first_words),
        "the error {error:?} is not in {mail}"
    );
    assert!(mail.contains("lines of its log:"), "{mail}");
    assert_eq!(smtp.messages().len(), 1, "one email for one job");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "notification ops: the email was taken by 127.0.0.1:{} (250",
            smtp.port
        )),
        "{log}"
    );
}

#[test]
fn token_create_refuses_an_expiry_past_the_calendar() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("vmstash.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nstate_dir = \"{}\"\n",
            dir.path().join("state").display()
        ),
    )
    .expect("config");
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&config)
        .args([
            "token",
            "create",
            "--role",
            "viewer",
            "--expires",
            "100000000000y",
        ])
        .output()
        .expect("token create");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        crate::util::describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--expires: too far in the future"),
        "{}",
        crate::util::describe(&out)
    );
}
