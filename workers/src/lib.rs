//! Allo's worker pools: each pulls its commands from the command stream, applies each in one
//! Postgres transaction together with its events and its status, then publishes the events.
//!
//! # Layout
//! - [`pool`]: the pull loop a pool's processes share, routing each command to a lane by its
//!   conversation (one lane applies a conversation's commands, a batch at a time).
//! - [`batch`]: one lane's batch: dead-lettering, back-off while Postgres is down, one
//!   transaction, events published together, ack after they are on the stream.
//! - [`failures`]: a failing command's last error, kept between deliveries for its dead letter.
//! - [`apply`]: the batch's transaction: runs of sends as a set ([`send_batch`]), every other
//!   command on its own savepoint.
//! - [`unit`]: one command's transaction: the exactly-once key, the per-conversation `seq`,
//!   the event rows.
//! - [`messages`]: the messages pool's handlers, one module per operation.
//! - [`scheduler`], [`polls`], [`reports`]: the other pools' handlers; the scheduler also runs
//!   the dispatcher of due scheduled messages and the sweeper of expired ephemeral ones.
//! - [`publish`]: puts committed events on the event stream (used by the pool and the relay).
//! - [`relay`]: the outbox relay: publishes committed events the worker did not (crash
//!   between commit and publish).
//! - [`stream_erasure`]: deletes erased (or hidden) messages' events from the event stream
//!   by the stream sequence their published mark recorded; run in the relay's rounds.

pub mod apply;
pub mod backlog;
mod batch;
pub mod error;
pub mod failures;
mod linger;
mod membership;
pub mod messages;
mod partitions;
pub mod polls;
pub mod pool;
pub mod publish;
mod pull;
pub mod relay;
pub mod reports;
pub mod scheduler;
pub mod send_batch;
pub mod stream_erasure;
pub mod unit;

use allo_common::command::Command;

/// Applies one command of any pool inside its unit; the caller commits.
pub async fn apply(
    unit: &mut unit::Unit<'_>,
    command: &Command,
) -> Result<serde_json::Value, error::ApplyError> {
    match command {
        Command::ScheduleMessage(c) => scheduler::schedule(unit, c).await,
        Command::CancelScheduledMessage(c) => scheduler::cancel(unit, c).await,
        Command::CreatePoll(c) => polls::create(unit, c).await,
        Command::VotePoll(c) => polls::vote(unit, c).await,
        Command::ClosePoll(c) => polls::close(unit, c).await,
        Command::ReportMessage(c) => reports::report(unit, c).await,
        Command::ResolveReport(c) => reports::resolve(unit, c).await,
        Command::RestoreMessage(c) => reports::restore(unit, c).await,
        other => messages::apply(unit, other).await,
    }
}

use std::sync::Arc;

use allo_common::Settings;
use allo_common::ops::Pool;
use anyhow::Context;
use tokio::sync::watch;

pub use pool::Worker;

/// Connects, migrates (if configured), provisions JetStream, then runs the given pools and
/// the relay until `shutdown` turns true.
pub async fn run(
    settings: Settings,
    pools: Vec<Pool>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let db = allo_common::db::connect_worker(&settings)
        .await
        .context("connecting to Postgres")?;
    if settings.migrate_on_start {
        allo_common::db::migrate(&db)
            .await
            .context("applying migrations")?;
    }
    let nats = allo_common::jetstream::connect(&settings, "allo-workers")
        .await
        .context("connecting to NATS")?;
    let js = async_nats::jetstream::new(nats.clone());
    allo_common::jetstream::provision(
        &js,
        &settings,
        allo_common::jetstream::Provision::StreamsAndConsumers,
    )
    .await?;

    let metrics = allo_common::telemetry::metrics();
    if let Some(addr) = settings.worker.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || async move { metrics.render() }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    tokio::spawn(backlog::run(
        js.clone(),
        allo_common::subjects::Subjects::of(&settings),
        std::time::Duration::from_millis(settings.worker.backlog_interval_ms.max(100)),
        shutdown.clone(),
    ));
    let worker = Worker::new(settings.clone(), db.clone(), nats.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for pool in pools.iter().copied() {
        let worker = worker.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move { worker.run_pool(pool, shutdown).await });
    }
    if pools.contains(&Pool::Scheduler) {
        let scheduler = scheduler::Scheduler::new(worker.clone());
        let shutdown = shutdown.clone();
        tasks.spawn(async move { scheduler.run(shutdown).await });
    }
    {
        let relay = relay::Relay::new(settings.clone(), db, nats);
        let shutdown = shutdown.clone();
        tasks.spawn(async move { relay.run(shutdown).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("worker task panicked")??;
    }
    worker.flush_published().await;
    Ok(())
}
