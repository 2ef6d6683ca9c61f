//! Logging with `tracing`: `RUST_LOG` decides, `info` by default, to stderr —
//! and no credential is ever written, whatever `RUST_LOG` says.
//!
//! Credentials reach the process in three places: a Socket.IO CONNECT packet
//! (`auth: { token }`), a URL (`?token=` of the SSE streams and of Socket.IO
//! handshakes) and an `Authorization` header; the JWT secret comes from the
//! environment. Our own code never logs any of them (the secret's `Debug` is
//! redacted, and so is the configuration's). The libraries that see raw
//! traffic do, at debug and trace: socketioxide and engineioxide log every
//! packet and the `auth` payload, tungstenite logs WebSocket frames, hyper and
//! tower-http can log requests. Two guards, both applied after `RUST_LOG`:
//!
//! 1. A cap: those libraries' targets ([`WIRE_TARGETS`]) log at `warn` and
//!    above only. It is a second filter that every event must also pass, so
//!    no directive in `RUST_LOG` (not even `socketioxide=trace`) lifts it;
//!    their warnings and errors carry no packet contents.
//! 2. A redacting writer: every line written is scanned for the shape of a
//!    JWT (`eyJ…` `.` `…` `.` `…`, base64url) and such a token is replaced by
//!    `[redacted token]`, so that a token that reaches a log by any other path
//!    (a new dependency, a `Debug` of a request) is still not written.

use std::io::{self, Write};

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

/// Targets of libraries that log raw traffic (packets, frames, URLs, headers)
/// below `warn`. A target matches these by prefix (`socketioxide` covers
/// `socketioxide_core` and `socketioxide_parser_common`; `hyper` covers `hyper_util`).
pub const WIRE_TARGETS: [&str; 8] = [
    "socketioxide",
    "engineioxide",
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "h2",
    "tower_http",
    "axum::rejection",
];

/// What replaces a token in a log line.
const REDACTED: &[u8] = b"[redacted token]";

/// The filter of [`WIRE_TARGETS`]: `warn` for them, everything for the rest
/// (the `RUST_LOG` filter decides the rest).
pub fn wire_cap() -> Targets {
    WIRE_TARGETS.iter().fold(Targets::new().with_default(LevelFilter::TRACE), |targets, target| {
        targets.with_target(*target, LevelFilter::WARN)
    })
}

/// Installs the global subscriber (to stderr, so that stdout carries only what scripts read).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn,socketioxide=warn,engineioxide=warn")
    });
    let format = tracing_subscriber::fmt::layer().with_writer(RedactingStderr).with_target(false);
    let most_verbose = filter.max_level_hint();
    if tracing_subscriber::registry().with(filter).with(wire_cap()).with(format).try_init().is_ok() {
        // Records of crates that log with `log` (the WebSocket layer, on every
        // write) are forwarded to this subscriber; capping `log` at what the
        // filter can let through makes a disabled one a single comparison
        // instead of a call through the forwarder.
        log::set_max_level(log_level(most_verbose));
    }
}

/// The `log` level that lets through what `most_verbose` does (everything when unknown).
fn log_level(most_verbose: Option<LevelFilter>) -> log::LevelFilter {
    match most_verbose {
        Some(LevelFilter::OFF) => log::LevelFilter::Off,
        Some(LevelFilter::ERROR) => log::LevelFilter::Error,
        Some(LevelFilter::WARN) => log::LevelFilter::Warn,
        Some(LevelFilter::INFO) => log::LevelFilter::Info,
        Some(LevelFilter::DEBUG) => log::LevelFilter::Debug,
        Some(_) | None => log::LevelFilter::Trace,
    }
}

/// Makes [`Redacting`] writers to stderr.
#[derive(Debug, Clone, Copy)]
struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = Redacting<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        Redacting(io::stderr())
    }
}

