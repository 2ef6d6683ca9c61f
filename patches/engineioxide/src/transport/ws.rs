//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Other functions are used internally to handle the websocket connection through tasks and channels
//! and to handle upgrade from polling to ws

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures_util::{
    FutureExt, Sink, SinkExt, StreamExt, TryStreamExt,
};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use smallvec::smallvec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};
use tokio_util::future::FutureExt as _;

use engineioxide_core::{Packet, PacketBuf, ProtocolVersion, Sid, Str, TransportType};
use tokio::sync::{Notify, mpsc};

use crate::{
    DisconnectReason, Socket,
    body::ResponseBody,
    config::EngineIoConfig,
    direct::{DirectError, DirectWrite, DirectWriter, EncodedMessage},
    engine::EngineIo,
    errors::Error, handler::EngineIoHandler, socket::InternalRx, transport::make_open_packet,
};

/// Create a response for websocket upgrade
fn ws_response<B>(ws_key: &HeaderValue) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec)
        .body(ResponseBody::empty_response())
        .unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts.clone(), body);

    let ws_key = parts
        .headers
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();
    // The parts kept with the session, for its life: without what only the
    // handshake needs (the key; hyper's upgrade handle, which the request
    // above keeps).
    let mut parts = parts;
    parts.headers.remove(http::header::SEC_WEBSOCKET_KEY);
    if parts.headers.is_empty() {
        parts.headers = http::HeaderMap::new();
    }
    parts.extensions.remove::<hyper::upgrade::OnUpgrade>();

    // Boxed apart from the connection's task: the request is needed only until
    // the session is open, and the spawned future keeps nothing of it.
    let opening = {
        let engine = engine.clone();
        Box::pin(async move {
            match hyper::upgrade::on(req).await {
                Ok(conn) => open_session(&engine, hyper_util::rt::TokioIo::new(conn), protocol, sid, parts)
                    .await
                    .map(Some),
                Err(_e) => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!("ws upgrade error: {}", _e);
                    Ok(None)
                }
            }
        })
    };
    tokio::spawn(async move {
        let res = match opening.await {
            Ok(Some(opened)) => {
                serve_session(&engine, opened).await;
                Ok(())
            }
            Ok(None) => return,
            Err(e) => Err(e),
        };

        match res {
            Ok(_) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed")
            }
            Err(Error::MultipleWebsocketRequests) => {}
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed with error: {_e}");
                if let Some(sid) = sid {
                    engine.close_session(sid, DisconnectReason::TransportError);
                }
            }
        }
    });

    Ok(ws_response(&ws_key))
}

/// Handle a websocket connection upgrade
///
/// Sends an open packet if it is not an upgrade from a polling request
///
/// Read packets from the websocket and handle them, it will block until the connection is closed
///
/// (No `tracing::instrument` here: it stores the body's future twice in the
/// one it returns, which lives as long as the connection.)
pub async fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The handshake runs in its own allocation, freed once it is done: its
    // state (the stream by value, the upgrade's timer) would otherwise size
    // this future, which lives as long as the connection. (A statement of
    // its own: as a temporary of the statement that awaits it, the unboxed
    // future would still take room in this one.)
    let opening = Box::pin(open_session(&engine, conn, protocol, sid, req_data));
    let opened = opening.await?;
    serve_session(&engine, opened).await;
    Ok(())
}

/// A websocket connection's session, once open: the session, the stream
/// behind its lock, the heartbeat's interval and timeout when the
/// connection's task is to run it, and the slot for direct writes, if the
/// request carried one. (All small: it is kept in the connection's future.)
struct Opened<D: Default + Send + Sync + 'static, S> {
    socket: Arc<Socket<D>>,
    ws: Arc<WsWriter<S, D>>,
    heartbeat: Option<(std::time::Duration, std::time::Duration)>,
    direct: Option<DirectWriter>,
}

/// Serves an open websocket session until it ends. The reader, the writer
/// and (for a session opened on this websocket) the heartbeat share the
/// caller's task: one task per connection.
///
/// (A function returning the joined futures, not an `async fn`: that would
/// keep its arguments twice, and this future lives as long as the connection.)
fn serve_session<'a, H: EngineIoHandler, S>(
    engine: &'a Arc<EngineIo<H>>,
    opened: Opened<H::Data, S>,
) -> impl Future<Output = ()> + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Opened { socket, ws, heartbeat, direct } = opened;
    let read = read_until_closed(engine, ws.clone(), socket.clone(), heartbeat);
    futures_util::future::join(read, forward_to_socket::<H, S>(socket, ws, direct)).map(|_| ())
}

