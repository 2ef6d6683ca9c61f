//! Demo mode: a built-in producer that runs realistic jobs in the `demo`
//! workspace through the same write path as the HTTP API — builds and test runs
//! with setup / execution / validation / cleanup steps, coloured output,
//! progress, an occasional failure and an occasional cancellation.

use std::time::Duration;

use jobstream_job_events::{JobEvents, WriteError};
use jobstream_protocol::{
    CompleteStep, CreateJob, JobStatus, OutputStream, StartStep, StepPhase, StepStatus, StepType,
};
use serde_json::json;
use uuid::Uuid;

/// The workspace the demo writes to.
pub const DEMO_WORKSPACE: &str = "demo";

const GREEN: &str = "\u{1b}[32m";
const YELLOW: &str = "\u{1b}[33m";
const RED: &str = "\u{1b}[31m";
const CYAN: &str = "\u{1b}[36m";
const DIM: &str = "\u{1b}[2m";
const BOLD: &str = "\u{1b}[1m";
const RESET: &str = "\u{1b}[0m";

/// How a demo job ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Success,
    TestFailure,
    Cancelled,
}

/// A step of the demo pipeline: name, phase, type, and its output lines.
struct Step {
    name: &'static str,
    phase: StepPhase,
    step_type: StepType,
    lines: Vec<String>,
}

fn pipeline(n: u64, ending: Ending) -> Vec<Step> {
    let mut tests: Vec<String> = (1..=24)
        .map(|i| {
            let ms = 3 + (i * 7 + n) % 40;
            format!(
                "  {GREEN}✓{RESET} {} {DIM}({ms} ms){RESET}",
                TEST_NAMES[(i as usize + n as usize) % TEST_NAMES.len()]
            )
        })
        .collect();
    if ending == Ending::TestFailure {
        tests.push(format!("  {RED}✗ payments › refunds a partial capture{RESET}"));
        tests.push(format!("    {RED}AssertionError: expected 1250 to equal 1200{RESET}"));
        tests.push(format!("{BOLD}{RED}Tests: 1 failed{RESET}, 24 passed, 25 total"));
    } else {
        tests.push(format!("{BOLD}{GREEN}Tests: 24 passed{RESET}, 24 total"));
    }
    let compile: Vec<String> = COMPILE_UNITS
        .iter()
        .map(|unit| format!("{GREEN}   Compiling{RESET} {unit}"))
        .chain([format!("{GREEN}    Finished{RESET} `release` profile [optimized] target(s) in 41.{n}s")])
        .collect();
    vec![
        Step {
            name: "checkout",
            phase: StepPhase::Setup,
            step_type: StepType::Command,
            lines: vec![
                format!("{CYAN}$ git clone --depth 1 git@example.com:acme/shop.git{RESET}"),
                "Cloning into 'shop'...".into(),
                format!("{GREEN}✔{RESET} checked out main at {:07x}", 0x3f9c2e1 + n * 977),
            ],
        },
        Step {
            name: "install dependencies",
            phase: StepPhase::Setup,
            step_type: StepType::Command,
            lines: vec![
                format!("{CYAN}$ npm ci{RESET}"),
                format!("{YELLOW}npm warn deprecated inflight@1.0.6: This module is not supported{RESET}"),
                "added 812 packages, and audited 813 packages in 9s".into(),
            ],
        },
        Step { name: "build", phase: StepPhase::Execution, step_type: StepType::Command, lines: compile },
        Step { name: "unit tests", phase: StepPhase::Validation, step_type: StepType::Command, lines: tests },
        Step {
            name: "review gate",
            phase: StepPhase::Validation,
            step_type: StepType::Gate,
            lines: vec!["checking coverage ≥ 80% … 86.4%".into(), format!("{GREEN}gate passed{RESET}")],
        },
        Step {
            name: "upload artifacts",
            phase: StepPhase::Cleanup,
            step_type: StepType::Artifact,
            lines: vec!["dist/shop.tar.gz  4.2 MiB".into(), format!("{GREEN}✔{RESET} uploaded 1 artifact")],
        },
    ]
}

