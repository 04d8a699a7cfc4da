//! Admission of connections: at most N open at once (at the limit a new connection closes the
//! keep-alive connection idle longest), each must send a request's headers within a time
//! limit, and a write that the client leaves unread too long fails. The request limits
//! (`limits.rs`) only count requests that have reached a route, so without these a client
//! could open connections and send nothing, or a byte at a time, and hold the process's file
//! descriptors and memory (health checks included).
//!
//! hyper's header read timeout covers HTTP/1 once the connection is known to be HTTP/1. Before
//! that, the connection builder reads bytes to tell HTTP/1 from HTTP/2 with no time limit, so
//! [`Admitted`] bounds that stage too, and refuses HTTP/2 (DSDL and REST clients speak
//! HTTP/1.1; TLS offers no HTTP/2).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Duration, Sleep};

/// Default for `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default for `--header-read-timeout-secs`: how long a client may take to send a request's
/// headers (hyper's own default, which it applies only when given a timer).
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 30;

/// Default for `--write-timeout-secs`: how long a client may leave its answer unread (no byte
/// of it taken) before the connection is closed.
pub const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 30;

/// `--max-connections`, `--header-read-timeout-secs` and `--write-timeout-secs`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    pub max_open: usize,
    pub header_read_timeout: Duration,
    pub write_timeout: Duration,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            max_open: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            write_timeout: Duration::from_secs(DEFAULT_WRITE_TIMEOUT_SECS),
        }
    }
}

/// hyper applies its header read timeout only with a timer, which axum-server does not give it.
pub fn with_header_timeout(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    timeout: Duration,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout);
}

/// HTTP/2's connection preface: a connection whose bytes so far are a prefix of it may still
/// become HTTP/2, so hyper's HTTP/1 header timeout does not cover it yet.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The open connections by peer address, so that requests (which know their peer) can mark
/// their connection busy, and a new connection at the limit can close an idle one.
#[derive(Clone, Default)]
pub struct Connections {
    open: Arc<std::sync::Mutex<HashMap<SocketAddr, Weak<Connection>>>>,
}

/// What the acceptor and the requests of one connection share.
pub struct Connection {
    /// Requests of this connection between their arrival and the end of sending their answer.
    busy: AtomicUsize,
    /// When it last became idle (or opened), in ms since the process's clock started.
    idle_since_ms: AtomicU64,
    /// Set when a new connection needs the slot: the connection ends at its next read while
    /// no request of it is under way.
    evicted: AtomicBool,
    /// Wakes the connection's task to notice `evicted`.
    waker: std::sync::Mutex<Option<Waker>>,
    /// Bytes of a request came in since it was last idle (its request may not have reached the
    /// routes yet): not idle.
    receiving: AtomicBool,
    /// It has had a request answered: only such keep-alive connections are closed for new
    /// ones (a connection that never sent a request has the header read timeout).
    answered: AtomicBool,
}

impl Connection {
    fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0 && !self.receiving.load(Ordering::Acquire)
    }
}

fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl Connections {
    fn register(&self, peer: SocketAddr) -> Arc<Connection> {
        let connection = Arc::new(Connection {
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(clock_ms()),
            evicted: AtomicBool::new(false),
            waker: std::sync::Mutex::new(None),
            receiving: AtomicBool::new(false),
            answered: AtomicBool::new(false),
        });
        let mut open = self.open.lock().expect("connections lock");
        // Connections of other peers that ended without being removed (none expected).
        open.retain(|_, c| c.strong_count() > 0);
        open.insert(peer, Arc::downgrade(&connection));
        connection
    }

    fn remove(&self, peer: SocketAddr, connection: &Arc<Connection>) {
        let mut open = self.open.lock().expect("connections lock");
        if open
            .get(&peer)
            .is_some_and(|c| std::ptr::eq(c.as_ptr(), Arc::as_ptr(connection)))
        {
            open.remove(&peer);
        }
    }

    /// Marks the connection of `peer` busy until the returned guard is dropped (with the
    /// answer's body, once it has been sent).
    pub fn busy(&self, peer: SocketAddr) -> Option<BusyGuard> {
        let connection = self
            .open
            .lock()
            .expect("connections lock")
            .get(&peer)?
            .upgrade()?;
        connection.busy.fetch_add(1, Ordering::AcqRel);
        Some(BusyGuard(connection))
    }

    /// Asks the connection idle longest to close; false when none is idle.
    fn evict_one_idle(&self) -> bool {
        let open = self.open.lock().expect("connections lock");
        let longest_idle = open
            .values()
            .filter_map(Weak::upgrade)
            .filter(|c| {
                c.answered.load(Ordering::Acquire)
                    && c.is_idle()
                    && !c.evicted.load(Ordering::Acquire)
            })
            .min_by_key(|c| c.idle_since_ms.load(Ordering::Acquire));
        let Some(connection) = longest_idle else {
            return false;
        };
        connection.evicted.store(true, Ordering::Release);
        if let Some(waker) = connection.waker.lock().expect("waker lock").take() {
            waker.wake();
        }
        true
    }
}

