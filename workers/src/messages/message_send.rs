//! The send family: only active participants send; the message takes the seq of its `message`
//! event; the event carries the message as reads show it.

use allo_common::event::EventType;
use allo_common::ops::message_send::{MessageContent, SendMessage};
use chrono::Duration;
use serde_json::json;

use super::{message_json, require_participant};
use crate::error::ApplyError;
use crate::unit::Unit;

pub async fn apply(unit: &mut Unit<'_>, c: &SendMessage) -> Result<serde_json::Value, ApplyError> {
    insert(unit, c, None).await
}

/// Sends a message; `scheduled_at` marks one sent by the scheduler (its due time).
pub async fn insert(
    unit: &mut Unit<'_>,
    c: &SendMessage,
    scheduled_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<serde_json::Value, ApplyError> {
    let author = unit.envelope.actor.clone();
    require_participant(unit, c.conversation_id, &author).await?;
    let created_at = unit.envelope.at;
    let (kind, body, attachments, secure, expires_at) = match &c.content {
        MessageContent::Text { message } => ("text", Some(message.as_str()), json!([]), None, None),
        MessageContent::Secure {
            ciphertext,
            encrypted,
            encryption_algorithm,
            signature,
        } => (
            "secure",
            Some(ciphertext.as_str()),
            json!([]),
            Some((
                *encrypted,
                encryption_algorithm.as_str(),
                signature.as_deref(),
            )),
            None,
        ),
        MessageContent::Voice { url, caption } => (
            "voice",
            caption.as_ref().map(|c| c.as_str()),
            json!([{"type": "voice", "url": url}]),
            None,
            None,
        ),
        MessageContent::Sticker { url } => (
            "sticker",
            None,
            json!([{"type": "sticker", "url": url}]),
            None,
            None,
        ),
        MessageContent::Ephemeral {
            message,
            expires_in_ms,
        } => (
            "text",
            Some(message.as_str()),
            json!([]),
            None,
            // Counted from when ingress accepted it: the sender's clock, not the queue's.
            Some(created_at + Duration::milliseconds(*expires_in_ms as i64)),
        ),
    };
    let seq = unit.reserve_seq(c.conversation_id).await?;
    sqlx::query(
        "INSERT INTO messages (id, conversation_id, seq, author_id, kind, body, attachments, encrypted,
                               encryption_algorithm, signature, expires_at, created_at, command_id, scheduled_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(c.message_id)
    .bind(c.conversation_id)
    .bind(seq)
    .bind(author.as_str())
    .bind(kind)
    .bind(body)
    .bind(&attachments)
    .bind(secure.map(|s| s.0))
    .bind(secure.map(|s| s.1))
    .bind(secure.and_then(|s| s.2))
    .bind(expires_at)
    .bind(created_at)
    .bind(unit.envelope.command_id)
    .bind(scheduled_at)
    .execute(&mut *unit.tx)
    .await?;
    let message = message_json(unit, c.message_id).await?;
    unit.record(c.conversation_id, seq, EventType::Message, message.clone())
        .await?;
    Ok(message)
}
