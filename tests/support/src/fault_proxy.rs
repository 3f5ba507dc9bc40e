//! A fault-injecting HTTP/1.1 proxy on 127.0.0.1, for end-to-end tests of the S3 backend.
//!
//! [`FaultProxy::start`] listens on a free port and forwards every request to an upstream S3
//! server (moto, `rclone serve s3`) on 127.0.0.1; the client under test is pointed at
//! [`FaultProxy::endpoint`] instead of the server. [`Faults`] says which requests to spoil and
//! how: answer `500 InternalError` or `503 SlowDown` without forwarding, drop the connection
//! without an answer (before or after the server performed the request), or delay the answer.
//! The choice is counter-based, so a test run injects the same faults into the same requests
//! every time (given the same order of requests), and [`FaultProxy::set_faults`] switches the
//! faults while the proxy runs, e.g. to set up a repository cleanly and then break its backups.
//!
//! # One request per connection
//!
//! The proxy serves exactly one request on each client connection, and forwards it on a fresh
//! upstream connection, with `Connection: close` in both directions. That framing is what keeps it
//! small and exact:
//!
//! - The response needs no parsing beyond its head: its body is whatever the server sends until
//!   it closes the connection (which `Connection: close` obliges it to do, and moto and Go's
//!   net/http do), whichever framing it uses (`Content-Length`, chunked, none for `HEAD` or
//!   `304`), and is passed through verbatim. Only the request's body is framed by the proxy
//!   (by `Content-Length`, or de-chunked and re-sent with one).
//! - A fault hits exactly the request it was meant for. With kept-alive connections, a dropped
//!   connection could also be an idle pooled one, which HTTP clients retry silently, and a reset
//!   in the middle of a pipeline would take several requests down with it.
//! - The client's connection pool never holds a connection the proxy is about to close: the
//!   response says `Connection: close`, so the client opens a new connection for its next
//!   request.
//!
//! The request head is forwarded byte for byte except for the `Connection` header (replaced by
//! `Connection: close`) and, for a chunked body, `Transfer-Encoding` (replaced by
//! `Content-Length`): in particular `Host` is not rewritten, since the AWS signature covers it.
//! A client's `Expect: 100-continue` is answered by the proxy, and the server's interim responses
//! are dropped.
//!
//! ```no_run
//! # fn test(server: std::net::SocketAddr) -> std::io::Result<()> {
//! use vmstash_test_support::{FaultProxy, Faults};
//!
//! let proxy = FaultProxy::start(server, Faults::default())?;
//! // ... create the repository through proxy.endpoint() ...
//! proxy.set_faults(Faults {
//!     every: 3,
//!     status_503: true,
//!     reset_after_forward: true,
//!     only_methods: Some(vec!["PUT".to_owned()]),
//!     ..Faults::default()
//! });
//! // ... back up through proxy.endpoint(): the 2nd, 5th, 8th, ... PUT fails ...
//! assert!(proxy.injected() > 0);
//! # Ok(())
//! # }
//! ```

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The most a request or response head (start line and headers) may take.
const MAX_HEAD: usize = 64 * 1024;

/// The most a request body may take (it is held in memory, to be de-chunked and counted).
const MAX_BODY: u64 = 64 * 1024 * 1024;

/// The most one line of chunked framing (a chunk size with its extensions) may take.
const MAX_CHUNK_LINE: usize = 4096;

/// How long a client may stay silent, or refuse to take the response, before being dropped.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long connecting to the upstream server may take.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the upstream server may stay silent (or refuse the request) before being dropped.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);

/// How often a delayed connection looks whether the proxy is being dropped.
const SLEEP_SLICE: Duration = Duration::from_millis(10);

/// Which requests the proxy spoils, and how. The default injects nothing.
///
/// A request is eligible when its method is in [`only_methods`](Self::only_methods) (or that is
/// `None`). Eligible requests are numbered from 0 (restarting at each
/// [`FaultProxy::set_faults`]), and request `n` gets a fault when `n % every == every / 2`: with
/// `every = 2` the 2nd, 4th, ... eligible requests, with `every = 3` the 2nd, 5th, 8th, ..., with
/// `every = 1` all of them. The faults take turns among the enabled kinds, in the order of
/// [`Faults::kinds`]; with no kind enabled nothing is injected.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Inject a fault into every `every`th eligible request; 0 never injects.
    pub every: u32,
    /// Answer `500 Internal Server Error` with an S3 `InternalError` body, without forwarding.
    pub status_500: bool,
    /// Answer `503 Slow Down` with an S3 `SlowDown` body, without forwarding.
    pub status_503: bool,
    /// Read the request, then close the client's connection without an answer and without
    /// forwarding. (The close is an orderly one, a FIN: std cannot set `SO_LINGER` to send a
    /// reset without unsafe code. The client still sees its connection closed before a response.)
    pub reset: bool,
    /// Forward the request, so the server performs it, read the server's whole response, then
    /// close the client's connection without an answer: the client sees a failure for a request
    /// that succeeded, e.g. a PUT that stored its object.
    pub reset_after_forward: bool,
    /// Forward the request at once, but hold the server's response back for this long before
    /// passing it on.
    pub delay: Option<Duration>,
    /// Spoil only requests with one of these methods (compared case-insensitively, e.g. `PUT`);
    /// `None` makes all requests eligible.
    pub only_methods: Option<Vec<String>>,
}

