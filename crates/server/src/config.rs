//! Configuration: the command line and its environment variables (CONTRACT §6).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// jobstream: a Socket.IO-compatible realtime server for background-job events.
#[derive(Debug, Parser)]
#[command(name = "jobstream", version, about)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server options, for plain `jobstream`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending migrations, then serve Socket.IO, the HTTP API and the dashboard.
    Serve(Box<ServeArgs>),
    /// Apply pending migrations and exit.
    Migrate(DatabaseArgs),
    /// Print a token signed with JOBSTREAM_JWT_SECRET.
    Token(TokenArgs),
    /// Delete finished jobs older than a cut, with their steps and events, once.
    Prune(PruneArgs),
}

/// Options of `prune`.
#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// Delete jobs that finished longer ago than this: e.g. 30d, 12h.
    #[arg(long = "finished-before", value_parser = parse_duration, allow_hyphen_values = true)]
    pub finished_before: Duration,
    /// Only this workspace's jobs.
    #[arg(long)]
    pub workspace: Option<String>,
    /// Print what would be deleted, and delete nothing.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// The longest duration any setting takes: 100 years. Longer ones are
/// refused, so that `now + d` and `now - d` stay in range wherever they are used.
pub const MAX_DURATION: Duration = Duration::from_secs(36_525 * 86_400);

/// The shortest duration any setting takes.
pub const MIN_DURATION: Duration = Duration::from_millis(1);

/// Parses a duration setting: a number of seconds (`90`, `1.5`) or
/// [`humantime`]'s form (`500ms`, `90s`, `30m`, `24h`, `7d`, `2w`, `1h 30m`).
/// It must be at least [`MIN_DURATION`] and at most [`MAX_DURATION`]. An
/// upper-case `M` (humantime's month, one letter from `m`, a minute) is
/// refused: months are written `30d` or `1month`.
///
/// # Errors
/// A message naming the text and the expected form, for clap to print with
/// the setting's name.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let form = "use e.g. 500ms, 90s, 30m, 24h or 7d";
    if text.contains('M') {
        return Err(format!("{text:?}: `M` would be months (`m` is minutes); write days (30d) or `month`"));
    }
    let duration = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let seconds: f64 = text.parse().map_err(|_| format!("{text:?} is not a duration: {form}"))?;
        Duration::try_from_secs_f64(seconds).ok().filter(|d| *d <= MAX_DURATION)
    } else {
        match humantime::parse_duration(text) {
            Ok(duration) => Some(duration).filter(|d| *d <= MAX_DURATION),
            Err(humantime::DurationError::NumberOverflow) => None,
            Err(_) => return Err(format!("{text:?} is not a duration: {form}")),
        }
    };
    match duration {
        None => Err(format!("{text:?} is too long: at most 100 years")),
        Some(d) if d < MIN_DURATION => Err(format!("{text:?}: the duration must be at least 1ms")),
        Some(d) => Ok(d),
    }
}

/// Parses a token lifetime: a duration ([`parse_duration`]) of at least one
/// second, as `exp` counts whole seconds.
///
/// # Errors
/// As [`parse_duration`], and for less than a second.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl < Duration::from_secs(1) {
        return Err(format!("{text:?}: a token lives at least 1s (`exp` counts whole seconds)"));
    }
    Ok(ttl)
}

/// A retention: `off` (`None`), or a duration such as `30d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(pub Option<Duration>);

/// Parses a retention: `off`, or a duration such as `30d`.
pub fn parse_retention(text: &str) -> Result<Retention, String> {
    match text.trim() {
        "off" | "" => Ok(Retention(None)),
        other => parse_duration(other).map(|d| Retention(Some(d))),
    }
}

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `sqlite://PATH?mode=rwc` (embedded) or `postgres://USER@HOST/DB`.
    #[arg(long = "database-url", env = "DATABASE_URL", default_value = "sqlite://jobstream.db?mode=rwc")]
    pub database_url: String,
}

/// Options of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "JOBSTREAM_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Origins allowed to call across origins: a comma-separated list, or `*`. None by default.
    #[arg(long = "cors-origins", env = "JOBSTREAM_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Redis URL of the cluster bus (several nodes on one PostgreSQL database).
    #[arg(long = "redis-url", env = "JOBSTREAM_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Cluster bus without Redis: `postgres` uses LISTEN/NOTIFY on the (shared PostgreSQL) database.
    #[arg(long, env = "JOBSTREAM_BUS", value_parser = ["postgres"])]
    pub bus: Option<String>,
    /// Run a built-in producer of realistic jobs in the `demo` workspace.
    #[arg(long)]
    pub demo: bool,
    /// Largest accepted HTTP request body, in bytes.
    #[arg(long = "max-body-bytes", env = "JOBSTREAM_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest accepted `step:output` chunk, in bytes.
    #[arg(long = "max-chunk-bytes", env = "JOBSTREAM_MAX_CHUNK_BYTES", default_value_t = 64 * 1024)]
    pub max_chunk_bytes: usize,
    /// Socket.IO packets buffered per socket; a socket whose buffer is full is
    /// caught up from the database when it reads again.
    #[arg(long = "socket-buffer", env = "JOBSTREAM_SOCKET_BUFFER", default_value_t = 1024)]
    pub socket_buffer: usize,
    /// How long a client may read nothing while the server has data for it
    /// before its connection is closed (it resumes with `since`).
    #[arg(long = "stall-timeout", env = "JOBSTREAM_STALL_TIMEOUT", default_value = "30s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub stall_timeout: std::time::Duration,
    /// Delete finished jobs (with their steps and events) this long after they
    /// finished: a duration such as `30d`, or `off`.
    #[arg(long, env = "JOBSTREAM_RETENTION", default_value = "off", value_parser = parse_retention, allow_hyphen_values = true)]
    pub retention: Retention,
    /// Token verification besides JOBSTREAM_JWT_SECRET.
    #[command(flatten)]
    pub jwt: JwtArgs,
    /// Limits and timeouts (docs/operations.md, "Limits and timeouts").
    #[command(flatten)]
    pub limits: crate::limits::LimitArgs,
}

