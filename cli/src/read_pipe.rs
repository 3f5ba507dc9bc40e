//! Pipelined NBD reads through the hashblocks helper (spec/FORMAT.md §19.6 step 4): the helper
//! answers requests in the order they arrive, so a reader may send its NBD_READ while another
//! reader's answer is still on the way, and the connection never idles between a request and
//! its answer (the helper reads the next chunk from the export while the last one crosses the
//! network). Each read takes a ticket when it sends its request; answers are taken in ticket
//! order.
//!
//! Whoever receives (the caller, through the helper) calls [`ReadPipe::wait_turn`] before and
//! [`ReadPipe::done`] after; a failure that leaves the stream out of step (the helper died, a
//! request half sent) breaks the pipe, and every read waiting on it fails.

use std::sync::{Condvar, Mutex, PoisonError};

use anyhow::{anyhow, bail, Result};
use vmstash_hashblocks::protocol::{self, Frame};
use vmstash_ssh::RemoteWriter;

/// The order of the NBD reads pipelined on one helper.
pub struct ReadPipe {
    /// The helper's stdin and the next ticket, together: a ticket is the order of its request.
    sender: Mutex<(RemoteWriter, u64)>,
    /// Whose answer is next, and whether the stream is broken.
    turn: Mutex<Turn>,
    /// Signalled when the turn moves on or the pipe breaks.
    moved: Condvar,
}

#[derive(Default)]
struct Turn {
    serving: u64,
    broken: bool,
}

impl ReadPipe {
    /// A pipe writing requests to `writer` (the helper's stdin).
    pub fn new(writer: RemoteWriter) -> ReadPipe {
        ReadPipe {
            sender: Mutex::new((writer, 0)),
            turn: Mutex::new(Turn::default()),
            moved: Condvar::new(),
        }
    }

    /// Sends a request to read `length` bytes at `offset` of export `export`; returns its
    /// ticket.
    pub fn send(&self, export: u32, offset: u64, length: usize) -> Result<u64> {
        let length = u32::try_from(length)
            .ok()
            .filter(|n| (1..=protocol::MAX_READ_LEN).contains(n))
            .ok_or_else(|| anyhow!("an NBD read of {length} bytes is out of range"))?;
        let mut wire = Vec::new();
        Frame::NbdRead {
            export,
            offset,
            length,
        }
        .encode(&mut wire)?;
        let mut sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = sender.0.write_all(&wire) {
            self.finish(true);
            return Err(e.into());
        }
        let ticket = sender.1;
        sender.1 += 1;
        Ok(ticket)
    }

    /// Waits until the answer to `ticket` is the next on the stream.
    pub fn wait_turn(&self, ticket: u64) -> Result<()> {
        let turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        let turn = self
            .moved
            .wait_while(turn, |t| !t.broken && t.serving != ticket)
            .unwrap_or_else(PoisonError::into_inner);
        if turn.broken {
            bail!("an earlier read through the hashblocks helper failed; the helper cannot be read any more");
        }
        Ok(())
    }

    /// The answer of the current turn was taken; `broken` when taking it left the stream out
    /// of step.
    pub fn done(&self, broken: bool) {
        self.finish(broken);
    }

    fn finish(&self, broken: bool) {
        let mut turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        turn.serving += 1;
        turn.broken |= broken;
        self.moved.notify_all();
    }
}
