//! The Redis pub/sub [`Driver`]: every node publishes the events it commits,
//! whole, on one channel (`jobstream:events`).
//!
//! A message is JSON: `{"n": node, "t": µs since the epoch, "e": [event…],
//! "o": [commit order or null…]}` (`o` may be absent: the events are then
//! placed through the database).

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use jobstream_job_events::Committed;
use jobstream_protocol::Event;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{now_us, Driver, DriverError, Envelope, Message};

/// The Redis channel all nodes share.
const CHANNEL: &str = "jobstream:events";

#[derive(Serialize)]
struct Outgoing<'a> {
    n: &'a str,
    t: u64,
    e: Vec<&'a RawValue>,
    o: Vec<Option<i64>>,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    n: String,
    t: u64,
    #[serde(borrow)]
    e: Vec<&'a RawValue>,
    #[serde(default)]
    o: Vec<Option<i64>>,
}

/// Redis pub/sub (`JOBSTREAM_REDIS_URL`).
pub struct RedisDriver {
    client: redis::Client,
    /// The publishing connection, made on first use and kept (it reconnects by itself).
    connection: tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>,
}

impl std::fmt::Debug for RedisDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDriver").finish_non_exhaustive()
    }
}

impl RedisDriver {
    /// A driver for `url` (`redis://…`); nothing is connected yet.
    ///
    /// # Errors
    /// The URL is not a Redis URL.
    pub fn new(url: &str) -> Result<Self, DriverError> {
        let client = redis::Client::open(url).map_err(DriverError::new)?;
        Ok(Self { client, connection: tokio::sync::Mutex::default() })
    }
}

/// Parses one bus message; `None` (logged) if it is malformed.
fn parse(payload: &str) -> Option<Envelope> {
    let Ok(message) = serde_json::from_str::<Incoming<'_>>(payload) else {
        tracing::warn!("ignoring a malformed bus message");
        return None;
    };
    let orders = message.o;
    let events = message
        .e
        .into_iter()
        .enumerate()
        .filter_map(|(i, raw)| {
            let event: Event = serde_json::from_str(raw.get()).ok()?;
            let order = orders.get(i).copied().flatten();
            Some(Arc::new(Committed { event, json: raw.to_owned(), order, encoded: Default::default() }))
        })
        .collect();
    Some(Envelope { node: message.n, sent_at_us: message.t, message: Message::Events(events) })
}

#[async_trait]
impl Driver for RedisDriver {
    async fn publish(&self, node: &str, events: &[Arc<Committed>]) -> Result<(), DriverError> {
        let message = Outgoing {
            n: node,
            t: now_us(),
            e: events.iter().map(|c| &*c.json).collect(),
            o: events.iter().map(|c| c.order).collect(),
        };
        let payload = serde_json::to_string(&message).map_err(DriverError::new)?;
        let mut connection = self.connection.lock().await;
        if connection.is_none() {
            *connection = Some(self.client.get_connection_manager().await.map_err(DriverError::new)?);
        }
        let Some(conn) = connection.as_mut() else { return Ok(()) };
        conn.publish::<_, _, ()>(CHANNEL, payload).await.map_err(DriverError::new)
    }

    async fn subscribe(&self) -> Result<BoxStream<'static, Envelope>, DriverError> {
        let mut pubsub = self.client.get_async_pubsub().await.map_err(DriverError::new)?;
        pubsub.subscribe(CHANNEL).await.map_err(DriverError::new)?;
        let stream = pubsub.into_on_message().filter_map(|message| async move {
            let payload = message.get_payload::<String>().ok()?;
            parse(&payload)
        });
        Ok(stream.boxed())
    }
}
