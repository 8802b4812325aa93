//! joinConversation: anyone may join a channel; a group's members are added by its admins (so a
//! stranger or a former member may not join by themselves); a direct conversation is closed.
//! Joining a conversation one is already in changes nothing and emits nothing.

use allo_common::error::{DomainError, ErrorCode};
use allo_common::event::EventType;
use allo_common::ops::conversation_join::JoinConversation;
use serde_json::json;

use crate::error::ApplyError;
use crate::unit::Unit;

pub async fn apply(
    unit: &mut Unit<'_>,
    c: &JoinConversation,
) -> Result<serde_json::Value, ApplyError> {
    let actor = unit.envelope.actor.clone();
    let row: Option<(String, Option<chrono::DateTime<chrono::Utc>>, bool, bool)> = sqlx::query_as(
        "SELECT c.kind, p.left_at, p.user_id IS NOT NULL, p.removed_by IS NOT NULL FROM conversations c
         LEFT JOIN participants p ON p.conversation_id = c.id AND p.user_id = $2
         WHERE c.id = $1",
    )
    .bind(c.conversation_id)
    .bind(actor.as_str())
    .fetch_optional(&mut *unit.tx)
    .await?;
    let Some((kind, left_at, had_row, removed)) = row else {
        return Err(DomainError::new(ErrorCode::NotFound, "conversation not found").into());
    };
    if had_row && left_at.is_none() {
        return Ok(json!({"conversationID": c.conversation_id, "userID": actor, "joined": false}));
    }
    if removed {
        return Err(DomainError::new(
            ErrorCode::Forbidden,
            "you were removed by an admin; an admin must add you back",
        )
        .into());
    }
    match kind.as_str() {
        "channel" => {}
        "group" if had_row => {
            return Err(DomainError::new(
                ErrorCode::Forbidden,
                "a former member cannot rejoin a group by themselves; an admin must add them",
            )
            .into());
        }
        "group" => {
            return Err(DomainError::new(
                ErrorCode::Forbidden,
                "members of a group are added by its admins",
            )
            .into());
        }
        _ => {
            return Err(DomainError::new(
                ErrorCode::Forbidden,
                "a direct conversation cannot be joined",
            )
            .into());
        }
    }
    let members = super::member_count(unit, c.conversation_id).await?;
    super::within_total(
        members,
        unit.limits.conversation_members_max,
        "members of a conversation",
    )?;
    sqlx::query(
        "INSERT INTO participants (conversation_id, user_id, role, joined_at) VALUES ($1, $2, 'member', $3)
         ON CONFLICT (conversation_id, user_id) DO UPDATE SET left_at = NULL, removed_by = NULL, joined_at = $3, role = 'member'",
    )
    .bind(c.conversation_id)
    .bind(actor.as_str())
    .bind(unit.envelope.at)
    .execute(&mut *unit.tx)
    .await?;
    let data = json!({"conversationID": c.conversation_id, "userID": actor, "role": "member", "joinedAt": unit.envelope.at});
    let seq = unit
        .emit(c.conversation_id, EventType::ParticipantJoined, data)
        .await?;
    super::participants::record_join(unit, c.conversation_id, &actor, seq).await?;
    Ok(json!({"conversationID": c.conversation_id, "userID": actor, "joined": true, "seq": seq}))
}
