//! Limits on what one client may hold or do, so that no client (signed in or
//! not) can take the server's memory, descriptors or database for itself:
//!
//! - the largest incoming Socket.IO message, over WebSocket and long-polling
//!   ([`LimitSettings::max_message_bytes`], applied in `crate::app`);
//! - the largest request head and the open TCP connections, the time to send
//!   a request head (which is also how long an idle kept-alive connection
//!   stays open), applied by `crate::serve`;
//! - the time to send a request body ([`limit_body_time`]);
//! - Socket.IO connections per token subject ([`SubjectConnections`]),
//!   subscriptions per socket (`crate::socket`), and writes per second per
//!   token subject ([`WriteRate`]).
//!
//! Each is a setting (docs/operations.md, "Limits and timeouts"); the count
//! limits are off when set to 0. Refusals are counted in
//! `jobstream_refusals_total{limit}` and `jobstream_timeouts_total{kind}`.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use clap::Args;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::metrics::{Metrics, Refusal, Timeout};

/// Largest incoming Socket.IO message, by default: 64 KiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest request head (request line and headers), by default: 64 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// The smallest request head limit the HTTP server takes.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;
/// Open TCP connections, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Time to send a request head, by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send a request body, by default.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Socket.IO connections per token subject, by default.
pub const DEFAULT_MAX_CONNECTIONS_PER_SUBJECT: usize = 100;
/// Subscriptions per Socket.IO socket, by default.
pub const DEFAULT_MAX_SUBSCRIPTIONS_PER_SOCKET: usize = 1000;
/// Write requests per second per token subject, by default.
pub const DEFAULT_MAX_WRITES_PER_SECOND: u32 = 1000;
/// Write requests a subject may send at once after being idle, by default.
pub const DEFAULT_WRITE_BURST: u32 = 1000;

/// The limits' command-line flags and environment variables.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Largest incoming Socket.IO message in bytes, before and after CONNECT: a
    /// WebSocket message or frame, a long-polling POST body. A client that
    /// sends more is disconnected.
    #[arg(long = "max-message-bytes", env = "JOBSTREAM_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Largest HTTP request head (request line and headers) in bytes; at least 8192.
    #[arg(long = "max-header-bytes", env = "JOBSTREAM_MAX_HEADER_BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,
    /// Open TCP connections; past it a new connection is closed as soon as it
    /// is accepted. 0: no limit.
    #[arg(long = "max-connections", env = "JOBSTREAM_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Time a client has to send a request head, from the connection's start
    /// or the end of the previous response (so also the idle keep-alive timeout).
    #[arg(long = "header-timeout", env = "JOBSTREAM_HEADER_TIMEOUT", default_value = "10s", value_parser = crate::config::parse_duration, allow_hyphen_values = true)]
    pub header_timeout: Duration,
    /// Time a client has to send a request body, from the end of its head.
    #[arg(long = "body-timeout", env = "JOBSTREAM_BODY_TIMEOUT", default_value = "30s", value_parser = crate::config::parse_duration, allow_hyphen_values = true)]
    pub body_timeout: Duration,
    /// Socket.IO connections open at once with tokens of one `sub`, on this node. 0: no limit.
    #[arg(
        long = "max-connections-per-subject",
        env = "JOBSTREAM_MAX_CONNECTIONS_PER_SUBJECT",
        default_value_t = DEFAULT_MAX_CONNECTIONS_PER_SUBJECT
    )]
    pub max_connections_per_subject: usize,
    /// Subscriptions (jobs and workspaces) one Socket.IO socket may hold. 0: no limit.
    #[arg(
        long = "max-subscriptions-per-socket",
        env = "JOBSTREAM_MAX_SUBSCRIPTIONS_PER_SOCKET",
        default_value_t = DEFAULT_MAX_SUBSCRIPTIONS_PER_SOCKET
    )]
    pub max_subscriptions_per_socket: usize,
    /// Requests per second to the HTTP write routes per token `sub`, on this node. 0: no limit.
    #[arg(long = "max-writes-per-second", env = "JOBSTREAM_MAX_WRITES_PER_SECOND", default_value_t = DEFAULT_MAX_WRITES_PER_SECOND)]
    pub max_writes_per_second: u32,
    /// Write requests a `sub` may send at once before the per-second rate applies.
    #[arg(long = "write-burst", env = "JOBSTREAM_WRITE_BURST", default_value_t = DEFAULT_WRITE_BURST)]
    pub write_burst: u32,
}

