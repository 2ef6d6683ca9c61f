//! The application: build it (open and migrate the database, bind the listener),
//! then run it until a shutdown signal.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, Method};
use axum::Router;
use jobstream_delivery::{DeliveryConfig, Hub};
use jobstream_job_events::{EventStore, JobEvents, OpenError};
use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::Keys;
use crate::config::Config;
use crate::metrics::CountingSink;

/// Size limits of the HTTP API.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Largest `step:output` chunk.
    pub max_chunk_bytes: usize,
}

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Appends events.
    pub writer: JobEvents,
    /// Reads.
    pub store: EventStore,
    /// Delivers committed events to sockets and streams.
    pub hub: Hub,
    /// Verifies tokens (and mints with the current secret, when there is one).
    pub keys: Keys,
    /// Size limits.
    pub limits: Limits,
    /// What the dashboard page is told (demo token in demo mode).
    pub dashboard: crate::dashboard::DashboardConfig,
    /// Prometheus metrics.
    pub metrics: crate::metrics::Metrics,
    /// Turns true when the server is shutting down (SSE streams end then).
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Ends Socket.IO connections when their token expires.
    pub expiries: crate::expiry::Expiries,
    /// WebSocket upgrades that came before their socket's connect.
    pub upgrades: crate::expiry::PendingUpgrades,
    /// Connections per subject, subscriptions per socket, writes per second.
    pub admission: crate::limits::Admission,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Database(#[from] OpenError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A setting cannot be used as given.
    #[error("{0}")]
    Config(String),
}

/// A built application, bound and ready to run.
pub struct Application {
    listener: TcpListener,
    router: Router,
    io: SocketIo,
    state: AppState,
    /// The connection limit, header timeout and head size of the HTTP server.
    serving: crate::serve::Settings,
    /// Whether the secret was made up at start (no `JOBSTREAM_JWT_SECRET`, no public key).
    random_secret: bool,
    /// Whether to run the demo producer.
    demo: bool,
    /// Tells long-lived responses (SSE) that the server is stopping.
    stopping: tokio::sync::watch::Sender<bool>,
    /// A write that makes no progress for this long ends its connection.
    stall_timeout: std::time::Duration,
    /// Finished jobs are deleted this long after they finished.
    retention: Option<std::time::Duration>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("addr", &self.listener.local_addr().ok()).finish_non_exhaustive()
    }
}

