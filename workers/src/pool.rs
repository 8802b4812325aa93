//! The pull loop a pool's processes share.
//!
//! Per batch (whatever has arrived, up to `batch_size`): decode → (dead-letter what has used up
//! its deliveries) → apply all in one transaction, a savepoint each → publish events → publish
//! outcomes → ack each. Acking after the publish is
//! safe either way: an unpublished committed event is the relay's job, and a redelivered
//! command finds its `commands` row and has no second effect.

use std::sync::Arc;
use std::time::Duration;

use allo_common::Settings;
use allo_common::command::{CommandEnvelope, CommandOutcome, CommandStatus, load_outcome};
use allo_common::error::DomainError;
use allo_common::event::{EventEnvelope, UserNotice};
use allo_common::ids::{CommandId, EventId};
use allo_common::ops::Pool;
use allo_common::subjects::Subjects;
use anyhow::Context;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

use crate::error::{ApplyError, is_transient};
use crate::publish::Publisher;
use crate::unit::Unit;

/// Longest pause between retries while Postgres is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What applying a command did.
#[derive(Debug)]
pub enum Applied {
    /// Committed now, with these events (and moderator notices) to publish.
    Committed {
        events: Vec<EventEnvelope>,
        notices: Vec<UserNotice>,
        outcome: CommandOutcome,
    },
    /// Refused now; the reason is recorded on the command.
    Rejected { outcome: CommandOutcome },
    /// Applied by an earlier delivery; nothing was done this time.
    Duplicate { outcome: CommandOutcome },
}

impl Applied {
    pub fn outcome(&self) -> &CommandOutcome {
        match self {
            Self::Committed { outcome, .. }
            | Self::Rejected { outcome }
            | Self::Duplicate { outcome } => outcome,
        }
    }
}

/// Shared by every pool task of a process. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Arc<Settings>,
    db: PgPool,
    nats: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    publisher: Publisher,
    /// Ids of events on the stream, marked `published_at` in batches by a background task.
    published: mpsc::Sender<EventId>,
}

impl Worker {
    pub fn new(settings: Arc<Settings>, db: PgPool, nats: async_nats::Client) -> Self {
        let js = jetstream::new(nats.clone());
        let subjects = Subjects::new(&settings.subject_prefix);
        let publisher = Publisher::new(js.clone(), subjects.clone());
        // Bounded: if marking falls behind, publishing waits rather than memory growing.
        let (published, marks) = mpsc::channel(10_000);
        tokio::spawn(mark_published(db.clone(), marks));
        Self {
            inner: Arc::new(Inner {
                settings,
                db,
                nats,
                js,
                subjects,
                publisher,
                published,
            }),
        }
    }

