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

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// What a [`Conn`] shares with its stream.
#[derive(Debug, Default)]
struct Switch {
    closed: AtomicBool,
    /// The task waiting to read, woken on close.
    reader: AtomicWaker,
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
    }

    /// Whether [`Conn::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }
}

/// An accepted connection's stream.
#[derive(Debug)]
pub struct Stream {
    inner: TcpStream,
    conn: Conn,
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
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.conn.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.conn.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TCP listener whose connections carry a [`Conn`].
#[derive(Debug)]
pub struct Listener(TcpListener);

impl Listener {
    /// Wraps a bound listener.
    pub fn new(listener: TcpListener) -> Self {
        Self(listener)
    }
}

impl axum::serve::Listener for Listener {
    type Io = Stream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (inner, addr) = axum::serve::Listener::accept(&mut self.0).await;
        (Stream { inner, conn: Conn::default() }, addr)
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
        Ok((Stream { inner, conn: Conn::default() }, client))
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
}