/// The CORS answer for `--cors-origins`, on every response: the HTTP API, the
/// SSE streams and Socket.IO's engine.io requests (`/socket.io/` polling and
/// its preflights), since the layer wraps them all.
///
/// Listed origins are echoed back with `Access-Control-Allow-Credentials:
/// true`, so browsers may send credentials (`withCredentials: true` in
/// socket.io-client and `EventSource`, `credentials: "include"` in `fetch`).
/// `*` allows any origin without credentials: the CORS standard forbids
/// credentials with a wildcard, and a server that echoed every origin with
/// credentials would let any site act with its visitors' cookies. Every
/// answer carries `Vary: Origin` so that caches keep one copy per origin.
fn cors_layer(origins: &[String]) -> Result<Option<CorsLayer>, BuildError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::HeaderName::from_static("last-event-id")])
        .expose_headers([header::RETRY_AFTER])
        .max_age(Duration::from_secs(600));
    if origins.iter().any(|o| o == "*") {
        return Ok(Some(layer.allow_origin(AllowOrigin::any())));
    }
    let list = origins
        .iter()
        // An origin is scheme://host[:port]; a trailing slash written in the setting is dropped.
        .map(|o| o.trim().trim_end_matches('/'))
        .map(|o| HeaderValue::from_str(o).map_err(|_| BuildError::Config(format!("invalid CORS origin {o:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(layer.allow_origin(AllowOrigin::list(list)).allow_credentials(true)))
}

/// Drops every `Access-Control-*` header from an answer that allows no origin
/// (tower-http's `CorsLayer` sends its methods, headers, max age, exposed
/// headers and credentials flag to every origin): an origin not in the list
/// learns nothing about the server's CORS settings.
async fn credentials_only_with_origin(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    if !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        for name in [
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_MAX_AGE,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
        ] {
            headers.remove(name);
        }
    }
    response
}

/// Every route the server answers, before the state and the outer layers:
/// the HTTP API and health checks (counted in `metrics`), `/metrics`, the
/// dashboard, and the JSON 404 for the rest. Socket.IO is a layer around it.
pub fn routes(metrics: crate::metrics::Metrics) -> Router<AppState> {
    crate::http::router()
        // Before the metrics layer, so that a 405 on an API route is counted
        // under its route; the second call covers the routes added after it.
        .method_not_allowed_fallback(crate::http::method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(metrics, crate::metrics::track_http))
        .route("/metrics", axum::routing::get(crate::metrics::render))
        .merge(crate::dashboard::router())
        .method_not_allowed_fallback(crate::http::method_not_allowed)
        .fallback(crate::http::not_found)
        .layer(axum::middleware::from_fn(crate::http::extract::reject_invalid_url))
}

impl Application {
    /// Opens and migrates the database, wires the services and binds the listener.
    pub async fn build(config: Config) -> Result<Self, BuildError> {
        let clustered = config.redis_url.is_some() || config.bus.is_some();
        if clustered && jobstream_job_events::backend_of(&config.database_url) != Some(sea_orm_backend_postgres()) {
            return Err(BuildError::Config(
                "a cluster bus (JOBSTREAM_REDIS_URL or JOBSTREAM_BUS) needs a shared PostgreSQL database: several nodes cannot share a SQLite file. Use DATABASE_URL=postgres://… or unset the bus".into(),
            ));
        }
        // Key files are read before the database is touched: a wrong one stops the start.
        let keys =
            Keys::load(config.jwt_secret.as_deref(), &config.jwt).map_err(|e| BuildError::Config(e.to_string()))?;
        tracing::info!(?keys, "token verification");
        let db = jobstream_job_events::open(&config.database_url).await?;
        jobstream_job_events::migrate(&db).await?;
        let store = EventStore::new(db.clone());
        let delivery = DeliveryConfig { stall_timeout: config.stall_timeout, ..DeliveryConfig::default() };
        let hub = Hub::new(store.clone(), delivery);
        let metrics = crate::metrics::Metrics::default();
        let sink: Arc<dyn jobstream_job_events::EventSink> = match &config.redis_url {
            Some(url) => {
                let driver = jobstream_delivery::bus::redis::RedisDriver::new(url)
                    .map_err(|e| BuildError::Config(format!("invalid Redis URL: {e}")))?;
                let bus = jobstream_delivery::bus::start(driver, hub.clone(), Arc::new(metrics.clone()));
                Arc::new(CountingSink { inner: bus, metrics: metrics.clone() })
            }
            None if config.bus.as_deref() == Some("postgres") => {
                let driver = jobstream_delivery::bus::postgres::PostgresDriver::new(&config.database_url, db.clone());
                let bus = jobstream_delivery::bus::start(driver, hub.clone(), Arc::new(metrics.clone()));
                Arc::new(CountingSink { inner: bus, metrics: metrics.clone() })
            }
            None => Arc::new(CountingSink { inner: hub.clone(), metrics: metrics.clone() }),
        };
        let writer = JobEvents::new(db, sink);
        let random_secret = keys.has_random_secret();
        let limits = Limits { max_body_bytes: config.max_body_bytes, max_chunk_bytes: config.max_chunk_bytes };
        let dashboard = if config.demo {
            // With public keys and no secret the server cannot mint: the dashboard asks for a token.
            let token = keys.signer().and_then(|signer| {
                signer
                    .mint(
                        "dashboard",
                        &[crate::demo::DEMO_WORKSPACE.to_owned()],
                        &jobstream_rooms::Claims::parse_scopes(Some("subscribe")),
                        Duration::from_secs(7 * 86_400),
                    )
                    .map_err(|err| tracing::warn!(%err, "no demo token for the dashboard"))
                    .ok()
            });
            crate::dashboard::DashboardConfig {
                demo: true,
                workspace_id: Some(crate::demo::DEMO_WORKSPACE.to_owned()),
                token,
            }
        } else {
            crate::dashboard::DashboardConfig::default()
        };
        let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
        let expiries = crate::expiry::Expiries::start(stopping.clone());
        let upgrades = crate::expiry::PendingUpgrades::default();
        let admission = crate::limits::Admission::start(&config.limits, metrics.clone(), stopping.clone());
        let state =
            AppState { writer, store, hub, keys, limits, dashboard, metrics, stopping, expiries, upgrades, admission };

        let (socket_layer, io) = SocketIo::builder()
            .with_state(state.clone())
            .max_buffer_size(config.socket_buffer)
            // Clients send small packets (a pong is 7 bytes on the wire, a
            // subscribe about 100): the read buffer, kept for the socket's
            // life, is sized for them; a larger message is read into room
            // tungstenite reserves for the length its frame header announces.
            .ws_read_buffer_size(128)
            // The largest message a client may send, before and after CONNECT
            // (crate::limits): a WebSocket frame header announcing more is
            // refused before anything is allocated for it, a fragmented message
            // when its fragments add up to more, a long-polling POST body when
            // it grows past it, binary attachments likewise; the connection is
            // then closed.
            .ws_max_frame_size(config.limits.max_message_bytes)
            .ws_max_message_size(config.limits.max_message_bytes)
            .max_payload(config.limits.max_message_bytes as u64)
            .with_parser(
                socketioxide::ParserConfig::common().max_incoming_binary_buf_size(config.limits.max_message_bytes),
            )
            .build_layer();
        crate::socket::register(&io);

        let mut router = routes(state.metrics.clone())
            .with_state(state.clone())
            .layer(socket_layer)
            .layer(axum::middleware::map_request(detach_socket_request))
            .layer(axum::middleware::from_fn_with_state(
                crate::expiry::Transports { io: io.clone(), upgrades: state.upgrades.clone() },
                crate::expiry::close_on_poll,
            ))
            // Request bodies (API writes, long-polling POSTs) have a deadline; GETs have no body.
            .layer(axum::middleware::from_fn_with_state(
                crate::limits::BodyTime { timeout: config.limits.body_timeout, metrics: state.metrics.clone() },
                crate::limits::limit_body_time,
            ));
        if let Some(cors) = cors_layer(&config.cors_origins)? {
            router = router.layer(cors).layer(axum::middleware::map_response(credentials_only_with_origin));
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| BuildError::Bind { addr: config.listen, source })?;
        let (stall_timeout, retention) = (config.stall_timeout, config.retention);
        let serving = crate::serve::Settings::from(&config.limits);
        Ok(Self {
            listener,
            router,
            io,
            state,
            serving,
            random_secret,
            demo: config.demo,
            stopping: stopping_tx,
            stall_timeout,
            retention,
        })
    }

    /// The bound address (the real port when the configuration said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The shared state (for in-process producers such as the demo).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Whether the secret was generated at start.
    pub fn has_random_secret(&self) -> bool {
        self.random_secret
    }

    /// Serves until `shutdown` completes, then closes sockets and finishes
    /// in-flight requests (for at most 10 seconds).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let demo = self.demo.then(|| tokio::spawn(crate::demo::run(self.state.writer.clone())));
        // Retention: safe on every node at once (each delete re-checks its condition).
        let retention = self.retention.map(|keep| {
            let every = (keep / 10).clamp(std::time::Duration::from_secs(10), std::time::Duration::from_secs(600));
            tokio::spawn(jobstream_job_events::run_retention(self.state.writer.clone(), keep, every))
        });
        let stopping_tx = self.stopping;
        let mut stopping_rx = stopping_tx.subscribe();
        let io = self.io.clone();
        let graceful = async move {
            shutdown.await;
            if let Some(demo) = demo {
                demo.abort();
            }
            if let Some(retention) = retention {
                retention.abort();
            }
            let _ = stopping_tx.send(true);
            tracing::info!("shutting down: closing sockets and finishing requests");
            io.close().await;
        };
        let db = self.state.store.connection().clone();
        let writer = self.state.writer.clone();
        // Every connection carries a handle that can close it (`crate::conn`);
        // `crate::serve` limits connections and the time to send a request head.
        let listener = crate::conn::Listener::new(self.listener).with_write_stall_timeout(self.stall_timeout);
        let metrics = self.state.metrics.clone();
        let serve = async move {
            crate::serve::serve(listener, self.router, self.serving, metrics, graceful).await;
            std::io::Result::Ok(())
        };
        let deadline = async move {
            let _ = stopping_rx.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        };
        let result = tokio::select! {
            result = serve.into_future() => result,
            () = deadline => {
                tracing::warn!("connections still open after 10 s; stopping anyway");
                Ok(())
            }
        };
        // Lets SQLite checkpoint its write-ahead log (the writer's connection
        // first, the pool's last); PostgreSQL connections end cleanly.
        if let Err(err) = writer.close().await {
            tracing::warn!(%err, "closing the database's write connection");
        }
        if let Err(err) = db.close().await {
            tracing::warn!(%err, "closing the database");
        }
        result
    }
}

/// The headers of a Socket.IO request that are read after the layers in front
/// of socketioxide: the token at CONNECT (`Authorization`, see
/// `crate::socket`), the WebSocket key for the upgrade's answer, the type of a
/// long-polling POST. The others (cookies, user agent, languages: often more
/// than a kilobyte from a browser) are not kept for the socket's life.
const SOCKET_HEADERS: [header::HeaderName; 3] =
    [header::AUTHORIZATION, header::SEC_WEBSOCKET_KEY, header::CONTENT_TYPE];

/// Keeps only the URI, the headers ([`SOCKET_HEADERS`]) and the extensions
/// of Socket.IO requests that are read later, copied into their own small
/// allocations. socketioxide keeps each socket's request parts for the
/// socket's life; as parsed, they point into the connection's 16 KiB read
/// buffer and so would keep that buffer alive per connection; and the
/// router's entries would grow the extensions' map past its first size.
/// (CORS and the other layers in front have seen every header by then.)
async fn detach_socket_request(mut request: axum::extract::Request) -> axum::extract::Request {
    if request.uri().path().starts_with("/socket.io") {
        // The connection (its address, its WebSocket, for closing it), the
        // slot for direct writes and hyper's handle of the upgrade: a map
        // made for three holds them.
        fn keep<T: Clone + Send + Sync + 'static>(from: &mut axum::http::Extensions, to: &mut axum::http::Extensions) {
            if let Some(value) = from.remove::<T>() {
                to.insert(value);
            }
        }
        let mut extensions = std::mem::take(request.extensions_mut());
        let kept = request.extensions_mut();
        keep::<axum::extract::ConnectInfo<crate::conn::Conn>>(&mut extensions, kept);
        keep::<engineioxide::DirectWriter>(&mut extensions, kept);
        keep::<hyper::upgrade::OnUpgrade>(&mut extensions, kept);
        if let Ok(uri) = request.uri().to_string().parse() {
            *request.uri_mut() = uri;
        }
        let headers = std::mem::take(request.headers_mut());
        let kept = SOCKET_HEADERS.iter().map(|name| headers.get_all(name).iter().count()).sum();
        let copied = request.headers_mut();
        // Sized to what is kept (a map grown by insertion reserves room for six).
        *copied = header::HeaderMap::with_capacity(kept);
        for name in SOCKET_HEADERS {
            for value in headers.get_all(&name) {
                if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
                    copied.append(name.clone(), value);
                }
            }
        }
    }
    request
}

fn sea_orm_backend_postgres() -> jobstream_job_events::DbBackend {
    jobstream_job_events::DbBackend::Postgres
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
