//! Operators' handling of dead letters (`allo-workers dead-letters ...`, and `/admin/dead-letters`
//! on the API's admin listener with a role `admin` token): list, show, replay through the
//! normal path, discard.
//!
//! Replay applies the command once: it removes the `dead_lettered` rejection (committed first,
//! so the worker applies the command instead of answering "applied before"), publishes the
//! stored command under a fresh `Nats-Msg-Id` (the original id may still sit in the stream's
//! duplicate window), then deletes the dead letter; a later replay finds nothing. If the
//! publish fails the dead letter stays, to be replayed again. The command keeps its id (its
//! sender reads the new outcome under it); DESIGN.md asks for a new id linked to the old one,
//! which is not built.

use async_nats::jetstream::{self, message::PublishMessage};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// The token role that may handle dead letters over the API (they hold users' commands).
pub const ADMIN_ROLE: &str = "admin";

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no dead letter {0} (never dead-lettered, or already replayed or discarded)")]
    NotFound(Uuid),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("publishing the command: {0}")]
    Publish(String),
}

type Row = (
    Uuid,
    String,
    Vec<u8>,
    i64,
    String,
    chrono::DateTime<chrono::Utc>,
);

fn summary((id, subject, payload, deliveries, error, at): &Row, with_command: bool) -> Value {
    let mut v = json!({
        "commandId": id,
        // `<prefix>.cmd.<pool>.<partition>.<operation>.<id>`
        "operation": subject.split('.').nth(4),
        "subject": subject,
        "deliveries": deliveries,
        "error": error,
        "at": at,
    });
    if with_command {
        v["command"] = serde_json::from_slice(payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()));
    }
    v
}

const COLUMNS: &str = "command_id, subject, payload, deliveries::bigint, error, at";

/// The latest `limit` dead letters, newest first, without their command bodies.
pub async fn list(db: &PgPool, limit: i64) -> Result<Vec<Value>, DeadLetterError> {
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM dead_letters ORDER BY at DESC LIMIT $1"
    )))
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(|r| summary(r, false)).collect())
}

/// One dead letter with its command.
pub async fn show(db: &PgPool, id: Uuid) -> Result<Value, DeadLetterError> {
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE command_id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await?;
    row.map(|r| summary(&r, true))
        .ok_or(DeadLetterError::NotFound(id))
}

/// Sends the command back through its pool once (see the module docs).
pub async fn replay(
    db: &PgPool,
    js: &jetstream::Context,
    id: Uuid,
) -> Result<Value, DeadLetterError> {
    // 1. The rejection goes first, committed, so a worker that takes the republished command
    //    never reads "applied before" from a row we are still deleting.
    let mut tx = db.begin().await?;
    let row: Option<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT subject, payload FROM dead_letters WHERE command_id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let (subject, payload) = row.ok_or(DeadLetterError::NotFound(id))?;
    sqlx::query("DELETE FROM commands WHERE id = $1 AND status = 'rejected' AND error_code = 'dead_lettered'")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    // 2. Publish; 3. forget the dead letter. A crash between them leaves the dead letter, and
    //    replaying it again is harmless: the command id is a key in `commands`, so the worker
    //    applies it once however many copies it gets.
    let message = PublishMessage::build()
        .message_id(format!("{id}.replay.{}", Uuid::now_v7()))
        .payload(payload.into());
    js.send_publish(subject.clone(), message)
        .await
        .map_err(|e| DeadLetterError::Publish(e.to_string()))?
        .await
        .map_err(|e| DeadLetterError::Publish(e.to_string()))?;
    sqlx::query("DELETE FROM dead_letters WHERE command_id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(json!({"commandId": id, "subject": subject, "status": "replayed"}))
}

/// Forgets a dead letter; its sender still reads the command as rejected (`dead_lettered`).
pub async fn discard(db: &PgPool, id: Uuid) -> Result<Value, DeadLetterError> {
    let gone = sqlx::query("DELETE FROM dead_letters WHERE command_id = $1")
        .bind(id)
        .execute(db)
        .await?
        .rows_affected();
    if gone == 0 {
        return Err(DeadLetterError::NotFound(id));
    }
    Ok(json!({"commandId": id, "status": "discarded"}))
}