/// Token verification besides `JOBSTREAM_JWT_SECRET` (docs/operations.md, "Tokens").
#[derive(Debug, Clone, Args)]
pub struct JwtArgs {
    /// A PEM public key (RSA, EC P-256/P-384 or Ed25519) that verifies tokens of an identity provider.
    #[arg(long = "jwt-public-key-file", env = "JOBSTREAM_JWT_PUBLIC_KEY_FILE")]
    pub public_key_file: Option<PathBuf>,
    /// The algorithm of that key: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA.
    /// By default RS256 for an RSA key, ES256 or ES384 by the EC curve, EdDSA for Ed25519.
    #[arg(long = "jwt-algorithm", env = "JOBSTREAM_JWT_ALGORITHM")]
    pub algorithm: Option<String>,
    /// A JWKS file (`{"keys": [...]}`): keys chosen by the token's `kid`, each with the
    /// algorithm of its `alg`, else of its `kty`/`crv`.
    #[arg(long = "jwt-jwks-file", env = "JOBSTREAM_JWT_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// `iss` and `aud` checks.
    #[command(flatten)]
    pub claims: JwtClaimArgs,
}

/// The `iss` and `aud` every token must carry; also what `jobstream token` puts in.
#[derive(Debug, Clone, Args)]
pub struct JwtClaimArgs {
    /// The issuer every token must name in `iss`. Not checked by default.
    #[arg(long = "jwt-issuer", env = "JOBSTREAM_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// Audiences, comma-separated: every token's `aud` must name one. Not checked by default.
    #[arg(long = "jwt-audience", env = "JOBSTREAM_JWT_AUDIENCE", value_delimiter = ',')]
    pub audience: Vec<String>,
}

impl JwtClaimArgs {
    /// The issuer, if set and not blank.
    pub fn issuer(&self) -> Option<String> {
        self.issuer.as_deref().map(str::trim).filter(|i| !i.is_empty()).map(str::to_owned)
    }

    /// The audiences, trimmed, without blanks.
    pub fn audience(&self) -> Vec<String> {
        self.audience.iter().map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect()
    }
}

impl JwtArgs {
    /// The settings, with the previous secret from `JOBSTREAM_JWT_SECRET_PREVIOUS` (never a flag).
    pub fn into_settings(self) -> crate::auth::KeySettings {
        crate::auth::KeySettings {
            previous_secret: std::env::var("JOBSTREAM_JWT_SECRET_PREVIOUS").ok().filter(|s| !s.is_empty()),
            public_key_file: self.public_key_file.filter(|p| !p.as_os_str().is_empty()),
            algorithm: self.algorithm.filter(|a| !a.trim().is_empty()),
            jwks_file: self.jwks_file.filter(|p| !p.as_os_str().is_empty()),
            issuer: self.claims.issuer(),
            audience: self.claims.audience(),
        }
    }
}

/// Options of `token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Who the token is for (`sub`).
    #[arg(long)]
    pub sub: String,
    /// A workspace the bearer may use (repeatable); `*` for all.
    #[arg(long = "workspace", required = true)]
    pub workspaces: Vec<String>,
    /// Space-separated scopes: `subscribe`, `publish`.
    #[arg(long, default_value = "subscribe")]
    pub scope: String,
    /// How long the token is valid: e.g. 90s, 30m, 24h, 7d.
    #[arg(long, default_value = "24h", value_parser = parse_ttl, allow_hyphen_values = true)]
    pub ttl: Duration,
    /// The server's `iss` and `aud`, put in the token.
    #[command(flatten)]
    pub claims: JwtClaimArgs,
}

/// The JWT secret, from `JOBSTREAM_JWT_SECRET` only (never a flag, so it stays out of `ps`).
pub fn jwt_secret_from_env() -> Option<String> {
    std::env::var("JOBSTREAM_JWT_SECRET").ok().filter(|s| !s.is_empty())
}