pin_project_lite::pin_project! {
    /// Reads the connection and runs the heartbeat (if given) until the
    /// session ends, then closes the session with the reason (see
    /// [`read_until_closed`]). Written out, not an `async fn`: it lives as
    /// long as the connection, and an `async fn` around the same `select!`
    /// kept its arguments, and the futures it awaits, twice.
    struct ReadUntilClosed<'a, H: EngineIoHandler, R, B> {
        engine: &'a Arc<EngineIo<H>>,
        socket: Arc<Socket<H::Data>>,
        #[pin]
        cancelled: tokio_util::sync::WaitForCancellationFutureOwned,
        #[pin]
        read: R,
        #[pin]
        heartbeat: Option<B>,
    }
}

impl<H, R, B> Future for ReadUntilClosed<'_, H, R, B>
where
    H: EngineIoHandler,
    R: Future<Output = Result<(), Error>>,
    B: Future<Output = ()>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        // The session's end first, then the reader, then the heartbeat.
        if this.cancelled.poll(cx).is_ready() {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %this.socket.id, "socket is closing");
            return Poll::Ready(());
        }
        let read = match this.read.poll(cx) {
            Poll::Ready(read) => read,
            Poll::Pending => match this.heartbeat.as_pin_mut() {
                Some(heartbeat) => {
                    std::task::ready!(heartbeat.poll(cx));
                    Ok(())
                }
                None => return Poll::Pending,
            },
        };
        let socket = &*this.socket;
        match read {
            Err(ref e) => {
                let reason =
                    Option::<DisconnectReason>::from(e).unwrap_or(DisconnectReason::TransportError);

                #[cfg(feature = "tracing")]
                tracing::debug!("error when handling packet: {:?}", e);
                this.engine.close_session(socket.id, reason);
            }
            Ok(()) => {
                if !socket.cancellation_token.is_cancelled() {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(sid = %socket.id, "ws transport was closed");
                    this.engine.close_session(socket.id, DisconnectReason::TransportClose);
                }
            }
        }
        Poll::Ready(())
    }
}

/// Reads the connection (and runs the heartbeat, if given) until the session
/// ends, then closes the session with the reason.
fn read_until_closed<'a, H: EngineIoHandler, S>(
    engine: &'a Arc<EngineIo<H>>,
    ws: Arc<WsWriter<S, H::Data>>,
    socket: Arc<Socket<H::Data>>,
    heartbeat: Option<(std::time::Duration, std::time::Duration)>,
) -> impl Future<Output = ()> + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cancelled = socket.cancellation_token.clone().cancelled_owned();
    let heartbeat = heartbeat.map(|(interval, timeout)| socket.heartbeat(interval, timeout));
    let read = forward_to_handler(engine.clone(), ws, socket.clone());
    ReadUntilClosed { engine, socket, cancelled, read, heartbeat }
}

