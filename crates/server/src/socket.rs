//! The Socket.IO gateway: token check at connect, the subscribe / unsubscribe
//! handlers and their acks, and the socket as a delivery outlet.
//!
//! Handlers are registered in the connect middleware, after the token is
//! accepted and before socketioxide sends CONNECT, so that a subscribe the
//! client sends right after connecting always finds its handler. The delivery
//! worker of a socket starts with its first subscription.
//!
//! A socket lives as long as its token: a subscribe after `exp` is refused
//! with `unauthorized`, and at `exp` the server ends the socket (see
//! [`crate::expiry`]). The server ends a socket by closing its *transport*,
//! never with a Socket.IO DISCONNECT: socket.io-client reconnects after a
//! transport close (calling its `auth` function again), but stays
//! disconnected after a DISCONNECT ("io server disconnect").

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use engineioxide::EncodedMessage;
use jobstream_delivery::{Announce, Outlet, OutletError, SubscribeError, Subscriber};
use jobstream_job_events::{Committed, ReadError};
use jobstream_protocol::requests::Request;
use jobstream_protocol::{
    AckError, ErrorCode, JobSubscribed, Room, SubscribeJob, SubscribeWorkspace, UnsubscribeJob, UnsubscribeWorkspace,
    Unsubscribed, WorkspaceSubscribed,
};
use jobstream_rooms::{authorize, Action, Claims, Decision};
use serde::Serialize;
use serde_json::Value;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, Event, SocketRef, State, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::socket::{DisconnectReason, Socket};
use socketioxide::{SendError, SocketError, SocketIo, TransportType};
use tokio::sync::Notify;

use crate::app::AppState;
use crate::auth::{self, Expiry, TokenError};
use crate::budget::Budget;
use crate::conn::Conn;
use crate::expiry::PendingUpgrades;
use crate::limits::SubjectSlot;
use crate::metrics::Refusal;

/// Registers the `/` namespace: the auth middleware, then the connect handler.
pub fn register(io: &SocketIo) {
    io.ns("/", on_connect.with(authenticate));
}

/// A socket's token and, once it subscribes, its delivery subscriber. Cheap to
/// clone (one allocation per socket, shared).
#[derive(Clone)]
pub(crate) struct Session(Arc<SessionState>);

struct SessionState {
    /// The socket as a delivery outlet, with its byte budget.
    outlet: Arc<SocketOutlet>,
    /// Subscribes being set up: each holds the permit until its ack is handed
    /// to the socket, so a burst of subscribes holds one snapshot at a time.
    subscribes: Arc<tokio::sync::Semaphore>,
    claims: Claims,
    expires: Expiry,
    subscriber: OnceLock<Arc<Subscriber>>,
    /// Set once the server ends the socket (see [`close_transport`]).
    closing: AtomicBool,
    /// Wakes the pending long-polling request when `closing` is set.
    closed: Notify,
    /// The TCP connection of the socket's WebSocket, when it upgraded from polling.
    websocket: Mutex<Option<Conn>>,
    /// Where an upgrade that came before the connect left its connection.
    upgrades: PendingUpgrades,
}

impl Session {
    fn new(
        claims: Claims,
        expires: Expiry,
        upgrades: PendingUpgrades,
        direct_writes: crate::metrics::StripedCounter,
    ) -> Self {
        Self(Arc::new(SessionState {
            outlet: Arc::new(SocketOutlet { budget: Budget::default(), direct_writes, socket: OnceLock::new() }),
            subscribes: Arc::new(tokio::sync::Semaphore::new(SUBSCRIBES_IN_FLIGHT)),
            claims,
            expires,
            subscriber: OnceLock::new(),
            closing: AtomicBool::new(false),
            closed: Notify::new(),
            websocket: Mutex::new(None),
            upgrades,
        }))
    }

    /// The socket's subscriber, started on first use.
    fn subscriber(&self, socket: &SocketRef, app: &AppState) -> Arc<Subscriber> {
        self.0
            .subscriber
            .get_or_init(|| {
                let _ = self.0.outlet.socket.set(socket.clone());
                let max_rooms = app.admission.max_subscriptions;
                Arc::new(app.hub.subscriber(self.0.outlet.clone()).with_room_limit(max_rooms))
            })
            .clone()
    }