/// The limits in force. `Default` is the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    /// Largest incoming Socket.IO message (WebSocket message or frame, polling POST body).
    pub max_message_bytes: usize,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Open TCP connections (0: no limit).
    pub max_connections: usize,
    /// Time to send a request head (also the idle keep-alive timeout).
    pub header_timeout: Duration,
    /// Time to send a request body.
    pub body_timeout: Duration,
    /// Socket.IO connections per token subject (0: no limit).
    pub max_connections_per_subject: usize,
    /// Subscriptions per socket (0: no limit).
    pub max_subscriptions_per_socket: usize,
    /// Write requests per second per token subject (0: no limit).
    pub max_writes_per_second: u32,
    /// Write requests at once after an idle spell.
    pub write_burst: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections_per_subject: DEFAULT_MAX_CONNECTIONS_PER_SUBJECT,
            max_subscriptions_per_socket: DEFAULT_MAX_SUBSCRIPTIONS_PER_SOCKET,
            max_writes_per_second: DEFAULT_MAX_WRITES_PER_SECOND,
            write_burst: DEFAULT_WRITE_BURST,
        }
    }
}

impl From<LimitArgs> for LimitSettings {
    fn from(args: LimitArgs) -> Self {
        Self {
            max_message_bytes: args.max_message_bytes.max(1),
            // Below it, ordinary browser requests (cookies, a token) would not fit.
            max_header_bytes: args.max_header_bytes.max(MIN_HEADER_BYTES),
            max_connections: args.max_connections,
            header_timeout: args.header_timeout.max(Duration::from_millis(1)),
            body_timeout: args.body_timeout.max(Duration::from_millis(1)),
            max_connections_per_subject: args.max_connections_per_subject,
            max_subscriptions_per_socket: args.max_subscriptions_per_socket,
            max_writes_per_second: args.max_writes_per_second,
            write_burst: args.write_burst.max(1),
        }
    }
}

/// The admission limits that handlers check. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Socket.IO connections per token subject.
    pub subjects: SubjectConnections,
    /// Subscriptions per socket (0: no limit).
    pub max_subscriptions: usize,
    /// Writes per second per token subject.
    pub writes: WriteRate,
    /// Counts refusals.
    metrics: Metrics,
}

impl Admission {
    /// The limits of `settings`; forgets idle write-rate state every minute until `stopping`.
    pub fn start(settings: &LimitSettings, metrics: Metrics, mut stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        let writes = WriteRate::new(settings.max_writes_per_second, settings.write_burst);
        if writes.limiter.is_some() {
            let writes = writes.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = tick.tick() => writes.forget_idle(),
                        _ = stopping.wait_for(|stop| *stop) => break,
                    }
                }
            });
        }
        Self {
            subjects: SubjectConnections::new(settings.max_connections_per_subject),
            max_subscriptions: settings.max_subscriptions_per_socket,
            writes,
            metrics,
        }
    }

    /// Counts a refusal.
    pub fn refused(&self, refusal: Refusal) {
        self.metrics.refused(refusal);
    }

    /// Takes one write from the subject's allowance, or tells how long until
    /// the next one (the refusal is counted).
    pub fn check_write(&self, subject: &str) -> Result<(), Duration> {
        self.writes.check(subject).inspect_err(|_| self.refused(Refusal::WriteRate))
    }
}

/// Socket.IO connections open per token subject, and their limit.
#[derive(Debug, Clone)]
pub struct SubjectConnections {
    limit: usize,
    open: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

impl SubjectConnections {
    /// A counter with this limit (0: no limit).
    pub fn new(limit: usize) -> Self {
        Self { limit, open: Arc::default() }
    }

    /// The limit (0: none).
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, usize>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for one more connection of `subject`, or `None` at the
    /// limit. The place is given back when the slot is dropped.
    pub fn try_acquire(&self, subject: &str) -> Option<SubjectSlot> {
        let mut open = self.open();
        let subject: Arc<str> = match open.get_key_value(subject) {
            Some((_, &count)) if self.limit != 0 && count >= self.limit => return None,
            Some((key, _)) => key.clone(),
            None => Arc::from(subject),
        };
        *open.entry(subject.clone()).or_insert(0) += 1;
        Some(SubjectSlot { connections: self.clone(), subject })
    }

    /// Connections open with `subject`'s tokens.
    pub fn count(&self, subject: &str) -> usize {
        self.open().get(subject).copied().unwrap_or(0)
    }
}

/// One connection's place in [`SubjectConnections`], given back on drop.
#[derive(Debug)]
pub struct SubjectSlot {
    connections: SubjectConnections,
    subject: Arc<str>,
}

impl Drop for SubjectSlot {
    fn drop(&mut self) {
        let mut open = self.connections.open();
        if let Some(count) = open.get_mut(&self.subject) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.subject);
            }
        }
    }
}

