//! loadgen: drives jobstream (or the Node reference) with many Socket.IO
//! connections and HTTP producers, and reports delivery, latency, and the
//! server's memory and CPU. Run `loadgen --help`; `bench/run` wraps the scenarios.

mod history;
mod http;
mod sio;
mod stats;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use http::{Api, Writes};
use sio::{Client, Sub};
use stats::{proc_stats, Delivery};

#[derive(Parser)]
#[command(name = "loadgen", about = "Socket.IO load generator for jobstream and the Node reference")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Clone)]
struct Common {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:3000", global = true)]
    url: String,
    /// A token with `subscribe publish` for the workspaces used (`*` is simplest).
    #[arg(long, env = "LOADGEN_TOKEN", default_value = "", global = true)]
    token: String,
    /// The server's pid, for RSS and CPU from /proc.
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// How many 127.0.0.x source addresses to spread connections over.
    #[arg(long, default_value_t = 32, global = true)]
    sources: u8,
    /// Subscribers connect to these base URLs in turn (several nodes); default: `--url`.
    #[arg(long, value_delimiter = ',', global = true)]
    subscriber_urls: Vec<String>,
}

#[derive(Subcommand)]
enum Scenario {
    /// N subscribed idle connections: memory per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
    },
    /// One job, N subscribers, step output at rising rates until p99 > 100 ms or loss.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Events/s to try, in order.
        #[arg(long, value_delimiter = ',', default_value = "50,100,200,400,800,1600,3200")]
        rates: Vec<f64>,
        /// Seconds per rate.
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// W workspaces x P sockets, one producer per workspace.
    Workspaces {
        #[arg(long, default_value_t = 100)]
        workspaces: usize,
        #[arg(long, default_value_t = 100)]
        per: usize,
        /// Events/s per workspace.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        #[arg(long, default_value_t = 20)]
        secs: u64,
    },
    /// Durable writes as fast as the server accepts them.
    Ingest {
        /// Events per request (1: the single-write route; more: the batch route).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Concurrent writers (one job each).
        #[arg(long, default_value_t = 8)]
        writers: usize,
        #[arg(long, default_value_t = 15)]
        secs: u64,
    },
    /// The database's own rate for the same rows: multi-row INSERTs of job events, one transaction each.
    RawInsert {
        #[arg(long)]
        database_url: String,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 8)]
        writers: usize,
        #[arg(long, default_value_t = 15)]
        secs: u64,
    },
    /// A workspace with N finished jobs (see `seed-history`): memory per workspace
    /// subscription, ack latency, and a later event and a new job delivered once to each.
    History {
        /// Finished jobs seeded in the workspace.
        #[arg(long, default_value_t = 2000)]
        jobs: u64,
        #[arg(long, default_value = "bench-history")]
        workspace: String,
        /// Sockets, each with its own workspace subscription.
        #[arg(long, default_value_t = 500)]
        sockets: usize,
        /// Running jobs created before the sockets subscribe.
        #[arg(long, default_value_t = 20)]
        live: usize,
        /// Subscriptions awaiting their ack at once while connecting (1: each ack's
        /// latency is the subscription's own cost, without queueing behind others).
        #[arg(long, default_value_t = 1)]
        in_flight: usize,
        /// The database's name, for the result table.
        #[arg(long, default_value = "?")]
        db: String,
    },
    /// Writes N finished jobs (four events each) into a migrated database, before the server starts.
    SeedHistory {
        #[arg(long)]
        database_url: String,
        #[arg(long, default_value_t = 2000)]
        jobs: u64,
        #[arg(long, default_value = "bench-history")]
        workspace: String,
    },
    /// One socket replays a job's stored events from seq 0 (`bench/run replay`
    /// seeds the job): events/s and the server's peak RSS while it streams.
    Replay {
        /// The job's id.
        #[arg(long)]
        job: String,
        /// Events stored for it (the replay ends when all have arrived).
        #[arg(long)]
        events: u64,
    },
    /// Prune throughput under write load, on a server started with a retention
    /// that applies to `--events` seeded events: 8 writers (as `ingest --batch 1`)
    /// write from the server's start until `jobstream_pruned_events_total`
    /// (GET /metrics) reaches `--events`: events deleted per second, and the
    /// writers' latency meanwhile (`bench/run prune` runs `ingest` before it,
    /// without retention, for the latency without pruning).
    Prune {
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Events the retention deletes.
        #[arg(long)]
        events: u64,
    },
    /// N subscribers, a steady producer, each connection force-closed every 10–20 s and resumed with `since`.
    Jitter {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Events/s.
        #[arg(long, default_value_t = 2.0)]
        rate: f64,
        #[arg(long, default_value_t = 60)]
        secs: u64,
    },
}

