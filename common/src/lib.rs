//! Allo's shared vocabulary, used by every binary.
//!
//! # Layout
//! - [`config`]: one `Settings` struct, loaded from defaults, an optional file and `ALLO_*` env.
//! - [`ids`]: newtypes for every id; a value that exists is valid.
//! - [`auth`]: HS256 JWT verification and dev-token minting.
//! - [`ops`]: one module per operation: the original's request body, its validation and the
//!   command it becomes. HTTP and sockets share this code.
//! - [`command`] / [`event`]: the wire envelopes on NATS (commands in, events out).
//! - [`subjects`]: every NATS subject and stream name, derived from the subject prefix.
//! - [`jetstream`]: idempotent stream and consumer provisioning.
//! - [`db`]: Postgres pool and the embedded migrations.
//! - [`runtime`]: the tokio runtime each binary runs on, sized by its settings.
//! - [`dead_letters`]: operators' list/show/replay/discard (the workers' CLI and the API's
//!   admin routes share it).
//! - [`error`]: domain error codes shared by workers (who find them) and ingress (who maps them).

pub mod auth;
pub mod command;
pub mod config;
pub mod db;
pub mod dead_letters;
pub mod error;
pub mod event;
pub mod ids;
pub mod ingress;
pub mod jetstream;
pub mod ops;
pub mod partition;
pub mod runtime;
pub mod subjects;
pub mod telemetry;
pub mod text;
pub mod trace;

pub use config::Settings;
