//! `GET /api/conversations/{id}/polls/{messageId}`: a poll's question, options, exact tallies,
//! state and the caller's own vote (participants only).

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use super::extract::Path;
use super::require_participant;
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;

pub async fn handler(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(path): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (id, message) = super::message_path(path)?;
    let floor = require_participant(&state.db, id, &caller.user).await?;
    let poll: Option<Value> = sqlx::query_scalar(
        "SELECT poll_json(p, $3) || jsonb_build_object('messageId', m.id, 'conversationID', m.conversation_id, 'userID', m.author_id)
         FROM polls p JOIN messages m ON m.id = p.message_id
         WHERE p.message_id = $1 AND m.conversation_id = $2 AND message_visible(m) AND m.seq >= $4",
    )
    .bind(message)
    .bind(id)
    .bind(caller.user.as_str())
    .bind(floor)
    .fetch_optional(&state.db)
    .await?;
    poll.map(Json)
        .ok_or_else(|| ApiError::NotFound("no such poll in this conversation".into()))
}
