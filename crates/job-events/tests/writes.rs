//! The append service on SQLite and PostgreSQL: seq assignment, concurrency, refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use jobstream_job_events::{JobEvents, WriteError};
use jobstream_protocol::{
    BatchItem, CompleteStep, CreateJob, JobStatus, OutputStream, ProgressRequest, StartStep, StatusRequest, StepPhase,
    StepStatus, StepType,
};
use support::{writer, TestDb};
use uuid::Uuid;

fn new_job(workspace: &str) -> CreateJob {
    CreateJob { id: None, workspace_id: workspace.into(), job_type: "build".into(), priority: None, metadata: None }
}

async fn running_job(writer: &JobEvents) -> Uuid {
    let (job, _) = writer.create_job(new_job("ws-1")).await.unwrap();
    for status in [JobStatus::Queued, JobStatus::Running] {
        writer.emit_job_status_changed(job.id, status, None, None).await.unwrap();
    }
    job.id
}

async fn stored_seqs(writer: &JobEvents, job: Uuid) -> Vec<i64> {
    writer.store().events_after(job, 0, 100_000).await.unwrap().iter().map(|e| e.event.seq).collect()
}

async fn a_new_job_starts_at_seq_one_and_each_event_takes_the_next(db: &TestDb) {
    let (writer, recorder) = writer(db);
    let job = running_job(&writer).await;
    let (step, _) = writer
        .emit_step_started(
            job,
            StartStep { id: None, name: "compile".into(), phase: StepPhase::Execution, step_type: StepType::Command },
        )
        .await
        .unwrap();
    writer.emit_step_output(job, step.id, "ok\n", OutputStream::Stdout).await.unwrap();
    let (done, event) = writer
        .emit_step_completed(
            job,
            step.id,
            CompleteStep { status: StepStatus::Completed, error: None, tokens_input: Some(3), tokens_output: None },
        )
        .await
        .unwrap();
    assert_eq!(done.status, StepStatus::Completed);
    assert_eq!(event.event.seq, 6);
    assert_eq!(stored_seqs(&writer, job).await, vec![1, 2, 3, 4, 5, 6]);
    let published: Vec<i64> = recorder.0.lock().unwrap().iter().map(|e| e.event.seq).collect();
    assert_eq!(published, vec![1, 2, 3, 4, 5, 6]);
    let snapshot = writer.store().job(job).await.unwrap().unwrap();
    assert_eq!((snapshot.last_seq, snapshot.status), (6, JobStatus::Running));
    assert_eq!(snapshot.steps.unwrap()[0].tokens_input, Some(3));
}