/// Everything the server needs, resolved. Its `Debug` leaves the JWT secret
/// and the database password out.
#[derive(Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The database URL.
    pub database_url: String,
    /// The JWT secret; `None` makes a random one (unless public keys are set).
    pub jwt_secret: Option<String>,
    /// The rest of token verification: previous secret, public keys, `iss` and `aud`.
    pub jwt: crate::auth::KeySettings,
    /// Limits and timeouts against clients that hold resources.
    pub limits: crate::limits::LimitSettings,
    /// Allowed cross origins.
    pub cors_origins: Vec<String>,
    /// The cluster bus.
    pub redis_url: Option<String>,
    /// `postgres`: LISTEN/NOTIFY as the cluster bus.
    pub bus: Option<String>,
    /// Run the demo producer.
    pub demo: bool,
    /// Body limit.
    pub max_body_bytes: usize,
    /// Chunk limit.
    pub max_chunk_bytes: usize,
    /// Socket.IO per-socket packet buffer.
    pub socket_buffer: usize,
    /// A client that reads nothing for this long while data waits is closed.
    pub stall_timeout: std::time::Duration,
    /// Finished jobs are deleted this long after they finished; `None`: kept.
    pub retention: Option<Duration>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database_url", &jobstream_job_events::redact(&self.database_url))
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "(set)"))
            .field("jwt", &self.jwt)
            .field("limits", &self.limits)
            .field("cors_origins", &self.cors_origins)
            .field("redis_url", &self.redis_url.as_deref().map(jobstream_job_events::redact))
            .field("bus", &self.bus)
            .field("demo", &self.demo)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_chunk_bytes", &self.max_chunk_bytes)
            .field("socket_buffer", &self.socket_buffer)
            .field("stall_timeout", &self.stall_timeout)
            .field("retention", &self.retention)
            .finish()
    }
}

impl Config {
    /// The configuration of `serve`.
    pub fn from_args(args: ServeArgs) -> Self {
        Self {
            listen: args.listen,
            database_url: args.database.database_url,
            jwt_secret: jwt_secret_from_env(),
            jwt: args.jwt.into_settings(),
            limits: args.limits.into(),
            cors_origins: args
                .cors_origins
                .into_iter()
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            redis_url: args.redis_url.filter(|u| !u.is_empty()),
            bus: args.bus.filter(|b| !b.is_empty()),
            demo: args.demo,
            max_body_bytes: args.max_body_bytes,
            max_chunk_bytes: args.max_chunk_bytes,
            socket_buffer: args.socket_buffer.max(1),
            stall_timeout: args.stall_timeout,
            retention: args.retention.0,
        }
    }

    /// A configuration for tests: port 0, the given database and secret.
    pub fn for_tests(database_url: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.into(),
            jwt_secret: Some(secret.into()),
            jwt: crate::auth::KeySettings::default(),
            limits: crate::limits::LimitSettings::default(),
            cors_origins: Vec::new(),
            redis_url: None,
            bus: None,
            demo: false,
            max_body_bytes: 1024 * 1024,
            max_chunk_bytes: 64 * 1024,
            socket_buffer: 1024,
            stall_timeout: std::time::Duration::from_secs(30),
            retention: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_seconds_or_a_unit_and_stay_in_range() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration(" 30d "), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("100y").map(|d| d <= MAX_DURATION), Ok(true));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert!(parse_ttl("500ms").is_err());
        assert_eq!(parse_ttl("1s"), Ok(Duration::from_secs(1)));
        for bad in ["", "0", "0s", "-1s", "10 parsecs", "d", "1.5.2", "nan", "inf", "1e400", "1ns", "999us", "1M"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        // Whatever overflows a u64, a chrono duration or a date is refused, not wrapped.
        for huge in
            ["18446744073709551615", "99999999999999999999999s", "213503982334601d", "307445734561825861m", "101y"]
        {
            let refused = parse_duration(huge);
            assert!(refused.as_ref().is_err_and(|e| e.contains("too long")), "{huge}: {refused:?}");
        }
        assert!(parse_retention("off").is_ok_and(|r| r.0.is_none()));
        assert!(parse_retention("99999999999999999d").is_err());
    }

    #[test]
    fn the_limits_default_to_the_documented_values() {
        let limits = Cli::try_parse_from(["jobstream"]).map(|cli| crate::limits::LimitSettings::from(cli.serve.limits));
        assert_eq!(limits.ok(), Some(crate::limits::LimitSettings::default()));
        let limits = Cli::try_parse_from(["jobstream", "--header-timeout", "1500ms", "--max-connections", "0"])
            .map(|cli| crate::limits::LimitSettings::from(cli.serve.limits));
        let limits = limits.ok();
        assert_eq!(limits.as_ref().map(|l| l.header_timeout), Some(Duration::from_millis(1500)));
        assert_eq!(limits.as_ref().map(|l| l.max_connections), Some(0));
    }

    #[test]
    fn debug_leaves_credentials_out() {
        let mut config = Config::for_tests("postgres://app:db-password@host/db", "jwt-secret-value");
        config.redis_url = Some("redis://:redis-password@host".into());
        config.jwt.previous_secret = Some("previous-jwt-secret".into());
        let text = format!("{config:?}");
        for secret in ["db-password", "jwt-secret-value", "redis-password", "previous-jwt-secret"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("jwt_secret: Some(\"(set)\")"), "{text}");
    }
}
