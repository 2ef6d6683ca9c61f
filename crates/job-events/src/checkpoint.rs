//! SQLite write-ahead-log checkpoints, run in the background rather than
//! inside a commit.
//!
//! SQLite's own automatic checkpoint runs in the commit that takes the log past
//! its threshold: that commit copies the log's pages into the database file and
//! syncs the file before it returns. Here a commit holds the one writer's turn,
//! so every write queued behind it waited for that copy too (tens of
//! milliseconds once deletes or large batches had filled the log).
//!
//! Instead, each commit signals a [`Checkpointer`] task, which, at most once
//! per [`INTERVAL`], runs `PRAGMA wal_checkpoint(PASSIVE)` on a pooled
//! connection outside the writer's turn. A passive checkpoint never waits for
//! readers or the writer: it copies what no reader still needs, and the writer
//! goes on appending meanwhile. SQLite's automatic checkpoint stays on at
//! `AUTO_CHECKPOINT_PAGES` (`db.rs`) as a bound for a process with no
//! checkpointer (the `jobstream prune` command, a stalled task). Durability is
//! unchanged: a commit is synced to the log before it is answered; a checkpoint
//! only moves what is already durable.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use tokio::sync::Notify;

/// The shortest time between two checkpoints.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// The handle the writer keeps: [`Checkpointer::committed`] after each commit.
/// The task ends when the last handle is dropped, or when the pool is closed.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    commits: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Checkpointer {
    /// Starts the task for `db` (SQLite only, and only inside a Tokio runtime).
    pub(crate) fn start(db: &DatabaseConnection) -> Option<Self> {
        if db.get_database_backend() != DbBackend::Sqlite {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let commits = Arc::new(Notify::new());
        let task = runtime.spawn(run(db.clone(), commits.clone()));
        Some(Self { commits, task })
    }

    /// A commit appended to the log: a checkpoint will follow within [`INTERVAL`].
    pub(crate) fn committed(&self) {
        self.commits.notify_one();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(db: DatabaseConnection, commits: Arc<Notify>) {
    let checkpoint = Statement::from_string(DbBackend::Sqlite, "PRAGMA wal_checkpoint(PASSIVE)");
    loop {
        commits.notified().await;
        // Commits of the next interval share this checkpoint.
        tokio::time::sleep(INTERVAL).await;
        let started = std::time::Instant::now();
        match db.query_one(checkpoint.clone()).await {
            Ok(_) => tracing::trace!(took_us = started.elapsed().as_micros() as u64, "write-ahead-log checkpoint"),
            Err(_) if db.get_sqlite_connection_pool().is_closed() => return,
            // Busy (another checkpoint), or a storage fault: the next commit
            // tries again, and SQLite's own bound still holds.
            Err(err) => tracing::debug!(%err, "write-ahead-log checkpoint failed"),
        }
    }
}
