//! Configuration: built-in defaults, then an optional TOML file (`ALLO_CONFIG`), then `ALLO_*`
//! environment variables (nested keys with `__`, e.g. `ALLO_JETSTREAM__ACK_WAIT_SECS`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod auth;
mod fanout_limits;
mod pools;
pub use auth::{AuthSettings, JwtAlgorithm};
pub use fanout_limits::FanoutLimits;
pub use pools::{JetStreamSettings, WorkerSettings};

/// The secret a dev stack signs tokens with: public, so it works only in an explicitly chosen
/// dev mode, on loopback.
pub const DEV_JWT_SECRET: &str = "allo-dev-secret-do-not-use-in-production";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not load configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Every setting of every binary, in one place.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `production` unless dev mode is chosen explicitly (`ALLO_ENVIRONMENT=dev`). Only dev mode
    /// accepts the built-in JWT secret and mints tokens, and it listens on loopback only.
    pub environment: Environment,
    pub database_url: String,
    pub nats_url: String,
    /// This service's NATS user and password: the shipped nats.conf gives each service its own,
    /// allowed only its subjects. Empty: connect without credentials. Never logged.
    pub nats_user: String,
    pub nats_password: String,
    /// HS256 secret for bearer tokens and socket handshakes (at least 32 bytes). Empty: the
    /// built-in dev secret in dev mode, an error otherwise (unless `auth.public_key_file`
    /// verifies tokens instead). Never logged.
    pub jwt_secret: String,
    pub auth: AuthSettings,
    pub api_addr: SocketAddr,
    pub fanout_addr: SocketAddr,
    /// Operators' listeners of the API and the fan-out: `/metrics` and `/readyz` are served
    /// here, never on the client-facing ports. Loopback by default.
    pub api_admin_addr: SocketAddr,
    pub fanout_admin_addr: SocketAddr,
    /// Namespaces subjects, streams and consumers so deployments (and test runs) can share NATS.
    pub subject_prefix: String,
    /// Apply migrations when `allo-workers` starts (they are also `allo-workers migrate`).
    pub migrate_on_start: bool,
    /// Postgres connections per process: bounded so N processes cannot exhaust the server.
    pub database_max_connections: u32,
    /// Threads of each service's async runtime; 0 = one per core (tokio's default). Where all
    /// the services share a few cores (`scripts/run.sh`, the benchmarks), 1 each: they scale by
    /// processes, and every extra thread per process only adds cross-thread wake-ups
    /// (bench/README.md, "Runtime threads").
    pub runtime_threads: usize,
    pub jetstream: JetStreamSettings,
    pub limits: Limits,
    pub worker: WorkerSettings,
    pub fanout: FanoutSettings,
    /// Origins allowed by CORS on the API; empty means same-origin only.
    pub cors_origins: Vec<String>,
    /// The fan-out's public URL for the web console (`/console/`), when browsers reach it
    /// elsewhere than at the console's own host on `fanout_addr`'s port (behind a proxy).
    pub console_fanout_url: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Dev,
    Production,
}