impl Faults {
    /// The enabled kinds of fault, in the order in which injections take turns: 500, 503, reset,
    /// reset after forward, delay.
    pub fn kinds(&self) -> Vec<FaultKind> {
        let mut kinds = Vec::new();
        if self.status_500 {
            kinds.push(FaultKind::Status500);
        }
        if self.status_503 {
            kinds.push(FaultKind::Status503);
        }
        if self.reset {
            kinds.push(FaultKind::Reset);
        }
        if self.reset_after_forward {
            kinds.push(FaultKind::ResetAfterForward);
        }
        if let Some(delay) = self.delay {
            kinds.push(FaultKind::Delay(delay));
        }
        kinds
    }

    /// Whether a request with this method may get a fault.
    fn eligible(&self, method: &str) -> bool {
        self.only_methods
            .as_ref()
            .is_none_or(|methods| methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
    }
}

/// One kind of fault; see the fields of [`Faults`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// [`Faults::status_500`].
    Status500,
    /// [`Faults::status_503`].
    Status503,
    /// [`Faults::reset`].
    Reset,
    /// [`Faults::reset_after_forward`].
    ResetAfterForward,
    /// [`Faults::delay`], with its duration.
    Delay(Duration),
}

/// A fault the proxy injected, for a test's assertions or its failure message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    /// Which request it spoiled: 1 for the first request the proxy read, counting all requests.
    pub request: u64,
    /// The request's method, e.g. `PUT`.
    pub method: String,
    /// The request's target, e.g. `/bucket/key?partNumber=1`.
    pub target: String,
    /// What the proxy did to it.
    pub kind: FaultKind,
}

