//! Follows one job over Server-Sent Events and prints each event, resuming after
//! the last `seq` it printed if the connection drops. It stops after the job's
//! terminal status event.
//!
//! Run it against a running server (for example `cargo run --release -- --demo`):
//!   JOBSTREAM_URL=http://127.0.0.1:3000 JOBSTREAM_TOKEN=<subscribe token> \
//!     cargo run -p jobstream-examples --bin follow -- <job id>
//! A token for the demo workspace is printed by the server at start, or served
//! at /dashboard/config.json in demo mode.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jobstream_protocol::{Event, EventBody};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let job = std::env::args().nth(1).context("usage: follow <job id>")?;
    let base = std::env::var("JOBSTREAM_URL").unwrap_or_else(|_| "http://127.0.0.1:3000".into());
    let token = std::env::var("JOBSTREAM_TOKEN").context("set JOBSTREAM_TOKEN to a subscribe token")?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut last_seq = 0i64;
    loop {
        let request = hyper::Request::get(format!("{base}/api/v1/jobs/{job}/events/stream"))
            .header("authorization", format!("Bearer {token}"))
            .header("last-event-id", last_seq.to_string())
            .body(Empty::new())?;
        let response = match client.request(request).await {
            Ok(response) => response,
            Err(err) => {
                eprintln!("connection failed ({err}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if !response.status().is_success() {
            let body = response.into_body().collect().await?.to_bytes();
            bail!("the server refused: {}", String::from_utf8_lossy(&body));
        }
        let mut body = response.into_body();
        let mut pending = String::new();
        let mut finished = false;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            let Some(chunk) = frame.data_ref() else { continue };
            pending.push_str(&String::from_utf8_lossy(chunk));
            while let Some(end) = pending.find("\n\n") {
                let block: String = pending.drain(..end + 2).collect();
                let data: String = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                let event: Event = serde_json::from_str(&data)?;
                last_seq = event.seq;
                print(&event);
                finished |= matches!(event.body, EventBody::Status(ref s) if s.status.is_terminal());
            }
        }
        if finished {
            return Ok(());
        }
        eprintln!("stream ended at seq {last_seq}; resuming");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print(event: &Event) {
    let detail = match &event.body {
        EventBody::StepOutput(output) => output.chunk.trim_end().to_owned(),
        EventBody::Status(status) => format!("{} -> {}", status.previous_status, status.status),
        EventBody::JobProgress(progress) => format!("{}%", progress.progress),
        EventBody::StepStarted(step) => format!("{} ({:?}, {:?})", step.name, step.phase, step.step_type),
        EventBody::StepFinished(step) => format!("{:?} in {} ms", step.status, step.duration_ms),
        other => serde_json::to_string(other).unwrap_or_default(),
    };
    println!("{:>5} {:<16} {detail}", event.seq, event.event_type.as_str());
}
