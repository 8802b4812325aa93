//! Operators' handling of dead letters (`allo-workers dead-letters ...`, and `/admin/dead-letters`
//! on the API's admin listener with a role `admin` token): list, show, replay through the
//! normal path, discard.
//!
//! A dead letter holds the command as it was published, the last error a worker recorded for
//! it (`command_failures`, handed over when it was dead-lettered: our own errors' Display, no
//! message bodies), how many deliveries it had, when it first failed and when it was set aside.
//! Its sender reads the command as rejected (`dead_lettered`, "failed on N deliveries"): the
//! internal error is for operators only.
//!
//! Replay publishes the stored command again under a new command id (DESIGN.md), linked to the
//! old one in `command_replays`: the old command stays rejected and its status read shows
//! `replayedAs`, the new one's shows `replayOf`. Order of a replay: the link is written and
//! committed (one row per old id, so a replay retried after a crash reuses the new id), the
//! command is published through ingress's own path (subject from [`Subjects::command`],
//! `Nats-Msg-Id` = the new id), then the dead letter is deleted. The command is applied once
//! however often this runs or a worker redelivers it: the new id is a key in `commands`. A
//! replay of a command already replayed publishes nothing and answers with the same new id
//! (`"status": "alreadyReplayed"`); one never dead-lettered, or discarded, is not found.

use async_nats::jetstream;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::command::CommandEnvelope;
use crate::ids::CommandId;
use crate::subjects::Subjects;

/// The token role that may handle dead letters over the API (they hold users' commands).
pub const ADMIN_ROLE: &str = "admin";

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no dead letter {0} (never dead-lettered, or discarded)")]
    NotFound(Uuid),
    /// The stored payload is not a command (undecodable, or erased with a message it named).
    #[error("dead letter {0} cannot be replayed: {1}")]
    NotReplayable(Uuid, String),
    /// The command was applied after all (its last delivery committed, the ack was lost).
    #[error("command {0} was applied; discard its dead letter instead")]
    AlreadyApplied(Uuid),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("publishing the command: {0}")]
    Publish(String),
}

/// A dead letter as read: command id, subject, payload, deliveries, error, dead-lettered at,
/// first failed at, the operation its command row names, the command it replays.
type Row = (
    Uuid,
    String,
    Vec<u8>,
    i64,
    String,
    chrono::DateTime<chrono::Utc>,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<String>,
    Option<Uuid>,
);

const COLUMNS: &str = "d.command_id, d.subject, d.payload, d.deliveries::bigint, d.error, d.at,
    d.first_failed_at, c.operation, r.old_id
    FROM dead_letters d
    LEFT JOIN commands c ON c.id = d.command_id
    LEFT JOIN command_replays r ON r.new_id = d.command_id";

fn summary(row: &Row, with_command: bool) -> Value {
    let (id, subject, payload, deliveries, error, at, first_failed, row_op, replay_of) = row;
    let command: Option<Value> = serde_json::from_slice(payload).ok();
    // The operation is the envelope's, never a subject token (the subject's layout may change);
    // an erased payload has none left, and the command row still names it.
    let operation = command
        .as_ref()
        .and_then(|c| c["command"]["op"].as_str().map(str::to_string))
        .or_else(|| row_op.clone());
    let mut v = json!({
        "commandId": id,
        "operation": operation,
        "subject": subject,
        "deliveries": deliveries,
        "error": error,
        "firstFailedAt": first_failed,
        "at": at,
    });
    if let Some(old) = replay_of {
        v["replayOf"] = json!(old);
    }
    if with_command {
        v["command"] =
            command.unwrap_or_else(|| Value::String(String::from_utf8_lossy(payload).into_owned()));
    }
    v
}

/// The latest `limit` dead letters, newest first, without their command bodies.
pub async fn list(db: &PgPool, limit: i64) -> Result<Vec<Value>, DeadLetterError> {
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} ORDER BY d.at DESC LIMIT $1"
    )))
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(|r| summary(r, false)).collect())
}

/// One dead letter with its command.
pub async fn show(db: &PgPool, id: Uuid) -> Result<Value, DeadLetterError> {
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} WHERE d.command_id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await?;
    row.map(|r| summary(&r, true))
        .ok_or(DeadLetterError::NotFound(id))
}

/// Sends the command back through its pool once, under a new id (see the module docs).
pub async fn replay(
    db: &PgPool,
    js: &jetstream::Context,
    subjects: &Subjects,
    id: Uuid,
) -> Result<Value, DeadLetterError> {
    let mut tx = db.begin().await?;
    let payload: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT payload FROM dead_letters WHERE command_id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(payload) = payload else {
        let replayed: Option<Uuid> =
            sqlx::query_scalar("SELECT new_id FROM command_replays WHERE old_id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        return match replayed {
            Some(new_id) => Ok(replayed_json(id, new_id, "alreadyReplayed")),
            None => Err(DeadLetterError::NotFound(id)),
        };
    };
    let mut envelope: CommandEnvelope = serde_json::from_slice(&payload).map_err(|e| {
        // serde's message may quote the payload; say only where it broke.
        let why = format!(
            "not a command ({:?} error at column {})",
            e.classify(),
            e.column()
        );
        DeadLetterError::NotReplayable(id, why)
    })?;
    let applied: Option<String> = sqlx::query_scalar("SELECT status FROM commands WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    if applied.as_deref() == Some("committed") {
        return Err(DeadLetterError::AlreadyApplied(id));
    }
    // A replay retried after a crash (or run twice at once: the row lock above serializes
    // them) gets the id the first one chose.
    let new_id: Uuid = sqlx::query_scalar(
        "INSERT INTO command_replays (old_id, new_id) VALUES ($1, $2)
         ON CONFLICT (old_id) DO UPDATE SET old_id = EXCLUDED.old_id
         RETURNING new_id",
    )
    .bind(id)
    .bind(CommandId::generate().0)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;

    envelope.command_id = CommandId(new_id);
    // Nobody waits on the replay's outcome; its sender reads it under either id.
    envelope.reply_outcome = false;
    publish(js, subjects, &envelope).await?;
    sqlx::query("DELETE FROM dead_letters WHERE command_id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(replayed_json(id, new_id, "replayed"))
}

/// The one place a replay is published: ingress's path, so the subject (and whatever it
/// derives from the command) is built exactly as for a command a client sent.
async fn publish(
    js: &jetstream::Context,
    subjects: &Subjects,
    envelope: &CommandEnvelope,
) -> Result<(), DeadLetterError> {
    crate::ingress::publish(js, subjects, envelope)
        .await
        .map_err(DeadLetterError::Publish)
}

fn replayed_json(old: Uuid, new: Uuid, status: &str) -> Value {
    json!({"commandId": old, "replayedAs": new, "status": status})
}

/// Forgets a dead letter; its sender still reads the command as rejected (`dead_lettered`).
pub async fn discard(db: &PgPool, id: Uuid) -> Result<Value, DeadLetterError> {
    let mut tx = db.begin().await?;
    let gone = sqlx::query("DELETE FROM dead_letters WHERE command_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if gone == 0 {
        return Err(DeadLetterError::NotFound(id));
    }
    // Normally gone already (the dead letter took it over); a worker that could not record the
    // hand-over leaves nothing behind either.
    sqlx::query("DELETE FROM command_failures WHERE command_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(json!({"commandId": id, "status": "discarded"}))
}