    /// When the socket's token expires.
    pub(crate) fn expires(&self) -> Expiry {
        self.0.expires
    }

    /// Whether the server is ending the socket.
    pub(crate) fn is_closing(&self) -> bool {
        self.0.closing.load(Ordering::Acquire)
    }

    /// Resolves once the server ends the socket.
    pub(crate) async fn closing(&self) {
        loop {
            let notified = self.0.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }

    /// Records the connection the socket upgrades to WebSocket on; closes it
    /// at once if the socket is already being ended.
    pub(crate) fn set_websocket(&self, conn: Conn) {
        self.0.outlet.budget.attach(conn.clone());
        *self.0.websocket.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        if self.is_closing() {
            conn.close();
        }
    }

    /// Counts the bytes a long-polling response took to the client (see [`crate::budget`]).
    pub(crate) fn polled(&self, bytes: u64) {
        self.0.outlet.budget.polled(bytes);
    }

    fn websocket(&self) -> Option<Conn> {
        self.0.websocket.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Subscribes of one socket set up at once; the others wait their turn.
const SUBSCRIBES_IN_FLIGHT: usize = 1;

/// Waits for a subscribe's turn on this socket and for room in its byte
/// budget; the permit goes with the ack (see [`with_permit`]).
async fn subscribe_turn(session: &Session) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let permit = session.0.subscribes.clone().acquire_owned().await.ok()?;
    // Nothing is read for a client that is not reading what it was sent.
    session.0.outlet.budget.room().await;
    Some(permit)
}

/// An announcement that releases the subscribe's turn once it is sent.
fn with_permit(mut announce: Announce, permit: Option<tokio::sync::OwnedSemaphorePermit>) -> Announce {
    Box::new(move || {
        let _turn = &permit;
        announce()
    })
}

/// The session of a connected socket (none before the token is accepted, nor after the disconnect).
pub(crate) fn session(socket: &SocketRef) -> Option<Session> {
    socket.extensions.get::<Session>()
}

/// The connection of a socket opened directly over WebSocket (not upgraded).
fn opened_on_websocket(socket: &SocketRef) -> Option<Conn> {
    let parts = socket.req_parts();
    (crate::http::extract::query_param(parts.uri.query(), "transport").as_deref() == Some("websocket"))
        .then(|| parts.extensions.get::<axum::extract::ConnectInfo<Conn>>().map(|info| info.0.clone()))
        .flatten()
}

/// Ends a socket so that socket.io-client reconnects by itself: over
/// WebSocket, the TCP connection under it is closed (the client sees its
/// WebSocket close); over long-polling, the pending or next poll is answered
/// with engine.io's close packet ([`crate::expiry::close_on_poll`]). Either
/// way the client reports `transport close` and reconnects. Deliveries to the
/// socket stop at once. Calling it again does nothing.
pub(crate) fn close_transport(socket: &SocketRef) {
    let Some(session) = session(socket) else {
        // Not (or no longer) a session of ours: nothing is delivered to it.
        if socket.connected() {
            let _ = socket.clone().disconnect();
        }
        return;
    };
    if session.0.closing.swap(true, Ordering::AcqRel) {
        return;
    }
    session.0.closed.notify_waiters();
    // The socket's WebSocket connection: the one it upgraded on, or the one it
    // was opened on (never the connection of a long-polling handshake).
    let websocket =
        session.websocket().or_else(|| session.0.upgrades.take(socket.id)).or_else(|| opened_on_websocket(socket));
    match websocket {
        Some(conn) => conn.close(),
        // A WebSocket without a known connection (not accepted by our
        // listener): a Socket.IO DISCONNECT is all that is left.
        None if socket.transport_type() == TransportType::Websocket => {
            let _ = socket.clone().disconnect();
        }
        None => {}
    }
}

/// Ends a socket whose token has expired: deliveries stop, the transport closes.
pub(crate) fn expire(socket: &SocketRef) {
    tracing::debug!(socket = %socket.id, "token expired: closing the socket");
    close_transport(socket);
    if let Some(subscriber) = session(socket).and_then(|s| s.0.subscriber.get().cloned()) {
        subscriber.close();
    }
}

/// Why a connection was refused; sent as the `connect_error` message, which
/// starts with the error code.
#[derive(Debug, thiserror::Error)]
enum Refused {
    /// No valid token.
    #[error("unauthorized: {0}")]
    Unauthorized(TokenError),
    /// No token, and an `auth` payload that could not be read (which may be where it is).
    #[error("unauthorized: missing token: the auth payload {0}")]
    UnreadableAuth(String),
    /// The token's subject has as many connections open as it may.
    #[error(
        "rate_limited: this token's subject already has {0} open connections, the most allowed; close one and connect again"
    )]
    TooManyConnections(usize),
}

