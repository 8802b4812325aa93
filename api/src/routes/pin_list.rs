//! `GET /api/conversations/{id}/pins`: pinned messages, most recently pinned first.

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
    let floor = require_participant(&state.db, id, &caller.user).await?;
    let pins: Vec<Value> = sqlx::query_scalar(
        "SELECT message_json(m, $2) FROM messages m
         WHERE m.conversation_id = $1 AND m.pinned_at IS NOT NULL AND message_visible(m)
           AND m.seq >= $4
         ORDER BY m.pinned_at DESC LIMIT $3",
    )
    .bind(id)
    .bind(caller.user.as_str())
    .bind(state.settings.limits.history_page_max)
    .bind(floor)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(Value::Array(pins)))
}
