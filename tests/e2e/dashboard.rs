//! The dashboard of `vmstash serve` in a real browser: Debian's Chromium, headless, driven
//! through Debian's chromedriver over WebDriver (the thirtyfour crate), against the real
//! daemon. One test logs in with an operator token over HTTPS (the daemon's self-signed
//! certificate), backs a real libvirt VM up with "back up now" and watches the progress bar
//! and the snapshot list, cancels a job started through the API, and restores the snapshot
//! onto the hypervisor from its row; the other, over
//! `plain_http`, refuses a wrong token and shows a viewer no button to start or cancel a job,
//! which the API refuses anyway.
//!
//! Chromium and chromedriver come from `scripts/install-deps.sh`; without them the tests are
//! skipped, except under `CI=true`, where that is a failure (`util::have`).

use std::fs::File;
use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use thirtyfour::prelude::*;

use crate::fixtures::libvirt::TestVm;
use crate::fixtures::sshd::Sshd;
use crate::serve::{assert_vm_clean, backup_request, free_port, hypervisor_over_ssh, Daemon};
use crate::util::{assert_raw_images_equal, have, random_bytes, sparse_image, Repo, PASSWORD};

/// Debian's Chromium (package chromium).
const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver (package chromium-driver), of the same version.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the page may take to show what the daemon already knows.
const PATIENCE: Duration = Duration::from_secs(30);
/// How long a backup of the test VM may take.
const BACKUP_PATIENCE: Duration = Duration::from_secs(120);

/// True when Chromium and chromedriver are installed; under `CI=true` a missing one panics.
fn browser_available() -> bool {
    have(&["chromium", "chromedriver"], false)
}

