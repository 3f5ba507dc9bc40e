//! `vmstash serve`'s OpenAPI document checked against the real daemon by a property-based
//! API fuzzer: schemathesis (from the test venv, `scripts/install-deps.sh`) reads
//! `/v1/openapi.json` from the running daemon, generates requests for every operation (valid
//! and invalid ones) and checks that no answer is a 5xx and that every answer's status code,
//! content type and body are the documented ones.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use vmstash_test_support::DEFAULT_S3_VENV;

use crate::serve::Daemon;
use crate::util::{bin, Repo, PASSWORD};

/// The variable that moves the test venv (the S3 servers' too, see
/// `vmstash_test_support::S3Server`), read by `scripts/install-deps.sh` as well.
const VENV_VAR: &str = "VMSTASH_S3_VENV";

/// The fixed seed: the same generated requests on every run (one worker, no example database),
/// so that a failure is found again and can be replayed. Only what the daemon answers varies
/// (job and token ids, which the stateful phase reuses).
const SEED: &str = "16";

/// Test cases per operation and phase (about 900 requests in all). Keeps the run well under a
/// minute: 12 to 17 s on two cores, 40 s while two cargo builds competed for them.
const MAX_EXAMPLES: &str = "40";

/// What schemathesis checks on every answer.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance";

/// The longest the run may take before the test calls it a failure (CI stays short).
const PATIENCE: Duration = Duration::from_secs(120);

/// schemathesis in the test venv (`$VMSTASH_S3_VENV`, else the default), or `None` (with a
/// message) when it is missing and skipping is allowed; under `CI=true` it panics.
fn schemathesis() -> Option<PathBuf> {
    let venv = match std::env::var_os(VENV_VAR) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_S3_VENV),
    };
    let program = venv.join("bin/schemathesis");
    if program.exists() {
        return Some(program);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing under CI=true: run scripts/install-deps.sh, which installs schemathesis \
         into {DEFAULT_S3_VENV} (or into ${VENV_VAR})",
        program.display()
    );
    eprintln!(
        "SKIPPED: {} is missing (run scripts/install-deps.sh, or set {VENV_VAR} to a venv with \
         schemathesis)",
        program.display()
    );
    None
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_off_the_openapi_document() {
    let Some(schemathesis) = schemathesis() else {
        return;
    };
    // What the fuzzer's POST /v1/jobs bodies can start is harmless: there is no hypervisor
    // (no backup can run), and the repositories (`main`, `acme`: temporary directories) have
    // no snapshot, so a restore fails at "snapshot not found" before it could write to its
    // target, a copy copies nothing, and check, forget and prune read or rewrite a
    // repository of this test only. Its state directory is temporary too.
    let repo = Repo::init();
    let daemon = Daemon::start(&repo, "max_auth_failures = 1000000", "");
    let admin = daemon.token("admin", None, None);
    let cert = daemon.dir.path().join("state/tls/cert.pem");
    // Its own working directory: schemathesis reads its schemathesis.toml from there, and
    // leaves caches (.hypothesis, .schemathesis) there. Repository routes are asked about
    // `main` (an existing repository, so that they reach the catalog rather than 404); the
    // other path parameters are generated (or, in the stateful phase, taken from answers).
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        work.path().join("schemathesis.toml"),
        "[parameters]\n\"path.name\" = \"main\"\n",
    )
    .expect("schemathesis.toml");
    let started = Instant::now();
    let out = Command::new(&schemathesis)
        .current_dir(work.path())
        .env("NO_COLOR", "1")
        .arg("run")
        .arg(daemon.url("/v1/openapi.json"))
        .args(["--checks", CHECKS])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", SEED])
        // One worker: the same requests in the same order on every run.
        .args(["--workers", "1"])
        // Nothing remembered between runs (no .hypothesis directory): each run is the seed's.
        .args(["--generation-database", "none"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {admin}"))
        // Trust exactly the daemon's own certificate.
        .arg("--tls-verify")
        .arg(&cert)
        .args(["--request-timeout", "10"])
        // The Server-Sent Events routes (/v1/events, /v1/jobs/{id}/events) are endless
        // streams: a request would never end. serve.rs's SSE tests cover them.
        .args(["--exclude-path-regex", "/events$"])
        .arg("--no-color")
        .output()
        .expect("run schemathesis");
    let took = started.elapsed();
    let report = format!(
        "{} --seed {SEED} --max-examples {MAX_EXAMPLES} ({took:?}):\n{}\n{}\nthe daemon's log:\n{}",
        schemathesis.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    assert!(out.status.success(), "schemathesis failed: {report}");
    assert!(took < PATIENCE, "schemathesis ran too long: {report}");
    // The guard above held: no snapshot appeared that a restore could have written out.
    for dir in [repo.path.clone(), daemon.dir.path().join("acme-repo")] {
        let out = Command::new(bin())
            .arg("-r")
            .arg(&dir)
            .args(["--json", "snapshots"])
            .env("VMSTASH_PASSWORD", PASSWORD)
            .output()
            .expect("vmstash snapshots");
        assert!(out.status.success(), "{}", crate::util::describe(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "[]",
            "{}: {report}",
            dir.display()
        );
    }
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}
