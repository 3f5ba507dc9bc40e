//! Tests of qcow2 sources against images made by qemu-img and qemu-io, compared byte for byte
//! with what qemu reads (`qemu-img convert -O raw`).
//!
//! - `reading`: images and chains that must read exactly as qemu reads them;
//! - `headers`: damaged, encrypted and unsupported headers;
//! - `chains`: backing chains that loop or name what vmstash does not follow;
//! - `truncated`: images cut short, which are damage, never zeros.

mod chains;
mod headers;
mod reading;
mod truncated;

use super::header::field;
use super::MAGIC;
use crate::source::test_util::{assert_ranges_cover, qemu, read_all, TestResult};
use crate::source::{len_u64, open, DiskSource, ImageFormat, SourceError};
use std::error::Error;
use std::path::Path;

/// One mebibyte.
const MIB: usize = 1 << 20;

/// `path` as the `&str` qemu-img wants.
fn arg(path: &Path) -> Result<&str, Box<dyn Error>> {
    path.to_str().ok_or_else(|| "temp path is not UTF-8".into())
}

/// A 4 MiB raw disk: patterned data at 0..200 KiB and 3 MiB..3 MiB+64 KiB, zeros elsewhere.
fn patterned_raw(path: &Path) -> Result<Vec<u8>, Box<dyn Error>> {
    let mut data = vec![0u8; 4 * MIB];
    let pattern = (1..=253u8).cycle();
    for (byte, value) in data.iter_mut().take(200 << 10).zip(pattern.clone()) {
        *byte = value;
    }
    for (byte, value) in data.iter_mut().skip(3 * MIB).take(64 << 10).zip(pattern) {
        *byte = value.wrapping_mul(7);
    }
    std::fs::write(path, &data)?;
    Ok(data)
}

/// Converts `raw` to qcow2 at `qcow2` with extra `options` for `qemu-img convert`.
fn convert(raw: &Path, qcow2: &Path, options: &[&str]) -> TestResult {
    let mut args = vec!["convert", "-q", "-f", "raw", "-O", "qcow2"];
    args.extend_from_slice(options);
    args.extend_from_slice(&[arg(raw)?, arg(qcow2)?]);
    qemu("qemu-img", &args)
}

/// What qemu itself reads from `image`: converts it to raw and returns the bytes.
fn qemu_view(image: &Path) -> Result<Vec<u8>, Box<dyn Error>> {
    let raw = image.with_extension("expected");
    let args = ["convert", "-q", "-O", "raw", arg(image)?, arg(&raw)?];
    qemu("qemu-img", &args)?;
    Ok(std::fs::read(raw)?)
}

/// Opening `path` must fail; returns the error.
fn open_err(path: &Path) -> Result<SourceError, Box<dyn Error>> {
    match open(path) {
        Ok(_) => Err(format!("{} opened", path.display()).into()),
        Err(err) => Ok(err),
    }
}

/// Creates a qcow2 image at `path` with `qemu-img create`: `size` ("1M"; `None` takes the
/// backing file's) and an optional backing file as `(name, format)`.
fn create(path: &Path, size: Option<&str>, backing: Option<(&str, &str)>) -> TestResult {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if let Some((name, format)) = backing {
        args.extend_from_slice(&["-b", name, "-F", format]);
    }
    args.push(arg(path)?);
    args.extend(size);
    qemu("qemu-img", &args)
}

/// Points the image at `path` to another backing file without checking it (`rebase -u`).
fn rebase_unsafe(path: &Path, name: &str, format: &str) -> TestResult {
    let args = ["rebase", "-q", "-u", "-b", name, "-F", format, arg(path)?];
    qemu("qemu-img", &args)
}

/// Runs `qemu-io` commands ("write -P 0xab 0 64k") on the image at `path`.
fn qemu_io(path: &Path, commands: &[&str]) -> TestResult {
    let mut args = Vec::new();
    for command in commands {
        args.extend_from_slice(&["-c", command]);
    }
    args.push(arg(path)?);
    qemu("qemu-io", &args)
}
