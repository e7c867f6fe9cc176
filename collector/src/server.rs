//! The HTTP server under every listener of the collector (standalone's ingest and `/metrics`,
//! serve's `/metrics`): hyper, with the bounds a server facing the internet needs.
//!
//! Why not `axum::serve`: it runs hyper without a timer, so no timeout ever fires, accepts every
//! connection, keeps hyper's default buffers (about 400 KB per connection) and speaks h2c to
//! whoever asks. Here each connection is watched by its own task:
//!
//! - **Header timeout** (`--header-timeout`, 10 s): a new connection, or a kept-alive one whose
//!   next request has begun, must deliver the whole request head within it. Idle sockets and
//!   slowloris clients are cut.
//! - **Idle timeout** (`--idle-timeout`, 60 s): a kept-alive connection with no request is closed.
//! - **Body timeout** (`--body-timeout`, 10 s): enforced by the push handler, which answers 408.
//! - **Connection bound** (`--max-connections`): past it, the connection that has waited longest
//!   without a request in progress is closed to admit the new one (nginx's reuse of idle
//!   keep-alive connections); when every connection is busy the new one gets a 503 and is closed.
//!   Each listener has its own bound, so pushes can never starve `/metrics` and `/healthz`.
//! - **Small buffers**: at most [`MAX_HEAD_BYTES`] of request head; more is answered 431.
//! - **HTTP/1.1 only** unless `--http2`, and then with few streams and small windows.
//! - **Shutdown deadline** (`--shutdown-timeout`, 10 s): on shutdown the listener closes, idle
//!   connections close, requests in progress get the deadline to finish, and whatever is left is
//!   dropped.
//!
//! Timing is measured in milliseconds since the server started, kept in atomics that the
//! connection's reads and its requests update; the connection's task re-arms one timer when the
//! deadline they imply moves.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::telemetry::SelfMetrics;

/// Largest request head (request line and headers) in bytes: hyper's read buffer. A larger head
/// is answered 431. 16 KiB holds any browser's request with its cookies; hyper's default
/// (about 400 KB) let 1,000 unfinished heads take half a gigabyte.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Connections `/metrics` accepts at once (its own budget: Prometheus needs one or two).
pub const METRICS_MAX_CONNECTIONS: usize = 64;

/// File descriptors kept back from the connection bound: the store's files, the runtime's,
/// and the `/metrics` listener's budget.
const RESERVED_FDS: u64 = METRICS_MAX_CONNECTIONS as u64 + 64;

/// Upper end of the default connection bound. A connection costs about 20 KB of memory before
/// its first request (hyper's read and write buffers, the task) and about 30 KB with an unfinished
/// head: 2048 of them stay near 60 MB, so 10,000 hostile clients keep the server under 100 MB.
const DEFAULT_MAX_CONNECTIONS: u64 = 2048;

/// HTTP/2 (with `--http2`): concurrent streams per connection.
const H2_MAX_STREAMS: u32 = 16;
/// HTTP/2: flow-control window per stream and per connection, in bytes: what a client can make
/// the server buffer without reading.
const H2_STREAM_WINDOW: u32 = 64 * 1024;
const H2_CONNECTION_WINDOW: u32 = 256 * 1024;

/// Timeouts and bounds of one listener.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpLimits {
    /// Time a connection has to deliver a whole request head, from its first byte (or from
    /// `accept` for a new connection).
    pub header_timeout: Duration,
    /// Time a whole push body has to arrive, once its head is read (enforced by the handler).
    pub body_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Serve HTTP/2 (cleartext, prior knowledge) beside HTTP/1.1.
    pub http2: bool,
    /// Time requests in progress get to finish on shutdown.
    pub shutdown_timeout: Duration,
}

impl HttpLimits {
    /// The defaults, with the connection bound taken from the file descriptor limit.
    pub fn new(fd_limit: Option<u64>) -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: default_max_connections(fd_limit),
            http2: false,
            shutdown_timeout: Duration::from_secs(10),
        }
    }

    /// The same limits for the `/metrics` listener: its own, small connection budget.
    pub fn for_metrics(&self) -> Self {
        HttpLimits {
            max_connections: METRICS_MAX_CONNECTIONS,
            ..self.clone()
        }
    }
}

