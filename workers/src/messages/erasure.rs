//! Erasure: what deleting, unsending, expiring or removing a message takes away, from every
//! copy Allo keeps. In the erasing command's transaction: the message's content, reactions,
//! pin and poll (its votes go with it); its content in the event log (`message`,
//! `messageForwarded`, `messageEdited`, `messageRestored`), in command results, in the
//! scheduled message it came from, in dead letters that mention it, and in resolved reports
//! (an open report keeps its snapshot for moderators until it is resolved). The event
//! stream's copies are queued in `stream_erasures` and deleted after commit
//! ([`crate::stream_erasure`]). A tombstone keeps only ids, times, who deleted it and why.

use allo_common::ids::{ConversationId, MessageId};
use chrono::{DateTime, Utc};

use crate::error::ApplyError;
use crate::unit::Unit;

/// How a message's content goes away.
pub(crate) enum Erasure<'a> {
    /// A tombstone stays (id, seq, why, and who when the room may know: the author or an
    /// admin; `None` for an expiry or a moderator's removal).
    Deleted {
        by: Option<&'a str>,
        reason: &'static str,
    },
    /// The message disappears for everyone.
    Unsent,
}

/// Erases a message's content everywhere (see the module doc). Returns when, or `None` if it
/// was already deleted (nothing changed).
pub(crate) async fn erase(
    unit: &mut Unit<'_>,
    conversation: ConversationId,
    message: MessageId,
    how: Erasure<'_>,
) -> Result<Option<DateTime<Utc>>, ApplyError> {
    let (deleted, by, reason) = match how {
        Erasure::Deleted { by, reason } => (true, by, Some(reason)),
        Erasure::Unsent => (false, None, None),
    };
    let erased: Option<(DateTime<Utc>, i64)> = sqlx::query_as(
        "UPDATE messages SET body = NULL, attachments = '[]', signature = NULL, encryption_algorithm = NULL,
                             pinned_at = NULL, pinned_by = NULL, hidden_at = NULL,
                             deleted_at = CASE WHEN $2 THEN now() END, deleted_by = $3, deleted_reason = $4,
                             unsent_at = CASE WHEN $2 THEN unsent_at ELSE now() END
         WHERE id = $1 AND deleted_at IS NULL RETURNING now(), seq",
    )
    .bind(message)
    .bind(deleted)
    .bind(by)
    .bind(reason)
    .fetch_optional(&mut *unit.tx)
    .await?;
    let Some((at, seq)) = erased else {
        return Ok(None);
    };
    sqlx::query("DELETE FROM reactions WHERE message_id = $1")
        .bind(message)
        .execute(&mut *unit.tx)
        .await?;
    // The poll's question, options and votes.
    sqlx::query("DELETE FROM polls WHERE message_id = $1")
        .bind(message)
        .execute(&mut *unit.tx)
        .await?;
    sqlx::query(SCRUB_COPIES)
        .bind(conversation)
        .bind(message.to_string())
        .bind(seq)
        .execute(&mut *unit.tx)
        .await?;
    Ok(Some(at))
}

/// Every copy of a message's content besides the message row, in one round trip. Events about
/// a message are at or after its own seq, so the (conversation, seq) key bounds the search.
/// Dead letters are few (a command that failed every delivery): a scan of them is cheap.
const SCRUB_COPIES: &str = r#"
WITH ev AS (
    UPDATE events SET data = scrub_content(data)
    WHERE conversation_id = $1 AND seq >= $3 AND data->>'messageId' = $2
      AND event_has_content(type)
    RETURNING id, command_id
), queued AS (
    INSERT INTO stream_erasures (event_id) SELECT id FROM ev ON CONFLICT DO NOTHING
), results AS (
    UPDATE commands SET result = scrub_content(result)
    WHERE id IN (SELECT command_id FROM ev WHERE command_id IS NOT NULL
                 UNION SELECT command_id FROM scheduled_messages WHERE message_id = $2::uuid)
), scheduled AS (
    UPDATE scheduled_messages SET body = NULL WHERE message_id = $2::uuid
), dead AS (
    UPDATE dead_letters SET payload = convert_to('{"erased":true}', 'UTF8')
    WHERE position(convert_to($2, 'UTF8') IN payload) > 0
), snapshots AS (
    UPDATE reports SET snapshot = NULL WHERE message_id = $2::uuid AND status <> 'open'
)
SELECT count(*) FROM ev"#;

/// Takes a message's content events off the event stream (they stay in Postgres): a message
/// hidden pending review is redacted everywhere it is served, and the stream is served to every
/// backend subscriber. Restoring it emits `messageRestored` with the content again.
pub(crate) async fn withdraw_from_stream(
    unit: &mut Unit<'_>,
    conversation: ConversationId,
    message: MessageId,
) -> Result<(), ApplyError> {
    sqlx::query(
        "INSERT INTO stream_erasures (event_id)
         SELECT e.id FROM events e JOIN messages m ON m.id = $2
         WHERE e.conversation_id = $1 AND e.seq >= m.seq AND e.data->>'messageId' = $2::text
           AND event_has_content(e.type)
         ON CONFLICT DO NOTHING",
    )
    .bind(conversation)
    .bind(message)
    .execute(&mut *unit.tx)
    .await?;
    Ok(())
}
