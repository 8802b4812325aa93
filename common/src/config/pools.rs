//! Settings of the command stream, its consumers and the worker pools that drain them.

use serde::{Deserialize, Serialize};

/// Stream and consumer settings; see docs/nats.md for what each protects.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JetStreamSettings {
    /// Window in which a repeated `Nats-Msg-Id` is dropped by the command stream.
    pub duplicate_window_secs: u64,
    /// How long the event stream keeps events (the Postgres event log keeps them for good).
    pub event_max_age_secs: u64,
    /// A command not acked this long after delivery is redelivered.
    pub ack_wait_secs: u64,
    /// Deliveries that may run a command; the next one dead-letters it without running it.
    pub max_deliver: i64,
    /// Unacked commands per partition consumer. Generous on purpose: a pull waiting at this
    /// cap is served again only when it expires (nats-server 2.9), so a tight cap stalls the
    /// pool (measured: 125 per partition drained 1,900 commands/s, 2,000 drained 11,000).
    pub max_ack_pending: i64,
    /// Partitions per pool: a command's conversation picks one, each has its own consumer, and
    /// the pool's live processes split them, so at most this many processes of a pool do work.
    /// Every process must agree; change it only with an empty command backlog (docs/scaling.md).
    pub partitions: u16,
    /// Largest command backlog kept (all pools); past it ingress answers 503 with
    /// `Retry-After` instead of accepting work it would apply seconds late. 5,000 is about two
    /// seconds of what one worker process drains on 2 cores; raise it with the pool's size.
    pub command_max_messages: i64,
    pub replicas: usize,
}

/// Worker pool tuning.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSettings {
    /// Commands fetched per pull request, and the most applied in one transaction.
    pub batch_size: usize,
    /// Lanes per pool in one process: batches applied at once, each lane owning the
    /// conversations that hash to it (each batch is one transaction holding one database
    /// connection). Fewer lanes make larger batches, so fewer transactions: on 2 cores, 2 lanes
    /// cost Postgres about 1.3 times the CPU of 1 at 1,000-2,000 msgs/s, 4 about twice 2; but
    /// with one lane a batch waits for the one before it, and p99 rose from ~60 to ~100 ms at
    /// 2,000-2,500 msgs/s (bench/openloop.sh, bench/README.md "Runtime threads"), so 2. Raise
    /// it with the database's cores.
    pub concurrency: usize,
    /// Longest a busy lane waits for more commands before applying a batch, in ms (0: never;
    /// at most 1,000).
    /// Only while another command is due within it (crate `allo-workers`, `linger.rs`): a
    /// batch's cost is mostly fixed, so under load a few ms buy batches several times larger.
    pub linger_ms: u64,
    /// How often the outbox relay looks for committed events that were never published.
    pub relay_interval_ms: u64,
    /// Age before the relay takes over an unpublished event (the worker normally publishes it).
    pub relay_grace_ms: u64,
    /// How often a scheduler process looks for due scheduled messages and expired ephemeral ones.
    pub scheduler_tick_ms: u64,
    /// Rows one scheduler round takes (each round is one transaction).
    pub scheduler_batch: i64,
    /// Where a worker process serves `/metrics`; none by default (workers bind no port unless
    /// asked, so several run on one host).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How often each worker process reads every pool's consumer for the backlog gauges
    /// (`allo_pool_*`), the signal to scale a pool on.
    pub backlog_interval_ms: u64,
    /// How often each worker process tells its pools' other processes it is alive; one silent
    /// for three of these is taken for gone and its partitions are served by the others.
    pub heartbeat_ms: u64,
    /// Split the pool's partitions between its live processes (the default). Off, every
    /// process serves every partition: still correct (a conversation's row lock and each
    /// command's key in Postgres order and dedupe), but processes then queue on each other's
    /// conversation locks instead of adding drain rate.
    pub split_partitions: bool,
}
