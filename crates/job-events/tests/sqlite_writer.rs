//! SQLite's writer thread: used for SQLite files, and what it stores is what
//! the pool's connections store, column by column, so either reads the other's rows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use jobstream_job_events::{JobEvents, NullSink, WriteError};
use jobstream_protocol::{
    BatchItem, CompleteStep, CreateJob, CustomEventRequest, EventType, JobStatus, OutputStream, ProgressRequest,
    StartStep, StatusRequest, StepOutputRequest, StepPhase, StepStatus, StepType,
};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use support::{Engine, TestDb};
use uuid::Uuid;

/// The same writes, with the same client-chosen ids, on `writer`: a job, a
/// step with output over three lines, a batch, a repeat, refusals (one
/// inside a group of writes), a custom event after the job finished.
async fn the_same_writes(writer: &JobEvents, job: Uuid, step: Uuid, ids: &[Uuid]) {
    let create = CreateJob {
        id: Some(job),
        workspace_id: "ws-ü".into(),
        job_type: "build".into(),
        priority: Some(-3),
        metadata: Some(serde_json::json!({ "branch": "main", "n": 1e18, "z": -0.0 }).as_object().unwrap().clone()),
    };
    writer.create_job(create.clone()).await.unwrap();
    assert!(!writer.create_job(create).await.unwrap().1, "a repeated creation writes nothing");
    let status = move |status| BatchItem::Status(job, StatusRequest { status, result: None, error: None });
    writer.write_with_id(status(JobStatus::Queued), Some(ids[0]), |_| true).await.unwrap();
    writer.write_with_id(status(JobStatus::Running), Some(ids[1]), |_| true).await.unwrap();
    let start =
        StartStep { id: Some(step), name: "compile".into(), phase: StepPhase::Execution, step_type: StepType::Command };
    writer.write_with_id(BatchItem::Step(job, start), Some(ids[2]), |_| true).await.unwrap();
    let output = |chunk: &str| StepOutputRequest { chunk: chunk.into(), stream: Some(OutputStream::Stderr) };
    let batch = vec![
        (BatchItem::Output(job, step, output("one\ntwo\n")), Some(ids[3])),
        (
            BatchItem::Progress(job, ProgressRequest { progress: 40, message: Some("half \u{0} way".into()) }),
            Some(ids[4]),
        ),
        (BatchItem::Output(job, step, output("three")), Some(ids[5])),
    ];
    writer.write_batch_with_ids(batch, |_| true).await.unwrap();
    // A group of writes in which one is refused and rolled back alone.
    let turn = writer.hold_writer_turn().await;
    let grouped = {
        let (a, b) = (writer.clone(), writer.clone());
        let refused = tokio::spawn(async move { a.write(status(JobStatus::Pending), |_| true).await });
        let progress = BatchItem::Progress(job, ProgressRequest { progress: 60, message: None });
        let kept = tokio::spawn(async move { b.write_with_id(progress, Some(Uuid::from_u128(7)), |_| true).await });
        (refused, kept)
    };
    while writer.queued_writes() < 2 {
        tokio::task::yield_now().await;
    }
    drop(turn);
    assert!(matches!(grouped.0.await.unwrap(), Err(WriteError::InvalidTransition { .. })));
    grouped.1.await.unwrap().unwrap();
    let done = CompleteStep {
        status: StepStatus::Failed,
        error: Some("exit 1".into()),
        tokens_input: Some(12),
        tokens_output: None,
    };
    writer.write_with_id(BatchItem::StepComplete(job, step, done), Some(ids[6]), |_| true).await.unwrap();
    let finished = BatchItem::Status(
        job,
        StatusRequest {
            status: JobStatus::Completed,
            result: Some(serde_json::json!({ "ok": true, "x": 1.5 })),
            error: None,
        },
    );
    writer.write_with_id(finished.clone(), Some(ids[7]), |_| true).await.unwrap();
    assert!(writer.write_with_id(finished, Some(ids[7]), |_| true).await.unwrap().repeated);
    let custom = CustomEventRequest {
        event_type: EventType::parse("ai.tool_called").unwrap(),
        step_id: Some(step),
        payload: Some(serde_json::json!({ "text": "😀" }).as_object().unwrap().clone()),
    };
    writer.write_with_id(BatchItem::Event(job, custom), Some(ids[8]), |_| true).await.unwrap();
}

fn new_job() -> CreateJob {
    CreateJob { id: None, workspace_id: "ws".into(), job_type: "t".into(), priority: None, metadata: None }
}

