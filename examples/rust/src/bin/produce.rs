//! Runs one job through the typed emit helpers, in process, against a database
//! of its own, and prints what a subscriber of the delivery hub receives — the
//! same path the HTTP API and the demo use, without a network in between.
//!
//! Run it:
//!   cargo run -p jobstream-examples --bin produce
//! (it uses a temporary SQLite file; set DATABASE_URL=postgres://… to use PostgreSQL).

use std::sync::Arc;

use jobstream_delivery::{DeliveryConfig, Hub, Outlet, OutletError};
use jobstream_job_events::{Committed, EventStore, JobEvents};
use jobstream_protocol::{
    CompleteStep, CreateJob, JobStatus, OutputStream, StartStep, StepPhase, StepStatus, StepType,
};

/// Prints every event the hub delivers.
struct Printer;

impl Outlet for Printer {
    fn try_send(&self, committed: &Committed) -> Result<(), OutletError> {
        println!("{:>3} {:<15} {}", committed.event.seq, committed.event.socket_event().as_str(), committed.json.get());
        Ok(())
    }
    fn close(&self) {}
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        format!("sqlite://{}/jobstream-example-{}.db?mode=rwc", std::env::temp_dir().display(), std::process::id())
    });
    let db = jobstream_job_events::open(&url).await?;
    jobstream_job_events::migrate(&db).await?;
    let hub = Hub::new(EventStore::new(db.clone()), DeliveryConfig::default());
    let writer = JobEvents::new(db, Arc::new(hub.clone()));

    let subscriber = hub.subscriber(Arc::new(Printer));
    subscriber
        .subscribe_workspace("examples", |jobs| {
            Box::new(move || {
                println!("subscribed; {} jobs so far", jobs.len());
                Ok(())
            })
        })
        .await?;

    let request = CreateJob {
        id: None,
        workspace_id: "examples".into(),
        job_type: "build".into(),
        priority: None,
        metadata: None,
    };
    let (job, _) = writer.emit_job_created(request).await?;
    writer.emit_job_status_changed(job.id, JobStatus::Queued, None, None).await?;
    writer.emit_job_status_changed(job.id, JobStatus::Running, None, None).await?;
    let start =
        StartStep { id: None, name: "compile".into(), phase: StepPhase::Execution, step_type: StepType::Command };
    let (step, _) = writer.emit_step_started(job.id, start).await?;
    for line in ["Compiling app v0.1.0", "Finished release"] {
        writer.emit_step_output(job.id, step.id, format!("{line}\n"), OutputStream::Stdout).await?;
    }
    let done = CompleteStep { status: StepStatus::Completed, error: None, tokens_input: None, tokens_output: None };
    writer.emit_step_completed(job.id, step.id, done).await?;
    writer.emit_job_progress(job.id, 100, Some("done".into())).await?;
    writer.emit_job_status_changed(job.id, JobStatus::Completed, Some(serde_json::json!({ "ok": true })), None).await?;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    Ok(())
}
