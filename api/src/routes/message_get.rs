//! `GET /api/conversations/{id}/messages/{messageId}`: one message of the conversation
//! (participants only; unsent, expired or elsewhere: 404).

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
    let found: Option<Value> = sqlx::query_scalar(
        "SELECT message_json(m, $3) FROM messages m WHERE m.id = $1 AND m.conversation_id = $2 AND message_visible(m) AND m.seq >= $4",
    )
    .bind(message)
    .bind(id)
    .bind(caller.user.as_str())
    .bind(floor)
    .fetch_optional(&state.db)
    .await?;
    found
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("message not found in this conversation".into()))
}
