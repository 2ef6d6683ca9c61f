//! Logging with `tracing`: `RUST_LOG` decides, `info` by default.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (to stderr, so that stdout carries only what scripts read).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn,socketioxide=warn,engineioxide=warn")
    });
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}
