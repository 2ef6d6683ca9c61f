//! Test databases: a fresh SQLite file or a fresh PostgreSQL database per test.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use jobstream_job_events::{Committed, EventSink, JobEvents};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use uuid::Uuid;

/// A sink that records what reaches it, in the order it arrives.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<Arc<Committed>>>);

impl EventSink for Recorder {
    fn publish(&self, events: &[Arc<Committed>]) {
        self.0.lock().unwrap().extend(events.iter().cloned());
    }

    fn uncertain(&self, _: &[Uuid]) {}
}

/// A writer on `db` whose events go to a [`Recorder`].
pub fn writer(db: &TestDb) -> (JobEvents, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    (JobEvents::new(db.db.clone(), recorder.clone()), recorder)
}

/// Which engine a test runs on.
#[derive(Debug, Clone, Copy)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A migrated database that belongs to one test.
pub struct TestDb {
    pub db: DatabaseConnection,
    pub url: String,
    cleanup: Option<(String, String)>,
}

impl TestDb {
    /// Opens a fresh database, or `None` (with a message) when PostgreSQL is not configured.
    pub async fn open(engine: Engine) -> Option<TestDb> {
        let name = format!("jobstream_test_{}", Uuid::new_v4().simple());
        let (url, cleanup) = match engine {
            Engine::Sqlite => {
                let path = std::env::temp_dir().join(format!("{name}.db"));
                (format!("sqlite://{}?mode=rwc", path.display()), None)
            }
            Engine::Postgres => {
                let Ok(admin) = std::env::var("JOBSTREAM_TEST_POSTGRES_URL") else {
                    if std::env::var("CI").as_deref() == Ok("true") {
                        panic!("JOBSTREAM_TEST_POSTGRES_URL must be set in CI");
                    }
                    eprintln!("skipped: JOBSTREAM_TEST_POSTGRES_URL is not set");
                    return None;
                };
                let conn = Database::connect(&admin).await.expect("connect to the admin database");
                conn.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("create test database");
                let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).expect("database URL with a path");
                (format!("{base}/{name}"), Some((admin, name)))
            }
        };
        let db = jobstream_job_events::open(&url).await.expect("open test database");
        jobstream_job_events::migrate(&db).await.expect("migrate test database");
        Some(TestDb { db, url, cleanup })
    }

    /// Drops the PostgreSQL database (SQLite files are left in the temp dir).
    pub async fn close(self) {
        let _ = self.db.close().await;
        if let Some((admin, name)) = self.cleanup {
            if let Ok(conn) = Database::connect(&admin).await {
                let _ = conn.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
            }
        }
    }
}

/// Defines one test per engine from `async fn $name(db: &TestDb)`.
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::support::TestDb::open($crate::support::Engine::Sqlite).await {
                        super::$name(&db).await;
                        db.close().await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::support::TestDb::open($crate::support::Engine::Postgres).await {
                        super::$name(&db).await;
                        db.close().await;
                    }
                }
            )*
        }
    };
}