/// A running fault-injecting proxy, which serves one request per client connection (the
/// `fault_proxy` module's documentation says why).
///
/// Dropping it stops accepting, closes the connections in progress and waits for their threads.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where the proxy listens.
    addr: SocketAddr,
    /// What the proxy's threads share.
    shared: Arc<Shared>,
    /// The thread accepting connections, until dropped.
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 (a free port) that forwards to `upstream` and injects
    /// `faults`.
    pub fn start(upstream: SocketAddr, faults: Faults) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            stop: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            plan: Mutex::new(Plan::new(faults)),
            connections: Mutex::new(Vec::new()),
        });
        let accept = thread::Builder::new()
            .name("fault-proxy".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || accept_loop(&listener, &shared)
            })?;
        Ok(Self {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's URL, `http://127.0.0.1:PORT`, to give the S3 client as its endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests the proxy has read in full, faulty or not.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// How many faults the proxy has injected.
    pub fn injected(&self) -> u64 {
        self.shared.injected.load(Ordering::SeqCst)
    }

    /// The faults the proxy has injected, in order.
    pub fn injections(&self) -> Vec<Injection> {
        lock(&self.shared.plan).log.clone()
    }

    /// Replaces the faults for the requests read from now on, and restarts the numbering of
    /// eligible requests (and the turns among the kinds) from 0.
    pub fn set_faults(&self, faults: Faults) {
        let mut plan = lock(&self.shared.plan);
        plan.faults = faults;
        plan.eligible = 0;
        plan.turn = 0;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            // Wake the accept loop up to see the flag. Should connecting fail, the thread is
            // left behind rather than waited for forever.
            if TcpStream::connect_timeout(&self.addr, UPSTREAM_CONNECT_TIMEOUT).is_ok() {
                let _ = accept.join();
            }
        }
        let connections = std::mem::take(&mut *lock(&self.shared.connections));
        for connection in &connections {
            for socket in lock(&connection.sockets).iter() {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
        for connection in connections {
            let _ = connection.thread.join();
        }
    }
}

/// What the proxy's threads share.
#[derive(Debug)]
struct Shared {
    /// The server requests are forwarded to.
    upstream: SocketAddr,
    /// Set when the proxy is dropped.
    stop: AtomicBool,
    /// Requests read in full.
    requests: AtomicU64,
    /// Faults injected.
    injected: AtomicU64,
    /// Which faults to inject, and where the counting stands.
    plan: Mutex<Plan>,
    /// The connections being served (and some finished ones not yet joined).
    connections: Mutex<Vec<Connection>>,
}

/// The faults and the counters that choose among requests and kinds.
#[derive(Debug)]
struct Plan {
    /// What to inject.
    faults: Faults,
    /// Eligible requests seen since the faults were set.
    eligible: u64,
    /// Faults injected since the faults were set, which picks the next kind.
    turn: usize,
    /// Every fault injected.
    log: Vec<Injection>,
}

impl Plan {
    /// A plan that has seen no request yet.
    fn new(faults: Faults) -> Self {
        Self {
            faults,
            eligible: 0,
            turn: 0,
            log: Vec::new(),
        }
    }
}

/// A client connection's thread, with the sockets to shut down to end it early.
#[derive(Debug)]
struct Connection {
    /// The thread serving the connection.
    thread: JoinHandle<()>,
    /// Clones of the client socket and (once connected) the upstream one.
    sockets: Arc<Mutex<Vec<TcpStream>>>,
}

impl Shared {
    /// Counts a request read in full, and decides whether (and how) to spoil it.
    fn decide(&self, method: &str, target: &str) -> Option<FaultKind> {
        let mut plan = lock(&self.plan);
        let request = self
            .requests
            .fetch_add(1, Ordering::SeqCst)
            .saturating_add(1);
        if !plan.faults.eligible(method) {
            return None;
        }
        let n = plan.eligible;
        plan.eligible = n.saturating_add(1);
        let every = u64::from(plan.faults.every);
        if every == 0 || n % every != every / 2 {
            return None;
        }
        let kinds = plan.faults.kinds();
        let kind = *kinds.get(plan.turn.checked_rem(kinds.len())?)?;
        plan.turn = plan.turn.wrapping_add(1);
        plan.log.push(Injection {
            request,
            method: method.to_owned(),
            target: target.to_owned(),
            kind,
        });
        self.injected.fetch_add(1, Ordering::SeqCst);
        Some(kind)
    }

    /// How many faults have been injected.
    fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Whether the proxy is being dropped.
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Locks a mutex, ignoring poisoning: the data is counters and sockets, valid at any point.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Accepts client connections until the proxy is dropped, one thread each.
fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping() {
            break;
        }
        let client = match client {
            Ok(client) => client,
            Err(_) => {
                // E.g. out of file descriptors: let some connections finish.
                thread::sleep(SLEEP_SLICE);
                continue;
            }
        };
        let Ok(clone) = client.try_clone() else {
            continue;
        };
        let sockets = Arc::new(Mutex::new(vec![clone]));
        let spawned = thread::Builder::new()
            .name("fault-proxy-conn".to_owned())
            .spawn({
                let shared = Arc::clone(shared);
                let sockets = Arc::clone(&sockets);
                move || {
                    // Whatever goes wrong ends this connection, and only it.
                    let _ = serve(client, &shared, &sockets);
                    lock(&sockets).clear();
                }
            });
        let Ok(thread) = spawned else {
            continue;
        };
        let mut connections = lock(&shared.connections);
        let (finished, running): (Vec<_>, Vec<_>) =
            connections.drain(..).partition(|c| c.thread.is_finished());
        *connections = running;
        connections.push(Connection { thread, sockets });
        drop(connections);
        for connection in finished {
            let _ = connection.thread.join();
        }
    }
}

/// Why serving a connection stopped early.
#[derive(Debug)]
enum Failure {
    /// A socket failed, or a peer closed its connection early: nothing more to say to anyone
    /// (and nobody to tell what failed).
    Io,
    /// The client's request is malformed or too large: answer with this status and reason.
    Reject(u16, &'static str),
}

impl From<io::Error> for Failure {
    fn from(_: io::Error) -> Self {
        Self::Io
    }
}

/// A request read from the client, ready to forward.
#[derive(Debug)]
struct Request {
    /// The method, e.g. `PUT`.
    method: String,
    /// The request target, e.g. `/bucket/key`.
    target: String,
    /// The head to send upstream: request line and headers, rewritten, with the blank line.
    head: Vec<u8>,
    /// The body (de-chunked).
    body: Vec<u8>,
}

/// Serves the one request of a client connection.
fn serve(
    client: TcpStream,
    shared: &Shared,
    sockets: &Mutex<Vec<TcpStream>>,
) -> Result<(), Failure> {
    client.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    client.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    client.set_nodelay(true)?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    let request = match read_request(&mut reader, &mut client) {
        Ok(Some(request)) => request,
        Ok(None) => return Ok(()),
        Err(Failure::Reject(status, reason)) => {
            write_rejection(&mut client, status, reason)?;
            return close(&client);
        }
        Err(failure) => return Err(failure),
    };
    drop(reader);

    match shared.decide(&request.method, &request.target) {
        None => {
            let mut response = forward(shared, sockets, &request)?;
            pass_response(&mut response, &mut client)?;
        }
        Some(FaultKind::Status500) => {
            write_s3_error(&mut client, &request, 500, shared.injected())?
        }
        Some(FaultKind::Status503) => {
            write_s3_error(&mut client, &request, 503, shared.injected())?
        }
        Some(FaultKind::Reset) => return reset(&client),
        Some(FaultKind::ResetAfterForward) => {
            let mut response = forward(shared, sockets, &request)?;
            read_response_head(&mut response)?;
            io::copy(&mut response, &mut io::sink())?;
            return reset(&client);
        }
        Some(FaultKind::Delay(delay)) => {
            let mut response = forward(shared, sockets, &request)?;
            // Wait for the server's answer first, so that the delay is added to its time.
            response.fill_buf()?;
            if !sleep_unless_stopping(shared, delay) {
                return reset(&client);
            }
            pass_response(&mut response, &mut client)?;
        }
    }
    close(&client)
}

/// Ends a served connection in order: the client reads the response up to a clean end of file.
fn close(client: &TcpStream) -> Result<(), Failure> {
    client.shutdown(Shutdown::Write)?;
    Ok(())
}

/// Drops a client's connection without an answer.
fn reset(client: &TcpStream) -> Result<(), Failure> {
    // std offers no SO_LINGER 0 (an RST) without unsafe code; an orderly close before any
    // response byte fails the client's request just the same.
    client.shutdown(Shutdown::Both)?;
    Ok(())
}

/// Sleeps for `delay`, or less if the proxy is being dropped; returns whether it slept in full.
fn sleep_unless_stopping(shared: &Shared, delay: Duration) -> bool {
    let end = Instant::now().checked_add(delay);
    loop {
        if shared.stopping() {
            return false;
        }
        let left = match end {
            Some(end) => end.saturating_duration_since(Instant::now()),
            None => SLEEP_SLICE,
        };
        if left.is_zero() {
            return true;
        }
        thread::sleep(left.min(SLEEP_SLICE));
    }
}

/// Reads the client's request: head and body. `None` when the client closed its connection
/// without sending anything.
fn read_request(
    reader: &mut impl BufRead,
    client: &mut TcpStream,
) -> Result<Option<Request>, Failure> {
    let Some(lines) = read_head(reader)? else {
        return Ok(None);
    };
    let (request_line, header_lines) = lines
        .split_first()
        .ok_or(Failure::Reject(400, "Bad Request"))?;
    let request_line =
        std::str::from_utf8(request_line).map_err(|_| Failure::Reject(400, "Bad Request"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Failure::Reject(400, "Bad Request"));
    };
    if method.is_empty() || target.is_empty() || !version.starts_with("HTTP/1.") {
        return Err(Failure::Reject(400, "Bad Request"));
    }

    let headers = header_lines
        .iter()
        .map(|line| Header::parse(line))
        .collect::<Result<Vec<_>, _>>()?;
    let chunked = match headers.iter().rev().find(|h| h.is("transfer-encoding")) {
        None => false,
        Some(h) => {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            if !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(Failure::Reject(501, "Not Implemented"));
            }
            true
        }
    };
    let mut length = None;
    for h in headers.iter().filter(|h| h.is("content-length")) {
        let parsed = std::str::from_utf8(h.value)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(Failure::Reject(400, "Bad Request"))?;
        if length.is_some_and(|l| l != parsed) {
            return Err(Failure::Reject(400, "Bad Request"));
        }
        length = Some(parsed);
    }

    let expects_continue = headers
        .iter()
        .any(|h| h.is("expect") && h.value.eq_ignore_ascii_case(b"100-continue"));
    if expects_continue && (chunked || length.is_some_and(|l| l > 0)) {
        if length.is_some_and(|l| l > MAX_BODY) && !chunked {
            return Err(Failure::Reject(413, "Content Too Large"));
        }
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body = if chunked {
        read_chunked(reader)?
    } else {
        let length = length.unwrap_or(0);
        if length > MAX_BODY {
            return Err(Failure::Reject(413, "Content Too Large"));
        }
        let mut body = vec![
            0;
            usize::try_from(length)
                .map_err(|_| Failure::Reject(413, "Content Too Large"))?
        ];
        reader.read_exact(&mut body)?;
        body
    };

    let mut head = Vec::with_capacity(MAX_HEAD.min(4096));
    head.extend_from_slice(request_line.as_bytes());
    head.extend_from_slice(b"\r\n");
    for h in &headers {
        if h.is("connection") || (chunked && (h.is("transfer-encoding") || h.is("content-length")))
        {
            continue;
        }
        head.extend_from_slice(h.line);
        head.extend_from_slice(b"\r\n");
    }
    if chunked {
        head.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Some(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        head,
        body,
    }))
}

/// One header line of a head.
#[derive(Debug)]
struct Header<'a> {
    /// The line as received, without its line end.
    line: &'a [u8],
    /// The field name as received.
    name: &'a [u8],
    /// The field value without surrounding whitespace.
    value: &'a [u8],
}