    /// Gives the marker task a moment to write the last batch before the process exits.
    pub async fn flush_published(&self) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Pulls and handles the pool's commands until `shutdown`.
    pub async fn run_pool(
        &self,
        pool: Pool,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let me = &self.inner;
        let consumer: jetstream::consumer::PullConsumer = me
            .js
            .get_stream(me.subjects.command_stream())
            .await
            .context("command stream")?
            .get_consumer(&me.subjects.pool_consumer(pool))
            .await
            .map_err(|e| anyhow::anyhow!("pool consumer: {e}"))?;
        tracing::info!(pool = pool.as_str(), "pool started");
        while !*shutdown.borrow() {
            let messages = match consumer
                .stream()
                .max_messages_per_batch(me.settings.worker.batch_size)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
            {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, pool = pool.as_str(), "pull failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut stop = shutdown.clone();
            messages
                .take_until(async move { stop.wait_for(|s| *s).await.map(|_| ()).unwrap_or(()) })
                .filter_map(|msg| async move {
                    msg.inspect_err(|e| tracing::warn!(error = %e, "pull stream error"))
                        .ok()
                })
                // Whatever has arrived, up to a batch: one transaction under load, one command
                // at a time when idle.
                .ready_chunks(me.settings.worker.batch_size)
                .map(|batch| {
                    let stopping = *shutdown.borrow();
                    async move {
                        if stopping {
                            for msg in &batch {
                                hand_back(msg).await;
                            }
                        } else {
                            self.handle_batch(batch).await;
                        }
                    }
                })
                .buffer_unordered(me.settings.worker.concurrency)
                .for_each(|()| async {})
                .await;
        }
        tracing::info!(pool = pool.as_str(), "pool stopped");
        Ok(())
    }

    /// Applies a batch of deliveries in one transaction (a savepoint per command, so one
    /// refused or failing command does not sink the others), in conversation order so that
    /// concurrent batches take conversation locks in the same order, then announces and acks
    /// each. Postgres unreachable: keep every command (progress acks) and retry the batch.
    async fn handle_batch(&self, batch: Vec<jetstream::Message>) {
        let me = &self.inner;
        let mut work = Vec::with_capacity(batch.len());
        for msg in batch {
            let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
            let envelope: CommandEnvelope = match serde_json::from_slice(&msg.payload) {
                Ok(e) => e,
                Err(e) => {
                    self.dead_letter(&msg, None, delivered, &format!("undecodable command: {e}"))
                        .await;
                    continue;
                }
            };
            if delivered > me.settings.jetstream.max_deliver {
                let why = format!("failed on {} deliveries", delivered - 1);
                self.dead_letter(&msg, Some(&envelope), delivered, &why)
                    .await;
                continue;
            }
            work.push((msg, envelope, delivered));
        }
        if work.is_empty() {
            return;
        }
        work.sort_by_key(|(_, envelope, _)| envelope.command.conversation_id());
        let envelopes: Vec<&CommandEnvelope> = work.iter().map(|(_, e, _)| e).collect();
        let mut backoff = Duration::from_millis(100);
        let started = std::time::Instant::now();
        let results = loop {
            match self.apply_batch(&envelopes).await {
                Ok(results) => break results,
                Err(e) if !is_transient(&e) && envelopes.len() > 1 => {
                    // Not the database being away: settle the commands one by one, so one
                    // bad command cannot hold the batch in an endless retry.
                    tracing::warn!(error = %e, commands = work.len(), "batch failed; applying one by one");
                    let mut results = Vec::with_capacity(envelopes.len());
                    for envelope in &envelopes {
                        results.push(self.apply(envelope).await);
                    }
                    break results;
                }
                Err(e) if !is_transient(&e) => break vec![Err(e)],
                Err(e) => {
                    // Postgres is away (or a deadlock): keep the commands, no delivery used up.
                    tracing::warn!(error = %e, commands = work.len(), "batch not applied; retrying");
                    for (msg, _, _) in &work {
                        let _ = msg.ack_with(AckKind::Progress).await;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        let elapsed = started.elapsed().as_secs_f64();
        for ((msg, envelope, delivered), result) in work.iter().zip(results) {
            let op = envelope.command.operation().as_str();
            let applied = match result {
                Ok(applied) => applied,
                Err(e) => {
                    tracing::error!(error = %e, command_id = %envelope.command_id, delivered, "command failed; will be redelivered");
                    let delay = Duration::from_secs(1 << (*delivered).clamp(0, 5));
                    let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                    continue;
                }
            };
            let outcome = match &applied {
                Applied::Committed { .. } => "committed",
                Applied::Rejected { .. } => "rejected",
                Applied::Duplicate { .. } => "duplicate",
            };
            metrics::counter!("allo_commands_applied_total", "operation" => op, "outcome" => outcome)
                .increment(1);
            metrics::histogram!("allo_command_apply_seconds", "operation" => op).record(elapsed);
            self.announce(envelope, &applied).await;
            if let Err(e) = msg.ack().await {
                tracing::warn!(error = %e, command_id = %envelope.command_id, "ack failed; redelivery will be a no-op");
            }
        }
    }

    /// Publishes what the command produced: events (the relay retries if this fails), the
    /// outcome for `Prefer: wait`, and an `error` notice to the actor on rejection.
    async fn announce(&self, envelope: &CommandEnvelope, applied: &Applied) {
        let me = &self.inner;
        if let Applied::Committed {
            events, notices, ..
        } = applied
        {
            self.publish_events(events).await;
            for (i, notice) in notices.iter().enumerate() {
                let id = format!("mod:{}:{i}", envelope.command_id);
                if let Err(e) = me.publisher.moderators(notice, id).await {
                    tracing::warn!(error = %e, "moderator notice not published");
                }
            }
        }
        let outcome = applied.outcome();
        let payload = serde_json::to_vec(outcome).unwrap_or_default();
        let _ = me
            .nats
            .publish(
                me.subjects.command_outcome(envelope.command_id),
                payload.into(),
            )
            .await;
        if let Applied::Rejected { outcome } = applied {
            let notice = UserNotice {
                kind: "error".into(),
                data: serde_json::json!({
                    "commandId": outcome.command_id,
                    "operation": outcome.operation,
                    "code": outcome.code,
                    "message": outcome.message,
                }),
            };
            let id = format!("error:{}", envelope.command_id);
            if let Err(e) = me.publisher.notice(&envelope.actor, &notice, id).await {
                tracing::warn!(error = %e, "error notice not published");
            }
        }
    }

    /// Publishes committed events and queues their `published_at` marks; on failure the relay
    /// publishes them later.
    pub async fn publish_events(&self, events: &[EventEnvelope]) {
        let me = &self.inner;
        match me.publisher.events(events).await {
            Ok(()) => {
                for e in events {
                    let _ = me.published.send(e.event_id).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "event publish failed; the relay will retry"),
        }
    }

    /// Publishes a notice to one user's sockets (best effort: logged if it fails).
    pub async fn notify(&self, user: &allo_common::ids::UserId, notice: &UserNotice, id: String) {
        if let Err(e) = self.inner.publisher.notice(user, notice, id).await {
            tracing::warn!(error = %e, "notice not published");
        }
    }

    pub fn db(&self) -> &PgPool {
        &self.inner.db
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Applies one command in its own transaction (tests use it to commit without acking).
    pub async fn apply(&self, envelope: &CommandEnvelope) -> Result<Applied, sqlx::Error> {
        let mut results = self.apply_batch(&[envelope]).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(sqlx::Error::Protocol("empty batch".into())))
    }

    /// Applies commands in one transaction. `Err` means nothing was committed and the whole
    /// batch should be retried (connection trouble, deadlock); a command that fails on its own
    /// is rolled back to its savepoint and reported in its slot.
    pub async fn apply_batch(
        &self,
        envelopes: &[&CommandEnvelope],
    ) -> Result<Vec<Result<Applied, sqlx::Error>>, sqlx::Error> {
        let mut tx = self.inner.db.begin().await?;
        let mut results = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            match self.apply_in(&mut tx, envelope).await {
                Ok(applied) => results.push(Ok(applied)),
                Err(e) if is_transient(&e) => return Err(e),
                Err(e) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT command")
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("RELEASE SAVEPOINT command")
                        .execute(&mut *tx)
                        .await?;
                    results.push(Err(e));
                }
            }
        }
        tx.commit().await?;
        Ok(results)
    }

    /// One command inside the batch's transaction: its `commands` row (the exactly-once key),
    /// its change and its events; or, if the handler refuses, only the rejection.
    async fn apply_in(
        &self,
        tx: &mut sqlx::PgConnection,
        envelope: &CommandEnvelope,
    ) -> Result<Applied, sqlx::Error> {
        let me = &self.inner;
        let op = envelope.command.operation().as_str();
        sqlx::query("SAVEPOINT command").execute(&mut *tx).await?;
        let fresh = sqlx::query(
            "INSERT INTO commands (id, actor_id, operation, status, accepted_at) VALUES ($1, $2, $3, 'committed', $4)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(envelope.command_id)
        .bind(envelope.actor.as_str())
        .bind(op)
        .bind(envelope.at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            sqlx::query("RELEASE SAVEPOINT command")
                .execute(&mut *tx)
                .await?;
            // Same transaction: no second connection while the batch holds one.
            let outcome = load_outcome(&mut *tx, envelope.command_id).await?;
            return Ok(Applied::Duplicate {
                outcome: outcome
                    .map(|(_, outcome)| outcome)
                    .unwrap_or_else(|| outcome_of(envelope, CommandStatus::Committed, None, None)),
            });
        }
        sqlx::query("SAVEPOINT apply").execute(&mut *tx).await?;
        let mut unit = Unit::new(&mut *tx, envelope, &me.settings.limits);
        let result = crate::apply(&mut unit, &envelope.command).await;
        let events = std::mem::take(&mut unit.events);
        let notices = std::mem::take(&mut unit.moderator_notices);
        let applied = match result {
            Ok(result) => {
                sqlx::query("UPDATE commands SET result = $2 WHERE id = $1")
                    .bind(envelope.command_id)
                    .bind(&result)
                    .execute(&mut *tx)
                    .await?;
                let outcome = outcome_of(envelope, CommandStatus::Committed, None, Some(result));
                Applied::Committed {
                    events,
                    notices,
                    outcome,
                }
            }
            Err(ApplyError::Rejected(reason)) => {
                sqlx::query("ROLLBACK TO SAVEPOINT apply")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE commands SET status = 'rejected', error_code = $2, error_message = $3 WHERE id = $1")
                    .bind(envelope.command_id)
                    .bind(reason.code.as_str())
                    .bind(&reason.message)
                    .execute(&mut *tx)
                    .await?;
                Applied::Rejected {
                    outcome: outcome_of(envelope, CommandStatus::Rejected, Some(reason), None),
                }
            }
            Err(ApplyError::Db(e)) => return Err(e),
        };
        sqlx::query("RELEASE SAVEPOINT command")
            .execute(&mut *tx)
            .await?;
        Ok(applied)
    }

    /// Sets a command aside after its last delivery (or at once if it cannot be decoded),
    /// marks it rejected so its sender can read why, and removes it from the stream.
    async fn dead_letter(
        &self,
        msg: &jetstream::Message,
        envelope: Option<&CommandEnvelope>,
        delivered: i64,
        why: &str,
    ) {
        let me = &self.inner;
        let command_id = envelope
            .map(|e| e.command_id)
            .or_else(|| {
                msg.subject
                    .rsplit('.')
                    .next()
                    .and_then(|t| CommandId::parse(t).ok())
            })
            .unwrap_or_else(CommandId::generate);
        tracing::error!(%command_id, delivered, why, "dead-lettering command");
        metrics::counter!("allo_dead_letters_total").increment(1);
        let result = async {
            let mut tx = me.db.begin().await?;
            sqlx::query(
                "INSERT INTO dead_letters (command_id, subject, payload, deliveries, error) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (command_id) DO NOTHING",
            )
            .bind(command_id)
            .bind(msg.subject.as_str())
            .bind(msg.payload.as_ref())
            .bind(delivered)
            .bind(why)
            .execute(&mut *tx)
            .await?;
            if let Some(env) = envelope {
                sqlx::query(
                    "INSERT INTO commands (id, actor_id, operation, status, error_code, error_message, accepted_at)
                     VALUES ($1, $2, $3, 'rejected', 'dead_lettered', $4, $5) ON CONFLICT (id) DO NOTHING",
                )
                .bind(command_id)
                .bind(env.actor.as_str())
                .bind(env.command.operation().as_str())
                .bind(why)
                .bind(env.at)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => {
                let _ = msg.ack_with(AckKind::Term).await;
            }
            // Keep the command; a later delivery tries to dead-letter it again.
            Err(e) => tracing::error!(error = %e, "could not dead-letter command"),
        }
    }
}

/// Hands a command back to the stream at shutdown so another process takes it at once.
async fn hand_back(msg: &jetstream::Message) {
    let _ = msg.ack_with(AckKind::Nak(None)).await;
}

fn outcome_of(
    envelope: &CommandEnvelope,
    status: CommandStatus,
    reason: Option<DomainError>,
    result: Option<serde_json::Value>,
) -> CommandOutcome {
    CommandOutcome {
        command_id: envelope.command_id,
        operation: envelope.command.operation().as_str().to_string(),
        status,
        code: reason.as_ref().map(|r| r.code),
        message: reason.map(|r| r.message),
        result,
    }
}

/// Marks published events in batches: one UPDATE per batch instead of one per event. A mark
/// lost in a crash only means the relay republishes, and NATS drops the duplicate.
async fn mark_published(db: PgPool, mut marks: mpsc::Receiver<EventId>) {
    let mut batch = Vec::with_capacity(512);
    while marks.recv_many(&mut batch, 512).await > 0 {
        if let Err(e) = sqlx::query(
            "UPDATE events SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL",
        )
        .bind(&batch)
        .execute(&db)
        .await
        {
            tracing::warn!(error = %e, "could not mark events published; the relay will republish them");
        }
        batch.clear();
    }
}
