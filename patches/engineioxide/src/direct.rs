//! Direct writes of pre-encoded messages to a websocket connection.
//!
//! A server that sends the same message to many sockets (a room broadcast)
//! pays, per socket, for encoding the packet, a push into the socket's
//! channel and a wake-up of the socket's writer task. A [`DirectWriter`] lets
//! it encode the message once ([`EncodedMessage`]) and write it to each
//! socket's websocket from the calling thread, under the lock the writer task
//! also takes, when nothing is waiting in the socket's channel. When anything
//! is (or the connection is busy), the write is refused and the caller falls
//! back to [`Socket::emit`](crate::Socket::emit), which keeps the order of
//! everything sent to the socket.
//!
//! A [`DirectWriter`] is a slot: put one in the extensions of the websocket
//! request (`GET ...?transport=websocket`); the websocket transport fills it
//! once the connection's writer runs; writes are refused once the connection ends.

use std::fmt;
use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;

/// An engine.io message packet (`4` + the message) as a complete server-to-
/// client WebSocket text frame (RFC 6455 §5.2: unmasked, so the same bytes for
/// every connection), encoded once and shared by every socket it is written to
/// (cloning it is a reference count).
#[derive(Clone)]
pub struct EncodedMessage {
    pub(crate) frame: Bytes,
}

impl EncodedMessage {
    /// Encodes `msg` as an engine.io message packet in one final text frame.
    pub fn new(msg: &str) -> Self {
        Self { frame: Bytes::from(text_frame(b"4", msg.as_bytes())) }
    }

    /// The frame's length in bytes (what a direct write hands to the connection).
    pub fn len(&self) -> usize {
        self.frame.len()
    }

    /// Whether the frame is empty (never: it holds at least a header and `4`).
    pub fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }
}

impl fmt::Debug for EncodedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedMessage").field("len", &self.frame.len()).finish()
    }
}

/// `prefix` then `text` as one final, unmasked WebSocket text frame
/// (RFC 6455 §5.2: a server's frames are not masked).
pub(crate) fn text_frame(prefix: &[u8], text: &[u8]) -> Vec<u8> {
    let payload = prefix.len() + text.len();
    let mut frame = Vec::with_capacity(payload + 10);
    frame.push(0x81); // FIN, text
    if payload < 126 {
        frame.push(payload as u8);
    } else if let Ok(len) = u16::try_from(payload) {
        frame.push(126);
        frame.extend_from_slice(&len.to_be_bytes());
    } else {
        frame.push(127);
        frame.extend_from_slice(&(payload as u64).to_be_bytes());
    }
    frame.extend_from_slice(prefix);
    frame.extend_from_slice(text);
    frame
}

/// Why a direct write did not happen; the caller sends through the socket's
/// channel instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectError {
    /// The connection has no direct writer (yet, or any more).
    Unavailable,
    /// Packets are waiting in the socket's channel, or the connection cannot
    /// take a write now: a direct write would overtake them.
    Busy,
}

/// Writes to one websocket connection, implemented by the websocket transport.
pub(crate) trait DirectWrite: Send + Sync {
    fn try_write(&self, msg: &EncodedMessage) -> Result<(), DirectError>;
}

/// A slot for the direct writer of one websocket connection (see the module
/// docs). Cheap to clone; clones share the slot. It does not keep the
/// connection alive: it may be kept by what the connection itself holds.
#[derive(Clone, Default)]
pub struct DirectWriter(Arc<OnceLock<Weak<dyn DirectWrite>>>);

impl DirectWriter {
    /// Writes `msg` to the connection now, or refuses without side effect.
    pub fn try_write(&self, msg: &EncodedMessage) -> Result<(), DirectError> {
        match self.0.get().and_then(Weak::upgrade) {
            Some(writer) => writer.try_write(msg),
            None => Err(DirectError::Unavailable),
        }
    }

    /// Whether the connection's writer has started.
    pub fn is_ready(&self) -> bool {
        self.0.get().is_some()
    }

    pub(crate) fn fill(&self, writer: Weak<dyn DirectWrite>) {
        let _ = self.0.set(writer);
    }
}

impl fmt::Debug for DirectWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectWriter").field("ready", &self.is_ready()).finish()
    }
}