/// What a socket holds against its limits (`crate::limits`): its place among
/// its token subject's connections, given back when the socket is gone. (Its
/// subscriptions are counted by its subscriber: `Subscriber::with_room_limit`.)
#[derive(Clone)]
struct Holdings {
    _place: Arc<SubjectSlot>,
}

/// The refusal of a subscribe past the socket's subscription limit (a room
/// the socket already has does not count again).
fn too_many_rooms(app: &AppState, limit: usize) -> AckError {
    app.admission.refused(Refusal::Subscriptions);
    AckError::new(
        ErrorCode::RateLimited,
        format!("this socket has {limit} subscriptions, the most allowed; unsubscribe from one first"),
    )
}

/// Ends a subscription.
async fn forget_subscription(room: Room, subscriber: Option<Arc<Subscriber>>, ack: Ack) {
    // The ack goes out after the worker has left the room: no event of the
    // room follows it.
    let announce = ack.announce(Unsubscribed { ok: true });
    let unanswered = match subscriber {
        Some(subscriber) => subscriber.unsubscribe_then(room, Some(announce)).await.err().flatten(),
        None => Some(announce),
    };
    if let Some(mut announce) = unanswered {
        if let Err(err) = announce() {
            tracing::debug!(?err, "ack not sent");
        }
    }
}

/// The token of a connecting socket: `auth.token`, else `?token=`, else
/// `Authorization: Bearer` (an empty one is not given). A `Bearer ` written before the token in
/// `auth.token` or `?token=` (as the header has it) is left out.
fn connect_token(socket: &SocketRef, auth: Option<&Value>) -> Option<String> {
    // An empty one counts as not given: the next source is read.
    let given = |token: &str| Some(auth::without_bearer(token)).filter(|t| !t.is_empty()).map(str::to_owned);
    if let Some(token) = auth.and_then(|a| a.get("token")).and_then(Value::as_str).and_then(given) {
        return Some(token);
    }
    let parts = socket.req_parts();
    if let Some(token) = crate::http::extract::query_param(parts.uri.query(), "token").as_deref().and_then(given) {
        return Some(token);
    }
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned())
}

/// Connect middleware: refuses sockets without a valid token (no handler runs
/// for them); for the others, sets up the session and registers the handlers.
async fn authenticate(
    socket: SocketRef,
    TryData(auth): TryData<Value>,
    State(app): State<AppState>,
) -> Result<(), Refused> {
    let token = connect_token(&socket, auth.as_ref().ok()).filter(|t| !t.is_empty());
    if let (None, Err(err)) = (&token, &auth) {
        tracing::debug!(socket = %socket.id, %err, "connection refused: unreadable auth payload");
        return Err(Refused::UnreadableAuth(unreadable(err)));
    }
    let verified = token.ok_or(TokenError::Missing).and_then(|t| auth::verify_token(&app.keys, &t)).map_err(|err| {
        tracing::debug!(socket = %socket.id, %err, "connection refused");
        Refused::Unauthorized(err)
    })?;
    let Some(place) = app.admission.subjects.try_acquire(&verified.claims.subject) else {
        tracing::debug!(socket = %socket.id, "connection refused: too many connections of the token's subject");
        app.admission.refused(Refusal::SubjectConnections);
        return Err(Refused::TooManyConnections(app.admission.subjects.limit()));
    };
    socket.extensions.insert(Holdings { _place: Arc::new(place) });
    socket.extensions.insert(Arc::new(crate::order::Sequencer::default()));
    let direct_writes = app.metrics.socket_writes_direct.clone();
    socket.extensions.insert(Session::new(verified.claims, verified.expires, app.upgrades.clone(), direct_writes));
    socket.on_fallback(on_request);
    socket.on_disconnect(async |socket: SocketRef, reason: DisconnectReason, State(app): State<AppState>| {
        app.upgrades.take(socket.id);
        // Gives the socket's place back to its subject.
        socket.extensions.remove::<Holdings>();
        if let Some(session) = socket.extensions.remove::<Session>() {
            app.expiries.remove(session.expires(), socket.id);
            session.0.outlet.budget.close();
            if let Some(subscriber) = session.0.subscriber.get() {
                subscriber.close();
            }
        }
        app.metrics.connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(socket = %socket.id, ?reason, "disconnected");
    });
    Ok(())
}