/// Input limits; every size and count a client controls is bounded here.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Limits {
    pub message_max_chars: usize,
    pub topic_max_chars: usize,
    pub participants_max: usize,
    pub body_max_bytes: usize,
    /// Longest `Prefer: wait=<s>` honoured.
    pub wait_max_secs: u64,
    /// `Prefer: wait` requests one user may hold open at once per API replica; past it the
    /// preference is not applied (the answer is 202 at once).
    pub waits_per_user: usize,
    /// Requests one API replica serves at once; past it, 503 `overloaded` with `Retry-After`.
    pub api_max_in_flight: usize,
    /// A request still unanswered after this is ended with 503 `timeout` (longer than
    /// `wait_max_secs`).
    pub request_timeout_secs: u64,
    pub history_page_max: i64,
    /// Longest `Idempotency-Key` accepted.
    pub idempotency_key_max_chars: usize,
    /// Largest decoded ciphertext of a secure message (plaintext limits do not apply to it).
    pub ciphertext_max_bytes: usize,
    /// Longest signature / algorithm name of a secure message.
    pub signature_max_chars: usize,
    /// Longest voice or sticker URL.
    pub url_max_chars: usize,
    /// Shortest and longest `expiresIn` of an ephemeral message, in milliseconds.
    pub ephemeral_min_ms: u64,
    pub ephemeral_max_ms: u64,
    /// How long after sending the author may still unsend a message.
    pub unsend_window_secs: u64,
    /// Furthest ahead a message may be scheduled (and a poll's closing time set).
    pub schedule_horizon_secs: u64,
    /// Longest poll question and option.
    pub poll_question_max_chars: usize,
    pub poll_option_max_chars: usize,
    /// Longest free text of a report.
    pub report_details_max_chars: usize,
    /// Distinct reporters that hide a message pending review.
    pub reports_hide_threshold: i64,
    /// Commands one user may submit per window, across every ingress replica (HTTP and
    /// sockets together); past it: 429 with `Retry-After`.
    pub rate_max_per_window: i64,
    pub rate_window_secs: u64,
    /// Totals a user could otherwise grow one accepted command at a time (past them: 422
    /// `limit_reached`): active members of a group or channel, ...
    pub conversation_members_max: i64,
    /// ... pending scheduled messages per user, ...
    pub scheduled_per_user_max: i64,
    /// ... and distinct reactions of one user on one message.
    pub reactions_per_user_per_message_max: i64,
    /// Reads (GET routes) one user may make per second on one API replica, with bursts of
    /// `reads_burst`; past it: 429 with `Retry-After`. Commands have their own budget.
    pub reads_per_user_per_sec: u32,
    pub reads_burst: u32,
    /// Per-client bounds of a fan-out replica (`ALLO_LIMITS__FANOUT__*`).
    pub fanout: FanoutLimits,
}

/// Most runtime threads a service may ask for (`runtime_threads`).
const MAX_RUNTIME_THREADS: usize = 1024;
/// Bounds of the Engine.IO heartbeat settings (`fanout.ping_*_ms`).
const MIN_PING_MS: u64 = 100;
const MAX_PING_MS: u64 = 3_600_000;
/// Most packets a socket may have queued (`fanout.socket_buffer`): its memory while it lags.
const MAX_SOCKET_BUFFER: usize = 65_536;