/// The session of a new websocket connection: a new one (after sending the
/// open packet), or the polling session it upgrades.
async fn open_session<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    mut req_data: Parts,
) -> Result<Opened<H::Data, S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let direct = req_data.extensions.remove::<DirectWriter>();
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(engine.config.ws_read_buffer_size)
        .max_message_size(Some(engine.config.ws_max_message_size))
        .max_frame_size(Some(engine.config.ws_max_frame_size));

    let ws_init = move || WebSocketStream::from_raw_socket(Backlogged::new(conn), Role::Server, Some(ws_config));
    if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let mut ws = ws_init().await;

                let upgrade_fut = upgrade_handshake::<H, Backlogged<S>>(&socket, &mut ws);
                match tokio::time::timeout(engine.config.upgrade_timeout, upgrade_fut)
                    .with_cancellation_token(&socket.cancellation_token)
                    .await
                {
                    Some(Ok(res)) => res?,
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        return Err(Error::Upgrade);
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        return Err(Error::Upgrade);
                    }
                }
                // The heartbeat moves into the connection's task (EIO 4):
                // its own task, spawned with the polling session, stops. It
                // starts again with a ping, as a fresh session's does.
                let moved = socket.protocol == ProtocolVersion::V4 && socket.stop_heartbeat_task();
                let heartbeat = moved.then_some((engine.config.ping_interval, engine.config.ping_timeout));
                Ok(Opened { ws: WsWriter::new(ws, &socket), socket, heartbeat, direct })
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let mut ws = ws_init().await;
        init_handshake(socket.id, &mut ws, &engine.config).await?;
        let (interval, timeout) = (engine.config.ping_interval, engine.config.ping_timeout);
        let heartbeat = if socket.protocol == ProtocolVersion::V4 {
            Some((interval, timeout))
        } else {
            socket.clone().spawn_heartbeat(interval, timeout);
            None
        };
        // One lock for the reader, the writer and direct writes: a direct
        // write never finds the stream half-locked (as with `split`, where it
        // would have to wait for the reader's task).
        Ok(Opened { ws: WsWriter::new(ws, &socket), socket, heartbeat, direct })
    }
}

/// Forwards all packets received from a websocket to a EngineIo [`Socket`]
///
/// (An `async` block, not an `async fn`: the arguments are kept once.)
fn forward_to_handler<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    ws: Arc<WsWriter<S, H::Data>>,
    socket: Arc<Socket<H::Data>>,
) -> impl Future<Output = Result<(), Error>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        while let Some(msg) = std::future::poll_fn(|cx| ws.read(cx)).await.transpose()? {
            match msg {
                Message::Text(msg) => match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
                    Packet::Close => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!("[sid={}] closing session", socket.id);
                        engine.close_session(socket.id, DisconnectReason::TransportClose);
                        break;
                    }
                    Packet::Pong | Packet::Ping => {
                        // A signal already pending means the client is already known to be alive.
                        socket.heartbeat_signal.notify_one();
                        Ok::<(), Error>(())
                    }
                    Packet::Message(msg) => {
                        engine.handler.on_message(msg, socket.clone());
                        Ok(())
                    }
                    p => return Err(Error::BadPacket(p)),
                },
                Message::Binary(mut data) => {
                    if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                        // The first byte is the message type, which we don't need.
                        data = data.split_off(1);
                    }
                    engine.handler.on_binary(data, socket.clone());
                    Ok(())
                }
                Message::Close(_) => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!("websocket closed, closing session");
                    engine.close_session(socket.id, DisconnectReason::TransportClose);
                    break;
                }
                _ => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(sid = ?socket.id, "unexpected ws message");
                    Ok(())
                }
            }?
        }
        Ok(())
    }
}

