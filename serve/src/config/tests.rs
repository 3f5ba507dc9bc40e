use std::path::Path;

use super::*;
use crate::error::ServeError;

/// A configuration with a password file that exists (mode 0600) in `dir`, `extra` appended.
fn config_text(dir: &Path, extra: &str) -> String {
    let pass = dir.join("main.pass");
    std::fs::write(&pass, "secret\n").expect("write");
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    format!(
        r#"[server]
time_zone = "Europe/Berlin"

[repositories.main]
location = "/srv/vmstash"
password_file = "{pass}"

[repositories.offsite]
location = "sftp://backup@far/srv/vmstash"
password_command = "cat {pass}"

[hypervisors.kvm1]
uri = "qemu+ssh://root@kvm1/system"

[notifications.ops]
webhook = "https://hooks.example/vmstash"

[jobs.nightly]
hypervisor = "kvm1"
repository = "main"
vms = ["web*", "db1"]
exclude = ["web-test"]
schedule = "0 2 * * *"
copy_to = "offsite"
notify = ["ops"]

[jobs.nightly.retention]
keep_daily = 7
keep_weekly = "4"
keep_monthly = "unlimited"
prune = true
max_unused = "10%"

[jobs.nightly.check]
schedule = "0 4 * * sun"
read_data_subset = "5%"
{extra}"#,
        pass = pass.display()
    )
}

fn parse(dir: &Path, text: &str) -> Result<Config, ServeError> {
    Config::parse(&dir.join("vmstash.toml"), text)
}

/// The issues of an invalid configuration, as "line:column: message".
fn issues(dir: &Path, text: &str) -> Vec<String> {
    match parse(dir, text) {
        Err(ServeError::Config(issues)) => issues
            .iter()
            .map(|i| format!("{}:{}: {}", i.line, i.column, i.message))
            .collect(),
        other => panic!("expected configuration issues, got {other:?}"),
    }
}

#[test]
fn a_full_configuration_reads_into_checked_types() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = parse(dir.path(), &config_text(dir.path(), "")).expect("valid");
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8443");
    assert_eq!(c.server.transport, Transport::SelfSigned);
    assert_eq!(c.server.max_jobs.get(), 2);
    assert_eq!(c.server.time_zone, chrono_tz::Europe::Berlin);
    let job = &c.jobs["nightly"];
    assert_eq!(
        job.schedule.as_ref().map(|s| s.zone()),
        Some(chrono_tz::Europe::Berlin)
    );
    let vms: Vec<String> = ["web1", "web-test", "db1", "db2", "web2"]
        .map(String::from)
        .to_vec();
    assert_eq!(job.vms.select(&vms), ["web1", "db1", "web2"]);
    let retention = job.retention.as_ref().expect("retention");
    assert_eq!(retention.policy.daily, vmstash_repo::policy::Keep::Count(7));
    assert_eq!(
        retention.policy.weekly,
        vmstash_repo::policy::Keep::Count(4)
    );
    assert_eq!(
        retention.policy.monthly,
        vmstash_repo::policy::Keep::Unlimited
    );
    assert_eq!(
        retention.prune.as_ref().map(|p| p.max_unused),
        Some(vmstash_repo::prune::MaxUnused::Hundredths(1000))
    );
    assert!(job.check.is_some());
    assert_eq!(job.copy_to.as_deref(), Some("offsite"));
    assert!(matches!(
        c.repositories["offsite"].password,
        PasswordSource::Command(_)
    ));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn an_unknown_key_is_an_error_on_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "").replace("schedule = \"0 2", "schedul = \"0 2");
    let found = issues(dir.path(), &text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("23:1: unknown field `schedul`"),
        "{found:?}"
    );
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(
        dir.path(),
        r#"
[jobs.broken]
hypervisor = "kvm2"
repository = "main"
all = true
schedule = "0 25 * * *"
time_zone = "Mars/Olympus"
tags = ["a,b"]

[jobs.novms]
hypervisor = "kvm1"
repository = "main"

[jobs.empty-retention]
hypervisor = "kvm1"
repository = "main"
all = true
[jobs.empty-retention.retention]
prune = true
"#,
    );
    let found = issues(dir.path(), &text);
    let expect = [
        "39:14: hypervisor = \"kvm2\" is not configured (configured: kvm1)",
        "42:12: schedule: \"0 25 * * *\" is not a cron schedule",
        "43:13: time_zone = \"Mars/Olympus\" is not an IANA time zone",
        "44:9: tag \"a,b\"",
        "46:7: job \"novms\" names no VM",
        "54:1: retention keeps nothing",
    ];
    assert_eq!(found.len(), expect.len(), "{found:#?}");
    for (got, want) in found.iter().zip(expect) {
        assert!(got.starts_with(want), "{got:?} should start with {want:?}");
    }
}