/// A writer that removes JWTs from what goes through it. The formatter writes
/// each event whole in one call, so a token is never split between writes.
#[derive(Debug)]
pub struct Redacting<W>(pub W);

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(&redact_tokens(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

fn is_base64url(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

/// The length of the JWT that starts at `text[0]`, if one does: three
/// base64url parts joined by dots, the first one a JSON object (`eyJ`), the
/// second one not empty (the signature may be).
fn token_len(text: &[u8]) -> Option<usize> {
    if !text.starts_with(b"eyJ") {
        return None;
    }
    let part = |from: usize| text.get(from..).map_or(0, |rest| rest.iter().take_while(|b| is_base64url(**b)).count());
    let header = part(0);
    if text.get(header) != Some(&b'.') {
        return None;
    }
    let payload = part(header + 1);
    let dot = header + 1 + payload;
    if payload == 0 || text.get(dot) != Some(&b'.') {
        return None;
    }
    Some(dot + 1 + part(dot + 1))
}

/// `text` with every JWT replaced by `[redacted token]`.
pub fn redact_tokens(text: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < text.len() {
        // A token starts a base64url run: look only where one begins.
        let starts_run = i == 0 || !is_base64url(text[i - 1]);
        match text.get(i..).and_then(token_len).filter(|_| starts_run) {
            Some(len) => {
                let out = out.get_or_insert_with(|| Vec::with_capacity(text.len()));
                out.extend_from_slice(&text[copied..i]);
                out.extend_from_slice(REDACTED);
                i += len;
                copied = i;
            }
            None => i += 1,
        }
    }
    match out {
        None => std::borrow::Cow::Borrowed(text),
        Some(mut out) => {
            out.extend_from_slice(&text[copied..]);
            std::borrow::Cow::Owned(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1IiwiZXhwIjo0MTAyNDQ0ODAwfQ.fN4v4HCbZOx-_KO_OoVZY9fb87BnnIuF5H5z0MANeAc";

    fn redacted(text: &str) -> String {
        String::from_utf8_lossy(&redact_tokens(text.as_bytes())).into_owned()
    }

    #[test]
    fn tokens_are_redacted_wherever_they_appear() {
        assert_eq!(
            redacted(&format!("auth: Some({{\"token\":\"{TOKEN}\"}})")),
            "auth: Some({\"token\":\"[redacted token]\"})"
        );
        assert_eq!(redacted(&format!("GET /x?EIO=4&token={TOKEN}&t=1")), "GET /x?EIO=4&token=[redacted token]&t=1");
        assert_eq!(redacted(&format!("authorization: Bearer {TOKEN}")), "authorization: Bearer [redacted token]");
        assert_eq!(redacted(&format!("{TOKEN} {TOKEN}")), "[redacted token] [redacted token]");
        let unsigned = TOKEN.rsplit_once('.').map(|(head, _)| format!("{head}.")).unwrap_or_default();
        assert_eq!(redacted(&format!("x={unsigned}")), "x=[redacted token]");
    }

    #[test]
    fn other_text_is_left_alone() {
        for text in ["plain line", "eyJ alone", "eyJabc.def", "keyJab.cd.ef", "a.b.c", ""] {
            assert_eq!(redacted(text), text);
        }
        assert!(matches!(redact_tokens(b"nothing here"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn the_writer_redacts_and_reports_the_whole_buffer_written() {
        let mut writer = Redacting(Vec::new());
        let line = format!("token={TOKEN}\n");
        assert_eq!(writer.write(line.as_bytes()).ok(), Some(line.len()));
        assert_eq!(String::from_utf8_lossy(&writer.0), "token=[redacted token]\n");
    }

    #[test]
    fn wire_targets_are_capped_at_warn() {
        let cap = wire_cap();
        for target in [
            "socketioxide::client",
            "socketioxide_core::parser",
            "engineioxide::transport::ws",
            "tungstenite::protocol",
            "tokio_tungstenite",
            "hyper_util::server",
            "tower_http::trace",
        ] {
            assert!(cap.would_enable(target, &tracing::Level::WARN), "{target} warn");
            assert!(!cap.would_enable(target, &tracing::Level::INFO), "{target} info");
            assert!(!cap.would_enable(target, &tracing::Level::TRACE), "{target} trace");
        }
        assert!(cap.would_enable("jobstream_server::socket", &tracing::Level::TRACE));
        assert!(cap.would_enable("sqlx::query", &tracing::Level::DEBUG));
    }
}
