//! The `history` scenario: what a `subscribe:workspace:jobs` costs against a
//! workspace with many finished jobs (server memory per subscription, socket
//! included, and the ack's latency), and whether a later event of a finished
//! job and a new job reach every subscriber exactly once.
//!
//! `seed-history` writes the finished jobs straight into a migrated database,
//! before the server starts: `completed` jobs with four events each (created,
//! queued, started, completed) and no commit order, i.e. older than any
//! snapshot. Job `i` (1 = oldest) has a fixed id, [`finished_job_id`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::http::Api;
use crate::sio::{self, Client, Sub};
use crate::stats::{proc_stats, Delivery};
use crate::{clients, mib, Common, Fleet};

/// Events stored per seeded job.
pub const EVENTS_PER_JOB: u64 = 4;
/// Seconds between the creation of two seeded jobs: 1,000,000 jobs span 14 hours.
const SPACING_SECS: f64 = 0.05;

/// The `history` scenario's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Finished jobs seeded in the workspace (as `seed-history --jobs`).
    pub jobs: u64,
    /// The workspace.
    pub workspace: String,
    /// Sockets, each with its own workspace subscription.
    pub sockets: usize,
    /// Running jobs created over HTTP before the sockets subscribe.
    pub live: usize,
    /// Subscriptions awaiting their ack at any time while connecting.
    pub in_flight: usize,
    /// The database's name, for the result table.
    pub db: String,
}

/// The id of seeded job `i` (1 = the oldest): a version-7 layout with `i` in
/// the time field, so ids rise with age like the server's own.
pub fn finished_job_id(i: u64) -> Uuid {
    Uuid::from_u128((u128::from(i) << 80) | (0x7000_u128 << 64) | (0x8000_u128 << 48))
}

fn check_workspace(workspace: &str) -> anyhow::Result<()> {
    if workspace.is_empty() || !workspace.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        bail!("--workspace must be letters, digits, '-' or '_', got {workspace:?}");
    }
    Ok(())
}

const SQLITE_JOBS: &str = r#"
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < @N@),
t(h, at) AS (SELECT printf('%012x', i), @BASE@ + i * @STEP@ FROM s)
INSERT INTO jobs (id, workspace_id, job_type, status, priority, progress, metadata, result, error,
                  created_at, updated_at, started_at, completed_at, last_seq)
SELECT unhex(h || '70008000000000000000'), '@WS@', 'bench', 'completed', 0, 100, '{}', '{"ok":true}', NULL,
       strftime('%Y-%m-%dT%H:%M:%f+00:00', at, 'unixepoch'),
       strftime('%Y-%m-%dT%H:%M:%f+00:00', at + 30, 'unixepoch'),
       strftime('%Y-%m-%dT%H:%M:%f+00:00', at + 1, 'unixepoch'),
       strftime('%Y-%m-%dT%H:%M:%f+00:00', at + 30, 'unixepoch'),
       4
FROM t"#;

const SQLITE_EVENTS: &str = r#"
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < @N@),
t(h, at) AS (SELECT printf('%012x', i), @BASE@ + i * @STEP@ FROM s),
e(seq, kind, after, data) AS (VALUES
  (1, 'job.created', 0, NULL),
  (2, 'job.queued', 0, '{"status":"queued","previousStatus":"pending"}'),
  (3, 'job.started', 1, '{"status":"running","previousStatus":"queued"}'),
  (4, 'job.completed', 30, '{"status":"completed","previousStatus":"running","result":{"ok":true}}'))
INSERT INTO job_events (id, job_id, seq, event_type, workspace_id, step_id, created_at, data, commit_order)
SELECT unhex(h || '70008' || printf('%03x', seq) || '000000000000'), unhex(h || '70008000000000000000'),
       seq, kind, '@WS@', NULL,
       strftime('%Y-%m-%dT%H:%M:%f+00:00', at + after, 'unixepoch'),
       coalesce(data, printf('{"job":{"id":"%s-%s-7000-8000-000000000000","workspaceId":"@WS@","type":"bench","status":"pending","priority":0,"progress":0,"metadata":{},"result":null,"error":null,"createdAt":"%s","updatedAt":"%s","startedAt":null,"completedAt":null,"lastSeq":1}}',
         substr(h, 1, 8), substr(h, 9, 4),
         strftime('%Y-%m-%dT%H:%M:%fZ', at, 'unixepoch'), strftime('%Y-%m-%dT%H:%M:%fZ', at, 'unixepoch'))),
       NULL
