//! Admission of connections: at most N open at once, and each must send a request's headers
//! within a time limit. The request limits (`limits.rs`) only count requests that have reached
//! a route, so without these a client could open connections and send nothing, or a byte at a
//! time, and hold the process's file descriptors and memory (health checks included).
//!
//! hyper's header read timeout covers HTTP/1 once the connection is known to be HTTP/1. Before
//! that, the connection builder reads bytes to tell HTTP/1 from HTTP/2 with no time limit, so
//! [`Admitted`] bounds that stage too, and refuses HTTP/2 (DSDL and REST clients speak
//! HTTP/1.1; TLS offers no HTTP/2).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
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
}

impl<A> Admission<A> {
    pub fn new(inner: A, limit: usize, first_request_within: Duration) -> Self {
        Self {
            inner,
            open: Arc::new(Semaphore::new(limit)),
            limit,
            first_request_within,
            write_timeout: Duration::from_secs(DEFAULT_WRITE_TIMEOUT_SECS),
        }
    }

    /// Closes a connection whose client takes no byte of its answer for `timeout`.
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }
}

impl<I, S, A> axum_server::accept::Accept<I, S> for Admission<A>
where
    A: axum_server::accept::Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Admitted<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let Ok(permit) = self.open.clone().try_acquire_owned() else {
            warn_at_most_every_minute(self.limit);
            return Box::pin(std::future::ready(Err(io::Error::other(
                "too many open connections",
            ))));
        };
        let accepted = self.inner.accept(stream, service);
        let within = self.first_request_within;
        let write_timeout = self.write_timeout;
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            let mut admitted = Admitted::new(stream, permit, within);
            admitted.write_timeout = write_timeout;
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
