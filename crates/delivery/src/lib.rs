//! jobstream-delivery: committed events to subscribers, per job in `seq`
//! order, each once, without gaps (CONTRACT §3–§4), on one node and across a
//! cluster.
//!
//! - [`hub`]: the per-node [`Hub`]. Subscribers (a Socket.IO socket, an SSE
//!   stream) reach it through the [`Outlet`] trait, so this crate knows
//!   nothing of Socket.IO or HTTP. The hub is the writer's
//!   [`jobstream_job_events::EventSink`].
//! - [`source`]: the [`EventSource`] trait, all the hub and the bus read from
//!   storage; implemented by [`jobstream_job_events::EventStore`] and, for
//!   unit tests, by [`memory::MemorySource`].
//! - [`bus`]: the cluster bus behind the [`bus::Driver`] trait, with Redis
//!   pub/sub and PostgreSQL `LISTEN`/`NOTIFY` drivers.

pub mod bus;
pub mod hub;
pub mod memory;
pub mod source;

pub use hub::{
    Announce, DeliveryConfig, DeliveryStats, Hub, Outlet, OutletError, ReadyFuture, Refuse, SubscribeError, Subscriber,
    PAGE_BYTES,
};
pub use source::EventSource;