FROM t CROSS JOIN e"#;

const POSTGRES_JOBS: &str = r#"
INSERT INTO jobs (id, workspace_id, job_type, status, priority, progress, metadata, result, error,
                  created_at, updated_at, started_at, completed_at, last_seq)
SELECT (h || '70008000000000000000')::uuid, '@WS@', 'bench', 'completed', 0, 100, '{}'::json, '{"ok":true}'::json, NULL,
       to_timestamp(at), to_timestamp(at + 30), to_timestamp(at + 1), to_timestamp(at + 30), 4
FROM generate_series(1, @N@) AS i,
     LATERAL (SELECT lpad(to_hex(i), 12, '0') AS h, @BASE@ + i * @STEP@::float8 AS at) AS t"#;

const POSTGRES_EVENTS: &str = r#"
INSERT INTO job_events (id, job_id, seq, event_type, workspace_id, step_id, created_at, data, commit_order)
SELECT (h || '70008' || lpad(to_hex(e.seq), 3, '0') || '000000000000')::uuid, (h || '70008000000000000000')::uuid,
       e.seq, e.kind, '@WS@', NULL, to_timestamp(at + e.after),
       coalesce(e.data,
         '{"job":{"id":"' || (h || '70008000000000000000')::uuid::text || '","workspaceId":"@WS@","type":"bench","status":"pending","priority":0,"progress":0,"metadata":{},"result":null,"error":null,"createdAt":"'
         || to_char(to_timestamp(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') || '","updatedAt":"'
         || to_char(to_timestamp(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
         || '","startedAt":null,"completedAt":null,"lastSeq":1}}')::json,
       NULL
FROM generate_series(1, @N@) AS i,
     LATERAL (SELECT lpad(to_hex(i), 12, '0') AS h, @BASE@ + i * @STEP@::float8 AS at) AS t,
     (VALUES (1, 'job.created', 0, NULL::text),
             (2, 'job.queued', 0, '{"status":"queued","previousStatus":"pending"}'),
             (3, 'job.started', 1, '{"status":"running","previousStatus":"queued"}'),
             (4, 'job.completed', 30, '{"status":"completed","previousStatus":"running","result":{"ok":true}}'))
       AS e(seq, kind, after, data)"#;

/// Writes `jobs` finished jobs of `workspace` (with their events) into the
/// migrated, otherwise empty database at `url`, in one transaction; on
/// PostgreSQL then `VACUUM ANALYZE`, as autovacuum would after such a load.
pub async fn seed(url: &str, jobs: u64, workspace: &str) -> anyhow::Result<()> {
    check_workspace(workspace)?;
    let started = Instant::now();
    let db = jobstream_job_events::open(url).await?;
    let backend = db.get_database_backend();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // The newest seeded job finished an hour ago.
    let base = now.saturating_sub((jobs as f64 * SPACING_SECS) as u64 + 3600);
    let fill = |sql: &str| {
        sql.replace("@N@", &jobs.to_string())
            .replace("@BASE@", &base.to_string())
            .replace("@STEP@", &SPACING_SECS.to_string())
            .replace("@WS@", workspace)
    };
    let (job_sql, event_sql) = match backend {
        DbBackend::Postgres => (POSTGRES_JOBS, POSTGRES_EVENTS),
        _ => (SQLITE_JOBS, SQLITE_EVENTS),
    };
    let tx = db.begin().await?;
    if backend == DbBackend::Sqlite {
        tx.execute(Statement::from_string(backend, "PRAGMA cache_size = -262144")).await?;
    }
    let inserted = tx.execute(Statement::from_string(backend, fill(job_sql))).await?.rows_affected();
    let events = tx.execute(Statement::from_string(backend, fill(event_sql))).await?.rows_affected();
    tx.commit().await?;
    let loaded = started.elapsed();
    if backend == DbBackend::Postgres {
        db.execute(Statement::from_string(backend, "VACUUM ANALYZE jobs, job_events")).await?;
    }
    if inserted != jobs || events != jobs * EVENTS_PER_JOB {
        bail!("seeded {inserted} jobs and {events} events, expected {jobs} and {}", jobs * EVENTS_PER_JOB);
    }
    eprintln!(
        "seeded {jobs} finished jobs and {events} events in workspace {workspace} in {:.1}s (+{:.1}s vacuum/analyze)",
        loaded.as_secs_f64(),
        (started.elapsed() - loaded).as_secs_f64()
    );
    db.close().await?;
    Ok(())
}

/// Connects the clients with at most `in_flight` subscriptions awaiting their
/// ack at once, and waits until every one is acked.
async fn connect_paced(clients: Vec<Client>, delivery: &Arc<Delivery>, in_flight: usize) -> anyhow::Result<Fleet> {
    let n = clients.len();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(n.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut ready = 0;
    let mut wait = async |ready: &mut usize| match tokio::time::timeout(Duration::from_secs(180), ready_rx.recv()).await
    {
        Ok(Some(())) => {
            *ready += 1;
            Ok(())
        }
        _ => {
            Err(anyhow!("only {ready} of {n} clients subscribed (errors: {})", delivery.errors.load(Ordering::Relaxed)))
        }
    };
    for (i, client) in clients.into_iter().enumerate() {
        while i - ready >= in_flight.max(1) {
            wait(&mut ready).await?;
        }
        tasks.spawn(sio::run(client, delivery.clone(), ready_tx.clone(), stop_rx.clone()));
    }
    drop(ready_tx);
    while ready < n {
        wait(&mut ready).await?;
    }
    eprintln!("{n} clients connected and subscribed in {:.1}s", started.elapsed().as_secs_f64());
    Ok(Fleet { stop, tasks })
}

/// `jobstream_cursors` from `/metrics`, where the server exports it.
async fn cursors(api: &Api) -> Option<f64> {
    let text = api.get_text("/metrics").await.ok()??;
    text.lines().find_map(|l| l.strip_prefix("jobstream_cursors ")).and_then(|v| v.trim().parse().ok())
}

/// How many sockets got one event written at `started`: waits for `expected`
/// (up to 15 s), then a second longer for anything extra.
/// (received, duplicates, out of order, ms from the write until all arrived)
async fn count_delivery(delivery: &Delivery, expected: u64, started: Instant) -> (u64, u64, u64, Option<f64>) {
    let mut all = None;
    while started.elapsed() < Duration::from_secs(15) {
        if delivery.received.load(Ordering::Relaxed) >= expected {
            all = Some(started.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    (
        delivery.received.load(Ordering::Relaxed),
        delivery.duplicates.load(Ordering::Relaxed),
        delivery.out_of_order.load(Ordering::Relaxed),
        all,
    )
}

fn once(sockets: usize, (received, dup, ooo, _): (u64, u64, u64, Option<f64>)) -> String {
    let mark = if received == sockets as u64 && dup == 0 && ooo == 0 { "✓" } else { "✗" };
    format!(
        "{received}/{sockets} {mark}{}",
        if dup + ooo > 0 { format!(" (dup {dup}, out of order {ooo})") } else { String::new() }
    )
}

/// Runs the scenario against a server whose database `seed` filled.
pub async fn run(common: &Common, api: &Api, delivery: &Arc<Delivery>, s: Settings) -> anyhow::Result<()> {
    check_workspace(&s.workspace)?;
    // The seeded history is there: the oldest and the newest finished job.
    for i in [1, s.jobs] {
        let id = finished_job_id(i);
        let (status, job) = api.call("GET", &format!("/api/v1/jobs/{id}"), None).await?;
        if status != 200 || job["status"] != "completed" || job["workspaceId"] != s.workspace.as_str() {
            bail!("seeded job {i} ({id}) is not a completed job of {}: {status} {job}", s.workspace);
        }
    }
    for _ in 0..s.live {
        api.running_job(&s.workspace).await?;
    }
    let subs = |_| vec![Sub::Workspace(s.workspace.clone())];
    // Warm-up: the first reads fill the database's caches (SQLite's page cache
    // lives in the server); those are not per subscription.
    connect_paced(clients(common, 10, subs)?, delivery, s.in_flight).await?.shutdown().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    delivery.reset();

    let before = proc_stats(common.pid);
    let cursors_before = cursors(api).await;
    let fleet = connect_paced(clients(common, s.sockets, subs)?, delivery, s.in_flight).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = proc_stats(common.pid);
    let cursors_after = cursors(api).await;
    let per_kib = after.rss.saturating_sub(before.rss) as f64 / s.sockets as f64 / 1024.0;
    let per_cursors = cursors_before.zip(cursors_after).map(|(b, a)| (a - b) / s.sockets as f64);
    let (p50, p99, max) = (delivery.acks.quantile_ms(0.5), delivery.acks.quantile_ms(0.99), delivery.acks.max_ms());
    let acks = delivery.acks.count();
    let ack_kib = delivery.ack_bytes.load(Ordering::Relaxed) as f64 / acks.max(1) as f64 / 1024.0;

    // A later event of the oldest finished job: no subscriber holds a cursor for it.
    delivery.reset();
    let old = finished_job_id(1);
    let sent = Instant::now();
    api.post_ok(&format!("/api/v1/jobs/{old}/events"), json!({ "type": "gate.passed" })).await?;
    let event = count_delivery(delivery, s.sockets as u64, sent).await;
    // A new job.
    delivery.reset();
    let sent = Instant::now();
    api.post_ok("/api/v1/jobs", json!({ "workspaceId": s.workspace, "type": "bench" })).await?;
    let created = count_delivery(delivery, s.sockets as u64, sent).await;
    fleet.shutdown().await;

    let ms = |t: Option<f64>| t.map_or("-".to_owned(), |t| format!("{t:.0} ms"));
    println!(
        "history: {} finished + {} running jobs ({}), {} sockets each subscribed to the workspace ({} acks of {ack_kib:.1} KiB, {} in flight): server RSS {:.1} MiB -> {:.1} MiB, {per_kib:.1} KiB per subscription; cursors per subscription {}; ack p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; later job:event {} (all in {}); job:created {} (all in {})",
        s.jobs,
        s.live,
        s.db,
        s.sockets,
        acks,
        s.in_flight,
        mib(before.rss),
        mib(after.rss),
        per_cursors.map_or("n/a".to_owned(), |c| format!("{c:.1}")),
        once(s.sockets, event),
        ms(event.3),
        once(s.sockets, created),
        ms(created.3),
    );
    println!("| finished jobs | db | KiB per subscription | ack p50 ms | ack p99 ms | ack max ms | later job:event | job:created |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {per_kib:.1} | {p50:.1} | {p99:.1} | {max:.1} | {} | {} |",
        s.jobs,
        s.db,
        once(s.sockets, event),
        once(s.sockets, created)
    );
    let result: Value = json!({
        "scenario": "history", "jobs": s.jobs, "db": s.db, "live": s.live, "sockets": s.sockets,
        "rss_before": before.rss, "rss_after": after.rss, "kib_per_subscription": per_kib,
        "cursors_per_subscription": per_cursors,
        "ack_kib": ack_kib, "ack_p50_ms": p50, "ack_p99_ms": p99, "ack_max_ms": max,
        "event_received": event.0, "event_duplicates": event.1, "event_out_of_order": event.2,
        "created_received": created.0, "created_duplicates": created.1, "created_out_of_order": created.2,
    });
    println!("RESULT {result}");
    Ok(())
}
