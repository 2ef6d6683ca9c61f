//! Query plans at scale: every query on a hot path reads `jobs` and
//! `job_events` through an index, never by a full scan, on a database the
//! size of a long-lived installation.
//!
//! PostgreSQL is seeded by SQL (`generate_series`) with 1M jobs and 10M
//! events (about a minute: the event table's indexes are dropped for the load
//! and rebuilt from their own definitions, and foreign-key triggers are off
//! for the loading session), then `ANALYZE`d as autovacuum would. SQLite is
//! seeded with 100k jobs and 1M events by a recursive CTE and `ANALYZE`d, so
//! its planner weighs the same distribution (SQLite's planner works from
//! `sqlite_stat1`, the same at both sizes; the full size would take minutes).
//! `JOBSTREAM_PLAN_JOBS` sets another number of jobs (10 events each).
//!
//! The statements checked are the ones the code runs: they are recorded from
//! the connection (sea-orm's metric callback) while the store and the writer
//! do their work, then each is explained with its own bound values —
//! `EXPLAIN (FORMAT JSON)` on PostgreSQL, `EXPLAIN QUERY PLAN` on SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use jobstream_job_events::{EventStore, JobEvents, JobQuery, NullSink, Prune};
use jobstream_protocol::JobStatus;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::Value;
use support::TestDb;
use uuid::Uuid;

/// Seconds since the epoch of job 1's creation; job `i` is created `5 * i` s later.
const BASE: i64 = 1_700_000_000;
/// Events per seeded job.
const EVENTS_PER_JOB: i64 = 10;

fn seeded_jobs(default: u64) -> u64 {
    std::env::var("JOBSTREAM_PLAN_JOBS").ok().and_then(|n| n.parse().ok()).unwrap_or(default)
}

/// Job `i`'s id (the same text on both engines).
fn job_id(i: u64) -> Uuid {
    format!("{i:012x}70008000000000000000").parse().unwrap()
}

