//! The PostgreSQL `LISTEN`/`NOTIFY` [`Driver`] (`JOBSTREAM_BUS=postgres`): a
//! node notifies the newest `seq` of each job it wrote, with its workspace;
//! the others read the events from the database.
//!
//! A notification on channel `jobstream_events` is JSON: `{"n": node, "t": µs
//! since the epoch, "j": [[job, seq]…], "w": [workspace…]}` (`w` may be absent).
//! A payload is limited to 8000 bytes, so at most 25 jobs go in one.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use jobstream_job_events::Committed;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{now_us, Driver, DriverError, Envelope, Head, Message};

/// The PostgreSQL channel.
const CHANNEL: &str = "jobstream_events";
/// Jobs per notification: about 260 bytes a job (a workspace id is at most
/// 200 bytes) keeps a payload below PostgreSQL's 8000-byte limit.
const JOBS_PER_NOTIFY: usize = 25;

#[derive(Serialize, Deserialize)]
struct Wake {
    n: String,
    t: u64,
    j: Vec<(Uuid, i64)>,
    #[serde(default)]
    w: Vec<String>,
}

/// PostgreSQL `LISTEN`/`NOTIFY` on the node's own database.
pub struct PostgresDriver {
    url: String,
    db: DatabaseConnection,
}

impl std::fmt::Debug for PostgresDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresDriver").finish_non_exhaustive()
    }
}

impl PostgresDriver {
    /// Notifies through `db` and listens on a connection of its own to `url`
    /// (the same database).
    pub fn new(url: &str, db: DatabaseConnection) -> Self {
        Self { url: url.to_owned(), db }
    }
}

#[async_trait]
impl Driver for PostgresDriver {
    async fn publish(&self, node: &str, events: &[Arc<Committed>]) -> Result<(), DriverError> {
        let mut newest: HashMap<Uuid, (i64, &str)> = HashMap::new();
        for event in events {
            let entry = newest.entry(event.event.job_id).or_insert((0, &event.event.workspace_id));
            entry.0 = entry.0.max(event.event.seq);
        }
        let jobs: Vec<(Uuid, i64, &str)> = newest.into_iter().map(|(job, (seq, ws))| (job, seq, ws)).collect();
        let mut failure = None;
        for chunk in jobs.chunks(JOBS_PER_NOTIFY) {
            let wake = Wake {
                n: node.to_owned(),
                t: now_us(),
                j: chunk.iter().map(|(job, seq, _)| (*job, *seq)).collect(),
                w: chunk.iter().map(|(_, _, ws)| (*ws).to_owned()).collect(),
            };
            let payload = serde_json::to_string(&wake).map_err(DriverError::new)?;
            let statement = Statement::from_sql_and_values(
                self.db.get_database_backend(),
                "SELECT pg_notify($1, $2)",
                [CHANNEL.into(), payload.into()],
            );
            // Every chunk is tried; the first error is reported.
            if let Err(err) = self.db.execute(statement).await {
                failure.get_or_insert(DriverError::new(err));
            }
        }
        failure.map_or(Ok(()), Err)
    }

    async fn subscribe(&self) -> Result<BoxStream<'static, Envelope>, DriverError> {
        use sea_orm::sqlx::postgres::PgListener;
        let mut listener = PgListener::connect(&self.url).await.map_err(DriverError::new)?;
        listener.listen(CHANNEL).await.map_err(DriverError::new)?;
        let stream = listener.into_stream().take_while(|n| std::future::ready(n.is_ok())).filter_map(
            |notification| async move {
                let wake = serde_json::from_str::<Wake>(notification.ok()?.payload()).ok()?;
                let heads = wake
                    .j
                    .into_iter()
                    .enumerate()
                    .map(|(i, (job_id, seq))| Head { job_id, seq, workspace_id: wake.w.get(i).cloned() })
                    .collect();
                Some(Envelope { node: wake.n, sent_at_us: wake.t, message: Message::Heads(heads) })
            },
        );
        Ok(stream.boxed())
    }
}
