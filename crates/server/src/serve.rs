//! The accept loop and the HTTP/1 connections, on hyper's server builder
//! (`axum::serve` has no setting for the points below):
//!
//! - **Connection limit.** At most `max_connections` TCP connections are open
//!   at once: HTTP requests, long-polls, SSE streams and WebSockets alike (a
//!   connection's place is held until its socket closes, also after a
//!   WebSocket upgrade). A connection past the limit is accepted and closed at
//!   once, without reading from it, so that clients see a closed connection
//!   right away instead of waiting in the kernel's backlog, and the backlog
//!   does not fill up. Counted in `jobstream_refusals_total{limit="connections"}`.
//! - **Header read timeout.** A client has `header_timeout` to send a
//!   complete request head, counted from the start of the connection or the
//!   end of the previous response; so a kept-alive connection that sends no
//!   next request is closed after the same time. A slow head closes the
//!   connection without an answer; counted in `jobstream_timeouts_total{kind="header"}`.
//! - **Largest request head**, `max_header_bytes`: past it hyper answers 431.
//!
//! Each request carries `ConnectInfo<Conn>` (see [`crate::conn`]); upgrades
//! (WebSocket) work; on shutdown the loop stops accepting, each connection
//! finishes its request in flight, and the loop returns once all have ended.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::Service;

use crate::conn::{Listener, Stream};
use crate::limits::LimitSettings;
use crate::metrics::{Metrics, Refusal, Timeout};

/// The settings of the accept loop and its connections.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Open TCP connections at most (0: no limit).
    pub max_connections: usize,
    /// Time to send a request head.
    pub header_timeout: Duration,
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
}

impl From<&LimitSettings> for Settings {
    fn from(limits: &LimitSettings) -> Self {
        Self {
            max_connections: limits.max_connections,
            header_timeout: limits.header_timeout,
            max_header_bytes: limits.max_header_bytes,
        }
    }
}

/// An accepted connection with its place under the connection limit, given
/// back when the connection is dropped (by hyper, or by the WebSocket it was
/// upgraded to).
struct Admitted {
    stream: Stream,
    _permit: OwnedSemaphorePermit,
    metrics: Metrics,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.metrics.tcp_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Admitted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves `router` on `listener` until `signal` completes, then lets every
/// connection finish its request in flight and returns when all have closed.
pub async fn serve(
    mut listener: Listener,
    router: Router,
    settings: Settings,
    metrics: Metrics,
    signal: impl Future<Output = ()> + Send + 'static,
) {
    let limit = match settings.max_connections {
        0 => Semaphore::MAX_PERMITS,
        n => n.min(Semaphore::MAX_PERMITS),
    };
    let places = Arc::new(Semaphore::new(limit));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_header_size(settings.max_header_bytes.max(crate::limits::MIN_HEADER_BYTES))
        .max_buf_size(read_buffer_limit(settings.max_header_bytes))
        .keep_alive(true);

    // Dropping the receiver tells the loop and every connection to stop.
    let (signal_tx, signal_rx) = watch::channel(());
    tokio::spawn(async move {
        signal.await;
        drop(signal_rx);
    });
    // Each connection holds a receiver: the loop waits until all are gone.
    let (close_tx, close_rx) = watch::channel(());

    loop {
        let (stream, addr) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            () = signal_tx.closed() => break,
        };
        let Ok(permit) = places.clone().try_acquire_owned() else {
            metrics.refused(Refusal::Connections);
            tracing::debug!("connection closed at once: {limit} connections are open, the limit");
            drop(stream);
            continue;
        };
        metrics.tcp_connections.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(%addr, "connection accepted");
        let conn = stream.conn().clone();
        let io = TokioIo::new(Admitted { stream, _permit: permit, metrics: metrics.clone() });
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(conn.clone()));
            // A router is always ready: `call` needs no `poll_ready` first.
            let mut router = router.clone();
            async move { router.call(request).await }
        });
        let connection = http.serve_connection(io, service).with_upgrades();
        let signal_tx = signal_tx.clone();
        let close_rx = close_rx.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let mut stopping = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        match result {
                            Ok(()) => tracing::trace!(%addr, "connection ended"),
                            Err(err) => {
                                if err.is_timeout() {
                                    metrics.timed_out(Timeout::Header);
                                }
                                tracing::trace!(%addr, %err, "connection ended");
                            }
                        }
                        break;
                    }
                    () = signal_tx.closed(), if !stopping => {
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(close_rx);
        });
    }
    drop(close_rx);
    drop(listener);
    close_tx.closed().await;
}

/// hyper's own limit on a connection's read buffer (about 400 KiB): a request
/// head must fit in it whatever `max_header_size` says.
const HYPER_READ_BUFFER: usize = 8192 + 4096 * 100;

/// The connection's read buffer limit: hyper's, or more when the largest
/// request head is set above it, so that `--max-header-bytes` is the limit
/// that applies (a head past the buffer would be refused with 431 too, at a
/// size no setting names).
fn read_buffer_limit(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_add(crate::limits::MIN_HEADER_BYTES).max(HYPER_READ_BUFFER)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::config::Config;
    use crate::testing::TestServer;

    /// The status line's code of a `GET /healthz` with one header of `size` bytes.
    async fn status_with_header(server: &TestServer, size: usize) -> String {
        let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap_or_else(|e| panic!("{e}"));
        let head =
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "x".repeat(size));
        // The server may answer (431) and close before it has read everything.
        let _ = stream.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn a_largest_request_head_set_above_hypers_read_buffer_is_the_limit_that_applies() {
        let mut config = Config::for_tests("sqlite::memory:", "a-test-secret-of-enough-length-000");
        config.limits.max_header_bytes = 2 * 1024 * 1024;
        let server = TestServer::start_with(config).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status_with_header(&server, 1_500_000).await, "HTTP/1.1 200 OK");
        assert_eq!(status_with_header(&server, 2_200_000).await, "HTTP/1.1 431 Request Header Fields Too Large");
    }

    #[test]
    fn the_read_buffer_limit_is_never_below_hypers_default_nor_below_the_largest_head() {
        assert_eq!(super::read_buffer_limit(8192), super::HYPER_READ_BUFFER);
        assert_eq!(super::read_buffer_limit(64 * 1024), super::HYPER_READ_BUFFER);
        assert!(super::read_buffer_limit(4 * 1024 * 1024) > 4 * 1024 * 1024);
        assert!(super::read_buffer_limit(usize::MAX) == usize::MAX);
    }
}
