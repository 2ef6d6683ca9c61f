//! What one Socket.IO socket may have on its way to the client, in bytes.
//!
//! socketioxide buffers a socket's packets by count (`JOBSTREAM_SOCKET_BUFFER`),
//! whatever their size, so a client that stops reading could make the server
//! hold its buffer full of large packets (acks carrying job snapshots with big
//! metadata). Over WebSocket, a [`Budget`] counts the bytes handed to the
//! socket and the bytes its TCP connection has written: past
//! [`SOCKET_BUFFER_BYTES`] in between, deliveries wait (the delivery worker
//! sees a full outlet) and subscribes wait before reading anything, so what the
//! server holds for the socket stays bounded in bytes. A client that never
//! reads again is closed by the connection's write-stall timeout. Over
//! long-polling, packets wait in engine.io's count-bounded buffer until the
//! client polls, and a client that stops polling is closed by the heartbeat.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use engineioxide::DirectWriter;

use crate::conn::Conn;

/// Bytes a socket may have handed over but not yet written to its connection
/// (one packet may pass it).
pub const SOCKET_BUFFER_BYTES: u64 = 2 * 1024 * 1024;

/// A socket's byte budget (see the module docs).
#[derive(Debug, Default)]
pub struct Budget {
    /// Bytes handed to the socket.
    sent: AtomicU64,
    /// The WebSocket connection, once attached (a socket has at most one).
    websocket: OnceLock<Attached>,
}

/// The connection a budget measures against, with where both counts stood then.
#[derive(Debug)]
struct Attached {
    conn: Conn,
    sent: u64,
    written: u64,
    direct: DirectWriter,
}

impl Budget {
    /// Counts `bytes` handed to the socket.
    pub fn add(&self, bytes: usize) {
        self.sent.fetch_add(bytes as u64, Ordering::AcqRel);
    }

    /// Starts measuring against the socket's WebSocket connection (the first
    /// one attached: engine.io refuses a socket's second WebSocket).
    pub fn attach(&self, conn: Conn) {
        let _ = self.websocket.get_or_init(|| Attached {
            sent: self.sent.load(Ordering::Acquire),
            written: conn.written(),
            direct: conn.direct_writer(),
            conn,
        });
    }

    /// The attached connection, once its WebSocket is up (its writer runs):
    /// an upgrade that never completes leaves the socket on long-polling,
    /// unmeasured.
    fn attached(&self) -> Option<&Attached> {
        self.websocket.get().filter(|a| a.direct.is_ready())
    }

    /// Whether a WebSocket connection is measured (else nothing is).
    pub fn is_measured(&self) -> bool {
        self.attached().is_some()
    }

    /// The WebSocket's direct writer, once it is up.
    pub fn direct(&self) -> Option<&DirectWriter> {
        self.attached().map(|a| &a.direct)
    }

    /// Bytes handed over and not yet written (0 when not measured).
    pub fn outstanding(&self) -> u64 {
        match self.attached() {
            Some(a) => {
                let handed = self.sent.load(Ordering::Acquire).saturating_sub(a.sent);
                handed.saturating_sub(a.conn.written().saturating_sub(a.written))
            }
            None => 0,
        }
    }

    /// Whether the budget is spent: nothing more should be handed over now.
    pub fn is_spent(&self) -> bool {
        self.outstanding() >= SOCKET_BUFFER_BYTES
    }

    /// Resolves at the attached connection's next write that makes progress;
    /// `None` when no connection is attached (long-polling).
    pub fn progress(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let conn = self.attached()?.conn.clone();
        Some(async move { conn.progressed().await })
    }

    /// Waits until the budget has room (or the connection closes).
    pub async fn room(&self) {
        while self.is_spent() {
            let Some(Attached { conn, .. }) = self.attached() else { return };
            if conn.is_closed() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.progressed()).await;
        }
    }
}
