//! Socket.IO connections end when their token expires.
//!
//! One timer serves every socket: a map ordered by expiry, and one task that
//! sleeps until the earliest one. A socket costs one map entry (its `exp`, its
//! id and a reference), not a task or a timer of its own; the entry goes when
//! the socket disconnects. At `exp` the task ends the socket with
//! [`crate::socket::expire`]: deliveries stop and the transport closes, so
//! that socket.io-client reconnects and asks its `auth` function for a token.
//!
//! Closing a transport: a WebSocket's TCP connection is closed under it
//! ([`crate::conn`]). A long-polling socket has no connection of its own;
//! [`close_on_poll`], a middleware in front of socketioxide, answers its
//! pending (or next) poll with engine.io's close packet (`1`), on which the
//! client closes its transport and reconnects, then ends the socket on the
//! server. The middleware also records the connection a polling socket
//! upgrades to WebSocket on, so that an upgraded socket can be closed too
//! ([`PendingUpgrades`] keeps it when the upgrade comes before the socket's
//! Socket.IO connect has completed, as socket.io-client often does).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use socketioxide::SocketIo;
use tokio::sync::{watch, Notify};

use crate::auth::Expiry;
use crate::conn::Conn;
use crate::http::extract::query_param;
use crate::socket::session;

/// The shared expiry timer of Socket.IO connections. Cheap to clone.
#[derive(Clone, Default)]
pub struct Expiries(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// Connected sockets by expiry (then id, to keep entries apart).
    queue: Mutex<BTreeMap<(Expiry, Sid), SocketRef>>,
    /// Wakes the task when an entry comes before its current earliest one.
    earlier: Notify,
}

impl std::fmt::Debug for Expiries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expiries").field("sockets", &self.len()).finish()
    }
}

impl Expiries {
    /// Starts the timer's task; it stops when `stopping` turns true.
    pub fn start(stopping: watch::Receiver<bool>) -> Self {
        let expiries = Self::default();
        tokio::spawn(expiries.clone().run(stopping));
        expiries
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Expiry, Sid), SocketRef>> {
        self.0.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends `socket` at `expires`.
    pub fn add(&self, expires: Expiry, socket: SocketRef) {
        let mut queue = self.queue();
        let earliest = queue.first_key_value().map(|((at, _), _)| *at);
        queue.insert((expires, socket.id), socket);
        drop(queue);
        if earliest.is_none_or(|at| expires < at) {
            self.0.earlier.notify_one();
        }
    }

    /// Forgets a socket (it disconnected).
    pub fn remove(&self, expires: Expiry, sid: Sid) {
        self.queue().remove(&(expires, sid));
    }

    /// How many sockets wait for their expiry.
    pub fn len(&self) -> usize {
        self.queue().len()
    }

    /// Whether no socket waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sockets whose token has expired, taken out of the queue.
    fn take_due(&self) -> Vec<SocketRef> {
        let mut queue = self.queue();
        let mut due = Vec::new();
        while let Some(entry) = queue.first_entry() {
            if !entry.key().0.has_passed() {
                break;
            }
            due.push(entry.remove());
        }
        due
    }

    async fn run(self, mut stopping: watch::Receiver<bool>) {
        loop {
            for socket in self.take_due() {
                crate::socket::expire(&socket);
            }
            let next = self.queue().first_key_value().map(|((at, _), _)| *at);
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.deadline()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = self.0.earlier.notified() => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
        }
    }
}

/// How long an upgrade's connection waits for its socket's connect to claim it.
const UNCLAIMED_UPGRADE: Duration = Duration::from_secs(60);

/// The WebSocket connections of engine.io sessions that upgraded before their
/// Socket.IO socket existed, by session id, until the socket claims them (or
/// for [`UNCLAIMED_UPGRADE`], for a session that never connects). Cheap to clone.
#[derive(Clone, Default)]
pub struct PendingUpgrades(Arc<Mutex<HashMap<Sid, (Conn, Instant)>>>);

impl std::fmt::Debug for PendingUpgrades {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingUpgrades").finish_non_exhaustive()
    }
}

impl PendingUpgrades {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Sid, (Conn, Instant)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the connection a session upgrades on.
    pub fn put(&self, sid: Sid, conn: Conn) {
        let mut map = self.map();
        let now = Instant::now();
        map.retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED_UPGRADE);
        map.insert(sid, (conn, now));
    }

    /// Takes the connection of a session, if one waits.
    pub fn take(&self, sid: Sid) -> Option<Conn> {
        self.map().remove(&sid).map(|(conn, _)| conn)
    }
}

/// What [`close_on_poll`] needs.
#[derive(Clone)]
pub struct Transports {
    /// The Socket.IO server, to find a session's socket.
    pub io: SocketIo,
    /// Upgrades that came before their socket.
    pub upgrades: PendingUpgrades,
}

