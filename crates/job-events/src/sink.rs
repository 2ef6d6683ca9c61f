//! Where committed events go: the [`EventSink`] trait and the encoded-once event.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use jobstream_protocol::Event;
use serde_json::value::RawValue;

/// A committed event with its JSON encoded once, shared by every subscriber.
#[derive(Debug)]
pub struct Committed {
    /// The event.
    pub event: Event,
    /// `event` as JSON: what Socket.IO payloads, HTTP answers and SSE frames carry.
    pub json: Box<RawValue>,
    /// The commit order of the transaction that wrote it (see
    /// `jobstream_rooms::Horizon`); `None` for events stored before it was kept.
    pub order: Option<i64>,
    /// The event encoded for one transport, made by the first connection that
    /// sends it and shared by the others (the Socket.IO server keeps its
    /// WebSocket message here, so a broadcast encodes it once).
    pub encoded: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl Committed {
    /// Encodes an event written with commit order `order`.
    pub fn new(event: Event, order: Option<i64>) -> Result<Self, serde_json::Error> {
        // `to_raw_value` keeps the encoder's output as it is (`from_string`
        // would parse it again to check what the encoder just wrote).
        let json = serde_json::value::to_raw_value(&event)?;
        Ok(Self { event, json, order, encoded: OnceLock::new() })
    }
}

/// Receives events after their transaction committed, in commit order per call.
///
/// A sink must not block: it is called on the writer's path. Events of one job
/// may reach it out of `seq` order when several writers commit at once; the
/// delivery layer puts them back in order.
pub trait EventSink: Send + Sync + 'static {
    /// Takes the events of one committed transaction.
    fn publish(&self, events: &[Arc<Committed>]);

    /// Writes to these jobs may or may not have committed (the database stopped
    /// answering during the commit). Delivery compares what it has sent with
    /// the database once it answers again. A sink that wraps another passes
    /// this on (there is no default, so that no wrapper drops it).
    fn uncertain(&self, jobs: &[uuid::Uuid]);
}

/// A sink that drops everything (for tools that only write).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl EventSink for NullSink {
    fn publish(&self, _: &[Arc<Committed>]) {}

    fn uncertain(&self, _: &[uuid::Uuid]) {}
}
