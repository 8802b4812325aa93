//! deleteMessage (author or an admin/owner; leaves a tombstone) and unsendMessage (author only,
//! within the unsend window; the message disappears for everyone). Both scrub the content from
//! the event log.

use allo_common::error::ErrorCode;
use allo_common::event::EventType;
use allo_common::ops::message_ref::MessageRef;
use chrono::{Duration, Utc};
use serde_json::json;

use super::{Erasure, erase, participant_and_message, refuse};
use crate::error::ApplyError;
use crate::unit::Unit;

pub async fn delete(unit: &mut Unit<'_>, c: &MessageRef) -> Result<serde_json::Value, ApplyError> {
    let (role, _, message) = participant_and_message(unit, *c).await?;
    let actor = unit.envelope.actor.clone();
    if message.author_id != actor.as_str() && !role.is_admin() {
        return Err(refuse(
            ErrorCode::Forbidden,
            "only the author or an admin deletes a message",
        ));
    }
    if message.deleted {
        return Err(refuse(
            ErrorCode::Conflict,
            "the message is already deleted",
        ));
    }
    let deleted_at = erase(
        unit,
        c.conversation_id,
        c.message_id,
        Erasure::Deleted {
            by: Some(actor.as_str()),
            reason: "deleted",
        },
    )
    .await?
    .unwrap_or_else(Utc::now);
    let data = json!({"messageId": c.message_id, "deletedBy": actor, "deletedAt": deleted_at, "reason": "deleted"});
    let seq = unit
        .emit(c.conversation_id, EventType::MessageDeleted, data.clone())
        .await?;
    Ok(json!({"messageId": c.message_id, "deletedAt": deleted_at, "seq": seq}))
}

pub async fn unsend(unit: &mut Unit<'_>, c: &MessageRef) -> Result<serde_json::Value, ApplyError> {
    let (_, _, message) = participant_and_message(unit, *c).await?;
    if message.author_id != unit.envelope.actor.as_str() {
        return Err(refuse(
            ErrorCode::Forbidden,
            "only the author unsends a message",
        ));
    }
    if message.deleted {
        return Err(refuse(
            ErrorCode::Conflict,
            "a deleted message cannot be unsent",
        ));
    }
    let window = Duration::seconds(unit.limits.unsend_window_secs as i64);
    // Judged at the time the author asked (the command's time), not when the queue got to it.
    if unit.envelope.at > message.created_at + window {
        return Err(refuse(
            ErrorCode::Invalid,
            format!(
                "a message can be unsent only within {} minutes of sending",
                window.num_minutes()
            ),
        ));
    }
    erase(unit, c.conversation_id, c.message_id, Erasure::Unsent).await?;
    let seq = unit
        .emit(
            c.conversation_id,
            EventType::MessageUnsent,
            json!({"messageId": c.message_id}),
        )
        .await?;
    Ok(json!({"messageId": c.message_id, "seq": seq}))
}
