//! pinMessage: any participant pins in a direct or group conversation, only admins in a
//! channel; deleted messages are not pinned. Pinning a pinned message changes nothing.

use allo_common::error::ErrorCode;
use allo_common::event::EventType;
use allo_common::ops::message_ref::PinMessage;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::{participant_and_message, refuse};
use crate::error::ApplyError;
use crate::unit::Unit;

pub async fn apply(unit: &mut Unit<'_>, c: &PinMessage) -> Result<serde_json::Value, ApplyError> {
    let (role, kind, message) = participant_and_message(unit, c.target).await?;
    if kind == "channel" && !role.is_admin() {
        return Err(refuse(
            ErrorCode::Forbidden,
            "only admins pin messages in a channel",
        ));
    }
    if message.deleted {
        return Err(refuse(
            ErrorCode::Conflict,
            "a deleted message cannot be pinned",
        ));
    }
    let id = c.target.message_id;
    if message.pinned == c.pin {
        return Ok(json!({"messageId": id, "pinned": c.pin, "changed": false}));
    }
    let actor = unit.envelope.actor.clone();
    let pinned_at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "UPDATE messages SET pinned_at = CASE WHEN $2 THEN now() END, pinned_by = CASE WHEN $2 THEN $3 END
         WHERE id = $1 RETURNING pinned_at",
    )
    .bind(id)
    .bind(c.pin)
    .bind(actor.as_str())
    .fetch_one(&mut *unit.tx)
    .await?;
    let at = pinned_at.unwrap_or_else(Utc::now);
    let data = json!({"messageId": id, "pinned": c.pin, "pinnedAt": at, "pinnedBy": actor});
    let seq = unit
        .emit(c.target.conversation_id, EventType::MessagePinned, data)
        .await?;
    Ok(
        json!({"messageId": id, "pinned": c.pin, "pinnedAt": at, "pinnedBy": actor, "changed": true, "seq": seq}),
    )
}