/// Keeps a connection marked busy while a request of it is under way.
pub struct BusyGuard(Arc<Connection>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.idle_since_ms.store(clock_ms(), Ordering::Release);
        self.0.answered.store(true, Ordering::Release);
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.receiving.store(false, Ordering::Release);
        }
    }
}

/// Middleware marking each request's connection busy until its answer has been sent.
pub async fn mark_busy(
    axum::extract::State(connections): axum::extract::State<Connections>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let guard = peer.and_then(|peer| connections.busy(peer));
    let response = next.run(request).await;
    match guard {
        Some(guard) => crate::http::limits::holding_until_sent(response, guard),
        None => response,
    }
}

/// An axum-server acceptor in front of `inner` (plain, or the TLS handshake): a connection over
/// the limit is closed at once, before `inner` spends anything on it; an admitted one is
/// [`Admitted`] and counts until it is dropped.
#[derive(Clone)]
pub struct Admission<A> {
    inner: A,
    open: Arc<Semaphore>,
    limit: usize,
    first_request_within: Duration,
    write_timeout: Duration,
    connections: Connections,
}

impl<A> Admission<A> {
    pub fn new(inner: A, limit: usize, first_request_within: Duration) -> Self {
        Self {
            inner,
            open: Arc::new(Semaphore::new(limit)),
            limit,
            first_request_within,
            write_timeout: Duration::from_secs(DEFAULT_WRITE_TIMEOUT_SECS),
            connections: Connections::default(),
        }
    }

    /// Shares `connections` with the requests (see [`mark_busy`]): at the limit, a new
    /// connection then closes the one idle longest instead of being refused.
    pub fn with_connections(mut self, connections: Connections) -> Self {
        self.connections = connections;
        self
    }

    /// Closes a connection whose client takes no byte of its answer for `timeout`.
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }
}

/// How long a new connection at the limit waits for the idle connection it closed to go.
const EVICTION_WAIT: Duration = Duration::from_secs(2);

impl<S, A> axum_server::accept::Accept<tokio::net::TcpStream, S> for Admission<A>
where
    A: axum_server::accept::Accept<tokio::net::TcpStream, S> + Clone + Send + Sync + 'static,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
    S: Send + 'static,
{
    type Stream = Admitted<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let peer = stream.peer_addr().ok();
        let permit = self.open.clone().try_acquire_owned();
        // At the limit, idle keep-alive connections give way to new ones: otherwise clients
        // that hold connections open (asking for health now and then) lock everyone out.
        let evicting = permit.is_err() && self.connections.evict_one_idle();
        if permit.is_err() && !evicting {
            warn_at_most_every_minute(self.limit);
            return Box::pin(std::future::ready(Err(io::Error::other(
                "too many open connections",
            ))));
        }
        let (open, limit, inner) = (self.open.clone(), self.limit, self.inner.clone());
        let (within, write_timeout) = (self.first_request_within, self.write_timeout);
        let connections = self.connections.clone();
        Box::pin(async move {
            let permit = match permit {
                Ok(permit) => permit,
                Err(_) => match tokio::time::timeout(EVICTION_WAIT, open.acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        warn_at_most_every_minute(limit);
                        return Err(io::Error::other("too many open connections"));
                    }
                },
            };
            let (stream, service) = inner.accept(stream, service).await?;
            let mut admitted = Admitted::new(stream, permit, within);
            admitted.write_timeout = write_timeout;
            if let Some(peer) = peer {
                admitted.connection = Some((peer, connections.register(peer), connections));
            }
            Ok((admitted, service))
        })
    }
}