const TEST_NAMES: &[&str] = &[
    "cart › adds an item",
    "cart › removes an item",
    "cart › applies a coupon",
    "checkout › validates the address",
    "checkout › computes taxes",
    "payments › captures a card",
    "payments › retries a declined card",
    "orders › lists recent orders",
    "orders › paginates",
    "search › ranks exact matches first",
    "auth › refreshes an expired session",
];

const COMPILE_UNITS: &[&str] = &[
    "serde v1.0.228",
    "tokio v1.54.1",
    "hyper v1.7.0",
    "axum v0.8.9",
    "sqlx v0.8.6",
    "shop-core v0.3.0 (/builds/shop/core)",
    "shop-api v0.3.0 (/builds/shop/api)",
];

/// Runs demo jobs forever, a new one every few seconds, two at a time at most.
pub async fn run(writer: JobEvents) {
    let mut n: u64 = 0;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(2));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        n += 1;
        let writer = writer.clone();
        tokio::spawn(async move {
            if let Err(err) = run_job(&writer, n).await {
                tracing::warn!(error = %err, "demo job stopped");
            }
            drop(permit);
        });
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
}

async fn pause(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

async fn run_job(writer: &JobEvents, n: u64) -> Result<(), WriteError> {
    let ending = match n % 7 {
        3 => Ending::TestFailure,
        5 => Ending::Cancelled,
        _ => Ending::Success,
    };
    let kind = if n.is_multiple_of(2) { "test" } else { "build" };
    let request = CreateJob {
        id: None,
        workspace_id: DEMO_WORKSPACE.into(),
        job_type: kind.into(),
        priority: Some((n % 3) as i32),
        metadata: Some(
            json!({ "repo": "acme/shop", "branch": "main", "run": n }).as_object().cloned().unwrap_or_default(),
        ),
    };
    let (job, _) = writer.emit_job_created(request).await?;
    let id = job.id;
    pause(600).await;
    writer.emit_job_status_changed(id, JobStatus::Queued, None, None).await?;
    pause(900).await;
    writer.emit_job_status_changed(id, JobStatus::Running, None, None).await?;
    let steps = pipeline(n, ending);
    let total = steps.len();
    for (i, step) in steps.into_iter().enumerate() {
        let start = StartStep {
            id: Some(Uuid::now_v7()),
            name: step.name.into(),
            phase: step.phase,
            step_type: step.step_type,
        };
        let (started, _) = writer.emit_step_started(id, start).await?;
        let lines = step.lines.len();
        for (l, line) in step.lines.into_iter().enumerate() {
            pause(90 + (l as u64 * 37 + n) % 160).await;
            let stream =
                if line.contains(YELLOW) || line.contains(RED) { OutputStream::Stderr } else { OutputStream::Stdout };
            writer.emit_step_output(id, started.id, format!("{line}\n"), stream).await?;
            if ending == Ending::Cancelled && i == 2 && l == lines / 2 {
                writer.emit_step_completed(id, started.id, finish(StepStatus::Failed, Some("cancelled"))).await?;
                writer
                    .emit_job_status_changed(id, JobStatus::Cancelled, None, Some("cancelled by a newer push".into()))
                    .await?;
                return Ok(());
            }
        }
        if step.step_type == StepType::Gate {
            writer
                .emit_job_event(id, jobstream_protocol::EventType::GatePassed, Some(started.id), serde_json::Map::new())
                .await?;
        }
        let failed = ending == Ending::TestFailure && i == 3;
        let status = if failed { StepStatus::Failed } else { StepStatus::Completed };
        writer.emit_step_completed(id, started.id, finish(status, failed.then_some("1 test failed"))).await?;
        writer.emit_job_progress(id, (((i + 1) * 100) / total) as u8, Some(format!("{} done", i + 1))).await?;
        if failed {
            writer.emit_job_status_changed(id, JobStatus::Failed, None, Some("unit tests failed".into())).await?;
            return Ok(());
        }
    }
    let result = json!({ "artifacts": ["dist/shop.tar.gz"], "coverage": 86.4 });
    writer.emit_job_status_changed(id, JobStatus::Completed, Some(result), None).await?;
    Ok(())
}

fn finish(status: StepStatus, error: Option<&str>) -> CompleteStep {
    CompleteStep { status, error: error.map(str::to_owned), tokens_input: None, tokens_output: None }
}
