//! Group commit: concurrent writes keep every write rule, a refused write in a
//! group never fails the others, and (SQLite) writes queued behind a commit
//! share the next one. On SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use jobstream_job_events::{Committed, DbBackend, JobEvents, WriteError};
use jobstream_protocol::{
    BatchItem, CreateJob, JobStatus, ProgressRequest, StartStep, StatusRequest, StepOutputRequest, StepPhase, StepType,
};
use sea_orm::ConnectionTrait;
use support::{writer, Recorder, TestDb};
use uuid::Uuid;

/// A running job with one running step.
async fn running_job_with_step(writer: &JobEvents) -> (Uuid, Uuid) {
    let request =
        CreateJob { id: None, workspace_id: "ws-1".into(), job_type: "build".into(), priority: None, metadata: None };
    let (job, _) = writer.create_job(request).await.unwrap();
    for status in [JobStatus::Queued, JobStatus::Running] {
        writer.emit_job_status_changed(job.id, status, None, None).await.unwrap();
    }
    let start =
        StartStep { id: None, name: "compile".into(), phase: StepPhase::Execution, step_type: StepType::Command };
    let (step, _) = writer.emit_step_started(job.id, start).await.unwrap();
    (job.id, step.id)
}

fn progress(job: Uuid, message: String) -> BatchItem {
    BatchItem::Progress(job, ProgressRequest { progress: 50, message: Some(message) })
}

fn output(job: Uuid, step: Uuid, chunk: String) -> BatchItem {
    BatchItem::Output(job, step, StepOutputRequest { chunk, stream: None })
}

/// Every stored event of `job`, in seq order.
async fn stored(writer: &JobEvents, job: Uuid) -> Vec<Arc<Committed>> {
    writer.store().events_after(job, 0, 1_000_000).await.unwrap()
}

/// What the sink got is what is stored, each once; on SQLite it arrived in
/// commit order (the order of `seq` within each job).
async fn sink_matches_the_database(writer: &JobEvents, recorder: &Recorder, jobs: &[Uuid], sqlite: bool) {
    let published = recorder.0.lock().unwrap().clone();
    let mut stored_ids = HashSet::new();
    for job in jobs {
        let events = stored(writer, *job).await;
        let seqs: Vec<i64> = events.iter().map(|e| e.event.seq).collect();
        assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>(), "seq 1..n without gap or duplicate");
        stored_ids.extend(events.iter().map(|e| e.event.event_id));
    }
    let published_ids: Vec<Uuid> = published.iter().map(|e| e.event.event_id).collect();
    assert_eq!(published_ids.len(), published_ids.iter().collect::<HashSet<_>>().len(), "each event published once");
    assert_eq!(published_ids.into_iter().collect::<HashSet<_>>(), stored_ids, "published = stored");
    if sqlite {
        let mut last: HashMap<Uuid, i64> = HashMap::new();
        for event in &published {
            let previous = last.insert(event.event.job_id, event.event.seq).unwrap_or(0);
            assert!(event.event.seq > previous, "a job's events reach the sink in seq order");
        }
        let orders: Vec<i64> = published.iter().map(|e| e.order.unwrap()).collect();
        assert!(orders.windows(2).all(|w| w[0] <= w[1]), "events reach the sink in commit order");
    }
}

/// 16 writers over 4 jobs, each write of one kind per round: a single write
/// with an `eventId`, a refused status transition, a batch with a bad item,
/// a good batch, a repeat of an earlier `eventId` (answered with the stored
/// event) and a reuse of one for another write (refused).
async fn sixteen_concurrent_writers_keep_every_write_rule_and_refusals_fail_alone(db: &TestDb) {
    const WRITERS: usize = 16;
    const ROUNDS: usize = 12;
    let (writer, recorder) = writer(db);
    let mut jobs = Vec::new();
    for _ in 0..4 {
        jobs.push(running_job_with_step(&writer).await);
    }
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let writer = writer.clone();
            let (job, step) = jobs[w % jobs.len()];
            tokio::spawn(async move {
                let mut appended = 0usize;
                let mut mine: Vec<(Uuid, String, i64)> = Vec::new();
                for r in 0..ROUNDS {
                    match (w + r) % 4 {
                        0 => {
                            let id = Uuid::now_v7();
                            let message = format!("w{w} r{r}");
                            let applied = writer.write_with_id(progress(job, message.clone()), Some(id), |_| true);
                            let applied = applied.await.unwrap();
                            assert!(!applied.repeated);
                            assert_eq!(applied.event.event.event_id, id);
                            mine.push((id, message, applied.event.event.seq));
                            appended += 1;
                        }
                        1 => {
                            let status = StatusRequest { status: JobStatus::Pending, result: None, error: None };
                            let refused = writer.write(BatchItem::Status(job, status), |_| true).await;
                            assert!(matches!(refused, Err(WriteError::InvalidTransition { .. })), "{refused:?}");
                            if let Some((id, message, seq)) = mine.first().cloned() {
                                let again = writer.write_with_id(progress(job, message), Some(id), |_| true);
                                let again = again.await.unwrap();
                                assert!(again.repeated, "the same write with the same eventId is a repeat");
                                assert_eq!(again.event.event.seq, seq);
                            }
                        }
                        2 => {
                            let items = vec![
                                output(job, step, format!("bad w{w} r{r}")),
                                output(job, Uuid::now_v7(), "x".into()),
                            ];
                            let refused = writer.write_batch(items, |_| true).await;
                            assert!(matches!(refused, Err(WriteError::InBatch { index: 1, .. })), "{refused:?}");
                            if let Some((id, _, _)) = mine.last().cloned() {
                                let other = writer.write_with_id(progress(job, "other".into()), Some(id), |_| true);
                                let other = other.await;
                                assert!(matches!(other, Err(WriteError::Conflict(_))), "{other:?}");
                            }
                        }
                        _ => {
                            let items = vec![
                                output(job, step, format!("ok w{w} r{r} a")),
                                output(job, step, format!("ok w{w} r{r} b")),
                            ];
                            let applied = writer.write_batch(items, |_| true).await.unwrap();
                            assert_eq!(
                                applied[1].event.event.seq,
                                applied[0].event.event.seq + 1,
                                "a batch is contiguous per job"
                            );
                            appended += 2;
                        }
                    }
                }
                (job, appended)
            })
        })
        .collect();
    let mut appended: HashMap<Uuid, usize> = HashMap::new();
    for task in tasks {
        let (job, n) = task.await.unwrap();
        *appended.entry(job).or_default() += n;
    }
    let job_ids: Vec<Uuid> = jobs.iter().map(|(job, _)| *job).collect();
    for job in &job_ids {
        let events = stored(&writer, *job).await;
        // job.created, job.queued, job.started, step.started, then the writers' events.
        assert_eq!(events.len(), 4 + appended[job], "every accepted write is stored, nothing else");
        assert!(!events.iter().any(|e| e.json.get().contains("\"bad w")), "nothing of a refused batch is stored");
        let snapshot = writer.store().job(*job).await.unwrap().unwrap();
        assert_eq!((snapshot.status, snapshot.last_seq), (JobStatus::Running, events.len() as i64));
    }
    let sqlite = db.db.get_database_backend() == DbBackend::Sqlite;
    sink_matches_the_database(&writer, &recorder, &job_ids, sqlite).await;
}

