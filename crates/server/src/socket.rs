//! The Socket.IO gateway: token check at connect, the subscribe / unsubscribe
//! handlers and their acks, and the socket as a delivery outlet.

use std::sync::Arc;

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
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;
use socketioxide::{SendError, SocketError, SocketIo};

use crate::app::AppState;
use crate::auth::{self, TokenError};

/// Registers the `/` namespace: the auth middleware, then the handlers.
pub fn register(io: &SocketIo) {
    io.ns("/", on_connect.with(authenticate));
}

/// The claims of a connected socket, kept in its extensions.
#[derive(Clone)]
struct Session {
    claims: Arc<Claims>,
    subscriber: Arc<Subscriber>,
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

/// Connect middleware: refuses sockets without a valid token, so no handler runs for them.
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
    socket.extensions.insert(Arc::new(claims));
    Ok(())
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

async fn on_connect(socket: SocketRef, State(app): State<AppState>) {
    let Some(claims) = socket.extensions.get::<Arc<Claims>>() else {
        // The middleware always sets the claims; without them, refuse to serve.
        let _ = socket.disconnect();
        return;
    };
    let subscriber = Arc::new(app.hub.subscriber(Arc::new(SocketOutlet(socket.clone()))));
    socket.extensions.insert(Session { claims, subscriber });
    tracing::debug!(socket = %socket.id, "connected");
    socket.on("subscribe:workspace:jobs", subscribe_workspace);
    socket.on("unsubscribe:workspace:jobs", unsubscribe_workspace);
    socket.on("subscribe:job", subscribe_job);
    socket.on("unsubscribe:job", unsubscribe_job);
    socket.on_disconnect(async |socket: SocketRef, reason: DisconnectReason| {
        if let Some(session) = socket.extensions.remove::<Session>() {
            session.subscriber.close();
        }
        tracing::debug!(socket = %socket.id, ?reason, "disconnected");
    });
}

/// Sends an ack (errors: the client is gone or not reading; nothing to do).
fn reply<T: Serialize + ?Sized>(ack: AckSender, body: &T) {
    if let Err(err) = ack.send(body) {
        tracing::debug!(%err, "ack not sent");
    }
}

fn refuse(ack: AckSender, code: ErrorCode, message: impl Into<String>) {
    reply(ack, &AckError::new(code, message));
}

/// Parses the payload, or acks `invalid_payload` and returns `None`.
fn parse<T: Request>(data: Result<Value, socketioxide::ParserError>, ack: AckSender) -> Option<(T, AckSender)> {
    let value = data.unwrap_or(Value::Null);
    match T::parse(value) {
        Ok(request) => Some((request, ack)),
        Err(err) => {
            refuse(ack, ErrorCode::InvalidPayload, err.to_string());
            None
        }
    }
}

fn session(socket: &SocketRef) -> Option<Session> {
    socket.extensions.get::<Session>()
}

/// An ack sent by the delivery worker, before the events it announces.
fn announce_ack<T: Serialize + Send + 'static>(ack: AckSender, body: T) -> Announce {
    Box::new(move || ack.send(&body).map_err(|e| outlet_error(&e)))
}

fn internal(ack: AckSender, err: &dyn std::fmt::Display) {
    tracing::error!(error = %err, "subscription failed");
    refuse(ack, ErrorCode::Internal, "internal error; try again");
}

/// Builds the ack announcement from the slot holding the ack (left in place if never called).
fn take_ack<T: Serialize + Send + 'static>(slot: &mut Option<AckSender>, body: T) -> Announce {
    match slot.take() {
        Some(ack) => announce_ack(ack, body),
        None => Box::new(|| Ok(())),
    }
}

async fn subscribe_workspace(socket: SocketRef, TryData(data): TryData<Value>, ack: AckSender) {
    let Some((request, ack)) = parse::<SubscribeWorkspace>(data, ack) else {
        return;
    };
    let Some(session) = session(&socket) else {
        return;
    };
    if let Decision::Denied(denial) = authorize(&session.claims, Action::Read, &request.workspace_id) {
        return refuse(ack, ErrorCode::Forbidden, denial.reason);
    }
    let room = Room::Workspace(request.workspace_id.clone()).to_string();
    let mut slot = Some(ack);
    let result = session
        .subscriber
        .subscribe_workspace(&request.workspace_id, |jobs| {
            take_ack(&mut slot, WorkspaceSubscribed { ok: true, room, jobs })
        })
        .await;
    if let (Err(err), Some(ack)) = (result, slot) {
        internal(ack, &err);
    }
}

async fn unsubscribe_workspace(socket: SocketRef, TryData(data): TryData<Value>, ack: AckSender) {
    let Some((request, ack)) = parse::<UnsubscribeWorkspace>(data, ack) else {
        return;
    };
    if let Some(session) = session(&socket) {
        session.subscriber.unsubscribe(Room::Workspace(request.workspace_id)).await;
    }
    reply(ack, &Unsubscribed { ok: true });
}

async fn subscribe_job(socket: SocketRef, TryData(data): TryData<Value>, ack: AckSender) {
    let Some((request, ack)) = parse::<SubscribeJob>(data, ack) else {
        return;
    };
    let Some(session) = session(&socket) else {
        return;
    };
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
        .subscriber
        .subscribe_job(request.job_id, request.since, check, |job| {
            take_ack(&mut slot, JobSubscribed { ok: true, room, job })
        })
        .await;
    let (Err(err), Some(ack)) = (result, slot) else {
        return;
    };
    match err {
        SubscribeError::NotFound | SubscribeError::Refused(()) => {
            refuse(ack, ErrorCode::NotFound, format!("job {} not found", request.job_id));
        }
        SubscribeError::InvalidCursor { since, last_seq } => {
            refuse(ack, ErrorCode::InvalidCursor, format!("since {since} is beyond the job's last seq {last_seq}"));
        }
        SubscribeError::Read(err) => internal(ack, &err),
    }
}

async fn unsubscribe_job(socket: SocketRef, TryData(data): TryData<Value>, ack: AckSender) {
    let Some((request, ack)) = parse::<UnsubscribeJob>(data, ack) else {
        return;
    };
    if let Some(session) = session(&socket) {
        session.subscriber.unsubscribe(Room::Job(request.job_id)).await;
    }
    reply(ack, &Unsubscribed { ok: true });
}
