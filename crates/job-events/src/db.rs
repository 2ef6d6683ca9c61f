//! Opening the database (SQLite embedded, PostgreSQL in production) and migrating it.

use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;
use jobstream_migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::pool::PoolConnectionMetadata;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sea_orm::sqlx::{ConnectOptions as _, Connection};
use sea_orm::{DatabaseConnection, DbBackend, DbErr};

/// How long a SQLite connection waits for another's lock before it gives up
/// (`SQLITE_BUSY`, answered 503).
pub(crate) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL is neither `sqlite:` nor `postgres:`/`postgresql:`.
    #[error("unsupported database URL scheme in {0:?}: use sqlite://PATH?mode=rwc or postgres://USER@HOST/DB")]
    UnsupportedScheme(String),
    /// The URL could not be parsed.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// The server did not answer or refused the connection.
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] DbErr),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[source] DbErr),
}

/// Which engine a URL names.
pub fn backend_of(url: &str) -> Option<DbBackend> {
    if url.starts_with("sqlite:") {
        Some(DbBackend::Sqlite)
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Some(DbBackend::Postgres)
    } else {
        None
    }
}

/// Opens a pool. SQLite runs in WAL mode with full fsync on commit, so that an
/// accepted write survives a crash, and waits for locks instead of failing.
///
/// Every connection is checked when it goes back to the pool: one still inside
/// a transaction (a failed commit or rollback after a storage error, a write
/// cut short) is closed, never reused. Reused, it would run the next writes
/// inside the failed transaction, where they are never durably committed.
pub async fn open(url: &str) -> Result<DatabaseConnection, OpenError> {
    let connect = |e| OpenError::Connect(DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e)));
    match backend_of(url) {
        Some(DbBackend::Sqlite) => {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| OpenError::InvalidUrl(e.to_string()))?
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true)
                .disable_statement_logging();
            let pool = sqlite_pool(8).connect_with(options).await.map_err(connect)?;
            Ok(sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(pool))
        }
        Some(_) => {
            let options = PgConnectOptions::from_str(url)
                .map_err(|e| OpenError::InvalidUrl(redact(&e.to_string())))?
                .disable_statement_logging();
            let pool = PgPoolOptions::new()
                .max_connections(32)
                .min_connections(1)
                .acquire_timeout(Duration::from_secs(5))
                .after_release(|conn, meta| released_clean(conn, meta))
                .connect_with(options)
                .await
                .map_err(connect)?;
            Ok(sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(pool))
        }
        None => Err(OpenError::UnsupportedScheme(redact(url))),
    }
}

/// The connection SQLite's writes run on: a pool of one over the same file
/// and settings as `db`, kept apart from the reads.
///
/// SQLite has one writer at a time anyway (writes take turns, see
/// `JobEvents`), and a connection's page and statement caches hold only
/// while nobody else writes: writes spread over the shared pool's eight
/// connections found their pages stale at every turn and read them again
/// from the file. On PostgreSQL (row locks, writers side by side) and for any
/// other pool, `db` itself.
pub(crate) fn writer_pool(db: &DatabaseConnection) -> DatabaseConnection {
    if !matches!(db, DatabaseConnection::SqlxSqlitePoolConnection(_)) {
        return db.clone();
    }
    let options = (*db.get_sqlite_connection_pool().connect_options()).clone();
    let pool = sqlite_pool(1).connect_lazy_with(options);
    sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(pool)
}

/// A SQLite pool of at most `max` connections, each checked on release.
fn sqlite_pool(max: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(max)
        // A connection is a file opened by this process, run by a thread of
        // sqlx's: there is no server to lose, and the check would cost a
        // round trip to that thread per request. Broken connections are
        // found by the release check below.
        .test_before_acquire(false)
        .after_release(|conn, meta| released_clean(conn, meta))
}

