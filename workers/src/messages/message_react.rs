//! reactionMessage: one reaction per (user, message, emoji); the same reaction again removes it.

use allo_common::error::ErrorCode;
use allo_common::event::EventType;
use allo_common::ops::message_ref::ReactionMessage;
use serde_json::json;

use super::{participant_and_message, refuse};
use crate::error::ApplyError;
use crate::unit::Unit;

pub async fn apply(
    unit: &mut Unit<'_>,
    c: &ReactionMessage,
) -> Result<serde_json::Value, ApplyError> {
    let (_, _, message) = participant_and_message(unit, c.target).await?;
    if message.deleted {
        return Err(refuse(
            ErrorCode::Conflict,
            "a deleted message cannot be reacted to",
        ));
    }
    let user = unit.envelope.actor.clone();
    let id = c.target.message_id;
    let removed =
        sqlx::query("DELETE FROM reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3")
            .bind(id)
            .bind(user.as_str())
            .bind(c.emoji.as_str())
            .execute(&mut *unit.tx)
            .await?
            .rows_affected()
            == 1;
    if !removed {
        let mine: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM reactions WHERE message_id = $1 AND user_id = $2",
        )
        .bind(id)
        .bind(user.as_str())
        .fetch_one(&mut *unit.tx)
        .await?;
        super::within_total(
            mine,
            unit.limits.reactions_per_user_per_message_max,
            "your distinct reactions on one message",
        )?;
        sqlx::query("INSERT INTO reactions (message_id, user_id, emoji) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(user.as_str())
            .bind(c.emoji.as_str())
            .execute(&mut *unit.tx)
            .await?;
    }
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reactions WHERE message_id = $1 AND emoji = $2")
            .bind(id)
            .bind(c.emoji.as_str())
            .fetch_one(&mut *unit.tx)
            .await?;
    let action = if removed { "removed" } else { "added" };
    let data = json!({"messageId": id, "emoji": c.emoji, "userID": user, "action": action, "count": count});
    let seq = unit
        .emit(
            c.target.conversation_id,
            EventType::MessageReaction,
            data.clone(),
        )
        .await?;
    let mut result = data;
    result["seq"] = seq.into();
    Ok(result)
}