/// The default connection bound: three quarters of what the file descriptor limit leaves after
/// [`RESERVED_FDS`], at most 2048, at least 16.
pub fn default_max_connections(fd_limit: Option<u64>) -> usize {
    let limit = fd_limit.unwrap_or(1024);
    let usable = limit.saturating_sub(RESERVED_FDS) * 3 / 4;
    usable.clamp(16, DEFAULT_MAX_CONNECTIONS) as usize
}

/// The process's soft limit on open files, if it can be read.
pub fn fd_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// What a listener reports about its connections (pum's own metrics).
#[derive(Clone)]
pub struct ConnectionMetrics {
    open: IntGauge,
    closed: Closed,
}

#[derive(Clone)]
struct Closed {
    normal: IntCounter,
    header_timeout: IntCounter,
    idle_timeout: IntCounter,
    evicted: IntCounter,
    refused: IntCounter,
    shutdown: IntCounter,
}

impl ConnectionMetrics {
    /// The series of `listener` (`ingest` or `metrics`) in `telemetry`.
    pub fn new(telemetry: &SelfMetrics, listener: &str) -> Self {
        let closed = |reason: &str| {
            telemetry
                .connections_closed_total
                .with_label_values(&[listener, reason])
        };
        ConnectionMetrics {
            open: telemetry.connections.with_label_values(&[listener]),
            closed: Closed {
                normal: closed("closed"),
                header_timeout: closed("header_timeout"),
                idle_timeout: closed("idle_timeout"),
                evicted: closed("evicted"),
                refused: closed("refused"),
                shutdown: closed("shutdown"),
            },
        }
    }
}

tokio::task_local! {
    /// The peer address of the connection whose request is being handled. A task-local rather
    /// than axum's `ConnectInfo` request extension, whose insertion allocates a map for every
    /// request.
    static PEER: SocketAddr;
}

/// The peer address of the connection whose request is being handled, when called from a
/// handler that [`serve`] runs.
pub fn peer() -> Option<SocketAddr> {
    PEER.try_with(|p| *p).ok()
}

/// Serves `router` on `listener` until `stop` is cancelled, then shuts down within
/// `limits.shutdown_timeout`. The handlers see the peer's address through [`peer`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    metrics: ConnectionMetrics,
    stop: CancellationToken,
) {
    let server = Arc::new(Server {
        epoch: Instant::now(),
        builder: builder(&limits),
        limits,
        metrics,
        conns: Mutex::new(HashMap::new()),
    });
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = stop.cancelled() => break,
        };
        // Finished connections leave the set as new ones come.
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors (or another transient error): back off instead of
                // spinning, and say so at most once a second.
                if last_accept_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    last_accept_warning = Some(Instant::now());
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    () = stop.cancelled() => break,
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if !server.admit() {
            refuse(&stream);
            server.metrics.closed.refused.inc();
            continue;
        }
        next_id += 1;
        let conn = Arc::new(ConnState::new(server.now_ms()));
        if let Ok(mut conns) = server.conns.lock() {
            conns.insert(next_id, Arc::clone(&conn));
        }
        tasks.spawn(Arc::clone(&server).drive(
            next_id,
            stream,
            peer,
            conn,
            router.clone(),
            stop.clone(),
        ));
    }
    drop(listener);
    let deadline = Instant::now() + server.limits.shutdown_timeout;
    let drained = tokio::time::timeout_at(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            "requests still in progress at the shutdown deadline were dropped"
        );
        server.metrics.closed.shutdown.inc_by(tasks.len() as u64);
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

fn builder(limits: &HttpLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // The connection's own task applies the header timeout (hyper's would also cut idle
        // keep-alive connections at the same mark).
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_send_buf_size(H2_CONNECTION_WINDOW as usize)
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256));
    if limits.http2 { b } else { b.http1_only() }
}