/// Fan-out tuning.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FanoutSettings {
    /// How long an out-of-order event waits for the missing seq before the gap is filled from
    /// the Postgres event log.
    pub reorder_window_ms: u64,
    /// Most events replayed to a resuming socket; further behind, the join answers
    /// `recovered: false` and the client reloads instead.
    pub replay_max: i64,
    /// Packets queued per socket before it counts as a slow consumer and is disconnected.
    pub socket_buffer: usize,
    /// Shortest interval between two `typing` signals of one socket (extra ones are dropped).
    pub typing_min_interval_ms: u64,
    /// Engine.IO heartbeat: a ping to every socket this often (clients are told it in the
    /// handshake and give up on a server silent for `ping_interval_ms + ping_timeout_ms`).
    pub ping_interval_ms: u64,
    /// A socket that has not answered a ping within this long is disconnected.
    pub ping_timeout_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            environment: Environment::Production,
            database_url: "postgres://postgres@127.0.0.1:5432/allo".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_user: String::new(),
            nats_password: String::new(),
            jwt_secret: String::new(),
            auth: AuthSettings::default(),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 5000)),
            fanout_addr: SocketAddr::from(([127, 0, 0, 1], 5001)),
            api_admin_addr: SocketAddr::from(([127, 0, 0, 1], 5100)),
            fanout_admin_addr: SocketAddr::from(([127, 0, 0, 1], 5101)),
            subject_prefix: "allo".into(),
            migrate_on_start: true,
            database_max_connections: 10,
            runtime_threads: 0,
            jetstream: JetStreamSettings {
                duplicate_window_secs: 600,
                event_max_age_secs: 7 * 24 * 3600,
                ack_wait_secs: 30,
                max_deliver: 5,
                max_ack_pending: 2000,
                partitions: 4,
                command_max_messages: 5_000,
                replicas: 1,
            },
            limits: Limits {
                message_max_chars: 4096,
                topic_max_chars: 200,
                participants_max: 1000,
                body_max_bytes: 64 * 1024,
                wait_max_secs: 30,
                waits_per_user: 4,
                api_max_in_flight: 1024,
                request_timeout_secs: 45,
                history_page_max: 100,
                idempotency_key_max_chars: 200,
                ciphertext_max_bytes: 16 * 1024,
                signature_max_chars: 1024,
                url_max_chars: 2048,
                ephemeral_min_ms: 1_000,
                ephemeral_max_ms: 7 * 24 * 3600 * 1000,
                unsend_window_secs: 15 * 60,
                schedule_horizon_secs: 365 * 24 * 3600,
                poll_question_max_chars: 300,
                poll_option_max_chars: 100,
                report_details_max_chars: 1000,
                reports_hide_threshold: 3,
                rate_max_per_window: 120,
                rate_window_secs: 10,
                conversation_members_max: 10_000,
                scheduled_per_user_max: 1000,
                reactions_per_user_per_message_max: 20,
                reads_per_user_per_sec: 50,
                reads_burst: 200,
                fanout: FanoutLimits::default(),
            },
            worker: WorkerSettings {
                batch_size: 64,
                concurrency: 2,
                linger_ms: 8,
                relay_interval_ms: 1000,
                relay_grace_ms: 2000,
                scheduler_tick_ms: 250,
                scheduler_batch: 50,
                metrics_addr: None,
                backlog_interval_ms: 5000,
                heartbeat_ms: 1000,
                split_partitions: true,
            },
            fanout: FanoutSettings {
                reorder_window_ms: 150,
                replay_max: 1000,
                socket_buffer: 1024,
                typing_min_interval_ms: 500,
                ping_interval_ms: 25_000,
                ping_timeout_ms: 20_000,
            },
            cors_origins: Vec::new(),
            console_fanout_url: None,
        }
    }
}

