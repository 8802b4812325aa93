//! What operators read about a failing command: its last error is kept between deliveries
//! (`command_failures`), handed over to its dead letter when it runs out of deliveries, and
//! forgotten when it finally commits.
//!
//! Privacy: the recorded text is the Display of our own errors, shaped by [`failure_text`],
//! never a command's body. Postgres' messages name relations, columns and constraints, not row
//! values (those are in the error's DETAIL, which sqlx's Display leaves out); decode errors are
//! cut to where they happened, because serde's messages quote the offending value.

use allo_common::command::CommandEnvelope;
use allo_common::ids::CommandId;
use async_nats::jetstream::{self, AckKind};

use crate::pool::Worker;

/// Longest error text kept (a Postgres message is a line; this bounds a pathological one).
const MAX_ERROR_CHARS: usize = 1000;

/// The text recorded for a failed delivery: no user content (see the module docs).
pub fn failure_text(err: &sqlx::Error) -> String {
    let text = match err {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{err} (SQLSTATE {code})"),
            None => err.to_string(),
        },
        sqlx::Error::ColumnDecode { index, .. } => format!("could not decode column {index}"),
        sqlx::Error::Decode(_) => "could not decode a value read from Postgres".into(),
        _ => err.to_string(),
    };
    text.chars().take(MAX_ERROR_CHARS).collect()
}

/// Why a payload could not be decoded, without the payload: serde's messages quote the value
/// they choked on, which may be a user's text.
pub fn decode_error_text(err: &serde_json::Error) -> String {
    format!(
        "undecodable command: {:?} error at line {} column {}",
        err.classify(),
        err.line(),
        err.column()
    )
}

impl Worker {
    /// Records why these commands failed (before they are nak'ed, so the delivery that
    /// dead-letters one finds its error). Best effort: without it the dead letter only says
    /// how many deliveries failed.
    pub(crate) async fn record_failures(&self, failed: &[(CommandId, String, i64)]) {
        if failed.is_empty() {
            return;
        }
        let ids: Vec<uuid::Uuid> = failed.iter().map(|(id, _, _)| id.0).collect();
        let errors: Vec<&str> = failed.iter().map(|(_, e, _)| e.as_str()).collect();
        let deliveries: Vec<i64> = failed.iter().map(|(_, _, d)| *d).collect();
        let recorded = sqlx::query(
            "INSERT INTO command_failures (command_id, error, deliveries)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[])
             ON CONFLICT (command_id) DO UPDATE
             SET error = EXCLUDED.error, deliveries = EXCLUDED.deliveries, last_failed_at = now()",
        )
        .bind(&ids)
        .bind(&errors)
        .bind(&deliveries)
        .execute(self.db())
        .await;
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "could not record why commands failed");
        }
    }

    /// Forgets the failures of commands that have now been applied (committed, rejected or
    /// found applied before). Only a redelivered command can have one, so first deliveries
    /// cost nothing here.
    pub(crate) async fn clear_failures(&self, applied: &[CommandId]) {
        if applied.is_empty() {
            return;
        }
        let ids: Vec<uuid::Uuid> = applied.iter().map(|id| id.0).collect();
        let cleared = sqlx::query("DELETE FROM command_failures WHERE command_id = ANY($1)")
            .bind(&ids)
            .execute(self.db())
            .await;
        if let Err(e) = cleared {
            tracing::warn!(error = %e, "could not clear recorded command failures");
        }
    }

    /// Sets a command aside after its last delivery (or at once if it cannot be decoded) with
    /// its last recorded error, marks it rejected so its sender can read that it was (the
    /// sender reads `why`, not the internal error), and removes it from the stream.
    pub(crate) async fn dead_letter(
        &self,
        msg: &jetstream::Message,
        envelope: Option<&CommandEnvelope>,
        delivered: i64,
        why: &str,
    ) {
        let command_id = envelope
            .map(|e| e.command_id)
            .or_else(|| {
                msg.subject
                    .rsplit('.')
                    .next()
                    .and_then(|t| CommandId::parse(t).ok())
            })
            .unwrap_or_else(CommandId::generate);
        metrics::counter!("allo_dead_letters_total").increment(1);
        let result = async {
            let mut tx = self.db().begin().await?;
            // The failure row moves into the dead letter (a data-modifying CTE always runs, so
            // it goes even when the dead letter was already written by an earlier delivery).
            let stored: Option<String> = sqlx::query_scalar(
                "WITH failure AS (
                     DELETE FROM command_failures WHERE command_id = $1
                     RETURNING error, first_failed_at
                 )
                 INSERT INTO dead_letters (command_id, subject, payload, deliveries, error, first_failed_at)
                 SELECT $1, $2, $3, $4, COALESCE((SELECT error FROM failure), $5),
                        (SELECT first_failed_at FROM failure)
                 ON CONFLICT (command_id) DO NOTHING
                 RETURNING error",
            )
            .bind(command_id)
            .bind(msg.subject.as_str())
            .bind(msg.payload.as_ref())
            .bind(delivered)
            .bind(why)
            .fetch_optional(&mut *tx)
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
            tx.commit().await?;
            Ok::<_, sqlx::Error>(stored)
        }
        .await;
        match result {
            Ok(stored) => {
                let error = stored.as_deref().unwrap_or("dead-lettered before");
                tracing::error!(%command_id, delivered, error, "command dead-lettered");
                self.release(msg);
                let _ = msg.ack_with(AckKind::Term).await;
            }
            // Keep the command; a later delivery tries to dead-letter it again.
            Err(e) => tracing::error!(%command_id, error = %e, "could not dead-letter command"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_errors_quote_no_user_text() {
        let payload = r#"{"commandId": "0190b6d2-6f4a-7000-8000-000000000001",
            "command": {"op": "secret words of a user"}}"#;
        let Err(err) = serde_json::from_str::<CommandEnvelope>(payload) else {
            panic!("decoded");
        };
        assert!(err.to_string().contains("secret words"), "serde quotes it");
        let text = decode_error_text(&err);
        assert!(text.starts_with("undecodable command:"), "{text}");
        assert!(!text.contains("secret"), "{text}");

        let decode = sqlx::Error::ColumnDecode {
            index: "2".into(),
            source: "invalid value: string \"secret words\"".into(),
        };
        assert_eq!(failure_text(&decode), "could not decode column 2");
        let long = sqlx::Error::Protocol("x".repeat(5000));
        assert_eq!(failure_text(&long).chars().count(), MAX_ERROR_CHARS);
    }
}