/// The write half of a websocket connection, shared by its writer task and
/// by direct writers ([`DirectWriter`]).
struct WsOut<S> {
    sink: WebSocketStream<Backlogged<S>>,
    /// Messages taken from the socket's channel, not yet given to the sink.
    queue: VecDeque<Message>,
    /// The sink may hold bytes that are not flushed yet.
    dirty: bool,
    /// The writer has stopped: nothing more is written.
    closed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsOut<S> {
    /// Writes a complete frame after whatever the stream holds: that is
    /// flushed first (pending while it cannot be), then the frame goes to the
    /// connection as it is, without tungstenite's buffer (what the connection
    /// cannot take now waits in the backlog, ahead of anything written after
    /// it). `Err` when the connection has failed.
    fn write_frame(&mut self, frame: &[u8], cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        std::task::ready!(self.flush_held(cx))?;
        let written = self.sink.get_mut().write_frame(frame, cx);
        if self.sink.get_ref().has_backlog() {
            self.dirty = true;
        }
        Poll::Ready(written.map_err(|_| ()))
    }

    /// Flushes what the stream holds (a pong, a close, a backlog), if
    /// anything: ready once nothing is held, `Err` when the connection failed.
    fn flush_held(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        if self.dirty {
            match Pin::new(&mut self.sink).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.dirty = false,
                Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Frames the text messages at the front of the queue, as many as fit in
    /// [`WRITE_BATCH`] bytes (at least one), and writes them as one write:
    /// a socket that is sent many messages at once (a replay) costs one
    /// system call per batch, not one per message. Pending (nothing taken)
    /// while what the stream holds cannot be flushed.
    fn write_texts(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if std::task::ready!(self.flush_held(cx)).is_err() {
            // The connection failed: what is queued cannot be written.
            self.queue.clear();
            return Poll::Ready(());
        }
        let mut batch = Vec::new();
        while let Some(Message::Text(text)) = self.queue.front() {
            if !batch.is_empty() && batch.len() + text.len() > WRITE_BATCH {
                break;
            }
            crate::direct::push_text_frame(&mut batch, b"", text.as_bytes());
            self.queue.pop_front();
        }
        if let Poll::Ready(Err(())) = self.write_frame(&batch, cx) {
            #[cfg(feature = "tracing")]
            tracing::debug!("error sending packet: the connection failed");
        }
        Poll::Ready(())
    }
}

/// The most messages the writer takes from the socket's channel before
/// writing what it took.
const DRAIN_BATCH: usize = 256;

/// The most bytes of text frames the writer puts in one write (a larger
/// message is written alone).
const WRITE_BATCH: usize = 64 * 1024;

/// A websocket connection's writer: the socket's channel drains into the sink
/// under `out`'s lock, and a direct write takes the same lock and goes only
/// when the channel and `queue` are empty, so that it never overtakes a
/// packet sent before it.
struct WsWriter<S, D: Default + Send + Sync + 'static> {
    out: std::sync::Mutex<WsOut<S>>,
    /// Wakes the writer task: a direct write left something for it to finish
    /// (a flush, or a wake-up it may have replaced).
    wake: Notify,
    /// The socket's channel: a direct write checks that it is empty. Held
    /// here rather than through the socket, so that a write touches one object
    /// less; a `Sender`, not a `WeakSender`, whose upgrade and drop for every
    /// write were two atomic read-modify-writes on the channel's sender count.
    /// It keeps the channel open no longer than it was: the socket, whose own
    /// sender this is a clone of, outlives the connection's task, which owns
    /// this writer (direct writers hold it weakly).
    tx: mpsc::Sender<Box<PacketBuf>>,
    socket: std::marker::PhantomData<fn() -> D>,
}

impl<S, D> WsWriter<S, D>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    D: Default + Send + Sync + 'static,
{
    fn new(ws: WebSocketStream<Backlogged<S>>, socket: &Arc<Socket<D>>) -> Arc<Self> {
        Arc::new(WsWriter {
            out: std::sync::Mutex::new(WsOut { sink: ws, queue: VecDeque::new(), dirty: false, closed: false }),
            wake: Notify::new(),
            tx: socket.internal_tx.clone(),
            socket: std::marker::PhantomData,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WsOut<S>> {
        self.out.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the next message. Reading may queue a reply in the stream (a
    /// pong, a close), so the stream is then dirty until flushed.
    fn read(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, tungstenite::Error>>> {
        let mut out = self.lock();
        out.dirty = true;
        out.sink.try_poll_next_unpin(cx)
    }

    /// Moves the socket's channel into the sink and flushes it. Ready when the
    /// channel is closed; pending otherwise, with the task registered for
    /// whatever it waits on.
    fn drive(&self, buffered_rx: &mut mpsc::Receiver<Box<PacketBuf>>, protocol: ProtocolVersion, cx: &mut Context<'_>) -> Poll<()> {
        let mut out = self.lock();
        let out = &mut *out;
        let mut closed = false;
        loop {
            // What the channel holds now goes into the queue first, so that
            // it is written in as few writes as it takes.
            while !closed && out.queue.len() < DRAIN_BATCH {
                match buffered_rx.poll_recv(cx) {
                    Poll::Ready(Some(packets)) => {
                        for packet in *packets {
                            out.queue.extend(packet_to_message(packet, protocol));
                        }
                    }
                    Poll::Ready(None) => closed = true,
                    Poll::Pending => break,
                }
            }
            let Some(msg) = out.queue.front() else { break };
            if let Message::Text(_) = msg {
                // Framed here and written as a direct write is: the stream's
                // own write buffer, which would keep the capacity of the
                // largest message for the connection's life, is left empty.
                std::task::ready!(out.write_texts(cx));
                continue;
            }
            match Pin::new(&mut out.sink).poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {
                    if let Some(msg) = out.queue.pop_front() {
                        if let Err(_e) = Pin::new(&mut out.sink).start_send(msg) {
                            #[cfg(feature = "tracing")]
                            tracing::debug!("error sending packet: {}", _e);
                        }
                        out.dirty = true;
                    }
                }
                Poll::Ready(Err(_e)) => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!("error sending packet: {}", _e);
                    out.queue.pop_front();
                }
            }
        }
        if closed {
            return Poll::Ready(());
        }
        if out.queue.capacity() > 0 {
            // All written: an idle connection keeps no queue.
            out.queue = VecDeque::new();
        }
        if out.dirty {
            #[cfg(feature = "tracing")]
            tracing::trace!("ws flush");
            match Pin::new(&mut out.sink).poll_flush(cx) {
                Poll::Ready(Ok(())) => out.dirty = false,
                // The connection failed with bytes still held: nothing more
                // can be written, so direct writes are refused from now on
                // (instead of piling up behind bytes that never leave).
                Poll::Ready(Err(_)) => out.closed = true,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// Queues packets that bypass the channel (volatile ones).
    fn push(&self, packets: PacketBuf, protocol: ProtocolVersion) {
        let mut out = self.lock();
        for packet in packets {
            out.queue.extend(packet_to_message(packet, protocol));
        }
    }

    /// Flushes and closes the sink; direct writes are refused from now on.
    async fn close(&self) {
        self.lock().closed = true;
        std::future::poll_fn(|cx| {
            let mut out = self.lock();
            let out = &mut *out;
            while !out.queue.is_empty() {
                if let Poll::Ready(ready) = Pin::new(&mut out.sink).poll_ready(cx) {
                    let msg = out.queue.pop_front();
                    if let (Ok(()), Some(msg)) = (ready, msg) {
                        Pin::new(&mut out.sink).start_send(msg).ok();
                    }
                } else {
                    return Poll::Pending;
                }
            }
            Pin::new(&mut out.sink).poll_flush(cx)
        })
        .await
        .ok();
        std::future::poll_fn(|cx| Pin::new(&mut self.lock().sink).poll_close(cx)).await.ok();
    }
}

impl<S, D> DirectWrite for WsWriter<S, D>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    D: Default + Send + Sync + 'static,
{
    fn try_write(&self, msg: &EncodedMessage) -> Result<(), DirectError> {
        // A direct write is one non-blocking attempt made from the caller's
        // task, often for many sockets in one poll: it must not spend (and,
        // past tokio's budget, be refused by) that task's cooperative budget.
        let attempt = std::future::poll_fn(|_| Poll::Ready(self.write_now(msg)));
        tokio::task::unconstrained(attempt).now_or_never().unwrap_or(Err(DirectError::Busy))
    }
}

impl<S, D> WsWriter<S, D>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    D: Default + Send + Sync + 'static,
{
    fn write_now(&self, msg: &EncodedMessage) -> Result<(), DirectError> {
        let tx = &self.tx;
        let mut out = self.lock();
        if out.closed {
            return Err(DirectError::Unavailable);
        }
        // Anything sent before this message and not yet in the sink (in the
        // channel, reserved in it, or taken from it) must go first.
        if !out.queue.is_empty() || tx.capacity() != tx.max_capacity() {
            return Err(DirectError::Busy);
        }
        // Polled without a task: whatever this registers replaces the writer
        // task's wake-up, so the task is woken to poll again when anything is
        // left pending (or was pending before).
        let mut cx = Context::from_waker(Waker::noop());
        let was_dirty = out.dirty;
        let written = out.write_frame(&msg.frame, &mut cx);
        let wake = was_dirty || out.dirty;
        drop(out);
        if wake {
            self.wake.notify_one();
        }
        match written {
            Poll::Ready(written) => written.map_err(|()| DirectError::Unavailable),
            Poll::Pending => Err(DirectError::Busy),
        }
    }
}

/// The connection under the WebSocket stream, with the bytes of direct writes
/// it could not take at once. They go out before anything written after them.
struct Backlogged<S> {
    inner: S,
    backlog: Vec<u8>,
}

impl<S: AsyncWrite + Unpin> Backlogged<S> {
    fn new(inner: S) -> Self {
        Self { inner, backlog: Vec::new() }
    }

    fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Writes a whole frame now, or what the connection takes of it and the
    /// rest into the backlog. Only called when nothing is buffered above.
    fn write_frame(&mut self, frame: &[u8], cx: &mut Context<'_>) -> std::io::Result<()> {
        if self.backlog.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, frame) {
                Poll::Ready(Ok(n)) if n == frame.len() => return Ok(()),
                Poll::Ready(Ok(n)) => self.backlog.extend_from_slice(&frame[n..]),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => self.backlog.extend_from_slice(frame),
            }
        } else {
            self.backlog.extend_from_slice(frame);
        }
        Ok(())
    }

    /// Writes the backlog out; ready once it is empty.
    fn poll_backlog(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.backlog.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.backlog) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.backlog.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.backlog.capacity() > 0 {
            // Written out: the connection keeps no buffer while it is idle.
            self.backlog = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Backlogged<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Backlogged<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_backlog(cx))?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_backlog(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_backlog(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Maps a packet to a websocket message (`None` for a packet that is not sent
/// over websocket).
fn packet_to_message(packet: Packet, protocol: ProtocolVersion) -> Option<Message> {
    match packet {
        Packet::Binary(bin) | Packet::BinaryV3(bin) => {
            if protocol == ProtocolVersion::V3 {
                // v3 protocol requires packet type as the first byte.
                // This requires a new buffer. This is OK as it is only for the V3 protocol.
                let mut buff = Vec::with_capacity(bin.len() + 1);
                buff.push(0x04);
                buff.extend(bin);
                Some(Message::Binary(buff.into()))
            } else {
                Some(Message::Binary(bin))
            }
        }
        // A Noop Packet maybe sent by the server to upgrade from a polling connection
        // In the case that the packet was not poll in time it will remain in the buffer and therefore
        // it should be discarded here
        Packet::Noop => None,
        packet => {
            let packet: String = packet.try_into().ok()?;
            Some(Message::Text(packet.into()))
        }
    }
}

/// Forwards all packets waiting to be sent to the websocket
///
/// The websocket stream is flushed only when the internal channel is drained.
/// Once running, it fills `direct` (if the request carried one) so that
/// pre-encoded messages can be written without the channel.
///
/// (An `async` block, not an `async fn`: the arguments are kept once in this
/// future, which lives as long as the connection.)
fn forward_to_socket<H: EngineIoHandler, S>(
    socket: Arc<Socket<H::Data>>,
    writer: Arc<WsWriter<S, H::Data>>,
    direct: Option<DirectWriter>,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        // A polling request that was in progress during the upgrade may still hold the lock.
        let lock = socket.internal_rx.lock();
        let Some(mut internal_rx) = lock
            .with_cancellation_token(&socket.cancellation_token)
            .await
        else {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "session closed before starting the ws writer");
            return;
        };
        let InternalRx {
            buffered_rx,
            peeked_packet,
        } = &mut *internal_rx;

        // The packet the last poll took from the channel but could not fit in its
        // payload was sent before anything still in the channel: it goes first
        // (and before any direct write, which waits for the writer's queue).
        if let Some(packets) = peeked_packet.take() {
            writer.push(packets, socket.protocol);
        }

        if let Some(direct) = direct {
            let writer: Arc<dyn DirectWrite> = writer.clone();
            direct.fill(Arc::downgrade(&writer));
        }
        let protocol = socket.protocol;

        // Forward buffered packets until the channel is closed or the session is cancelled.
        loop {
            tokio::select! {
                biased;
                () = std::future::poll_fn(|cx| writer.drive(buffered_rx, protocol, cx)) => break,
                _ = socket.cancellation_token.cancelled() => break,
                packets = socket.volatile.next() => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(sid = ?socket.id, "ws volatile flush: {} packets", packets.len());
                    writer.push(packets, protocol);
                },
                () = writer.wake.notified() => {}
            }
        }

        #[cfg(feature = "tracing")]
        tracing::trace!(sid = %socket.id, "ws closing flush");

        writer.close().await;
    }
}
/// Send a Engine.IO [`OpenPacket`] to initiate a websocket connection
async fn init_handshake<S>(
    sid: Sid,
    ws: &mut WebSocketStream<S>,
    config: &EngineIoConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let packet = Packet::Open(make_open_packet(TransportType::Websocket, sid, config));
    let packet: String = packet.into();
    ws.send(Message::Text(packet.into())).await?;
    Ok(())
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, ws))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    // A poll waits only on an empty channel: a full one (packets that no poll
    // takes now, since polls are answered with a Noop while upgrading) has no
    // poll to close, and waiting for room in it would wait until the upgrade
    // times out.
    match socket.internal_tx.try_send(Box::new(smallvec![Packet::Noop])) {
        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
        Err(mpsc::error::TrySendError::Closed(_)) => return Err(Error::Upgrade),
    }

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.internal_rx.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        _ => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            ws.send(Message::Text(String::from(Packet::PongUpgrade).into()))
                .await?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        Some(Ok(Message::Close(_))) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed before upgrade");
            Err(Error::Upgrade)?
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

fn ws_bytes_to_str(bytes: tungstenite::Utf8Bytes) -> Str {
    // SAFETY: the bytes are guaranteed to be valid UTF-8 by the tungstenite parser
    unsafe { Str::from_bytes_unchecked(bytes.into()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::Request;
    use tokio::io::DuplexStream;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[derive(Debug)]
    struct StubHandler;
    impl EngineIoHandler for StubHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    fn socket() -> Arc<Socket<()>> {
        Arc::new(Socket::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ))
    }

    async fn ws_pair() -> (WebSocketStream<Backlogged<DuplexStream>>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1024);
        (
            WebSocketStream::from_raw_socket(Backlogged::new(server), Role::Server, None).await,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    /// A polling request can still hold the lock at the end of an upgrade.
    #[tokio::test]
    async fn writer_waits_for_the_lock_of_a_polling_request() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let ws = WsWriter::new(server, &socket);

        let polling = socket.internal_rx.lock().await;
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(socket.clone(), ws, None));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished(), "the writer should wait for the lock");

        drop(polling);
        socket.emit(Str::from("hello")).unwrap();
        let msg = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("the writer should send the packet")
            .unwrap()
            .unwrap();
        assert_eq!(msg, Message::text("4hello"));
    }

    #[tokio::test]
    async fn writer_waiting_for_the_lock_stops_with_the_session() {
        let socket = socket();
        let (server, _client) = ws_pair().await;
        let ws = WsWriter::new(server, &socket);

        let _polling = socket.internal_rx.lock().await;
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(socket.clone(), ws, None));
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("the writer should stop")
            .unwrap();
    }

    /// The writer frames text messages itself: short, 16-bit and 64-bit
    /// lengths arrive whole and in order, between messages tungstenite writes
    /// (a pong the reader queued, say), and nothing stays buffered after.
    /// A socket of a 2-packet channel, recording why it was closed.
    fn small_socket() -> (Arc<Socket<()>>, Arc<std::sync::Mutex<Vec<DisconnectReason>>>) {
        let reasons = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = reasons.clone();
        let config = EngineIoConfig::builder().max_buffer_size(2).build();
        let socket = Arc::new(Socket::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &config,
            Request::<()>::default().into_parts().0,
            Box::new(move |_, reason| recorded.lock().unwrap().push(reason)),
            false,
        ));
        (socket, reasons)
    }

    /// A full channel is a client behind on what it was sent, not a dead
    /// one: the ping waits for room instead of closing the socket.
    #[tokio::test]
    async fn a_ping_waits_for_room_in_a_full_channel_instead_of_closing_the_socket() {
        let (socket, reasons) = small_socket();
        while socket.emit(Str::from("backlog")).is_ok() {}
        let heartbeat = {
            let socket = socket.clone();
            tokio::spawn(async move { socket.heartbeat(Duration::from_millis(50), Duration::from_millis(400)).await })
        };
        // The client reads slowly: the channel stays full past several ping
        // ticks, then drains, the ping comes out after the backlog, and the
        // client answers it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut rx = socket.internal_rx.lock().await;
        let mut got = Vec::new();
        while got.last() != Some(&Packet::Ping) {
            let packets = tokio::time::timeout(TIMEOUT, rx.buffered_rx.recv()).await.expect("a packet").unwrap();
            got.extend(packets.into_iter());
        }
        assert_eq!(got.len(), 3, "the backlog, then the ping: {got:?}");
        socket.heartbeat_signal.notify_one();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(reasons.lock().unwrap().is_empty(), "closed: {:?}", reasons.lock().unwrap());
        assert!(!heartbeat.is_finished());
        heartbeat.abort();
    }

    /// A channel that makes no room for the ping timeout: nothing is being
    /// read, and the heartbeat closes the socket.
    #[tokio::test]
    async fn a_channel_that_stays_full_for_the_ping_timeout_fails_the_heartbeat() {
        let (socket, reasons) = small_socket();
        while socket.emit(Str::from("backlog")).is_ok() {}
        let started = tokio::time::Instant::now();
        tokio::time::timeout(TIMEOUT, socket.heartbeat(Duration::from_millis(50), Duration::from_millis(200)))
            .await
            .expect("the heartbeat ends");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(*reasons.lock().unwrap(), vec![DisconnectReason::HeartbeatTimeout]);
    }

    /// Counts the writes made to the stream under it.
    struct Counted {
        inner: DuplexStream,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AsyncRead for Counted {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// A replay sends many messages at once: they go out in a few writes,
    /// whole and in order, not one write each.
    #[tokio::test]
    async fn messages_waiting_together_are_written_together_in_order() {
        let socket = socket();
        let (server, client) = tokio::io::duplex(4 * 1024 * 1024);
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server = Counted { inner: server, writes: writes.clone() };
        let server = WebSocketStream::from_raw_socket(Backlogged::new(server), Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let ws = WsWriter::new(server, &socket);

        // Sizes around the batch limit too, so that batches split.
        let texts: Vec<String> = (0..100).map(|i| format!("{i}:{}", "y".repeat((i % 7) * 3000))).collect();
        for text in &texts {
            socket.emit(Str::from(text.clone())).unwrap();
        }
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(socket.clone(), ws.clone(), None));
        let mut got = Vec::new();
        while got.len() < texts.len() {
            let msg = tokio::time::timeout(TIMEOUT, client.next()).await.expect("every message").unwrap().unwrap();
            got.push(msg);
        }
        let expected: Vec<Message> = texts.iter().map(|t| Message::text(format!("4{t}"))).collect();
        assert_eq!(got, expected);
        let total: usize = texts.iter().map(|t| t.len() + 5).sum();
        let writes = writes.load(std::sync::atomic::Ordering::Relaxed);
        assert!(writes <= total / WRITE_BATCH + 2, "{writes} writes for {total} bytes in 100 messages");
        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, writer).await.expect("the writer should stop").unwrap();
    }

    #[tokio::test]
    async fn messages_framed_by_the_writer_arrive_whole_and_in_order() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let ws = WsWriter::new(server, &socket);
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(socket.clone(), ws.clone(), None));

        let sizes = [0usize, 1, 124, 125, 126, 65_534, 65_535, 65_536, 200_000];
        let texts: Vec<String> = sizes.iter().map(|n| "x".repeat(*n)).collect();
        let mut got = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            if i == 4 {
                // A message written by tungstenite itself (as a pong the
                // reader queued), between framed ones: it goes first.
                while got.len() < 4 {
                    let msg = tokio::time::timeout(TIMEOUT, client.next()).await.expect("a message").unwrap().unwrap();
                    got.push(msg);
                }
                let mut out = ws.lock();
                out.sink.start_send_unpin(Message::Pong(Bytes::from_static(b"p"))).unwrap();
                out.dirty = true;
            }
            socket.emit(Str::from(text.clone())).unwrap();
        }
        while got.len() < texts.len() + 1 {
            let msg = tokio::time::timeout(TIMEOUT, client.next()).await.expect("every message").unwrap().unwrap();
            got.push(msg);
        }
        let mut expected: Vec<Message> = texts.iter().map(|t| Message::text(format!("4{t}"))).collect();
        expected.insert(4, Message::Pong(Bytes::from_static(b"p")));
        assert_eq!(got, expected);
        {
            let out = ws.lock();
            assert!(out.queue.is_empty() && out.queue.capacity() == 0, "the queue is released");
            assert!(!out.sink.get_ref().has_backlog() && out.sink.get_ref().backlog.capacity() == 0);
        }
        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, writer).await.expect("the writer should stop").unwrap();
    }
}
