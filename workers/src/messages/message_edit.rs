//! editMessage: the author only; text messages only; not on deleted, unsent or expired ones.

use allo_common::error::ErrorCode;
use allo_common::event::EventType;
use allo_common::ops::message_ref::EditMessage;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::{participant_and_message, refuse};
use crate::error::ApplyError;
use crate::unit::Unit;

pub async fn apply(unit: &mut Unit<'_>, c: &EditMessage) -> Result<serde_json::Value, ApplyError> {
    let (_, _, message) = participant_and_message(unit, c.target).await?;
    if message.author_id != unit.envelope.actor.as_str() {
        return Err(refuse(
            ErrorCode::Forbidden,
            "only the author edits a message",
        ));
    }
    if message.deleted {
        return Err(refuse(
            ErrorCode::Conflict,
            "a deleted message cannot be edited",
        ));
    }
    if message.kind != "text" {
        return Err(refuse(
            ErrorCode::Invalid,
            format!("a {} message cannot be edited", message.kind),
        ));
    }
    let edited_at: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE messages SET body = $2, edited_at = now() WHERE id = $1 RETURNING edited_at",
    )
    .bind(c.target.message_id)
    .bind(c.new_message.as_str())
    .fetch_one(&mut *unit.tx)
    .await?;
    let data = json!({"messageId": c.target.message_id, "newMessage": c.new_message, "editedAt": edited_at});
    let seq = unit
        .emit(
            c.target.conversation_id,
            EventType::MessageEdited,
            data.clone(),
        )
        .await?;
    Ok(
        json!({"messageId": c.target.message_id, "newMessage": c.new_message, "editedAt": edited_at, "seq": seq}),
    )
}
