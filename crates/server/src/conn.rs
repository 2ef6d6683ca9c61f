//! TCP connections the server can end on its own: the listener gives every
//! accepted connection a [`Conn`] handle, which requests carry as
//! `ConnectInfo<Conn>`. [`Conn::close`] makes the connection's reads end (so
//! hyper, or the WebSocket reader above it, sees the peer gone and drops the
//! connection) and its writes fail (so nothing more reaches the client).
//!
//! It exists for Socket.IO over WebSocket: at a token's expiry the socket must
//! end with a *transport* close, which socket.io-client answers by
//! reconnecting (and calling its `auth` function again for a fresh token),
//! rather than a Socket.IO DISCONNECT, after which it stays disconnected.
//! socketioxide has no public call that closes one socket's transport, and the
//! upgraded WebSocket connection runs inside it; ending the TCP connection
//! under it is what is left. The cost per connection is one small shared
//! allocation and an atomic check per read and write.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use engineioxide::DirectWriter;
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// What a [`Conn`] shares with its stream.
///
/// In declaration order (`repr(C)`): what every write reads and updates
/// comes first, in one cache line.
#[derive(Debug, Default)]
#[repr(C)]
struct Switch {
    /// Bytes written to the connection so far.
    written: std::sync::atomic::AtomicU64,
    closed: AtomicBool,
    watching: AtomicBool,
    /// Woken when a write made progress, if someone is watching.
    progress: tokio::sync::Notify,
    /// The task waiting to read, woken on close.
    reader: AtomicWaker,
    /// Writes pre-encoded Socket.IO messages straight to the connection once
    /// it carries a WebSocket (see `engineioxide::direct`).
    direct: OnceLock<DirectWriter>,
}

/// A handle on one accepted TCP connection. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Conn(Arc<Switch>);

impl Conn {
    /// Ends the connection: a pending or later read sees the end of the
    /// stream, and writes fail. The socket itself closes when its owner drops it.
    pub fn close(&self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.reader.wake();
        self.0.progress.notify_waiters();
    }

    /// Bytes written to the client so far (what left the server, as far as
    /// the kernel took it).
    pub fn written(&self) -> u64 {
        self.0.written.load(Ordering::Acquire)
    }

    /// Resolves at the next write that makes progress (or at once if the
    /// connection is closed).
    pub async fn progressed(&self) {
        let notified = self.0.progress.notified();
        self.0.watching.store(true, Ordering::Release);
        if !self.is_closed() {
            notified.await;
        }
    }

    /// The connection's direct writer: given to engine.io with the WebSocket
    /// request, filled once the WebSocket's writer runs.
    pub fn direct_writer(&self) -> DirectWriter {
        self.0.direct.get_or_init(DirectWriter::default).clone()
    }

    /// Whether [`Conn::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }
}

/// An accepted connection's stream.
///
/// Writes that make no progress for the write-stall timeout fail, and end the
/// connection: a client that stops reading (its TCP window stays full) is
/// closed, whatever it is (a WebSocket, a long-poll, an SSE stream), and
/// everything held for it is freed; it resumes with `since` or
/// `Last-Event-ID` when it comes back. A slow reader that keeps reading is
/// never cut: the timer restarts at each write that makes progress.
///
/// The stall timer is allocated the first time a write has to wait, so an
/// idle connection (or one whose writes the kernel always takes) holds none.
#[derive(Debug)]
pub struct Stream {
    inner: TcpStream,
    conn: Conn,
    /// How long a write may wait without progress.
    write_stall: Duration,
    /// Armed while a write waits; fires at the stall deadline.
    stall: Option<Pin<Box<Sleep>>>,
    /// Whether `stall` is armed for the wait in progress.
    waiting: bool,
}