/// Every event of a socket: the four requests of CONTRACT §3 go to their
/// handlers; any other event asked with an ack is acked `not_found` naming
/// the requests there are (as HTTP answers an unknown route), and without an
/// ack it is ignored. One handler for all, not one registered per event
/// name: each socket would hold a map of them.
async fn on_request(
    socket: SocketRef,
    Event(event): Event,
    data: TryData<Value>,
    ack: Ack,
    app: State<AppState>,
    turn: crate::order::Turn,
) {
    let name = event_name(&event);
    match name.as_ref() {
        "subscribe:workspace:jobs" => subscribe_workspace(socket, data, ack, app, turn).await,
        "unsubscribe:workspace:jobs" => unsubscribe_workspace(socket, data, ack, turn).await,
        "subscribe:job" => subscribe_job(socket, data, ack, app, turn).await,
        "unsubscribe:job" => unsubscribe_job(socket, data, ack, turn).await,
        _ if ack.ack_id.is_some() => ack.refuse(ErrorCode::NotFound, unknown_event(&event, &name)),
        _ => {}
    }
}

/// The event's name. One written with JSON escapes (`"a\"b"`, `"\u0061"`)
/// reaches the handler as written, escapes kept (the parser cannot lend it
/// unescaped: patches/socketioxide-parser-common); it is read here, so that
/// a name means what it says however the client's JSON wrote it.
fn event_name(event: &str) -> std::borrow::Cow<'_, str> {
    if event.contains('\\') {
        if let Ok(name) = serde_json::from_str::<String>(&format!("\"{event}\"")) {
            return std::borrow::Cow::Owned(name);
        }
    }
    std::borrow::Cow::Borrowed(event)
}

/// The refusal of an event that is not one of the four requests. The name is
/// quoted as JSON (it is the client's text); the message is bounded with the
/// others ([`ErrorBody::new`](jobstream_protocol::ErrorBody::new)).
fn unknown_event(event: &str, name: &str) -> String {
    // A name whose escapes could not be read (half a surrogate pair) is
    // quoted as the client wrote it, not escaped again.
    let unread = event.contains('\\') && event == name;
    let quoted = if unread { format!("\"{event}\"") } else { serde_json::to_string(name).unwrap_or_default() };
    format!(
        "unknown event {quoted}: the requests are subscribe:workspace:jobs, unsubscribe:workspace:jobs, \
         subscribe:job and unsubscribe:job"
    )
}

async fn on_connect(socket: SocketRef, State(app): State<AppState>) {
    app.metrics.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(socket = %socket.id, "connected");
    // The socket ends when its token expires (one shared timer for all sockets).
    if let Some(session) = session(&socket).filter(|_| socket.connected()) {
        if let Some(conn) = app.upgrades.take(socket.id) {
            session.set_websocket(conn);
        } else if let Some(conn) = opened_on_websocket(&socket) {
            session.0.outlet.budget.attach(conn);
        }
        app.expiries.add(session.expires(), socket.clone());
    }
}

/// The socket as a delivery outlet: `emit` of the pre-encoded event, within
/// the socket's byte budget.
///
/// One object per socket with its budget, which every delivery reads first
/// (`repr(C)`: the budget's hot fields lead).
#[repr(C)]
struct SocketOutlet {
    budget: Budget,
    /// Counts the events written straight to the WebSocket.
    direct_writes: crate::metrics::StripedCounter,
    /// Set when the socket's subscriber starts (the outlet is used from then on).
    socket: OnceLock<SocketRef>,
}

impl AsRef<Budget> for SocketOutlet {
    fn as_ref(&self) -> &Budget {
        &self.budget
    }
}

fn outlet_error(err: &SendError) -> OutletError {
    match err {
        SendError::Socket(SocketError::InternalChannelFull) => OutletError::Full,
        _ => OutletError::Closed,
    }
}