impl<'a> Header<'a> {
    /// Splits a header line at its colon.
    fn parse(line: &'a [u8]) -> Result<Self, Failure> {
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Failure::Reject(400, "Bad Request"))?;
        let (name, rest) = line.split_at(colon);
        let value = rest.get(1..).unwrap_or_default().trim_ascii();
        Ok(Self { line, name, value })
    }

    /// Whether the field has this name (given in lower case).
    fn is(&self, lower_name: &str) -> bool {
        self.name
            .trim_ascii()
            .eq_ignore_ascii_case(lower_name.as_bytes())
    }
}

/// Reads a head: the start line and header lines, without their line ends, up to the blank line
/// that ends it (blank lines before the start line are skipped). `None` at a clean end of file
/// before any byte.
fn read_head(reader: &mut impl BufRead) -> Result<Option<Vec<Vec<u8>>>, Failure> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let Some(line) = read_line(reader, MAX_HEAD.saturating_sub(total))? else {
            if total == 0 {
                return Ok(None);
            }
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        };
        total = total.saturating_add(line.len()).saturating_add(2);
        if line.is_empty() {
            if lines.is_empty() {
                continue;
            }
            return Ok(Some(lines));
        }
        lines.push(line);
    }
}

/// Reads one line of at most `max` bytes (with its line end), and returns it without the line
/// end (LF or CRLF). `None` at a clean end of file.
fn read_line(reader: &mut impl BufRead, max: usize) -> Result<Option<Vec<u8>>, Failure> {
    let mut line = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX);
    let n = reader.by_ref().take(limit).read_until(b'\n', &mut line)?;
    if n == 0 {
        return if max == 0 {
            Err(Failure::Reject(431, "Request Header Fields Too Large"))
        } else {
            Ok(None)
        };
    }
    if line.pop() != Some(b'\n') {
        if n >= max {
            return Err(Failure::Reject(431, "Request Header Fields Too Large"));
        }
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

/// Reads a chunked body, and returns it de-chunked. Trailer fields are read and dropped.
fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>, Failure> {
    let eof = || Failure::Io;
    let bad = || Failure::Reject(400, "Bad Request");
    let too_large = || Failure::Reject(413, "Content Too Large");
    let mut body = Vec::new();
    loop {
        let line = read_line(reader, MAX_CHUNK_LINE)?.ok_or_else(eof)?;
        let size = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let size = std::str::from_utf8(size)
            .ok()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or_else(bad)?;
        if size == 0 {
            break;
        }
        let start = body.len();
        let end = u64::try_from(start)
            .ok()
            .and_then(|s| s.checked_add(size))
            .filter(|&e| e <= MAX_BODY);
        let end = end
            .and_then(|e| usize::try_from(e).ok())
            .ok_or_else(too_large)?;
        body.resize(end, 0);
        reader.read_exact(body.get_mut(start..).unwrap_or_default())?;
        if read_line(reader, 2)?.ok_or_else(eof)?.is_empty() {
            continue;
        }
        return Err(Failure::Reject(400, "Bad Request"));
    }
    let mut trailers = 0;
    loop {
        let line = read_line(reader, MAX_HEAD.saturating_sub(trailers))?.ok_or_else(eof)?;
        if line.is_empty() {
            return Ok(body);
        }
        trailers = trailers.saturating_add(line.len()).saturating_add(2);
    }
}

/// Sends a request to the upstream server on a new connection, and returns that connection for
/// the response.
fn forward(
    shared: &Shared,
    sockets: &Mutex<Vec<TcpStream>>,
    request: &Request,
) -> Result<BufReader<TcpStream>, Failure> {
    let upstream = TcpStream::connect_timeout(&shared.upstream, UPSTREAM_CONNECT_TIMEOUT)?;
    upstream.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
    upstream.set_write_timeout(Some(UPSTREAM_TIMEOUT))?;
    upstream.set_nodelay(true)?;
    lock(sockets).push(upstream.try_clone()?);
    // Checked after registering: a drop either sees this socket to shut it down, or has set the
    // flag before.
    if shared.stopping() {
        return Err(io::Error::other("the proxy is stopping").into());
    }
    let mut writer = &upstream;
    writer.write_all(&request.head)?;
    writer.write_all(&request.body)?;
    writer.flush()?;
    Ok(BufReader::new(upstream))
}

/// Reads the final response head from the upstream server, skipping interim (1xx) responses
/// such as `100 Continue`.
fn read_response_head(response: &mut BufReader<TcpStream>) -> Result<Vec<Vec<u8>>, Failure> {
    loop {
        let lines =
            read_head(response)?.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let status = lines
            .first()
            .and_then(|line| std::str::from_utf8(line).ok())
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|status| status.parse::<u16>().ok())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "malformed upstream status line")
            })?;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        return Ok(lines);
    }
}