/// How long a write may wait on a client that does not read, by default.
pub const DEFAULT_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Stream {
    fn new(inner: TcpStream, write_stall: Duration) -> Self {
        // Events are small and wanted now: no Nagle delay behind an
        // unacknowledged earlier write (as Node's HTTP server does by default).
        if let Err(err) = inner.set_nodelay(true) {
            tracing::debug!(error = %err, "TCP_NODELAY could not be set");
        }
        Self { inner, conn: Conn::default(), write_stall, stall: None, waiting: false }
    }

    /// The connection's handle, for its requests' `ConnectInfo<Conn>`.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// Runs the stall timer around one poll of a write, flush or shutdown:
    /// a poll that waits arms it (once per wait, so it measures the time
    /// without progress), a poll that completes disarms it, and a wait past
    /// the deadline fails with `TimedOut`.
    fn timed<T>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.waiting = false;
            return result;
        }
        let deadline = Instant::now() + self.write_stall;
        let stall = match &mut self.stall {
            Some(stall) => {
                if !self.waiting {
                    stall.as_mut().reset(deadline);
                }
                stall
            }
            None => self.stall.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.waiting = true;
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.waiting = false;
                Poll::Ready(Err(io::Error::from(io::ErrorKind::TimedOut)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Counts what a write wrote, and wakes those waiting for progress.
    fn wrote(&self, result: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = &result {
            if *n > 0 {
                self.conn.0.written.fetch_add(*n as u64, Ordering::AcqRel);
                if self.conn.0.watching.swap(false, Ordering::AcqRel) {
                    self.conn.0.progress.notify_waiters();
                }
            }
        }
        self.check(result)
    }

    /// Ends the connection after a write stalled (see [`Stream`]).
    fn check<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(err)) = &result {
            if err.kind() == io::ErrorKind::TimedOut {
                tracing::info!("closing a connection whose client stopped reading");
                self.conn.close();
            }
        }
        result
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "connection closed by the server")
}

impl AsyncRead for Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.conn.is_closed() {
            return Poll::Ready(Ok(()));
        }
        self.conn.0.reader.register(cx.waker());
        // Checked again: a close between the first check and the registration
        // would otherwise go unnoticed until the peer sends something.
        if self.conn.is_closed() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.conn.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        let result = self.timed(cx, result);
        self.wrote(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.conn.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        let result = self.timed(cx, result);
        self.wrote(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.conn.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        let result = self.timed(cx, result);
        self.check(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.timed(cx, result)
    }
}

/// A TCP listener whose connections carry a [`Conn`].
#[derive(Debug)]
pub struct Listener(TcpListener, Duration);

impl Listener {
    /// Wraps a bound listener.
    pub fn new(listener: TcpListener) -> Self {
        Self(listener, DEFAULT_WRITE_STALL_TIMEOUT)
    }

    /// Sets how long a write may wait on a client that does not read (see [`Stream`]).
    pub fn with_write_stall_timeout(mut self, timeout: Duration) -> Self {
        self.1 = timeout;
        self
    }
}

impl axum::serve::Listener for Listener {
    type Io = Stream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (inner, addr) = axum::serve::Listener::accept(&mut self.0).await;
        (Stream::new(inner, self.1), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, Listener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        stream.io().conn.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> io::Result<(Stream, TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (inner, _) = listener.accept().await?;
        Ok((Stream::new(inner, DEFAULT_WRITE_STALL_TIMEOUT), client))
    }

    #[tokio::test]
    async fn close_ends_a_pending_read_and_fails_writes() -> io::Result<()> {
        let (mut server, mut client) = pair().await?;
        client.write_all(b"hello").await?;
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"hello");

        let conn = server.conn.clone();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let n = server.read(&mut buf).await;
            (n.ok(), server)
        });
        tokio::task::yield_now().await;
        conn.close();
        let (n, mut server) = reader.await.map_err(io::Error::other)?;
        assert_eq!(n, Some(0), "a closed connection reads as ended");
        assert!(server.write_all(b"late").await.is_err());

        // Once the server drops it, the client sees the end of the stream.
        drop(server);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await?;
        assert!(rest.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn a_write_to_a_client_that_stopped_reading_fails_after_the_stall_timeout() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (inner, _) = listener.accept().await?;
        let mut server = Stream::new(inner, Duration::from_millis(300));
        let conn = server.conn.clone();
        // The client never reads: the kernel buffers fill, then writes wait.
        let chunk = vec![0u8; 64 * 1024];
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                server.write_all(&chunk).await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), io::Error>(())
        })
        .await;
        let err = outcome.map_err(io::Error::other)?.err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::TimedOut));
        assert!(conn.is_closed(), "the connection is ended");
        assert!(started.elapsed() < Duration::from_secs(15));
        drop(client);
        Ok(())
    }
}