/// The most bytes of events written to a WebSocket in one direct write by
/// [`SocketOutlet::try_send_many`] (a larger event is written alone).
const DIRECT_BATCH_BYTES: usize = 64 * 1024;

/// The Socket.IO packet of an event, `2["name",payload]`, in pieces (event
/// names are fixed ASCII words: no JSON escaping needed).
fn packet_parts(committed: &Committed) -> [&str; 5] {
    ["2[\"", committed.event.socket_event().as_str(), "\",", committed.json.get(), "]"]
}

/// The bytes of the event's WebSocket frame, at most: its packet, the
/// engine.io type and a frame header of at most 10 bytes.
fn framed_len(committed: &Committed) -> usize {
    packet_parts(committed).iter().map(|part| part.len()).sum::<usize>() + 11
}

/// The event as a WebSocket frame carrying the engine.io message
/// `42["name",payload]`, encoded by the first socket that writes it directly
/// and shared with the others.
fn encoded(committed: &Committed) -> Option<&EncodedMessage> {
    let encoded = committed.encoded.get_or_init(|| {
        let mut one = EncodedMessage::batch(framed_len(committed));
        one.push(&packet_parts(committed));
        Arc::new(one.finish())
    });
    encoded.downcast_ref::<EncodedMessage>()
}

impl Outlet for SocketOutlet {
    /// Over WebSocket, an event written when nothing else waits for the socket
    /// goes straight to the connection, encoded once for all sockets
    /// (`engineioxide::direct`); otherwise through socketioxide's `emit`,
    /// behind what waits. Either way in the order sent.
    ///
    /// A direct write needs no look at the byte budget: it is taken only when
    /// nothing waits for the connection (the socket's channel is empty and
    /// the connection's earlier bytes have gone to the kernel), so what the
    /// server holds for the socket is then at most this one frame. The
    /// budget is checked on the way through the channel, where bytes wait.
    fn try_send(&self, committed: &Committed) -> Result<(), OutletError> {
        if let Some(direct) = self.budget.direct() {
            if let Some(message) = encoded(committed) {
                if direct.try_write(message).is_ok() {
                    self.budget.add(message.len());
                    self.direct_writes.inc();
                    return Ok(());
                }
            }
        }
        if self.budget.is_spent() {
            return Err(OutletError::Full);
        }
        let name = committed.event.socket_event().as_str();
        let socket = self.socket.get().ok_or(OutletError::Closed)?;
        socket.emit(name, &*committed.json).map_err(|e| outlet_error(&e))?;
        self.budget.add(committed.json.get().len() + name.len() + 8);
        Ok(())
    }

    /// A run of events (a replay's page) for a WebSocket with nothing else
    /// waiting goes to the connection in one direct write of up to
    /// [`DIRECT_BATCH_BYTES`] (each event its own frame, in order): one system
    /// call per batch, not per event. Otherwise one event as [`Self::try_send`].
    fn try_send_many(&self, events: &[Arc<Committed>]) -> Result<usize, OutletError> {
        let Some(first) = events.first() else { return Ok(0) };
        // A spent budget means bytes wait for the connection: a batch would be
        // built only to be refused.
        if events.len() == 1 || self.budget.is_spent() {
            return self.try_send(first).map(|()| 1);
        }
        let Some(direct) = self.budget.direct() else { return self.try_send(first).map(|()| 1) };
        let mut take = 0;
        let mut bytes = 0;
        for committed in events {
            if take > 0 && bytes + framed_len(committed) > DIRECT_BATCH_BYTES {
                break;
            }
            take += 1;
            bytes += framed_len(committed);
        }
        // Sized at once: grown by doubling, a batch would be copied each time.
        let mut batch = EncodedMessage::batch(bytes);
        for committed in &events[..take] {
            batch.push(&packet_parts(committed));
        }
        let count = batch.count();
        let message = batch.finish();
        if direct.try_write(&message).is_ok() {
            self.budget.add(message.len());
            self.direct_writes.add(count as u64);
            return Ok(count);
        }
        self.try_send(first).map(|()| 1)
    }

    /// The worker has stopped: the socket ends so that its client reconnects
    /// and resumes with `since`.
    fn close(&self) {
        if let Some(socket) = self.socket.get() {
            close_transport(socket);
        }
    }

