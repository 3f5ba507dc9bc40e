//! Running a command for the client ([`Frame::Run`], spec/FORMAT.md §19.4): the helper is already
//! running on the hypervisor, so `virsh`, `qemu-img` and the like run from it without a new SSH
//! channel and a new login shell each (about 0.2 s apiece on a typical host).
//!
//! The command's outputs are read to their end on two threads, each keeping at most
//! [`MAX_RUN_OUTPUT`] bytes (the rest is read and dropped, so that the command never blocks on a
//! full pipe), then sent as [`Frame::Output`] frames and one [`Frame::Exit`].

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use crate::protocol::{ErrorCode, Frame, OutputStream, MAX_OUTPUT_CHUNK, MAX_RUN_OUTPUT};

/// What a command printed, at most [`MAX_RUN_OUTPUT`] bytes of it.
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Runs `argv` (program first, no shell) with stdin from `/dev/null` and hands `emit` the
/// frames that answer it: its outputs, then [`Frame::Exit`] — or one [`Frame::Error`] when it
/// cannot be started. `Err` is `emit`'s own failure (the connection to the client).
pub fn run_command(
    argv: &[Vec<u8>],
    emit: &mut dyn FnMut(Frame) -> io::Result<()>,
) -> io::Result<()> {
    let Some((program, args)) = argv.split_first() else {
        return emit(spawn_error("an empty command"));
    };
    let program = OsString::from_vec(program.clone());
    let child = Command::new(&program)
        .args(args.iter().map(|a| OsString::from_vec(a.clone())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            return emit(spawn_error(&format!(
                "cannot run {}: {e}",
                program.to_string_lossy()
            )))
        }
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (out, err) = std::thread::scope(|s| {
        let err = s.spawn(move || capture(stderr));
        let out = capture(stdout);
        (
            out,
            err.join()
                .unwrap_or_else(|_| capture(None::<std::process::ChildStderr>)),
        )
    });
    let status = child.wait()?;
    let status = status
        .code()
        .or_else(|| status.signal().map(|sig| 128 + sig))
        .unwrap_or(-1);
    for (stream, captured) in [(OutputStream::Stdout, &out), (OutputStream::Stderr, &err)] {
        for piece in captured.bytes.chunks(MAX_OUTPUT_CHUNK) {
            emit(Frame::Output {
                stream,
                data: piece.to_vec(),
            })?;
        }
    }
    emit(Frame::Exit {
        status,
        truncated: out.truncated || err.truncated,
    })
}

/// Reads `pipe` to its end, keeping the first [`MAX_RUN_OUTPUT`] bytes.
fn capture(pipe: Option<impl Read>) -> Captured {
    let mut captured = Captured {
        bytes: Vec::new(),
        truncated: false,
    };
    let Some(mut pipe) = pipe else {
        return captured;
    };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let room = MAX_RUN_OUTPUT.saturating_sub(captured.bytes.len());
        let got = buf.get(..n).unwrap_or_default();
        let kept = got.get(..room.min(n)).unwrap_or_default();
        captured.bytes.extend_from_slice(kept);
        captured.truncated |= kept.len() < n;
    }
    captured
}

/// The error frame for a command that could not start.
fn spawn_error(message: &str) -> Frame {
    Frame::error(ErrorCode::Spawn, message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(argv: &[&str]) -> Vec<Frame> {
        let argv: Vec<Vec<u8>> = argv.iter().map(|a| a.as_bytes().to_vec()).collect();
        let mut frames = Vec::new();
        run_command(&argv, &mut |f| {
            frames.push(f);
            Ok(())
        })
        .expect("emit");
        frames
    }

    #[test]
    fn outputs_and_status_come_back_unquoted() {
        let frames = run(&[
            "sh",
            "-c",
            "printf '%s' \"$1\"; echo oops >&2; exit 3",
            "x",
            "a b;c",
        ]);
        assert_eq!(
            frames,
            vec![
                Frame::Output {
                    stream: OutputStream::Stdout,
                    data: b"a b;c".to_vec()
                },
                Frame::Output {
                    stream: OutputStream::Stderr,
                    data: b"oops\n".to_vec()
                },
                Frame::Exit {
                    status: 3,
                    truncated: false
                },
            ]
        );
    }

    #[test]
    fn a_signal_is_128_plus_its_number_and_a_missing_program_an_error() {
        let frames = run(&["sh", "-c", "kill -9 $$"]);
        assert_eq!(
            frames.last(),
            Some(&Frame::Exit {
                status: 137,
                truncated: false
            })
        );
        let frames = run(&["/nonexistent/virsh"]);
        assert!(
            matches!(&frames[..], [Frame::Error { code: ErrorCode::Spawn, message }] if message.contains("/nonexistent/virsh")),
            "{frames:?}"
        );
    }

    #[test]
    fn output_past_the_limit_is_dropped_and_said() {
        let frames = run(&["head", "-c", "17000000", "/dev/zero"]);
        let kept: usize = frames
            .iter()
            .map(|f| match f {
                Frame::Output { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(kept, MAX_RUN_OUTPUT);
        assert_eq!(
            frames.last(),
            Some(&Frame::Exit {
                status: 0,
                truncated: true
            })
        );
    }
}
