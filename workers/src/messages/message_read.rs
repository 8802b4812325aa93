//! messageRead: moves the caller's read marker forward to the message's seq, never backward.
//! An event only when the marker moved.

use allo_common::event::EventType;
use allo_common::ops::message_ref::MessageRef;
use serde_json::json;

use super::participant_and_message;
use crate::error::ApplyError;
use crate::unit::Unit;

pub async fn apply(unit: &mut Unit<'_>, c: &MessageRef) -> Result<serde_json::Value, ApplyError> {
    let (_, _, message) = participant_and_message(unit, *c).await?;
    let reader = unit.envelope.actor.clone();
    let moved = sqlx::query(
        "UPDATE participants SET last_read_seq = $3
         WHERE conversation_id = $1 AND user_id = $2 AND last_read_seq < $3",
    )
    .bind(c.conversation_id)
    .bind(reader.as_str())
    .bind(message.seq)
    .execute(&mut *unit.tx)
    .await?
    .rows_affected()
        == 1;
    let last_read_seq: i64 = sqlx::query_scalar(
        "SELECT last_read_seq FROM participants WHERE conversation_id = $1 AND user_id = $2",
    )
    .bind(c.conversation_id)
    .bind(reader.as_str())
    .fetch_one(&mut *unit.tx)
    .await?;
    if moved {
        let data = json!({"messageId": c.message_id, "status": "read", "readBy": reader, "userID": reader, "readSeq": message.seq});
        unit.emit(c.conversation_id, EventType::MessageStatusUpdate, data)
            .await?;
    }
    Ok(json!({"messageId": c.message_id, "lastReadSeq": last_read_seq, "moved": moved}))
}