    /// A full socket makes room when its connection writes (WebSocket) or
    /// its client polls (long-polling).
    fn ready(self: Arc<Self>) -> Option<jobstream_delivery::ReadyFuture> {
        Some(Box::pin(Budget::progress(self)))
    }
}

/// An ack that can be sent again when the socket's buffer is full
/// (socketioxide's `AckSender` is consumed by a failed send).
struct Ack {
    socket: Arc<Socket<LocalAdapter>>,
    ack_id: Option<i64>,
}

impl FromMessageParts<LocalAdapter> for Ack {
    type Error = Infallible;

    fn from_message_parts(
        socket: &Arc<Socket<LocalAdapter>>,
        _: &mut socketioxide_core::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        Ok(Self { socket: socket.clone(), ack_id: *ack_id })
    }
}

impl Ack {
    fn try_send<T: Serialize + ?Sized>(&self, body: &T) -> Result<(), SendError> {
        // The ack's bytes count in the socket's budget, over either transport.
        let outlet = self.socket.extensions.get::<Session>().map(|s| s.0.outlet.clone());
        let budget = outlet.as_ref().map(|o| &o.budget);
        if budget.is_some_and(Budget::is_spent) {
            return Err(SendError::Socket(SocketError::InternalChannelFull));
        }
        let mut unused = socketioxide_core::Value::Bytes(bytes::Bytes::new());
        let Ok(sender) = AckSender::from_message_parts(&self.socket, &mut unused, &self.ack_id);
        sender.send(body)?;
        if let Some(budget) = budget {
            budget.add(serde_json::to_vec(body).map_or(0, |b| b.len()) + 8);
        }
        Ok(())
    }

    /// Sends an ack from the handler (errors: the client is gone; nothing to do).
    fn reply<T: Serialize + ?Sized>(self, body: &T) {
        if let Err(err) = self.try_send(body) {
            tracing::debug!(%err, "ack not sent");
        }
    }

    fn refuse(self, code: ErrorCode, message: impl Into<String>) {
        self.reply(&AckError::new(code, message));
    }

    /// An ack sent by the delivery worker, before the events it announces.
    fn announce<T: Serialize + Send + 'static>(self, body: T) -> Announce {
        Box::new(move || self.try_send(&body).map_err(|e| outlet_error(&e)))
    }
}

/// The answer to a `subscribe:job` whose `since` can no longer be honoured in
/// order: the socket already got later events of the job (through its
/// workspace subscription) after a gap it never got.
fn unreachable_since(ack: &Ack, job_id: uuid::Uuid) -> jobstream_delivery::Refuse {
    let ack = Ack { socket: ack.socket.clone(), ack_id: ack.ack_id };
    Box::new(move |u: jobstream_rooms::Unreachable| {
        let message = format!(
            "since {}: this socket already received job {job_id} up to seq {} from its workspace subscription, \
             which started after seq {}; events {}..={} cannot be sent in order now: subscribe to the job before \
             its workspace, or read them with GET /api/v1/jobs/{job_id}/events?since={}",
            u.since,
            u.delivered,
            u.skipped_to,
            u.since + 1,
            u.skipped_to,
            u.since
        );
        ack.try_send(&AckError::new(ErrorCode::InvalidCursor, message)).map_err(|e| outlet_error(&e))
    })
}

/// Parses the payload, or acks `invalid_payload` and returns `None`.
fn parse<T: Request>(data: Result<Value, socketioxide::ParserError>, ack: Ack) -> Option<(T, Ack)> {
    let data = match data {
        Ok(data) => data,
        Err(err) => {
            tracing::debug!(%err, "unreadable payload");
            ack.refuse(ErrorCode::InvalidPayload, format!("body: {}", unreadable(&err)));
            return None;
        }
    };
    match T::parse(data) {
        Ok(request) => Some((request, ack)),
        Err(err) => {
            ack.refuse(ErrorCode::InvalidPayload, err.to_string());
            None
        }
    }
}