/// Every row of the three tables, each column as its SQLite storage class and
/// its value, except values that differ from run to run (times, durations,
/// commit orders, generated ids); those are checked to be written as sqlx
/// writes them.
async fn stored(db: &TestDb) -> Vec<String> {
    const VARYING: [&str; 7] =
        ["created_at", "updated_at", "started_at", "completed_at", "duration_ms", "commit_order", "pruned_at"];
    let mut rows = Vec::new();
    for (table, order) in [("jobs", "id"), ("job_steps", "id"), ("job_events", "seq")] {
        let columns = db
            .db
            .query_all(Statement::from_string(
                DbBackend::Sqlite,
                format!("SELECT name FROM pragma_table_info('{table}')"),
            ))
            .await
            .unwrap();
        let columns: Vec<String> = columns.iter().map(|c| c.try_get_by_index::<String>(0).unwrap()).collect();
        let select: Vec<String> = columns.iter().map(|c| format!("typeof({c}) || ':' || quote({c})")).collect();
        let sql = format!(
            "SELECT event_type_or_none, {} FROM (SELECT *, {} AS event_type_or_none FROM {table}) ORDER BY {order}",
            select.join(", "),
            if table == "job_events" { "event_type" } else { "''" }
        );
        for row in db.db.query_all(Statement::from_string(DbBackend::Sqlite, sql)).await.unwrap() {
            let kind: String = row.try_get_by_index(0).unwrap();
            let mut line = vec![table.to_owned()];
            for (index, column) in columns.iter().enumerate() {
                let value: String = row.try_get_by_index(index + 1).unwrap();
                let (class, text) = value.split_once(':').unwrap();
                let generated = column == "id" && kind == "job.created";
                let has_times =
                    column == "data" && matches!(kind.as_str(), "job.created" | "step.failed" | "step.completed");
                if column.ends_with("_at") && class == "text" {
                    let text = text.trim_matches('\'');
                    let at = chrono::DateTime::parse_from_rfc3339(text).expect("an RFC 3339 timestamp");
                    assert_eq!(text, at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false), "sqlx's format");
                }
                if VARYING.contains(&column.as_str()) || generated || has_times {
                    line.push(format!("{column}={class}"));
                } else {
                    line.push(format!("{column}={value}"));
                }
            }
            rows.push(line.join(" "));
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_is_written_on_the_writers_thread_and_a_database_in_memory_through_the_pool() {
    let Some(file) = TestDb::open(Engine::Sqlite).await else { return };
    assert!(JobEvents::new(file.db.clone(), Arc::new(NullSink)).has_writer_thread());
    let memory = jobstream_job_events::open("sqlite::memory:").await.unwrap();
    jobstream_job_events::migrate(&memory).await.unwrap();
    let writer = JobEvents::new(memory.clone(), Arc::new(NullSink));
    assert!(!writer.has_writer_thread());
    let (job, created) = writer.create_job(new_job()).await.unwrap();
    assert!(created);
    assert_eq!(writer.store().job(job.id).await.unwrap().unwrap().last_seq, 1);
    file.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writers_thread_stores_every_column_as_the_pools_connection_does() {
    let (Some(threaded), Some(pooled)) = (TestDb::open(Engine::Sqlite).await, TestDb::open(Engine::Sqlite).await)
    else {
        return;
    };
    let (job, step) = (Uuid::now_v7(), Uuid::now_v7());
    let ids: Vec<Uuid> = (0..9).map(|_| Uuid::now_v7()).collect();
    let thread_writer = JobEvents::new(threaded.db.clone(), Arc::new(NullSink));
    assert!(thread_writer.has_writer_thread());
    the_same_writes(&thread_writer, job, step, &ids).await;
    let pool_writer = JobEvents::new(pooled.db.clone(), Arc::new(NullSink)).without_writer_thread();
    assert!(!pool_writer.has_writer_thread());
    the_same_writes(&pool_writer, job, step, &ids).await;
    let (a, b) = (stored(&threaded).await, stored(&pooled).await);
    assert_eq!(a.len(), 13, "{a:#?}");
    assert_eq!(a, b);
    // And each reads the other's rows: the thread's through sea-orm.
    let events = thread_writer.store().events_after(job, 0, 100).await.unwrap();
    assert_eq!(events.iter().map(|e| e.event.seq).collect::<Vec<_>>(), (1..=11).collect::<Vec<_>>());
    let snapshot = thread_writer.store().job(job).await.unwrap().unwrap();
    assert_eq!((snapshot.status, snapshot.progress), (JobStatus::Completed, 60));
    thread_writer.close().await.unwrap();
    threaded.close().await;
    pooled.close().await;
}

/// A sink that panics on its second delivery.
#[derive(Default)]
struct PanicsOnce(std::sync::atomic::AtomicUsize, std::sync::Mutex<Vec<Uuid>>);

impl jobstream_job_events::EventSink for PanicsOnce {
    fn publish(&self, _: &[Arc<jobstream_job_events::Committed>]) {
        if self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            panic!("a sink that fails");
        }
    }

    fn uncertain(&self, jobs: &[Uuid]) {
        self.1.lock().unwrap().extend_from_slice(jobs);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_write_is_answered_as_committed_even_when_delivery_fails() {
    let Some(db) = TestDb::open(Engine::Sqlite).await else { return };
    let sink = Arc::new(PanicsOnce::default());
    let writer = JobEvents::new(db.db.clone(), sink.clone());
    let (job, _) = writer.create_job(new_job()).await.unwrap();
    // Three writes in one group: the sink panics on the first of them.
    let turn = writer.hold_writer_turn().await;
    let writes: Vec<_> = (0..3)
        .map(|i| {
            let writer = writer.clone();
            let item = BatchItem::Progress(job.id, ProgressRequest { progress: 10 * i, message: None });
            tokio::spawn(async move { writer.write(item, |_| true).await })
        })
        .collect();
    while writer.queued_writes() < 3 {
        tokio::task::yield_now().await;
    }
    drop(turn);
    let mut seqs = Vec::new();
    for write in writes {
        seqs.push(write.await.unwrap().expect("a committed write is answered as such").event.event.seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(*sink.1.lock().unwrap(), [job.id], "the job's subscribers are checked against the database");
    assert_eq!(writer.store().job(job.id).await.unwrap().unwrap().last_seq, 4);
    writer.close().await.unwrap();
    db.close().await;
}