/// The answer to a connection past the bound when none can be closed for it.
fn refuse(stream: &TcpStream) {
    const BODY: &str = r#"{"error":"too_many_connections","message":"the server is at its connection limit; retry later"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    // Best effort: a fresh socket's send buffer takes this at once; the connection closes
    // either way.
    let _ = stream.try_write(answer.as_bytes());
}

struct Server {
    epoch: Instant,
    builder: auto::Builder<TokioExecutor>,
    limits: HttpLimits,
    metrics: ConnectionMetrics,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
}

/// Why a connection's task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Closed,
    HeaderTimeout,
    IdleTimeout,
    Evicted,
}

impl Server {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Makes room for one more connection: true if there is room, or if the connection that
    /// has waited longest without a request in progress was told to close for it.
    fn admit(&self) -> bool {
        let Ok(mut conns) = self.conns.lock() else {
            return false;
        };
        if conns.len() < self.limits.max_connections {
            return true;
        }
        let oldest = conns
            .iter()
            .filter_map(|(id, c)| c.waiting_since().map(|since| (since, *id)))
            .min();
        match oldest.and_then(|(_, id)| conns.remove(&id)) {
            Some(victim) => {
                victim.evict.cancel();
                true
            }
            None => false,
        }
    }

    async fn drive(
        self: Arc<Self>,
        id: u64,
        stream: TcpStream,
        peer: SocketAddr,
        conn: Arc<ConnState>,
        router: Router,
        stop: CancellationToken,
    ) {
        self.metrics.open.inc();
        let io = TokioIo::new(Watched {
            io: stream,
            conn: Arc::clone(&conn),
            epoch: self.epoch,
        });
        let service = Service {
            router,
            conn: Arc::clone(&conn),
            peer,
            epoch: self.epoch,
        };
        let connection = self.builder.serve_connection(io, service);
        let end = self.watch(connection, &conn, &stop).await;
        match end {
            End::Closed => self.metrics.closed.normal.inc(),
            End::HeaderTimeout => self.metrics.closed.header_timeout.inc(),
            End::IdleTimeout => self.metrics.closed.idle_timeout.inc(),
            End::Evicted => self.metrics.closed.evicted.inc(),
        }
        self.metrics.open.dec();
        if let Ok(mut conns) = self.conns.lock() {
            conns.remove(&id);
        }
    }

    /// Polls the connection until it ends, its deadline passes or it is evicted; on `stop` it
    /// is asked to finish gracefully.
    async fn watch(
        &self,
        connection: Connection<'_>,
        conn: &ConnState,
        stop: &CancellationToken,
    ) -> End {
        let mut connection = std::pin::pin!(connection);
        let timer = tokio::time::sleep_until(self.epoch);
        let mut timer = std::pin::pin!(timer);
        let mut armed: Option<u64> = None;
        let evicted = conn.evict.cancelled();
        let mut evicted = std::pin::pin!(evicted);
        let stopping = stop.cancelled();
        let mut stopping = std::pin::pin!(stopping);
        let mut graceful = false;
        poll_fn(|cx| {
            if !graceful && stopping.as_mut().poll(cx).is_ready() {
                graceful = true;
                connection.as_mut().graceful_shutdown();
            }
            if connection.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::Closed);
            }
            if evicted.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::Evicted);
            }
            let Some((deadline, end)) = conn.deadline(&self.limits) else {
                // A request is in progress: its handler bounds it.
                return Poll::Pending;
            };
            if armed != Some(deadline) {
                timer
                    .as_mut()
                    .reset(self.epoch + Duration::from_millis(deadline));
                armed = Some(deadline);
            }
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(end),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// What the watch of one connection needs to know, updated by its reads and its requests.
struct ConnState {
    /// Requests being served.
    in_flight: AtomicU32,
    /// Start of the current wait (for a request, or for the rest of a request head), in
    /// milliseconds since the server started.
    since_ms: AtomicU64,
    /// Bytes of a request head arrived since the connection last fell idle.
    head: AtomicBool,
    /// At least one request was answered (an idle wait then gets the idle timeout instead of the
    /// header timeout).
    served: AtomicBool,
    /// Cancelled to close the connection at once.
    evict: CancellationToken,
}

