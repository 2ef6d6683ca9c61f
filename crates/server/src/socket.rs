//! The Socket.IO gateway: token check at connect, the subscribe / unsubscribe
//! handlers and their acks, and the socket as a delivery outlet.
//!
//! Handlers are registered in the connect middleware, after the token is
//! accepted and before socketioxide sends CONNECT, so that a subscribe the
//! client sends right after connecting always finds its handler. The delivery
//! worker of a socket starts with its first subscription.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use jobstream_job_events::delivery::{Announce, Outlet, OutletError, SubscribeError, Subscriber};
use jobstream_job_events::Committed;
use jobstream_protocol::requests::Request;
use jobstream_protocol::{
    AckError, ErrorCode, JobSubscribed, Room, SubscribeJob, SubscribeWorkspace, UnsubscribeJob, UnsubscribeWorkspace,
    Unsubscribed, WorkspaceSubscribed,
};
use jobstream_rooms::{authorize, Action, Claims, Decision};
use serde::Serialize;
use serde_json::Value;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::socket::{DisconnectReason, Socket};
use socketioxide::{SendError, SocketError, SocketIo};

use crate::app::AppState;
use crate::auth::{self, TokenError};

/// Registers the `/` namespace: the auth middleware, then the connect handler.
pub fn register(io: &SocketIo) {
    io.ns("/", on_connect.with(authenticate));
}

/// A socket's claims and, once it subscribes, its delivery subscriber.
#[derive(Clone)]
struct Session {
    claims: Arc<Claims>,
    subscriber: Arc<OnceLock<Arc<Subscriber>>>,
}

impl Session {
    /// The socket's subscriber, started on first use.
    fn subscriber(&self, socket: &SocketRef, app: &AppState) -> Arc<Subscriber> {
        self.subscriber.get_or_init(|| Arc::new(app.hub.subscriber(Arc::new(SocketOutlet(socket.clone()))))).clone()
    }
}

/// Why a connection was refused; sent as the `connect_error` message.
#[derive(Debug, thiserror::Error)]
#[error("unauthorized: {0}")]
struct Unauthorized(TokenError);

