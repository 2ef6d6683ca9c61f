//! A jobstream server for integration tests, in the test's own process.
//!
//! [`TestServer::start`] builds the whole application (Socket.IO, the HTTP API,
//! SSE, the dashboard) on `127.0.0.1:0` with an in-memory SQLite database and
//! a random HS256 secret, and serves it on the test's tokio runtime.
//! [`TestServer::token`] and its helpers mint tokens the server accepts
//! (contract §4). Dropping the server asks it to stop gracefully (sockets are
//! closed, requests in flight finish); [`TestServer::stop`] does the same and
//! waits for it.
//!
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use jobstream_server::testing::TestServer;
//!
//! let server = TestServer::start().await?;
//! let token = server.publish_token("acme");
//! // POST {server.url()}/api/v1/jobs with `Authorization: Bearer {token}` …
//! assert!(server.url().starts_with("http://127.0.0.1:"));
//! server.stop().await?;
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(demo())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore as _;
use sea_orm::{ConnectionTrait as _, Database};

use crate::app::{AppState, Application, BuildError};
use crate::auth::TokenClaims;
use crate::config::Config;

/// How long the tokens of [`TestServer::publish_token`] and
/// [`TestServer::subscribe_token`] are valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// A running server for tests. See the [module docs](self).
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    secret: String,
    state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The admin URL and name of a PostgreSQL database made for this server.
    database: Option<(String, String)>,
    /// One connection of an in-memory SQLite database, held so that the
    /// database outlives the pool's idle timeout (it lives while a connection does).
    memory: Option<sea_orm::sqlx::pool::PoolConnection<sea_orm::sqlx::Sqlite>>,
}

/// Why a test server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The application could not be built (database, listener, settings).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The PostgreSQL database for the server could not be made.
    #[error("cannot create a test database: {0}")]
    Database(String),
}

/// A random secret of 32 bytes, as hex.
fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl TestServer {
    /// Starts a server on `127.0.0.1:0` with an in-memory SQLite database and a random secret.
    pub async fn start() -> Result<Self, StartError> {
        Self::start_with(Config::for_tests("sqlite::memory:", random_secret())).await
    }

    /// Starts a server with `config` as given ([`Config::for_tests`] is a good
    /// base: port 0, limits at their defaults). Without `jwt_secret`, a random
    /// one is set, so that [`TestServer::token`] can mint.
    pub async fn start_with(mut config: Config) -> Result<Self, StartError> {
        let secret = config.jwt_secret.get_or_insert_with(random_secret).clone();
        let in_memory =
            config.database_url.starts_with("sqlite::memory:") || config.database_url.contains("mode=memory");
        let app = Application::build(config).await?;
        let memory = if in_memory {
            app.state().store.connection().get_sqlite_connection_pool().acquire().await.ok()
        } else {
            None
        };
        let addr = app.local_addr();
        let state = app.state().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Ok(Self { addr, secret, state, stop: Some(stop), task: Some(task), database: None, memory })
    }

    /// Starts a server on a new, empty PostgreSQL database made on the server
    /// of `admin_url` (a URL whose user may `CREATE DATABASE`, e.g.
    /// `postgres://postgres@127.0.0.1:5432/postgres`). The database is dropped
    /// when the test server stops or is dropped.
    pub async fn start_postgres(admin_url: &str) -> Result<Self, StartError> {
        let name = format!("jobstream_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Database::connect(admin_url)
            .await
            .map_err(|err| StartError::Database(jobstream_job_events::redact(&err.to_string())))?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|err| StartError::Database(err.to_string()))?;
        let _ = admin.close().await;
        let (base, query) = match admin_url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (admin_url, String::new()),
        };
        let Some((server, _)) = base.rsplit_once('/') else {
            return Err(StartError::Database("the URL has no database path".into()));
        };
        let url = format!("{server}/{name}{query}");
        let mut started = Self::start_with(Config::for_tests(url, random_secret())).await;
        match &mut started {
            Ok(server) => server.database = Some((admin_url.to_owned(), name)),
            Err(_) => drop_database(admin_url.to_owned(), name),
        }
        started
    }

    /// `http://127.0.0.1:PORT`, for HTTP and Socket.IO clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The application state, for in-process producers and checks.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The name of the PostgreSQL database made by [`TestServer::start_postgres`].
    pub fn database_name(&self) -> Option<&str> {
        self.database.as_ref().map(|(_, name)| name.as_str())
    }

    /// The HS256 secret the server verifies tokens with.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Signs `claims` exactly as given (any `exp`, `scope`, `workspaces`; contract §4).
    pub fn token(&self, claims: &TokenClaims) -> String {
        // HS256 over claims that always serialise cannot fail.
        #[allow(clippy::expect_used)]
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(self.secret.as_bytes()))
            .expect("HS256 signing of serialisable claims")
    }

    /// Claims for subject `test` with `workspaces` (`"*"` for all) and a
    /// space-separated `scope` (`subscribe`, `publish`), valid for [`TOKEN_TTL`].
    pub fn claims(workspaces: &[&str], scope: &str) -> TokenClaims {
        let now = now_secs();
        TokenClaims {
            sub: "test".into(),
            exp: now + TOKEN_TTL.as_secs(),
            nbf: None,
            iat: Some(now),
            iss: None,
            aud: None,
            workspaces: workspaces.iter().map(|w| (*w).to_owned()).collect(),
            scope: Some(scope.to_owned()),
        }
    }

    /// A token that may write to and read `workspace` (`publish subscribe`).
    pub fn publish_token(&self, workspace: &str) -> String {
        self.token(&Self::claims(&[workspace], "publish subscribe"))
    }

    /// A token that may read `workspace` only (`subscribe`).
    pub fn subscribe_token(&self, workspace: &str) -> String {
        self.token(&Self::claims(&[workspace], "subscribe"))
    }

    /// Stops the server gracefully and waits until it has stopped (and its
    /// PostgreSQL database, if it made one, is dropped).
    pub async fn stop(mut self) -> std::io::Result<()> {
        // The server closes its pool on the way out, which waits for this connection.
        self.memory = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|err| Err(std::io::Error::other(err))),
            None => Ok(()),
        };
        if let Some((admin, name)) = self.database.take() {
            drop_database(admin, name);
        }
        result
    }
}

impl Drop for TestServer {
    /// Asks the server to stop gracefully; the runtime finishes it.
    fn drop(&mut self) {
        self.memory = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some((admin, name)) = self.database.take() {
            drop_database(admin, name);
        }
    }
}

/// Drops a test database, closing its connections first. Runs on a thread of
/// its own, so that it also works from `Drop` inside a runtime.
fn drop_database(admin: String, name: String) {
    let dropped = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async {
            if let Ok(conn) = Database::connect(&admin).await {
                let _ = conn.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                let _ = conn.close().await;
            }
        });
    });
    let _ = dropped.join();
}