#[test]
fn a_password_is_never_inline_and_its_file_must_exist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(
        dir.path(),
        "\n[repositories.inline]\nlocation = \"/x\"\npassword = \"hunter2\"\n",
    );
    let found = issues(dir.path(), &text);
    assert!(found[0].contains("unknown field `password`"), "{found:?}");
    let text = config_text(
        dir.path(),
        "\n[repositories.nopass]\nlocation = \"/x\"\n\n[repositories.gone]\nlocation = \"/y\"\npassword_file = \"/nonexistent/pass\"\n",
    );
    let found = issues(dir.path(), &text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains("has no password_file or password_command"),
        "{found:?}"
    );
    assert!(
        found[1].contains("/nonexistent/pass: No such file"),
        "{found:?}"
    );
}

#[test]
fn a_password_file_others_can_read_is_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "");
    std::fs::set_permissions(
        dir.path().join("main.pass"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let c = parse(dir.path(), &text).expect("valid");
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].contains("chmod 600"), "{:?}", c.warnings);
}

#[test]
fn plain_http_only_on_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "").replace(
        "[server]\n",
        "[server]\nlisten = \"0.0.0.0:8080\"\nplain_http = true\n",
    );
    let found = issues(dir.path(), &text);
    assert!(
        found[0].starts_with("3:14: plain_http = true on 0.0.0.0:8080"),
        "{found:?}"
    );
    let text = config_text(dir.path(), "").replace(
        "[server]\n",
        "[server]\nlisten = \"[::1]:8080\"\nplain_http = true\n",
    );
    let c = parse(dir.path(), &text).expect("valid");
    assert_eq!(c.server.transport, Transport::PlainHttp);
}

#[test]
fn tenants_do_not_mix_in_a_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "").replace(
        "[hypervisors.kvm1]\n",
        "[hypervisors.kvm1]\ntenant = \"acme\"\n",
    );
    let found = issues(dir.path(), &text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("belongs to tenant \"acme\" but repository \"main\" to tenant (none)"),
        "{found:?}"
    );
}

#[test]
fn a_broken_toml_file_names_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let found = issues(
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:1\"\nmax_jobs = \n",
    );
    assert!(found[0].starts_with("3:"), "{found:?}");
    let shown = parse(dir.path(), "[server\n")
        .expect_err("broken")
        .to_string();
    assert!(shown.contains("vmstash.toml:1:"), "{shown}");
}

#[test]
fn email_addresses_and_plain_smtp_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let email = |lines: &str| {
        config_text(dir.path(), "").replace(
            "[notifications.ops]\n",
            &format!("[notifications.ops]\nemail_from = \"vmstash@example.com\"\n{lines}"),
        )
    };
    let text =
        email("email_to = [\"Ops <ops@example.com>\"]\nsmtp_server = \"smtp.example.com\"\n");
    let c = parse(dir.path(), &text).expect("valid");
    let e = c.notifications["ops"].email.as_ref().expect("email");
    assert_eq!((e.port, e.security), (587, SmtpSecurity::StartTls));
    assert_eq!(e.to[0].email.to_string(), "ops@example.com");
    let text = email(
        "email_to = [\"ops@example.com\"]\nsmtp_server = \"localhost\"\nsmtp_security = \"plain\"\n",
    );
    let e = parse(dir.path(), &text).expect("valid").notifications["ops"]
        .email
        .clone()
        .expect("email");
    assert_eq!((e.port, e.security), (25, SmtpSecurity::Plain));

    let found = issues(
        dir.path(),
        &email("email_to = [\"ops at example\"]\nsmtp_server = \"smtp.example.com\"\n"),
    );
    assert!(
        found
            .iter()
            .any(|f| f.contains("email_to: \"ops at example\" is not an email address")),
        "{found:?}"
    );
    let found = issues(
        dir.path(),
        &email("email_to = [\"ops@example.com\"]\nsmtp_server = \"smtp.example.com\"\nsmtp_security = \"plain\"\n"),
    );
    assert!(
        found
            .iter()
            .any(|f| f.contains("plain SMTP goes to a loopback server only")),
        "{found:?}"
    );
    let found = issues(
        dir.path(),
        &email("email_to = [\"ops@example.com\"]\nsmtp_server = \"smtp.example.com\"\nsmtp_security = \"ssl\"\n"),
    );
    assert!(
        found
            .iter()
            .any(|f| f.contains("use starttls, tls or plain")),
        "{found:?}"
    );
}

#[test]
fn restore_dirs_are_absolute_without_parent_components() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "").replace(
        "[server]\n",
        "[server]\nrestore_dirs = [\"/var/lib/vmstash/restore\", \"relative\", \"/a/../etc\"]\n",
    );
    let found = issues(dir.path(), &text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains("relative is not an absolute path"),
        "{found:?}"
    );
    assert!(
        found[1].contains("/a/../etc is not an absolute path"),
        "{found:?}"
    );
}
