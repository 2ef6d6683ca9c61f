//! The `jobstream` command: `serve` (the default), `migrate`, `token` and `prune`.

use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use clap::Parser;
use jobstream_rooms::Claims;
use jobstream_server::auth::{Secret, Signer};
use jobstream_server::config::{jwt_secret_from_env, Cli, Command, ServeArgs};
use jobstream_server::{app, telemetry, Application, Config};

/// jemalloc instead of the system's malloc: it gives the pages a connect burst
/// freed back to the system (with the settings in `.cargo/config.toml`, at
/// once), where glibc's malloc keeps them in its arenas; see BENCHMARKS.md §1.
/// Off with `--no-default-features`.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    let result = match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(*args).await,
        Some(Command::Migrate(args)) => migrate(&args.database_url).await,
        Some(Command::Token(args)) => token(&args),
        Some(Command::Prune(args)) => prune(&args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let config = Config::from_args(args);
    tracing::info!(database = %jobstream_job_events::redact(&config.database_url), "starting");
    let application = Application::build(config).await.map_err(|e| e.to_string())?;
    let url = format!("http://{}", application.local_addr());
    // Demo tokens only with a made-up secret: with public keys and no secret
    // nothing is made up and nothing is printed (tokens come from their issuer).
    if let Some(signer) = application.state().keys.signer().filter(|_| application.has_random_secret()) {
        let day = Duration::from_secs(86_400);
        let workspaces = ["demo".to_owned()];
        let mint = |scope| signer.mint("demo", &workspaces, &Claims::parse_scopes(Some(scope)), day);
        let subscribe = mint("subscribe").map_err(|e| e.to_string())?;
        let publish = mint("subscribe publish").map_err(|e| e.to_string())?;
        tracing::warn!("JOBSTREAM_JWT_SECRET is not set: using a random secret; tokens die with this process");
        println!("demo workspace tokens (valid 24h, workspace \"demo\"):");
        println!("  subscribe: {subscribe}");
        println!("  publish:   {publish}");
    } else if application.state().keys.signer().is_none() {
        tracing::info!("JOBSTREAM_JWT_SECRET is not set: only tokens signed by the configured public keys are accepted (no HS256, no demo tokens)");
    }
    if application.state().dashboard.demo {
        println!("demo mode: jobs are running in workspace \"demo\"; open the dashboard at {url}/");
    } else {
        println!("dashboard: {url}/");
    }
    println!("jobstream listening on {url}");
    application.run_until_stopped(app::shutdown_signal()).await.map_err(|e| e.to_string())?;
    tracing::info!("stopped");
    Ok(())
}

async fn migrate(database_url: &str) -> Result<(), String> {
    let db = jobstream_job_events::open(database_url).await.map_err(|e| e.to_string())?;
    jobstream_job_events::migrate(&db).await.map_err(|e| e.to_string())?;
    println!("migrations applied to {}", jobstream_job_events::redact(database_url));
    Ok(())
}

async fn prune(args: &jobstream_server::config::PruneArgs) -> Result<(), String> {
    if let Some(workspace) = &args.workspace {
        // Checked before the database is opened: a name no job can have would delete nothing, silently.
        jobstream_protocol::requests::check_workspace_id("--workspace", workspace).map_err(|err| {
            format!("--workspace {workspace:?} {}; leave it out to prune every workspace", err.message)
        })?;
    }
    let url = &args.database.database_url;
    let db = jobstream_job_events::open(url).await.map_err(|e| e.to_string())?;
    jobstream_job_events::migrate(&db).await.map_err(|e| e.to_string())?;
    let writer = jobstream_job_events::JobEvents::new(db.clone(), std::sync::Arc::new(jobstream_job_events::NullSink));
    let finished_before = chrono::Duration::from_std(args.finished_before)
        .ok()
        .and_then(|age| chrono::Utc::now().checked_sub_signed(age))
        .ok_or("--finished-before is too long: at most 100 years")?;
    let prune =
        jobstream_job_events::Prune { finished_before, workspace: args.workspace.clone(), dry_run: args.dry_run };
    let report = match writer.prune(&prune).await {
        Ok(report) => report,
        Err(err) => {
            // What committed before the error stays deleted: say so.
            let stats = writer.retention_stats();
            let (jobs, events) = (stats.jobs.load(Relaxed), stats.events.load(Relaxed));
            let cause = std::error::Error::source(&err).map(|s| format!(" ({s})")).unwrap_or_default();
            let hint = if jobstream_job_events::backend_of(url) == Some(jobstream_job_events::DbBackend::Sqlite) {
                "; a running server keeps SQLite's write lock: use its JOBSTREAM_RETENTION, or stop it and run this again"
            } else {
                "; run it again to go on"
            };
            let _ = writer.close().await;
            let _ = db.close().await;
            return Err(format!(
                "prune stopped: {err}{cause}; deleted before that: {jobs} finished jobs and {events} events{hint}"
            ));
        }
    };
    let verb = if args.dry_run { "would delete" } else { "deleted" };
    println!("{verb} {} finished jobs and {} events", report.jobs, report.events);
    let _ = writer.close().await;
    let _ = db.close().await;
    Ok(())
}

fn token(args: &jobstream_server::config::TokenArgs) -> Result<(), String> {
    let secret = jwt_secret_from_env()
        .ok_or("JOBSTREAM_JWT_SECRET is not set: set it to the server's secret to mint tokens the server accepts")?;
    if args.sub.trim().is_empty() {
        return Err("--sub must name who the token is for (the server refuses a token without a subject)".into());
    }
    let scopes = Claims::parse_scopes(Some(&args.scope));
    if scopes.is_empty() {
        return Err(format!("--scope {:?} names no known scope: use \"subscribe\", \"publish\" or both", args.scope));
    }
    for workspace in args.workspaces.iter().filter(|w| w.as_str() != jobstream_protocol::requests::ALL_WORKSPACES) {
        jobstream_protocol::requests::check_workspace_id("--workspace", workspace)
            .map_err(|err| format!("--workspace {workspace:?} {}; name a workspace, or \"*\" for all", err.message))?;
    }
    let signer = Signer::new(Secret::new(secret)).with_claims(args.claims.issuer(), args.claims.audience());
    println!("{}", signer.mint(&args.sub, &args.workspaces, &scopes, args.ttl).map_err(|e| e.to_string())?);
    Ok(())
}
