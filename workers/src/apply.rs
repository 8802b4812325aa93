//! Applying commands to Postgres: a batch in one transaction, runs of sends as a set
//! ([`crate::send_batch`]), every other command on its own savepoint so that one refused or
//! failing command does not sink the others.

use allo_common::command::{CommandEnvelope, CommandOutcome, CommandStatus, load_outcome};
use allo_common::error::DomainError;
use allo_common::event::{EventEnvelope, UserNotice};
use allo_common::ids::EventId;
use allo_common::ops::Operation;

use crate::error::{ApplyError, is_transient};
use crate::pool::Worker;
use crate::send_batch::{self, as_send};
use crate::unit::Unit;

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

/// An event now on the stream, with the stream sequence it was stored at (erasure deletes the
/// stream's copy by it).
pub type PublishedMark = (EventId, u64);

/// One result per command of a batch; `Err` for a command that failed on its own.
pub type BatchResults = Vec<Result<Applied, sqlx::Error>>;

impl Worker {
    /// Applies one command in its own transaction (tests use it to commit without acking).
    pub async fn apply(&self, envelope: &CommandEnvelope) -> Result<Applied, sqlx::Error> {
        let mut results = self.apply_batch(&[envelope], &[]).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(sqlx::Error::Protocol("empty batch".into())))
    }

    /// Applies commands in one transaction, in the order given, and marks `published` (events
    /// of earlier batches now on the stream) in the same transaction, which saves a commit of
    /// their own. A batch of sends only is one statement, its own transaction, with no BEGIN
    /// and COMMIT to wait for ([`send_batch`]). `Err` means the batch is to be retried or split
    /// (connection trouble, deadlock, or a run of sends that failed as a whole): nothing was
    /// committed, or, for an error after a batch of sends' statement (reading back an earlier
    /// delivery's outcome), all of it, which a retry finds applied before.
    pub async fn apply_batch(
        &self,
        envelopes: &[&CommandEnvelope],
        published: &[PublishedMark],
    ) -> Result<BatchResults, sqlx::Error> {
        if !envelopes.is_empty() && envelopes.iter().all(|e| as_send(&e.command).is_some()) {
            let mut db = self.db().acquire().await?;
            return send_batch::apply_alone(&mut db, envelopes, published).await;
        }
        let mut tx = self.db().begin().await?;
        let starts_with_send = envelopes
            .first()
            .is_some_and(|e| as_send(&e.command).is_some());
        let mut marks = published;
        if !marks.is_empty() && !starts_with_send {
            mark_published(&mut *tx, marks).await?;
            marks = &[];
        }
        let mut results = Vec::with_capacity(envelopes.len());
        let mut rest = envelopes;
        while let Some(first) = rest.first() {
            let sends = rest
                .iter()
                .take_while(|e| as_send(&e.command).is_some())
                .count();
            if sends > 0 {
                // The first run marks the published events in its own statement.
                results.extend(send_batch::apply(&mut tx, &rest[..sends], marks).await?);
                marks = &[];
                rest = &rest[sends..];
                continue;
            }
            results.push(self.apply_one(&mut tx, first).await?);
            rest = &rest[1..];
        }
        tx.commit().await?;
        Ok(results)
    }

    /// One command on its own savepoint. The outer `Err` is transient (retry the batch); the
    /// inner one is this command's own failure, already rolled back.
    async fn apply_one(
        &self,
        tx: &mut sqlx::PgConnection,
        envelope: &CommandEnvelope,
    ) -> Result<Result<Applied, sqlx::Error>, sqlx::Error> {
        sqlx::query("SAVEPOINT command").execute(&mut *tx).await?;
        match self.apply_in(tx, envelope).await {
            Ok(applied) => {
                sqlx::query("RELEASE SAVEPOINT command")
                    .execute(&mut *tx)
                    .await?;
                Ok(Ok(applied))
            }
            Err(e) if is_transient(&e) => Err(e),
            Err(e) => {
                sqlx::query("ROLLBACK TO SAVEPOINT command")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("RELEASE SAVEPOINT command")
                    .execute(&mut *tx)
                    .await?;
                Ok(Err(e))
            }
        }
    }

    /// One command inside the batch's transaction: its `commands` row (the exactly-once key),
    /// its change and its events; or, if the handler refuses, only the rejection.
    async fn apply_in(
        &self,
        tx: &mut sqlx::PgConnection,
        envelope: &CommandEnvelope,
    ) -> Result<Applied, sqlx::Error> {
        let op = envelope.command.operation().as_str();
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
            // Same transaction: no second connection while the batch holds one.
            let outcome = load_outcome(&mut *tx, envelope.command_id).await?;
            return Ok(Applied::Duplicate {
                outcome: outcome
                    .map(|(_, outcome)| outcome)
                    .unwrap_or_else(|| outcome_of(envelope, CommandStatus::Committed, None, None)),
            });
        }
        sqlx::query("SAVEPOINT apply").execute(&mut *tx).await?;
        let mut unit = Unit::new(&mut *tx, envelope, &self.settings().limits);
        let result = crate::apply(&mut unit, &envelope.command).await;
        let events = std::mem::take(&mut unit.events);
        let notices = std::mem::take(&mut unit.moderator_notices);
        match result {
            Ok(result) => {
                // A send's result is its message, read back from it (`load_outcome`).
                if !Operation::SENDS.contains(&envelope.command.operation()) {
                    sqlx::query("UPDATE commands SET result = $2 WHERE id = $1")
                        .bind(envelope.command_id)
                        .bind(&result)
                        .execute(&mut *tx)
                        .await?;
                }
                let outcome = outcome_of(envelope, CommandStatus::Committed, None, Some(result));
                Ok(Applied::Committed {
                    events,
                    notices,
                    outcome,
                })
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
                Ok(Applied::Rejected {
                    outcome: outcome_of(envelope, CommandStatus::Rejected, Some(reason), None),
                })
            }
            Err(ApplyError::Db(e)) => Err(e),
        }
    }
}