/// chromedriver on a free loopback port and one headless Chromium session of it; the session
/// is ended and chromedriver killed on drop.
struct Browser {
    rt: tokio::runtime::Runtime,
    driver: Option<WebDriver>,
    chromedriver: Child,
    /// Chromium's profile and chromedriver's log.
    dir: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = File::create(dir.path().join("chromedriver.log")).expect("log");
        let port = free_port();
        let chromedriver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start chromedriver");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let mut browser = Browser {
            rt,
            driver: None,
            chromedriver,
            dir,
        };
        let server = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let status = reqwest::blocking::Client::new();
        while !status
            .get(format!("{server}/status"))
            .send()
            .and_then(|r| r.json::<Value>())
            .is_ok_and(|s| s["value"]["ready"] == true)
        {
            assert!(
                started.elapsed() < PATIENCE,
                "chromedriver is not ready: {}",
                browser.driver_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut caps = DesiredCapabilities::chrome();
        let profile = format!(
            "--user-data-dir={}",
            browser.dir.path().join("profile").display()
        );
        let set = caps.set_binary(CHROMIUM).and_then(|()| {
            [
                "--headless=new",
                // Chromium runs as root only without its sandbox; containers have a
                // small /dev/shm and no GPU.
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--window-size=1280,1024",
                // The daemon's own self-signed certificate (acceptInsecureCerts too).
                "--ignore-certificate-errors",
                &profile,
            ]
            .into_iter()
            .try_for_each(|a| caps.add_arg(a))
        });
        set.and_then(|()| caps.accept_insecure_certs(true))
            .expect("capabilities");
        let driver = browser.run("start Chromium", WebDriver::new(server, caps));
        browser.driver = Some(driver);
        browser
    }

    fn driver_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }

    fn driver(&self) -> &WebDriver {
        self.driver.as_ref().expect("a session")
    }

    /// Runs a WebDriver call to its end; panics with `what` when it fails.
    fn run<T>(&self, what: &str, call: impl Future<Output = WebDriverResult<T>>) -> T {
        self.rt
            .block_on(call)
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", self.driver_log()))
    }

    fn goto(&self, url: &str) {
        self.run(&format!("open {url}"), self.driver().goto(url));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.run("run a script", self.driver().execute(script, args))
            .json()
            .clone()
    }

    /// Clicks the element `css` selects, as a user would (it must be visible).
    fn click(&self, css: &str) {
        let el = self.run(&format!("find {css}"), self.driver().find(By::Css(css)));
        self.run(&format!("click {css}"), el.click());
    }

    /// Types `text` into the first input `css` selects.
    fn type_into(&self, css: &str, text: &str) {
        let input = self.run(&format!("find {css}"), self.driver().find(By::Css(css)));
        self.run(&format!("type into {css}"), input.send_keys(text));
    }

    fn log_in(&self, token: &str) {
        let input = self.run(
            "find the token input",
            self.driver().find(By::Css("[data-testid=token-input]")),
        );
        self.run("clear the token input", input.clear());
        self.run("type the token", input.send_keys(token));
        self.click("[data-testid=login]");
    }

    /// How many elements `css` selects.
    fn count(&self, css: &str) -> usize {
        let n = self.eval(
            "return document.querySelectorAll(arguments[0]).length;",
            vec![json!(css)],
        );
        n.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .expect("a count")
    }

    /// The text of the first element `css` selects when it is shown; `None` when it is
    /// absent or hidden.
    fn shown_text(&self, css: &str) -> Option<String> {
        let t = self.eval(
            "const e = document.querySelector(arguments[0]);
             return e && e.getClientRects().length > 0 ? e.textContent : null;",
            vec![json!(css)],
        );
        t.as_str().map(str::to_owned)
    }

    /// Job `id`'s row as the page shows it: `{state, progress, cancel}` (progress: the bar's
    /// aria-valuenow while the bar is shown; cancel: whether its cancel button is there), or
    /// `None` when the page has no row for it.
    fn job_row(&self, id: &str) -> Option<Value> {
        let row = self.eval(
            "const r = [...document.querySelectorAll('[data-testid=job-row]')]
                 .find((e) => e.dataset.jobId === arguments[0]);
             if (!r) return null;
             const bar = r.querySelector('[data-testid=progress]');
             return {
               state: r.dataset.state ?? null,
               progress: bar && bar.getClientRects().length > 0
                 ? bar.getAttribute('aria-valuenow') : null,
               cancel: r.querySelector('[data-testid=cancel]') !== null,
             };",
            vec![json!(id)],
        );
        (!row.is_null()).then_some(row)
    }

    /// The ids of the job rows, top to bottom.
    fn job_ids(&self) -> Vec<String> {
        let ids = self.eval(
            "return [...document.querySelectorAll('[data-testid=job-row]')]
                 .map((e) => e.dataset.jobId);",
            vec![],
        );
        serde_json::from_value(ids).expect("job ids")
    }

    /// Polls `probe` every 100 ms until it gives a value, for at most `patience`; panics
    /// with the page's text when it does not.
    fn wait_for<T>(
        &self,
        what: &str,
        patience: Duration,
        mut probe: impl FnMut(&Browser) -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            if let Some(v) = probe(self) {
                return v;
            }
            if started.elapsed() > patience {
                let page = self.eval("return document.body.innerText;", vec![]);
                panic!(
                    "waited {patience:?} for {what}; the page shows:\n{}",
                    page.as_str().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait(&self, what: &str, probe: impl FnMut(&Browser) -> bool) -> &Browser {
        let mut probe = probe;
        self.wait_for(what, PATIENCE, |b| probe(b).then_some(()));
        self
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(driver) = self.driver.take() {
            let _ = self.rt.block_on(driver.quit());
        }
        let _ = self.chromedriver.kill();
        let _ = self.chromedriver.wait();
    }
}

fn is_final(state: &Value) -> bool {
    matches!(state.as_str(), Some("succeeded" | "failed" | "canceled"))
}

/// The daemon's backups wait this long after each chunk they read, so that a backup of the
/// test VM (80 MiB, 160 chunks) reads for seconds: the bar moves in steps, and a job can be
/// canceled while it reads.
const SLOW_READS: (&str, &str) = ("VMSTASH_TEST_PROGRESS_DELAY_MS", "50");

#[test]
fn the_dashboard_backs_up_a_vm_with_progress_and_snapshots_and_cancels_a_job() {
    if !browser_available() || !Sshd::available() || !TestVm::available() {
        return;
    }
    let sshd = Sshd::start();
    let vm = TestVm::create("dash");
    let repo = Repo::init();
    let configured = format!(
        "{}[jobs.web]\nhypervisor = \"kvm\"\nrepository = \"main\"\nvms = [\"{}\"]\n",
        hypervisor_over_ssh(&sshd),
        vm.name
    );
    let daemon = Daemon::start_with(&repo, "", &configured, &[SLOW_READS]);
    assert!(daemon.base.starts_with("https://"), "{}", daemon.base);
    let operator = daemon.token("operator", None, None);
    let browser = Browser::start();
    browser.goto(&daemon.url("/"));
    browser.log_in(&operator);
    browser
        .wait("the operator's role", |b| {
            b.shown_text("[data-testid=role]").as_deref() == Some("operator")
        })
        .wait("the live event stream", |b| {
            b.shown_text("[data-testid=live-status]").as_deref() == Some("live")
        })
        .wait("the configured job's button", |b| {
            b.shown_text("[data-testid=backup-now][data-job=web]")
                .is_some()
        });

    // A job started elsewhere shows up, running, without a reload of the page; the operator
    // cancels it with its button.
    browser.eval("window.vmstashNotReloaded = true;", vec![]);
    let (status, job) = daemon.json("POST", "/v1/jobs", &operator, Some(&backup_request(&vm)));
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let other = job["id"].as_str().expect("id").to_owned();
    daemon.wait_scanning(&operator, &other, Duration::from_secs(60));
    browser.wait("the API's job, running, with a cancel button", |b| {
        b.job_row(&other)
            .is_some_and(|r| r["state"] == "running" && r["cancel"] == true)
    });
    assert_eq!(
        browser.eval("return window.vmstashNotReloaded ?? false;", vec![]),
        json!(true),
        "the page was reloaded"
    );
    browser.click(&format!(
        "[data-testid=job-row][data-job-id=\"{other}\"] [data-testid=cancel]"
    ));
    let row = browser.wait_for("the canceled job", BACKUP_PATIENCE, |b| {
        b.job_row(&other).filter(|r| is_final(&r["state"]))
    });
    assert_eq!(row["state"], "canceled", "{row}\n{}", daemon.log());
    assert_eq!(
        row["cancel"], false,
        "a finished job keeps no cancel button"
    );
    let job = daemon.wait_final(&operator, &other, PATIENCE);
    assert_eq!(job["state"], "canceled", "{job}");
    assert_vm_clean(&vm);

    // "Back up now": a new job of the configured job, whose bar moves up to 100%.
    browser.click("[data-testid=backup-now][data-job=web]");
    let id = browser.wait_for("the new job's row", PATIENCE, |b| {
        b.job_ids().into_iter().find(|id| *id != other)
    });
    let (_, job) = daemon.json("GET", &format!("/v1/jobs/{id}"), &operator, None);
    assert_eq!(job["job"], "web", "{job}");
    let mut seen: Vec<f64> = Vec::new();
    let row = browser.wait_for("the backup's end", BACKUP_PATIENCE, |b| {
        let row = b.job_row(&id)?;
        let now = row["progress"].as_str().and_then(|p| p.parse::<f64>().ok());
        if let Some(p) = now.filter(|p| seen.last() != Some(p)) {
            seen.push(p);
        }
        is_final(&row["state"]).then_some(row)
    });
    assert_eq!(row["state"], "succeeded", "{row}\n{}", daemon.log());
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "the bar went back: {seen:?}"
    );
    assert!(
        seen.iter().filter(|p| **p > 0.0 && **p < 100.0).count() >= 3,
        "the bar did not move in steps: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&100.0), "{seen:?}");
    assert_eq!(row["cancel"], false, "{row}");
    assert_vm_clean(&vm);
    let job = daemon.wait_final(&operator, &id, PATIENCE);
    let snapshot = job["snapshots"][0].as_str().expect("a snapshot").to_owned();

    // Its log, and its snapshot in the list of repository main.
    browser.click(&format!(
        "[data-testid=job-row][data-job-id=\"{id}\"] [data-testid=show-log]"
    ));
    let log_css = format!("[data-testid=job-row][data-job-id=\"{id}\"] [data-testid=job-log]");
    browser.wait("the job's log", |b| {
        b.shown_text(&log_css).is_some_and(|t| t.contains("saved"))
    });
    browser.click("[data-testid=repo-select] option[value=main]");
    let group = format!("[data-testid=vm-group][data-vm=\"{}\"]", vm.name);
    browser
        .wait("the snapshot's row", |b| {
            b.count(&format!(
                "{group} [data-testid=snapshot-row][data-snapshot-id=\"{snapshot}\"]"
            )) == 1
        })
        .wait("the repository's stats", |b| {
            b.shown_text("[data-testid=stat-snapshots]").as_deref() == Some("1")
        });
    assert_eq!(
        browser.count("[data-testid=snapshot-row]"),
        1,
        "the canceled job made no snapshot"
    );
    assert_eq!(
        browser.count(&format!(
            "{group} [data-testid=calendar] [data-testid=calendar-day][data-count=\"1\"]"
        )),
        1,
        "one day of the calendar has the backup"
    );

    // "Restore" on the snapshot's row: onto the hypervisor (the form's first choice), into a
    // new directory there; the job succeeds and the disk is the VM's, bit for bit.
    let row = format!("{group} [data-testid=snapshot-row][data-snapshot-id=\"{snapshot}\"]");
    browser.click(&format!("{row} [data-testid=restore]"));
    browser.wait("the hypervisor to restore onto", |b| {
        b.count("[data-testid=restore-hypervisor] option[value=kvm]") == 1
    });
    let target = vm.dir.join("restored-from-the-dashboard");
    browser.type_into(
        "[data-testid=restore-target]",
        &target.display().to_string(),
    );
    browser.click("[data-testid=restore-submit]");
    let restore = browser.wait_for("the restore job's row", PATIENCE, |b| {
        b.job_ids().into_iter().find(|j| *j != other && *j != id)
    });
    let job = daemon.wait_final(&operator, &restore, BACKUP_PATIENCE);
    assert_eq!(job["state"], "succeeded", "{job}\n{}", daemon.log());
    assert_eq!(job["kind"], "restore", "{job}");
    assert_eq!(job["request"]["hypervisor"], "kvm", "{job}");
    assert_eq!(job["request"]["snapshot"], snapshot.as_str(), "{job}");
    assert_raw_images_equal(&target.join("vda.raw"), &vm.vda_source);
    browser.wait("the restore's row, succeeded", |b| {
        b.job_row(&restore)
            .is_some_and(|r| r["state"] == "succeeded")
    });
}

#[test]
fn over_plain_http_a_wrong_token_is_refused_and_a_viewer_cannot_start_or_cancel_jobs() {
    if !browser_available() {
        return;
    }
    // Repository main with a snapshot, to be copied slowly to offsite: a job that runs for
    // seconds without a VM.
    let repo = Repo::init();
    let disk = sparse_image(
        repo.dir.path(),
        "web1.img",
        8 << 20,
        &[(1 << 20, random_bytes(7, 1 << 20))],
    );
    repo.ok(&["backup", "--disk", &disk.display().to_string()]);
    let offsite = Repo::init();
    let extra = format!(
        "[repositories.offsite]\nlocation = \"{}\"\npassword_command = \"printf '%s' '{PASSWORD}'\"\n\
         [hypervisors.kvm]\nuri = \"qemu+ssh://root@127.0.0.1:{}/system\"\n\
         [jobs.nightly]\nhypervisor = \"kvm\"\nrepository = \"main\"\nvms = [\"web1\"]\nschedule = \"0 2 * * *\"\n",
        offsite.path.display(),
        free_port()
    );
    let slow_writes = ("VMSTASH_TEST_WRITE_DELAY_MS", "1500");
    let daemon = Daemon::start_with(&repo, "plain_http = true", &extra, &[slow_writes]);
    assert!(daemon.base.starts_with("http://"), "{}", daemon.base);
    let viewer = daemon.token("viewer", None, None);
    let operator = daemon.token("operator", None, None);
    let browser = Browser::start();
    browser.goto(&daemon.url("/"));

    browser.log_in("vms_not-a-token");
    browser.wait("the login error", |b| {
        b.shown_text("[data-testid=login-error]")
            .is_some_and(|t| t.contains("not valid"))
    });
    assert_eq!(
        browser.shown_text("[data-testid=jobs]"),
        None,
        "nothing but the login form before a login"
    );

    browser.log_in(&viewer);
    browser
        .wait("the viewer's role", |b| {
            b.shown_text("[data-testid=role]").as_deref() == Some("viewer")
        })
        .wait("the login error gone", |b| {
            b.shown_text("[data-testid=login-error]").is_none()
        })
        .wait("the live event stream", |b| {
            b.shown_text("[data-testid=live-status]").as_deref() == Some("live")
        })
        .wait("the configured job", |b| {
            b.shown_text("[data-testid=schedule-row][data-job=nightly]")
                .is_some()
        });
    assert_eq!(
        browser.count("[data-testid=backup-now]"),
        0,
        "a viewer cannot start jobs"
    );

    // An operator's job, running: the viewer sees it live, without a cancel button.
    let copy = json!({"kind": "copy", "from": "main", "to": "offsite"});
    let (status, job) = daemon.json("POST", "/v1/jobs", &operator, Some(&copy));
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();
    let row = browser.wait_for("the operator's job, running", PATIENCE, |b| {
        b.job_row(&id).filter(|r| r["state"] == "running")
    });
    assert_eq!(row["cancel"], false, "a viewer cannot cancel: {row}");
    assert_eq!(browser.count("[data-testid=cancel]"), 0);

    // The API refuses the viewer whatever the page shows.
    let start = json!({"kind": "backup", "job": "nightly"});
    let r = daemon.request("POST", "/v1/jobs", Some(&viewer), Some(&start));
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = daemon.request(
        "POST",
        &format!("/v1/jobs/{id}/cancel"),
        Some(&viewer),
        None,
    );
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (_, job) = daemon.json("GET", &format!("/v1/jobs/{id}"), &viewer, None);
    assert_eq!(job["state"], "running", "{job}");

    // The snapshot list: no restore button for a viewer.
    browser.click("[data-testid=repo-select] option[value=main]");
    browser.wait("main's snapshot", |b| {
        b.count("[data-testid=vm-group][data-vm=web1] [data-testid=snapshot-row]") == 1
    });
    assert_eq!(
        browser.count("[data-testid=restore]"),
        0,
        "a viewer cannot restore"
    );

    browser.click("[data-testid=logout]");
    browser.wait("the login form", |b| {
        b.shown_text("[data-testid=token-input]").is_some()
            && b.shown_text("[data-testid=jobs]").is_none()
    });
    let job = daemon.wait_final(&operator, &id, Duration::from_secs(60));
    assert_eq!(job["state"], "succeeded", "{job}\n{}", daemon.log());
}
