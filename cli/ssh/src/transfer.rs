//! Pipelined SFTP reads and writes.
//!
//! SFTP is request/response: one read request at a time would move one request's worth of data
//! per round trip, a few MB/s on a WAN. Like OpenSSH's `sftp` client, vmstash keeps many requests
//! in flight: a read of a large buffer is cut into pieces of `request_len` bytes (64 KiB, or less
//! if the server's `limits@openssh.com` says so), up to `max_in_flight` of them are sent before the
//! first answer is awaited, and each answer is copied to its place in the buffer as it arrives
//! (in whatever order the server answers). Writes work the same way.
//!
//! Short reads are legal in SFTP (a server may return fewer bytes than asked for, which OpenSSH
//! does at end of file and for requests above its limit): the missing tail of a piece is asked
//! for again, first in line. An end-of-file answer inside the requested range is an error
//! ([`SftpFailure::UnexpectedEof`]): callers ask only for bytes that exist. On any error the
//! requests still in flight are abandoned; their late answers are discarded by russh-sftp.

use std::collections::VecDeque;

use futures::stream::{FuturesUnordered, StreamExt};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::StatusCode;

use crate::error::SftpFailure;

/// Read or write requests kept in flight per call (OpenSSH's `sftp -R` default is 64).
pub(crate) const MAX_IN_FLIGHT: usize = 64;

/// Bytes per read or write request, unless the server allows less.
pub(crate) const REQUEST_LEN: usize = 64 << 10;

/// One piece of a transfer: its position in the caller's buffer and its length.
#[derive(Debug, Clone, Copy)]
struct Piece {
    /// Offset of the piece from the start of the caller's buffer.
    start: usize,
    /// Length in bytes.
    len: usize,
}

/// Cuts `total` bytes into pieces of at most `request_len` bytes.
fn pieces(total: usize, request_len: usize) -> VecDeque<Piece> {
    let request_len = request_len.max(1);
    (0..total)
        .step_by(request_len)
        .map(|start| Piece {
            start,
            len: request_len.min(total.saturating_sub(start)),
        })
        .collect()
}

/// The file offset of byte `start` of a buffer that begins at file offset `base`.
fn file_offset(base: u64, start: usize) -> Result<u64, SftpFailure> {
    u64::try_from(start)
        .ok()
        .and_then(|start| base.checked_add(start))
        .ok_or_else(|| SftpFailure::Protocol(format!("offset {base} + {start} overflows")))
}

/// Fills `buf` with the bytes of the open file `handle` starting at `offset`.
pub(crate) async fn read_exact_at(
    raw: &RawSftpSession,
    handle: &str,
    buf: &mut [u8],
    offset: u64,
    request_len: usize,
) -> Result<(), SftpFailure> {
    file_offset(offset, buf.len())?;
    let mut todo = pieces(buf.len(), request_len);
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < MAX_IN_FLIGHT {
            let Some(piece) = todo.pop_front() else {
                break;
            };
            in_flight.push(read_piece(raw, handle, offset, piece));
        }
        let Some((piece, answer)) = in_flight.next().await else {
            return Ok(());
        };
        let data = match answer {
            Ok(data) => data,
            Err(SftpError::Status(status)) if status.status_code == StatusCode::Eof => {
                return Err(SftpFailure::UnexpectedEof {
                    at: file_offset(offset, piece.start)?,
                });
            }
            Err(err) => return Err(err.into()),
        };
        let got = data.len();
        if got == 0 || got > piece.len {
            return Err(SftpFailure::Protocol(format!(
                "asked for {} bytes, got {got}",
                piece.len
            )));
        }
        let end = piece.start.saturating_add(got);
        let slot = buf.get_mut(piece.start..end).ok_or_else(|| {
            SftpFailure::Protocol(format!("piece {}..{end} outside the buffer", piece.start))
        })?;
        slot.copy_from_slice(&data);
        if got < piece.len {
            todo.push_front(Piece {
                start: end,
                len: piece.len.saturating_sub(got),
            });
        }
    }
}

/// Sends one read request and waits for its answer.
async fn read_piece(
    raw: &RawSftpSession,
    handle: &str,
    base: u64,
    piece: Piece,
) -> (Piece, Result<Vec<u8>, SftpError>) {
    let answer = match (file_offset(base, piece.start), u32::try_from(piece.len)) {
        (Ok(offset), Ok(len)) => raw.read(handle, offset, len).await.map(|data| data.data),
        _ => Err(SftpError::UnexpectedBehavior(
            "read request out of range".to_owned(),
        )),
    };
    (piece, answer)
}

/// Writes all of `data` to the open file `handle` at `offset`.
pub(crate) async fn write_all_at(
    raw: &RawSftpSession,
    handle: &str,
    data: &[u8],
    offset: u64,
    request_len: usize,
) -> Result<(), SftpFailure> {
    file_offset(offset, data.len())?;
    let mut todo = pieces(data.len(), request_len);
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < MAX_IN_FLIGHT {
            let Some(piece) = todo.pop_front() else {
                break;
            };
            let end = piece.start.saturating_add(piece.len);
            let bytes = data.get(piece.start..end).unwrap_or_default().to_vec();
            in_flight.push(write_piece(
                raw,
                handle,
                file_offset(offset, piece.start)?,
                bytes,
            ));
        }
        match in_flight.next().await {
            None => return Ok(()),
            Some(Ok(())) => {}
            Some(Err(err)) => return Err(err.into()),
        }
    }
}

/// Sends one write request and waits for its status.
async fn write_piece(
    raw: &RawSftpSession,
    handle: &str,
    offset: u64,
    bytes: Vec<u8>,
) -> Result<(), SftpError> {
    raw.write(handle, offset, bytes).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_buffer_exactly() {
        let cut: Vec<(usize, usize)> = pieces(150, 64).iter().map(|p| (p.start, p.len)).collect();
        assert_eq!(cut, [(0, 64), (64, 64), (128, 22)]);
        assert!(pieces(0, 64).is_empty());
        assert_eq!(
            pieces(5, 0).len(),
            5,
            "a zero request length is treated as 1"
        );
    }

    #[test]
    fn offsets_are_checked() {
        assert_eq!(file_offset(10, 5).ok(), Some(15));
        assert!(file_offset(u64::MAX, 1).is_err());
    }
}
