//! Opening the database (SQLite embedded, PostgreSQL in production) and migrating it.

use std::str::FromStr;
use std::time::Duration;

use jobstream_migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr};

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
pub async fn open(url: &str) -> Result<DatabaseConnection, OpenError> {
    match backend_of(url) {
        Some(DbBackend::Sqlite) => {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| OpenError::InvalidUrl(e.to_string()))?
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await
                .map_err(|e| OpenError::Connect(DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e))))?;
            Ok(sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(pool))
        }
        Some(_) => {
            let mut options = ConnectOptions::new(url);
            options
                .max_connections(32)
                .min_connections(1)
                .connect_timeout(Duration::from_secs(5))
                .acquire_timeout(Duration::from_secs(5))
                .sqlx_logging(false);
            Database::connect(options).await.map_err(OpenError::Connect)
        }
        None => Err(OpenError::UnsupportedScheme(redact(url))),
    }
}

/// Applies pending migrations.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), OpenError> {
    Migrator::up(db, None).await.map_err(OpenError::Migrate)
}

/// The URL without its password, for logs and messages.
pub fn redact(url: &str) -> String {
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
mod tests {
    use super::*;

    #[test]
    fn passwords_are_removed_from_urls() {
        assert_eq!(redact("postgres://app:s3cret@db:5432/x"), "postgres://app@db:5432/x");
        assert_eq!(redact("sqlite://jobstream.db?mode=rwc"), "sqlite://jobstream.db?mode=rwc");
    }
}
