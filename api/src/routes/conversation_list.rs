//! `GET /api/conversations?limit=`: the caller's conversations, most recently active first,
//! each with its last message and the caller's unread count.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::Value;

use super::extract::Query;
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
}

pub async fn handler(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let max = state.settings.limits.history_page_max;
    let limit = super::message_list::check_limit(query.limit, max)?;
    let rows: Vec<(Value,)> = sqlx::query_as(
        "SELECT json_build_object(
            'conversationID', c.id, 'type', c.kind, 'topic', c.topic, 'owner', c.owner_id,
            'role', p.role, 'lastSeq', c.last_seq, 'createdAt', c.created_at,
            'lastReadSeq', p.last_read_seq,
            'unreadCount', (SELECT count(*) FROM messages m
                            WHERE m.conversation_id = c.id AND m.seq > p.last_read_seq AND m.author_id <> p.user_id
                              AND message_visible(m) AND m.deleted_at IS NULL
                              AND m.seq >= history_floor(c.id, p.user_id)),
            'lastMessage', (SELECT message_json(m, p.user_id) FROM messages m
                            WHERE m.conversation_id = c.id AND message_visible(m)
                              AND m.seq >= history_floor(c.id, p.user_id) ORDER BY m.seq DESC LIMIT 1))
         FROM participants p JOIN conversations c ON c.id = p.conversation_id
         WHERE p.user_id = $1 AND p.left_at IS NULL
         ORDER BY c.last_seq DESC, c.created_at DESC
         LIMIT $2",
    )
    .bind(caller.user.as_str())
    .bind(limit)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(Value::Array(rows.into_iter().map(|(v,)| v).collect())))
}
