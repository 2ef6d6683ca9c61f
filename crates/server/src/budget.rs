//! What one Socket.IO socket may have on its way to the client, in bytes.
//!
//! socketioxide buffers a socket's packets by count (`JOBSTREAM_SOCKET_BUFFER`),
//! whatever their size, so a client that stops reading could make the server
//! hold its buffer full of large packets (a replay of large step output, acks
//! carrying job snapshots with big metadata). A [`Budget`] counts the bytes
//! handed to the socket and the bytes that left for the client: over
//! WebSocket, what its TCP connection has written; over long-polling, what
//! the socket's polls have taken (each poll's response body, credited by
//! [`crate::expiry::close_on_poll`] as it is answered). Past
//! [`SOCKET_BUFFER_BYTES`] in between, deliveries wait (the delivery worker
//! sees a full outlet) and subscribes wait before reading anything, so what the
//! server holds for the socket stays bounded in bytes. A client that never
//! reads again is closed by the connection's write-stall timeout (WebSocket),
//! or by the heartbeat and the delivery stall timeout (long-polling).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use engineioxide::{DirectHandle, DirectWriter};

use crate::conn::Conn;

/// Bytes a socket may have handed over but not yet written to its connection
/// (one packet may pass it).
pub const SOCKET_BUFFER_BYTES: u64 = 2 * 1024 * 1024;

/// A socket's byte budget (see the module docs).
///
/// In declaration order (`repr(C)`): what every delivery reads comes first,
/// so that it shares the object's first cache lines.
#[derive(Debug, Default)]
#[repr(C)]
pub struct Budget {
    /// Bytes handed to the socket.
    sent: AtomicU64,
    /// The WebSocket connection, once attached (a socket has at most one).
    websocket: OnceLock<Attached>,
    /// Bytes its long-polling responses have taken (before any WebSocket).
    polled: AtomicU64,
    /// The socket is gone: nothing waits for room any more.
    closed: std::sync::atomic::AtomicBool,
    /// Woken when a poll takes bytes, and when the socket is gone.
    polls: tokio::sync::Notify,
}

/// The connection a budget measures against, with where both counts stood then.
#[derive(Debug)]
struct Attached {
    conn: Conn,
    sent: u64,
    written: u64,
    /// The connection's writer, kept here once it runs (see [`Budget::direct`]).
    handle: OnceLock<DirectHandle>,
    direct: DirectWriter,
}

impl Attached {
    /// The connection's writer once it runs, read from the connection's slot
    /// the first time and kept: every delivery asks.
    fn writer(&self) -> Option<&DirectHandle> {
        if let Some(handle) = self.handle.get() {
            return Some(handle);
        }
        let handle = self.direct.handle()?;
        Some(self.handle.get_or_init(|| handle))
    }
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
            handle: OnceLock::new(),
            direct: conn.direct_writer(),
            conn,
        });
    }

    /// Counts `bytes` taken to the client by a long-polling response.
    pub fn polled(&self, bytes: u64) {
        self.polled.fetch_add(bytes, Ordering::AcqRel);
        self.polls.notify_waiters();
    }

    /// The socket is gone: [`Budget::room`] waits no longer.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.polls.notify_waiters();
    }

    /// The attached connection, once its WebSocket is up (its writer runs):
    /// until then (and for good, after an upgrade that never completes) the
    /// socket is measured by its polls.
    fn attached(&self) -> Option<&Attached> {
        self.websocket.get().filter(|a| a.writer().is_some())
    }

    /// The WebSocket's direct writer, once it is up.
    pub fn direct(&self) -> Option<&DirectHandle> {
        self.websocket.get().and_then(Attached::writer)
    }

    /// Bytes handed over and not yet gone to the client (written to the
    /// WebSocket's connection, or taken by a poll).
    pub fn outstanding(&self) -> u64 {
        match self.attached() {
            Some(a) => {
                let handed = self.sent.load(Ordering::Acquire).saturating_sub(a.sent);
                handed.saturating_sub(a.conn.written().saturating_sub(a.written))
            }
            None => self.sent.load(Ordering::Acquire).saturating_sub(self.polled.load(Ordering::Acquire)),
        }
    }

    /// Whether the budget is spent: nothing more should be handed over now.
    pub fn is_spent(&self) -> bool {
        self.outstanding() >= SOCKET_BUFFER_BYTES
    }

    /// Resolves at the next progress: the attached connection's next write
    /// that makes some, or (long-polling) the socket's next poll.
    /// `owner` is what holds the budget (it is kept until then).
    pub async fn progress<O>(owner: Arc<O>)
    where
        O: AsRef<Budget> + Send + Sync + 'static,
    {
        (*owner).as_ref().next_progress().await;
    }

    async fn next_progress(&self) {
        match self.attached() {
            Some(Attached { conn, .. }) => conn.progressed().await,
            None => {
                let polled = self.polls.notified();
                tokio::pin!(polled);
                polled.as_mut().enable();
                if !self.closed.load(Ordering::Acquire) {
                    polled.await;
                }
            }
        }
    }

    /// Waits until the budget has room (or the socket is gone).
    pub async fn room(&self) {
        while self.is_spent() {
            if self.closed.load(Ordering::Acquire) || self.attached().is_some_and(|a| a.conn.is_closed()) {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.next_progress()).await;
        }
    }
}