/// The outcome clients read back for a command.
pub fn outcome_of(
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
        replay_of: None,
        replayed_as: None,
    }
}

/// The published mark of the events bound as `$1` (ids) and `$2` (stream sequences), as CTEs
/// to put in front of a statement (`concat!`, so the SQL stays a literal): each event still in
/// the outbox leaves it, and where the stream holds it is recorded for erasure. An event marked
/// before (the relay and its lane both published it) keeps its first record. The event's own
/// row is not touched.
macro_rules! mark_published_ctes {
    () => {
        "WITH gone AS (DELETE FROM event_outbox o USING unnest($1::uuid[], $2::bigint[]) AS m(id, seq)
                       WHERE o.event_id = m.id RETURNING m.id, m.seq),
              recorded AS (INSERT INTO event_stream_seqs (event_id, stream_seq)
                           SELECT id, seq FROM gone ON CONFLICT (event_id) DO NOTHING)"
    };
}
pub(crate) use mark_published_ctes;

/// Records that these events are on the event stream (and where), so the relay leaves them
/// alone and erasure can delete them.
pub async fn mark_published(
    db: impl sqlx::PgExecutor<'_>,
    events: &[PublishedMark],
) -> Result<(), sqlx::Error> {
    let (ids, seqs) = split_marks(events);
    sqlx::query(concat!(mark_published_ctes!(), " SELECT 1"))
        .bind(ids)
        .bind(seqs)
        .execute(db)
        .await?;
    Ok(())
}

/// Marks as the two arrays the mark statements bind.
pub fn split_marks(marks: &[PublishedMark]) -> (Vec<EventId>, Vec<i64>) {
    marks
        .iter()
        .map(|(id, seq)| (*id, i64::try_from(*seq).unwrap_or(i64::MAX)))
        .unzip()
}