type KeyedLimiter = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// Write requests per second per token subject: a token bucket per subject
/// (GCRA), `burst` deep, refilled at `rate` per second.
#[derive(Clone)]
pub struct WriteRate {
    limiter: Option<Arc<KeyedLimiter>>,
}

impl std::fmt::Debug for WriteRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteRate").field("subjects", &self.limiter.as_ref().map(|l| l.len())).finish()
    }
}

impl WriteRate {
    /// `rate` per second with `burst` at once; a rate of 0 lets everything through.
    pub fn new(rate: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(rate).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            Arc::new(RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)))
        });
        Self { limiter }
    }

    /// Takes one write from `subject`'s bucket, or tells how long until there is one.
    pub fn check(&self, subject: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check_key(&subject.to_owned()).map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// Forgets the subjects whose bucket is full again (they would be let through anyway).
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// The `Retry-After` value for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// What [`limit_body_time`] needs.
#[derive(Debug, Clone)]
pub struct BodyTime {
    /// The time allowed for a body.
    pub timeout: Duration,
    /// Counts bodies that took longer.
    pub metrics: Metrics,
}

/// Middleware: a request body must arrive within the body timeout, counted
/// from the end of the request head. Past it, reading the body fails: the HTTP
/// API answers 408 `request_timeout` (`crate::http::extract::JsonBody`), a
/// Socket.IO long-polling POST is refused and its session closed. Requests
/// without a body (every GET: SSE streams, long-polling GETs, WebSocket
/// upgrades) are not touched, however long they last.
pub async fn limit_body_time(State(time): State<BodyTime>, request: Request, next: Next) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let deadline = tokio::time::Instant::now() + time.timeout;
    let request = request.map(|inner| {
        Body::new(DeadlineBody { inner, deadline, sleep: None, timeout: time.timeout, metrics: Some(time.metrics) })
    });
    next.run(request).await
}

/// A body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Body,
    deadline: tokio::time::Instant,
    /// Made at the first read, so that a body nobody reads costs no timer.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
    /// Taken when the deadline is first reported, so that it is counted once.
    metrics: Option<Metrics>,
}

/// The error of a request body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(Duration);

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let deadline = this.deadline;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            if let Some(metrics) = this.metrics.take() {
                metrics.timed_out(Timeout::Body);
            }
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout)))));
        }
        Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether an error (or one of its sources) is a body that did not arrive in time.
pub fn is_body_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if err.is::<BodyTimedOut>() {
            return true;
        }
        next = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }

    #[test]
    fn a_subject_holds_at_most_its_limit_and_gets_places_back() {
        let subjects = SubjectConnections::new(2);
        let a1 = subjects.try_acquire("a");
        let a2 = subjects.try_acquire("a");
        assert!(a1.is_some() && a2.is_some());
        assert!(subjects.try_acquire("a").is_none(), "a third connection of a");
        assert!(subjects.try_acquire("b").is_some(), "another subject is not affected");
        drop(a1);
        assert_eq!(subjects.count("a"), 1);
        let a3 = subjects.try_acquire("a");
        assert!(a3.is_some());
        drop((a2, a3));
        assert_eq!(subjects.count("a"), 0);
        assert!(subjects.open().is_empty(), "nothing is kept for subjects without connections");

        let unlimited = SubjectConnections::new(0);
        let slots: Vec<_> = (0..1000).filter_map(|_| unlimited.try_acquire("a")).collect();
        assert_eq!(slots.len(), 1000);
    }

    #[test]
    fn writes_past_the_burst_wait_for_the_rate() {
        let writes = WriteRate::new(10, 3);
        for _ in 0..3 {
            assert_eq!(writes.check("a"), Ok(()));
        }
        let wait = writes.check("a").err();
        assert!(wait.is_some_and(|w| w > Duration::ZERO && w <= Duration::from_millis(100)), "{wait:?}");
        assert_eq!(writes.check("b"), Ok(()), "subjects have their own allowance");
        assert!(WriteRate::new(0, 1).check("a").is_ok(), "a rate of 0 is no limit");
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_fails_with_a_timeout() {
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let inner = Body::from_stream(rx);
        let body = DeadlineBody {
            inner,
            deadline: tokio::time::Instant::now() + Duration::from_millis(200),
            sleep: None,
            timeout: Duration::from_millis(200),
            metrics: Some(Metrics::default()),
        };
        let send = async move {
            use futures::SinkExt;
            let _ = tx.send(Ok(Bytes::from_static(b"{"))).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(tx);
        };
        let read = axum::body::to_bytes(Body::new(body), 1024);
        let result = tokio::select! {
            result = read => Some(result),
            () = send => None,
        };
        let err = result.and_then(Result::err).map(axum::Error::into_inner);
        assert!(err.as_deref().is_some_and(|err| is_body_timeout(err)), "{err:?}");
    }
}