/// Why a Socket.IO payload could not be read as JSON, in a client's words
/// (serde_json's position counts from the start of the packet, not of the
/// payload: it is left out).
fn unreadable(err: &socketioxide::ParserError) -> String {
    let text = err.to_string();
    let cause = text.split(" at line ").next().unwrap_or_default();
    if cause.contains("first element not found") {
        "must be a JSON object; none was sent".to_owned()
    } else if cause.contains("byte array") {
        "holds binary data (a Buffer, a Blob, an ArrayBuffer), which is not taken: send JSON".to_owned()
    } else if cause.contains("recursion limit exceeded") {
        "is nested too deep to read".to_owned()
    } else if jobstream_protocol::json::is_surrogate_error(cause) {
        "holds half of a UTF-16 surrogate pair (a character cut in two?): text must be whole Unicode characters"
            .to_owned()
    } else {
        format!("is not readable as JSON: {cause}")
    }
}

fn internal(ack: Ack, err: &dyn std::fmt::Display) {
    tracing::error!(error = %err, "subscription failed");
    ack.refuse(ErrorCode::Internal, "internal error; try again");
}

/// A subscribe whose snapshot could not be read: `unavailable` when the
/// database cannot be reached now (HTTP's 503: try again), else as HTTP answers.
fn read_failed(ack: Ack, err: &ReadError) {
    match err {
        ReadError::Unavailable(source) => {
            tracing::warn!(error = %source, "subscription refused: database unavailable");
            ack.refuse(ErrorCode::Unavailable, "the database is unavailable; try again");
        }
        ReadError::Invalid(source) => {
            tracing::warn!(error = %source, "subscription refused by the database for the request's data");
            ack.refuse(ErrorCode::InvalidPayload, "a value in the request cannot be used");
        }
        ReadError::Internal(source) => internal(ack, source),
    }
}

/// Builds the announcement from the slot holding the ack (left in place if never called).
fn take_ack<T: Serialize + Send + 'static>(slot: &mut Option<Ack>, body: T) -> Announce {
    match slot.take() {
        Some(ack) => ack.announce(body),
        None => Box::new(|| Ok(())),
    }
}

/// Refuses a subscribe once the token has expired (the socket is closing then).
fn refuse_expired(session: &Session, ack: Ack) -> Option<Ack> {
    match expired(session.expires()) {
        Some(refusal) => {
            ack.reply(&refusal);
            None
        }
        None => Some(ack),
    }
}

/// The answer to a subscribe with a token past its `exp`, if it is.
fn expired(expires: Expiry) -> Option<AckError> {
    expires
        .has_passed()
        .then(|| AckError::new(ErrorCode::Unauthorized, "unauthorized: token expired; reconnect with a fresh token"))
}

/// What every subscribe does first: wait for its turn (requests apply in the
/// order sent), parse, refuse after the token's `exp`, then wait for the
/// socket's subscribe permit and byte budget. `None` once it has answered.
async fn subscribe_start<T: Request>(
    socket: &SocketRef,
    data: Result<Value, socketioxide::ParserError>,
    ack: Ack,
    turn: &crate::order::Turn,
) -> Option<(T, Ack, Session, Option<tokio::sync::OwnedSemaphorePermit>)> {
    turn.wait().await;
    let (request, ack) = parse::<T>(data, ack)?;
    let session = session(socket)?;
    let ack = refuse_expired(&session, ack)?;
    let permit = subscribe_turn(&session).await;
    Some((request, ack, session, permit))
}

async fn subscribe_workspace(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    ack: Ack,
    State(app): State<AppState>,
    turn: crate::order::Turn,
) {
    let Some((request, ack, session, permit)) = subscribe_start::<SubscribeWorkspace>(&socket, data, ack, &turn).await
    else {
        return;
    };
    if let Decision::Denied(denial) = authorize(&session.0.claims, Action::Read, &request.workspace_id) {
        return ack.refuse(ErrorCode::Forbidden, denial.reason);
    }
    let room = Room::Workspace(request.workspace_id.clone()).to_string();
    let mut slot = Some(ack);
    let result = session
        .subscriber(&socket, &app)
        .subscribe_workspace(&request.workspace_id, |jobs| {
            with_permit(take_ack(&mut slot, WorkspaceSubscribed { ok: true, room, jobs }), permit)
        })
        .await;
    match (result, slot) {
        (Err(SubscribeError::Read(err)), Some(ack)) => read_failed(ack, &err),
        (Err(SubscribeError::TooManyRooms { limit }), Some(ack)) => ack.reply(&too_many_rooms(&app, limit)),
        (Err(err), Some(ack)) => internal(ack, &err),
        _ => {}
    }
}

