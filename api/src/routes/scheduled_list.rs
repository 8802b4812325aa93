//! `GET /api/scheduled?status=`: the caller's scheduled messages, soonest first, with how late
//! each was sent (`lateByMs`: sent after its due time, e.g. when every scheduler was down).

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::Value;

use super::extract::Query;
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct ScheduledQuery {
    status: Option<String>,
}

pub async fn handler(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(query): Query<ScheduledQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(status) = &query.status
        && !matches!(
            status.as_str(),
            "pending" | "sent" | "cancelled" | "rejected"
        )
    {
        return Err(ApiError::bad_parameter(
            "status",
            "must be pending, sent, cancelled or rejected",
        ));
    }
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object(
            'scheduledMessageId', id, 'conversationID', conversation_id, 'message', body,
            'scheduledTime', requested_at, 'dueAt', due_at, 'status', status, 'messageId', message_id,
            'sentAt', sent_at, 'code', error_code, 'reason', error_message,
            'lateByMs', CASE WHEN status = 'sent' THEN (extract(epoch FROM sent_at - due_at) * 1000)::bigint END)
         FROM scheduled_messages WHERE author_id = $1 AND ($2::text IS NULL OR status = $2)
         ORDER BY due_at LIMIT $3",
    )
    .bind(caller.user.as_str())
    .bind(&query.status)
    .bind(state.settings.limits.history_page_max)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(Value::Array(rows)))
}
