//! `GET /api/conversations/{id}`: one conversation with its participants (participants only).

use allo_common::ids::ConversationId;
use axum::Json;
use axum::extract::State;
use serde_json::Value;

use super::extract::Path;
use super::{path_id, require_participant};
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;

pub async fn handler(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id, ConversationId::parse)?;
    require_participant(&state.db, id, &caller.user).await?;
    let (conversation,): (Value,) = sqlx::query_as(
        "SELECT json_build_object(
            'conversationID', c.id, 'type', c.kind, 'topic', c.topic, 'owner', c.owner_id,
            'lastSeq', c.last_seq, 'createdAt', c.created_at, 'historyVisibility', c.history_visibility,
            'admins', (SELECT coalesce(json_agg(p.user_id ORDER BY p.user_id), '[]') FROM participants p
                       WHERE p.conversation_id = c.id AND p.left_at IS NULL AND p.role IN ('owner', 'admin')),
            'participants', (SELECT coalesce(json_agg(json_build_object('userID', p.user_id, 'role', p.role,
                                 'joinedAt', p.joined_at, 'lastReadSeq', p.last_read_seq) ORDER BY p.joined_at, p.user_id), '[]')
                             FROM participants p WHERE p.conversation_id = c.id AND p.left_at IS NULL))
         FROM conversations c WHERE c.id = $1",
    )
    .bind(id)
    .fetch_one(&state.db)
    .await?;
    Ok(Json(conversation))
}
