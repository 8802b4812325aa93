//! `GET /api/conversations/{id}/messages?before=&after=&limit=`: history by seq cursor.
//! Newest first by default (`before` pages back); with `after`, oldest first (catch up).
//! Unsent, expired and hidden messages are not shown; deleted ones are tombstones; nothing from
//! before the caller's history floor (see `require_participant`).

use allo_common::ids::ConversationId;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Path, Query};
use super::{path_id, require_participant};
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    before: Option<i64>,
    after: Option<i64>,
    limit: Option<i64>,
}

/// Checks `limit` against the page maximum (default: the maximum).
pub(crate) fn check_limit(limit: Option<i64>, max: i64) -> Result<i64, ApiError> {
    match limit {
        None => Ok(max),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_parameter(
            "limit",
            format!("must be between 1 and {max}"),
        )),
    }
}

pub async fn handler(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id, ConversationId::parse)?;
    let limit = check_limit(query.limit, state.settings.limits.history_page_max)?;
    if query.before.is_some() && query.after.is_some() {
        return Err(ApiError::bad_parameter(
            "before",
            "give either `before` or `after`, not both",
        ));
    }
    if query.before.or(query.after).is_some_and(|s| s < 0) {
        return Err(ApiError::bad_parameter(
            if query.before.is_some() {
                "before"
            } else {
                "after"
            },
            "must be >= 0",
        ));
    }
    let floor = require_participant(&state.db, id, &caller.user).await?;
    let ascending = query.after.is_some();
    let rows: Vec<(Value,)> = sqlx::query_as(
        "SELECT message_json(m, $6)
         FROM messages m
         WHERE m.conversation_id = $1 AND message_visible(m)
           AND ($2::bigint IS NULL OR m.seq < $2)
           AND ($3::bigint IS NULL OR m.seq > $3) AND m.seq >= $7
         ORDER BY CASE WHEN $4 THEN m.seq END ASC, m.seq DESC
         LIMIT $5",
    )
    .bind(id)
    .bind(query.before)
    .bind(query.after)
    .bind(ascending)
    .bind(limit)
    .bind(caller.user.as_str())
    .bind(floor)
    .fetch_all(&state.db)
    .await?;
    let messages: Vec<Value> = rows.into_iter().map(|(v,)| v).collect();
    let next = if messages.len() as i64 == limit {
        messages.last().and_then(|m| m["seq"].as_i64())
    } else {
        None
    };
    let cursor = if ascending { "after" } else { "before" };
    Ok(Json(
        json!({ "messages": messages, "next": next.map(|seq| json!({ cursor: seq })) }),
    ))
}