async fn eight_concurrent_writers_produce_seq_one_to_n_without_gap_or_duplicate(db: &TestDb) {
    let (writer, recorder) = writer(db);
    let job = running_job(&writer).await;
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let writer = writer.clone();
            tokio::spawn(async move {
                for i in 0..25u8 {
                    let item = BatchItem::Progress(
                        job,
                        ProgressRequest { progress: i64::from(i), message: Some(format!("w{w}")) },
                    );
                    writer.write(item, |_| true).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let expected: Vec<i64> = (1..=203).collect();
    assert_eq!(stored_seqs(&writer, job).await, expected);
    let mut published: Vec<i64> = recorder.0.lock().unwrap().iter().map(|e| e.event.seq).collect();
    published.sort_unstable();
    assert_eq!(published, expected, "every committed event reaches the sink once");
}

async fn a_refused_write_changes_nothing(db: &TestDb) {
    let (writer, recorder) = writer(db);
    let (job, _) = writer.create_job(new_job("ws-1")).await.unwrap();
    let refused = writer.emit_job_status_changed(job.id, JobStatus::Completed, None, None).await;
    assert!(matches!(refused, Err(WriteError::InvalidTransition { .. })), "{refused:?}");
    let missing_step = writer.emit_step_output(job.id, Uuid::now_v7(), "x", OutputStream::Stdout).await;
    assert!(matches!(missing_step, Err(WriteError::StepNotFound { .. })));
    let other_workspace = writer
        .write(BatchItem::Progress(job.id, ProgressRequest { progress: 5, message: None }), |ws: &str| ws == "ws-2")
        .await;
    assert!(matches!(other_workspace, Err(WriteError::JobNotFound(_))));
    assert_eq!(stored_seqs(&writer, job.id).await, vec![1]);
    assert_eq!(writer.store().job(job.id).await.unwrap().unwrap().status, JobStatus::Pending);
    assert_eq!(recorder.0.lock().unwrap().len(), 1);
}

async fn a_batch_with_one_bad_item_writes_nothing(db: &TestDb) {
    let (writer, _) = writer(db);
    let job = running_job(&writer).await;
    let step = Uuid::now_v7();
    let items = vec![
        BatchItem::Step(
            job,
            StartStep { id: Some(step), name: "a".into(), phase: StepPhase::Setup, step_type: StepType::Command },
        ),
        BatchItem::Progress(job, ProgressRequest { progress: 10, message: None }),
        BatchItem::Status(job, StatusRequest { status: JobStatus::Queued, result: None, error: None }),
    ];
    assert!(writer.write_batch(items, |_| true).await.is_err());
    assert_eq!(stored_seqs(&writer, job).await, vec![1, 2, 3]);
    assert!(writer.store().job(job).await.unwrap().unwrap().steps.unwrap().is_empty());
}

async fn a_batch_applies_in_request_order_across_jobs(db: &TestDb) {
    let (writer, _) = writer(db);
    let first = running_job(&writer).await;
    let second = running_job(&writer).await;
    let step = Uuid::now_v7();
    let items = vec![
        BatchItem::Step(
            first,
            StartStep { id: Some(step), name: "a".into(), phase: StepPhase::Setup, step_type: StepType::Command },
        ),
        BatchItem::Progress(second, ProgressRequest { progress: 10, message: None }),
        BatchItem::Output(first, step, jobstream_protocol::StepOutputRequest { chunk: "x".into(), stream: None }),
        BatchItem::StepComplete(
            first,
            step,
            CompleteStep { status: StepStatus::Skipped, error: None, tokens_input: None, tokens_output: None },
        ),
        BatchItem::Status(
            second,
            StatusRequest { status: JobStatus::Completed, result: Some(serde_json::json!({"ok": true})), error: None },
        ),
    ];
    let applied = writer.write_batch(items, |_| true).await.unwrap();
    let seqs: Vec<(Uuid, i64)> = applied.iter().map(|a| (a.event.event.job_id, a.event.event.seq)).collect();
    assert_eq!(seqs, vec![(first, 4), (second, 4), (first, 5), (first, 6), (second, 5)]);
    let done = writer.store().job(second).await.unwrap().unwrap();
    assert_eq!((done.status, done.result), (JobStatus::Completed, Some(serde_json::json!({"ok": true}))));
    assert!(done.completed_at.is_some());
}

async fn a_finished_job_refuses_writes_but_job_events(db: &TestDb) {
    let (writer, _) = writer(db);
    let job = running_job(&writer).await;
    writer.emit_job_status_changed(job, JobStatus::Failed, None, Some("boom".into())).await.unwrap();
    let refused = writer.emit_job_progress(job, 50, None).await;
    assert!(matches!(refused, Err(WriteError::JobFinished { .. })), "{refused:?}");
    let custom = writer
        .emit_job_event(job, jobstream_protocol::EventType::GatePassed, None, serde_json::Map::new())
        .await
        .unwrap();
    assert_eq!(custom.event.seq, 5);
}

async fn creating_the_same_job_id_twice_returns_the_existing_job(db: &TestDb) {
    let (writer, _) = writer(db);
    let id = Uuid::now_v7();
    let request = CreateJob { id: Some(id), ..new_job("ws-1") };
    let (first, created) = writer.create_job(request.clone()).await.unwrap();
    let (second, again) = writer.create_job(request).await.unwrap();
    assert!(created && !again);
    assert_eq!(first, second);
    let elsewhere = writer.create_job(CreateJob { id: Some(id), ..new_job("ws-2") }).await;
    assert!(matches!(elsewhere, Err(WriteError::Conflict(_))));
    assert_eq!(stored_seqs(&writer, id).await, vec![1]);
}

async fn workspace_snapshots_list_recent_jobs_and_every_cursor(db: &TestDb) {
    let (writer, _) = writer(db);
    let mut ids = HashSet::new();
    for _ in 0..3 {
        ids.insert(running_job(&writer).await);
    }
    writer.create_job(new_job("ws-other")).await.unwrap();
    let snapshot = writer.store().workspace_snapshot("ws-1").await.unwrap();
    assert_eq!(snapshot.jobs.len(), 3);
    assert!(snapshot.jobs.windows(2).all(|w| w[0].updated_at >= w[1].updated_at), "newest first");
    let cursors: HashSet<(Uuid, i64)> = snapshot.cursors.into_iter().collect();
    assert_eq!(cursors, ids.into_iter().map(|id| (id, 3)).collect());
}

/// A token may name more workspaces than one SQL statement takes bound
/// values (SQLite: 32,766): its list is read in parts, with the same answer
/// as a list of only the workspaces that have jobs.
async fn jobs_of_more_workspaces_than_a_statement_takes_are_listed_newest_first(db: &TestDb) {
    let (writer, _) = writer(db);
    for workspace in ["ws-a", "ws-b", "ws-c", "ws-a", "ws-c"] {
        writer.create_job(new_job(workspace)).await.unwrap();
    }
    let mut many: Vec<String> = (0..40_000).map(|i| format!("none-{i}")).collect();
    many.insert(3, "ws-a".into());
    many.insert(20_000, "ws-b".into());
    many.push("ws-c".into());
    for limit in [50, 3, 1] {
        let query = |workspaces: Vec<String>| jobstream_job_events::JobQuery {
            workspaces: Some(workspaces),
            status: None,
            limit,
        };
        let few = writer.store().jobs(query(vec!["ws-a".into(), "ws-b".into(), "ws-c".into()])).await.unwrap();
        let listed = writer.store().jobs(query(many.clone())).await.unwrap();
        let ids = |jobs: &[jobstream_protocol::JobSnapshot]| jobs.iter().map(|j| j.id).collect::<Vec<_>>();
        assert_eq!(ids(&listed), ids(&few), "limit {limit}");
        assert_eq!(listed.len(), 5.min(limit as usize));
    }
}

/// A replay page is what subscribers got live: the same events, byte for byte
/// on the wire, whatever the kind, text or stream (pages of any size).
async fn events_read_back_are_byte_identical_to_what_was_published(db: &TestDb) {
    let (writer, recorder) = writer(db);
    let job = running_job(&writer).await;
    writer.emit_job_progress(job, 40, Some("h\u{e9}lf \"way\"\n".into())).await.unwrap();
    let (step, _) = writer
        .emit_step_started(
            job,
            StartStep {
                id: None,
                name: "t\u{1F600}st".into(),
                phase: StepPhase::Execution,
                step_type: StepType::Command,
            },
        )
        .await
        .unwrap();
    writer.emit_step_progress(job, step.id, 7, None).await.unwrap();
    for (chunk, stream) in [
        ("plain\n", OutputStream::Stdout),
        ("\u{1b}[31mred\u{1b}[0m\t\\ \u{2028}\n", OutputStream::Stderr),
        ("", OutputStream::Stdout),
    ] {
        writer.emit_step_output(job, step.id, chunk, stream).await.unwrap();
    }
    let mut payload = serde_json::Map::new();
    payload.insert(
        "tool".into(),
        serde_json::json!({ "name": "grep", "args": [1, 2.5, null, true], "big": 9007199254740993_u64 }),
    );
    writer.emit_job_event(job, jobstream_protocol::EventType::AiToolCalled, Some(step.id), payload).await.unwrap();
    writer
        .emit_step_completed(
            job,
            step.id,
            CompleteStep {
                status: StepStatus::Failed,
                error: Some("exit 1".into()),
                tokens_input: None,
                tokens_output: Some(2),
            },
        )
        .await
        .unwrap();
    writer
        .emit_job_status_changed(job, JobStatus::Completed, Some(serde_json::json!({ "ok": [1, { "x": "y" }] })), None)
        .await
        .unwrap();
    let published: Vec<String> = recorder.0.lock().unwrap().iter().map(|e| e.json.get().to_owned()).collect();
    assert_eq!(published.len(), 12);
    for page in [1, 4, 100] {
        let mut read = Vec::new();
        loop {
            let events = writer.store().events_after(job, read.len() as i64, page).await.unwrap();
            if events.is_empty() {
                break;
            }
            read.extend(events.iter().map(|e| e.json.get().to_owned()));
        }
        assert_eq!(read, published, "pages of {page}");
    }
    assert!(writer.store().events_after(job, 12, 10).await.unwrap().is_empty());
    assert!(writer.store().events_after(Uuid::now_v7(), 0, 10).await.unwrap().is_empty());
}

/// Pages are cut by bytes as well as by count: a page of large events ends
/// with the event that reaches its byte bound (at least one event), says
/// more may follow, and reading on from its last seq gets every event once,
/// in order, whatever the bound.
async fn pages_of_large_events_are_cut_by_bytes_and_reading_on_gets_every_event(db: &TestDb) {
    let (writer, _) = writer(db);
    let job = running_job(&writer).await;
    for i in 0..24 {
        let size = if i % 5 == 0 { 700_000 } else { 90_000 };
        let payload = serde_json::json!({ "i": i, "blob": "x".repeat(size) });
        let serde_json::Value::Object(payload) = payload else { unreachable!() };
        writer.emit_job_event(job, jobstream_protocol::EventType::AiToolCalled, None, payload).await.unwrap();
    }
    let all = stored_seqs(&writer, job).await;
    assert_eq!(all, (1..=27).collect::<Vec<_>>());
    for (limit, max_bytes) in [(1_000, 1), (1_000, 250_000), (1_000, 1_000_000), (4, 1_000_000), (1_000, 64 << 20)] {
        let mut read = Vec::new();
        let mut pages = 0;
        loop {
            let since = read.last().copied().unwrap_or(0);
            let page = writer.store().events_page(job, since, limit, max_bytes).await.unwrap();
            pages += 1;
            assert!(page.events.len() as u64 <= limit);
            let bytes: Vec<usize> = page.events.iter().map(|e| e.json.get().len()).collect();
            let before_last: usize = bytes.iter().rev().skip(1).sum();
            assert!(before_last < max_bytes, "only the last event of a page may pass its bound");
            read.extend(page.events.iter().map(|e| e.event.seq));
            if !page.more {
                break;
            }
            assert!(pages < 100);
        }
        assert_eq!(read, all, "limit {limit}, {max_bytes} bytes");
        if max_bytes == 1 {
            assert_eq!(pages, 27, "one event per page, and the last says so");
        }
    }
    let end = writer.store().events_page(job, 27, 10, 1_000_000).await.unwrap();
    assert!(end.events.is_empty() && !end.more);
}

/// A write updates only the job and step columns it changes, never the key:
/// on SQLite, setting a row's key (even to itself) makes the update visit
/// every event that refers to the row, so each write cost more the longer
/// the job's history.
async fn a_write_updates_only_the_columns_it_changes_and_never_a_key(db: &TestDb) {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = log.clone();
    let mut writer = JobEvents::new(db.db.clone(), Arc::new(jobstream_job_events::NullSink));
    writer.set_metric_callback(move |info| sink.lock().unwrap().push(info.statement.sql.clone()));
    let job = running_job(&writer).await;
    let start =
        StartStep { id: None, name: "compile".into(), phase: StepPhase::Execution, step_type: StepType::Command };
    let (step, _) = writer.emit_step_started(job, start).await.unwrap();
    writer.emit_step_output(job, step.id, "ok\n", OutputStream::Stdout).await.unwrap();
    writer.emit_job_progress(job, 50, None).await.unwrap();
    let done = CompleteStep { status: StepStatus::Completed, error: None, tokens_input: Some(3), tokens_output: None };
    writer.emit_step_completed(job, step.id, done).await.unwrap();
    writer
        .emit_job_status_changed(job, JobStatus::Completed, Some(serde_json::json!({ "ok": true })), None)
        .await
        .unwrap();
    // A request may carry several statements (SQLite: a write's changes go as one).
    let statements: Vec<String> =
        log.lock().unwrap().iter().flat_map(|sql| sql.split(";\n").map(str::to_owned).collect::<Vec<_>>()).collect();
    let updates: Vec<String> = statements.into_iter().filter(|sql| sql.starts_with("UPDATE")).collect();
    assert!(updates.len() >= 6, "{updates:#?}");
    for sql in &updates {
        let set = sql.split(" SET ").nth(1).and_then(|rest| rest.split(" WHERE ").next()).unwrap_or_default();
        for column in ["\"id\"", "\"job_id\"", "\"workspace_id\"", "\"created_at\"", "\"metadata\"", "\"name\""] {
            assert!(!set.contains(&format!("{column} =")), "{column} set by {sql}");
        }
    }
    // What changed did change.
    let snapshot = writer.store().job(job).await.unwrap().unwrap();
    assert_eq!((snapshot.status, snapshot.progress, snapshot.last_seq), (JobStatus::Completed, 50, 8));
    assert_eq!(snapshot.result, Some(serde_json::json!({ "ok": true })));
    let steps = snapshot.steps.unwrap();
    assert_eq!((steps[0].status, steps[0].tokens_input), (StepStatus::Completed, Some(3)));
}

async fn a_step_is_found_only_in_its_own_job_and_a_taken_step_id_is_refused(db: &TestDb) {
    let (writer, _) = writer(db);
    let (job, other) = (running_job(&writer).await, running_job(&writer).await);
    let start = |id| StartStep { id, name: "a".into(), phase: StepPhase::Setup, step_type: StepType::Command };
    let (step, _) = writer.emit_step_started(job, start(None)).await.unwrap();
    // The step of another job is not found, for every write that names a step.
    let output = writer.emit_step_output(other, step.id, "x", OutputStream::Stdout).await;
    assert!(matches!(output, Err(WriteError::StepNotFound { .. })), "{output:?}");
    let progress = writer.emit_step_progress(other, step.id, 5, None).await;
    assert!(matches!(progress, Err(WriteError::StepNotFound { .. })), "{progress:?}");
    // A stored step's id cannot start another step, in its job or elsewhere.
    for job in [job, other] {
        let again = writer.emit_step_started(job, start(Some(step.id))).await;
        assert!(matches!(again, Err(WriteError::Conflict(_))), "{again:?}");
    }
    // A batch that starts a step with its own id and writes to it at once; then
    // the same id again in a later batch is taken.
    let fresh = Uuid::now_v7();
    let items = vec![
        BatchItem::Step(job, start(Some(fresh))),
        BatchItem::Output(
            job,
            fresh,
            jobstream_protocol::StepOutputRequest { chunk: "one\ntwo\n".into(), stream: None },
        ),
        BatchItem::StepProgress(job, fresh, ProgressRequest { progress: 40, message: None }),
    ];
    let applied = writer.write_batch(items, |_| true).await.unwrap();
    assert_eq!(applied.iter().map(|a| a.event.event.seq).collect::<Vec<_>>(), vec![5, 6, 7]);
    let taken = writer.write_batch(vec![BatchItem::Step(other, start(Some(fresh)))], |_| true).await;
    assert!(taken.is_err(), "{taken:?}");
    let output = writer.emit_step_output(job, fresh, "three\n", OutputStream::Stdout).await.unwrap();
    assert_eq!(output.event.seq, 8);
    assert_eq!(stored_seqs(&writer, other).await, vec![1, 2, 3]);
}

async fn one_client_step_id_started_at_once_in_many_jobs_is_taken_once_and_refused_409_elsewhere(db: &TestDb) {
    let (writer, _) = writer(db);
    let mut jobs = Vec::new();
    for _ in 0..12 {
        jobs.push(running_job(&writer).await);
    }
    for _ in 0..3 {
        let id = Uuid::now_v7();
        let tasks: Vec<_> = jobs
            .iter()
            .map(|&job| {
                let writer = writer.clone();
                let start =
                    StartStep { id: Some(id), name: "c".into(), phase: StepPhase::Setup, step_type: StepType::Command };
                tokio::spawn(async move { writer.write(BatchItem::Step(job, start), |_| true).await })
            })
            .collect();
        let mut taken = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => taken += 1,
                Err(WriteError::Conflict(_)) => {}
                Err(err) => panic!("a lost race must be a conflict, not {err:?}"),
            }
        }
        assert_eq!(taken, 1);
    }
}

async fn a_stored_event_id_repeated_twice_in_one_batch_is_refused(db: &TestDb) {
    let (writer, _) = writer(db);
    let job = running_job(&writer).await;
    let id = Uuid::now_v7();
    let progress = || BatchItem::Progress(job, ProgressRequest { progress: 33, message: None });
    writer.write_with_id(progress(), Some(id), |_| true).await.unwrap();
    let twice = writer.write_batch_with_ids(vec![(progress(), Some(id)), (progress(), Some(id))], |_| true).await;
    assert!(matches!(twice, Err(WriteError::InBatch { index: 1, .. })), "{twice:?}");
    let once = writer.write_batch_with_ids(vec![(progress(), Some(id))], |_| true).await.unwrap();
    assert_eq!(once[0].event.event.seq, 4, "a repeat answers with the stored event");
    assert_eq!(stored_seqs(&writer, job).await, vec![1, 2, 3, 4]);
}

/// Makes the database fail the next `job.progress` insert: `at_commit`, by a
/// deferred foreign key the insert breaks (SQLite and PostgreSQL check it at
/// `COMMIT`, which then fails with the transaction still open); otherwise by
/// a trigger that aborts the insert itself, part-way through the write's changes.
async fn arm_progress_fault(db: &TestDb, at_commit: bool) {
    use sea_orm::{ConnectionTrait, DbBackend};
    let sqlite = db.db.get_database_backend() == DbBackend::Sqlite;
    let statements: Vec<&str> = match (sqlite, at_commit) {
        (true, true) => vec![
            "CREATE TABLE fault_parent (id INTEGER PRIMARY KEY)",
            "CREATE TABLE fault_child (parent INTEGER REFERENCES fault_parent (id) DEFERRABLE INITIALLY DEFERRED)",
            "CREATE TRIGGER fault AFTER INSERT ON job_events WHEN NEW.event_type = 'job.progress' \
             BEGIN INSERT INTO fault_child (parent) VALUES (42); END",
        ],
        (true, false) => vec![
            "CREATE TRIGGER fault BEFORE INSERT ON job_events WHEN NEW.event_type = 'job.progress' \
             BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
        ],
        (false, true) => vec![
            "CREATE TABLE fault_parent (id BIGINT PRIMARY KEY)",
            "CREATE TABLE fault_child (parent BIGINT REFERENCES fault_parent (id) DEFERRABLE INITIALLY DEFERRED)",
            "CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN INSERT INTO fault_child (parent) VALUES (42); RETURN NEW; END $$",
            "CREATE TRIGGER fault AFTER INSERT ON job_events FOR EACH ROW \
             WHEN (NEW.event_type = 'job.progress') EXECUTE FUNCTION fault()",
        ],
        (false, false) => vec![
            "CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$",
            "CREATE TRIGGER fault BEFORE INSERT ON job_events FOR EACH ROW \
             WHEN (NEW.event_type = 'job.progress') EXECUTE FUNCTION fault()",
        ],
    };
    for sql in statements {
        db.db.execute_unprepared(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

async fn disarm_progress_fault(db: &TestDb) {
    use sea_orm::{ConnectionTrait, DbBackend};
    let statements: &[&str] = match db.db.get_database_backend() {
        DbBackend::Sqlite => {
            &["DROP TRIGGER fault", "DROP TABLE IF EXISTS fault_child", "DROP TABLE IF EXISTS fault_parent"]
        }
        _ => &[
            "DROP TRIGGER fault ON job_events",
            "DROP FUNCTION fault",
            "DROP TABLE IF EXISTS fault_child",
            "DROP TABLE IF EXISTS fault_parent",
        ],
    };
    for sql in statements {
        db.db.execute_unprepared(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

async fn a_write_the_database_fails_part_way_or_at_commit_leaves_nothing_and_the_next_goes_on(db: &TestDb) {
    let (writer, recorder) = writer(db);
    let job = running_job(&writer).await;
    let mut seqs = vec![1, 2, 3];
    for at_commit in [false, true] {
        arm_progress_fault(db, at_commit).await;
        let refused = writer.emit_job_progress(job, 40, None).await;
        assert!(refused.is_err(), "at_commit {at_commit}: {refused:?}");
        // Nothing of it is stored or published.
        assert_eq!(stored_seqs(&writer, job).await, seqs, "at_commit {at_commit}");
        let published: Vec<i64> =
            recorder.0.lock().unwrap().iter().filter(|e| e.event.job_id == job).map(|e| e.event.seq).collect();
        assert_eq!(published, seqs, "at_commit {at_commit}");
        disarm_progress_fault(db).await;
        // The writer goes on: no transaction was left open on its connection.
        let event = writer.emit_job_progress(job, 50, None).await.unwrap();
        seqs.push(event.event.seq);
        assert_eq!(stored_seqs(&writer, job).await, seqs, "at_commit {at_commit}");
        assert_eq!(writer.create_job(new_job("ws-1")).await.unwrap().0.last_seq, 1);
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let snapshot = writer.store().job(job).await.unwrap().unwrap();
    assert_eq!((snapshot.progress, snapshot.last_seq), (50, 5));
}

on_both_engines!(
    a_write_the_database_fails_part_way_or_at_commit_leaves_nothing_and_the_next_goes_on,
    one_client_step_id_started_at_once_in_many_jobs_is_taken_once_and_refused_409_elsewhere,
    a_stored_event_id_repeated_twice_in_one_batch_is_refused,
    a_step_is_found_only_in_its_own_job_and_a_taken_step_id_is_refused,
    pages_of_large_events_are_cut_by_bytes_and_reading_on_gets_every_event,
    a_write_updates_only_the_columns_it_changes_and_never_a_key,
    events_read_back_are_byte_identical_to_what_was_published,
    a_new_job_starts_at_seq_one_and_each_event_takes_the_next,
    eight_concurrent_writers_produce_seq_one_to_n_without_gap_or_duplicate,
    a_refused_write_changes_nothing,
    a_batch_with_one_bad_item_writes_nothing,
    a_batch_applies_in_request_order_across_jobs,
    a_finished_job_refuses_writes_but_job_events,
    creating_the_same_job_id_twice_returns_the_existing_job,
    workspace_snapshots_list_recent_jobs_and_every_cursor,
    jobs_of_more_workspaces_than_a_statement_takes_are_listed_newest_first,
);