impl Settings {
    /// Loads defaults, then the file named by `ALLO_CONFIG` (if any), then `ALLO_*` variables.
    pub fn load() -> Result<Self, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::Config::try_from(&Settings::default())?);
        if let Ok(path) = std::env::var("ALLO_CONFIG") {
            builder = builder.add_source(config::File::with_name(&path).required(true));
        }
        let mut settings: Settings = builder
            .add_source(
                config::Environment::with_prefix("ALLO")
                    .prefix_separator("_")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("cors_origins")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()?;
        if settings.environment == Environment::Dev && settings.jwt_secret.is_empty() {
            settings.jwt_secret = DEV_JWT_SECRET.into();
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Refuses settings that would run but be wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_environment()?;
        crate::subjects::validate_prefix(&self.subject_prefix).map_err(ConfigError::Invalid)?;
        if self.worker.concurrency == 0
            || self.worker.concurrency + 2 > self.database_max_connections as usize
        {
            return Err(ConfigError::Invalid(
                "worker.concurrency must be at least 1 and leave 2 of database_max_connections \
                 for the relay and the scheduler"
                    .into(),
            ));
        }
        if self.runtime_threads > MAX_RUNTIME_THREADS {
            return Err(ConfigError::Invalid(format!(
                "runtime_threads must be at most {MAX_RUNTIME_THREADS} (0: one per core)"
            )));
        }
        let limits = &self.limits;
        if limits.api_max_in_flight == 0
            || limits.request_timeout_secs <= limits.wait_max_secs
            || limits.reads_per_user_per_sec == 0
            || limits.reads_burst == 0
        {
            return Err(ConfigError::Invalid(
                "limits.api_max_in_flight, reads_per_user_per_sec and reads_burst must be \
                 positive and limits.request_timeout_secs longer than limits.wait_max_secs"
                    .into(),
            ));
        }
        if self.worker.linger_ms > 1000 {
            // A lane holds what it has taken for up to this long: past a second it is an
            // outage, not a batching choice (and `Instant + linger` must not overflow).
            return Err(ConfigError::Invalid(
                "worker.linger_ms must be at most 1000".into(),
            ));
        }
        let ping = MIN_PING_MS..=MAX_PING_MS;
        if !ping.contains(&self.fanout.ping_interval_ms)
            || !ping.contains(&self.fanout.ping_timeout_ms)
        {
            // Too short and every socket is pinged in a storm (the heartbeat grid also needs a
            // timeout it can divide); too long and a dead client holds its socket for hours.
            return Err(ConfigError::Invalid(format!(
                "fanout.ping_interval_ms and fanout.ping_timeout_ms must be {MIN_PING_MS} to \
                 {MAX_PING_MS}"
            )));
        }
        if !(1..=MAX_SOCKET_BUFFER).contains(&self.fanout.socket_buffer) {
            // Zero would disconnect every socket at its first packet; the bound is a lagging
            // socket's memory.
            return Err(ConfigError::Invalid(format!(
                "fanout.socket_buffer must be 1 to {MAX_SOCKET_BUFFER}"
            )));
        }
        if self.jetstream.max_deliver < 1
            || self.worker.batch_size == 0
            || self.worker.heartbeat_ms == 0
            || !(1..=1024).contains(&self.jetstream.partitions)
        {
            return Err(ConfigError::Invalid(
                "jetstream.max_deliver, worker.batch_size and worker.heartbeat_ms must be \
                 positive and jetstream.partitions 1 to 1024"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Dev mode listens on loopback only: its tokens are signed with a public secret.
    fn validate_environment(&self) -> Result<(), ConfigError> {
        let addrs = [
            Some(self.api_addr),
            Some(self.fanout_addr),
            Some(self.api_admin_addr),
            Some(self.fanout_admin_addr),
            self.worker.metrics_addr,
        ];
        if self.environment == Environment::Dev
            && addrs.iter().flatten().any(|a| !a.ip().is_loopback())
        {
            return Err(ConfigError::Invalid(
                "dev mode listens on loopback only (api_addr, fanout_addr, the admin addresses, worker.metrics_addr); \
                 set ALLO_ENVIRONMENT=production to serve others"
                    .into(),
            ));
        }
        Ok(())
    }

    /// For the services that verify tokens (api, fan-out; workers never see one). Safe by
    /// default: the public dev secret only in dev mode, and a real secret (or a verification
    /// key) everywhere else.
    pub fn validate_auth(&self) -> Result<(), ConfigError> {
        let invalid = |why: &str| Err(ConfigError::Invalid(why.into()));
        if self.environment == Environment::Production && self.jwt_secret == DEV_JWT_SECRET {
            return invalid(
                "the built-in dev JWT secret is public: set ALLO_JWT_SECRET, or choose dev mode \
                 explicitly with ALLO_ENVIRONMENT=dev",
            );
        }
        match self.auth.algorithm {
            JwtAlgorithm::Hs256 if self.jwt_secret.len() < 32 => invalid(
                "ALLO_JWT_SECRET must be set, at least 32 bytes (or use auth.algorithm rs256/eddsa \
                 with auth.public_key_file)",
            ),
            JwtAlgorithm::Rs256 | JwtAlgorithm::Eddsa
                if self.auth.public_key_file.is_none() == self.auth.jwks_file.is_none() =>
            {
                invalid("rs256 and eddsa need one of auth.public_key_file and auth.jwks_file")
            }
            _ if self.auth.max_lifetime_secs == 0 => {
                invalid("auth.max_lifetime_secs must be positive")
            }
            _ => Ok(()),
        }
    }

    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.jetstream.ack_wait_secs)
    }
}

impl std::fmt::Debug for Settings {
    /// Hand-written so the JWT secret and database password never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("environment", &self.environment)
            .field("database_url", &redact_url(&self.database_url))
            .field("nats_url", &redact_url(&self.nats_url))
            .field("nats_user", &self.nats_user)
            .field("nats_password", &"<redacted>")
            .field("jwt_secret", &"<redacted>")
            .field("auth", &self.auth)
            .field("api_addr", &self.api_addr)
            .field("fanout_addr", &self.fanout_addr)
            .field("api_admin_addr", &self.api_admin_addr)
            .field("fanout_admin_addr", &self.fanout_admin_addr)
            .field("subject_prefix", &self.subject_prefix)
            .field("jetstream", &self.jetstream)
            .field("limits", &self.limits)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

/// Drops a password from `scheme://user:password@host` before logging.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-real-secret-of-enough-length-0123";

    #[test]
    fn nothing_configured_is_refused() {
        // The default is production with no secret: it must not start.
        assert!(Settings::default().validate_auth().is_err());
        let settings = Settings {
            jwt_secret: SECRET.into(),
            ..Settings::default()
        };
        assert!(settings.validate_auth().is_ok());
    }

    #[test]
    fn production_refuses_the_dev_secret_and_short_secrets() {
        for secret in [DEV_JWT_SECRET, "short-secret-0123456789"] {
            let settings = Settings {
                jwt_secret: secret.into(),
                ..Settings::default()
            };
            assert!(settings.validate_auth().is_err(), "{secret} accepted");
        }
    }

    #[test]
    fn dev_mode_takes_the_dev_secret_on_loopback_only() {
        let dev = Settings {
            environment: Environment::Dev,
            jwt_secret: DEV_JWT_SECRET.into(),
            ..Settings::default()
        };
        assert!(dev.validate().is_ok() && dev.validate_auth().is_ok());
        let exposed = Settings {
            api_addr: SocketAddr::from(([0, 0, 0, 0], 5000)),
            ..dev.clone()
        };
        assert!(exposed.validate().is_err());
    }

    #[test]
    fn public_key_algorithms_need_a_key() {
        let mut settings = Settings::default();
        settings.auth.algorithm = JwtAlgorithm::Rs256;
        assert!(settings.validate_auth().is_err());
        settings.auth.public_key_file = Some("/etc/allo/idp.pem".into());
        assert!(settings.validate_auth().is_ok());
    }

    #[test]
    fn heartbeat_settings_out_of_bounds_are_refused() {
        let mut settings = Settings::default();
        assert!(settings.validate().is_ok());
        for (interval, timeout) in [(0, 20_000), (25_000, 0), (25_000, u64::MAX), (99, 99)] {
            settings.fanout.ping_interval_ms = interval;
            settings.fanout.ping_timeout_ms = timeout;
            assert!(
                settings.validate().is_err(),
                "{interval}/{timeout} accepted"
            );
        }
        settings.fanout.ping_interval_ms = 300;
        settings.fanout.ping_timeout_ms = 300;
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn a_socket_buffer_of_zero_or_past_the_bound_is_refused() {
        let mut settings = Settings::default();
        for refused in [0, MAX_SOCKET_BUFFER + 1] {
            settings.fanout.socket_buffer = refused;
            assert!(settings.validate().is_err(), "{refused} accepted");
        }
        settings.fanout.socket_buffer = 1;
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn runtime_threads_past_the_bound_are_refused() {
        let mut settings = Settings {
            runtime_threads: MAX_RUNTIME_THREADS + 1,
            ..Settings::default()
        };
        assert!(settings.validate().is_err());
        settings.runtime_threads = MAX_RUNTIME_THREADS;
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn a_lane_linger_past_a_second_is_refused() {
        let mut settings = Settings::default();
        settings.worker.linger_ms = 1000;
        assert!(settings.validate().is_ok());
        settings.worker.linger_ms = 1001;
        assert!(settings.validate().is_err());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let settings = Settings {
            database_url: "postgres://allo:hunter2@db/allo".into(),
            jwt_secret: SECRET.into(),
            nats_password: "nats-pass-word".into(),
            ..Settings::default()
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains(SECRET));
        assert!(!shown.contains("nats-pass-word"));
    }
}
