//! forwardMessage: the caller is in both conversations; the source message is in the source
//! conversation and still there; ephemeral and deleted messages are not forwarded. The copy is a
//! new message in the target, with `forwardedFrom` naming its origin; the target gets a
//! `messageForwarded` event carrying it.

use allo_common::error::ErrorCode;
use allo_common::event::EventType;
use allo_common::ops::message_forward::ForwardMessage;

use super::{load_message, message_json, refuse, require_participant};
use crate::error::ApplyError;
use crate::unit::Unit;

pub async fn apply(
    unit: &mut Unit<'_>,
    c: &ForwardMessage,
) -> Result<serde_json::Value, ApplyError> {
    let actor = unit.envelope.actor.clone();
    require_participant(unit, c.from_conversation_id, &actor).await?;
    require_participant(unit, c.to_conversation_id, &actor).await?;
    let source = load_message(unit, c.from_conversation_id, c.message_id).await?;
    if source.deleted {
        return Err(refuse(
            ErrorCode::Conflict,
            "a deleted message cannot be forwarded",
        ));
    }
    if source.ephemeral {
        return Err(refuse(
            ErrorCode::Invalid,
            "an ephemeral message cannot be forwarded",
        ));
    }
    let seq = unit.reserve_seq(c.to_conversation_id).await?;
    sqlx::query(
        "INSERT INTO messages (id, conversation_id, seq, author_id, kind, body, attachments, encrypted,
                               encryption_algorithm, signature, created_at, command_id, forwarded_from)
         SELECT $1, $2, $3, $4, kind, body, attachments, encrypted, encryption_algorithm, signature, $5, $6,
                jsonb_build_object('messageId', id, 'conversationID', conversation_id, 'userID', author_id)
         FROM messages WHERE id = $7",
    )
    .bind(c.new_message_id)
    .bind(c.to_conversation_id)
    .bind(seq)
    .bind(actor.as_str())
    .bind(unit.envelope.at)
    .bind(unit.envelope.command_id)
    .bind(c.message_id)
    .execute(&mut *unit.tx)
    .await?;
    let mut message = message_json(unit, c.new_message_id).await?;
    message["forwardedAt"] = serde_json::json!(unit.envelope.at);
    unit.record(
        c.to_conversation_id,
        seq,
        EventType::MessageForwarded,
        message.clone(),
    )
    .await?;
    Ok(message)
}