fn server_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    host.parse().with_context(|| format!("--url must be http://IP:PORT, got {url}"))
}

fn source(common: &Common, i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(common.sources.max(1))) as u8))
}

/// Started clients: a stop switch and their tasks.
struct Fleet {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Fleet {
    async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = self.tasks.join_next() => if next.is_none() { break },
                () = &mut deadline => { self.tasks.abort_all(); break }
            }
        }
    }
}

/// Connects the clients (staggered) and waits until each has its subscriptions acked.
async fn connect(clients: Vec<Client>, delivery: &Arc<Delivery>) -> anyhow::Result<Fleet> {
    let n = clients.len();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(n.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for (i, client) in clients.into_iter().enumerate() {
        tasks.spawn(sio::run(client, delivery.clone(), ready_tx.clone(), stop_rx.clone()));
        if i % 250 == 249 {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    drop(ready_tx);
    let mut ready = 0;
    while ready < n {
        match tokio::time::timeout(Duration::from_secs(180), ready_rx.recv()).await {
            Ok(Some(())) => ready += 1,
            _ => {
                return Err(anyhow!(
                    "only {ready} of {n} clients subscribed (errors: {})",
                    delivery.errors.load(Ordering::Relaxed)
                ))
            }
        }
    }
    eprintln!("{n} clients connected and subscribed in {:.1}s", started.elapsed().as_secs_f64());
    Ok(Fleet { stop, tasks })
}

fn clients(common: &Common, n: usize, subs: impl Fn(usize) -> Vec<Sub>) -> anyhow::Result<Vec<Client>> {
    let addr = server_addr(&common.url)?;
    let token: Arc<str> = common.token.clone().into();
    Ok((0..n)
        .map(|i| Client {
            addr,
            source: source(common, i),
            token: token.clone(),
            subs: subs(i),
            jitter: None,
            targets: None,
        })
        .collect())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Waits until `received` stops growing (or reaches `expected`).
async fn drain(delivery: &Delivery, expected: u64) {
    let mut last = delivery.received.load(Ordering::Relaxed);
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = delivery.received.load(Ordering::Relaxed);
        if now >= expected || (now == last && now > 0) {
            return;
        }
        last = now;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let common = cli.common;
    let api = Api::new(&common.url, &common.token);
    let delivery = Arc::new(Delivery::default());
    match cli.scenario {
        Scenario::Idle { connections } => {
            let (job, _, _) = api.running_job("bench").await?;
            let before = proc_stats(common.pid);
            let fleet = connect(clients(&common, connections, |_| vec![Sub::Job(job.clone())])?, &delivery).await?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let after = proc_stats(common.pid);
            let per = after.rss.saturating_sub(before.rss) as f64 / connections as f64;
            println!("idle: {connections} subscribed connections; server RSS {:.1} MiB -> {:.1} MiB; {:.1} KiB per connection", mib(before.rss), mib(after.rss), per / 1024.0);
            println!(
                "RESULT {}",
                json!({ "scenario": "idle", "connections": connections, "rss_before": before.rss, "rss_after": after.rss, "bytes_per_connection": per })
            );
            fleet.shutdown().await;
        }
        Scenario::Fanout { subscribers, rates, secs } => {
            let (job, step, _) = api.running_job("bench").await?;
            let fleet = connect(clients(&common, subscribers, |_| vec![Sub::Job(job.clone())])?, &delivery).await?;
            let mut best: Option<f64> = None;
            println!(
                "| rate (events/s) | accepted/s | delivered/s | p50 ms | p99 ms | max ms | lost | dup | server CPU % |"
            );
            println!("|---|---|---|---|---|---|---|---|---|");
            let run_rate = |rate: f64| {
                let (api, job, step, delivery, common) =
                    (api.clone(), job.clone(), step.clone(), delivery.clone(), common.clone());
                async move {
                    delivery.reset();
                    let writes = Arc::new(Writes::default());
                    let cpu0 = proc_stats(common.pid).cpu_secs;
                    let t0 = Instant::now();
                    http::produce_at(
                        http::Stream { api, job, step },
                        rate,
                        Duration::from_secs(secs),
                        writes.clone(),
                        None,
                    )
                    .await;
                    let accepted = writes.accepted.load(Ordering::Relaxed);
                    let expected = accepted * subscribers as u64;
                    drain(&delivery, expected).await;
                    let elapsed = t0.elapsed().as_secs_f64();
                    let received = delivery.received.load(Ordering::Relaxed);
                    let cpu = (proc_stats(common.pid).cpu_secs - cpu0) / elapsed * 100.0;
                    let lost = expected.saturating_sub(received);
                    let p99 = delivery.latency.quantile_ms(0.99);
                    println!(
                        "| {rate:.0} | {:.0} | {:.0} | {:.1} | {p99:.1} | {:.1} | {lost} | {} | {cpu:.0} |",
                        accepted as f64 / secs as f64,
                        received as f64 / secs as f64,
                        delivery.latency.quantile_ms(0.5),
                        delivery.latency.max_ms(),
                        delivery.duplicates.load(Ordering::Relaxed),
                    );
                    let kept_up = accepted as f64 >= rate * secs as f64 * 0.9;
                    (p99 <= 100.0 && lost == 0 && kept_up, received as f64 / secs as f64, p99)
                }
            };
            let mut best_delivered = 0.0;
            for rate in rates {
                let (ok, delivered, _) = run_rate(rate).await;
                if !ok {
                    break;
                }
                best = Some(rate);
                best_delivered = delivered;
            }
            let half = match best {
                Some(rate) => {
                    println!("half of the best rate:");
                    Some(run_rate(rate / 2.0).await.2)
                }
                None => None,
            };
            println!(
                "RESULT {}",
                json!({ "scenario": "fanout", "subscribers": subscribers, "best_rate": best, "best_delivered_per_s": best_delivered, "p99_ms_at_half": half })
            );
            fleet.shutdown().await;
        }
        Scenario::Workspaces { workspaces, per, rate, secs } => {
            let mut jobs = Vec::new();
            for w in 0..workspaces {
                let (job, step, _) = api.running_job(&format!("bench-ws-{w}")).await?;
                jobs.push((job, step));
            }
            let fleet = connect(
                clients(&common, workspaces * per, |i| vec![Sub::Workspace(format!("bench-ws-{}", i % workspaces))])?,
                &delivery,
            )
            .await?;
            delivery.reset();
            let writes = Arc::new(Writes::default());
            let cpu0 = proc_stats(common.pid).cpu_secs;
            let mut producers = tokio::task::JoinSet::new();
            for (job, step) in jobs {
                let stream = http::Stream { api: api.clone(), job, step };
                producers.spawn(http::produce_at(stream, rate, Duration::from_secs(secs), writes.clone(), None));
            }
            while producers.join_next().await.is_some() {}
            let accepted = writes.accepted.load(Ordering::Relaxed);
            let expected = accepted * per as u64;
            drain(&delivery, expected).await;
            let received = delivery.received.load(Ordering::Relaxed);
            let cpu = (proc_stats(common.pid).cpu_secs - cpu0) / secs as f64 * 100.0;
            println!(
                "workspaces: {workspaces} x {per} sockets, {rate} events/s each: accepted {:.0}/s, delivered {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, lost {}, dup {}, server CPU {cpu:.0}%",
                accepted as f64 / secs as f64,
                received as f64 / secs as f64,
                delivery.latency.quantile_ms(0.5),
                delivery.latency.quantile_ms(0.99),
                expected.saturating_sub(received),
                delivery.duplicates.load(Ordering::Relaxed)
            );
            println!(
                "RESULT {}",
                json!({ "scenario": "workspaces", "delivered_per_s": received as f64 / secs as f64, "p99_ms": delivery.latency.quantile_ms(0.99), "lost": expected.saturating_sub(received) })
            );
            fleet.shutdown().await;
        }
        Scenario::Ingest { batch, writers, secs } => {
            let mut jobs = Vec::new();
            for _ in 0..writers {
                let (job, step, _) = api.running_job("bench").await?;
                jobs.push((job, step));
            }
            let writes = Arc::new(Writes::default());
            let cpu0 = proc_stats(common.pid).cpu_secs;
            http::produce_flat_out(api, jobs, batch, Duration::from_secs(secs), writes.clone()).await;
            let rate = writes.accepted.load(Ordering::Relaxed) as f64 / secs as f64;
            let cpu = (proc_stats(common.pid).cpu_secs - cpu0) / secs as f64 * 100.0;
            println!(
                "ingest: batch {batch}, {writers} writers: {rate:.0} events/s accepted; request p50 {:.1} ms, p99 {:.1} ms; failed {}; server CPU {cpu:.0}%",
                writes.latency.quantile_ms(0.5),
                writes.latency.quantile_ms(0.99),
                writes.failed.load(Ordering::Relaxed)
            );
            println!(
                "RESULT {}",
                json!({ "scenario": "ingest", "batch": batch, "writers": writers, "events_per_s": rate })
            );
        }
        Scenario::Prune { writers, events } => prune(api, common.pid, writers, events).await?,
        Scenario::RawInsert { database_url, batch, writers, secs } => {
            let rate = raw_insert(&database_url, batch, writers, secs).await?;
            println!("raw insert: batch {batch}, {writers} writers: {rate:.0} rows/s");
            println!(
                "RESULT {}",
                json!({ "scenario": "raw-insert", "batch": batch, "writers": writers, "rows_per_s": rate })
            );
        }
        Scenario::History { jobs, workspace, sockets, live, in_flight, db } => {
            let settings = history::Settings { jobs, workspace, sockets, live, in_flight, db };
            history::run(&common, &api, &delivery, settings).await?;
        }
        Scenario::SeedHistory { database_url, jobs, workspace } => {
            history::seed(&database_url, jobs, &workspace).await?;
        }
        Scenario::Replay { job, events } => {
            let before = proc_stats(common.pid);
            let started = Instant::now();
            let fleet = connect(clients(&common, 1, |_| vec![Sub::JobSince(job.clone(), 0)])?, &delivery).await?;
            let mut peak = before.rss;
            while delivery.received.load(Ordering::Relaxed) < events && started.elapsed() < Duration::from_secs(900) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                peak = peak.max(proc_stats(common.pid).rss);
            }
            let secs = started.elapsed().as_secs_f64();
            let after = proc_stats(common.pid);
            let received = delivery.received.load(Ordering::Relaxed);
            let rate = received as f64 / secs;
            let cpu = (after.cpu_secs - before.cpu_secs) / secs * 100.0;
            println!(
                "replay: {received} of {events} events to one socket in {secs:.2} s = {rate:.0} events/s; duplicates {}, out of order {}; server RSS {:.1} MiB before, peak {:.1} MiB; server CPU {cpu:.0}%",
                delivery.duplicates.load(Ordering::Relaxed),
                delivery.out_of_order.load(Ordering::Relaxed),
                mib(before.rss),
                mib(peak)
            );
            println!(
                "RESULT {}",
                json!({ "scenario": "replay", "events": received, "secs": secs, "events_per_s": rate, "rss_before": before.rss, "rss_peak": peak })
            );
            fleet.shutdown().await;
        }
        Scenario::Jitter { subscribers, rate, secs } => {
            let (job, step, _) = api.running_job("bench").await?;
            let targets: sio::Targets = Arc::new(HashMap::from([(job.clone(), AtomicI64::new(0))]));
            let mut list = clients(&common, subscribers, |_| vec![Sub::Job(job.clone())])?;
            for client in &mut list {
                client.jitter = Some((Duration::from_secs(10), Duration::from_secs(20)));
                client.targets = Some(targets.clone());
            }
            let fleet = connect(list, &delivery).await?;
            delivery.reset();
            let writes = Arc::new(Writes::default());
            let target = Arc::new(AtomicI64::new(0));
            let mirror = {
                let (target, targets, job) = (target.clone(), targets.clone(), job.clone());
                tokio::spawn(async move {
                    loop {
                        if let Some(t) = targets.get(&job) {
                            t.store(target.load(Ordering::Relaxed), Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            };
            http::produce_at(
                http::Stream { api, job, step },
                rate,
                Duration::from_secs(secs),
                writes.clone(),
                Some(target),
            )
            .await;
            let accepted = writes.accepted.load(Ordering::Relaxed);
            let expected = accepted * subscribers as u64;
            // Connections keep cycling while the last ones catch up.
            for _ in 0..120 {
                if delivery.received.load(Ordering::Relaxed) >= expected {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            mirror.abort();
            let received = delivery.received.load(Ordering::Relaxed);
            println!(
                "jitter: {subscribers} subscribers, {rate} events/s for {secs}s, {} reconnects: delivered {:.2}% ({received}/{expected}), duplicates {}, out of order {}, replay p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                delivery.reconnects.load(Ordering::Relaxed),
                received as f64 / expected.max(1) as f64 * 100.0,
                delivery.duplicates.load(Ordering::Relaxed),
                delivery.out_of_order.load(Ordering::Relaxed),
                delivery.replay.quantile_ms(0.5),
                delivery.replay.quantile_ms(0.99),
                delivery.replay.max_ms(),
            );
            println!(
                "RESULT {}",
                json!({
                    "scenario": "jitter", "subscribers": subscribers, "expected": expected, "received": received,
                    "duplicates": delivery.duplicates.load(Ordering::Relaxed), "out_of_order": delivery.out_of_order.load(Ordering::Relaxed),
                    "reconnects": delivery.reconnects.load(Ordering::Relaxed),
                    "replay_p50_ms": delivery.replay.quantile_ms(0.5), "replay_p99_ms": delivery.replay.quantile_ms(0.99)
                })
            );
            fleet.shutdown().await;
        }
    }
    Ok(())
}

/// Inserts job-event rows with multi-row INSERTs, one transaction each, as fast as the database takes them.
async fn raw_insert(url: &str, batch: usize, writers: usize, secs: u64) -> anyhow::Result<f64> {
    use sea_orm::{ConnectionTrait, Statement, TransactionTrait, Value as V};
    let db = jobstream_job_events::open(url).await?;
    jobstream_job_events::migrate(&db).await?;
    let backend = db.get_database_backend();
    // PostgreSQL wants the timestamp text cast; SQLite stores it as text.
    let stamp = move |n: usize| match backend {
        sea_orm::DbBackend::Postgres => format!("${n}::timestamptz"),
        _ => format!("${n}"),
    };
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let db = db.clone();
        tasks.spawn(async move {
            let job = uuid::Uuid::now_v7();
            let now = chrono_now();
            let insert_job = Statement::from_sql_and_values(
                backend,
                format!("INSERT INTO jobs (id, workspace_id, job_type, status, priority, progress, metadata, created_at, updated_at, last_seq) VALUES ($1, 'bench', 'bench', 'running', 0, 0, '{{}}', {}, {}, 0)", stamp(2), stamp(2)),
                [V::from(job), V::from(now.clone())],
            );
            db.execute(insert_job).await?;
            let mut seq = 0i64;
            let mut rows = 0u64;
            while Instant::now() < end {
                let mut sql = String::from("INSERT INTO job_events (id, job_id, seq, event_type, workspace_id, step_id, created_at, data) VALUES ");
                let mut values = Vec::with_capacity(batch * 4);
                for i in 0..batch {
                    seq += 1;
                    let n = i * 4;
                    if i > 0 {
                        sql.push(',');
                    }
                    sql.push_str(&format!("(${}, ${}, ${}, 'step.output', 'bench', NULL, {}, '{{\"chunk\":\"t=0\",\"stream\":\"stdout\"}}')", n + 1, n + 2, n + 3, stamp(n + 4)));
                    values.extend([V::from(uuid::Uuid::now_v7()), V::from(job), V::from(seq), V::from(now.clone())]);
                }
                let tx = db.begin().await?;
                tx.execute(Statement::from_sql_and_values(backend, sql, values)).await?;
                tx.commit().await?;
                rows += batch as u64;
            }
            Ok::<u64, sea_orm::DbErr>(rows)
        });
    }
    let mut total = 0;
    while let Some(result) = tasks.join_next().await {
        total += result??;
    }
    Ok(total as f64 / secs as f64)
}

fn chrono_now() -> String {
    // An RFC 3339 UTC time that both engines accept for a timestamp-with-zone column.
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to a (year, month, day) date.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The `prune` scenario (see [`Scenario::Prune`]).
async fn prune(api: Api, pid: Option<u32>, writers: usize, events: u64) -> anyhow::Result<()> {
    let (cpu0, started) = (proc_stats(pid).cpu_secs, Instant::now());
    let pruned = || async {
        let text = api.get_text("/metrics").await.ok().flatten().unwrap_or_default();
        text.lines()
            .find_map(|line| line.strip_prefix("jobstream_pruned_events_total "))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    let mut jobs = Vec::new();
    for _ in 0..writers {
        let (job, step, _) = api.running_job("bench").await?;
        jobs.push((job, step));
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writes = Arc::new(Writes::default());
    let producing = tokio::spawn(http::produce_until(api.clone(), jobs, 1, stop.clone(), writes.clone()));
    let mut deleted = pruned().await;
    while deleted < events && started.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        deleted = pruned().await;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = (proc_stats(pid).cpu_secs - cpu0) / secs * 100.0;
    stop.store(true, Ordering::Relaxed);
    producing.await?;
    if deleted < events {
        bail!("the retention deleted {deleted} of {events} events in {secs:.0} s");
    }
    println!(
        "prune: {deleted} events in {secs:.1} s = {:.0} events/s; writers meanwhile: {:.0} events/s, request p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; failed {}; server CPU {cpu:.0}%",
        deleted as f64 / secs,
        writes.accepted.load(Ordering::Relaxed) as f64 / secs,
        writes.latency.quantile_ms(0.5),
        writes.latency.quantile_ms(0.99),
        writes.latency.quantile_ms(1.0),
        writes.failed.load(Ordering::Relaxed)
    );
    println!(
        "RESULT {}",
        json!({ "scenario": "prune", "events_per_s": deleted as f64 / secs, "p99_ms_during": writes.latency.quantile_ms(0.99) })
    );
    Ok(())
}