/// Passes the upstream server's response to the client, with `Connection: close`, and its body
/// verbatim up to the server's end of file.
fn pass_response(
    response: &mut BufReader<TcpStream>,
    client: &mut TcpStream,
) -> Result<(), Failure> {
    let lines = read_response_head(response)?;
    let mut head = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            let header = Header::parse(line).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "malformed upstream header")
            })?;
            if header.is("connection") || header.is("keep-alive") {
                continue;
            }
        }
        head.extend_from_slice(line);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    client.write_all(&head)?;
    io::copy(response, client)?;
    client.flush()?;
    Ok(())
}

/// Answers with an S3-style error, as a struggling server would; `number` tells injections apart
/// in the request id.
fn write_s3_error(
    client: &mut TcpStream,
    request: &Request,
    status: u16,
    number: u64,
) -> Result<(), Failure> {
    let (reason, code, message) = if status == 503 {
        ("Slow Down", "SlowDown", "Please reduce your request rate.")
    } else {
        (
            "Internal Server Error",
            "InternalError",
            "We encountered an internal error. Please try again.",
        )
    };
    let id = format!("vmstash-fault-proxy-{number}");
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message} \
         (injected by the fault proxy)</Message><RequestId>{id}</RequestId></Error>"
    );
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         x-amz-request-id: {id}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes())?;
    if !request.method.eq_ignore_ascii_case("HEAD") {
        client.write_all(body.as_bytes())?;
    }
    client.flush()?;
    Ok(())
}