/// The token of a connecting socket: `auth.token`, else `?token=`, else `Authorization: Bearer`.
fn connect_token(socket: &SocketRef, auth: Option<&Value>) -> Option<String> {
    if let Some(token) = auth.and_then(|a| a.get("token")).and_then(Value::as_str) {
        return Some(token.to_owned());
    }
    let parts = socket.req_parts();
    if let Some(token) = crate::http::extract::query_param(parts.uri.query(), "token") {
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
) -> Result<(), Unauthorized> {
    let token = connect_token(&socket, auth.as_ref().ok()).filter(|t| !t.is_empty());
    let claims = token.ok_or(TokenError::Missing).and_then(|t| auth::verify(&app.secret, &t)).map_err(|err| {
        tracing::debug!(socket = %socket.id, %err, "connection refused");
        Unauthorized(err)
    })?;
    socket.extensions.insert(Session { claims: Arc::new(claims), subscriber: Arc::default() });
    socket.on("subscribe:workspace:jobs", subscribe_workspace);
    socket.on("unsubscribe:workspace:jobs", unsubscribe_workspace);
    socket.on("subscribe:job", subscribe_job);
    socket.on("unsubscribe:job", unsubscribe_job);
    socket.on_disconnect(async |socket: SocketRef, reason: DisconnectReason, State(app): State<AppState>| {
        if let Some(session) = socket.extensions.remove::<Session>() {
            if let Some(subscriber) = session.subscriber.get() {
                subscriber.close();
            }
        }
        app.metrics.connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(socket = %socket.id, ?reason, "disconnected");
    });
    Ok(())
}

async fn on_connect(socket: SocketRef, State(app): State<AppState>) {
    app.metrics.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(socket = %socket.id, "connected");
}

/// The socket as a delivery outlet: `emit` of the pre-encoded event.
struct SocketOutlet(SocketRef);

fn outlet_error(err: &SendError) -> OutletError {
    match err {
        SendError::Socket(SocketError::InternalChannelFull) => OutletError::Full,
        _ => OutletError::Closed,
    }
}

impl Outlet for SocketOutlet {
    fn try_send(&self, committed: &Committed) -> Result<(), OutletError> {
        self.0.emit(committed.event.socket_event().as_str(), &*committed.json).map_err(|e| outlet_error(&e))
    }

    fn close(&self) {
        if self.0.connected() {
            let _ = self.0.clone().disconnect();
        }
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
        let mut unused = socketioxide_core::Value::Bytes(bytes::Bytes::new());
        let Ok(sender) = AckSender::from_message_parts(&self.socket, &mut unused, &self.ack_id);
        sender.send(body)
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

/// Parses the payload, or acks `invalid_payload` and returns `None`.
fn parse<T: Request>(data: Result<Value, socketioxide::ParserError>, ack: Ack) -> Option<(T, Ack)> {
    match T::parse(data.unwrap_or(Value::Null)) {
        Ok(request) => Some((request, ack)),
        Err(err) => {
            ack.refuse(ErrorCode::InvalidPayload, err.to_string());
            None
        }
    }
}

fn session(socket: &SocketRef) -> Option<Session> {
    socket.extensions.get::<Session>()
}

fn internal(ack: Ack, err: &dyn std::fmt::Display) {
    tracing::error!(error = %err, "subscription failed");
    ack.refuse(ErrorCode::Internal, "internal error; try again");
}

/// Builds the announcement from the slot holding the ack (left in place if never called).
fn take_ack<T: Serialize + Send + 'static>(slot: &mut Option<Ack>, body: T) -> Announce {
    match slot.take() {
        Some(ack) => ack.announce(body),
        None => Box::new(|| Ok(())),
    }
}

async fn subscribe_workspace(socket: SocketRef, TryData(data): TryData<Value>, ack: Ack, State(app): State<AppState>) {
    let Some((request, ack)) = parse::<SubscribeWorkspace>(data, ack) else { return };
    let Some(session) = session(&socket) else { return };
    if let Decision::Denied(denial) = authorize(&session.claims, Action::Read, &request.workspace_id) {
        return ack.refuse(ErrorCode::Forbidden, denial.reason);
    }
    let room = Room::Workspace(request.workspace_id.clone()).to_string();
    let mut slot = Some(ack);
    let result = session
        .subscriber(&socket, &app)
        .subscribe_workspace(&request.workspace_id, |jobs| {
            take_ack(&mut slot, WorkspaceSubscribed { ok: true, room, jobs })
        })
        .await;
    if let (Err(err), Some(ack)) = (result, slot) {
        internal(ack, &err);
    }
}

async fn unsubscribe_workspace(socket: SocketRef, TryData(data): TryData<Value>, ack: Ack) {
    let Some((request, ack)) = parse::<UnsubscribeWorkspace>(data, ack) else { return };
    if let Some(subscriber) = session(&socket).and_then(|s| s.subscriber.get().cloned()) {
        subscriber.unsubscribe(Room::Workspace(request.workspace_id)).await;
    }
    ack.reply(&Unsubscribed { ok: true });
}

async fn subscribe_job(socket: SocketRef, TryData(data): TryData<Value>, ack: Ack, State(app): State<AppState>) {
    let Some((request, ack)) = parse::<SubscribeJob>(data, ack) else { return };
    let Some(session) = session(&socket) else { return };
    if !session.claims.scopes.contains(&jobstream_rooms::Scope::Subscribe) {
        return ack.refuse(ErrorCode::Forbidden, "the token lacks the `subscribe` scope");
    }
    let claims = session.claims.clone();
    // A job the token cannot read gets the same answer as a job that does not exist.
    let check = |job: &jobstream_protocol::JobSnapshot| {
        if authorize(&claims, Action::Read, &job.workspace_id).is_allowed() {
            Ok(())
        } else {
            Err(())
        }
    };
    let room = Room::Job(request.job_id).to_string();
    let mut slot = Some(ack);
    let result = session
        .subscriber(&socket, &app)
        .subscribe_job(request.job_id, request.since, check, |job| {
            take_ack(&mut slot, JobSubscribed { ok: true, room, job })
        })
        .await;
    let (Err(err), Some(ack)) = (result, slot) else { return };
    match err {
        SubscribeError::NotFound | SubscribeError::Refused(()) => {
            ack.refuse(ErrorCode::NotFound, format!("job {} not found", request.job_id));
        }
        SubscribeError::InvalidCursor { since, last_seq } => {
            ack.refuse(ErrorCode::InvalidCursor, format!("since {since} is beyond the job's last seq {last_seq}"));
        }
        SubscribeError::Read(err) => internal(ack, &err),
    }
}

async fn unsubscribe_job(socket: SocketRef, TryData(data): TryData<Value>, ack: Ack) {
    let Some((request, ack)) = parse::<UnsubscribeJob>(data, ack) else { return };
    if let Some(subscriber) = session(&socket).and_then(|s| s.subscriber.get().cloned()) {
        subscriber.unsubscribe(Room::Job(request.job_id)).await;
    }
    ack.reply(&Unsubscribed { ok: true });
}