/// 1 job in 1000 is running (in `ws-7`), 1 in 10 failed, the rest completed; 100
/// workspaces `ws-0` … `ws-99`; each job has 10 `job.progress` events.
async fn seed_postgres(url: &str, jobs: u64) {
    // One connection for the load: the role setting is per session.
    let conn = sea_orm::Database::connect(url).await.unwrap();
    let horizon: i64 = conn
        .query_one(Statement::from_string(DbBackend::Postgres, "SELECT pg_current_xact_id()::text::bigint AS v"))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "v")
        .unwrap();
    let indexes: Vec<String> = conn
        .query_all(Statement::from_string(
            DbBackend::Postgres,
            "SELECT indexdef AS v FROM pg_indexes WHERE tablename = 'job_events' AND indexname <> 'job_events_pkey'",
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.try_get("", "v").unwrap())
        .collect();
    let names: Vec<String> = conn
        .query_all(Statement::from_string(
            DbBackend::Postgres,
            "SELECT indexname AS v FROM pg_indexes WHERE tablename = 'job_events' AND indexname <> 'job_events_pkey'",
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.try_get("", "v").unwrap())
        .collect();
    let mut sql = vec!["SET session_replication_role = replica".to_owned()];
    sql.push("ALTER TABLE job_events DROP CONSTRAINT job_events_pkey".into());
    sql.extend(names.iter().map(|name| format!("DROP INDEX {name}")));
    sql.push(format!(
        "INSERT INTO jobs (id, workspace_id, job_type, status, priority, progress, metadata, result, error,
                           created_at, updated_at, started_at, completed_at, last_seq)
         SELECT (lpad(to_hex(i), 12, '0') || '70008000000000000000')::uuid, 'ws-' || (i % 100), 'build',
                CASE WHEN i % 1000 = 7 THEN 'running' WHEN i % 10 = 0 THEN 'failed' ELSE 'completed' END,
                0, 100, '{{}}'::json, NULL, NULL,
                to_timestamp({BASE} + i * 5), to_timestamp({BASE} + i * 5 + 30), to_timestamp({BASE} + i * 5 + 1),
                CASE WHEN i % 1000 = 7 THEN NULL ELSE to_timestamp({BASE} + i * 5 + 30) END, {EVENTS_PER_JOB}
         FROM generate_series(1, {jobs}) AS i"
    ));
    sql.push(format!(
        "INSERT INTO job_events (id, job_id, seq, event_type, workspace_id, step_id, created_at, data, commit_order)
         SELECT (lpad(to_hex(i), 12, '0') || '7000' || lpad(to_hex(s), 4, '0') || '000000000000')::uuid,
                (lpad(to_hex(i), 12, '0') || '70008000000000000000')::uuid, s, 'job.progress', 'ws-' || (i % 100),
                NULL, to_timestamp({BASE} + i * 5 + s), '{{\"progress\":50}}'::json, ({horizon} - 1)::bigint * i / {jobs}
         FROM generate_series(1, {jobs}) AS i, generate_series(1, {EVENTS_PER_JOB}) AS s"
    ));
    sql.push("ALTER TABLE job_events ADD CONSTRAINT job_events_pkey PRIMARY KEY (id)".into());
    sql.extend(indexes);
    sql.push("ANALYZE jobs, job_events, job_steps".into());
    for statement in sql {
        conn.execute_unprepared(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let _ = conn.close().await;
}

/// The same rows on SQLite (ids as 16-byte blobs, times as RFC 3339 text).
async fn seed_sqlite(db: &sea_orm::DatabaseConnection, jobs: u64) {
    let time = |expr: &str| format!("strftime('%Y-%m-%dT%H:%M:%f+00:00', {expr}, 'unixepoch')");
    let sql = [
        format!(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {jobs})
             INSERT INTO jobs (id, workspace_id, job_type, status, priority, progress, metadata, result, error,
                               created_at, updated_at, started_at, completed_at, last_seq)
             SELECT unhex(printf('%012x', i) || '70008000000000000000'), 'ws-' || (i % 100), 'build',
                    CASE WHEN i % 1000 = 7 THEN 'running' WHEN i % 10 = 0 THEN 'failed' ELSE 'completed' END,
                    0, 100, '{{}}', NULL, NULL, {}, {}, {},
                    CASE WHEN i % 1000 = 7 THEN NULL ELSE {} END, {EVENTS_PER_JOB}
             FROM s",
            time(&format!("{BASE} + i * 5")),
            time(&format!("{BASE} + i * 5 + 30")),
            time(&format!("{BASE} + i * 5 + 1")),
            time(&format!("{BASE} + i * 5 + 30")),
        ),
        format!(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {jobs}),
                  e(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM e WHERE n < {EVENTS_PER_JOB})
             INSERT INTO job_events (id, job_id, seq, event_type, workspace_id, step_id, created_at, data, commit_order)
             SELECT unhex(printf('%012x', i) || '7000' || printf('%04x', n) || '000000000000'),
                    unhex(printf('%012x', i) || '70008000000000000000'), n, 'job.progress', 'ws-' || (i % 100),
                    NULL, {}, '{{\"progress\":50}}', i * {EVENTS_PER_JOB} + n
             FROM s, e",
            time(&format!("{BASE} + i * 5 + n")),
        ),
        format!("UPDATE commit_counter SET value = {} WHERE id = 1", (jobs as i64 + 1) * EVENTS_PER_JOB),
        "ANALYZE".to_owned(),
    ];
    for statement in sql {
        db.execute_unprepared(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// Runs the hot paths on a connection that records every statement, and
/// returns them by the path that ran them.
async fn hot_path_statements(url: &str, jobs: u64) -> Vec<(&'static str, Statement)> {
    let mut conn = jobstream_job_events::open(url).await.unwrap();
    let log: Arc<Mutex<Vec<Statement>>> = Arc::default();
    let sink = log.clone();
    conn.set_metric_callback(move |info| sink.lock().unwrap().push(info.statement.clone()));
    let store = EventStore::new(conn.clone());
    let mut writer = JobEvents::new(conn.clone(), Arc::new(NullSink));
    let sink = log.clone();
    writer.set_metric_callback(move |info| sink.lock().unwrap().push(info.statement.clone()));
    let mut out = Vec::new();
    let mut take = |path: &'static str| {
        let statements = std::mem::take(&mut *log.lock().unwrap());
        assert!(!statements.is_empty(), "{path} ran no statement");
        out.extend(statements.into_iter().map(|s| (path, s)));
    };
    let middle = job_id(jobs / 2 + 7);
    assert!(store.job(middle).await.unwrap().is_some());
    take("job snapshot");
    assert_eq!(store.events_after(middle, 3, 1_000).await.unwrap().len(), 7);
    take("events after a seq");
    let snapshot = store.workspace_snapshot("ws-7").await.unwrap();
    assert!(!snapshot.cursors.is_empty());
    take("workspace snapshot");
    store.last_seen_seq(middle, &snapshot.horizon).await.unwrap();
    take("last seq a workspace snapshot saw");
    store.jobs_changed_since("ws-7", &snapshot.horizon).await.unwrap();
    take("jobs changed since a workspace snapshot");
    for (path, workspaces, status) in [
        ("jobs list by status, one workspace", Some(vec!["ws-7".to_owned()]), JobStatus::Completed),
        ("jobs list by status, a token's workspaces", Some(vec!["ws-10".into(), "ws-20".into()]), JobStatus::Failed),
        ("jobs list by status, every workspace", None, JobStatus::Running),
    ] {
        let listed = store.jobs(JobQuery { workspaces, status: Some(status), limit: 50 }).await.unwrap();
        assert_eq!(listed.len(), 50);
        take(path);
    }
    // Jobs 1 to 30 (job i completes at BASE + 5 i + 30) but job 7, which runs:
    // enough for transactions of many jobs, where a plan may change with the
    // ids' count.
    let cut = chrono::DateTime::from_timestamp(BASE + 5 * 30 + 31, 0).unwrap();
    let report = writer.prune(&Prune { finished_before: cut, workspace: None, dry_run: false }).await.unwrap();
    assert_eq!((report.jobs, report.events), (29, 29 * EVENTS_PER_JOB as u64));
    take("retention (candidates and deletes)");
    let _ = conn.close().await;
    out
}

/// Whether `sql` reads or writes `jobs` or `job_events`.
fn touches_job_tables(sql: &str) -> bool {
    let sql = sql.to_ascii_lowercase();
    ["\"jobs\"", "\"job_events\"", " jobs ", " job_events "].iter().any(|t| sql.contains(t))
        && ["select", "delete", "update"].iter().any(|verb| sql.trim_start().starts_with(verb))
}

/// Paths that must read rows in index order, not sort what matched: a list
/// with a limit over one workspace or every workspace (a token's several
/// workspaces are several ranges, merged by a sort of their matches), and
/// retention's oldest finished jobs (a sort would read every finished job in
/// every round).
fn in_index_order(path: &str) -> bool {
    (path.starts_with("jobs list") && !path.contains("a token's")) || path.starts_with("retention")
}

/// Every node of a PostgreSQL JSON plan.
fn plan_nodes<'a>(node: &'a Value, out: &mut Vec<&'a Value>) {
    out.push(node);
    for child in node.get("Plans").and_then(Value::as_array).into_iter().flatten() {
        plan_nodes(child, out);
    }
}

async fn check_postgres(db: &TestDb, statements: &[(&str, Statement)]) {
    let mut failures = Vec::new();
    for (path, statement) in statements.iter().filter(|(_, s)| touches_job_tables(&s.sql)) {
        let explain = Statement {
            sql: format!("EXPLAIN (FORMAT JSON) {}", statement.sql),
            values: statement.values.clone(),
            db_backend: DbBackend::Postgres,
        };
        let row = db.db.query_one(explain).await.unwrap().unwrap();
        let plan: Value = row.try_get("", "QUERY PLAN").unwrap();
        let root = &plan[0]["Plan"];
        let mut nodes = Vec::new();
        plan_nodes(root, &mut nodes);
        let seq_scans: Vec<&str> = nodes
            .iter()
            .filter(|n| n["Node Type"] == "Seq Scan")
            .filter_map(|n| n["Relation Name"].as_str())
            .filter(|r| matches!(*r, "jobs" | "job_events"))
            .collect();
        let indexes: Vec<&str> = nodes.iter().filter_map(|n| n["Index Name"].as_str()).collect();
        // An index scan with no condition walks the whole index.
        let walks = nodes.iter().any(|n| n.get("Index Name").is_some() && n.get("Index Cond").is_none());
        let sorts = nodes.iter().any(|n| n["Node Type"] == "Sort");
        eprintln!("{path}: {}\n  indexes {indexes:?}", statement.sql);
        if !seq_scans.is_empty() || indexes.is_empty() || walks || (sorts && in_index_order(path)) {
            failures.push(format!("{path}: {}\n{}", statement.sql, serde_json::to_string_pretty(root).unwrap()));
        }
    }
    assert!(failures.is_empty(), "queries without an index or with a Seq Scan:\n{}", failures.join("\n\n"));
}

async fn check_sqlite(db: &TestDb, statements: &[(&str, Statement)]) {
    let mut failures = Vec::new();
    for (path, statement) in statements.iter().filter(|(_, s)| touches_job_tables(&s.sql)) {
        let explain = Statement {
            sql: format!("EXPLAIN QUERY PLAN {}", statement.sql),
            values: statement.values.clone(),
            db_backend: DbBackend::Sqlite,
        };
        let details: Vec<String> = db
            .db
            .query_all(explain)
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.try_get::<String>("", "detail").unwrap())
            .collect();
        let on = |verb: &str, d: &str| {
            ["jobs", "job_events"].iter().any(|t| d == format!("{verb} {t}") || d.starts_with(&format!("{verb} {t} ")))
        };
        // `SCAN t` reads every row of t (`SCAN t USING INDEX i`: every entry of i).
        let full_scan = details.iter().any(|d| on("SCAN", d));
        let searches = details.iter().any(|d| on("SEARCH", d));
        let sorts = details.iter().any(|d| d == "USE TEMP B-TREE FOR ORDER BY");
        // Jobs named by id are read by their key, whatever else the query says
        // (another index's range can look cheaper to the planner for a long list).
        let by_key = !statement.sql.contains("\"jobs\".\"id\" IN (")
            || details.iter().any(|d| on("SEARCH", d) && d.contains("(id=?)"));
        eprintln!("{path}: {}\n  {details:?}", statement.sql);
        if full_scan || !searches || !by_key || (sorts && in_index_order(path)) {
            failures.push(format!("{path}: {}\n{details:#?}", statement.sql));
        }
    }
    assert!(failures.is_empty(), "queries without an index or with a full scan:\n{}", failures.join("\n\n"));
}

async fn every_hot_path_query_reads_jobs_and_events_through_an_index_at_scale(db: &TestDb) {
    match db.db.get_database_backend() {
        DbBackend::Postgres => {
            let jobs = seeded_jobs(1_000_000);
            let started = std::time::Instant::now();
            seed_postgres(&db.url, jobs).await;
            eprintln!("seeded {jobs} jobs and {} events in {:?}", jobs * 10, started.elapsed());
            let statements = hot_path_statements(&db.url, jobs).await;
            check_postgres(db, &statements).await;
        }
        _ => {
            let jobs = seeded_jobs(100_000);
            let started = std::time::Instant::now();
            seed_sqlite(&db.db, jobs).await;
            eprintln!("seeded {jobs} jobs and {} events in {:?}", jobs * 10, started.elapsed());
            let statements = hot_path_statements(&db.url, jobs).await;
            check_sqlite(db, &statements).await;
        }
    }
}

on_both_engines!(every_hot_path_query_reads_jobs_and_events_through_an_index_at_scale);
