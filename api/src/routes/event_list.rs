//! `GET /api/conversations/{id}/events?after=&limit=`: the event log after a seq, oldest first
//! (for catching up after a disconnect). Content of deleted and unsent messages is erased, a
//! hidden message's is redacted (`event_json`), and nothing from before the caller's history
//! floor is served.

use allo_common::ids::ConversationId;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Path, Query};
use super::message_list::check_limit;
use super::{path_id, require_participant};
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

pub async fn handler(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id, ConversationId::parse)?;
    let limit = check_limit(query.limit, state.settings.limits.history_page_max)?;
    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::bad_parameter("after", "must be >= 0"));
    }
    let floor = require_participant(&state.db, id, &caller.user).await?;
    let events: Vec<Value> = sqlx::query_scalar(
        "SELECT event_json(e) FROM events e WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(id)
    .bind(after.max(floor - 1))
    .bind(limit)
    .fetch_all(&state.db)
    .await?;
    let next = if events.len() as i64 == limit {
        events.last().and_then(|e| e["seq"].as_i64())
    } else {
        None
    };
    Ok(Json(
        json!({"events": events, "next": next.map(|seq| json!({"after": seq}))}),
    ))
}
