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

    /// Starts several messages written in one go (see [`EncodedBatch`]), with
    /// room for `bytes` of messages (their frame headers included).
    pub fn batch(bytes: usize) -> EncodedBatch {
        EncodedBatch { frames: Vec::with_capacity(bytes), count: 0 }
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

/// Engine.io message packets, each in its own frame, one after the other:
/// written as one [`EncodedMessage`], they reach the connection in one write
/// (a socket sent many messages at once, as in a replay, costs one system
/// call per batch instead of one per message) and the client reads them as
/// separate messages, in order.
#[derive(Default)]
pub struct EncodedBatch {
    frames: Vec<u8>,
    count: usize,
}

impl EncodedBatch {
    /// Adds one message: the concatenation of `parts` (so that a caller
    /// assembling a packet from pieces copies them once, here). Its frame
    /// takes `parts`' length + 11 bytes at most.
    pub fn push(&mut self, parts: &[&str]) {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        push_frame_header(&mut self.frames, len + 1);
        self.frames.push(b'4');
        for part in parts {
            self.frames.extend_from_slice(part.as_bytes());
        }
        self.count += 1;
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Messages so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether no message was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The frames, to write as one message.
    pub fn finish(self) -> EncodedMessage {
        EncodedMessage { frame: Bytes::from(self.frames) }
    }
}

impl fmt::Debug for EncodedBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedBatch").field("count", &self.count).field("len", &self.frames.len()).finish()
    }
}

/// `prefix` then `text` as one final, unmasked WebSocket text frame
/// (RFC 6455 §5.2: a server's frames are not masked).
pub(crate) fn text_frame(prefix: &[u8], text: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(prefix.len() + text.len() + 10);
    push_text_frame(&mut frame, prefix, text);
    frame
}

/// Appends `prefix` then `text` to `out` as one frame (see [`text_frame`]).
pub(crate) fn push_text_frame(out: &mut Vec<u8>, prefix: &[u8], text: &[u8]) {
    push_frame_header(out, prefix.len() + text.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(text);
}

/// Appends the header of a final, unmasked text frame of `payload` bytes, in
/// the shortest length form (RFC 6455 §5.2), and reserves room for the payload.
fn push_frame_header(out: &mut Vec<u8>, payload: usize) {
    out.reserve(payload + 10);
    out.push(0x81); // FIN, text
    if payload < 126 {
        out.push(payload as u8);
    } else if let Ok(len) = u16::try_from(payload) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(payload as u64).to_be_bytes());
    }
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

    /// The connection's writer once it has started, to be kept by the caller:
    /// writing through it skips the slot (one memory access less per write,
    /// which counts when one message goes to thousands of sockets).
    pub fn handle(&self) -> Option<DirectHandle> {
        self.0.get().map(|writer| DirectHandle(writer.clone()))
    }

    pub(crate) fn fill(&self, writer: Weak<dyn DirectWrite>) {
        let _ = self.0.set(writer);
    }
}

/// The writer of a filled [`DirectWriter`] ([`DirectWriter::handle`]). It does
/// not keep the connection alive either.
#[derive(Clone)]
pub struct DirectHandle(Weak<dyn DirectWrite>);

impl DirectHandle {
    /// Writes `msg` to the connection now, or refuses without side effect.
    pub fn try_write(&self, msg: &EncodedMessage) -> Result<(), DirectError> {
        match self.0.upgrade() {
            Some(writer) => writer.try_write(msg),
            None => Err(DirectError::Unavailable),
        }
    }
}

impl fmt::Debug for DirectHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectHandle").finish_non_exhaustive()
    }
}

impl fmt::Debug for DirectWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectWriter").field("ready", &self.is_ready()).finish()
    }
}
