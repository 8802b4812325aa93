//! createConversation: the conversation, its participants (the creator as owner and admin) and
//! the `conversationCreated` event, seq 1 of the new conversation.

use allo_common::error::{DomainError, ErrorCode};
use allo_common::event::EventType;
use allo_common::ops::conversation_create::{
    ConversationKind, CreateConversation, SetHistoryVisibility,
};
use serde_json::json;

use super::{refuse, require_participant};
use crate::error::ApplyError;
use crate::unit::Unit;

pub async fn apply(
    unit: &mut Unit<'_>,
    c: &CreateConversation,
) -> Result<serde_json::Value, ApplyError> {
    let owner = unit.envelope.actor.clone();
    let direct_key = (c.kind == ConversationKind::Direct).then(|| {
        // Participants are sorted and user ids hold no whitespace: a stable key per pair.
        c.participants
            .iter()
            .map(|u| u.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    });
    if let Some(key) = &direct_key {
        let existing: Option<(uuid::Uuid,)> =
            sqlx::query_as("SELECT id FROM conversations WHERE direct_key = $1")
                .bind(key)
                .fetch_optional(&mut *unit.tx)
                .await?;
        if let Some((id,)) = existing {
            return Err(DomainError::new(
                ErrorCode::Conflict,
                format!("a direct conversation between these users already exists: {id}"),
            )
            .into());
        }
    }
    sqlx::query(
        "INSERT INTO conversations (id, kind, topic, owner_id, direct_key, created_at, history_visibility)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(c.conversation_id)
    .bind(c.kind.as_str())
    .bind(c.topic.as_ref().map(|t| t.as_str()))
    .bind(owner.as_str())
    .bind(&direct_key)
    .bind(unit.envelope.at)
    .bind(c.history_visibility().as_str())
    .execute(&mut *unit.tx)
    .await?;
    let users: Vec<&str> = c.participants.iter().map(|u| u.as_str()).collect();
    sqlx::query(
        "INSERT INTO participants (conversation_id, user_id, role, joined_at)
         SELECT $1, u, CASE WHEN u = $3 THEN 'owner' ELSE 'member' END, $4 FROM unnest($2::text[]) AS u",
    )
    .bind(c.conversation_id)
    .bind(&users)
    .bind(owner.as_str())
    .bind(unit.envelope.at)
    .execute(&mut *unit.tx)
    .await?;
    let conversation = json!({
        "conversationID": c.conversation_id,
        "type": c.kind,
        "topic": c.topic,
        "owner": owner,
        "admins": [owner],
        "participants": c.participants,
        "historyVisibility": c.history_visibility(),
        "createdAt": unit.envelope.at,
    });
    unit.emit(
        c.conversation_id,
        EventType::ConversationCreated,
        conversation.clone(),
    )
    .await?;
    Ok(conversation)
}

/// setHistoryVisibility: admins (owner included) change what members added later read of the
/// history before their join. Going from `joined` to `shared` opens that history to them: a
/// deliberate admin decision, announced to the room. Unchanged: no event.
pub async fn set_history(
    unit: &mut Unit<'_>,
    c: &SetHistoryVisibility,
) -> Result<serde_json::Value, ApplyError> {
    let actor = unit.envelope.actor.clone();
    let (role, _) = require_participant(unit, c.conversation_id, &actor).await?;
    if !role.is_admin() {
        return Err(refuse(
            ErrorCode::Forbidden,
            "only admins change the history visibility",
        ));
    }
    let changed = sqlx::query(
        "UPDATE conversations SET history_visibility = $2 WHERE id = $1 AND history_visibility <> $2",
    )
    .bind(c.conversation_id)
    .bind(c.history_visibility.as_str())
    .execute(&mut *unit.tx)
    .await?
    .rows_affected()
        == 1;
    let mut result = json!({"conversationID": c.conversation_id, "historyVisibility": c.history_visibility, "changed": changed});
    if changed {
        let data = json!({"conversationID": c.conversation_id, "historyVisibility": c.history_visibility, "changedBy": actor});
        let seq = unit
            .emit(c.conversation_id, EventType::HistoryVisibilityChanged, data)
            .await?;
        result["seq"] = seq.into();
    }
    Ok(result)
}