impl ConnState {
    fn new(now_ms: u64) -> Self {
        ConnState {
            in_flight: AtomicU32::new(0),
            since_ms: AtomicU64::new(now_ms),
            head: AtomicBool::new(false),
            served: AtomicBool::new(false),
            evict: CancellationToken::new(),
        }
    }

    /// Since when the connection has waited without a request in progress; `None` while one is.
    fn waiting_since(&self) -> Option<u64> {
        (self.in_flight.load(Ordering::Acquire) == 0).then(|| self.since_ms.load(Ordering::Acquire))
    }

    /// When the connection must close if nothing changes, and why; `None` while a request is in
    /// progress.
    fn deadline(&self, limits: &HttpLimits) -> Option<(u64, End)> {
        let since = self.waiting_since()?;
        let (limit, end) =
            if self.head.load(Ordering::Acquire) || !self.served.load(Ordering::Acquire) {
                (limits.header_timeout, End::HeaderTimeout)
            } else {
                (limits.idle_timeout, End::IdleTimeout)
            };
        Some((since.saturating_add(limit.as_millis() as u64), end))
    }

    /// Bytes arrived: if the connection was idle, a request head has begun.
    fn read(&self, epoch: Instant) {
        if self.in_flight.load(Ordering::Acquire) == 0 && !self.head.load(Ordering::Acquire) {
            self.since_ms
                .store(epoch.elapsed().as_millis() as u64, Ordering::Release);
            self.head.store(true, Ordering::Release);
        }
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head.store(false, Ordering::Release);
    }

    fn end(&self, epoch: Instant) {
        self.since_ms
            .store(epoch.elapsed().as_millis() as u64, Ordering::Release);
        self.served.store(true, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The socket, telling the watch when bytes arrive.
struct Watched {
    io: TcpStream,
    conn: Arc<ConnState>,
    epoch: Instant,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.read(self.epoch);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The router as a hyper service, counting the connection's requests in progress.
#[derive(Clone)]
struct Service {
    router: Router,
    conn: Arc<ConnState>,
    peer: SocketAddr,
    epoch: Instant,
}

/// Marks the request done when dropped, however its future ends.
struct InProgress {
    conn: Arc<ConnState>,
    epoch: Instant,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.conn.end(self.epoch);
    }
}

/// One connection as hyper serves it.
type Connection<'a> = auto::Connection<'a, TokioIo<Watched>, Service, TokioExecutor>;

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<axum::response::Response, Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for Service {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        self.conn.begin();
        let guard = InProgress {
            conn: Arc::clone(&self.conn),
            epoch: self.epoch,
        };
        let mut router = self.router.clone();
        let answer = PEER.scope(
            self.peer,
            tower_service::Service::call(&mut router, request),
        );
        Box::pin(async move {
            let response = answer.await;
            drop(guard);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_bound_stays_under_the_fd_limit() {
        assert_eq!(default_max_connections(Some(1024)), 672);
        assert_eq!(default_max_connections(Some(1_048_576)), 2048);
        assert_eq!(default_max_connections(Some(100)), 16);
        assert!(default_max_connections(Some(20_000)) as u64 + RESERVED_FDS < 20_000);
    }

    #[test]
    fn deadlines_follow_the_connection_state() {
        let limits = HttpLimits::new(Some(1024));
        let at = |c: &ConnState| c.deadline(&limits);
        let c = ConnState::new(1000);
        // A new connection: the header timeout from accept.
        assert_eq!(at(&c), Some((11_000, End::HeaderTimeout)));
        c.begin();
        assert_eq!(at(&c), None);
        assert_eq!(c.waiting_since(), None);
        c.end(Instant::now());
        // Answered and idle: the idle timeout from the answer.
        c.since_ms.store(5000, Ordering::Release);
        assert_eq!(at(&c), Some((65_000, End::IdleTimeout)));
        // The next head begins: the header timeout from its first byte.
        c.read(Instant::now());
        c.since_ms.store(7000, Ordering::Release);
        assert_eq!(at(&c), Some((17_000, End::HeaderTimeout)));
        // Bytes of a request being served start nothing.
        c.begin();
        c.read(Instant::now());
        assert_eq!(at(&c), None);
    }
}