/// Holds the writer's turn while 16 writes arrive: on SQLite they all queue
/// up, then run as one group — one commit order — in which a wrong
/// transition, a reused `eventId`, a bad batch item and a job creation with a
/// taken id are refused alone while every other write commits.
async fn writes_queued_behind_a_commit_share_one_group_and_refused_ones_fail_alone(db: &TestDb) {
    let (writer, recorder) = writer(db);
    let (job, step) = running_job_with_step(&writer).await;
    let (other, _) = running_job_with_step(&writer).await;
    let used = Uuid::now_v7();
    writer.write_with_id(progress(job, "first".into()), Some(used), |_| true).await.unwrap();
    let sqlite = db.db.get_database_backend() == DbBackend::Sqlite;
    let turn = writer.hold_writer_turn().await;
    let creation = CreateJob {
        id: Some(job),
        workspace_id: "ws-1".into(),
        job_type: "other".into(),
        priority: None,
        metadata: None,
    };
    let mut writes = Vec::new();
    for i in 0..16usize {
        let writer = writer.clone();
        let creation = creation.clone();
        writes.push(tokio::spawn(async move {
            let outcome = match i {
                3 => {
                    let status = StatusRequest { status: JobStatus::Queued, result: None, error: None };
                    writer.write(BatchItem::Status(job, status), |_| true).await.map(|a| vec![a])
                }
                7 => {
                    writer.write_with_id(progress(job, "not first".into()), Some(used), |_| true).await.map(|a| vec![a])
                }
                9 => {
                    let items = vec![output(job, step, "bad".into()), output(job, Uuid::now_v7(), "x".into())];
                    writer.write_batch(items, |_| true).await
                }
                12 => return (i, writer.create_job(creation).await.map(|_| Vec::new())),
                _ if i % 2 == 0 => writer.write(progress(other, format!("p{i}")), |_| true).await.map(|a| vec![a]),
                _ => {
                    let items = vec![output(job, step, format!("o{i} a")), output(job, step, format!("o{i} b"))];
                    writer.write_batch(items, |_| true).await
                }
            };
            (i, outcome)
        }));
    }
    if sqlite {
        while writer.queued_writes() < 16 {
            tokio::task::yield_now().await;
        }
    }
    drop(turn);
    let mut orders = BTreeSet::new();
    for write in writes {
        let (i, outcome) = write.await.unwrap();
        match i {
            3 => assert!(matches!(outcome, Err(WriteError::InvalidTransition { .. })), "{outcome:?}"),
            7 => assert!(matches!(outcome, Err(WriteError::Conflict(_))), "{outcome:?}"),
            9 => assert!(matches!(outcome, Err(WriteError::InBatch { index: 1, .. })), "{outcome:?}"),
            12 => assert!(matches!(outcome, Err(WriteError::Conflict(_))), "{outcome:?}"),
            _ => {
                let applied = outcome.unwrap();
                assert!(!applied.is_empty());
                orders.extend(applied.iter().map(|a| a.event.order.unwrap()));
            }
        }
    }
    if sqlite {
        assert_eq!(orders.len(), 1, "the 16 queued writes committed together: {orders:?}");
    }
    sink_matches_the_database(&writer, &recorder, &[job, other], sqlite).await;
    // job: 4 + "first" + 5 batches of 2; other: 4 + 7 progress writes (even i but 12).
    assert_eq!(stored(&writer, job).await.len(), 4 + 1 + 10);
    assert_eq!(stored(&writer, other).await.len(), 4 + 7);
}

on_both_engines!(
    sixteen_concurrent_writers_keep_every_write_rule_and_refusals_fail_alone,
    writes_queued_behind_a_commit_share_one_group_and_refused_ones_fail_alone,
);