async fn unsubscribe_workspace(socket: SocketRef, TryData(data): TryData<Value>, ack: Ack, turn: crate::order::Turn) {
    // Applied in the order the client sent its requests.
    turn.wait().await;
    let Some((request, ack)) = parse::<UnsubscribeWorkspace>(data, ack) else { return };
    let subscriber = session(&socket).and_then(|s| s.0.subscriber.get().cloned());
    forget_subscription(Room::Workspace(request.workspace_id), subscriber, ack).await;
}

async fn subscribe_job(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    ack: Ack,
    State(app): State<AppState>,
    turn: crate::order::Turn,
) {
    let Some((request, ack, session, permit)) = subscribe_start::<SubscribeJob>(&socket, data, ack, &turn).await else {
        return;
    };
    if !session.0.claims.scopes.contains(&jobstream_rooms::Scope::Subscribe) {
        return ack.refuse(ErrorCode::Forbidden, "the token lacks the `subscribe` scope");
    }
    // A job the token cannot read gets the same answer as a job that does not exist.
    let check = |job: &jobstream_protocol::JobSnapshot| {
        if authorize(&session.0.claims, Action::Read, &job.workspace_id).is_allowed() {
            Ok(())
        } else {
            Err(())
        }
    };
    let room = Room::Job(request.job_id).to_string();
    let refuse = unreachable_since(&ack, request.job_id);
    let mut slot = Some(ack);
    let announce = |job| with_permit(take_ack(&mut slot, JobSubscribed { ok: true, room, job }), permit);
    let result = session
        .subscriber(&socket, &app)
        .subscribe_job_or_refuse(request.job_id, request.since, check, announce, Some(refuse))
        .await;
    let (Err(err), Some(ack)) = (result, slot) else { return };
    match err {
        SubscribeError::NotFound | SubscribeError::Refused(()) => {
            ack.refuse(ErrorCode::NotFound, format!("job {} not found", request.job_id));
        }
        SubscribeError::InvalidCursor { since, last_seq } => {
            ack.refuse(ErrorCode::InvalidCursor, format!("since {since} is beyond the job's last seq {last_seq}"));
        }
        SubscribeError::Read(err) => read_failed(ack, &err),
        SubscribeError::TooManyRooms { limit } => ack.reply(&too_many_rooms(&app, limit)),
    }
}

async fn unsubscribe_job(socket: SocketRef, TryData(data): TryData<Value>, ack: Ack, turn: crate::order::Turn) {
    // Applied in the order the client sent its requests.
    turn.wait().await;
    let Some((request, ack)) = parse::<UnsubscribeJob>(data, ack) else { return };
    let subscriber = session(&socket).and_then(|s| s.0.subscriber.get().cloned());
    forget_subscription(Room::Job(request.job_id), subscriber, ack).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscribe_is_refused_from_exp_on() {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let refusal = expired(Expiry::from_secs(now)).map(|ack| serde_json::to_value(ack).unwrap_or_default());
        assert_eq!(refusal.as_ref().map(|a| a["ok"].clone()), Some(Value::Bool(false)));
        assert_eq!(refusal.as_ref().map(|a| a["error"]["code"].clone()), Some(Value::from("unauthorized")));
        assert!(expired(Expiry::from_secs(now - 1)).is_some());
        assert!(expired(Expiry::from_secs(now + 60)).is_none());
    }

    #[test]
    fn an_event_name_means_what_it_says_however_its_json_escaped_it() {
        assert_eq!(event_name("subscribe:job"), "subscribe:job");
        assert_eq!(event_name(r"subscribe:jo\u0062"), "subscribe:job");
        assert_eq!(event_name(r#"a\"b"#), r#"a"b"#);
        assert_eq!(event_name(r"a\\b\n"), "a\\b\n");
        let raw = r#"a\"b"#;
        assert!(unknown_event(raw, &event_name(raw)).starts_with(r#"unknown event "a\"b": the requests are "#));
        let raw = r"x\ud83d";
        assert!(unknown_event(raw, &event_name(raw)).starts_with(r#"unknown event "x\ud83d": "#));
    }
}