/// The pool's release check: whether a connection may be reused. A rollback
/// started when a transaction was dropped may still be queued, so a connection
/// that looks inside a transaction is pinged (which waits for it) and checked again.
fn released_clean<C: Connection>(
    conn: &mut C,
    _: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sea_orm::sqlx::Error>> {
    Box::pin(async move {
        if !conn.is_in_transaction() {
            return Ok(true);
        }
        conn.ping().await?;
        if conn.is_in_transaction() {
            tracing::warn!("a database connection is still inside a failed transaction; it is closed, not reused");
            return Ok(false);
        }
        Ok(true)
    })
}

/// Applies pending migrations. A new SQLite file is first set to incremental
/// auto-vacuum, so that retention can give freed pages back (this can only be
/// chosen before the first table; it is not set per connection, where it
/// would write the file header and get in the writer's way).
pub async fn migrate(db: &DatabaseConnection) -> Result<(), OpenError> {
    use sea_orm::{ConnectionTrait, Statement};
    if db.get_database_backend() == DbBackend::Sqlite {
        let tables = db
            .query_one(Statement::from_string(DbBackend::Sqlite, "SELECT COUNT(*) AS n FROM sqlite_master"))
            .await
            .map_err(OpenError::Migrate)?
            .and_then(|row| row.try_get::<i64>("", "n").ok())
            .unwrap_or(1);
        if tables == 0 {
            // The file already has a header (WAL mode was set on connect), so
            // the mode takes effect through a VACUUM, instant on an empty file.
            // One call, so both run on one pooled connection.
            db.execute_unprepared("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;").await.map_err(OpenError::Migrate)?;
        }
    }
    Migrator::up(db, None).await.map_err(OpenError::Migrate)
}

/// The URL without its password (in the user part or a `password=` query
/// parameter), for logs and messages.
pub fn redact(url: &str) -> String {
    let url = match url.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=REDACTED"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => url.to_owned(),
    };
    let url = url.as_str();
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use sea_orm::{ConnectionTrait, Statement};

    async fn pragma(db: &DatabaseConnection, name: &str) -> String {
        let row = db
            .query_one(Statement::from_string(DbBackend::Sqlite, format!("PRAGMA {name}")))
            .await
            .expect("read a pragma")
            .expect("a pragma row");
        row.try_get_by_index::<String>(0)
            .or_else(|_| row.try_get_by_index::<i64>(0).map(|n| n.to_string()))
            .expect("a pragma value")
    }

    #[tokio::test]
    async fn the_sqlite_writers_connection_is_one_with_the_durability_settings_of_the_pool() {
        let dir = std::env::temp_dir().join(format!(
            "jobstream-writer-pool-{}-{:?}",
            std::process::id(),
            std::time::Instant::now()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let url = format!("sqlite://{}?mode=rwc", dir.join("db.sqlite").display());
        let db = open(&url).await.expect("open");
        migrate(&db).await.expect("migrate");
        let writer = writer_pool(&db);
        assert_eq!(writer.get_sqlite_connection_pool().options().get_max_connections(), 1);
        assert_eq!(pragma(&writer, "journal_mode").await, "wal");
        assert_eq!(pragma(&writer, "synchronous").await, "2", "FULL: every commit is synced");
        assert_eq!(pragma(&writer, "foreign_keys").await, "1");
        // The same file: what the writer commits, the pool reads.
        writer
            .execute(Statement::from_string(
                DbBackend::Sqlite,
                "UPDATE commit_counter SET value = value + 41 WHERE id = 1",
            ))
            .await
            .expect("write");
        let row = db
            .query_one(Statement::from_string(DbBackend::Sqlite, "SELECT value FROM commit_counter WHERE id = 1"))
            .await
            .expect("read")
            .expect("the counter");
        assert!(row.try_get_by_index::<i64>(0).expect("a value") >= 41);
        writer.close().await.expect("close the writer");
        db.close().await.expect("close the pool");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn passwords_are_removed_from_urls() {
        assert_eq!(redact("postgres://app:s3cret@db:5432/x"), "postgres://app@db:5432/x");
        assert_eq!(redact("sqlite://jobstream.db?mode=rwc"), "sqlite://jobstream.db?mode=rwc");
        assert_eq!(
            redact("postgres://app@db/x?password=s3cret&sslmode=require"),
            "postgres://app@db/x?password=REDACTED&sslmode=require"
        );
    }
}