/// Answers a request the proxy cannot forward.
fn write_rejection(client: &mut TcpStream, status: u16, reason: &str) -> Result<(), Failure> {
    let body = format!("fault proxy: {reason}\n");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(response.as_bytes())?;
    client.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request as the test upstream server received it.
    #[derive(Clone, Debug)]
    struct Seen {
        request_line: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// A tiny upstream server: records each request and answers
    /// `200 OK` with body `upstream saw <request line> with <n> bytes`, on a kept-alive-looking
    /// response (the proxy must rewrite its Connection header).
    fn upstream() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("test I/O");
        let addr = listener.local_addr().expect("test I/O");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("test I/O"));
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                    continue;
                }
                let mut headers = Vec::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).expect("test I/O");
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    let (n, v) = line.split_once(':').expect("test I/O");
                    headers.push((n.to_owned(), v.trim().to_owned()));
                }
                let length = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse::<usize>().expect("test I/O"));
                let mut body = vec![0; length];
                reader.read_exact(&mut body).expect("test I/O");
                let request_line = request_line.trim_end().to_owned();
                let answer = format!("upstream saw {request_line} with {length} bytes");
                log.lock().expect("lock").push(Seen {
                    request_line,
                    headers,
                    body,
                });
                let mut stream = stream;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Upstream: yes\r\nContent-Length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = stream.write_all(response.as_bytes());
            }
        });
        (addr, seen)
    }

    /// Sends raw bytes to the proxy and reads until it closes: the response, or an error.
    fn exchange(proxy: &FaultProxy, request: &[u8]) -> io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(proxy.addr())?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.write_all(request)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        Ok(response)
    }

    fn get(proxy: &FaultProxy, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nHost: s3.example:9000\r\n\r\n");
        String::from_utf8(exchange(proxy, request.as_bytes()).expect("UTF-8")).expect("test I/O")
    }

    fn status(response: &str) -> &str {
        response.split(' ').nth(1).unwrap_or("none")
    }

    #[test]
    fn clean_forward_passes_status_body_and_headers() {
        let (server, seen) = upstream();
        let proxy = FaultProxy::start(server, Faults::default()).expect("test I/O");
        assert_eq!(
            proxy.endpoint(),
            format!("http://127.0.0.1:{}", proxy.addr().port())
        );
        let request = b"PUT /bucket/key?x=1 HTTP/1.1\r\nHost: s3.example:9000\r\nConnection: keep-alive\r\n\
                        x-amz-content-sha256: UNSIGNED-PAYLOAD\r\nAuthorization:  AWS4-HMAC-SHA256 sig\r\n\
                        Content-Length: 5\r\n\r\nhello";
        let response =
            String::from_utf8(exchange(&proxy, request).expect("UTF-8")).expect("test I/O");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("\r\nX-Upstream: yes\r\n"), "{response}");
        assert!(response.contains("\r\nConnection: close\r\n"), "{response}");
        assert!(!response.contains("keep-alive"), "{response}");
        assert!(!response.contains("Keep-Alive"), "{response}");
        assert!(
            response.ends_with("\r\n\r\nupstream saw PUT /bucket/key?x=1 HTTP/1.1 with 5 bytes"),
            "{response}"
        );

        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 1);
        let s = &seen[0];
        assert_eq!(s.request_line, "PUT /bucket/key?x=1 HTTP/1.1");
        assert_eq!(s.body, b"hello");
        assert_eq!(s.header("host"), Some("s3.example:9000"));
        assert_eq!(s.header("connection"), Some("close"));
        assert_eq!(s.header("x-amz-content-sha256"), Some("UNSIGNED-PAYLOAD"));
        assert_eq!(s.header("authorization"), Some("AWS4-HMAC-SHA256 sig"));
        assert_eq!(
            s.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
                .count(),
            1
        );
        assert_eq!(proxy.requests(), 1);
        assert_eq!(proxy.injected(), 0);
    }

    #[test]
    fn header_lines_other_than_connection_are_forwarded_byte_for_byte() {
        let (server, seen) = upstream();
        let proxy = FaultProxy::start(server, Faults::default()).expect("test I/O");
        let request =
            b"GET / HTTP/1.1\r\nhOsT:s3.example\r\nX-Amz-Date:   20260101T000000Z  \r\n\r\n";
        let response =
            String::from_utf8(exchange(&proxy, request).expect("UTF-8")).expect("test I/O");
        assert_eq!(status(&response), "200");
        let seen = seen.lock().expect("lock");
        assert_eq!(
            seen[0].headers[0],
            ("hOsT".to_owned(), "s3.example".to_owned())
        );
        assert_eq!(seen[0].headers[1].0, "X-Amz-Date");
    }

    #[test]
    fn every_second_request_gets_503() {
        let (server, seen) = upstream();
        let faults = Faults {
            every: 2,
            status_503: true,
            ..Faults::default()
        };
        let proxy = FaultProxy::start(server, faults).expect("start");
        let mut statuses = Vec::new();
        for i in 0..6 {
            let response = get(&proxy, &format!("/bucket/{i}"));
            if status(&response) == "503" {
                assert!(response.contains("<Code>SlowDown</Code>"), "{response}");
                assert!(response.contains("\r\nConnection: close\r\n"), "{response}");
            }
            statuses.push(status(&response).to_owned());
        }
        assert_eq!(statuses, ["200", "503", "200", "503", "200", "503"]);
        assert_eq!(seen.lock().expect("lock").len(), 3);
        assert_eq!(proxy.requests(), 6);
        assert_eq!(proxy.injected(), 3);
        let injections = proxy.injections();
        assert_eq!(injections.len(), 3);
        assert_eq!(injections[0].request, 2);
        assert_eq!(injections[0].method, "GET");
        assert_eq!(injections[0].target, "/bucket/1");
        assert_eq!(injections[0].kind, FaultKind::Status503);
    }

    #[test]
    fn kinds_take_turns_and_only_methods_restricts() {
        let (server, seen) = upstream();
        let faults = Faults {
            every: 1,
            status_500: true,
            status_503: true,
            only_methods: Some(vec!["put".to_owned()]),
            ..Faults::default()
        };
        let proxy = FaultProxy::start(server, faults).expect("start");
        let put = b"PUT /b/k HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx";
        let mut statuses = Vec::new();
        for _ in 0..2 {
            statuses.push(status(&get(&proxy, "/b/k")).to_owned());
            let response =
                String::from_utf8(exchange(&proxy, put).expect("UTF-8")).expect("test I/O");
            statuses.push(status(&response).to_owned());
        }
        assert_eq!(statuses, ["200", "500", "200", "503"]);
        assert_eq!(seen.lock().expect("lock").len(), 2);
        assert_eq!(proxy.injected(), 2);
    }

    #[test]
    fn set_faults_switches_while_running() {
        let (server, _seen) = upstream();
        let proxy = FaultProxy::start(server, Faults::default()).expect("test I/O");
        assert_eq!(status(&get(&proxy, "/")), "200");
        proxy.set_faults(Faults {
            every: 1,
            status_500: true,
            ..Faults::default()
        });
        let response = get(&proxy, "/");
        assert_eq!(status(&response), "500");
        assert!(
            response.contains("<Code>InternalError</Code>"),
            "{response}"
        );
        proxy.set_faults(Faults::default());
        assert_eq!(status(&get(&proxy, "/")), "200");
        assert_eq!(proxy.requests(), 3);
        assert_eq!(proxy.injected(), 1);
    }

    #[test]
    fn reset_closes_without_response_or_forwarding() {
        let (server, seen) = upstream();
        let proxy = FaultProxy::start(
            server,
            Faults {
                every: 1,
                reset: true,
                ..Faults::default()
            },
        )
        .expect("test I/O");
        let request = b"PUT /b/k HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
        // The client sees an error, or the end of the stream before any byte of a response.
        if let Ok(response) = exchange(&proxy, request) {
            assert!(
                response.is_empty(),
                "{}",
                String::from_utf8_lossy(&response)
            );
        }
        assert!(seen.lock().expect("lock").is_empty());
        assert_eq!(proxy.injected(), 1);
    }

    #[test]
    fn reset_after_forward_lets_the_server_perform_the_request() {
        let (server, seen) = upstream();
        let faults = Faults {
            every: 1,
            reset_after_forward: true,
            ..Faults::default()
        };
        let proxy = FaultProxy::start(server, faults).expect("start");
        let request = b"PUT /b/k HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
        // The client sees an error, or the end of the stream before any byte of a response.
        if let Ok(response) = exchange(&proxy, request) {
            assert!(
                response.is_empty(),
                "{}",
                String::from_utf8_lossy(&response)
            );
        }
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].request_line, "PUT /b/k HTTP/1.1");
        assert_eq!(seen[0].body, b"abc");
        assert_eq!(proxy.injections()[0].kind, FaultKind::ResetAfterForward);
    }

    #[test]
    fn chunked_bodies_are_forwarded_with_content_length() {
        let (server, seen) = upstream();
        let proxy = FaultProxy::start(server, Faults::default()).expect("test I/O");
        let request = b"PUT /b/k HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX-Before: 1\r\n\r\n\
                        5\r\nhello\r\n6;name=value\r\n world\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n";
        let response =
            String::from_utf8(exchange(&proxy, request).expect("UTF-8")).expect("test I/O");
        assert!(response.ends_with("with 21 bytes"), "{response}");
        let seen = seen.lock().expect("lock");
        assert_eq!(seen[0].body, b"hello world0123456789");
        assert_eq!(seen[0].header("content-length"), Some("21"));
        assert_eq!(seen[0].header("transfer-encoding"), None);
        assert_eq!(seen[0].header("x-before"), Some("1"));
        assert_eq!(seen[0].header("x-trailer"), None);
    }

    #[test]
    fn expect_continue_gets_an_interim_answer() {
        let (server, seen) = upstream();
        let proxy = FaultProxy::start(server, Faults::default()).expect("test I/O");
        let mut stream = TcpStream::connect(proxy.addr()).expect("test I/O");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("test I/O");
        stream
            .write_all(b"PUT /b/k HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            .expect("test I/O");
        let mut interim = [0; 25];
        stream.read_exact(&mut interim).expect("test I/O");
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        stream.write_all(b"ok").expect("test I/O");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("test I/O");
        assert!(response.ends_with("with 2 bytes"), "{response}");
        assert_eq!(seen.lock().expect("lock")[0].body, b"ok");
    }

    #[test]
    fn delay_holds_the_response_back() {
        let (server, seen) = upstream();
        let delay = Duration::from_millis(300);
        let proxy = FaultProxy::start(
            server,
            Faults {
                every: 1,
                delay: Some(delay),
                ..Faults::default()
            },
        )
        .expect("test I/O");
        let start = Instant::now();
        assert_eq!(status(&get(&proxy, "/")), "200");
        assert!(start.elapsed() >= delay);
        assert_eq!(seen.lock().expect("lock").len(), 1);
        assert_eq!(proxy.injected(), 1);
    }

    #[test]
    fn malformed_and_oversized_requests_are_rejected() {
        let (server, seen) = upstream();
        let proxy = FaultProxy::start(server, Faults::default()).expect("test I/O");
        let response = String::from_utf8(exchange(&proxy, b"nonsense\r\n\r\n").expect("UTF-8"))
            .expect("test I/O");
        assert_eq!(status(&response), "400");
        let mut huge = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        huge.extend_from_slice(b"\r\n\r\n");
        // The proxy may close with part of the request unread, which can reset the connection.
        if let Ok(response) = exchange(&proxy, &huge) {
            if !response.is_empty() {
                assert_eq!(status(&String::from_utf8(response).expect("UTF-8")), "431");
            }
        }
        assert!(seen.lock().expect("lock").is_empty());
    }

    #[test]
    fn drop_ends_idle_and_delayed_connections() {
        let (server, _seen) = upstream();
        let faults = Faults {
            every: 1,
            delay: Some(Duration::from_secs(3600)),
            ..Faults::default()
        };
        let proxy = FaultProxy::start(server, faults).expect("start");
        let _idle = TcpStream::connect(proxy.addr()).expect("test I/O");
        let mut delayed = TcpStream::connect(proxy.addr()).expect("test I/O");
        delayed
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .expect("test I/O");
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.injected() == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let start = Instant::now();
        drop(proxy);
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
