//! Backing chains that loop, lose a file, or name a format or protocol vmstash does not follow.

use super::*;

#[test]
fn backing_loop_is_corrupt() -> TestResult {
    let dir = tempfile::tempdir()?;
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    create(&a, Some("1M"), None)?;
    create(&b, None, Some(("a.qcow2", "qcow2")))?;
    rebase_unsafe(&a, "b.qcow2", "qcow2")?;
    let err = open_err(&b)?;
    assert!(matches!(err, SourceError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("loops"), "{err}");
    Ok(())
}

#[test]
fn missing_backing_file_names_both_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let top = dir.path().join("top.qcow2");
    create(&top, Some("1M"), None)?;
    rebase_unsafe(&top, "gone.qcow2", "qcow2")?;
    let err = open_err(&top)?;
    assert!(matches!(err, SourceError::Io { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("gone.qcow2") && message.contains("top.qcow2"),
        "{message}"
    );
    Ok(())
}

#[test]
fn unknown_backing_format_is_unsupported() -> TestResult {
    let dir = tempfile::tempdir()?;
    let top = dir.path().join("top.qcow2");
    create(&top, Some("1M"), None)?;
    rebase_unsafe(&top, "base.vmdk", "vmdk")?;
    let err = open_err(&top)?;
    assert!(matches!(err, SourceError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("vmdk"), "{err}");
    Ok(())
}

#[test]
fn protocol_backing_names_are_unsupported() -> TestResult {
    let dir = tempfile::tempdir()?;
    let top = dir.path().join("top.qcow2");
    create(&top, Some("1M"), None)?;
    rebase_unsafe(&top, "nbd://host/export", "raw")?;
    let err = open_err(&top)?;
    assert!(matches!(err, SourceError::Unsupported { .. }), "{err}");
    Ok(())
}