impl std::fmt::Debug for Transports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transports").finish_non_exhaustive()
    }
}

/// engine.io's close packet, as a long-polling answer.
fn close_packet() -> Response {
    let mut response = (StatusCode::OK, "1").into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=UTF-8"));
    response
}

/// Answers a poll of an ended socket with the close packet and ends the
/// socket on the server (its DISCONNECT packet is never polled).
fn close_polling(socket: &SocketRef) -> Response {
    let _ = socket.clone().disconnect();
    close_packet()
}

/// Middleware in front of socketioxide (see the module doc). Requests that
/// are not polls or upgrades of a session go straight through.
pub async fn close_on_poll(State(transports): State<Transports>, request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/socket.io") || request.method() != Method::GET {
        return next.run(request).await;
    }
    let mut request = request;
    let query = request.uri().query().map(str::to_owned);
    let query = query.as_deref();
    let transport = query_param(query, "transport");
    if transport.as_deref() == Some("websocket") {
        // Lets the socket's deliveries write straight to its WebSocket (see `crate::socket`).
        if let Some(ConnectInfo(conn)) = request.extensions().get::<ConnectInfo<Conn>>() {
            let direct = conn.direct_writer();
            request.extensions_mut().insert(direct);
        }
    }
    let Some(sid) = query_param(query, "sid").and_then(|sid| sid.parse::<Sid>().ok()) else {
        return next.run(request).await;
    };
    // `of("/")`, not `get_socket`: the namespace is gone once shutdown has
    // closed the sockets, and socketioxide's default-namespace aliases panic
    // then, while polls of those sockets can still be in flight.
    let found = transports
        .io
        .of("/")
        .and_then(|ns| ns.get_socket(sid))
        .and_then(|socket| session(&socket).map(|s| (socket, s)));
    let Some((socket, session)) = found else {
        // An upgrade before the socket's connect completed: kept for it.
        if let (Some("websocket"), Some(ConnectInfo(conn))) =
            (transport.as_deref(), request.extensions().get::<ConnectInfo<Conn>>())
        {
            transports.upgrades.put(sid, conn.clone());
        }
        return next.run(request).await;
    };
    match transport.as_deref() {
        Some("polling") => {
            if session.is_closing() {
                return close_polling(&socket);
            }
            let response = tokio::select! {
                biased;
                () = session.closing() => None,
                response = next.run(request) => Some(response),
            };
            match response {
                Some(response) => {
                    // What the poll took off the socket's buffer, for its byte budget.
                    session.polled(axum::body::HttpBody::size_hint(response.body()).lower());
                    response
                }
                None => close_polling(&socket),
            }
        }
        Some("websocket") => {
            if let Some(ConnectInfo(conn)) = request.extensions().get::<ConnectInfo<Conn>>() {
                session.set_websocket(conn.clone());
            }
            next.run(request).await
        }
        _ => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(n: u8) -> Sid {
        let text: String = std::iter::repeat_n(char::from(b'A' + n), 16).collect();
        text.parse().unwrap_or_default()
    }

    #[test]
    fn a_pending_upgrade_is_taken_once() {
        let upgrades = PendingUpgrades::default();
        let conn = Conn::default();
        upgrades.put(sid(1), conn.clone());
        assert!(upgrades.take(sid(2)).is_none());
        let taken = upgrades.take(sid(1));
        assert!(taken.is_some());
        assert!(upgrades.take(sid(1)).is_none());
        // It is the same connection: closing one closes the other.
        taken.iter().for_each(Conn::close);
        assert!(conn.is_closed());
    }

    /// A poll that arrives after shutdown closed the sockets (and with them
    /// the namespace) goes through to engine.io, which answers it.
    #[tokio::test]
    async fn a_poll_after_the_namespace_is_gone_goes_through_without_a_panic() {
        use tower::ServiceExt as _;
        let (_layer, io) = SocketIo::new_layer();
        io.ns("/", async || {});
        io.delete_ns("/");
        let router = axum::Router::new().fallback(async || "engine.io").layer(axum::middleware::from_fn_with_state(
            Transports { io, upgrades: PendingUpgrades::default() },
            close_on_poll,
        ));
        for transport in ["polling", "websocket"] {
            let uri = format!("/socket.io/?EIO=4&transport={transport}&sid={}", sid(3));
            let request = Request::builder().uri(uri).body(axum::body::Body::empty());
            let Ok(request) = request else { panic!("a valid request") };
            let response = router.clone().oneshot(request).await;
            assert!(matches!(response, Ok(ref r) if r.status() == StatusCode::OK), "{transport}");
        }
    }

    #[test]
    fn the_close_packet_is_engine_io_close() {
        let response = close_packet();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
            Some("text/plain; charset=UTF-8")
        );
    }
}
