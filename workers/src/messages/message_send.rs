//! sendMessage: only active participants send; the message takes the seq of its `message` event.

use allo_common::event::EventType;
use allo_common::ops::message_send::SendMessage;
use serde_json::json;

use super::require_participant;
use crate::error::ApplyError;
use crate::unit::Unit;

pub async fn apply(unit: &mut Unit<'_>, c: &SendMessage) -> Result<serde_json::Value, ApplyError> {
    let author = unit.envelope.actor.clone();
    require_participant(unit, c.conversation_id, &author).await?;
    let created_at = unit.envelope.at;
    let mut message = json!({
        "messageId": c.message_id,
        "conversationID": c.conversation_id,
        "userID": author,
        "message": c.message,
        "kind": "text",
        "status": "sent",
        "attachments": [],
        "createdAt": created_at,
    });
    let seq = unit
        .emit(c.conversation_id, EventType::Message, message.clone())
        .await?;
    sqlx::query(
        "INSERT INTO messages (id, conversation_id, seq, author_id, kind, body, created_at, command_id)
         VALUES ($1, $2, $3, $4, 'text', $5, $6, $7)",
    )
    .bind(c.message_id)
    .bind(c.conversation_id)
    .bind(seq)
    .bind(author.as_str())
    .bind(c.message.as_str())
    .bind(created_at)
    .bind(unit.envelope.command_id)
    .execute(&mut *unit.tx)
    .await?;
    message["seq"] = seq.into();
    Ok(message)
}