/// Seconds since the epoch of the last warning about refused connections.
static LAST_WARNED: AtomicU64 = AtomicU64::new(0);

/// One line a minute at most: a flood of connections must not also flood the logs.
fn warn_at_most_every_minute(limit: usize) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_WARNED.load(Ordering::Relaxed);
    if now >= last + 60
        && LAST_WARNED
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            limit,
            "connections refused: {limit} are open, the limit (--max-connections); further refusals this minute are not logged"
        );
    }
}

/// An admitted connection. It counts as open until dropped, and must show it speaks HTTP/1
/// before a deadline: until its first bytes differ from HTTP/2's preface (zero bytes included),
/// a read past the deadline fails and the connection is closed. The whole preface is refused.
pub struct Admitted<S> {
    inner: S,
    _open: OwnedSemaphorePermit,
    /// Armed until the connection is known to be HTTP/1.
    deadline: Option<Pin<Box<Sleep>>>,
    /// How many of the first bytes matched the HTTP/2 preface.
    matched: usize,
    /// How long a write may wait for the client to make room.
    write_timeout: Duration,
    /// Armed while a write waits for the client to read.
    write_stalled: Option<Pin<Box<Sleep>>>,
    /// Its entry among the open connections, which requests mark busy and a new connection at
    /// the limit may ask to close.
    connection: Option<(SocketAddr, Arc<Connection>, Connections)>,
}

impl<S> Drop for Admitted<S> {
    fn drop(&mut self) {
        if let Some((peer, connection, connections)) = &self.connection {
            connections.remove(*peer, connection);
        }
    }
}

impl<S> Admitted<S> {
    fn new(inner: S, open: OwnedSemaphorePermit, within: Duration) -> Self {
        Self {
            inner,
            _open: open,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            matched: 0,
            write_timeout: Duration::from_secs(DEFAULT_WRITE_TIMEOUT_SECS),
            write_stalled: None,
            connection: None,
        }
    }

    /// Bounds how long a write may make no progress. A client that never reads its answer
    /// would otherwise keep the connection, the request's in-flight slot and the answer's
    /// memory for as long as it keeps the socket open; past the limit the write fails and the
    /// connection (with the rest of the answer) is dropped.
    fn bounded<T>(
        &mut self,
        cx: &mut Context<'_>,
        progress: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if progress.is_ready() {
            self.write_stalled = None;
            return progress;
        }
        let timeout = self.write_timeout;
        let stalled = self
            .write_stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stalled.as_mut().poll(cx).is_ready() {
            self.write_stalled = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read none of its answer within the write timeout",
            )));
        }
        Poll::Pending
    }

    /// Looks at newly read bytes while the connection may still be HTTP/2.
    fn check(&mut self, bytes: &[u8]) -> io::Result<()> {
        for &b in bytes {
            if b != HTTP2_PREFACE[self.matched] {
                self.deadline = None; // HTTP/1: hyper's header timeout takes over
                return Ok(());
            }
            self.matched += 1;
            if self.matched == HTTP2_PREFACE.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "HTTP/2 is not served; use HTTP/1.1",
                ));
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Admitted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some((_, connection, _)) = &this.connection {
            if connection.evicted.load(Ordering::Acquire) && connection.is_idle() {
                // End of stream between requests: hyper closes the connection cleanly.
                return Poll::Ready(Ok(()));
            }
        }
        let before = buf.filled().len();
        let read = this.poll_read_inner(cx, buf);
        if let Some((_, connection, _)) = &this.connection {
            match &read {
                Poll::Pending => {
                    *connection.waker.lock().expect("waker lock") = Some(cx.waker().clone());
                }
                Poll::Ready(Ok(())) if buf.filled().len() > before => {
                    connection.receiving.store(true, Ordering::Release);
                }
                _ => {}
            }
        }
        read
    }
}

impl<S: AsyncRead + Unpin> Admitted<S> {
    fn poll_read_inner(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self;
        let Some(deadline) = this.deadline.as_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request within the header read timeout",
            )));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            this.check(&buf.filled()[before..])?;
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Admitted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bounded(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bounded(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        self.bounded(cx, flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
