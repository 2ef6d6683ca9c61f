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
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::conn::Conn;

/// Bytes a socket may have handed over but not yet written to its connection
/// (one packet may pass it).
pub const SOCKET_BUFFER_BYTES: u64 = 2 * 1024 * 1024;

/// A socket's byte budget (see the module docs).
#[derive(Debug, Default)]
pub struct Budget {
    /// Bytes handed to the socket.
    sent: AtomicU64,
    /// The WebSocket connection, with `sent` and its `written` when attached.
    websocket: Mutex<Option<(Conn, u64, u64)>>,
}

impl Budget {
    /// Counts `bytes` handed to the socket.
    pub fn add(&self, bytes: usize) {
        self.sent.fetch_add(bytes as u64, Ordering::AcqRel);
    }

    /// Starts measuring against the socket's WebSocket connection.
    pub fn attach(&self, conn: Conn) {
        let base = (conn.clone(), self.sent.load(Ordering::Acquire), conn.written());
        *self.websocket.lock().unwrap_or_else(PoisonError::into_inner) = Some(base);
    }

    fn connection(&self) -> Option<(Conn, u64, u64)> {
        self.websocket.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether a WebSocket connection is attached (else nothing is measured).
    pub fn is_measured(&self) -> bool {
        self.connection().is_some()
    }

    /// Bytes handed over and not yet written (0 when not measured).
    pub fn outstanding(&self) -> u64 {
        match self.connection() {
            Some((conn, sent, written)) => {
                let handed = self.sent.load(Ordering::Acquire).saturating_sub(sent);
                handed.saturating_sub(conn.written().saturating_sub(written))
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
        let (conn, ..) = self.connection()?;
        Some(async move { conn.progressed().await })
    }

    /// Waits until the budget has room (or the connection closes).
    pub async fn room(&self) {
        while self.is_spent() {
            let Some((conn, ..)) = self.connection() else { return };
            if conn.is_closed() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.progressed()).await;
        }
    }
}
